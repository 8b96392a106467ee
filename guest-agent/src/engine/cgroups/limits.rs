//! OCI `LinuxResources`, checked and converted once before any cgroup file
//! is touched, so that a bad value never leaves a half-applied update.
//!
//! Zero in an optional numeric field means "not set", as CRI sends it.

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxResources};

use super::CgroupError;

const MEMORY_LIMIT: &str = "linux.resources.memory.limit";
const MEMORY_RESERVATION: &str = "linux.resources.memory.reservation";
const MEMORY_SWAP: &str = "linux.resources.memory.swap";
const CPU_SHARES: &str = "linux.resources.cpu.shares";
const CPU_QUOTA: &str = "linux.resources.cpu.quota";
const CPU_PERIOD: &str = "linux.resources.cpu.period";
const CPU_CPUS: &str = "linux.resources.cpu.cpus";
const CPU_MEMS: &str = "linux.resources.cpu.mems";
const BLKIO_WEIGHT: &str = "linux.resources.blockIO.weight";
pub const UNIFIED: &str = "linux.resources.unified";

/// cgroup v1 `cpu.shares` bounds, as the kernel clamps them.
const MIN_SHARES: u64 = 2;
const MAX_SHARES: u64 = 262_144;
/// CFS bandwidth bounds (µs): the kernel refuses anything outside.
const MIN_CFS_US: u64 = 1_000;
const MAX_CFS_PERIOD_US: u64 = 1_000_000;
/// OCI / cgroup v1 `blkio.weight` bounds.
const MIN_BLKIO_WEIGHT: u16 = 10;
const MAX_BLKIO_WEIGHT: u16 = 1_000;

/// A limit that may also be lifted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Max,
    Value(u64),
}

impl Limit {
    /// Whether `self` is no larger than `other`; unlimited is the largest.
    pub fn fits_within(self, other: Limit) -> bool {
        match (self, other) {
            (_, Limit::Max) => true,
            (Limit::Max, Limit::Value(_)) => false,
            (Limit::Value(a), Limit::Value(b)) => a <= b,
        }
    }

    /// cgroup v2 spelling: "max" or the number.
    pub fn v2(self) -> String {
        match self {
            Limit::Max => "max".to_string(),
            Limit::Value(v) => v.to_string(),
        }
    }

    /// cgroup v1 spelling for memory and CFS quota: "-1" or the number.
    pub fn v1(self) -> String {
        match self {
            Limit::Max => "-1".to_string(),
            Limit::Value(v) => v.to_string(),
        }
    }
}

/// What to write, version-neutral. `None` leaves the current setting.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_max: Option<Limit>,
    pub memory_low: Option<Limit>,
    /// OCI semantics: memory plus swap. At least `memory_max` when a value.
    pub memory_swap_total: Option<Limit>,
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<Limit>,
    pub cpu_period: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    pub pids_max: Option<Limit>,
    pub blkio_weight: Option<u16>,
    /// Raw v2 files, keys checked to be plain control file names; sorted.
    pub unified: Vec<(String, String)>,
}

impl Limits {
    pub fn from_oci(resources: &LinuxResources) -> Result<Self, CgroupError> {
        let mut limits = Limits::default();
        if let Some(memory) = resources.memory() {
            limits.memory(memory)?;
        }
        if let Some(cpu) = resources.cpu() {
            limits.cpu(cpu)?;
        }
        if let Some(pids) = resources.pids() {
            limits.pids_max = Some(match pids.limit() {
                n if n <= 0 => Limit::Max,
                n => Limit::Value(n.unsigned_abs()),
            });
        }
        if let Some(block_io) = resources.block_io() {
            limits.block_io(block_io)?;
        }
        if let Some(unified) = resources.unified() {
            for (key, value) in unified {
                check_unified_key(key).map_err(|reason| invalid(UNIFIED, reason))?;
                limits.unified.push((key.clone(), value.clone()));
            }
            limits.unified.sort();
        }
        Ok(limits)
    }

    /// cgroup v2 `memory.swap.max`: swap alone, not memory plus swap.
    pub fn swap_only(&self) -> Option<Limit> {
        match (self.memory_swap_total?, self.memory_max) {
            (Limit::Value(total), Some(Limit::Value(memory))) => Some(Limit::Value(total - memory)),
            _ => Some(Limit::Max),
        }
    }

    fn memory(&mut self, memory: &LinuxMemory) -> Result<(), CgroupError> {
        self.memory_max = memory_limit(MEMORY_LIMIT, memory.limit())?;
        self.memory_low = memory_limit(MEMORY_RESERVATION, memory.reservation())?;
        self.memory_swap_total = memory_limit(MEMORY_SWAP, memory.swap())?;
        if let Some(Limit::Value(total)) = self.memory_swap_total {
            match self.memory_max {
                Some(Limit::Value(limit)) if limit <= total => {}
                Some(Limit::Value(limit)) => {
                    let reason = format!("{total} is below the memory limit {limit}");
                    return Err(invalid(MEMORY_SWAP, reason));
                }
                _ => {
                    let reason = "a memory+swap limit needs a memory limit".to_string();
                    return Err(invalid(MEMORY_SWAP, reason));
                }
            }
        }
        Ok(())
    }

    fn cpu(&mut self, cpu: &LinuxCpu) -> Result<(), CgroupError> {
        self.cpu_shares = match cpu.shares() {
            None | Some(0) => None,
            Some(s @ MIN_SHARES..=MAX_SHARES) => Some(s),
            Some(s) => {
                let reason = format!("{s} is outside {MIN_SHARES}..={MAX_SHARES}");
                return Err(invalid(CPU_SHARES, reason));
            }
        };
        self.cpu_quota = match cpu.quota() {
            None | Some(0) => None,
            Some(-1) => Some(Limit::Max),
            Some(q) if q >= MIN_CFS_US as i64 => Some(Limit::Value(q.unsigned_abs())),
            Some(q) => {
                let reason = format!("{q} is neither -1 nor at least {MIN_CFS_US} µs");
                return Err(invalid(CPU_QUOTA, reason));
            }
        };
        self.cpu_period = match cpu.period() {
            None => None,
            Some(p @ MIN_CFS_US..=MAX_CFS_PERIOD_US) => Some(p),
            Some(p) => {
                let reason = format!("{p} is outside {MIN_CFS_US}..={MAX_CFS_PERIOD_US} µs");
                return Err(invalid(CPU_PERIOD, reason));
            }
        };
        self.cpuset_cpus = cpu_list(CPU_CPUS, cpu.cpus().as_deref())?;
        self.cpuset_mems = cpu_list(CPU_MEMS, cpu.mems().as_deref())?;
        Ok(())
    }

    fn block_io(&mut self, block_io: &LinuxBlockIo) -> Result<(), CgroupError> {
        self.blkio_weight = match block_io.weight() {
            None | Some(0) => None,
            Some(w @ MIN_BLKIO_WEIGHT..=MAX_BLKIO_WEIGHT) => Some(w),
            Some(w) => {
                let reason = format!("{w} is outside {MIN_BLKIO_WEIGHT}..={MAX_BLKIO_WEIGHT}");
                return Err(invalid(BLKIO_WEIGHT, reason));
            }
        };
        Ok(())
    }
}

/// cgroup v1 `cpu.shares` (2..=262144) to cgroup v2 `cpu.weight`
/// (1..=10000), the mapping runc, crun and systemd share, so that a pod
/// gets the same weight whichever runtime ran it.
pub fn cpu_weight(shares: u64) -> u64 {
    let shares = shares.clamp(MIN_SHARES, MAX_SHARES);
    (1 + ((shares - MIN_SHARES) * 9_999) / (MAX_SHARES - MIN_SHARES)).clamp(1, 10_000)
}

/// cgroup v1 `blkio.weight` (10..=1000) to cgroup v2 `io.weight`
/// (1..=10000), the same linear mapping runc uses.
pub fn io_weight(blkio: u16) -> u64 {
    let blkio = u64::from(blkio.clamp(MIN_BLKIO_WEIGHT, MAX_BLKIO_WEIGHT));
    let (min, max) = (u64::from(MIN_BLKIO_WEIGHT), u64::from(MAX_BLKIO_WEIGHT));
    1 + ((blkio - min) * 9_999) / (max - min)
}

fn invalid(field: &'static str, reason: String) -> CgroupError {
    CgroupError::InvalidResource { field, reason }
}

/// -1 is unlimited, 0 is unset, anything else below zero is a mistake.
fn memory_limit(field: &'static str, value: Option<i64>) -> Result<Option<Limit>, CgroupError> {
    match value {
        None | Some(0) => Ok(None),
        Some(-1) => Ok(Some(Limit::Max)),
        Some(v) if v > 0 => Ok(Some(Limit::Value(v.unsigned_abs()))),
        Some(v) => Err(invalid(field, format!("{v} is neither -1 nor positive"))),
    }
}

/// A cpuset list such as "0-3,6". The kernel checks the numbers exist; we
/// only refuse what could never be a list. Empty means "not set".
fn cpu_list(field: &'static str, value: Option<&str>) -> Result<Option<String>, CgroupError> {
    let Some(list) = value.map(str::trim).filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let is_number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let valid = list.split(',').all(|item| match item.split_once('-') {
        Some((lo, hi)) => {
            is_number(lo) && is_number(hi) && lo.parse::<u64>().ok() <= hi.parse::<u64>().ok()
        }
        None => is_number(item),
    });
    if valid {
        Ok(Some(list.to_string()))
    } else {
        Err(invalid(field, format!("{list:?} is not a list like 0-3,6")))
    }
}

/// A unified key must name a control file of the container's own cgroup:
/// no path tricks, and none of the `cgroup.*` files that move processes or
/// reshape the tree.
fn check_unified_key(key: &str) -> Result<(), String> {
    let plain = !key.is_empty()
        && key.len() <= 255
        && key != "."
        && key != ".."
        && !key.contains('/')
        && !key.bytes().any(|b| b.is_ascii_whitespace() || b == 0);
    if !plain {
        return Err(format!("{key:?} is not a plain cgroup file name"));
    }
    if key.starts_with("cgroup.") {
        return Err(format!("{key:?} manages the cgroup tree, not resources"));
    }
    if !key.contains('.') {
        return Err(format!("{key:?} is not a <controller>.<file> name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use oci_spec::runtime::{
        LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder,
        LinuxResourcesBuilder,
    };

    use super::*;

    fn field_of(err: CgroupError) -> &'static str {
        match err {
            CgroupError::InvalidResource { field, .. } => field,
            other => panic!("not a validation error: {other}"),
        }
    }

    fn with_cpu(cpu: LinuxCpuBuilder) -> Result<Limits, CgroupError> {
        let res = LinuxResourcesBuilder::default()
            .cpu(cpu.build().unwrap())
            .build()
            .unwrap();
        Limits::from_oci(&res)
    }

    fn with_memory(memory: LinuxMemoryBuilder) -> Result<Limits, CgroupError> {
        let res = LinuxResourcesBuilder::default()
            .memory(memory.build().unwrap())
            .build()
            .unwrap();
        Limits::from_oci(&res)
    }

    #[test]
    fn shares_map_to_weights_like_runc() {
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(512), 20);
        assert_eq!(cpu_weight(262_144), 10_000);
        assert_eq!(cpu_weight(1_000_000), 10_000);
    }

    #[test]
    fn blkio_weights_map_to_io_weights() {
        assert_eq!(io_weight(10), 1);
        assert_eq!(io_weight(500), 4950);
        assert_eq!(io_weight(1000), 10_000);
    }

    #[test]
    fn converts_a_full_spec() {
        let mut unified = HashMap::new();
        unified.insert("memory.high".to_string(), "1G".to_string());
        unified.insert("cpu.idle".to_string(), "1".to_string());
        let res = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64_i64 << 20)
                    .reservation(-1)
                    .swap(96_i64 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(512_u64)
                    .quota(-1)
                    .period(100_000_u64)
                    .cpus(" 0-1,3 ")
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(0).build().unwrap())
            .block_io(
                LinuxBlockIoBuilder::default()
                    .weight(300_u16)
                    .build()
                    .unwrap(),
            )
            .unified(unified)
            .build()
            .unwrap();
        let limits = Limits::from_oci(&res).unwrap();
        assert_eq!(
            limits,
            Limits {
                memory_max: Some(Limit::Value(64 << 20)),
                memory_low: Some(Limit::Max),
                memory_swap_total: Some(Limit::Value(96 << 20)),
                cpu_shares: Some(512),
                cpu_quota: Some(Limit::Max),
                cpu_period: Some(100_000),
                cpuset_cpus: Some("0-1,3".to_string()),
                cpuset_mems: None,
                pids_max: Some(Limit::Max),
                blkio_weight: Some(300),
                unified: vec![
                    ("cpu.idle".to_string(), "1".to_string()),
                    ("memory.high".to_string(), "1G".to_string()),
                ],
            }
        );
        assert_eq!(limits.swap_only(), Some(Limit::Value(32 << 20)));
    }

    #[test]
    fn zero_means_unset() {
        let limits = with_cpu(LinuxCpuBuilder::default().shares(0_u64).quota(0)).unwrap();
        assert_eq!(limits, Limits::default());
        let limits = with_memory(LinuxMemoryBuilder::default().limit(0).swap(0)).unwrap();
        assert_eq!(limits, Limits::default());
    }

    #[test]
    fn unlimited_swap_needs_no_memory_limit() {
        let limits = with_memory(LinuxMemoryBuilder::default().swap(-1)).unwrap();
        assert_eq!(limits.swap_only(), Some(Limit::Max));
        assert_eq!(limits.memory_max, None);
    }

    #[test]
    fn bad_values_name_their_oci_field() {
        let cpu = LinuxCpuBuilder::default;
        assert_eq!(
            field_of(with_cpu(cpu().period(0_u64)).unwrap_err()),
            CPU_PERIOD
        );
        assert_eq!(
            field_of(with_cpu(cpu().period(2_000_000_u64)).unwrap_err()),
            CPU_PERIOD
        );
        assert_eq!(field_of(with_cpu(cpu().quota(500)).unwrap_err()), CPU_QUOTA);
        assert_eq!(field_of(with_cpu(cpu().quota(-2)).unwrap_err()), CPU_QUOTA);
        assert_eq!(
            field_of(with_cpu(cpu().shares(1_u64)).unwrap_err()),
            CPU_SHARES
        );
        assert_eq!(
            field_of(with_cpu(cpu().shares(300_000_u64)).unwrap_err()),
            CPU_SHARES
        );
        assert_eq!(field_of(with_cpu(cpu().cpus("0-")).unwrap_err()), CPU_CPUS);
        assert_eq!(field_of(with_cpu(cpu().cpus("3-1")).unwrap_err()), CPU_CPUS);
        assert_eq!(
            field_of(with_cpu(cpu().mems("zero")).unwrap_err()),
            CPU_MEMS
        );

        let mem = LinuxMemoryBuilder::default;
        assert_eq!(
            field_of(with_memory(mem().limit(-5)).unwrap_err()),
            MEMORY_LIMIT
        );
        assert_eq!(
            field_of(with_memory(mem().reservation(-2)).unwrap_err()),
            MEMORY_RESERVATION
        );
        let below = mem().limit(100).swap(50);
        assert_eq!(field_of(with_memory(below).unwrap_err()), MEMORY_SWAP);
        assert_eq!(
            field_of(with_memory(mem().swap(50)).unwrap_err()),
            MEMORY_SWAP
        );
        let unlimited_memory = mem().limit(-1).swap(50);
        assert_eq!(
            field_of(with_memory(unlimited_memory).unwrap_err()),
            MEMORY_SWAP
        );

        let res = LinuxResourcesBuilder::default()
            .block_io(
                LinuxBlockIoBuilder::default()
                    .weight(5_u16)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        assert_eq!(field_of(Limits::from_oci(&res).unwrap_err()), BLKIO_WEIGHT);
    }

    #[test]
    fn unified_keys_must_be_plain_resource_files() {
        for key in ["memory.high", "cpu.max.burst", "io.max"] {
            assert_eq!(check_unified_key(key), Ok(()), "{key}");
        }
        for key in [
            "",
            ".",
            "..",
            "../memory.max",
            "child/memory.max",
            "cgroup.procs",
            "cgroup.kill",
            "cgroup.subtree_control",
            "memory",
            "memory.max ",
            "memory.\0max",
        ] {
            assert!(check_unified_key(key).is_err(), "{key:?} accepted");
        }
        let mut unified = HashMap::new();
        unified.insert("cgroup.procs".to_string(), "1".to_string());
        let res = LinuxResourcesBuilder::default()
            .unified(unified)
            .build()
            .unwrap();
        assert_eq!(field_of(Limits::from_oci(&res).unwrap_err()), UNIFIED);
    }

    #[test]
    fn limits_order_with_unlimited_on_top() {
        assert!(Limit::Value(1).fits_within(Limit::Value(1)));
        assert!(Limit::Value(1).fits_within(Limit::Max));
        assert!(!Limit::Value(2).fits_within(Limit::Value(1)));
        assert!(!Limit::Max.fits_within(Limit::Value(1)));
        assert_eq!(Limit::Max.v1(), "-1");
        assert_eq!(Limit::Max.v2(), "max");
        assert_eq!(Limit::Value(7).v2(), "7");
    }
}
