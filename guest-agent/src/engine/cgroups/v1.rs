//! cgroup v1, only for development hosts that still run it: one tree per
//! controller (or per group of co-mounted controllers), each container
//! getting a directory in every tree.

use std::path::{Path, PathBuf};

use super::limits::{Limit, Limits, UNIFIED};
use super::proc::{self, CgroupMount, OwnCgroup};
use super::stats::{self, CgroupStats};
use super::{fs, CgroupError, CgroupVersion};

/// v1 reports "no limit" as a page-rounded i64::MAX; anything this large
/// is taken as unlimited.
const UNLIMITED_FLOOR: u64 = 1 << 62;

/// The kernel's USER_HZ, the unit of cpuacct.stat: 100 on every
/// architecture husk runs on.
const USER_HZ: u64 = 100;

/// A directory in one hierarchy and the controllers that hierarchy has.
#[derive(Debug, Clone)]
struct ControllerDir {
    controllers: Vec<String>,
    path: PathBuf,
}

impl ControllerDir {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// The per-hierarchy directories under which container cgroups go.
#[derive(Debug, Clone)]
pub struct V1Hierarchies {
    bases: Vec<ControllerDir>,
}

impl V1Hierarchies {
    /// Creates `<mount>/<own>/<base>` in every mounted controller hierarchy.
    /// Named hierarchies (name=systemd) are the host init's, not ours.
    pub fn setup(
        own: &[OwnCgroup],
        mounts: &[CgroupMount],
        base: &str,
    ) -> Result<Self, CgroupError> {
        let mut bases = Vec::new();
        for line in own {
            let named = line.controllers.iter().any(|c| c.starts_with("name="));
            if line.controllers.is_empty() || named {
                continue;
            }
            let mount = mounts.iter().find(|m| {
                !m.v2
                    && line.controllers.iter().all(|c| m.options.contains(c))
                    && proc::relative_to(&line.path, &m.root).is_ok()
            });
            let Some(mount) = mount else {
                continue;
            };
            let own_rel = proc::relative_to(&line.path, &mount.root)?;
            let dir = ControllerDir {
                controllers: line.controllers.clone(),
                path: mount.mount_point.join(own_rel).join(base),
            };
            fs::make_dir(&dir.path)?;
            if dir.has("cpuset") {
                inherit_cpuset(&dir.path)?;
            }
            bases.push(dir);
        }
        if bases.is_empty() {
            let msg = "no cgroup v1 controller hierarchy is mounted".to_string();
            return Err(CgroupError::Detect(msg));
        }
        Ok(Self { bases })
    }

    /// Creates the container's directory in every hierarchy, all or none.
    pub fn create(&self, id: &str) -> Result<V1Cgroup, CgroupError> {
        let mut cgroup = V1Cgroup { dirs: Vec::new() };
        for base in &self.bases {
            let path = base.path.join(id);
            let created = fs::make_dir(&path).and_then(|created| {
                if created && base.has("cpuset") {
                    inherit_cpuset(&path)?;
                }
                Ok(created)
            });
            let error = match created {
                Ok(true) => {
                    let controllers = base.controllers.clone();
                    cgroup.dirs.push(ControllerDir { controllers, path });
                    continue;
                }
                Ok(false) => CgroupError::AlreadyExists(path),
                Err(e) => e,
            };
            for dir in &cgroup.dirs {
                let _ = std::fs::remove_dir(&dir.path);
            }
            return Err(error);
        }
        Ok(cgroup)
    }
}

impl V1Hierarchies {
    pub fn base_dirs(&self) -> Vec<PathBuf> {
        self.bases.iter().map(|b| b.path.clone()).collect()
    }
}

/// A v1 cpuset starts with no CPUs and no memory nodes, and refuses tasks
/// until given some: copy the parent's.
fn inherit_cpuset(dir: &Path) -> Result<(), CgroupError> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    for name in ["cpuset.cpus", "cpuset.mems"] {
        if fs::read(&dir.join(name))?.trim().is_empty() {
            let value = fs::read(&parent.join(name))?;
            fs::write(&dir.join(name), value.trim())?;
        }
    }
    Ok(())
}

/// One container's cgroup: a directory per hierarchy.
#[derive(Debug)]
pub struct V1Cgroup {
    dirs: Vec<ControllerDir>,
}

impl V1Cgroup {
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(|d| d.path.as_path())
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|d| d.has(controller))
            .map(|d| d.path.as_path())
    }

    /// The directory whose cgroup.procs lists the container's processes.
    pub fn procs_dir(&self) -> &Path {
        self.dir("pids")
            .or_else(|| self.dir("memory"))
            .unwrap_or(&self.dirs[0].path)
    }

    /// Like v2, but only what v1 can express; refuses before writing when a
    /// needed hierarchy is missing or `unified` is set.
    pub fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        if !limits.unified.is_empty() {
            return Err(CgroupError::Unsupported {
                field: UNIFIED,
                reason: "the host runs cgroup v1".to_string(),
            });
        }
        let memory = limits.memory_max.is_some()
            || limits.memory_low.is_some()
            || limits.memory_swap_total.is_some();
        let cpu = limits.cpu_shares.is_some()
            || limits.cpu_quota.is_some()
            || limits.cpu_period.is_some();
        let cpuset = limits.cpuset_cpus.is_some() || limits.cpuset_mems.is_some();
        let needed = [
            (memory, "memory", "linux.resources.memory"),
            (cpu, "cpu", "linux.resources.cpu"),
            (cpuset, "cpuset", "linux.resources.cpu"),
            (limits.pids_max.is_some(), "pids", "linux.resources.pids"),
        ];
        for (_, controller, field) in needed.iter().filter(|n| n.0) {
            if self.dir(controller).is_none() {
                return Err(CgroupError::Unsupported {
                    field,
                    reason: format!("no cgroup v1 {controller} hierarchy is mounted"),
                });
            }
        }

        if let Some(dir) = self.dir("memory") {
            if let Some(low) = limits.memory_low {
                fs::write(&dir.join("memory.soft_limit_in_bytes"), &low.v1())?;
            }
            set_memory_limits(dir, limits.memory_max, limits.memory_swap_total)?;
        }
        if let Some(dir) = self.dir("cpu") {
            if let Some(shares) = limits.cpu_shares {
                fs::write(&dir.join("cpu.shares"), &shares.to_string())?;
            }
            if let Some(period) = limits.cpu_period {
                fs::write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
            }
            if let Some(quota) = limits.cpu_quota {
                fs::write(&dir.join("cpu.cfs_quota_us"), &quota.v1())?;
            }
        }
        if let Some(dir) = self.dir("cpuset") {
            if let Some(cpus) = &limits.cpuset_cpus {
                fs::write(&dir.join("cpuset.cpus"), cpus)?;
            }
            if let Some(mems) = &limits.cpuset_mems {
                fs::write(&dir.join("cpuset.mems"), mems)?;
            }
        }
        if let Some(dir) = self.dir("pids") {
            if let Some(pids) = limits.pids_max {
                fs::write(&dir.join("pids.max"), &pids.v2())?;
            }
        }
        // blkio.weight was CFQ's (removed in 5.0); BFQ has its own file on
        // the same scale. With neither, nothing weighs I/O.
        if let (Some(dir), Some(weight)) = (self.dir("blkio"), limits.blkio_weight) {
            let cfq = dir.join("blkio.weight");
            let file = if cfq.exists() {
                cfq
            } else {
                dir.join("blkio.bfq.weight")
            };
            fs::write_if_present(&file, &weight.to_string())?;
        }
        Ok(())
    }

    pub fn stats(&self) -> Result<CgroupStats, CgroupError> {
        fs::require_dir(self.procs_dir())?;
        let read = |controller: &str, name: &str| match self.dir(controller) {
            Some(dir) => fs::read_or_empty(&dir.join(name)),
            None => Ok(String::new()),
        };
        let cpu = read("cpu", "cpu.stat")?;
        let (user_usec, system_usec) = match (
            read("cpuacct", "cpuacct.usage_user")?,
            read("cpuacct", "cpuacct.usage_sys")?,
        ) {
            (user, sys) if !user.is_empty() && !sys.is_empty() => {
                (stats::number(&user) / 1000, stats::number(&sys) / 1000)
            }
            _ => {
                let ticks = read("cpuacct", "cpuacct.stat")?;
                let usec = |key| stats::keyed(&ticks, key).unwrap_or(0) * (1_000_000 / USER_HZ);
                (usec("user"), usec("system"))
            }
        };
        let memory = read("memory", "memory.stat")?;
        let memory_stat = |total: &str, local: &str| {
            stats::keyed(&memory, total)
                .or_else(|| stats::keyed(&memory, local))
                .unwrap_or(0)
        };
        let usage = stats::number(&read("memory", "memory.usage_in_bytes")?);
        let limit =
            match unlimited_if_huge(stats::number(&read("memory", "memory.limit_in_bytes")?)) {
                Limit::Max => 0,
                Limit::Value(v) => v,
            };
        let inactive_file = memory_stat("total_inactive_file", "inactive_file");
        let (read_bytes, write_bytes) =
            stats::blkio(&read("blkio", "blkio.throttle.io_service_bytes_recursive")?);
        let (read_ops, write_ops) =
            stats::blkio(&read("blkio", "blkio.throttle.io_serviced_recursive")?);
        Ok(CgroupStats {
            cpu_usage_usec: stats::number(&read("cpuacct", "cpuacct.usage")?) / 1000,
            cpu_user_usec: user_usec,
            cpu_system_usec: system_usec,
            cpu_nr_throttled: stats::keyed(&cpu, "nr_throttled").unwrap_or(0),
            cpu_throttled_usec: stats::keyed(&cpu, "throttled_time").unwrap_or(0) / 1000,
            memory_usage_bytes: usage,
            memory_limit_bytes: limit,
            memory_working_set_bytes: usage.saturating_sub(inactive_file),
            memory_anon_bytes: memory_stat("total_rss", "rss"),
            memory_file_bytes: memory_stat("total_cache", "cache"),
            memory_oom_kills: self.oom_kills()?,
            pids_current: stats::number(&read("pids", "pids.current")?),
            pids_limit: stats::limit_value(&read("pids", "pids.max")?),
            io_read_bytes: read_bytes,
            io_write_bytes: write_bytes,
            io_read_ops: read_ops,
            io_write_ops: write_ops,
            version: CgroupVersion::V1,
        })
    }

    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let Some(dir) = self.dir("memory") else {
            return Ok(0);
        };
        let control = fs::read_or_empty(&dir.join("memory.oom_control"))?;
        Ok(stats::keyed(&control, "oom_kill").unwrap_or(0))
    }
}

fn unlimited_if_huge(bytes: u64) -> Limit {
    if bytes >= UNLIMITED_FLOOR {
        Limit::Max
    } else {
        Limit::Value(bytes)
    }
}

/// v1 insists memory.limit_in_bytes <= memory.memsw.limit_in_bytes at all
/// times, so the order of the two writes depends on the current values.
fn set_memory_limits(
    dir: &Path,
    memory: Option<Limit>,
    memory_and_swap: Option<Limit>,
) -> Result<(), CgroupError> {
    let limit_file = dir.join("memory.limit_in_bytes");
    let memsw_file = dir.join("memory.memsw.limit_in_bytes");
    // Absent without swap accounting: then there is no swap to limit.
    let memory_and_swap = memory_and_swap.filter(|_| memsw_file.exists());
    match (memory, memory_and_swap) {
        (Some(memory), Some(total)) => {
            let current = unlimited_if_huge(stats::number(&fs::read(&memsw_file)?));
            if memory.fits_within(current) {
                fs::write(&limit_file, &memory.v1())?;
                fs::write(&memsw_file, &total.v1())
            } else {
                fs::write(&memsw_file, &total.v1())?;
                fs::write(&limit_file, &memory.v1())
            }
        }
        (Some(memory), None) => fs::write(&limit_file, &memory.v1()),
        (None, Some(total)) => fs::write(&memsw_file, &total.v1()),
        (None, None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_limits_are_unlimited() {
        assert_eq!(unlimited_if_huge(9_223_372_036_854_771_712), Limit::Max);
        assert_eq!(unlimited_if_huge(64 << 20), Limit::Value(64 << 20));
    }

    #[test]
    fn setup_finds_each_controller_hierarchy() {
        let tmp = std::env::temp_dir().join(format!("husk-cg-v1-setup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        for dir in ["cpu,cpuacct/user", "memory/c", "systemd"] {
            std::fs::create_dir_all(tmp.join(dir)).unwrap();
        }
        let own = proc::parse_own_cgroups(
            "5:name=systemd:/\n4:memory:/pod/c\n3:net_cls:/\n2:cpu,cpuacct:/user\n0::/\n",
        )
        .unwrap();
        let mountinfo = format!(
            "1 0 0:1 / {t}/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
             2 0 0:2 /pod {t}/memory rw - cgroup cgroup rw,memory\n\
             3 0 0:3 / {t}/systemd rw - cgroup cgroup rw,name=systemd\n",
            t = tmp.display()
        );
        let mounts = proc::parse_cgroup_mounts(&mountinfo);

        let hierarchies = V1Hierarchies::setup(&own, &mounts, "husk").unwrap();

        let paths: Vec<_> = hierarchies.bases.iter().map(|b| b.path.clone()).collect();
        assert_eq!(
            paths,
            [tmp.join("memory/c/husk"), tmp.join("cpu,cpuacct/user/husk")]
        );
        assert!(paths.iter().all(|p| p.is_dir()));
        assert!(!tmp.join("systemd/husk").exists());
        assert!(hierarchies.bases[1].has("cpuacct"));
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
