//! Container cgroups: creation, OCI resource limits, stats, killing.
//!
//! Inside the microVM the agent sees cgroup v2 and runs in the root cgroup.
//! Development hosts may still run cgroup v1, so that is supported too,
//! with fewer features (no `unified`, no `cgroup.kill`). Either way container
//! cgroups live under `<the agent's own cgroup>/husk/<container id>`, so
//! the agent also works nested inside someone else's container.

mod error;
mod fs;
mod limits;
mod proc;
mod stats;
mod v1;
mod v2;

#[cfg(test)]
mod host_tests;

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

pub use error::CgroupError;
pub use stats::CgroupStats;

use limits::Limits;
use v1::{V1Cgroup, V1Hierarchies};
use v2::{V2Cgroup, V2Hierarchy};

/// Where cgroup2 (or v1's tmpfs of hierarchies) is mounted.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// The directory, under the agent's own cgroup, that holds containers'.
/// How long processes may take to die after SIGKILL (D state, exiting).
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
const KILL_POLL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    #[default]
    V2,
}

/// Creates container cgroups. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    backend: ManagerBackend,
}

#[derive(Debug, Clone)]
enum ManagerBackend {
    V1(V1Hierarchies),
    V2(V2Hierarchy),
}

impl CgroupManager {
    /// v2 when cgroup2 is mounted at /sys/fs/cgroup, else v1 with each
    /// controller's mount found in /proc/self/mountinfo. Prepares
    /// `<own cgroup>/<base>` (per hierarchy on v1), delegating controllers on
    /// v2 and first moving the agent into `<own>/agent` when its cgroup is
    /// not the root and holds processes.
    pub fn detect(base: &str) -> Result<Self, CgroupError> {
        let own = fs::read(Path::new("/proc/self/cgroup"))?;
        let mountinfo = fs::read(Path::new("/proc/self/mountinfo"))?;
        Self::detect_from(Path::new(CGROUP_MOUNT), &own, &mountinfo, base)
    }

    fn base_dirs(&self) -> Vec<PathBuf> {
        match &self.backend {
            ManagerBackend::V1(h) => h.base_dirs(),
            ManagerBackend::V2(h) => h.base_dirs(),
        }
    }

    /// Removes the base directories if no container cgroup is left in
    /// them (the agent is stopping); best effort.
    pub fn release(&self) {
        for dir in self.base_dirs() {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// Removes the bases that agents killed without a chance to release
    /// them left next to ours: `<prefix><pid>` where no process `pid`
    /// runs. Best effort: a base still holding processes stays.
    pub fn sweep_stale(&self, prefix: &str) {
        for base in self.base_dirs() {
            let Some(parent) = base.parent() else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let stale = name
                    .to_str()
                    .and_then(|n| n.strip_prefix(prefix))
                    .and_then(|pid| pid.parse::<u32>().ok())
                    .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
                if stale {
                    let _ = fs::remove_tree(&entry.path());
                }
            }
        }
    }

    /// [`Self::detect`] with its inputs injected (tests use a fake tree or
    /// their own base directory).
    fn detect_from(
        mount: &Path,
        own: &str,
        mountinfo: &str,
        base: &str,
    ) -> Result<Self, CgroupError> {
        let own = proc::parse_own_cgroups(own)?;
        let mounts = proc::parse_cgroup_mounts(mountinfo);
        let backend = if mount.join("cgroup.controllers").exists() {
            let Some(line) = own.iter().find(|l| l.controllers.is_empty()) else {
                let msg = "/proc/self/cgroup has no cgroup2 line".to_string();
                return Err(CgroupError::Detect(msg));
            };
            // The subtree the mount shows; "/" unless a container runtime
            // bind-mounted part of the tree.
            let root = mounts
                .iter()
                .find(|m| m.v2 && m.mount_point == mount)
                .map_or("/", |m| m.root.as_str());
            let own = proc::relative_to(&line.path, root)?;
            ManagerBackend::V2(V2Hierarchy::setup(mount, &own, base)?)
        } else {
            ManagerBackend::V1(V1Hierarchies::setup(&own, &mounts, base)?)
        };
        Ok(Self { backend })
    }

    pub fn version(&self) -> CgroupVersion {
        match self.backend {
            ManagerBackend::V1(_) => CgroupVersion::V1,
            ManagerBackend::V2(_) => CgroupVersion::V2,
        }
    }

    /// Creates the container's cgroup (AlreadyExists if present) and applies
    /// `resources`. Invalid resources are refused before anything is made;
    /// if the kernel refuses a value, the new cgroup is removed again.
    pub fn create(
        &self,
        container_id: &str,
        resources: Option<&LinuxResources>,
    ) -> Result<Cgroup, CgroupError> {
        check_id(container_id)?;
        let limits = resources.map(Limits::from_oci).transpose()?;
        let cgroup = Cgroup {
            backend: match &self.backend {
                ManagerBackend::V1(h) => CgroupBackend::V1(h.create(container_id)?),
                ManagerBackend::V2(h) => CgroupBackend::V2(h.create(container_id)?),
            },
        };
        if let Some(limits) = limits {
            if let Err(e) = cgroup.apply_limits(&limits) {
                let _ = cgroup.destroy();
                return Err(e);
            }
        }
        Ok(cgroup)
    }
}

/// Container ids are validated upstream; this guards the paths we build.
fn check_id(id: &str) -> Result<(), CgroupError> {
    if id.is_empty() || id == "." || id.contains('/') || id.contains("..") || id.contains('\0') {
        return Err(CgroupError::InvalidId(id.to_string()));
    }
    Ok(())
}

/// One container's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    backend: CgroupBackend,
}

#[derive(Debug)]
enum CgroupBackend {
    V1(V1Cgroup),
    V2(V2Cgroup),
}

impl Cgroup {
    /// Moves `pid` in (into every hierarchy on v1).
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        let pid = pid.to_string();
        self.dirs()
            .try_for_each(|dir| fs::write(&dir.join("cgroup.procs"), &pid))
    }

    /// Applies resource limits; also serves UpdateContainer, so fields not
    /// set in `resources` keep their current values.
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        self.apply_limits(&Limits::from_oci(resources)?)
    }

    fn apply_limits(&self, limits: &Limits) -> Result<(), CgroupError> {
        match &self.backend {
            CgroupBackend::V1(cg) => cg.apply(limits),
            CgroupBackend::V2(cg) => cg.apply(limits),
        }
    }

    /// Usage now. Optional files that are missing read as 0; a removed
    /// cgroup is an error.
    pub fn stats(&self) -> Result<CgroupStats, CgroupError> {
        match &self.backend {
            CgroupBackend::V1(cg) => cg.stats(),
            CgroupBackend::V2(cg) => cg.stats(),
        }
    }

    /// How many processes the OOM killer has killed in this cgroup.
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        match &self.backend {
            CgroupBackend::V1(cg) => cg.oom_kills(),
            CgroupBackend::V2(cg) => cg.oom_kills(),
        }
    }

    /// The processes directly in the cgroup (cgroup.procs).
    #[cfg(test)]
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        fs::procs(self.procs_dir())
    }

    /// Sends `signal` to every process in the cgroup, including those in
    /// cgroups the container made below its own.
    pub fn signal_all(&self, signal: Signal) -> Result<(), CgroupError> {
        self.all_pids()?
            .into_iter()
            .try_for_each(|pid| send(pid, signal))
    }

    /// Kills every process in the cgroup and below, and waits (bounded)
    /// until they are gone. Uses cgroup.kill when the kernel has it, which
    /// also stops forks racing the kill; otherwise SIGKILLs repeatedly.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let kill_file = self.unified_path().map(|p| p.join("cgroup.kill"));
        let kernel_kills = match kill_file {
            Some(file) if file.exists() => {
                fs::write(&file, "1")?;
                true
            }
            _ => false,
        };
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let pids = self.all_pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let path = self.procs_dir().to_path_buf();
                return Err(CgroupError::StillPopulated { path, pids });
            }
            if !kernel_kills {
                for pid in &pids {
                    send(*pid, Signal::SIGKILL)?;
                }
            }
            thread::sleep(KILL_POLL);
        }
    }

    /// Kills everything, then removes the cgroup (each hierarchy's
    /// directory on v1, nested cgroups first). Safe to call again.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        self.kill_all()?;
        self.dirs().try_for_each(fs::remove_tree)
    }

    /// The cgroup2 directory, for the container's own `/sys/fs/cgroup`.
    pub fn unified_path(&self) -> Option<&Path> {
        match &self.backend {
            CgroupBackend::V1(_) => None,
            CgroupBackend::V2(cg) => Some(cg.path()),
        }
    }

    fn dirs(&self) -> Box<dyn Iterator<Item = &Path> + '_> {
        match &self.backend {
            CgroupBackend::V1(cg) => Box::new(cg.dirs()),
            CgroupBackend::V2(cg) => Box::new(std::iter::once(cg.path())),
        }
    }

    fn procs_dir(&self) -> &Path {
        match &self.backend {
            CgroupBackend::V1(cg) => cg.procs_dir(),
            CgroupBackend::V2(cg) => cg.path(),
        }
    }

    /// Every process in any of our directories or their children, once.
    fn all_pids(&self) -> Result<Vec<u32>, CgroupError> {
        let mut pids = Vec::new();
        for dir in self.dirs() {
            fs::procs_recursive(dir, &mut pids)?;
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }
}

/// Signals one process; one that already exited is not an error. Never
/// signals the agent itself, whatever a cgroup file claims.
fn send(pid: u32, signal: Signal) -> Result<(), CgroupError> {
    let Ok(raw) = i32::try_from(pid) else {
        return Ok(());
    };
    if pid == std::process::id() || raw <= 0 {
        return Ok(());
    }
    match kill(Pid::from_raw(raw), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(source) => Err(CgroupError::Signal {
            pid,
            signal,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_escape_are_refused() {
        for id in ["", ".", "..", "a/b", "../x", "x/..", "a..b", "a\0b"] {
            assert!(check_id(id).is_err(), "{id:?} accepted");
        }
        for id in ["abc", "a.b", "A-b_c.1", &"x".repeat(128)] {
            assert!(check_id(id).is_ok(), "{id:?} refused");
        }
    }

    #[test]
    fn handles_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<CgroupManager>();
        shareable::<Cgroup>();
        shareable::<CgroupError>();
    }

    #[test]
    fn only_request_errors_are_invalid_arguments() {
        let field = "linux.resources.cpu.period";
        let reason = String::new();
        assert!(CgroupError::InvalidResource { field, reason }.is_invalid_argument());
        assert!(CgroupError::InvalidId("..".into()).is_invalid_argument());
        let reason = String::new();
        assert!(!CgroupError::Unsupported { field, reason }.is_invalid_argument());
        assert!(!CgroupError::AlreadyExists("/x".into()).is_invalid_argument());
    }

    #[test]
    fn never_signals_the_agent_itself() {
        send(std::process::id(), Signal::SIGKILL).unwrap();
        send(0, Signal::SIGKILL).unwrap();
        send(u32::MAX, Signal::SIGKILL).unwrap();
    }
}
