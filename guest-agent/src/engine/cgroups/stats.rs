//! Resource usage of one container and the parsers for the kernel's stat
//! files. Parsers skip lines they do not understand: the kernel adds keys
//! between versions, and a stat we cannot read is a zero, not an outage.

use super::CgroupVersion;

/// One snapshot, in the units CRI reports. Limits of 0 mean unlimited.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct CgroupStats {
    pub cpu_usage_usec: u64,
    pub cpu_user_usec: u64,
    pub cpu_system_usec: u64,
    pub cpu_nr_throttled: u64,
    pub cpu_throttled_usec: u64,
    pub memory_usage_bytes: u64,
    pub memory_limit_bytes: u64,
    /// Usage minus inactive file cache: what the kubelet evicts on.
    pub memory_working_set_bytes: u64,
    pub memory_anon_bytes: u64,
    pub memory_file_bytes: u64,
    pub memory_oom_kills: u64,
    pub pids_current: u64,
    pub pids_limit: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    pub io_read_ops: u64,
    pub io_write_ops: u64,
    pub version: CgroupVersion,
}

/// The value of `key` in a file of "key value" lines (cpu.stat,
/// memory.stat, memory.events, memory.oom_control, cpuacct.stat).
pub fn keyed(content: &str, key: &str) -> Option<u64> {
    content.lines().find_map(|line| {
        let (k, v) = line.trim().split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A single number, where "max" (v2) means unlimited and reads as 0.
pub fn limit_value(content: &str) -> u64 {
    match content.trim() {
        "max" => 0,
        v => v.parse().unwrap_or(0),
    }
}

/// A single number; garbage and absence read as 0.
pub fn number(content: &str) -> u64 {
    content.trim().parse().unwrap_or(0)
}

/// Totals over every device.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct IoTotals {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

/// cgroup v2 `io.stat`: "MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ..."
pub fn io_stat(content: &str) -> IoTotals {
    let mut totals = IoTotals::default();
    for pair in content.lines().flat_map(|l| l.split_whitespace().skip(1)) {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        let value: u64 = value.parse().unwrap_or(0);
        let slot = match key {
            "rbytes" => &mut totals.read_bytes,
            "wbytes" => &mut totals.write_bytes,
            "rios" => &mut totals.read_ops,
            "wios" => &mut totals.write_ops,
            _ => continue,
        };
        *slot = slot.saturating_add(value);
    }
    totals
}

/// cgroup v1 `blkio.throttle.io_service*`: "MAJ:MIN Read N" lines, summed
/// over devices as (read, write). The trailing "Total N" line is skipped.
pub fn blkio(content: &str) -> (u64, u64) {
    let (mut read, mut write) = (0u64, 0u64);
    for line in content.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_dev), Some(op), Some(value), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let value: u64 = value.parse().unwrap_or(0);
        match op {
            "Read" => read = read.saturating_add(value),
            "Write" => write = write.saturating_add(value),
            _ => {}
        }
    }
    (read, write)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU_STAT_V2: &str = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n\
        core_sched.force_idle_usec 0\nnr_periods 40\nnr_throttled 7\nthrottled_usec 9876\n\
        nr_bursts 0\nburst_usec 0\n";

    const MEMORY_STAT_V2: &str = "anon 4096000\nfile 8192000\nkernel 1000\n\
        inactive_anon 1\nactive_anon 2\ninactive_file 3000000\nactive_file 5192000\n";

    const MEMORY_STAT_V1: &str = "cache 32768\nrss 1667072\ninactive_file 16384\n\
        hierarchical_memory_limit 9223372036854771712\ntotal_cache 65536\n\
        total_rss 2000000\ntotal_inactive_file 32768\n";

    #[test]
    fn reads_cpu_stat() {
        assert_eq!(keyed(CPU_STAT_V2, "usage_usec"), Some(123_456));
        assert_eq!(keyed(CPU_STAT_V2, "user_usec"), Some(100_000));
        assert_eq!(keyed(CPU_STAT_V2, "system_usec"), Some(23_456));
        assert_eq!(keyed(CPU_STAT_V2, "nr_throttled"), Some(7));
        assert_eq!(keyed(CPU_STAT_V2, "throttled_usec"), Some(9876));
        assert_eq!(keyed(CPU_STAT_V2, "throttled"), None);
        let v1 = "nr_periods 3\nnr_throttled 2\nthrottled_time 5000000\n";
        assert_eq!(keyed(v1, "throttled_time"), Some(5_000_000));
    }

    #[test]
    fn reads_memory_stat() {
        assert_eq!(keyed(MEMORY_STAT_V2, "anon"), Some(4_096_000));
        assert_eq!(keyed(MEMORY_STAT_V2, "file"), Some(8_192_000));
        assert_eq!(keyed(MEMORY_STAT_V2, "inactive_file"), Some(3_000_000));
        assert_eq!(keyed(MEMORY_STAT_V1, "total_rss"), Some(2_000_000));
        assert_eq!(keyed(MEMORY_STAT_V1, "total_cache"), Some(65_536));
        assert_eq!(keyed(MEMORY_STAT_V1, "total_inactive_file"), Some(32_768));
        assert_eq!(keyed(MEMORY_STAT_V1, "rss"), Some(1_667_072));
    }

    #[test]
    fn reads_memory_events_and_oom_control() {
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(keyed(events, "oom_kill"), Some(2));
        assert_eq!(keyed(events, "oom"), Some(3));
        let control = "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n";
        assert_eq!(keyed(control, "oom_kill"), Some(4));
    }

    #[test]
    fn reads_limits() {
        assert_eq!(limit_value("max\n"), 0);
        assert_eq!(limit_value("67108864\n"), 67_108_864);
        assert_eq!(limit_value(""), 0);
        assert_eq!(number(" 42\n"), 42);
    }

    #[test]
    fn sums_io_stat_over_devices() {
        let content = "8:16 rbytes=1000 wbytes=2000 rios=10 wios=20 dbytes=5 dios=1\n\
                       253:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n";
        let totals = io_stat(content);
        assert_eq!(
            totals,
            IoTotals {
                read_bytes: 1001,
                write_bytes: 2002,
                read_ops: 13,
                write_ops: 24,
            }
        );
        assert_eq!(io_stat(""), IoTotals::default());
    }

    #[test]
    fn sums_blkio_over_devices() {
        let content = "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 12288\n8:0 Async 0\n\
                       8:0 Discard 0\n8:0 Total 12288\n8:16 Read 1\n8:16 Write 2\n\
                       8:16 Total 3\nTotal 12291\n";
        assert_eq!(blkio(content), (4097, 8194));
        assert_eq!(blkio("Total 0\n"), (0, 0));
    }
}
