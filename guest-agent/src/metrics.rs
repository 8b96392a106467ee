//! GuestMetrics: memory, CPU time and load of the whole guest, from /proc.

use husk_proto::agent::v1::GuestMetricsResponse;

/// USER_HZ: /proc/stat counts in these ticks on every Linux we run on.
const TICKS_PER_SEC: u64 = 100;

pub fn read(containers: usize) -> std::io::Result<GuestMetricsResponse> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let stat = std::fs::read_to_string("/proc/stat")?;
    let loadavg = std::fs::read_to_string("/proc/loadavg")?;
    let uptime = std::fs::read_to_string("/proc/uptime")?;
    Ok(parse(&meminfo, &stat, &loadavg, &uptime, containers))
}

fn meminfo_bytes(meminfo: &str, key: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn parse(
    meminfo: &str,
    stat: &str,
    loadavg: &str,
    uptime: &str,
    containers: usize,
) -> GuestMetricsResponse {
    let cpu: Vec<u64> = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let ticks = |i: usize| cpu.get(i).copied().unwrap_or(0) * 1_000_000 / TICKS_PER_SEC;
    let mut load = loadavg.split_whitespace();
    let mut x100 = || {
        load.next()
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| (v * 100.0).round() as u32)
    };
    let (load1, load5, load15) = (x100(), x100(), x100());
    let processes = loadavg
        .split_whitespace()
        .nth(3)
        .and_then(|v| v.split_once('/')?.1.parse().ok())
        .unwrap_or(0);
    let uptime_ms = uptime
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |s| (s * 1000.0) as u64);
    GuestMetricsResponse {
        memory_total_bytes: meminfo_bytes(meminfo, "MemTotal"),
        memory_available_bytes: meminfo_bytes(meminfo, "MemAvailable"),
        memory_free_bytes: meminfo_bytes(meminfo, "MemFree"),
        // user + nice, system + irq + softirq, idle + iowait
        cpu_user_usec: ticks(0) + ticks(1),
        cpu_system_usec: ticks(2) + ticks(5) + ticks(6),
        cpu_idle_usec: ticks(3) + ticks(4),
        load1_x100: load1,
        load5_x100: load5,
        load15_x100: load15,
        processes,
        containers: u32::try_from(containers).unwrap_or(u32::MAX),
        uptime_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let m = parse(
            "MemTotal:  1000 kB\nMemFree:  200 kB\nMemAvailable:  500 kB\n",
            "cpu  10 2 30 400 5 6 7 0 0 0\ncpu0 1 1 1 1 1 1 1\n",
            "0.52 1.00 0.05 2/130 999\n",
            "12.34 20.00\n",
            3,
        );
        assert_eq!(m.memory_total_bytes, 1_024_000);
        assert_eq!(m.memory_available_bytes, 512_000);
        assert_eq!(m.memory_free_bytes, 204_800);
        assert_eq!(m.cpu_user_usec, 120_000);
        assert_eq!(m.cpu_system_usec, 430_000);
        assert_eq!(m.cpu_idle_usec, 4_050_000);
        assert_eq!((m.load1_x100, m.load5_x100, m.load15_x100), (52, 100, 5));
        assert_eq!(m.processes, 130);
        assert_eq!(m.containers, 3);
        assert_eq!(m.uptime_ms, 12_340);
    }

    #[test]
    fn reads_this_machine() {
        let m = read(0).unwrap();
        assert!(m.memory_total_bytes > 0 && m.memory_available_bytes <= m.memory_total_bytes);
        assert!(m.processes > 0 && m.uptime_ms > 0);
    }
}
