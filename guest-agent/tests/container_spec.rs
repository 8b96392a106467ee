//! Each OCI runtime spec field the engine honours, checked from inside a
//! busybox container on this machine (root, real namespaces and mounts).

mod harness;

use harness::{spec, TestAgent};
use serde_json::json;

/// Runs `script` in a container from `spec`, expecting success; returns
/// its stdout.
async fn ok(agent: &TestAgent, id: &str, spec: serde_json::Value, script: &str) -> String {
    let (exit, out, err) = agent.sh(id, spec, script).await;
    assert_eq!(exit.code, 0, "{id}: stdout {out:?} stderr {err:?}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn args_env_cwd_user_umask_rlimits() {
    let agent = TestAgent::start("process").await;
    let mut s = spec(&[]);
    s["process"]["env"] = json!(["PATH=/bin", "GREETING=hi there"]);
    s["process"]["cwd"] = json!("/tmp");
    let out = ok(
        &agent,
        "envcwd",
        s,
        "echo \"$GREETING\"; pwd; echo \"$0\" \"$#\"",
    )
    .await;
    assert_eq!(out, "hi there\n/tmp\n/bin/sh 0\n");

    let mut s = spec(&[]);
    s["process"]["user"] =
        json!({"uid": 1000, "gid": 1000, "additionalGids": [1001, 5], "umask": 63});
    let out = ok(
        &agent,
        "user",
        s,
        "id -u; id -g; id -G; umask; touch /tmp/f; stat -c %a /tmp/f",
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["1000", "1000"], "{out}");
    let mut groups: Vec<&str> = lines[2].split(' ').collect();
    groups.sort();
    assert_eq!(groups, ["1000", "1001", "5"], "{out}");
    assert_eq!(lines[3..], ["0077", "600"], "{out}");

    let mut s = spec(&[]);
    s["process"]["rlimits"] = json!([
        {"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}
    ]);
    let out = ok(&agent, "rlimits", s, "ulimit -n; ulimit -H -n; ulimit -c").await;
    assert_eq!(out, "123\n456\n0\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_and_no_new_privileges() {
    let agent = TestAgent::start("caps").await;
    let mut s = spec(&[]);
    // CAP_CHOWN is bit 0, CAP_KILL bit 5, CAP_NET_BIND_SERVICE bit 10.
    s["process"]["capabilities"] = json!({
        "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "permitted": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "effective": ["CAP_KILL"],
        "inheritable": ["CAP_NET_BIND_SERVICE"],
        "ambient": ["CAP_NET_BIND_SERVICE"]
    });
    s["process"]["noNewPrivileges"] = json!(true);
    // Not root: root regains its bounding set at every exec.
    s["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    let out = ok(
        &agent,
        "caps",
        s,
        "grep -E '^(Cap|NoNewPrivs)' /proc/self/status",
    )
    .await;
    // Across the exec of grep: ambient caps become permitted and effective.
    let want = [
        "CapInh:\t0000000000000400",
        "CapPrm:\t0000000000000400",
        "CapEff:\t0000000000000400",
        "CapBnd:\t0000000000000421",
        "CapAmb:\t0000000000000400",
        "NoNewPrivs:\t1",
    ];
    for line in want {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }

    // Root: the bounding set caps what every exec regains.
    let mut s = spec(&[]);
    s["process"]["capabilities"] = json!({
        "bounding": ["CAP_CHOWN", "CAP_KILL"],
        "permitted": ["CAP_CHOWN", "CAP_KILL"],
        "effective": ["CAP_KILL"]
    });
    s["process"]["noNewPrivileges"] = json!(false);
    let out = ok(&agent, "caps2", s, "while read k v; do case $k in CapEff:|CapPrm:|NoNewPrivs:) echo $k $v;; esac; done < /proc/self/status").await;
    assert_eq!(
        out,
        "CapPrm: 0000000000000021\nCapEff: 0000000000000021\nNoNewPrivs: 0\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_hostname_and_overlay_rootfs() {
    let agent = TestAgent::start("ns").await;
    let mut s = spec(&[]);
    s["hostname"] = json!("box-1");
    let script = "echo $$; hostname; readlink /proc/self/ns/net; readlink /proc/self/ns/ipc; \
                  echo layer-write > /written; cat /etc/passwd | head -1";
    let (exit, out, err) = agent.sh("ns", s.clone(), script).await;
    assert_eq!(exit.code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1", "the process is pid 1 of its pid namespace");
    assert_eq!(lines[1], "box-1");
    // net is shared with the sandbox (the agent's), ipc is the container's own.
    let agent_net = std::fs::read_link(format!("/proc/{}/ns/net", agent.pid())).unwrap();
    let agent_ipc = std::fs::read_link(format!("/proc/{}/ns/ipc", agent.pid())).unwrap();
    assert_eq!(lines[2], agent_net.to_str().unwrap());
    assert_ne!(lines[3], agent_ipc.to_str().unwrap());
    assert!(lines[4].starts_with("root:"), "{out}");
    // The write landed in the writable layer, not the image layer; delete
    // (inside `sh`) removed the writable layer with the container.
    assert!(!agent.shared().join("busybox/written").exists());

    // Written files live in the container's upper dir while it exists.
    agent
        .create("upper", &{
            let mut s = spec(&["/bin/sh", "-c", "echo x > /new-file; sleep 3600"]);
            s["hostname"] = json!("u");
            s
        })
        .await
        .unwrap();
    agent.start_container("upper").await.unwrap();
    let upper = agent.container_dir("upper").join("upper/new-file");
    let deadline = std::time::Instant::now() + harness::TIMEOUT;
    while !upper.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never appeared",
            upper.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    agent.delete("upper", true).await.unwrap();
    assert!(harness::gone(&agent.container_dir("upper")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_rootfs_mounts_masked_and_readonly_paths() {
    let agent = TestAgent::start("mounts").await;
    let volume = agent.shared().join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::write(volume.join("data"), "from the host\n").unwrap();

    let mut s = spec(&[]);
    s["root"]["readonly"] = json!(true);
    let mounts = s["mounts"].as_array_mut().unwrap();
    mounts.push(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "size=1m"]}));
    mounts.push(json!({"destination": "/vol", "type": "bind", "source": volume, "options": ["rbind", "ro"]}));
    s["linux"]["maskedPaths"] = json!(["/etc/hosts", "/root", "/etc/shadow-missing"]);
    s["linux"]["readonlyPaths"] = json!(["/proc/sys"]);
    let script = "touch /x 2>&1; echo rc=$?; \
                  echo ok > /scratch/y && cat /scratch/y; \
                  cat /vol/data; touch /vol/z 2>&1; echo rc=$?; \
                  wc -c < /etc/hosts; ls -A /root | wc -l; \
                  (echo 1 > /proc/sys/kernel/hostname) 2>&1; echo rc=$?; \
                  ls /dev/null /dev/zero /dev/pts/ptmx >/dev/null && echo devs; \
                  cut -d' ' -f2,3 /proc/mounts";
    let out = ok(&agent, "mounts", s, script).await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("Read-only file system"), "{out}");
    assert_eq!(lines[1], "rc=1");
    assert_eq!(lines[2], "ok");
    assert_eq!(lines[3], "from the host");
    assert!(lines[4].contains("Read-only file system"), "{out}");
    assert_eq!(lines[5], "rc=1");
    assert_eq!(lines[6], "0", "masked /etc/hosts must read empty: {out}");
    assert_eq!(lines[7], "0", "masked /root must be empty: {out}");
    assert!(lines[8].contains("Read-only file system"), "{out}");
    assert_eq!(lines[9], "rc=1");
    assert_eq!(lines[10], "devs");
    // The default spec's mounts, each its own filesystem type.
    let mounts = &lines[11..];
    for want in [
        "/ overlay",
        "/proc proc",
        "/dev tmpfs",
        "/dev/pts devpts",
        "/dev/shm tmpfs",
        "/dev/mqueue mqueue",
        "/sys sysfs",
        "/scratch tmpfs",
    ] {
        assert!(mounts.contains(&want), "no {want:?} in {mounts:?}");
    }
    assert!(
        mounts.iter().any(|m| m.starts_with("/sys/fs/cgroup ")),
        "no cgroup mount in {mounts:?}"
    );
    assert!(!volume.join("z").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_rules_deny_syscalls() {
    let agent = TestAgent::start("seccomp").await;
    let mut s = spec(&[]);
    s["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"names": ["sethostname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
        ]
    });
    let script =
        "mkdir /tmp/d 2>&1; echo rc=$?; touch /tmp/f && echo touched; hostname x 2>&1; echo rc=$?";
    let out = ok(&agent, "seccomp", s, script).await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("Operation not permitted"), "{out}");
    assert_eq!(lines[1], "rc=1");
    assert_eq!(lines[2], "touched");
    assert!(lines[3].contains("not implemented"), "{out}");
}
