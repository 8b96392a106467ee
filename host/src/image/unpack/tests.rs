//! Crafted archives against the unpacker: every hostile trick must fail
//! (or be neutralized) without touching anything outside the layer.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::*;

/// A scratch folder holding `layer/` (the unpack target) and `outside/`
/// (what an escape would hit).
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("husk-unpack-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("layer")).unwrap();
        fs::create_dir_all(dir.join("outside")).unwrap();
        Scratch { dir }
    }
    fn layer(&self) -> PathBuf {
        self.dir.join("layer")
    }
    fn outside(&self) -> PathBuf {
        self.dir.join("outside")
    }
    fn outside_is_empty(&self) -> bool {
        fs::read_dir(self.outside()).unwrap().count() == 0
            && fs::read_dir(&self.dir).unwrap().count() == 2
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Builds tar streams entry by entry, with raw names the `tar` crate's
/// safe setters would refuse.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn raw(
        &mut self,
        name: &[u8],
        kind: EntryType,
        link: &[u8],
        mode: u32,
        data: &[u8],
    ) -> &mut Self {
        let mut h = Header::new_ustar();
        h.as_ustar_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.as_ustar_mut().unwrap().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(name.as_bytes(), EntryType::Regular, b"", 0o644, data)
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(name.as_bytes(), EntryType::Directory, b"", 0o755, b"")
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            EntryType::Symlink,
            target.as_bytes(),
            0o777,
            b"",
        )
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            EntryType::Link,
            target.as_bytes(),
            0o644,
            b"",
        )
    }

    fn owned(
        &mut self,
        name: &str,
        kind: EntryType,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    ) -> &mut Self {
        let mut h = Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        h.set_size(0);
        h.set_cksum();
        self.0.append(&h, &b""[..]).unwrap();
        self
    }

    /// A PAX extended header applying `records` to the next entry.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (key, value) in records {
            let body_len = key.len() + value.len() + 3; // ' ', '=', '\n'
            let mut len = body_len + 1;
            while len != body_len + len.to_string().len() {
                len = body_len + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        self.raw(b"././@PaxHeader", EntryType::XHeader, b"", 0o644, &data)
    }

    fn finish(&mut self) -> Vec<u8> {
        self.0.finish().unwrap();
        self.0.get_ref().clone()
    }
}

/// Unpacks `tar` (compressed by the caller or not) with its true diff-id.
fn unpack(scratch: &Scratch, tar: &[u8]) -> Result<Unpacked, UnpackError> {
    unpack_blob(scratch, tar, tar)
}

fn unpack_blob(
    scratch: &Scratch,
    uncompressed: &[u8],
    blob: &[u8],
) -> Result<Unpacked, UnpackError> {
    let diff_id = Digest::of(uncompressed);
    unpack_layer(blob, &scratch.layer(), &diff_id, DEFAULT_MAX_LAYER_BYTES)
}

fn lmeta(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap()
}

#[test]
fn unpacks_files_folders_links_with_metadata() {
    let s = Scratch::new("basic");
    let tar = Tar::new()
        .owned("./", EntryType::Directory, 0o755, 0, 0, 1_500_000_000)
        .dir("bin")
        .file("bin/busybox", b"#!fake busybox")
        .symlink("bin/sh", "busybox")
        .hardlink("bin/sh2", "bin/busybox")
        .owned("tmp", EntryType::Directory, 0o1777, 0, 0, 1_400_000_000)
        .owned("bin/su", EntryType::Regular, 0o4755, 0, 0, 1_300_000_000)
        .owned(
            "home/husk",
            EntryType::Directory,
            0o700,
            1000,
            1001,
            1_200_000_000,
        )
        .owned("run/fifo", EntryType::Fifo, 0o620, 1000, 5, 1_100_000_000)
        .finish();
    let done = unpack(&s, &tar).unwrap();
    assert_eq!(done.compression, Compression::None);
    assert_eq!(done.bytes, tar.len() as u64);
    let l = s.layer();
    assert_eq!(fs::read(l.join("bin/busybox")).unwrap(), b"#!fake busybox");
    assert_eq!(
        fs::read_link(l.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        lmeta(&l.join("bin/sh2")).ino(),
        lmeta(&l.join("bin/busybox")).ino()
    );
    let tmp = lmeta(&l.join("tmp"));
    assert_eq!(tmp.mode() & 0o7777, 0o1777);
    assert_eq!(tmp.mtime(), 1_400_000_000);
    let su = lmeta(&l.join("bin/su"));
    assert_eq!(su.mode() & 0o7777, 0o4755, "setuid kept");
    assert_eq!(su.mtime(), 1_300_000_000);
    let home = lmeta(&l.join("home/husk"));
    assert_eq!(
        (home.uid(), home.gid(), home.mode() & 0o7777),
        (1000, 1001, 0o700)
    );
    assert_eq!(home.mtime(), 1_200_000_000);
    // Implicit parents get 0755.
    assert_eq!(lmeta(&l.join("home")).mode() & 0o7777, 0o755);
    let fifo = lmeta(&l.join("run/fifo"));
    assert!(fifo.file_type().is_fifo());
    assert_eq!(
        (fifo.uid(), fifo.gid(), fifo.mode() & 0o7777),
        (1000, 5, 0o620)
    );
    // The root entry's time is applied after its children were made.
    assert_eq!(lmeta(&l).mtime(), 1_500_000_000);
    assert_eq!(lmeta(&l.join("bin")).mtime(), 1_600_000_000);
    assert!(s.outside_is_empty());
}

#[test]
fn refuses_dot_dot_escapes() {
    for name in [
        "../../etc/x",
        "../outside/x",
        "a/../../outside/x",
        "/../outside/x",
    ] {
        let s = Scratch::new("dotdot");
        let tar = Tar::new().file(name, b"pwned").finish();
        let err = unpack(&s, &tar).unwrap_err();
        assert!(
            matches!(
                err,
                UnpackError::Path {
                    source: PathError::Escapes(_),
                    ..
                }
            ),
            "{name}: {err}"
        );
        assert!(s.outside_is_empty(), "{name}");
    }
}

#[test]
fn absolute_paths_land_inside_the_layer() {
    let s = Scratch::new("abs");
    let tar = Tar::new().file("/etc/husk-abs", b"inside").finish();
    unpack(&s, &tar).unwrap();
    assert_eq!(fs::read(s.layer().join("etc/husk-abs")).unwrap(), b"inside");
    assert!(!Path::new("/etc/husk-abs").exists());
}

#[test]
fn never_writes_through_a_symlink() {
    let s = Scratch::new("symlink");
    let outside = s.outside();
    let cases: Vec<(String, &str)> = vec![
        (outside.display().to_string(), "a/pwned"),
        ("../outside".to_string(), "a/pwned"),
        ("/etc".to_string(), "a/passwd"),
    ];
    let passwd = fs::read("/etc/passwd").unwrap();
    for (target, through) in cases {
        let _ = fs::remove_dir_all(s.layer());
        fs::create_dir(s.layer()).unwrap();
        let tar = Tar::new()
            .symlink("a", &target)
            .file(through, b"pwned")
            .finish();
        let err = unpack(&s, &tar).unwrap_err();
        assert!(
            matches!(
                err,
                UnpackError::Walk {
                    source: WalkError::Symlink(_),
                    ..
                }
            ),
            "{target}: {err}"
        );
        // The symlink itself is stored as is.
        assert_eq!(
            fs::read_link(s.layer().join("a")).unwrap(),
            Path::new(&target)
        );
        assert!(s.outside_is_empty(), "{target}");
    }
    assert_eq!(fs::read("/etc/passwd").unwrap(), passwd);
    // A symlink to a folder also cannot be used by a later directory entry.
    let _ = fs::remove_dir_all(s.layer());
    fs::create_dir(s.layer()).unwrap();
    let tar = Tar::new().symlink("d", "../outside").dir("d/sub").finish();
    assert!(unpack(&s, &tar).is_err());
    assert!(s.outside_is_empty());
}

#[test]
fn a_later_entry_replaces_a_symlink_instead_of_following_it() {
    let s = Scratch::new("replace");
    let tar = Tar::new()
        .symlink("x", "../outside/x")
        .file("x", b"regular now")
        .finish();
    unpack(&s, &tar).unwrap();
    assert!(lmeta(&s.layer().join("x")).is_file());
    assert!(s.outside_is_empty());
}

#[test]
fn refuses_hardlinks_outside_the_layer() {
    for target in ["/etc/passwd", "../x", "../outside/f", "missing"] {
        let s = Scratch::new("hardlink");
        fs::write(s.outside().join("f"), b"secret").unwrap();
        let tar = Tar::new().hardlink("stolen", target).finish();
        let err = unpack(&s, &tar).unwrap_err();
        assert!(
            matches!(err, UnpackError::BadLink { .. }),
            "{target}: {err}"
        );
        assert!(!s.layer().join("stolen").exists(), "{target}");
        assert_eq!(lmeta(&s.outside().join("f")).nlink(), 1);
    }
    // Nor through a symlink planted earlier.
    let s = Scratch::new("hardlink-sym");
    fs::write(s.outside().join("f"), b"secret").unwrap();
    let tar = Tar::new()
        .symlink("o", "../outside")
        .hardlink("stolen", "o/f")
        .finish();
    assert!(matches!(
        unpack(&s, &tar).unwrap_err(),
        UnpackError::BadLink { .. }
    ));
    assert_eq!(lmeta(&s.outside().join("f")).nlink(), 1);
}

#[test]
fn skips_device_nodes() {
    let s = Scratch::new("dev");
    let tar = Tar::new()
        .raw(b"dev/sda", EntryType::Block, b"", 0o660, b"")
        .raw(b"dev/mem", EntryType::Char, b"", 0o660, b"")
        .file("dev/after", b"still unpacked")
        .finish();
    unpack(&s, &tar).unwrap();
    assert!(!s.layer().join("dev/sda").exists());
    assert!(!s.layer().join("dev/mem").exists());
    assert!(s.layer().join("dev/after").exists());
}

#[test]
fn converts_whiteouts_to_overlayfs_form() {
    let s = Scratch::new("whiteout");
    let tar = Tar::new()
        .dir("husk")
        .file("husk/.wh.removed", b"")
        .dir("husk/dir")
        .file("husk/dir/.wh..wh..opq", b"")
        .file("husk/dir/b", b"b")
        .file("husk/.wh..wh.plnk", b"")
        .finish();
    unpack(&s, &tar).unwrap();
    let l = s.layer();
    let wh = lmeta(&l.join("husk/removed"));
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!l.join("husk/.wh.removed").exists());
    assert!(!l.join("husk/dir/.wh..wh..opq").exists());
    assert!(!l.join("husk/.wh..wh.plnk").exists());
    assert_eq!(
        xattr(&l.join("husk/dir"), "trusted.overlay.opaque"),
        Some(b"y".to_vec())
    );
    assert_eq!(xattr(&l.join("husk"), "trusted.overlay.opaque"), None);
    assert_eq!(fs::read(l.join("husk/dir/b")).unwrap(), b"b");
}

#[test]
fn whiteout_names_cannot_escape() {
    let s = Scratch::new("whiteout-escape");
    let tar = Tar::new().file(".wh...", b"").finish();
    assert!(unpack(&s, &tar).is_err());
    assert!(s.outside_is_empty());
}

#[test]
fn keeps_pax_ids_times_and_user_xattrs_but_drops_security_and_trusted() {
    let s = Scratch::new("pax");
    let tar = Tar::new()
        .pax(&[
            ("uid", b"70000"),
            ("gid", b"70001"),
            ("mtime", b"1234567890.25"),
            ("SCHILY.xattr.user.husk", b"kept"),
            ("SCHILY.xattr.security.capability", b"\x01\x00\x00\x02"),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
        ])
        .file("f", b"x")
        .finish();
    unpack(&s, &tar).unwrap();
    let f = s.layer().join("f");
    let m = lmeta(&f);
    assert_eq!((m.uid(), m.gid()), (70000, 70001));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_234_567_890, 250_000_000));
    assert_eq!(xattr(&f, "user.husk"), Some(b"kept".to_vec()));
    assert_eq!(xattr(&f, "security.capability"), None);
    assert_eq!(xattr(&f, "trusted.overlay.opaque"), None);
}

#[test]
fn refuses_paths_longer_than_path_max() {
    let s = Scratch::new("long");
    let long = format!("{}/f", "d".repeat(MAX_PATH_FOR_TEST));
    let tar = Tar::new()
        .pax(&[("path", long.as_bytes())])
        .file("short", b"")
        .finish();
    let err = unpack(&s, &tar).unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::Path {
                source: PathError::TooLong(_),
                ..
            }
        ),
        "{err}"
    );
}

const MAX_PATH_FOR_TEST: usize = path::MAX_PATH;

#[test]
fn unpacks_gzip_zstd_and_plain_layers() {
    use std::io::Write;
    let tar = Tar::new()
        .file("hello", b"hello from a husk microVM")
        .finish();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    for (blob, kind) in [
        (gz, Compression::Gzip),
        (zst, Compression::Zstd),
        (tar.clone(), Compression::None),
    ] {
        let s = Scratch::new("compression");
        let done = unpack_blob(&s, &tar, &blob).unwrap();
        assert_eq!(done.compression, kind);
        assert_eq!(
            fs::read(s.layer().join("hello")).unwrap(),
            b"hello from a husk microVM"
        );
    }
}

#[test]
fn refuses_a_diff_id_mismatch() {
    let s = Scratch::new("diffid");
    let tar = Tar::new().file("f", b"x").finish();
    let wrong = Digest::of(b"something else");
    let err = unpack_layer(&tar[..], &s.layer(), &wrong, DEFAULT_MAX_LAYER_BYTES).unwrap_err();
    assert!(matches!(err, UnpackError::DiffIdMismatch { .. }), "{err}");
    assert!(err.to_string().contains(wrong.as_str()));
}

#[test]
fn refuses_a_layer_over_the_size_limit() {
    let s = Scratch::new("limit");
    let tar = Tar::new().file("big", &vec![7u8; 100_000]).finish();
    let err = unpack_layer(&tar[..], &s.layer(), &Digest::of(&tar), 50_000).unwrap_err();
    assert!(
        matches!(err, UnpackError::TooLarge { limit: 50_000 }),
        "{err}"
    );
}

#[test]
fn refuses_garbage() {
    let s = Scratch::new("garbage");
    let blob = b"\x1f\x8bnot really gzip at all".to_vec();
    let err = unpack_blob(&s, b"", &blob).unwrap_err();
    assert!(matches!(err, UnpackError::Archive(_)), "{err}");
    assert!(!err.is_local());
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: `buf` is valid for its length.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return None;
    }
    buf.truncate(len as usize);
    Some(buf)
}
