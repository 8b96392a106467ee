//! husk-vmm's setup errors, on this host directly (no rig: none of them
//! gets as far as running a vCPU). Each must end husk-vmm with a non-zero
//! status and a message on stderr naming the problem, and must not touch
//! what it refused.
//!
//! Needs `HUSK_VMM` (and the guest image for the arguments that are not
//! under test), which `cargo xtask test` passes.

use std::fs::File;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use husk_tests::artifacts::Artifacts;

/// A setup error must come fast; past this husk-vmm is presumed hung.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// A scratch folder for one test, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("husk-vmm-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// husk-vmm's arguments, valid unless a test changes one.
struct VmmArgs {
    kernel: PathBuf,
    initrd: PathBuf,
    memory_mib: u32,
    vsock_uds: PathBuf,
}

impl VmmArgs {
    fn valid(artifacts: &Artifacts, scratch: &Scratch) -> Self {
        VmmArgs {
            kernel: artifacts.vmlinux.clone(),
            initrd: artifacts.initramfs.clone(),
            memory_mib: 256,
            vsock_uds: scratch.path("vsock.sock"),
        }
    }
}

/// How husk-vmm ended.
struct Outcome {
    status: ExitStatus,
    stderr: String,
}

/// Runs husk-vmm with `args` until it exits (killing it after
/// [`EXIT_TIMEOUT`]); output goes to files so no pipe can fill up.
fn run_vmm(artifacts: &Artifacts, scratch: &Scratch, args: &VmmArgs) -> Outcome {
    let stdout = scratch.path("stdout");
    let stderr = scratch.path("stderr");
    let mut child = Command::new(&artifacts.husk_vmm)
        .arg("--kernel")
        .arg(&args.kernel)
        .arg("--initrd")
        .arg(&args.initrd)
        .args(["--vcpus", "1"])
        .args(["--memory-mib", &args.memory_mib.to_string()])
        .arg("--vsock-uds")
        .arg(&args.vsock_uds)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).unwrap())
        .stderr(File::create(&stderr).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", artifacts.husk_vmm.display()));
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "husk-vmm still running after {EXIT_TIMEOUT:?}; it should have refused to start.\n\
                 stderr:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        status,
        stderr: std::fs::read_to_string(&stderr).unwrap_or_default(),
    }
}

/// Fails unless husk-vmm exited by itself with a non-zero status.
fn assert_refused(outcome: &Outcome, what: &str) {
    let code = outcome.status.code();
    assert!(
        code.is_some_and(|c| c != 0),
        "{what}: husk-vmm should exit non-zero, ended with {}; stderr:\n{}",
        outcome.status,
        outcome.stderr
    );
    assert!(
        !outcome.stderr.trim().is_empty(),
        "{what}: husk-vmm exited {} without a message",
        outcome.status
    );
}

fn mentions(stderr: &str, path: &Path) -> bool {
    stderr.contains(&path.display().to_string())
}

#[test]
fn a_missing_kernel_is_named() {
    let artifacts = Artifacts::from_env().unwrap();
    let scratch = Scratch::new("nokernel");
    let mut args = VmmArgs::valid(&artifacts, &scratch);
    args.kernel = scratch.path("no-such-vmlinux");
    let outcome = run_vmm(&artifacts, &scratch, &args);
    assert_refused(&outcome, "missing kernel");
    assert!(
        mentions(&outcome.stderr, &args.kernel),
        "stderr should name {}:\n{}",
        args.kernel.display(),
        outcome.stderr
    );
}

#[test]
fn a_kernel_that_is_not_elf_is_refused() {
    let artifacts = Artifacts::from_env().unwrap();
    let scratch = Scratch::new("notelf");
    let mut args = VmmArgs::valid(&artifacts, &scratch);
    args.kernel = scratch.path("vmlinux.txt");
    let mut text = b"#!/bin/sh\necho this is not a kernel\n".to_vec();
    text.resize(64 * 1024, b'#');
    std::fs::write(&args.kernel, text).unwrap();
    let outcome = run_vmm(&artifacts, &scratch, &args);
    assert_refused(&outcome, "non-ELF kernel");
    assert!(
        mentions(&outcome.stderr, &args.kernel) || outcome.stderr.to_lowercase().contains("elf"),
        "stderr should name {} or say it is not ELF:\n{}",
        args.kernel.display(),
        outcome.stderr
    );
}

#[test]
fn one_mib_of_memory_is_too_little() {
    let artifacts = Artifacts::from_env().unwrap();
    let scratch = Scratch::new("tinymem");
    let mut args = VmmArgs::valid(&artifacts, &scratch);
    args.memory_mib = 1;
    let outcome = run_vmm(&artifacts, &scratch, &args);
    assert_refused(&outcome, "--memory-mib 1");
    assert!(
        outcome.stderr.to_lowercase().contains("memory"),
        "stderr should say the memory is too small:\n{}",
        outcome.stderr
    );
}

#[test]
fn a_vsock_uds_path_taken_by_a_file_is_refused_and_kept() {
    let artifacts = Artifacts::from_env().unwrap();
    let scratch = Scratch::new("udsfile");
    let args = VmmArgs::valid(&artifacts, &scratch);
    std::fs::write(&args.vsock_uds, b"keep me").unwrap();
    let outcome = run_vmm(&artifacts, &scratch, &args);
    assert_refused(&outcome, "--vsock-uds on an existing file");
    assert!(
        mentions(&outcome.stderr, &args.vsock_uds),
        "stderr should name {}:\n{}",
        args.vsock_uds.display(),
        outcome.stderr
    );
    assert_eq!(
        std::fs::read(&args.vsock_uds).unwrap(),
        b"keep me",
        "husk-vmm must not replace a file it did not create"
    );
}

#[test]
fn a_vsock_uds_path_with_a_live_listener_is_refused_and_kept() {
    let artifacts = Artifacts::from_env().unwrap();
    let scratch = Scratch::new("udslive");
    let args = VmmArgs::valid(&artifacts, &scratch);
    let listener = UnixListener::bind(&args.vsock_uds).unwrap();
    let outcome = run_vmm(&artifacts, &scratch, &args);
    assert_refused(&outcome, "--vsock-uds on a live socket");
    assert!(
        mentions(&outcome.stderr, &args.vsock_uds),
        "stderr should name {}:\n{}",
        args.vsock_uds.display(),
        outcome.stderr
    );
    // Still ours: a connect reaches our listener, not a new one.
    listener.set_nonblocking(true).unwrap();
    std::os::unix::net::UnixStream::connect(&args.vsock_uds)
        .expect("the socket someone else listens on must survive");
    listener
        .accept()
        .expect("the connection must reach the original listener");
}
