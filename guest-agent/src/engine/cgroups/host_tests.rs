//! Tests against the real cgroups of the machine running them (as root).
//! Each test uses a base directory of its own next to the test process's
//! cgroups, and removes it, processes and all, even when it fails.

use std::io::{Read, Write};
use std::ops::Deref;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use oci_spec::runtime::{
    LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources,
    LinuxResourcesBuilder,
};

use super::*;

const MIB: i64 = 1 << 20;

/// A manager whose base directory is unique to one test.
struct TestManager {
    manager: CgroupManager,
}

impl TestManager {
    fn new(test: &str) -> Self {
        let base = format!("husk-test-{test}-{}", std::process::id());
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let manager =
            CgroupManager::detect_from(Path::new(CGROUP_MOUNT), &own, &mountinfo, &base).unwrap();
        Self { manager }
    }

    fn create(
        &self,
        id: &str,
        resources: Option<&LinuxResources>,
    ) -> Result<TestCgroup, CgroupError> {
        self.manager.create(id, resources).map(TestCgroup)
    }
}

impl Drop for TestManager {
    /// Kills what is left without trusting the code under test, so that a
    /// broken kill_all still leaves no processes or directories behind.
    fn drop(&mut self) {
        let bases = self.manager.base_dirs();
        let _ = until(KILL_TIMEOUT, || {
            let mut pids = Vec::new();
            for base in &bases {
                let _ = fs::procs_recursive(base, &mut pids);
            }
            for pid in &pids {
                let _ = nix::sys::signal::kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
            }
            pids.is_empty()
        });
        for base in &bases {
            let _ = fs::remove_tree(base);
        }
    }
}

/// A container cgroup destroyed on drop.
struct TestCgroup(Cgroup);

impl Deref for TestCgroup {
    type Target = Cgroup;
    fn deref(&self) -> &Cgroup {
        &self.0
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = self.0.destroy();
    }
}

/// A `sh -c` child that waits for a line on stdin before running the rest
/// of `script`, so it can be moved into a cgroup first. Killed on drop.
struct Gated(Child);

impl Gated {
    fn spawn(script: &str) -> Self {
        Self::spawn_after("", script)
    }

    /// Runs `prelude` before the gate.
    fn spawn_after(prelude: &str, script: &str) -> Self {
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("{prelude} read x; {script}"))
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Self(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn release(&mut self) {
        self.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }

    fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn stderr(&mut self) -> String {
        let mut text = String::new();
        self.0
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The trimmed content of the kernel file `name` in whichever of the
/// cgroup's directories has it.
fn kernel(cgroup: &Cgroup, name: &str) -> String {
    let path: PathBuf = cgroup
        .dirs()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no directory of the cgroup has {name}"));
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

fn until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    done()
}

fn resources(memory: LinuxMemoryBuilder, cpu: LinuxCpuBuilder, pids: i64) -> LinuxResources {
    LinuxResourcesBuilder::default()
        .memory(memory.build().unwrap())
        .cpu(cpu.build().unwrap())
        .pids(LinuxPidsBuilder::default().limit(pids).build().unwrap())
        .block_io(
            LinuxBlockIoBuilder::default()
                .weight(300_u16)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

fn memory_limit(limit: i64) -> LinuxResources {
    LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .swap(limit)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

#[test]
fn host_limits_reach_the_kernel_and_updates_apply() {
    let manager = TestManager::new("limits");
    let initial = resources(
        LinuxMemoryBuilder::default()
            .limit(64 * MIB)
            .swap(64 * MIB)
            .reservation(32 * MIB),
        LinuxCpuBuilder::default()
            .quota(50_000)
            .period(100_000_u64)
            .shares(512_u64)
            .cpus("0")
            .mems("0"),
        10,
    );
    let cg = manager.create("c", Some(&initial)).unwrap();
    match manager.manager.version() {
        CgroupVersion::V1 => {
            assert_eq!(kernel(&cg, "memory.limit_in_bytes"), "67108864");
            assert_eq!(kernel(&cg, "memory.memsw.limit_in_bytes"), "67108864");
            assert_eq!(kernel(&cg, "memory.soft_limit_in_bytes"), "33554432");
            assert_eq!(kernel(&cg, "cpu.cfs_quota_us"), "50000");
            assert_eq!(kernel(&cg, "cpu.cfs_period_us"), "100000");
            assert_eq!(kernel(&cg, "cpu.shares"), "512");
            // This host's kernel has BFQ but not CFQ.
            let weight = ["blkio.weight", "blkio.bfq.weight"]
                .iter()
                .find(|f| cg.dirs().any(|d| d.join(f).exists()))
                .expect("no blkio weight file");
            assert_eq!(kernel(&cg, weight), "300");
        }
        CgroupVersion::V2 => {
            assert_eq!(kernel(&cg, "memory.max"), "67108864");
            assert_eq!(kernel(&cg, "memory.low"), "33554432");
            assert_eq!(kernel(&cg, "cpu.max"), "50000 100000");
            assert_eq!(kernel(&cg, "cpu.weight"), "20");
        }
    }
    assert_eq!(kernel(&cg, "cpuset.cpus"), "0");
    assert_eq!(kernel(&cg, "cpuset.mems"), "0");
    assert_eq!(kernel(&cg, "pids.max"), "10");
    let stats = cg.stats().unwrap();
    assert_eq!(stats.memory_limit_bytes, 64 << 20);
    assert_eq!(stats.pids_limit, 10);
    assert_eq!(stats.version, manager.manager.version());

    // Raising memory above the current memory+swap limit, then lowering
    // both again, needs the v1 writes in opposite orders.
    let raise = resources(
        LinuxMemoryBuilder::default()
            .limit(128 * MIB)
            .swap(256 * MIB),
        LinuxCpuBuilder::default().quota(-1).shares(1024_u64),
        -1,
    );
    cg.apply(&raise).unwrap();
    let stats = cg.stats().unwrap();
    assert_eq!(stats.memory_limit_bytes, 128 << 20);
    assert_eq!(stats.pids_limit, 0);
    assert_eq!(kernel(&cg, "pids.max"), "max");
    if manager.manager.version() == CgroupVersion::V1 {
        assert_eq!(kernel(&cg, "memory.memsw.limit_in_bytes"), "268435456");
        assert_eq!(kernel(&cg, "cpu.cfs_quota_us"), "-1");
        assert_eq!(kernel(&cg, "cpu.shares"), "1024");
    }
    cg.apply(&memory_limit(32 * MIB)).unwrap();
    assert_eq!(cg.stats().unwrap().memory_limit_bytes, 32 << 20);
    if manager.manager.version() == CgroupVersion::V1 {
        assert_eq!(kernel(&cg, "memory.memsw.limit_in_bytes"), "33554432");
    }
}

#[test]
fn host_processes_are_counted_and_killed() {
    let manager = TestManager::new("stats");
    let cg = manager.create("c", Some(&memory_limit(64 * MIB))).unwrap();
    let mut child =
        Gated::spawn("i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; exec sleep 60");
    cg.add_process(child.pid()).unwrap();
    assert_eq!(cg.pids().unwrap(), [child.pid()]);
    child.release();

    assert!(
        until(Duration::from_secs(20), || cg
            .stats()
            .unwrap()
            .cpu_usage_usec
            > 10_000),
        "no CPU time accounted: {:?}",
        cg.stats()
    );
    let stats = cg.stats().unwrap();
    assert!(stats.memory_usage_bytes > 0, "{stats:?}");
    assert!(stats.memory_working_set_bytes <= stats.memory_usage_bytes);
    assert!(stats.cpu_user_usec + stats.cpu_system_usec > 0, "{stats:?}");
    assert_eq!(stats.pids_current, 1, "{stats:?}");
    assert_eq!(stats.memory_oom_kills, 0);

    cg.kill_all().unwrap();
    assert!(cg.pids().unwrap().is_empty());
    let status = child.wait_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
}

#[test]
fn host_pids_limit_is_enforced() {
    let manager = TestManager::new("pids");
    let limit = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(10).build().unwrap())
        .build()
        .unwrap();
    let cg = manager.create("c", Some(&limit)).unwrap();
    // The list is made before the gate: $(seq) forks too.
    let mut child = Gated::spawn_after(
        "set -- $(seq 20);",
        "for i; do sleep 30 2>/dev/null & done; exit 0",
    );
    cg.add_process(child.pid()).unwrap();
    child.release();
    let status = child
        .wait_timeout(Duration::from_secs(20))
        .expect("sh hangs");
    let stderr = child.stderr();

    // The shell plus nine sleeps reached the limit; the tenth fork failed.
    assert!(
        stderr.to_lowercase().contains("fork"),
        "{status:?} {stderr:?}"
    );
    assert_eq!(cg.stats().unwrap().pids_current, 9);
    let events = kernel(&cg, "pids.events");
    let refused = stats::keyed(&events, "max").unwrap();
    assert!(refused >= 1, "{events}");
}

#[test]
fn host_oom_kill_is_counted() {
    let manager = TestManager::new("oom");
    let cg = manager.create("c", Some(&memory_limit(16 * MIB))).unwrap();
    let mut child = Gated::spawn("x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo ${#x}");
    cg.add_process(child.pid()).unwrap();
    child.release();

    let status = child
        .wait_timeout(Duration::from_secs(60))
        .expect("never killed");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(cg.oom_kills().unwrap() >= 1);
    assert!(cg.stats().unwrap().memory_oom_kills >= 1);
}

#[test]
fn host_destroy_kills_and_removes_every_directory() {
    let manager = TestManager::new("destroy");
    let cg = manager.create("c", None).unwrap();
    let dirs: Vec<PathBuf> = cg.dirs().map(Path::to_path_buf).collect();
    assert!(!dirs.is_empty() && dirs.iter().all(|d| d.is_dir()));
    let mut child = Gated::spawn("exec sleep 60");
    cg.add_process(child.pid()).unwrap();

    cg.destroy().unwrap();

    let status = child.wait_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    for dir in &dirs {
        assert!(!dir.exists(), "{} survived", dir.display());
    }
    cg.destroy().unwrap();
    assert!(cg.stats().is_err());
}

#[test]
fn host_kill_all_reaches_forked_children() {
    let manager = TestManager::new("killall");
    let cg = manager.create("c", None).unwrap();
    let mut child = Gated::spawn("sleep 60 & sleep 60 & sh -c 'sleep 60 & wait' & wait");
    cg.add_process(child.pid()).unwrap();
    child.release();
    assert!(
        until(Duration::from_secs(10), || cg.pids().unwrap().len() == 5),
        "{:?}",
        cg.pids()
    );

    cg.kill_all().unwrap();

    assert!(cg.pids().unwrap().is_empty());
    let status = child.wait_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
}

#[test]
fn host_signal_all_delivers_the_signal() {
    let manager = TestManager::new("signal");
    let cg = manager.create("c", None).unwrap();
    let mut child = Gated::spawn("exec sleep 60");
    cg.add_process(child.pid()).unwrap();

    cg.signal_all(Signal::SIGTERM).unwrap();

    let status = child.wait_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
}

#[test]
fn host_refuses_duplicates_and_what_it_cannot_honor() {
    let manager = TestManager::new("refuse");
    let _cg = manager.create("c", None).unwrap();
    let err = manager.create("c", None).err().unwrap();
    assert!(matches!(err, CgroupError::AlreadyExists(_)), "{err}");

    let bad_period = LinuxResourcesBuilder::default()
        .cpu(LinuxCpuBuilder::default().period(0_u64).build().unwrap())
        .build()
        .unwrap();
    let err = manager.create("bad", Some(&bad_period)).err().unwrap();
    assert!(
        matches!(
            err,
            CgroupError::InvalidResource {
                field: "linux.resources.cpu.period",
                ..
            }
        ),
        "{err}"
    );

    let mut unified = std::collections::HashMap::new();
    unified.insert("memory.high".to_string(), "max".to_string());
    let unified = LinuxResourcesBuilder::default()
        .unified(unified)
        .build()
        .unwrap();
    let result = manager.create("unified", Some(&unified));
    if manager.manager.version() == CgroupVersion::V1 {
        let err = result.err().unwrap();
        assert!(matches!(err, CgroupError::Unsupported { .. }), "{err}");
    }
    // Neither refused create left a directory behind.
    for base in manager.manager.base_dirs() {
        assert!(!base.join("bad").exists());
        if manager.manager.version() == CgroupVersion::V1 {
            assert!(!base.join("unified").exists(), "{}", base.display());
        }
    }
}
