//! cgroup v2, what every husk microVM runs: one unified tree.

use std::path::{Path, PathBuf};

use super::limits::{self, Limits};
use super::stats::{self, CgroupStats};
use super::{fs, CgroupError, CgroupVersion};

/// Controllers delegated to container cgroups when the kernel has them.
/// cpuset is included so that `linux.resources.cpu.cpus` can be honored.
const CONTROLLERS: &[&str] = &["cpuset", "cpu", "io", "memory", "pids"];

/// Where the agent's processes go when its own cgroup must become an inner
/// node: v2 forbids processes in a cgroup that delegates controllers.
const AGENT_LEAF: &str = "agent";

/// The directory under which every container cgroup is created.
#[derive(Debug, Clone)]
pub struct V2Hierarchy {
    base: PathBuf,
}

impl V2Hierarchy {
    /// Prepares `<mount>/<own>/<base>` to hold container cgroups. `own` is
    /// the agent's cgroup relative to the mount (plain components only).
    pub fn setup(mount: &Path, own: &Path, base: &str) -> Result<Self, CgroupError> {
        let own_dir = mount.join(own);
        // Only the root cgroup lacks cgroup.type, and only it may hold
        // processes while delegating controllers.
        if own_dir.join("cgroup.type").exists() && !fs::procs(&own_dir)?.is_empty() {
            move_processes_into_leaf(&own_dir)?;
        }
        let mut dir = mount.to_path_buf();
        enable_controllers(&dir)?;
        for component in own.components() {
            dir.push(component);
            enable_controllers(&dir)?;
        }
        let base = own_dir.join(base);
        fs::make_dir(&base)?;
        enable_controllers(&base)?;
        Ok(Self { base })
    }

    pub fn create(&self, id: &str) -> Result<V2Cgroup, CgroupError> {
        let path = self.base.join(id);
        if !fs::make_dir(&path)? {
            return Err(CgroupError::AlreadyExists(path));
        }
        Ok(V2Cgroup { path })
    }
}

impl V2Hierarchy {
    pub fn base_dirs(&self) -> Vec<PathBuf> {
        vec![self.base.clone()]
    }
}

/// Moves every process of `own_dir` into `own_dir/agent`.
fn move_processes_into_leaf(own_dir: &Path) -> Result<(), CgroupError> {
    let leaf = own_dir.join(AGENT_LEAF);
    fs::make_dir(&leaf)?;
    let procs = leaf.join("cgroup.procs");
    for pid in fs::procs(own_dir)? {
        match fs::write(&procs, &pid.to_string()) {
            // Exited since we listed it.
            Err(CgroupError::Write { source, .. })
                if source.raw_os_error() == Some(libc::ESRCH) => {}
            other => other?,
        }
    }
    Ok(())
}

/// Delegates the wanted controllers that `dir` has but does not yet pass
/// down, in a single write.
fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let available = fs::read(&dir.join("cgroup.controllers"))?;
    let control = dir.join("cgroup.subtree_control");
    let enabled = fs::read(&control)?;
    let missing: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::write(&control, &missing.join(" "))
}

/// One container's cgroup.
#[derive(Debug)]
pub struct V2Cgroup {
    path: PathBuf,
}

impl V2Cgroup {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        let file = |name: &str| self.path.join(name);
        if let Some(low) = limits.memory_low {
            fs::write(&file("memory.low"), &low.v2())?;
        }
        if let Some(max) = limits.memory_max {
            fs::write(&file("memory.max"), &max.v2())?;
        }
        // Absent when the kernel does no swap accounting: nothing to limit.
        if let Some(swap) = limits.swap_only() {
            fs::write_if_present(&file("memory.swap.max"), &swap.v2())?;
        }
        if let Some(shares) = limits.cpu_shares {
            let weight = limits::cpu_weight(shares).to_string();
            fs::write(&file("cpu.weight"), &weight)?;
        }
        if limits.cpu_quota.is_some() || limits.cpu_period.is_some() {
            fs::write(&file("cpu.max"), &self.cpu_max(limits)?)?;
        }
        if let Some(cpus) = &limits.cpuset_cpus {
            fs::write(&file("cpuset.cpus"), cpus)?;
        }
        if let Some(mems) = &limits.cpuset_mems {
            fs::write(&file("cpuset.mems"), mems)?;
        }
        if let Some(pids) = limits.pids_max {
            fs::write(&file("pids.max"), &pids.v2())?;
        }
        // io.weight needs io.cost (CONFIG_BLK_CGROUP_IOCOST); BFQ has its
        // own file on the blkio scale. With neither, nothing weighs I/O.
        if let Some(weight) = limits.blkio_weight {
            let bfq = file("io.bfq.weight");
            if bfq.exists() {
                fs::write(&bfq, &weight.to_string())?;
            } else {
                let value = format!("default {}", limits::io_weight(weight));
                fs::write_if_present(&file("io.weight"), &value)?;
            }
        }
        for (key, value) in &limits.unified {
            let path = file(key);
            if !path.exists() {
                return Err(CgroupError::InvalidResource {
                    field: limits::UNIFIED,
                    reason: format!("{} does not exist", path.display()),
                });
            }
            fs::write(&path, value)?;
        }
        Ok(())
    }

    /// "<quota> <period>"; a side not given keeps its current value (the
    /// kernel accepts a lone quota, but a period needs a quota before it).
    fn cpu_max(&self, limits: &Limits) -> Result<String, CgroupError> {
        let quota = match limits.cpu_quota {
            Some(quota) => quota.v2(),
            None => {
                let current = fs::read(&self.path.join("cpu.max"))?;
                current
                    .split_whitespace()
                    .next()
                    .unwrap_or("max")
                    .to_string()
            }
        };
        Ok(match limits.cpu_period {
            Some(period) => format!("{quota} {period}"),
            None => quota,
        })
    }

    pub fn stats(&self) -> Result<CgroupStats, CgroupError> {
        fs::require_dir(&self.path)?;
        let read = |name: &str| fs::read_or_empty(&self.path.join(name));
        let cpu = read("cpu.stat")?;
        let memory = read("memory.stat")?;
        let usage = stats::number(&read("memory.current")?);
        let inactive_file = stats::keyed(&memory, "inactive_file").unwrap_or(0);
        let io = stats::io_stat(&read("io.stat")?);
        Ok(CgroupStats {
            cpu_usage_usec: stats::keyed(&cpu, "usage_usec").unwrap_or(0),
            cpu_user_usec: stats::keyed(&cpu, "user_usec").unwrap_or(0),
            cpu_system_usec: stats::keyed(&cpu, "system_usec").unwrap_or(0),
            cpu_nr_throttled: stats::keyed(&cpu, "nr_throttled").unwrap_or(0),
            cpu_throttled_usec: stats::keyed(&cpu, "throttled_usec").unwrap_or(0),
            memory_usage_bytes: usage,
            memory_limit_bytes: stats::limit_value(&read("memory.max")?),
            memory_working_set_bytes: usage.saturating_sub(inactive_file),
            memory_anon_bytes: stats::keyed(&memory, "anon").unwrap_or(0),
            memory_file_bytes: stats::keyed(&memory, "file").unwrap_or(0),
            memory_oom_kills: self.oom_kills()?,
            pids_current: stats::number(&read("pids.current")?),
            pids_limit: stats::limit_value(&read("pids.max")?),
            io_read_bytes: io.read_bytes,
            io_write_bytes: io.write_bytes,
            io_read_ops: io.read_ops,
            io_write_ops: io.write_ops,
            version: CgroupVersion::V2,
        })
    }

    /// From memory.events, which counts this cgroup and its descendants.
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let events = fs::read_or_empty(&self.path.join("memory.events"))?;
        Ok(stats::keyed(&events, "oom_kill").unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use oci_spec::runtime::{
        LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources,
        LinuxResourcesBuilder,
    };

    use super::super::{CgroupManager, CgroupVersion};
    use super::*;

    /// A directory tree shaped like cgroup2, with the files the kernel
    /// would create; removed on drop.
    struct FakeTree {
        root: PathBuf,
    }

    impl FakeTree {
        fn new(name: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("husk-cg-v2-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).unwrap();
            Self { root }
        }

        fn cgroup(&self, rel: &str, files: &[(&str, &str)]) {
            let dir = self.root.join(rel);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, content) in files {
                std::fs::write(dir.join(name), content).unwrap();
            }
        }

        fn read(&self, rel: &str) -> String {
            std::fs::read_to_string(self.root.join(rel)).unwrap()
        }

        /// A tree whose agent runs in the root cgroup, as in the microVM.
        fn production(name: &str) -> (Self, CgroupManager) {
            let tree = Self::new(name);
            let all = "cpuset cpu io memory hugetlb pids rdma misc\n";
            tree.cgroup(
                "",
                &[
                    ("cgroup.controllers", all),
                    ("cgroup.subtree_control", ""),
                    ("cgroup.procs", "1\n"),
                ],
            );
            tree.cgroup(
                "husk",
                &[
                    ("cgroup.type", "domain\n"),
                    ("cgroup.controllers", "cpuset cpu io memory pids\n"),
                    ("cgroup.subtree_control", ""),
                ],
            );
            let manager = CgroupManager::detect_from(&tree.root, "0::/\n", "", "husk").unwrap();
            (tree, manager)
        }

        /// The files the kernel gives a new container cgroup.
        fn container_files(&self, rel: &str) {
            self.cgroup(
                rel,
                &[
                    ("cgroup.procs", ""),
                    ("memory.max", "max\n"),
                    ("memory.low", "0\n"),
                    ("memory.swap.max", "max\n"),
                    ("memory.high", "max\n"),
                    ("cpu.weight", "100\n"),
                    ("cpu.max", "max 100000\n"),
                    ("cpuset.cpus", "\n"),
                    ("cpuset.mems", "\n"),
                    ("pids.max", "max\n"),
                ],
            );
        }
    }

    impl Drop for FakeTree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn full_resources() -> LinuxResources {
        let mut unified = HashMap::new();
        unified.insert("memory.high".to_string(), "50000000".to_string());
        LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64_i64 << 20)
                    .reservation(32_i64 << 20)
                    .swap(96_i64 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(512_u64)
                    .quota(50_000)
                    .period(100_000_u64)
                    .cpus("0-1")
                    .mems("0")
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(10).build().unwrap())
            .block_io(
                LinuxBlockIoBuilder::default()
                    .weight(500_u16)
                    .build()
                    .unwrap(),
            )
            .unified(unified)
            .build()
            .unwrap()
    }

    #[test]
    fn setup_delegates_controllers_and_moves_the_agent_into_a_leaf() {
        let tree = FakeTree::new("setup");
        let all = "cpuset cpu io memory hugetlb pids rdma misc\n";
        tree.cgroup(
            "",
            &[("cgroup.controllers", all), ("cgroup.subtree_control", "")],
        );
        tree.cgroup(
            "kubepods",
            &[
                ("cgroup.type", "domain\n"),
                ("cgroup.controllers", "cpuset cpu io memory pids\n"),
                ("cgroup.subtree_control", "cpu memory\n"),
            ],
        );
        let pod_files = [
            ("cgroup.type", "domain\n"),
            ("cgroup.controllers", "cpu io memory pids\n"),
            ("cgroup.subtree_control", ""),
            ("cgroup.procs", "4242\n"),
        ];
        tree.cgroup("kubepods/pod", &pod_files);
        tree.cgroup("kubepods/pod/agent", &[("cgroup.procs", "")]);
        let husk_files = [
            ("cgroup.type", "domain\n"),
            ("cgroup.controllers", "cpu io memory pids\n"),
            ("cgroup.subtree_control", "pids\n"),
        ];
        tree.cgroup("kubepods/pod/husk", &husk_files);

        let manager =
            CgroupManager::detect_from(&tree.root, "0::/kubepods/pod\n", "", "husk").unwrap();

        assert_eq!(manager.version(), CgroupVersion::V2);
        assert_eq!(tree.read("kubepods/pod/agent/cgroup.procs"), "4242");
        assert_eq!(
            tree.read("cgroup.subtree_control"),
            "+cpuset +cpu +io +memory +pids"
        );
        assert_eq!(
            tree.read("kubepods/cgroup.subtree_control"),
            "+cpuset +io +pids"
        );
        assert_eq!(
            tree.read("kubepods/pod/cgroup.subtree_control"),
            "+cpu +io +memory +pids"
        );
        assert_eq!(
            tree.read("kubepods/pod/husk/cgroup.subtree_control"),
            "+cpu +io +memory"
        );
    }

    #[test]
    fn the_root_cgroup_keeps_its_processes() {
        let (tree, _manager) = FakeTree::production("root");
        assert_eq!(tree.read("cgroup.procs"), "1\n");
        assert!(!tree.root.join(AGENT_LEAF).exists());
        assert_eq!(
            tree.read("cgroup.subtree_control"),
            "+cpuset +cpu +io +memory +pids"
        );
    }

    #[test]
    fn apply_writes_the_v2_files() {
        let (tree, manager) = FakeTree::production("apply");
        let cgroup = manager.create("c1", None).unwrap();
        tree.container_files("husk/c1");

        cgroup.apply(&full_resources()).unwrap();

        assert_eq!(tree.read("husk/c1/memory.max"), "67108864");
        assert_eq!(tree.read("husk/c1/memory.low"), "33554432");
        assert_eq!(tree.read("husk/c1/memory.swap.max"), "33554432");
        assert_eq!(tree.read("husk/c1/cpu.weight"), "20");
        assert_eq!(tree.read("husk/c1/cpu.max"), "50000 100000");
        assert_eq!(tree.read("husk/c1/cpuset.cpus"), "0-1");
        assert_eq!(tree.read("husk/c1/cpuset.mems"), "0");
        assert_eq!(tree.read("husk/c1/pids.max"), "10");
        assert_eq!(tree.read("husk/c1/memory.high"), "50000000");
        // No io scheduler with weights: not created, not an error.
        assert!(!tree.root.join("husk/c1/io.weight").exists());
        assert_eq!(
            cgroup.unified_path(),
            Some(tree.root.join("husk/c1").as_path())
        );
    }

    #[test]
    fn updates_keep_what_they_do_not_mention() {
        let (tree, manager) = FakeTree::production("update");
        let cgroup = manager.create("c1", None).unwrap();
        tree.container_files("husk/c1");
        tree.cgroup("husk/c1", &[("io.weight", "default 100\n")]);
        cgroup.apply(&full_resources()).unwrap();
        assert_eq!(tree.read("husk/c1/io.weight"), "default 4950");
        // BFQ's file, when there, takes the blkio scale unconverted.
        tree.cgroup("husk/c1", &[("io.bfq.weight", "default 100\n")]);
        cgroup.apply(&full_resources()).unwrap();
        assert_eq!(tree.read("husk/c1/io.bfq.weight"), "500");

        let period_only = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .period(200_000_u64)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        cgroup.apply(&period_only).unwrap();
        assert_eq!(tree.read("husk/c1/cpu.max"), "50000 200000");

        let lift = LinuxResourcesBuilder::default()
            .cpu(LinuxCpuBuilder::default().quota(-1).build().unwrap())
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(-1)
                    .swap(-1)
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(-1).build().unwrap())
            .build()
            .unwrap();
        cgroup.apply(&lift).unwrap();
        assert_eq!(tree.read("husk/c1/cpu.max"), "max");
        assert_eq!(tree.read("husk/c1/memory.max"), "max");
        assert_eq!(tree.read("husk/c1/memory.swap.max"), "max");
        assert_eq!(tree.read("husk/c1/pids.max"), "max");
        assert_eq!(tree.read("husk/c1/memory.low"), "33554432");
        assert_eq!(tree.read("husk/c1/cpu.weight"), "20");
    }

    #[test]
    fn unified_must_name_an_existing_file() {
        let (tree, manager) = FakeTree::production("unified");
        let cgroup = manager.create("c1", None).unwrap();
        tree.container_files("husk/c1");
        let mut unified = HashMap::new();
        unified.insert("memory.oom.group".to_string(), "1".to_string());
        let res = LinuxResourcesBuilder::default()
            .unified(unified)
            .build()
            .unwrap();
        let err = cgroup.apply(&res).unwrap_err();
        assert!(
            matches!(err, CgroupError::InvalidResource { field, .. } if field == limits::UNIFIED),
            "{err}"
        );
        assert!(!tree.root.join("husk/c1/memory.oom.group").exists());
    }

    #[test]
    fn stats_come_from_the_v2_files() {
        let (tree, manager) = FakeTree::production("stats");
        let cgroup = manager.create("c1", None).unwrap();
        tree.cgroup(
            "husk/c1",
            &[
                ("cpu.stat", "usage_usec 900\nuser_usec 600\nsystem_usec 300\nnr_periods 9\nnr_throttled 4\nthrottled_usec 77\n"),
                ("memory.current", "10000\n"),
                ("memory.max", "max\n"),
                ("memory.stat", "anon 6000\nfile 3000\ninactive_file 2500\n"),
                ("memory.events", "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n"),
                ("pids.current", "3\n"),
                ("pids.max", "20\n"),
                ("io.stat", "8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n"),
            ],
        );
        let stats = cgroup.stats().unwrap();
        assert_eq!(
            stats,
            CgroupStats {
                cpu_usage_usec: 900,
                cpu_user_usec: 600,
                cpu_system_usec: 300,
                cpu_nr_throttled: 4,
                cpu_throttled_usec: 77,
                memory_usage_bytes: 10_000,
                memory_limit_bytes: 0,
                memory_working_set_bytes: 7_500,
                memory_anon_bytes: 6_000,
                memory_file_bytes: 3_000,
                memory_oom_kills: 2,
                pids_current: 3,
                pids_limit: 20,
                io_read_bytes: 10,
                io_write_bytes: 20,
                io_read_ops: 1,
                io_write_ops: 2,
                version: CgroupVersion::V2,
            }
        );
        assert_eq!(cgroup.oom_kills().unwrap(), 2);
    }

    #[test]
    fn create_refuses_existing_cgroups_and_path_tricks() {
        let (_tree, manager) = FakeTree::production("create");
        manager.create("c1", None).unwrap();
        let err = manager.create("c1", None).unwrap_err();
        assert!(matches!(err, CgroupError::AlreadyExists(_)), "{err}");
        for id in ["", ".", "..", "../c1", "a/b", "a..b"] {
            let err = manager.create(id, None).unwrap_err();
            assert!(matches!(err, CgroupError::InvalidId(_)), "{id:?}: {err}");
        }
    }

    #[test]
    fn a_failed_create_leaves_nothing_behind() {
        let (tree, manager) = FakeTree::production("rollback");
        // A bare directory lacks memory.max: the write fails.
        let err = manager.create("c1", Some(&full_resources())).unwrap_err();
        assert!(err.to_string().contains("memory.low"), "{err}");
        assert!(!tree.root.join("husk/c1").exists());
        // Invalid values are refused before anything is created.
        let bad = LinuxResourcesBuilder::default()
            .cpu(LinuxCpuBuilder::default().period(0_u64).build().unwrap())
            .build()
            .unwrap();
        let err = manager.create("c2", Some(&bad)).unwrap_err();
        assert!(matches!(err, CgroupError::InvalidResource { .. }), "{err}");
        assert!(!tree.root.join("husk/c2").exists());
    }

    #[test]
    fn kill_all_uses_cgroup_kill() {
        let (tree, manager) = FakeTree::production("kill");
        let cgroup = manager.create("c1", None).unwrap();
        tree.cgroup("husk/c1", &[("cgroup.procs", ""), ("cgroup.kill", "0\n")]);
        cgroup.kill_all().unwrap();
        assert_eq!(tree.read("husk/c1/cgroup.kill"), "1");
    }
}
