//! The image store against a real registry (Debian's docker-registry on
//! 127.0.0.1) holding the husk test images. Runs as root (whiteouts are
//! device nodes, the opaque marker a trusted.* xattr).

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use husk::image::{Image, ImageErrorKind, ImageStore, RegistryAuth, RegistryOptions};
use husk_tests::registry::{push_test_images, TestImage, TestImages, TestRegistry, HELLO};

/// A registry with the test images pushed, and an empty store.
struct Fixture {
    registry: TestRegistry,
    images: TestImages,
    store: Arc<ImageStore>,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Fixture {
        // Setup may apt-get install; parallel apt-gets fight over dpkg's lock.
        static SETUP: Mutex<()> = Mutex::new(());
        let dir = tempfile::tempdir().unwrap();
        let (registry, busybox) = {
            let _one = SETUP.lock().unwrap_or_else(|e| e.into_inner());
            let registry = TestRegistry::start(&dir.path().join("registry"))
                .expect("docker-registry must start for these tests");
            (registry, husk_tests::busybox::host_binary().unwrap())
        };
        let images = push_test_images(registry.addr(), &busybox).await.unwrap();
        let store = Arc::new(open(dir.path(), registry.addr()));
        Fixture {
            registry,
            images,
            store,
            dir,
        }
    }

    fn store_root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    async fn pull(&self, image: &TestImage) -> Image {
        self.store
            .pull(&image.reference, RegistryAuth::Anonymous)
            .await
            .unwrap_or_else(|e| panic!("pull {}: {e}", image.reference))
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.store_root()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn entries(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.store_root().join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Flips bytes of a blob in the registry's storage, keeping its size.
    fn corrupt_in_registry(&self, digest: &str) {
        let path = self.registry.blob_data_path(digest);
        let mut data = fs::read(&path).unwrap();
        let middle = data.len() / 2;
        for b in &mut data[middle..middle + 8] {
            *b ^= 0xff;
        }
        fs::write(&path, data).unwrap();
    }
}

fn open(dir: &Path, addr: &str) -> ImageStore {
    let options = RegistryOptions {
        insecure: vec![addr.to_string()],
        ..Default::default()
    };
    ImageStore::open(&dir.join("store"), options).unwrap()
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 64];
    // SAFETY: `buf` is valid for its length.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| {
        buf.truncate(len as usize);
        buf
    })
}

fn keys(image: &TestImage) -> Vec<String> {
    image.layers.iter().map(|l| l.key().to_string()).collect()
}

#[tokio::test]
async fn pulls_a_multi_layer_image_with_whiteouts() {
    let f = Fixture::new().await;
    let multi = &f.images.multi;
    let image = f.pull(multi).await;
    assert_eq!(image.id, multi.config_digest);
    assert_eq!(image.repo_tags, std::slice::from_ref(&multi.reference));
    assert_eq!(image.repo_digests, [multi.digest_reference()]);
    assert_eq!(image.size, multi.size());
    assert_eq!(image.layers, keys(multi));
    assert_eq!(image.layers.len(), 3);
    assert_eq!(image.config.cmd, ["/bin/sh"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/"));
    assert_eq!(image.config.user, None);
    assert!(image.config.env.contains(&"HUSK_IMAGE=multi".to_string()));
    assert!(image.config.env[0].starts_with("PATH=/usr/local/sbin"));
    assert_eq!(image.config.labels["io.husk.test.image"], "multi");

    // (a) gzip: busybox runs from the unpacked layer.
    let a = f.store.layer_dir(&image.layers[0]);
    assert_eq!(
        fs::read_link(a.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let out = std::process::Command::new(a.join("bin/busybox"))
        .args(["echo", "unpacked"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"unpacked\n");
    assert!(fs::read_to_string(a.join("etc/passwd"))
        .unwrap()
        .contains("husk:x:1000:1000"));
    assert_eq!(fs::metadata(a.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
    // (b) zstd.
    let b = f.store.layer_dir(&image.layers[1]);
    assert_eq!(fs::read(b.join("husk/kept")).unwrap(), b"kept\n");
    assert_eq!(fs::read(b.join("husk/removed")).unwrap(), b"removed\n");
    assert_eq!(fs::read(b.join("husk/dir/a")).unwrap(), b"a\n");
    // (c) plain tar: overlayfs-native whiteout and opaque folder.
    let c = f.store.layer_dir(&image.layers[2]);
    let wh = fs::symlink_metadata(c.join("husk/removed")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!c.join("husk/.wh.removed").exists());
    assert_eq!(
        xattr(&c.join("husk/dir"), "trusted.overlay.opaque"),
        Some(b"y".to_vec())
    );
    assert!(!c.join("husk/dir/.wh..wh..opq").exists());
    assert!(!c.join("husk/dir/a").exists());
    assert_eq!(fs::read(c.join("husk/dir/b")).unwrap(), b"b\n");
    assert_eq!(fs::read_to_string(c.join("husk/hello")).unwrap(), HELLO);
    // Blobs are stored content-addressed.
    for layer in &multi.layers {
        assert!(f.blob_path(&layer.digest).is_file(), "{}", layer.digest);
    }
    assert!(f.blob_path(&multi.config_digest).is_file());
}

#[tokio::test]
async fn an_index_resolves_to_linux_amd64() {
    let f = Fixture::new().await;
    let index = &f.images.index;
    let image = f.pull(index).await;
    assert_eq!(image.id, index.config_digest);
    assert_eq!(
        image.repo_digests,
        [index.digest_reference()],
        "the index's digest"
    );
    assert_eq!(image.layers, keys(index));
    let marker = f.store.layer_dir(&image.layers[1]).join("husk/arch");
    assert_eq!(fs::read_to_string(marker).unwrap(), "amd64");
    // Pulled again by the index digest: the same image.
    let again = f
        .store
        .pull(&index.digest_reference(), RegistryAuth::Anonymous)
        .await
        .unwrap();
    assert_eq!(again.id, image.id);
    // By the amd64 manifest's digest: the same image, one more digest.
    let repo = index.reference.rsplit_once(':').unwrap().0;
    let by_platform = format!("{repo}@{}", f.images.index_amd64_manifest);
    let again = f
        .store
        .pull(&by_platform, RegistryAuth::Anonymous)
        .await
        .unwrap();
    assert_eq!(again.id, image.id);
    assert!(again.repo_digests.contains(&by_platform));
    assert_eq!(f.store.list().len(), 1);
    // The arm64 image is a different one.
    let by_arm = format!("{repo}@{}", f.images.index_arm64_manifest);
    let arm = f
        .store
        .pull(&by_arm, RegistryAuth::Anonymous)
        .await
        .unwrap();
    assert_ne!(arm.id, image.id);
    let marker = f.store.layer_dir(&arm.layers[1]).join("husk/arch");
    assert_eq!(fs::read_to_string(marker).unwrap(), "arm64");
}

#[tokio::test]
async fn a_shared_layer_is_downloaded_and_unpacked_once() {
    let f = Fixture::new().await;
    let shared = f.images.busybox_layer.clone();
    let multi = f.pull(&f.images.multi).await;
    assert_eq!(multi.layers[0], shared.key());
    let dir = f.store.layer_dir(shared.key());
    let before = (
        fs::metadata(&dir).unwrap(),
        fs::metadata(f.blob_path(&shared.digest)).unwrap(),
    );
    // Were the shared blob fetched again, this would fail the pull.
    f.corrupt_in_registry(&shared.digest);
    let single = f.pull(&f.images.single).await;
    assert_eq!(single.layers, [shared.key().to_string()]);
    let index = f.pull(&f.images.index).await;
    assert_eq!(index.layers[0], shared.key());
    let after = (
        fs::metadata(&dir).unwrap(),
        fs::metadata(f.blob_path(&shared.digest)).unwrap(),
    );
    assert_eq!(before.0.ino(), after.0.ino());
    assert_eq!(before.0.mtime_nsec(), after.0.mtime_nsec());
    assert_eq!(before.1.ino(), after.1.ino());
    assert_eq!(
        f.entries("layers").len(),
        4,
        "busybox, files, whiteouts, amd64 marker"
    );
}

#[tokio::test]
async fn pulling_again_is_idempotent() {
    let f = Fixture::new().await;
    let first = f.pull(&f.images.single).await;
    let dir = fs::metadata(f.store.layer_dir(&first.layers[0])).unwrap();
    let second = f.pull(&f.images.single).await;
    assert_eq!(first, second);
    assert_eq!(f.store.list(), std::slice::from_ref(&first));
    let after = fs::metadata(f.store.layer_dir(&first.layers[0])).unwrap();
    assert_eq!(dir.ino(), after.ino());
}

#[tokio::test]
async fn finds_images_by_id_tag_and_digest() {
    let f = Fixture::new().await;
    let multi = f.pull(&f.images.multi).await;
    let single = f.pull(&f.images.single).await;
    let hex = multi.id.trim_start_matches("sha256:").to_string();
    for name in [
        multi.id.clone(),
        hex,
        f.images.multi.reference.clone(),
        f.images.multi.digest_reference(),
    ] {
        assert_eq!(f.store.get(&name).unwrap().as_ref(), Some(&multi), "{name}");
    }
    assert_eq!(
        f.store.get(&f.images.single.reference).unwrap(),
        Some(single.clone())
    );
    // Short names normalize to Docker Hub, where nothing was pulled.
    assert_eq!(f.store.get("busybox").unwrap(), None);
    assert_eq!(
        f.store.get(&format!("sha256:{}", "0".repeat(64))).unwrap(),
        None
    );
    let err = f.store.get("Not a reference!").unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::InvalidReference);
    let mut ids: Vec<String> = f.store.list().into_iter().map(|i| i.id).collect();
    ids.sort();
    let mut expected = vec![multi.id, single.id];
    expected.sort();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn remove_untags_then_collects_unused_layers_but_not_shared_ones() {
    let f = Fixture::new().await;
    let multi = f.pull(&f.images.multi).await;
    let single = f.pull(&f.images.single).await;
    let shared = f.images.busybox_layer.clone();

    f.store.remove(&f.images.single.reference).unwrap();
    assert_eq!(f.store.get(&single.id).unwrap(), None);
    assert_eq!(f.store.list(), std::slice::from_ref(&multi));
    assert!(
        f.store.layer_dir(shared.key()).is_dir(),
        "still used by :multi"
    );
    assert!(
        !f.blob_path(&single.id).exists(),
        ":single's config is collected"
    );
    assert!(f.blob_path(&shared.digest).exists());

    f.store.remove(&multi.id).unwrap();
    assert!(f.store.list().is_empty());
    assert!(f.entries("layers").is_empty());
    assert!(f.entries("blobs/sha256").is_empty());
    assert!(f.entries("tmp").is_empty());

    // Idempotent.
    f.store.remove(&multi.id).unwrap();
    f.store.remove(&f.images.multi.reference).unwrap();
    f.store.remove("busybox").unwrap();
}

#[tokio::test]
async fn an_image_with_two_tags_stays_until_the_last_goes() {
    let f = Fixture::new().await;
    let multi = f.pull(&f.images.multi).await;
    // A digest reference adds a name without a tag.
    let by_digest = f
        .store
        .pull(&f.images.multi.digest_reference(), RegistryAuth::Anonymous)
        .await
        .unwrap();
    assert_eq!(by_digest.id, multi.id);
    f.store.remove(&f.images.multi.digest_reference()).unwrap();
    let left = f
        .store
        .get(&multi.id)
        .unwrap()
        .expect("the tag still names it");
    assert_eq!(
        left.repo_tags,
        std::slice::from_ref(&f.images.multi.reference)
    );
    f.store.remove(&f.images.multi.reference).unwrap();
    assert_eq!(f.store.get(&multi.id).unwrap(), None);
}

#[tokio::test]
async fn unknown_tags_and_repositories_are_not_found() {
    let f = Fixture::new().await;
    let addr = f.registry.addr();
    for reference in [
        format!("{addr}/husk-test/busybox:no-such-tag"),
        format!("{addr}/husk-test/no-such-repo:latest"),
    ] {
        let err = f
            .store
            .pull(&reference, RegistryAuth::Anonymous)
            .await
            .unwrap_err();
        eprintln!("{err}");
        assert_eq!(err.kind(), ImageErrorKind::NotFound, "{reference}: {err}");
        assert!(err.to_string().contains(&reference), "{err}");
    }
}

#[tokio::test]
async fn malformed_references_are_invalid() {
    let f = Fixture::new().await;
    for reference in ["Not A Ref", "", "busybox@sha256:1234", "a//b"] {
        let err = f
            .store
            .pull(reference, RegistryAuth::Anonymous)
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            ImageErrorKind::InvalidReference,
            "{reference:?}: {err}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_registry_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1.
    let store = open(dir.path(), "127.0.0.1:1");
    let err = store
        .pull(
            "127.0.0.1:1/husk-test/busybox:multi",
            RegistryAuth::Anonymous,
        )
        .await
        .unwrap_err();
    eprintln!("{err}");
    assert_eq!(err.kind(), ImageErrorKind::Unavailable, "{err}");
}

#[tokio::test]
async fn a_corrupted_blob_fails_the_pull_and_leaves_nothing() {
    let f = Fixture::new().await;
    let bad = f.images.multi.layers[2].digest.clone();
    f.corrupt_in_registry(&bad);
    let err = f
        .store
        .pull(&f.images.multi.reference, RegistryAuth::Anonymous)
        .await
        .unwrap_err();
    eprintln!("{err}");
    assert_eq!(err.kind(), ImageErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains(&bad), "{err}");
    assert!(f.store.list().is_empty());
    assert!(f.entries("layers").is_empty(), "{:?}", f.entries("layers"));
    assert!(
        f.entries("blobs/sha256").is_empty(),
        "{:?}",
        f.entries("blobs/sha256")
    );
    assert!(f.entries("tmp").is_empty(), "{:?}", f.entries("tmp"));
    // An image not using the bad blob still pulls.
    f.pull(&f.images.single).await;
}

#[tokio::test]
async fn reopening_keeps_the_index_and_drops_leftovers() {
    let f = Fixture::new().await;
    let multi = f.pull(&f.images.multi).await;
    let index = f.pull(&f.images.index).await;
    let listed = f.store.list();
    let Fixture {
        store,
        dir,
        registry,
        ..
    } = f;
    drop(store);
    // What an interrupted pull leaves.
    let tmp = dir.path().join("store/tmp");
    fs::create_dir_all(tmp.join("layer-x/layer/bin")).unwrap();
    fs::write(tmp.join("blob-y"), b"partial").unwrap();
    let store = open(dir.path(), registry.addr());
    assert_eq!(store.list(), listed);
    assert_eq!(store.get(&multi.id).unwrap(), Some(multi.clone()));
    assert_eq!(store.get(&index.id).unwrap(), Some(index));
    for key in &multi.layers {
        assert!(store.layer_dir(key).is_dir());
    }
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
    let usage = store.fs_usage().unwrap();
    assert_eq!(usage.mountpoint, store.root());
    assert!(usage.used_bytes > multi.size, "{usage:?}");
    assert!(usage.inodes_used > 70, "{usage:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pulls_of_images_sharing_a_layer() {
    let f = Fixture::new().await;
    let mut tasks = Vec::new();
    for image in [
        f.images.multi.clone(),
        f.images.single.clone(),
        f.images.index.clone(),
        f.images.multi.clone(),
        f.images.single.clone(),
    ] {
        let store = f.store.clone();
        tasks.push(tokio::spawn(async move {
            store.pull(&image.reference, RegistryAuth::Anonymous).await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(f.store.list().len(), 3);
    let busybox = f.store.layer_dir(f.images.busybox_layer.key());
    let out = std::process::Command::new(busybox.join("bin/busybox"))
        .arg("true")
        .status()
        .unwrap();
    assert!(out.success());
    assert_eq!(f.entries("layers").len(), 4);
    assert!(f.entries("tmp").is_empty());
}
