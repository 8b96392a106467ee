//! Registry mirrors against real registries (Debian's docker-registry on
//! 127.0.0.1): one plays the upstream the image is named after, others the
//! mirrors `[registry.mirrors]` sends the pull to first. Each test checks
//! from the registries' access logs which one served what. Runs as root
//! (layers hold whiteouts).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use husk::config::Config;
use husk::image::{Image, ImageError, ImageErrorKind, ImageStore, RegistryAuth};
use husk_tests::registry::{push_test_images, Serving, TestImages, TestRegistry, REPOSITORY};

/// How long a registry may take to write its access log line.
const LOG_WAIT: Duration = Duration::from_secs(5);

/// A scratch folder and the busybox binary the test images are built from.
struct Fixture {
    dir: tempfile::TempDir,
    busybox: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let _one = setup_lock();
        let busybox = husk_tests::busybox::host_binary().unwrap();
        Fixture { dir, busybox }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A plain-HTTP registry without images.
    fn empty(&self, name: &str) -> TestRegistry {
        let _one = setup_lock();
        TestRegistry::start(&self.path(name)).expect("docker-registry must start for these tests")
    }

    /// A plain-HTTP registry holding the test images.
    async fn with_images(&self, name: &str) -> (TestRegistry, TestImages) {
        let registry = self.empty(name);
        let images = push_test_images(registry.addr(), &self.busybox)
            .await
            .unwrap();
        (registry, images)
    }

    /// Another registry serving `storage` (a registry's, holding images)
    /// as `serving` says.
    fn serving(&self, storage: &Path, serving: Serving) -> TestRegistry {
        let _one = setup_lock();
        TestRegistry::serve(storage, &serving).expect("docker-registry must start")
    }

    /// A store whose registry settings are `[registry]` TOML, read the way
    /// the daemon reads its file.
    fn store(&self, registry_toml: &str) -> ImageStore {
        let config =
            Config::from_toml(registry_toml).unwrap_or_else(|e| panic!("{e}\n{registry_toml}"));
        let options = config.registry.options().unwrap();
        ImageStore::open(&self.path("store"), options).unwrap()
    }

    /// A CA (`ca.pem`) and a certificate for 127.0.0.1 it signed
    /// (`server.pem`, `server-key.pem`).
    fn certificates(&self) -> (PathBuf, PathBuf, PathBuf) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "husk test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let paths = (
            self.path("ca.pem"),
            self.path("server.pem"),
            self.path("server-key.pem"),
        );
        std::fs::write(&paths.0, ca.pem()).unwrap();
        std::fs::write(&paths.1, cert.pem()).unwrap();
        std::fs::write(&paths.2, key.serialize_pem()).unwrap();
        paths
    }
}

/// Setup may apt-get install; parallel apt-gets fight over dpkg's lock.
fn setup_lock() -> std::sync::MutexGuard<'static, ()> {
    static SETUP: Mutex<()> = Mutex::new(());
    SETUP.lock().unwrap_or_else(|e| e.into_inner())
}

/// A port nothing listens on: a mirror that is down.
fn dead_endpoint() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

/// `<registry>/husk-test/busybox:<tag>`: the upstream name pulled.
fn name(upstream: &TestRegistry, tag: &str) -> String {
    format!("{}/{REPOSITORY}:{tag}", upstream.addr())
}

/// The statuses `registry` answered GETs of paths with `fragment` with,
/// once it logged at least one: access log lines come just after the
/// answer, so this waits for the first, then a little for the rest.
fn served(registry: &TestRegistry, fragment: &str) -> Vec<u16> {
    let deadline = Instant::now() + LOG_WAIT;
    while registry.get_statuses(fragment).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    registry.get_statuses(fragment)
}

async fn pull(store: &ImageStore, reference: &str) -> Image {
    store
        .pull(reference, RegistryAuth::Anonymous)
        .await
        .unwrap_or_else(|e| panic!("pull {reference}: {e}"))
}

async fn pull_err(store: &ImageStore, reference: &str) -> ImageError {
    let e = store
        .pull(reference, RegistryAuth::Anonymous)
        .await
        .expect_err("the pull must fail");
    eprintln!("{e}");
    e
}

/// The store holds `image` under the upstream's name only.
fn recorded_under_upstream(store: &ImageStore, image: &Image, upstream: &str, mirror: &str) {
    assert_eq!(store.list(), std::slice::from_ref(image));
    assert_eq!(store.get(upstream).unwrap().as_ref(), Some(image));
    assert_eq!(store.get(mirror).unwrap(), None);
}

#[tokio::test]
async fn a_mirror_with_the_image_serves_it_under_the_upstream_name() {
    let f = Fixture::new();
    let (upstream, images) = f.with_images("upstream").await;
    let (mirror, _) = f.with_images("mirror").await;
    let store = f.store(&format!(
        r#"
        [registry]
        insecure = ["{up}"]
        [registry.mirrors."{up}"]
        endpoints = ["{mirror}"]
        "#,
        up = upstream.addr(),
        mirror = mirror.url(),
    ));
    let reference = name(&upstream, "multi");
    let image = pull(&store, &reference).await;
    assert_eq!(image.id, images.multi.config_digest);
    assert_eq!(image.repo_tags, std::slice::from_ref(&reference));
    assert_eq!(image.repo_digests, [images.multi.digest_reference()]);
    recorded_under_upstream(&store, &image, &reference, &name(&mirror, "multi"));
    let busybox = store.layer_dir(&image.layers[0]).join("bin/busybox");
    assert!(busybox.is_file());
    // The mirror served everything; the upstream was not asked.
    assert_eq!(served(&mirror, "/manifests/multi"), [200]);
    for layer in &images.multi.layers {
        assert_eq!(
            mirror.get_statuses(&layer.digest),
            [200],
            "{}",
            layer.digest
        );
    }
    assert_eq!(upstream.get_statuses("/v2/husk-test/"), [0u16; 0]);
}

#[tokio::test]
async fn a_mirror_that_is_down_falls_back_to_the_upstream() {
    let f = Fixture::new();
    let (upstream, images) = f.with_images("upstream").await;
    let dead = dead_endpoint();
    let store = f.store(&format!(
        r#"
        [registry]
        insecure = ["{up}"]
        [registry.mirrors."{up}"]
        endpoints = ["{dead}"]
        "#,
        up = upstream.addr(),
    ));
    let image = pull(&store, &name(&upstream, "single")).await;
    assert_eq!(image.id, images.single.config_digest);
    assert_eq!(served(&upstream, "/manifests/single"), [200]);
    // The mirror was tried: a pull that fails everywhere says so, and the
    // upstream's answer (not found) is the kind.
    let e = pull_err(&store, &name(&upstream, "no-such-tag")).await;
    let text = e.to_string();
    assert!(text.contains(&format!("[{dead} (mirror)]")), "{text}");
    assert!(text.contains("Connection refused"), "{text}");
    assert_eq!(e.kind(), ImageErrorKind::NotFound, "{e}");
}

#[tokio::test]
async fn a_mirror_without_the_image_falls_back_to_the_upstream() {
    let f = Fixture::new();
    let (upstream, images) = f.with_images("upstream").await;
    let mirror = f.empty("mirror");
    let store = f.store(&format!(
        r#"
        [registry]
        insecure = ["{up}"]
        [registry.mirrors."{up}"]
        endpoints = ["{mirror}"]
        "#,
        up = upstream.addr(),
        mirror = mirror.url(),
    ));
    let reference = name(&upstream, "index");
    let image = pull(&store, &reference).await;
    assert_eq!(image.id, images.index.config_digest);
    recorded_under_upstream(&store, &image, &reference, &name(&mirror, "index"));
    assert_eq!(served(&mirror, "/manifests/index"), [404]);
    assert_eq!(served(&upstream, "/manifests/index"), [200]);

    // Not found anywhere: NotFound (the CRI code), naming both endpoints.
    let e = pull_err(&store, &name(&upstream, "no-such-tag")).await;
    assert_eq!(e.kind(), ImageErrorKind::NotFound, "{e}");
    let text = e.to_string();
    assert!(text.contains(&name(&upstream, "no-such-tag")), "{text}");
    assert!(
        text.contains(&format!("[{} (mirror)]", mirror.url())),
        "{text}"
    );
    assert!(
        text.contains(&format!("[{} (upstream)]", upstream.url())),
        "{text}"
    );
}

#[tokio::test]
async fn skip_upstream_never_asks_the_upstream() {
    let f = Fixture::new();
    let (upstream, _) = f.with_images("upstream").await;
    let mirror = f.empty("mirror");
    let dead = dead_endpoint();
    let store = f.store(&format!(
        r#"
        [registry]
        insecure = ["{up}"]
        [registry.mirrors."{up}"]
        endpoints = ["{dead}", "{mirror}"]
        skip_upstream = true
        "#,
        up = upstream.addr(),
        mirror = mirror.url(),
    ));
    let e = pull_err(&store, &name(&upstream, "multi")).await;
    let text = e.to_string();
    assert!(text.contains(&format!("[{dead} (mirror)]")), "{text}");
    assert!(
        text.contains(&format!("[{} (mirror)]", mirror.url())),
        "{text}"
    );
    assert!(text.contains("not tried (skip_upstream)"), "{text}");
    assert!(!text.contains("(upstream)"), "{text}");
    // One mirror down, one without it: a retry may help.
    assert_eq!(e.kind(), ImageErrorKind::Unavailable, "{e}");
    assert_eq!(served(&mirror, "/manifests/multi"), [404]);
    assert_eq!(upstream.get_statuses("/v2/husk-test/"), [0u16; 0]);
    assert!(store.list().is_empty());
}

#[tokio::test]
async fn a_mirror_serving_corrupt_content_falls_back_and_keeps_what_was_good() {
    let f = Fixture::new();
    let (upstream, images) = f.with_images("upstream").await;
    let (mirror, _) = f.with_images("mirror").await;
    let bad = images.multi.layers[2].digest.clone();
    let path = mirror.blob_data_path(&bad);
    let mut data = std::fs::read(&path).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0xff;
    std::fs::write(&path, data).unwrap();
    let store = f.store(&format!(
        r#"
        [registry]
        insecure = ["{up}"]
        [registry.mirrors."{up}"]
        endpoints = ["{mirror}"]
        "#,
        up = upstream.addr(),
        mirror = mirror.url(),
    ));
    let image = pull(&store, &name(&upstream, "multi")).await;
    assert_eq!(image.id, images.multi.config_digest);
    let hello = store.layer_dir(&image.layers[2]).join("husk/hello");
    assert_eq!(
        std::fs::read_to_string(hello).unwrap(),
        husk_tests::registry::HELLO
    );
    assert_eq!(served(&mirror, &bad), [200]);
    assert_eq!(served(&upstream, &bad), [200], "the good copy");
    // The config the mirror delivered (verified) is not fetched again.
    assert_eq!(mirror.get_statuses(&images.multi.config_digest), [200]);
    assert_eq!(
        upstream.get_statuses(&images.multi.config_digest),
        [0u16; 0]
    );
}

#[tokio::test]
async fn a_tls_mirror_with_its_own_ca() {
    let f = Fixture::new();
    let upstream = f.empty("upstream");
    let (plain, images) = f.with_images("mirror").await;
    let (ca, cert, key) = f.certificates();
    let tls = f.serving(
        plain.storage(),
        Serving {
            tls: Some((cert, key)),
            ..Default::default()
        },
    );
    assert!(tls.url().starts_with("https://"));
    let mirror = |host_settings: &str| {
        format!(
            r#"
            [registry]
            insecure = ["{up}"]
            [registry.mirrors."{up}"]
            endpoints = ["{mirror}"]
            {host_settings}
            "#,
            up = upstream.addr(),
            mirror = tls.url(),
        )
    };
    let reference = name(&upstream, "single");

    // Without the CA: a TLS failure, named; the upstream's answer decides
    // the kind.
    let store = f.store(&mirror(""));
    let e = pull_err(&store, &reference).await;
    let text = e.to_string();
    assert!(
        text.contains(&format!("[{} (mirror)]", tls.url())),
        "{text}"
    );
    assert!(text.contains("certificate"), "{text}");
    assert_eq!(e.kind(), ImageErrorKind::NotFound, "{e}");
    drop(store);

    // With it: pulled from the mirror.
    let with_ca = format!(
        "[registry.hosts.\"{}\"]\nca_file = {:?}",
        tls.addr(),
        ca.display().to_string()
    );
    let store = f.store(&mirror(&with_ca));
    let image = pull(&store, &reference).await;
    assert_eq!(image.id, images.single.config_digest);
    assert_eq!(image.repo_tags, std::slice::from_ref(&reference));
    assert_eq!(served(&tls, "/manifests/single"), [200]);
    assert_eq!(
        served(&upstream, "/manifests/single"),
        [404],
        "the CA-less try"
    );
    drop(store);

    // skip_verify trusts it too (a fresh store, so it pulls again).
    std::fs::remove_dir_all(f.path("store")).unwrap();
    let skip = format!("[registry.hosts.\"{}\"]\nskip_verify = true", tls.addr());
    let store = f.store(&mirror(&skip));
    pull(&store, &reference).await;
    assert_eq!(served(&tls, "/manifests/single"), [200, 200]);
}

#[tokio::test]
async fn a_mirror_with_basic_auth_gets_its_hosts_credentials() {
    let f = Fixture::new();
    let (upstream, images) = f.with_images("upstream").await;
    let (plain, _) = f.with_images("mirror").await;
    let auth = f.serving(
        plain.storage(),
        Serving {
            basic_auth: Some(("puller".into(), "s3cret".into())),
            ..Default::default()
        },
    );
    let config = |password: &str| {
        format!(
            r#"
            [registry]
            insecure = ["{up}"]
            [registry.mirrors."{up}"]
            endpoints = ["{mirror}"]
            [registry.hosts."{mirror_host}"]
            username = "puller"
            password = "{password}"
            "#,
            up = upstream.addr(),
            mirror = auth.url(),
            mirror_host = auth.addr(),
        )
    };
    let reference = name(&upstream, "multi");
    let store = f.store(&config("s3cret"));
    let image = pull(&store, &reference).await;
    assert_eq!(image.id, images.multi.config_digest);
    assert_eq!(served(&auth, "/manifests/multi"), [200]);
    assert_eq!(upstream.get_statuses("/v2/husk-test/"), [0u16; 0]);
    drop(store);

    // A wrong password: refused, so the upstream serves it.
    std::fs::remove_dir_all(f.path("store")).unwrap();
    let store = f.store(&config("wrong"));
    let image = pull(&store, &reference).await;
    assert_eq!(image.id, images.multi.config_digest);
    let statuses = served(&auth, "/manifests/multi");
    assert_eq!(statuses, [200, 401], "{statuses:?}");
    assert_eq!(served(&upstream, "/manifests/multi"), [200]);
}

#[tokio::test]
async fn the_pulls_own_credentials_never_go_to_a_mirror() {
    let f = Fixture::new();
    let upstream = f.empty("upstream");
    let (plain, _) = f.with_images("mirror").await;
    let auth = f.serving(
        plain.storage(),
        Serving {
            basic_auth: Some(("puller".into(), "s3cret".into())),
            ..Default::default()
        },
    );
    let store = f.store(&format!(
        r#"
        [registry]
        insecure = ["{up}"]
        [registry.mirrors."{up}"]
        endpoints = ["{mirror}"]
        "#,
        up = upstream.addr(),
        mirror = auth.url(),
    ));
    // The mirror's own credentials, but given for the upstream (as kubelet
    // does): the mirror is asked anonymously and refuses.
    let given = RegistryAuth::Basic {
        username: "puller".into(),
        password: "s3cret".into(),
    };
    let e = store
        .pull(&name(&upstream, "multi"), given)
        .await
        .expect_err("the mirror must refuse an anonymous pull");
    eprintln!("{e}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("[{} (mirror)]", auth.url())),
        "{text}"
    );
    assert_eq!(served(&auth, "/manifests/multi"), [401]);
    assert_eq!(served(&upstream, "/manifests/multi"), [404]);
    assert_eq!(
        e.kind(),
        ImageErrorKind::NotFound,
        "the upstream's answer: {e}"
    );
}
