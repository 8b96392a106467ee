//! SetupNetwork for real, as root. Outside a VM the agent has a private
//! network namespace holding only `lo`; the test adds a veth pair there
//! (this kernel has no dummy links) to stand in for the VM's virtio-net
//! link, and reads the result from a container sharing that namespace.
//! Every `ip` command that changes something runs inside the agent's
//! namespace, never the test's own (the host's).

mod harness;

use std::process::Command;

use harness::{spec, TestAgent};
use husk_agent_client::{AgentClientError, Interface, NetworkConfig, Route};
use tonic::Code;

fn interface(name: &str, mtu: u32, addresses: &[&str], up: bool) -> Interface {
    Interface {
        name: name.into(),
        mtu,
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
        up,
    }
}

fn route(destination: &str, gateway: &str, device: &str) -> Route {
    Route {
        destination: destination.into(),
        gateway: gateway.into(),
        device: device.into(),
    }
}

async fn setup_network(
    agent: &TestAgent,
    interfaces: Vec<Interface>,
    routes: Vec<Route>,
) -> Result<(), AgentClientError> {
    agent
        .client
        .setup_network(NetworkConfig { interfaces, routes })
        .await
}

fn net_ns(pid: &str) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("read a network namespace")
}

/// Runs `sh -c script` in the agent's network namespace, after making
/// sure that namespace is not the host's.
fn in_agent_ns(agent: &TestAgent, script: &str) -> String {
    let pid = agent.pid().to_string();
    assert_ne!(
        net_ns(&pid),
        net_ns("self"),
        "the agent shares the host's network namespace; refusing to touch it"
    );
    let out = Command::new("nsenter")
        .args(["-t", &pid, "-n", "sh", "-c", script])
        .output()
        .expect("run nsenter");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A veth pair `d0`/`d0p`, `d0p` up so `d0` has a carrier. Without IPv6
/// duplicate address detection, addresses carry no "tentative" flag that
/// would clear later and make two snapshots differ. Without promoted
/// secondaries (the kernel's default, set here in case the host differs),
/// deleting a subnet's primary IPv4 address deletes its secondaries.
fn add_veth(agent: &TestAgent) {
    in_agent_ns(
        agent,
        "ip link add d0 type veth peer name d0p && \
         for l in d0 d0p; do \
           echo 0 > /proc/sys/net/ipv6/conf/$l/accept_dad && \
           echo 0 > /proc/sys/net/ipv4/conf/$l/promote_secondaries; \
         done && \
         ip link set d0p up",
    );
}

/// The link's global addresses, sorted, e.g. `["10.0.0.2/24"]`.
fn addresses_of(agent: &TestAgent, link: &str) -> Vec<String> {
    let out = in_agent_ns(agent, &format!("ip -o addr show dev {link} scope global"));
    let mut found: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().nth(3).expect("an address").to_owned())
        .collect();
    found.sort();
    found
}

/// Waits until the kernel has given `d0` and `d0p` their IPv6 link-local
/// addresses. It does that after the carrier change it learns about
/// asynchronously (up to a second later), and until then `ip` output
/// keeps changing by itself.
async fn settle(agent: &TestAgent) {
    let deadline = std::time::Instant::now() + harness::TIMEOUT;
    let script = "ip -o -6 addr show dev d0 scope link; ip -o -6 addr show dev d0p scope link";
    while in_agent_ns(agent, script).lines().count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no link-local addresses"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The lines of `ip route` for one destination.
fn routes_to<'a>(routes: &'a str, destination: &str) -> Vec<&'a str> {
    routes
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(destination))
        .collect()
}

/// Whether the test's own (the host's) namespace has a link of this name.
fn host_has_link(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .expect("run ip")
        .status
        .success()
}

/// Everything SetupNetwork could change, as `ip` prints it.
fn snapshot(agent: &TestAgent) -> String {
    in_agent_ns(
        agent,
        "ip -o link; ip -o addr; ip route; ip -6 route; ip route show table local",
    )
}

/// The container's view, split at `--- ` markers into sections.
async fn container_view(agent: &TestAgent, id: &str, commands: &[&str]) -> Vec<String> {
    let script = commands
        .iter()
        .map(|c| format!("echo '--- {c}'; {c}"))
        .collect::<Vec<_>>()
        .join("; ");
    let (exit, out, err) = agent.sh(id, spec(&[]), &script).await;
    assert_eq!(exit.code, 0, "{out}\n{err}");
    out.split("--- ").skip(1).map(str::to_owned).collect()
}

/// The flags between `<` and `>` of `ip link show`'s first line.
fn link_flags(ip_link_show: &str) -> Vec<&str> {
    let start = ip_link_show.find('<').expect("link flags") + 1;
    let end = ip_link_show[start..].find('>').expect("link flags") + start;
    ip_link_show[start..end].split(',').collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_addresses_and_routes_are_set_and_replaced() {
    let host_had = (host_has_link("d0"), host_has_link("d0p"));
    let agent = TestAgent::start("net-setup").await;
    add_veth(&agent);
    setup_network(
        &agent,
        vec![
            interface("lo", 0, &[], true),
            interface("d0", 1400, &["10.1.2.3/24", "fd00::3/64"], true),
        ],
        vec![
            route("default", "10.1.2.1", ""),
            route("192.168.50.0/24", "10.1.2.254", "d0"),
            route("", "fd00::1", ""),
            route("10.20.0.0/16", "", "d0"),
            route("10.21.0.0/16", "", "d0"),
        ],
    )
    .await
    .expect("SetupNetwork");
    settle(&agent).await;

    let view = container_view(
        &agent,
        "first",
        &[
            "ip -o addr show d0",
            "ip link show d0",
            "ip link show lo",
            "ip route",
            "ip -6 addr",
            "ip -6 route",
        ],
    )
    .await;
    let [addr, link, lo, routes, addr6, routes6] = &view[..] else {
        panic!("{view:?}")
    };
    assert!(addr.contains("inet 10.1.2.3/24 "), "{addr}");
    assert!(addr.contains("inet6 fd00::3/64 "), "{addr}");
    assert!(link.contains(" mtu 1400 "), "{link}");
    assert!(link_flags(link).contains(&"UP"), "{link}");
    assert!(link_flags(lo).contains(&"UP"), "{lo}");
    assert!(routes.contains("default via 10.1.2.1 dev d0"), "{routes}");
    assert!(
        routes.contains("192.168.50.0/24 via 10.1.2.254 dev d0"),
        "{routes}"
    );
    assert!(
        routes.contains("10.20.0.0/16 dev d0 scope link"),
        "{routes}"
    );
    assert!(
        routes.contains("10.21.0.0/16 dev d0 scope link"),
        "{routes}"
    );
    assert!(addr6.contains("inet6 fd00::3/64 "), "{addr6}");
    assert!(
        addr6.contains("inet6 fe80::"),
        "no link-local address: {addr6}"
    );
    assert!(routes6.contains("default via fd00::1 dev d0"), "{routes6}");

    // d0's addresses are replaced; named routes are replaced, not doubled,
    // and the others stay; d0p goes down and keeps the IPv6 address it
    // gets.
    setup_network(
        &agent,
        vec![
            interface("d0", 0, &["10.9.9.9/16"], true),
            interface("d0p", 0, &["fd00:9::9/64"], false),
        ],
        vec![
            route("192.168.50.0/24", "10.9.0.254", "d0"),
            route("10.20.0.0/16", "10.9.0.253", ""),
        ],
    )
    .await
    .expect("second SetupNetwork");
    let view = container_view(
        &agent,
        "second",
        &[
            "ip -o addr show d0",
            "ip link show d0",
            "ip route",
            "ip -6 addr show d0p",
            "ip link show d0p",
        ],
    )
    .await;
    let [addr, link, routes, peer_addr, peer] = &view[..] else {
        panic!("{view:?}")
    };
    assert!(addr.contains("inet 10.9.9.9/16 "), "{addr}");
    assert!(!addr.contains("10.1.2.3"), "old address left: {addr}");
    assert!(!addr.contains("fd00::3"), "old address left: {addr}");
    assert!(
        addr.contains("inet6 fe80::"),
        "link-local address removed: {addr}"
    );
    assert!(
        link.contains(" mtu 1400 "),
        "MTU 0 must leave it alone: {link}"
    );
    let to_50 = routes_to(routes, "192.168.50.0/24");
    assert!(
        matches!(&to_50[..], [r] if r.contains("via 10.9.0.254 dev d0")),
        "{routes}"
    );
    let to_20 = routes_to(routes, "10.20.0.0/16");
    assert!(
        matches!(&to_20[..], [r] if r.contains("via 10.9.0.253 dev d0")),
        "{routes}"
    );
    assert!(
        routes.contains("10.21.0.0/16 dev d0 scope link"),
        "a route the call did not name is gone: {routes}"
    );
    assert!(peer_addr.contains("inet6 fd00:9::9/64 "), "{peer_addr}");
    assert!(!link_flags(peer).contains(&"UP"), "{peer}");

    // A new address in the subnet of the one it replaces, and prefixes
    // that change: whatever the kernel does on the way, the link ends with
    // exactly what was asked.
    let d0 = |addresses: &[&str]| vec![interface("d0", 0, addresses, true)];
    setup_network(&agent, d0(&["10.9.9.10/16", "fd00::3/64"]), vec![])
        .await
        .expect("same-subnet SetupNetwork");
    assert_eq!(addresses_of(&agent, "d0"), ["10.9.9.10/16", "fd00::3/64"]);
    setup_network(&agent, d0(&["10.9.9.10/24", "fd00::3/48"]), vec![])
        .await
        .expect("new-prefix SetupNetwork");
    assert_eq!(addresses_of(&agent, "d0"), ["10.9.9.10/24", "fd00::3/48"]);

    drop(agent);
    assert_eq!(
        (host_has_link("d0"), host_has_link("d0p")),
        host_had,
        "the host's links changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_change_nothing() {
    let agent = TestAgent::start("net-bad").await;
    add_veth(&agent);
    setup_network(
        &agent,
        vec![
            interface("lo", 0, &[], true),
            interface("d0", 1400, &["10.1.2.3/24"], true),
        ],
        vec![route("default", "10.1.2.1", "")],
    )
    .await
    .expect("SetupNetwork");
    settle(&agent).await;
    let before = snapshot(&agent);

    // Each bad part comes after good ones that would change something.
    let good = || interface("d0", 1300, &["10.7.7.7/24"], false);
    let good_route = || route("10.30.0.0/16", "", "d0");
    let cases = [
        (
            vec![good(), interface("nope0", 0, &[], true)],
            vec![good_route()],
            Code::NotFound,
            r#"interfaces[1].name: there is no link named "nope0""#,
        ),
        (
            vec![good()],
            vec![good_route(), route("10.31.0.0/16", "", "nope1")],
            Code::NotFound,
            r#"routes[1].device: there is no link named "nope1""#,
        ),
        (
            vec![
                good(),
                interface("lo", 0, &["127.0.0.1/8", "10.0.0.300/24"], true),
            ],
            vec![good_route()],
            Code::InvalidArgument,
            r#"interfaces[1].addresses[1]: "10.0.0.300/24" is not an address in CIDR notation"#,
        ),
        (
            vec![good()],
            vec![good_route(), route("default", "", "d0")],
            Code::InvalidArgument,
            "routes[1].gateway: ",
        ),
        (
            vec![interface("d0", 40, &[], true)],
            vec![],
            Code::InvalidArgument,
            "interfaces[0].mtu: ",
        ),
    ];
    for (interfaces, routes, code, message) in cases {
        let err = setup_network(&agent, interfaces, routes)
            .await
            .expect_err(message);
        assert_eq!(err.code(), Some(code), "{err:?}");
        assert!(
            err.agent_message().unwrap_or_default().starts_with(message),
            "expected {message:?}, got {err:?}"
        );
        assert_eq!(snapshot(&agent), before, "after {message:?}");
    }

    // A failure in the kernel is INTERNAL and names what was being done.
    let err = setup_network(&agent, vec![], vec![route("10.40.0.0/16", "10.99.0.1", "")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::Internal), "{err:?}");
    assert!(
        err.agent_message()
            .unwrap_or_default()
            .starts_with("adding route 10.40.0.0/16 via 10.99.0.1: "),
        "{err:?}"
    );
}
