use std::path::{Path, PathBuf};

use super::*;

fn err(text: &str) -> String {
    Config::from_toml(text).unwrap_err().to_string()
}

#[test]
fn an_empty_file_gives_the_defaults() {
    let c = Config::from_toml("").unwrap();
    assert_eq!(c.socket, Path::new("/run/husk/husk.sock"));
    assert_eq!(c.state_dir, Path::new("/var/lib/husk/state"));
    assert_eq!(c.image_dir, Path::new("/var/lib/husk/images"));
    assert_eq!(c.run_dir, Path::new("/run/husk"));
    assert_eq!(c.log_level, "info");
    assert_eq!(c.runtime_handlers, ["husk"]);
    assert_eq!(c.vm.kernel, Path::new("/usr/share/husk/vmlinux"));
    assert_eq!(c.vm.initramfs, Path::new("/usr/share/husk/initramfs.cpio"));
    assert_eq!(c.vm.default_vcpus, 1);
    assert_eq!(c.vm.default_memory_mib, 256);
    assert_eq!(c.vm.overhead_memory_mib, 128);
    assert_eq!(c.vm.max_vcpus, 8);
    assert_eq!(c.vm.max_memory_mib, 16384);
    assert_eq!(c.vm.boot_timeout_secs, 120);
    assert!(c.registry.insecure.is_empty());
    assert!(c.registry.mirrors.is_empty());
    assert!(c.registry.hosts.is_empty());
}

#[test]
fn the_vmm_defaults_to_the_one_beside_this_executable() {
    let c = Config::from_toml("").unwrap();
    let exe = std::env::current_exe().unwrap();
    assert_eq!(c.vm.vmm, exe.parent().unwrap().join("husk-vmm"));
    assert_eq!(default_vmm_path(), c.vm.vmm);
}

#[test]
fn values_are_read_and_the_rest_stay_default() {
    let c = Config::from_toml(
        r#"
        socket = "/tmp/h.sock"
        log_level = "warn,husk::spec=debug"
        runtime_handlers = ["husk", "husk-fast.v2"]
        [vm]
        vmm = "/opt/husk/husk-vmm"
        default_vcpus = 2
        max_memory_mib = 2048
        [registry]
        insecure = ["127.0.0.1:5000", "registry.local", "[::1]:5000", "[fe80::1]"]
        "#,
    )
    .unwrap();
    assert_eq!(c.socket, Path::new("/tmp/h.sock"));
    assert_eq!(c.runtime_handlers, ["husk", "husk-fast.v2"]);
    assert_eq!(c.vm.vmm, PathBuf::from("/opt/husk/husk-vmm"));
    assert_eq!(c.vm.default_vcpus, 2);
    assert_eq!(c.vm.max_memory_mib, 2048);
    assert_eq!(c.vm.default_memory_mib, 256);
    assert_eq!(c.registry.insecure.len(), 4);
}

#[test]
fn unknown_keys_are_refused() {
    let e = err("sockett = \"/x\"");
    assert!(e.contains("sockett"), "{e}");
    let e = err("[vm]\nmemory = 5");
    assert!(e.contains("memory"), "{e}");
    let e = err("[registry]\nmirror = {}");
    assert!(e.contains("mirror"), "{e}");
    let e = err("[registry.mirrors.\"docker.io\"]\nendpoint = \"http://m\"");
    assert!(e.contains("endpoint"), "{e}");
    let e = err("[registry.hosts.\"m:5000\"]\ninsecure = true");
    assert!(e.contains("insecure"), "{e}");
}

#[test]
fn syntax_and_type_errors_keep_the_key_and_line() {
    let e = err("\n[vm]\ndefault_vcpus = \"two\"\n");
    assert!(e.contains("default_vcpus") && e.contains("line 3"), "{e}");
    let e = err("[vm]\ndefault_vcpus = 300\n");
    assert!(e.contains("default_vcpus"), "{e}");
    let e = err("socket = \n");
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn relative_paths_are_refused_naming_the_field() {
    for (text, field) in [
        ("socket = \"husk.sock\"", "socket:"),
        ("state_dir = \"state\"", "state_dir:"),
        ("image_dir = \"images\"", "image_dir:"),
        ("run_dir = \"run\"", "run_dir:"),
        ("[vm]\nvmm = \"husk-vmm\"", "vm.vmm:"),
        ("[vm]\nkernel = \"vmlinux\"", "vm.kernel:"),
        ("[vm]\ninitramfs = \"\"", "vm.initramfs:"),
    ] {
        let e = err(text);
        assert!(e.starts_with(field), "{text}: {e}");
    }
}

#[test]
fn vm_numbers_are_checked() {
    assert_eq!(
        err("[vm]\ndefault_vcpus = 0"),
        "vm.default_vcpus: 0 is out of range 1..=8"
    );
    assert_eq!(
        err("[vm]\ndefault_vcpus = 9"),
        "vm.default_vcpus: 9 is out of range 1..=8"
    );
    assert!(err("[vm]\nmax_vcpus = 65").starts_with("vm.max_vcpus: 65 is out of range 1..=64"));
    assert!(err("[vm]\nmax_vcpus = 0").starts_with("vm.max_vcpus:"));
    assert!(err("[vm]\ndefault_memory_mib = 32").starts_with("vm.default_memory_mib: 32 MiB"));
    assert!(err("[vm]\nmax_memory_mib = 63").starts_with("vm.max_memory_mib: 63 MiB"));
    assert!(err("[vm]\ndefault_memory_mib = 512\nmax_memory_mib = 256")
        .starts_with("vm.default_memory_mib: 512 MiB is above vm.max_memory_mib"));
    assert!(err("[vm]\noverhead_memory_mib = 16384").starts_with("vm.overhead_memory_mib:"));
    assert!(err("[vm]\nboot_timeout_secs = 0").starts_with("vm.boot_timeout_secs:"));
    // The upper bounds are inclusive.
    Config::from_toml("[vm]\ndefault_vcpus = 8\nmax_vcpus = 8").unwrap();
    Config::from_toml("[vm]\nmax_vcpus = 64\ndefault_memory_mib = 64\nmax_memory_mib = 64\noverhead_memory_mib = 0").unwrap();
}

#[test]
fn log_levels_must_parse() {
    for good in [
        "info",
        "DEBUG",
        "warn,husk=trace",
        "husk::image=debug",
        "off",
    ] {
        Config::from_toml(&format!("log_level = {good:?}")).unwrap();
    }
    for bad in ["", "verbose", "info,debgu", "husk=loud"] {
        let e = err(&format!("log_level = {bad:?}"));
        assert!(e.starts_with("log_level:"), "{bad}: {e}");
    }
}

#[test]
fn runtime_handlers_are_names() {
    for bad in ["", "Husk", "husk_vm", "husk vm", "a/b"] {
        let e = err(&format!("runtime_handlers = [{bad:?}]"));
        assert!(e.starts_with("runtime_handlers:"), "{bad}: {e}");
    }
    let c = Config::from_toml("runtime_handlers = []").unwrap();
    assert!(c.accepts_runtime_handler(""));
    assert!(!c.accepts_runtime_handler("husk"));
    let c = Config::from_toml("").unwrap();
    assert!(c.accepts_runtime_handler("husk"));
    assert!(c.accepts_runtime_handler(""));
    assert!(!c.accepts_runtime_handler("runc"));
}

#[test]
fn insecure_registries_are_host_and_port() {
    for bad in [
        "http://127.0.0.1:5000",
        "127.0.0.1:5000/v2",
        "",
        "host:",
        "host:0",
        "host:70000",
        "-bad.example",
        "[::1",
        "[nothex]:5000",
        "[::1]5000",
    ] {
        let e = err(&format!("[registry]\ninsecure = [{bad:?}]"));
        assert!(e.starts_with("registry.insecure:"), "{bad}: {e}");
    }
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let e = Config::load(&missing).unwrap_err().to_string();
    assert!(e.contains(&missing.display().to_string()), "{e}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[vm]\ndefault_vcpus = 0\n").unwrap();
    let e = Config::load(&bad).unwrap_err().to_string();
    assert!(e.contains(&bad.display().to_string()), "{e}");
    assert!(e.contains("vm.default_vcpus"), "{e}");

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "run_dir = \"/run/h\"\n").unwrap();
    assert_eq!(Config::load(&good).unwrap().run_dir, Path::new("/run/h"));
}

#[test]
fn memory_sizing() {
    let c = Config::from_toml("").unwrap();
    const MIB: u64 = 1 << 20;
    assert_eq!(c.vm_memory_mib(None), 256);
    assert_eq!(c.vm_memory_mib(Some(0)), 256);
    assert_eq!(c.vm_memory_mib(Some(512 * MIB)), 512 + 128);
    // Rounded up to whole MiB.
    assert_eq!(c.vm_memory_mib(Some(100 * MIB + 1)), 101 + 128);
    assert_eq!(c.vm_memory_mib(Some(1)), 1 + 128);
    // Clamped to the maximum, without overflow.
    assert_eq!(c.vm_memory_mib(Some(16384 * MIB)), 16384);
    assert_eq!(c.vm_memory_mib(Some(u64::MAX)), 16384);
}

#[test]
fn vcpu_sizing() {
    let c = Config::from_toml("[vm]\ndefault_vcpus = 2").unwrap();
    assert_eq!(c.vm_vcpus(0, 0), 2);
    assert_eq!(c.vm_vcpus(-1, 100_000), 2);
    assert_eq!(c.vm_vcpus(50_000, 0), 2);
    assert_eq!(c.vm_vcpus(50_000, 100_000), 1);
    assert_eq!(c.vm_vcpus(100_000, 100_000), 1);
    assert_eq!(c.vm_vcpus(100_001, 100_000), 2);
    assert_eq!(c.vm_vcpus(250_000, 100_000), 3);
    assert_eq!(c.vm_vcpus(1, 100_000), 1);
    assert_eq!(c.vm_vcpus(10_000_000, 100_000), 8);
    assert_eq!(c.vm_vcpus(i64::MAX, 1), 8);
}

/// A self-signed CA certificate (PEM) in `dir`.
fn ca_file(dir: &Path) -> PathBuf {
    let cert = rcgen::generate_simple_self_signed(vec!["husk test ca".to_string()]).unwrap();
    let path = dir.join("ca.pem");
    std::fs::write(&path, cert.cert.pem()).unwrap();
    path
}

#[test]
fn mirrors_and_hosts_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(dir.path());
    let c = Config::from_toml(&format!(
        r#"
        [registry]
        insecure = ["127.0.0.1:5000"]
        [registry.mirrors."registry.k8s.io"]
        endpoints = ["http://127.0.0.1:5001", "https://mirror.example:8443/"]
        [registry.mirrors."docker.io"]
        endpoints = ["http://127.0.0.1:5002"]
        skip_upstream = true
        [registry.hosts."mirror.example:8443"]
        ca_file = {ca:?}
        username = "puller"
        password = "hunter2"
        [registry.hosts."registry.k8s.io"]
        token = "t0ken"
        skip_verify = true
        "#
    ))
    .unwrap();
    let o = c.registry.options().unwrap();
    assert_eq!(o.insecure, ["127.0.0.1:5000"]);
    let k8s = &o.mirrors["registry.k8s.io"];
    let shown: Vec<String> = k8s.endpoints.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        shown,
        ["http://127.0.0.1:5001", "https://mirror.example:8443"]
    );
    assert!(!k8s.skip_upstream);
    assert!(o.mirrors["docker.io"].skip_upstream);
    let mirror = &o.hosts["mirror.example:8443"];
    assert_eq!(mirror.tls.ca_file.as_deref(), Some(ca.as_path()));
    assert!(!mirror.tls.skip_verify);
    assert!(matches!(
        &mirror.auth,
        crate::image::RegistryAuth::Basic { username, password }
            if username == "puller" && password == "hunter2"
    ));
    let k8s = &o.hosts["registry.k8s.io"];
    assert!(k8s.tls.skip_verify);
    assert!(matches!(&k8s.auth, crate::image::RegistryAuth::Bearer(t) if t == "t0ken"));
    // Secrets stay out of Debug output (the daemon logs its config).
    let shown = format!("{c:?} {o:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("t0ken"),
        "{shown}"
    );
}

#[test]
fn mirror_endpoints_are_checked_naming_the_entry() {
    let mirror = |endpoints: &str| {
        err(&format!(
            "[registry.mirrors.\"registry.k8s.io\"]\nendpoints = {endpoints}"
        ))
    };
    let e = mirror(r#"["http://127.0.0.1:5000", "ftp://mirror"]"#);
    assert_eq!(
        e,
        r#"registry.mirrors."registry.k8s.io".endpoints[1]: "ftp://mirror": the scheme must be http or https"#
    );
    for bad in [
        "127.0.0.1:5000",
        "http://mirror/v2",
        "http://mirror?x",
        "http://user:pw@mirror",
        "https://mirror:0",
        "http://",
    ] {
        let e = mirror(&format!("[{bad:?}]"));
        assert!(
            e.starts_with(r#"registry.mirrors."registry.k8s.io".endpoints[0]: "#),
            "{bad}: {e}"
        );
    }
    let e = mirror("[]");
    assert!(
        e.starts_with(r#"registry.mirrors."registry.k8s.io".endpoints: must list"#),
        "{e}"
    );
    let e = mirror(r#"["http://m:5000", "http://m:5000/"]"#);
    assert!(
        e.contains("endpoints[1]") && e.contains("listed twice"),
        "{e}"
    );
    let e = err("[registry.mirrors.\"http://registry.k8s.io\"]\nendpoints = [\"http://m\"]");
    assert!(
        e.starts_with(
            r#"registry.mirrors."http://registry.k8s.io": "http://registry.k8s.io" is not"#
        ),
        "{e}"
    );
    // A bare key stays bare.
    let e = err("[registry.mirrors.localhost]\nendpoints = []");
    assert!(
        e.starts_with("registry.mirrors.localhost.endpoints:"),
        "{e}"
    );
}

#[test]
fn host_settings_are_checked_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(dir.path());
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let key = dir.path().join("key.pem");
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let host = |body: &str| err(&format!("[registry.hosts.\"m.example:8443\"]\n{body}"));
    let at = |field: &str| format!(r#"registry.hosts."m.example:8443".{field}: "#);
    for (body, field, says) in [
        (
            "ca_file = \"ca.pem\"".to_string(),
            "ca_file",
            "not an absolute path",
        ),
        (format!("ca_file = {missing:?}"), "ca_file", "cannot read"),
        (
            format!("ca_file = {:?}", dir.path()),
            "ca_file",
            "is not a file",
        ),
        (
            format!("ca_file = {not_pem:?}"),
            "ca_file",
            "no PEM certificate",
        ),
        (format!("cert_file = {ca:?}"), "key_file", "missing"),
        (format!("key_file = {key:?}"), "cert_file", "missing"),
        (
            format!("cert_file = {ca:?}\nkey_file = {key:?}"),
            "cert_file",
            "client certificates are not supported yet",
        ),
        ("username = \"u\"".to_string(), "password", "missing"),
        ("password = \"p\"".to_string(), "username", "missing"),
        (
            "username = \"\"\npassword = \"p\"".to_string(),
            "username",
            "must not be empty",
        ),
        ("token = \"\"".to_string(), "token", "must not be empty"),
        (
            "username = \"u\"\npassword = \"p\"\ntoken = \"t\"".to_string(),
            "token",
            "not both",
        ),
        (
            "username = \"u\"\ntoken = \"t\"".to_string(),
            "token",
            "not both",
        ),
    ] {
        let e = host(&body);
        assert!(e.starts_with(&at(field)) && e.contains(says), "{body}: {e}");
    }
    // A host key is host[:port].
    let e = err("[registry.hosts.\"https://m.example\"]\nskip_verify = true");
    assert!(
        e.starts_with(r#"registry.hosts."https://m.example": "#),
        "{e}"
    );
    // Anonymous with only TLS settings is fine.
    Config::from_toml(&format!(
        "[registry.hosts.\"m.example:8443\"]\nca_file = {ca:?}\nskip_verify = true"
    ))
    .unwrap();
}

#[test]
fn load_checks_the_ca_file_exists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("husk.toml");
    let ca = dir.path().join("gone.pem");
    std::fs::write(
        &path,
        format!("[registry.hosts.\"m:5000\"]\nca_file = {ca:?}\n"),
    )
    .unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(e.contains(r#"registry.hosts."m:5000".ca_file"#), "{e}");
}
