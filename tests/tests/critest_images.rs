//! The critest images, built from Debian packages (the first run fetches
//! .debs and takes a minute or two; later runs reuse the cache entry):
//! served by a fresh registry, pulled the way a runtime pulls them, and
//! their programs run in a chroot the way the specs run them.
//!
//! Needs root (apt, chroot, mount namespaces).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use husk_tests::critest_images::{self, local_name, CritestImages};
use husk_tests::registry::TestRegistry;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::Value;
use sha2::{Digest, Sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
const NGINX: &str = "registry.k8s.io/e2e-test-images/nginx:1.14-2";
const HOSTNET_NGINX: &str = "gcr.io/k8s-staging-cri-tools/hostnet-nginx-amd64:latest";
const HTTPD: &str = "registry.k8s.io/e2e-test-images/httpd:2.4.39-4";
const NONEWPRIVS: &str = "registry.k8s.io/e2e-test-images/nonewprivs:1.3";
const CRI_TOOLS: &str = "gcr.io/k8s-staging-cri-tools/";

/// Every image the specs pull but the digest-pinned one.
fn expected_names() -> Vec<String> {
    let mut names: Vec<String> = [
        BUSYBOX,
        NGINX,
        HTTPD,
        NONEWPRIVS,
        "registry.k8s.io/pause:3.9",
        "k8s.gcr.io/pause:3.9",
        "registry.k8s.io/pause:3.10",
        HOSTNET_NGINX,
    ]
    .map(String::from)
    .into();
    for image in [
        "test-image-latest:latest",
        "test-image-tag:test",
        "test-image-tag:all",
        "test-image-1:latest",
        "test-image-2:latest",
        "test-image-3:latest",
        "test-image-tags:1",
        "test-image-tags:2",
        "test-image-tags:3",
        "test-image-user-uid:latest",
        "test-image-user-username:latest",
        "test-image-user-uid-group:latest",
        "test-image-user-username-group:latest",
        "test-image-predefined-group:latest",
    ] {
        names.push(format!("{CRI_TOOLS}{image}"));
    }
    names.sort();
    names
}

/// The images, built once per test binary.
fn images() -> &'static CritestImages {
    static IMAGES: OnceLock<CritestImages> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let started = Instant::now();
        let images = critest_images::build().expect("cannot build the critest images");
        eprintln!("critest images ready in {:.1?}", started.elapsed());
        images
    })
}

/// A fresh folder under the system temp dir (unique: tests run in
/// parallel and several use the same name).
fn scratch(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("husk-critest-{name}-{pid}-{n}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A registry of its own serving the cached storage, its config and log
/// kept out of the storage.
fn serve(name: &str) -> (TestRegistry, PathBuf) {
    let state = scratch(&format!("{name}-registry"));
    let registry = TestRegistry::start_at(&images().storage, &state).unwrap();
    (registry, state)
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn sha256(data: &[u8]) -> String {
    let hex: String = Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// One image as pulled: digests, config, layer blobs (checked against
/// their digests and diff-ids).
struct Pulled {
    manifest_digest: String,
    config_digest: String,
    config: Value,
    layers: Vec<Vec<u8>>,
}

impl Pulled {
    fn run(&self) -> &Value {
        &self.config["config"]
    }

    fn size(&self) -> usize {
        self.layers.iter().map(Vec::len).sum()
    }
}

async fn pull(client: &Client, addr: &str, name: &str) -> Pulled {
    let local = local_name(name).unwrap();
    let (repository, tag) = local.rsplit_once(':').unwrap();
    let reference = Reference::with_tag(addr.into(), repository.into(), tag.into());
    let (body, manifest_digest) = client
        .pull_manifest_raw(&reference, &RegistryAuth::Anonymous, &[OCI_MANIFEST])
        .await
        .unwrap_or_else(|e| panic!("{name} does not resolve: {e}"));
    assert_eq!(sha256(&body), manifest_digest, "{name}");
    let manifest: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(manifest["mediaType"], OCI_MANIFEST, "{name}");
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let config_blob = blob(client, &reference, &config_digest).await;
    let config: Value = serde_json::from_slice(&config_blob).unwrap();
    assert_eq!(config["architecture"], "amd64", "{name}");
    assert_eq!(config["os"], "linux", "{name}");
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let descriptors = manifest["layers"].as_array().unwrap();
    assert_eq!(diff_ids.len(), descriptors.len(), "{name}");
    let mut layers = Vec::new();
    for (descriptor, diff_id) in descriptors.iter().zip(diff_ids) {
        assert_eq!(descriptor["mediaType"], GZIP_LAYER, "{name}");
        let digest = descriptor["digest"].as_str().unwrap();
        let data = blob(client, &reference, digest).await;
        assert_eq!(
            descriptor["size"].as_u64(),
            Some(data.len() as u64),
            "{name}"
        );
        assert_eq!(sha256(&gunzip(&data)), diff_id.as_str().unwrap(), "{name}");
        layers.push(data);
    }
    Pulled {
        manifest_digest,
        config_digest,
        config,
        layers,
    }
}

async fn blob(client: &Client, reference: &Reference, digest: &str) -> Vec<u8> {
    let mut data = Vec::new();
    client
        .pull_blob(reference, digest, &mut data)
        .await
        .unwrap_or_else(|e| panic!("cannot pull {digest} from {reference}: {e}"));
    assert_eq!(sha256(&data), digest);
    data
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn client() -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    })
}

/// Pulls `names` from a fresh registry.
fn pull_all(names: &[String]) -> BTreeMap<String, Pulled> {
    let (registry, state) = serve("pull");
    let client = client();
    let pulled = block_on(async {
        let mut pulled = BTreeMap::new();
        for name in names {
            pulled.insert(name.clone(), pull(&client, registry.addr(), name).await);
        }
        pulled
    });
    drop(registry);
    fs::remove_dir_all(state).unwrap();
    pulled
}

#[test]
fn every_image_resolves_with_the_digests_and_configs_the_specs_expect() {
    let mut names = images().images.clone();
    names.sort();
    assert_eq!(names, expected_names());
    let pulled = pull_all(&names);
    let image = |name: &str| &pulled[name];
    let cri = |name: &str| &pulled[&format!("{CRI_TOOLS}{name}")];
    for (name, p) in &pulled {
        eprintln!("{name}: {} layers, {} KiB", p.layers.len(), p.size() / 1024);
        let env = p.run()["Env"].as_array().unwrap();
        assert!(
            env.iter()
                .any(|e| e.as_str().unwrap().starts_with("PATH=/")),
            "{name}"
        );
    }

    // One image under three tags; three different images; pause twice.
    let tags = cri("test-image-tags:1");
    assert_eq!(
        tags.manifest_digest,
        cri("test-image-tags:2").manifest_digest
    );
    assert_eq!(
        tags.manifest_digest,
        cri("test-image-tags:3").manifest_digest
    );
    let mut ids: Vec<&str> = [
        "test-image-1:latest",
        "test-image-2:latest",
        "test-image-3:latest",
    ]
    .map(|n| cri(n).config_digest.as_str())
    .into();
    ids.extend([
        tags.config_digest.as_str(),
        cri("test-image-tag:test").config_digest.as_str(),
        cri("test-image-tag:all").config_digest.as_str(),
        cri("test-image-latest:latest").config_digest.as_str(),
    ]);
    let before = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        before,
        "test images that must differ share an id"
    );
    let pause = image("registry.k8s.io/pause:3.9");
    assert_eq!(
        pause.manifest_digest,
        image("k8s.gcr.io/pause:3.9").manifest_digest
    );
    assert_ne!(
        pause.config_digest,
        image("registry.k8s.io/pause:3.10").config_digest
    );
    assert_eq!(pause.run()["Entrypoint"], serde_json::json!(["/pause"]));
    assert_eq!(pause.run()["User"], "65535:65535");

    // The users the image-status spec reads from the configs.
    for (name, user) in [
        ("test-image-user-uid:latest", "1002"),
        ("test-image-user-username:latest", "www-data"),
        ("test-image-user-uid-group:latest", "1003:1004"),
        ("test-image-user-username-group:latest", "www-data:1004"),
        ("test-image-predefined-group:latest", "1000"),
    ] {
        assert_eq!(cri(name).run()["User"], user, "{name}");
    }
    assert!(image(BUSYBOX).run().get("User").is_none());

    // The busybox-based images share their first layer.
    let base = &image(BUSYBOX).layers[0];
    for name in [NGINX, HTTPD, NONEWPRIVS, HOSTNET_NGINX] {
        assert_eq!(&image(name).layers[0], base, "{name}");
    }
    assert_eq!(image(BUSYBOX).run()["Cmd"], serde_json::json!(["sh"]));
    let nginx = image(NGINX).run();
    assert_eq!(
        nginx["Cmd"],
        serde_json::json!(["nginx", "-g", "daemon off;"])
    );
    assert!(nginx["ExposedPorts"].get("80/tcp").is_some());
    assert!(image(HOSTNET_NGINX).run()["ExposedPorts"]
        .get("12003/tcp")
        .is_some());
    let httpd = image(HTTPD).run();
    assert_eq!(httpd["Cmd"], serde_json::json!(["httpd-foreground"]));
    assert_eq!(httpd["WorkingDir"], "/usr/local/apache2");
    assert!(httpd["ExposedPorts"].get("80/tcp").is_some());
    let nnp = image(NONEWPRIVS).run();
    assert_eq!(nnp["Entrypoint"], serde_json::json!(["/usr/local/bin/nnp"]));
}

#[test]
fn a_second_build_reuses_the_cache_entry() {
    let first = images();
    let started = Instant::now();
    let again = critest_images::build().unwrap();
    assert_eq!(again.storage, first.storage);
    assert_eq!(again.images, first.images);
    eprintln!("warm critest image build: {:.1?}", started.elapsed());
    // Nothing the build ran is left in the storage or the entry.
    let entry = first.storage.parent().unwrap();
    let mut top: Vec<String> = fs::read_dir(entry)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["images.txt", "storage"]);
    let storage: Vec<String> = fs::read_dir(&first.storage)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(storage, ["docker"]);
}

/// Pulls `name` and unpacks its layers in order into a fresh folder.
fn rootfs(name: &str) -> (PathBuf, Pulled) {
    let pulled = pull_all(&[name.to_string()]).remove(name).unwrap();
    let dir = scratch(&format!("rootfs-{}", name.replace(['/', ':'], "_")));
    for layer in &pulled.layers {
        let tar = gunzip(layer);
        let mut archive = tar::Archive::new(&tar[..]);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_overwrite(true);
        archive.unpack(&dir).unwrap();
    }
    (dir, pulled)
}

/// Runs `args` chrooted in `root`, in new mount and pid namespaces with
/// /proc and /dev mounted as a container has them. Killing the returned
/// child kills everything in it.
fn in_chroot(root: &Path, args: &[&str]) -> Command {
    in_chroot_with(root, "", "chroot", args)
}

/// [`in_chroot`] with shell words: `setup` runs first (with `$0` the
/// root), e.g. to mask a path; `launcher` is the chroot command line
/// before the root, e.g. `chroot --userspec=1000:1000`.
fn in_chroot_with(root: &Path, setup: &str, launcher: &str, args: &[&str]) -> Command {
    let script = format!(
        "mount -t proc proc \"$0/proc\" && mount --rbind /dev \"$0/dev\" && {setup} exec {launcher} \"$0\" \"$@\""
    );
    let mut command = Command::new("unshare");
    command
        .args([
            "--mount",
            "--pid",
            "--fork",
            "--kill-child=SIGKILL",
            "sh",
            "-c",
        ])
        .arg(script)
        .arg(root)
        .args(args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    command
}

fn run(mut command: Command) -> (Output, String, String) {
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

#[test]
fn busybox_runs_its_applets_pgrep_and_ipcs_as_the_specs_do() {
    let (root, _) = rootfs(BUSYBOX);
    let (out, stdout, stderr) = run(in_chroot(
        &root,
        &[
            "/bin/sh",
            "-c",
            "ls -A /; pgrep --help; ipcs; id; echo -n hello",
        ],
    ));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in ["bin", "etc", "tmp", "usr", "proc"] {
        assert!(stdout.lines().any(|l| l == line), "no /{line}:\n{stdout}");
    }
    assert!(stdout.contains("pgrep [options] <pattern>"), "{stdout}");
    assert!(stdout.contains("Shared Memory Segments"), "{stdout}");
    assert!(stdout.contains("uid=0(root) gid=0(root)"), "{stdout}");
    assert!(stdout.ends_with("hello"), "{stdout}");
    // glibc dlopens it to end threads; nothing lists it in DT_NEEDED.
    assert!(root.join("lib/x86_64-linux-gnu/libgcc_s.so.1").exists());

    // What the specs run: pgrep finding a sleep, `ipcs -m`, `sleep
    // infinity`, netstat; brctl is there (running it would touch the host).
    let script = "sleep 30 & sleep 1; pgrep -x sleep; kill $!; ipcs -m; timeout 1 sleep infinity; \
                  echo rc=$?; netstat -ln >/dev/null && [ -x /bin/brctl ] && echo ok";
    let (out, stdout, stderr) = run(in_chroot(&root, &["/bin/sh", "-c", script]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let mut lines = stdout.lines();
    assert!(lines.next().unwrap().parse::<u32>().is_ok(), "{stdout}");
    assert!(stdout.contains("Shared Memory Segments"), "{stdout}");
    assert!(
        stdout.contains("rc=143\n"),
        "sleep infinity did not sleep:\n{stdout}"
    );
    assert!(stdout.ends_with("ok\n"), "{stdout}\n{stderr}");
    // RunAsUserName's user.
    let as_nobody = "chroot --userspec=65534:65534";
    let (_, stdout, _) = run(in_chroot_with(&root, "", as_nobody, &["/bin/id", "-nu"]));
    assert_eq!(stdout, "nobody\n");
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn busybox_lets_the_masked_paths_spec_mask_one_applet() {
    let (root, _) = rootfs(BUSYBOX);
    // The runtime masks a path by mounting /dev/null over it: with hard
    // links (not symlinks to busybox) only `ls` goes, and the shell, run
    // from its own link, reports the failed exec.
    let (out, stdout, stderr) = run(in_chroot_with(
        &root,
        "mount --bind /dev/null \"$0/bin/ls\" &&",
        "chroot",
        &["/bin/sh", "-c", "ls"],
    ));
    assert!(!out.status.success(), "{stdout}");
    assert_eq!(stderr, "/bin/sh: ls: Permission denied\n");
    fs::remove_dir_all(&root).unwrap();
}

/// A port of 127.0.0.1 nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The status line and body of `GET /` on 127.0.0.1:`port`, waiting up
/// to 20 s for the server (logging to `log`) to come up.
fn get_root(port: u16, server: &mut Server, log: &Path) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            write!(stream, "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
            let status = head.lines().next().unwrap_or_default().to_string();
            return (status, body.to_string());
        }
        if let Some(status) = server.0.try_wait().unwrap() {
            let log = fs::read_to_string(log).unwrap_or_default();
            panic!("the server exited with {status}:\n{log}");
        }
        let log = || fs::read_to_string(log).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "nothing answers on port {port}:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Replaces `from` with `to` in the rootfs file `path` (a test-only port).
fn edit(root: &Path, path: &str, from: &str, to: &str) {
    let file = root.join(path);
    let text = fs::read_to_string(&file).unwrap();
    assert!(text.contains(from), "{path} has no {from:?}:\n{text}");
    fs::write(&file, text.replace(from, to)).unwrap();
}

/// The image config's command line (Entrypoint then Cmd).
fn command_line(pulled: &Pulled) -> Vec<String> {
    let run = pulled.run();
    ["Entrypoint", "Cmd"]
        .iter()
        .filter_map(|k| run[k].as_array())
        .flatten()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// A server started in a chroot, killed (with all it started) when
/// dropped, so a failed assertion leaves nothing running.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the image's command in a chroot with the image's env, stderr to
/// `log`.
fn start(root: &Path, pulled: &Pulled, log: &Path) -> Server {
    let args = command_line(pulled);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut command = in_chroot(root, &args);
    for var in pulled.run()["Env"].as_array().unwrap() {
        let (k, v) = var.as_str().unwrap().split_once('=').unwrap();
        command.env(k, v);
    }
    command
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .map(Server)
        .unwrap()
}

#[test]
fn nginx_serves_its_page_and_writes_its_pid_where_the_specs_look() {
    let (root, pulled) = rootfs(NGINX);
    let (out, _, stderr) = run(in_chroot(&root, &["/usr/sbin/nginx", "-t"]));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("test is successful"), "{stderr}");
    let port = free_port();
    edit(
        &root,
        "etc/nginx/conf.d/default.conf",
        "listen 80;",
        &format!("listen 127.0.0.1:{port};"),
    );
    let log = root.with_extension("log");
    let mut server = start(&root, &pulled, &log);
    let (status, body) = get_root(port, &mut server, &log);
    let pid = fs::read_to_string(root.join("run/nginx.pid"));
    drop(server);
    assert!(status.contains(" 200 "), "{status}");
    assert!(body.contains("Welcome to nginx!"), "{body}");
    // The master is the namespace's first process, as in a container.
    assert_eq!(pid.unwrap().trim(), "1");
    let errors = fs::read_to_string(&log).unwrap();
    assert!(!errors.contains("[emerg]"), "{errors}");
    fs::remove_dir_all(&root).unwrap();
    fs::remove_file(&log).unwrap();
}

#[test]
fn hostnet_nginx_listens_on_12003() {
    let (root, _) = rootfs(HOSTNET_NGINX);
    let site = fs::read_to_string(root.join("etc/nginx/conf.d/default.conf")).unwrap();
    assert!(site.contains("listen 12003;"), "{site}");
    let (out, _, stderr) = run(in_chroot(&root, &["/usr/sbin/nginx", "-t"]));
    assert!(out.status.success(), "{stderr}");
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn httpd_serves_its_page_and_logs_as_httpd() {
    let (root, pulled) = rootfs(HTTPD);
    let port = free_port();
    edit(
        &root,
        "usr/local/apache2/conf/httpd.conf",
        "Listen 80\n",
        &format!("Listen 127.0.0.1:{port}\n"),
    );
    let log = root.with_extension("log");
    let mut server = start(&root, &pulled, &log);
    let (status, body) = get_root(port, &mut server, &log);
    // Apache's workers end idle threads within a second or so: a glibc
    // without libgcc_s aborts them then, which only the log shows.
    std::thread::sleep(Duration::from_millis(1500));
    drop(server);
    assert!(status.contains(" 200 "), "{status}");
    assert!(body.contains("It works!"), "{body}");
    let errors = fs::read_to_string(&log).unwrap();
    assert!(errors.contains("httpd"), "{errors}");
    // Workers that die (e.g. glibc missing libgcc_s) show up only here.
    assert!(!errors.contains("exit signal"), "{errors}");
    let (out, stdout, _) = run(in_chroot(&root, &["echo", "httpd"]));
    assert!(out.status.success());
    assert_eq!(stdout, "httpd\n");
    fs::remove_dir_all(&root).unwrap();
    fs::remove_file(&log).unwrap();
}

#[test]
fn nonewprivs_reports_the_effective_uid_with_and_without_no_new_privs() {
    let (root, _) = rootfs(NONEWPRIVS);
    let nnp = ["/usr/local/bin/nnp"];
    let as_user = "chroot --userspec=1000:1000";
    let (out, stdout, stderr) = run(in_chroot_with(&root, "", as_user, &nnp));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "Effective uid: 0\n");
    // no_new_privs, set before the chroot, survives exec and voids setuid.
    let nnp_user = "setpriv --no-new-privs chroot --userspec=1000:1000";
    let (out, stdout, stderr) = run(in_chroot_with(&root, "", nnp_user, &nnp));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "Effective uid: 1000\n");
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn pause_images_differ_by_version_and_stop_on_sigterm() {
    for (name, version) in [
        ("registry.k8s.io/pause:3.9", "3.9"),
        ("registry.k8s.io/pause:3.10", "3.10"),
    ] {
        let (root, _) = rootfs(name);
        // (No /proc or /dev in pause's image: a plain chroot.)
        let mut version_command = Command::new("chroot");
        version_command.arg(&root).args(["/pause", "-v"]);
        let (out, stdout, stderr) = run(version_command);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(stdout, format!("husk pause {version}\n"));
        let mut pause = Server(
            Command::new("chroot")
                .arg(&root)
                .arg("/pause")
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(Duration::from_millis(300));
        assert!(pause.0.try_wait().unwrap().is_none(), "pause did not wait");
        let pid = i32::try_from(pause.0.id()).unwrap();
        // SAFETY: plain kill(2) of our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        assert_eq!(pause.0.wait().unwrap().code(), Some(0));
        fs::remove_dir_all(&root).unwrap();
    }
}
