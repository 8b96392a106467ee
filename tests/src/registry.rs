//! A local OCI registry for tests: Debian's `docker-registry` (CNCF
//! distribution) on 127.0.0.1, plus deterministic busybox test images
//! pushed to it with oci-client.
//!
//! The images exercise what the image store must handle: several layers
//! with gzip, zstd and plain tar compression, whiteouts and opaque folders,
//! a multi-platform index, and a layer shared between images.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::debian;

/// How long the registry may take to answer `GET /v2/`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The repository every test image is pushed to.
pub const REPOSITORY: &str = "husk-test/busybox";

/// What `/husk/hello` holds in the test images.
pub const HELLO: &str = "hello from a husk microVM";

/// The fixed mtime of every test layer entry, so layers are reproducible.
const MTIME: u64 = 1_700_000_000;

/// The test images' users and groups: the same as the engine tests' layer.
use crate::busybox::{GROUP, PASSWD};

/// Applets linked in `/bin`: what tests and container workloads use.
const APPLETS: &[&str] = &[
    "sh",
    "ash",
    "echo",
    "cat",
    "ls",
    "sleep",
    "env",
    "id",
    "test",
    "[",
    "true",
    "false",
    "printf",
    "mkdir",
    "rm",
    "cp",
    "mv",
    "ln",
    "pwd",
    "ps",
    "kill",
    "grep",
    "sed",
    "head",
    "tail",
    "wc",
    "stat",
    "touch",
    "chmod",
    "chown",
    "date",
    "hostname",
    "uname",
    "mount",
    "umount",
    "dd",
    "df",
    "du",
    "find",
    "xargs",
    "sort",
    "uniq",
    "cut",
    "tr",
    "tee",
    "whoami",
    "readlink",
    "realpath",
    "basename",
    "dirname",
    "wget",
    "nc",
    "ip",
    "seq",
    "yes",
    "nproc",
    "free",
    "timeout",
    "sync",
    "which",
    "expr",
    "awk",
    "md5sum",
    "sha256sum",
    "base64",
    "od",
];

/// Debian's registry program.
const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";

/// A running `docker-registry`, killed on drop.
pub struct TestRegistry {
    child: Child,
    addr: String,
    storage: PathBuf,
    log: PathBuf,
    tls: bool,
}

/// How [`TestRegistry::serve`] serves: over TLS, behind basic auth, or
/// both. The default is what [`TestRegistry::start`] runs.
#[derive(Debug, Clone, Default)]
pub struct Serving {
    /// The server's certificate chain and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The one user (name, password) allowed in; everyone else gets 401.
    pub basic_auth: Option<(String, String)>,
}

/// One line of a registry's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path with its query, e.g. `/v2/husk-test/busybox/manifests/multi`.
    pub path: String,
    pub status: u16,
}

impl TestRegistry {
    /// Starts a registry storing into `storage_dir` on a free port of
    /// 127.0.0.1 and waits until it answers. Installs docker-registry
    /// first if needed.
    pub fn start(storage_dir: &Path) -> anyhow::Result<TestRegistry> {
        debian::ensure_installed(&["docker-registry"])?;
        Self::start_with(Path::new(REGISTRY_BINARY), storage_dir)
    }

    /// Like [`TestRegistry::start`] with the registry program at `binary`
    /// (the rig's L1 host has no dpkg: its payload carries the binary).
    pub fn start_with(binary: &Path, storage_dir: &Path) -> anyhow::Result<TestRegistry> {
        Self::launch(
            binary,
            storage_dir,
            None,
            &Serving::default(),
            "husk-registry",
        )
    }

    /// Like [`TestRegistry::start`], but writes its config and log into
    /// `state_dir` instead of the storage: for a storage that is shared
    /// (a cache entry several registries may serve at once) or handed on.
    pub fn start_at(storage_dir: &Path, state_dir: &Path) -> anyhow::Result<TestRegistry> {
        debian::ensure_installed(&["docker-registry"])?;
        let binary = Path::new(REGISTRY_BINARY);
        Self::launch(
            binary,
            storage_dir,
            Some(state_dir),
            &Serving::default(),
            "",
        )
    }

    /// Starts another registry on the storage at `storage_dir` (which may
    /// be another running registry's [`TestRegistry::storage`]: push there
    /// over plain HTTP, serve here), served as `serving` says. Its config
    /// and log files are named after its port, beside the storage.
    /// Installs docker-registry (and apache2-utils for `htpasswd`) first if
    /// needed.
    pub fn serve(storage_dir: &Path, serving: &Serving) -> anyhow::Result<TestRegistry> {
        debian::ensure_installed(&["docker-registry"])?;
        if serving.basic_auth.is_some() {
            debian::ensure_installed(&["apache2-utils"])?;
        }
        Self::launch(Path::new(REGISTRY_BINARY), storage_dir, None, serving, "")
    }

    /// Writes the config (`<name>.yml`; `husk-registry-<port>` when `name`
    /// is empty) into `state_dir` (default: the storage), runs the registry
    /// and waits until it answers.
    fn launch(
        binary: &Path,
        storage_dir: &Path,
        state_dir: Option<&Path>,
        serving: &Serving,
        name: &str,
    ) -> anyhow::Result<TestRegistry> {
        fs::create_dir_all(storage_dir)?;
        let storage = storage_dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", storage_dir.display()))?;
        let state = match state_dir {
            Some(dir) => {
                fs::create_dir_all(dir)?;
                dir.to_path_buf()
            }
            None => storage.clone(),
        };
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let name = match name {
            "" => format!("husk-registry-{port}"),
            given => given.to_string(),
        };
        // No blob descriptor cache: tests corrupt blobs behind its back.
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n",
            storage.display()
        );
        if let Some((cert, key)) = &serving.tls {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        if let Some((user, password)) = &serving.basic_auth {
            let htpasswd = state.join(format!("{name}.htpasswd"));
            fs::write(&htpasswd, htpasswd_line(user, password)?)?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: husk-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = state.join(format!("{name}.yml"));
        fs::write(&config_path, config)?;
        let log_path = state.join(format!("{name}.log"));
        let log = fs::File::create(&log_path)?;
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run {}", binary.display()))?;
        let mut registry = TestRegistry {
            child,
            addr,
            storage,
            log: log_path,
            tls: serving.tls.is_some(),
        };
        // A plain request to a TLS port gets a 400, without credentials a
        // 401: either way the registry is up.
        let plain = serving.tls.is_none() && serving.basic_auth.is_none();
        registry.wait_ready(plain)?;
        Ok(registry)
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://127.0.0.1:PORT`, or `https://` when served over TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The registry's storage root (where tests can tamper with blobs).
    pub fn storage(&self) -> &Path {
        &self.storage
    }

    /// Every request the registry answered so far, from its access log,
    /// oldest first.
    pub fn requests(&self) -> Vec<Request> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter_map(access_line).collect()
    }

    /// The status codes this registry answered GET requests (pulls, not
    /// the pushes that filled it) for paths containing `fragment` with
    /// (e.g. `/manifests/multi`), oldest first.
    pub fn get_statuses(&self, fragment: &str) -> Vec<u16> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path.contains(fragment))
            .map(|r| r.status)
            .collect()
    }

    /// The file holding blob `digest` (`sha256:<hex>`) in the storage.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    fn wait_ready(&mut self, plain: bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let text = fs::read_to_string(&self.log).unwrap_or_default();
                bail!("docker-registry exited with {status} before answering:\n{text}");
            }
            if let Ok(line) = get_status_line(&self.addr, "/v2/") {
                let up = if plain {
                    line.contains(" 200 ")
                } else {
                    line.starts_with("HTTP/")
                };
                if up {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                let text = fs::read_to_string(&self.log).unwrap_or_default();
                bail!(
                    "docker-registry on {} did not answer in {READY_TIMEOUT:?}:\n{text}",
                    self.addr
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bcrypt `user:hash` line, as docker-registry's htpasswd wants it.
fn htpasswd_line(user: &str, password: &str) -> anyhow::Result<String> {
    let out = Command::new("htpasswd")
        .args(["-n", "-b", "-B", user, password])
        .output()
        .context("cannot run htpasswd (Debian's apache2-utils)")?;
    if !out.status.success() {
        bail!(
            "htpasswd failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string() + "\n")
}

/// An access log line: `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 ...`.
fn access_line(line: &str) -> Option<Request> {
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once('"')?;
    let mut words = request.split(' ');
    let (method, path) = (words.next()?, words.next()?);
    let status = rest.split_whitespace().next()?.parse().ok()?;
    Some(Request {
        method: method.to_string(),
        path: path.to_string(),
        status,
    })
}

/// The status line of a plain HTTP/1.0 GET.
fn get_status_line(addr: &str, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

/// One pushed layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestLayer {
    /// Digest of the (compressed) blob.
    pub digest: String,
    /// Digest of the uncompressed tar (the config's diff-id).
    pub diff_id: String,
    pub media_type: String,
    /// Compressed size.
    pub size: u64,
}

impl TestLayer {
    /// The diff-id's hex: the image store's layer key.
    pub fn key(&self) -> &str {
        self.diff_id.trim_start_matches("sha256:")
    }
}

/// One pushed image (for an index: its linux/amd64 image).
#[derive(Debug, Clone)]
pub struct TestImage {
    /// `127.0.0.1:PORT/husk-test/busybox:<tag>`.
    pub reference: String,
    /// What the tag points to (the index's digest for an index).
    pub manifest_digest: String,
    /// The image config's digest: the store's image id.
    pub config_digest: String,
    pub layers: Vec<TestLayer>,
}

impl TestImage {
    /// `repo@<manifest digest>`.
    pub fn digest_reference(&self) -> String {
        let repo = self
            .reference
            .rsplit_once(':')
            .map_or(&*self.reference, |(r, _)| r);
        format!("{repo}@{}", self.manifest_digest)
    }

    /// Sum of compressed layer sizes.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// What [`push_test_images`] pushed.
#[derive(Debug, Clone)]
pub struct TestImages {
    /// `:multi`: busybox (gzip), then `/husk` files (zstd), then a layer
    /// with a whiteout, an opaque folder and `/husk/hello` (plain tar).
    pub multi: TestImage,
    /// `:index`: an OCI index; `index` describes its linux/amd64 image
    /// (busybox layer + `/husk/arch` = `amd64`).
    pub index: TestImage,
    /// The digests of the index's amd64 and arm64 manifests.
    pub index_amd64_manifest: String,
    pub index_arm64_manifest: String,
    /// `:single`: the busybox layer alone.
    pub single: TestImage,
    /// The busybox layer all three images share (`:multi`'s first).
    pub busybox_layer: TestLayer,
}

/// A built layer: its tar and the blob pushed for it.
pub(crate) struct Layer {
    pub(crate) info: TestLayer,
    pub(crate) blob: Vec<u8>,
}

#[derive(Clone, Copy)]
pub(crate) enum Compress {
    Gzip,
    Zstd,
    Plain,
}

pub(crate) fn sha256(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl Layer {
    pub(crate) fn new(tar: Vec<u8>, compress: Compress) -> anyhow::Result<Layer> {
        let (blob, media_type) = match compress {
            Compress::Gzip => {
                let mut gz =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                gz.write_all(&tar)?;
                (gz.finish()?, "application/vnd.oci.image.layer.v1.tar+gzip")
            }
            Compress::Zstd => (
                zstd::encode_all(&tar[..], 3)?,
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
            Compress::Plain => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
        };
        Ok(Layer {
            info: TestLayer {
                digest: sha256(&blob),
                diff_id: sha256(&tar),
                media_type: media_type.to_string(),
                size: blob.len() as u64,
            },
            blob,
        })
    }
}

/// Builds deterministic tar streams: fixed times, root-owned unless told.
pub(crate) struct TarBuilder(tar::Builder<Vec<u8>>);

impl TarBuilder {
    pub(crate) fn new() -> TarBuilder {
        TarBuilder(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_size(size);
        h
    }

    pub(crate) fn dir(&mut self, path: &str, mode: u32) -> anyhow::Result<&mut Self> {
        self.dir_owned(path, mode, (0, 0))
    }

    /// A folder owned by `(uid, gid)`, e.g. a user's home.
    pub(crate) fn dir_owned(
        &mut self,
        path: &str,
        mode: u32,
        (uid, gid): (u64, u64),
    ) -> anyhow::Result<&mut Self> {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        h.set_uid(uid);
        h.set_gid(gid);
        self.0.append_data(&mut h, path, std::io::empty())?;
        Ok(self)
    }

    pub(crate) fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> anyhow::Result<&mut Self> {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.0.append_data(&mut h, path, data)?;
        Ok(self)
    }

    pub(crate) fn symlink(&mut self, path: &str, target: &str) -> anyhow::Result<&mut Self> {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.0.append_link(&mut h, path, target)?;
        Ok(self)
    }

    /// A hard link to `target`, a path earlier in the same tar.
    pub(crate) fn hardlink(&mut self, path: &str, target: &str) -> anyhow::Result<&mut Self> {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0);
        self.0.append_link(&mut h, path, target)?;
        Ok(self)
    }

    pub(crate) fn finish(mut self) -> anyhow::Result<Vec<u8>> {
        self.0.finish()?;
        Ok(self.0.into_inner()?)
    }
}

/// Layer (a): busybox, its applet links, passwd/group, `/husk/hello`.
fn busybox_tar(busybox: &Path) -> anyhow::Result<Vec<u8>> {
    let mut binary = Vec::new();
    fs::File::open(busybox)
        .with_context(|| format!("cannot read {}", busybox.display()))?
        .read_to_end(&mut binary)?;
    let mut t = TarBuilder::new();
    t.dir("bin", 0o755)?.file("bin/busybox", 0o755, &binary)?;
    for applet in APPLETS {
        t.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    t.dir("etc", 0o755)?
        .file("etc/passwd", 0o644, PASSWD.as_bytes())?
        .file("etc/group", 0o644, GROUP.as_bytes())?;
    for dir in ["proc", "sys", "dev"] {
        t.dir(dir, 0o755)?;
    }
    t.dir("root", 0o700)?.dir("tmp", 0o1777)?;
    t.dir("husk", 0o755)?
        .file("husk/hello", 0o644, HELLO.as_bytes())?;
    t.finish()
}

/// Layer (b) of `:multi`.
fn husk_files_tar() -> anyhow::Result<Vec<u8>> {
    let mut t = TarBuilder::new();
    t.dir("husk", 0o755)?
        .file("husk/kept", 0o644, b"kept\n")?
        .file("husk/removed", 0o644, b"removed\n")?
        .dir("husk/dir", 0o755)?
        .file("husk/dir/a", 0o644, b"a\n")?;
    t.finish()
}

/// Layer (c) of `:multi`: deletes `/husk/removed`, makes `/husk/dir`
/// opaque (hiding `a`) with a new `b`, and writes `/husk/hello`.
fn whiteout_tar() -> anyhow::Result<Vec<u8>> {
    let mut t = TarBuilder::new();
    t.dir("husk", 0o755)?
        .file("husk/.wh.removed", 0o644, b"")?
        .dir("husk/dir", 0o755)?
        .file("husk/dir/.wh..wh..opq", 0o644, b"")?
        .file("husk/dir/b", 0o644, b"b\n")?
        .file("husk/hello", 0o644, HELLO.as_bytes())?;
    t.finish()
}

fn marker_tar(arch: &str) -> anyhow::Result<Vec<u8>> {
    let mut t = TarBuilder::new();
    t.dir("husk", 0o755)?
        .file("husk/arch", 0o644, arch.as_bytes())?;
    t.finish()
}

/// A test image's config blob.
fn config(arch: &str, image: &str, layers: &[&Layer]) -> Vec<u8> {
    let run = json!({
        "Env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            format!("HUSK_IMAGE={image}")
        ],
        "Cmd": ["/bin/sh"],
        "WorkingDir": "/",
        "Labels": { "io.husk.test.image": image }
    });
    image_config(arch, run, layers)
}

/// An image config blob for `layers` with `run` (Env, Cmd, User...) as its
/// `config`, created at a fixed time so equal inputs give equal digests.
pub(crate) fn image_config(arch: &str, run: Value, layers: &[&Layer]) -> Vec<u8> {
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.info.diff_id.as_str()).collect();
    let value = json!({
        "created": "2023-11-14T22:13:20Z",
        "architecture": arch,
        "os": "linux",
        "config": run,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    serde_json::to_vec(&value).expect("a JSON value serializes")
}

pub(crate) fn descriptor(media_type: &str, digest: &str, size: usize) -> Value {
    json!({ "mediaType": media_type, "digest": digest, "size": size })
}

/// Pushes images into one repository of a plain-HTTP registry.
pub(crate) struct Pusher {
    client: Client,
    registry: String,
    repository: String,
}

impl Pusher {
    /// An anonymous client of the registry at `addr` (plain HTTP), pushing
    /// to `repository`.
    pub(crate) async fn new(addr: &str, repository: &str) -> Pusher {
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..Default::default()
        });
        client
            .store_auth_if_needed(addr, &RegistryAuth::Anonymous)
            .await;
        Pusher {
            client,
            registry: addr.to_string(),
            repository: repository.to_string(),
        }
    }

    /// The same client, pushing to another repository.
    pub(crate) fn to_repository(&self, repository: &str) -> Pusher {
        Pusher {
            client: self.client.clone(),
            registry: self.registry.clone(),
            repository: repository.to_string(),
        }
    }

    fn reference_by_tag(&self, tag: &str) -> Reference {
        Reference::with_tag(self.registry.clone(), self.repository.clone(), tag.into())
    }

    fn reference_by_digest(&self, digest: &str) -> Reference {
        Reference::with_digest(
            self.registry.clone(),
            self.repository.clone(),
            digest.into(),
        )
    }

    async fn blob(&self, data: &[u8]) -> anyhow::Result<String> {
        let digest = sha256(data);
        let reference = self.reference_by_tag("latest");
        self.client
            .push_blob(&reference, data.to_vec(), &digest)
            .await
            .with_context(|| format!("cannot push blob {digest}"))?;
        Ok(digest)
    }

    /// Pushes `body` as a manifest of `media_type` under `reference`;
    /// returns its digest.
    async fn manifest(
        &self,
        reference: &Reference,
        media_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<String> {
        let digest = sha256(&body);
        self.client
            .push_manifest_raw(
                reference,
                body,
                media_type.parse().context("bad content type")?,
            )
            .await
            .with_context(|| format!("cannot push manifest {digest} as {reference}"))?;
        Ok(digest)
    }

    /// Pushes a blob unless the repository has it already (a layer shared
    /// by several images is sent once per repository).
    async fn blob_once(&self, data: &[u8]) -> anyhow::Result<String> {
        let digest = sha256(data);
        let reference = self.reference_by_tag("latest");
        if self.client.blob_exists(&reference, &digest).await? {
            return Ok(digest);
        }
        self.blob(data).await
    }

    /// Pushes an image's layers, config and manifest, under `tag` or else
    /// by digest; returns the manifest digest, its size, and the config
    /// digest.
    async fn image(
        &self,
        tag: Option<&str>,
        arch: &str,
        name: &str,
        layers: &[&Layer],
    ) -> anyhow::Result<(String, usize, String)> {
        for layer in layers {
            self.blob(&layer.blob).await?;
        }
        let config = config(arch, name, layers);
        let config_digest = self.blob(&config).await?;
        let (digest, size) = self.image_manifest(tag, &config, layers).await?;
        Ok((digest, size, config_digest))
    }

    /// Pushes an image with a given config blob under each of `tags` (one
    /// manifest, so one digest for all); returns the manifest's digest.
    pub(crate) async fn push_image(
        &self,
        tags: &[&str],
        config: &[u8],
        layers: &[&Layer],
    ) -> anyhow::Result<String> {
        for layer in layers {
            self.blob_once(&layer.blob).await?;
        }
        self.blob_once(config).await?;
        let mut digests = Vec::new();
        for tag in tags {
            digests.push(self.image_manifest(Some(tag), config, layers).await?.0);
        }
        digests.dedup();
        match &digests[..] {
            [digest] => Ok(digest.clone()),
            _ => bail!("tags {tags:?} got manifests {digests:?}, not one"),
        }
    }

    /// Pushes the OCI manifest of `config` and `layers` (whose blobs are
    /// pushed already) under `tag` or else by digest; returns its digest
    /// and size.
    async fn image_manifest(
        &self,
        tag: Option<&str>,
        config: &[u8],
        layers: &[&Layer],
    ) -> anyhow::Result<(String, usize)> {
        let config_digest = sha256(config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config_digest, config.len()),
            "layers": layers
                .iter()
                .map(|l| descriptor(&l.info.media_type, &l.info.digest, l.blob.len()))
                .collect::<Vec<_>>(),
        });
        let body = serde_json::to_vec(&manifest)?;
        let size = body.len();
        let reference = match tag {
            Some(tag) => self.reference_by_tag(tag),
            None => self.reference_by_digest(&sha256(&body)),
        };
        let digest = self
            .manifest(
                &reference,
                "application/vnd.oci.image.manifest.v1+json",
                body,
            )
            .await?;
        Ok((digest, size))
    }
}

/// Builds the test images from the static `busybox` binary and pushes them
/// to the registry at `addr` (plain HTTP): `husk-test/busybox:multi`,
/// `:index` and `:single`.
pub async fn push_test_images(addr: &str, busybox: &Path) -> anyhow::Result<TestImages> {
    let p = Pusher::new(addr, REPOSITORY).await;
    let busybox_layer = Layer::new(busybox_tar(busybox)?, Compress::Gzip)?;
    let files = Layer::new(husk_files_tar()?, Compress::Zstd)?;
    let whiteouts = Layer::new(whiteout_tar()?, Compress::Plain)?;
    let amd64 = Layer::new(marker_tar("amd64")?, Compress::Gzip)?;
    let arm64 = Layer::new(marker_tar("arm64")?, Compress::Gzip)?;

    let image = |tag: &str,
                 (manifest_digest, config_digest): (String, String),
                 layers: &[&Layer]| TestImage {
        reference: format!("{addr}/{REPOSITORY}:{tag}"),
        manifest_digest,
        config_digest,
        layers: layers.iter().map(|l| l.info.clone()).collect(),
    };

    let multi_layers = [&busybox_layer, &files, &whiteouts];
    let (m, _, c) = p
        .image(Some("multi"), "amd64", "multi", &multi_layers)
        .await?;
    let multi = image("multi", (m, c), &multi_layers);

    let single_layers = [&busybox_layer];
    let (m, _, c) = p
        .image(Some("single"), "amd64", "single", &single_layers)
        .await?;
    let single = image("single", (m, c), &single_layers);

    // The platform images go in by digest only: the index names them.
    let amd64_layers = [&busybox_layer, &amd64];
    let arm64_layers = [&busybox_layer, &arm64];
    let mut entries = Vec::new();
    let mut platform = Vec::new();
    for (arch, layers) in [("amd64", &amd64_layers), ("arm64", &arm64_layers)] {
        let (digest, size, config_digest) = p.image(None, arch, "index", &layers[..]).await?;
        entries.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "platform": { "architecture": arch, "os": "linux" }
        }));
        platform.push((digest, config_digest));
    }
    let index_body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))?;
    let index_digest = p
        .manifest(
            &p.reference_by_tag("index"),
            "application/vnd.oci.image.index.v1+json",
            index_body,
        )
        .await?;
    let index = image(
        "index",
        (index_digest, platform[0].1.clone()),
        &amd64_layers,
    );
    Ok(TestImages {
        multi,
        index,
        index_amd64_manifest: platform[0].0.clone(),
        index_arm64_manifest: platform[1].0.clone(),
        single,
        busybox_layer: busybox_layer.info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_lines_parse() {
        let line = r#"127.0.0.1 - - [03/Dec/2026:12:04:22 +0000] "GET /v2/a/b/manifests/x HTTP/1.1" 404 91 "" "curl/7.88.1""#;
        assert_eq!(
            access_line(line),
            Some(Request {
                method: "GET".into(),
                path: "/v2/a/b/manifests/x".into(),
                status: 404,
            })
        );
        assert_eq!(
            access_line(r#"time="x" level=warning msg="No HTTP secret""#),
            None
        );
    }
}
