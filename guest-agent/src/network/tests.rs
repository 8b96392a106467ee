//! The request checks: what is accepted, and that every refusal names its
//! field. The netlink side is tested for real in tests/network.rs.

use std::net::IpAddr;

use husk_proto::agent::v1::{Interface, Route, SetupNetworkRequest};
use tonic::Code;

use super::plan::{parse_cidr, Cidr, Plan, MAX_ADDRESSES, MAX_INTERFACES, MAX_ROUTES};
use super::NetworkError;

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

fn links(interfaces: Vec<Interface>) -> SetupNetworkRequest {
    SetupNetworkRequest {
        interfaces,
        routes: vec![],
    }
}

fn routes(routes: Vec<Route>) -> SetupNetworkRequest {
    SetupNetworkRequest {
        interfaces: vec![],
        routes,
    }
}

fn cidr(text: &str) -> Cidr {
    parse_cidr(text).unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Asserts an INVALID_ARGUMENT for `field`; returns the whole message.
#[track_caller]
fn refused(request: &SetupNetworkRequest, field: &str) -> String {
    let err = Plan::new(request).expect_err("the request should be refused");
    let message = err.to_string();
    match &err {
        NetworkError::Invalid { field: f, .. } => assert_eq!(f, field, "{message}"),
        other => panic!("not a validation error: {other:?}"),
    }
    assert!(message.starts_with(&format!("{field}: ")), "{message}");
    assert_eq!(tonic::Status::from(err).code(), Code::InvalidArgument);
    message
}

#[test]
fn a_full_request_becomes_a_plan() {
    let plan = Plan::new(&SetupNetworkRequest {
        interfaces: vec![
            interface("lo", 0, &[], true),
            interface("eth0", 1400, &["10.1.2.3/24", "fd00::3/64"], true),
            interface("eth1", 0, &[], false),
        ],
        routes: vec![
            route("default", "10.1.2.1", ""),
            route("", "fd00::1", ""),
            route("192.168.50.0/24", "10.1.2.254", "eth0"),
            route("172.16.0.0/12", "", "eth1"),
        ],
    })
    .unwrap();
    let [lo, eth0, eth1] = &plan.links[..] else {
        panic!("{plan:?}")
    };
    assert_eq!(
        (lo.name.as_str(), lo.mtu, &lo.addresses, lo.up),
        ("lo", None, &None, true)
    );
    assert_eq!(eth0.mtu, Some(1400));
    assert_eq!(
        eth0.addresses,
        Some(vec![cidr("10.1.2.3/24"), cidr("fd00::3/64")])
    );
    assert_eq!(eth0.field, "interfaces[1].name");
    assert!(!eth1.up);

    let r = &plan.routes;
    assert_eq!(r[0].destination, cidr("0.0.0.0/0"));
    assert_eq!((r[0].gateway, &r[0].device), (Some(ip("10.1.2.1")), &None));
    assert_eq!(r[1].destination, cidr("::/0"));
    assert_eq!(r[2].destination, cidr("192.168.50.0/24"));
    assert_eq!(r[2].device.as_deref(), Some("eth0"));
    assert_eq!(
        (r[3].gateway, r[3].field.as_str()),
        (None, "routes[3].device")
    );
    assert_eq!(r[0].to_string(), "default via 10.1.2.1");
    assert_eq!(r[2].to_string(), "192.168.50.0/24 via 10.1.2.254 dev eth0");
    assert_eq!(r[3].to_string(), "172.16.0.0/12 dev eth1");
}

#[test]
fn an_empty_request_is_a_no_op_plan() {
    let plan = Plan::new(&SetupNetworkRequest::default()).unwrap();
    assert!(plan.links.is_empty() && plan.routes.is_empty());
}

#[test]
fn link_names_are_each_looked_up_once_with_their_first_field() {
    let plan = Plan::new(&SetupNetworkRequest {
        interfaces: vec![interface("eth0", 0, &[], true)],
        routes: vec![
            route("10.0.0.0/8", "", "eth1"),
            route("10.2.0.0/16", "", "eth0"),
            route("10.3.0.0/16", "", "eth1"),
            route("default", "10.0.0.1", ""),
        ],
    })
    .unwrap();
    assert_eq!(
        plan.link_names(),
        [("eth0", "interfaces[0].name"), ("eth1", "routes[0].device")]
    );
}

#[test]
fn link_names_are_checked_like_the_kernel_does() {
    for bad in [
        "",
        "0123456789abcdef",
        "a/b",
        "a:0",
        "a b",
        "a\tb",
        "a\0",
        ".",
        "..",
    ] {
        let message = refused(
            &links(vec![interface(bad, 0, &[], true)]),
            "interfaces[0].name",
        );
        assert!(!bad.is_empty() || message.contains("required"), "{message}");
    }
    // 15 bytes is the longest the kernel takes.
    Plan::new(&links(vec![interface("0123456789abcde", 0, &[], true)])).unwrap();
    let twice = links(vec![
        interface("eth0", 0, &[], true),
        interface("eth0", 1400, &[], true),
    ]);
    let message = refused(&twice, "interfaces[1].name");
    assert!(message.contains("twice"), "{message}");
}

#[test]
fn mtu_is_zero_or_in_the_kernel_range() {
    for good in [0, 68, 1500, 9000, 65535] {
        let plan = Plan::new(&links(vec![interface("eth0", good, &[], true)])).unwrap();
        assert_eq!(plan.links[0].mtu, (good != 0).then_some(good));
    }
    for bad in [1, 67, 65536, u32::MAX] {
        let message = refused(
            &links(vec![interface("eth0", bad, &[], true)]),
            "interfaces[0].mtu",
        );
        assert!(message.contains(&bad.to_string()), "{message}");
    }
}

#[test]
fn addresses_must_be_unicast_cidrs() {
    let message = refused(
        &links(vec![
            interface("lo", 0, &[], true),
            interface("eth0", 0, &["10.0.0.3/24", "10.0.0.300/24"], true),
        ]),
        "interfaces[1].addresses[1]",
    );
    assert_eq!(
        message,
        r#"interfaces[1].addresses[1]: "10.0.0.300/24" is not an address in CIDR notation"#
    );
    for bad in [
        "10.0.0.3",
        "10.0.0.3/",
        "/24",
        "10.0.0.3/+24",
        "10.0.0.3/ 24",
        "10.0.0.3/24/1",
        "10.0.0.3/0024",
        "eth0/24",
        "fd00::3",
        "010.0.0.3/24",
        "",
    ] {
        let message = refused(
            &links(vec![interface("eth0", 0, &[bad], true)]),
            "interfaces[0].addresses[0]",
        );
        assert!(message.contains("CIDR"), "{bad:?}: {message}");
    }
    for (bad, max) in [("10.0.0.3/33", "32"), ("fd00::3/129", "128")] {
        let message = refused(
            &links(vec![interface("eth0", 0, &[bad], true)]),
            "interfaces[0].addresses[0]",
        );
        assert!(message.contains(max), "{message}");
    }
    for bad in ["0.0.0.0/8", "::/64", "224.0.0.1/4", "ff02::1/64"] {
        let message = refused(
            &links(vec![interface("eth0", 0, &[bad], true)]),
            "interfaces[0].addresses[0]",
        );
        assert!(message.contains("unicast"), "{message}");
    }
    let message = refused(
        &links(vec![interface(
            "eth0",
            0,
            &["fd00::3/64", "fd00::3/48"],
            true,
        )]),
        "interfaces[0].addresses[1]",
    );
    assert!(message.contains("twice"), "{message}");
    // Edge prefixes are fine.
    let plan = Plan::new(&links(vec![interface(
        "eth0",
        0,
        &["10.0.0.3/32", "10.0.0.4/0", "fd00::3/128"],
        true,
    )]))
    .unwrap();
    assert_eq!(plan.links[0].addresses.as_ref().unwrap().len(), 3);
}

#[test]
fn route_destinations_are_networks_or_default() {
    let message = refused(
        &routes(vec![route("10.0.0.0", "10.1.2.1", "")]),
        "routes[0].destination",
    );
    assert!(
        message.contains("CIDR") && message.contains("default"),
        "{message}"
    );
    let message = refused(
        &routes(vec![route("192.168.50.1/24", "10.1.2.1", "")]),
        "routes[0].destination",
    );
    assert!(message.contains("192.168.50.0/24"), "{message}");
    refused(
        &routes(vec![route("fd00::1/64", "fd00::1", "")]),
        "routes[0].destination",
    );
    refused(
        &routes(vec![route("Default", "10.1.2.1", "")]),
        "routes[0].destination",
    );
    let twice = routes(vec![
        route("10.0.0.0/8", "10.1.2.1", ""),
        route("default", "10.1.2.1", ""),
        route("10.0.0.0/8", "10.1.2.2", ""),
    ]);
    let message = refused(&twice, "routes[2].destination");
    assert!(message.contains("twice"), "{message}");
    // An IPv4 and an IPv6 default are two routes.
    Plan::new(&routes(vec![
        route("default", "10.1.2.1", ""),
        route("default", "fd00::1", ""),
    ]))
    .unwrap();
}

#[test]
fn route_gateways_match_the_destination_family() {
    let message = refused(
        &routes(vec![route("default", "", "eth0")]),
        "routes[0].gateway",
    );
    assert!(
        message.contains("default route needs a gateway"),
        "{message}"
    );
    for bad in ["10.1.2.1/24", "gateway", "10.1.2"] {
        refused(
            &routes(vec![route("default", bad, "")]),
            "routes[0].gateway",
        );
    }
    for (destination, gateway) in [("fd00::/64", "10.1.2.1"), ("10.0.0.0/8", "fd00::1")] {
        let message = refused(
            &routes(vec![route(destination, gateway, "")]),
            "routes[0].gateway",
        );
        assert!(message.contains("family"), "{message}");
    }
}

#[test]
fn routes_without_a_gateway_need_a_valid_device() {
    let message = refused(
        &routes(vec![
            route("default", "10.1.2.1", ""),
            route("10.0.0.0/8", "", ""),
        ]),
        "routes[1].device",
    );
    assert!(message.contains("needs a device"), "{message}");
    refused(
        &routes(vec![route("10.0.0.0/8", "", "a/b")]),
        "routes[0].device",
    );
    refused(
        &routes(vec![route("default", "10.1.2.1", "0123456789abcdef")]),
        "routes[0].device",
    );
}

#[test]
fn counts_are_bounded() {
    let many = |n: usize| {
        (0..n)
            .map(|i| interface(&format!("eth{i}"), 0, &[], true))
            .collect::<Vec<_>>()
    };
    Plan::new(&links(many(MAX_INTERFACES))).unwrap();
    let message = refused(&links(many(MAX_INTERFACES + 1)), "interfaces");
    assert!(message.contains("65 entries"), "{message}");

    let addresses: Vec<String> = (0..=MAX_ADDRESSES)
        .map(|i| format!("10.0.{i}.1/24"))
        .collect();
    let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
    Plan::new(&links(vec![interface(
        "eth0",
        0,
        &refs[..MAX_ADDRESSES],
        true,
    )]))
    .unwrap();
    refused(
        &links(vec![interface("eth0", 0, &refs, true)]),
        "interfaces[0].addresses",
    );

    let many = |n: usize| {
        (0..n)
            .map(|i| {
                route(
                    &format!("10.{}.{}.0/24", i / 256, i % 256),
                    "10.255.0.1",
                    "",
                )
            })
            .collect::<Vec<_>>()
    };
    Plan::new(&routes(many(MAX_ROUTES))).unwrap();
    refused(&routes(many(MAX_ROUTES + 1)), "routes");
}

#[test]
fn errors_map_to_grpc_codes_and_keep_their_detail() {
    let missing = tonic::Status::from(NetworkError::NoSuchLink {
        field: "routes[1].device".into(),
        name: "eth9".into(),
    });
    assert_eq!(missing.code(), Code::NotFound);
    assert!(
        missing.message().starts_with("routes[1].device: "),
        "{missing:?}"
    );
    assert!(missing.message().contains("\"eth9\""), "{missing:?}");

    let failed = tonic::Status::from(NetworkError::Netlink {
        operation: "adding 10.0.0.3/24 to link eth0".into(),
        source: std::io::Error::from_raw_os_error(libc::EPERM),
    });
    assert_eq!(failed.code(), Code::Internal);
    assert!(
        failed
            .message()
            .starts_with("adding 10.0.0.3/24 to link eth0: Operation not permitted"),
        "{failed:?}"
    );
}
