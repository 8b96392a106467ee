//! The one scan of /proc for VMM processes (recovery finds strays with
//! it; the tests check that nothing is left behind with it).
//!
//! Only processes with the VMM's name get their command line read: that
//! read takes the process's memory-map lock, which a process stuck in the
//! kernel may hold for a long time.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStringExt;

use super::pidfd::start_time;

/// A process whose name is the VMM's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmProcess {
    pub pid: i32,
    pub start_time: Option<u64>,
    /// Its command line, the program first.
    pub args: Vec<OsString>,
}

impl VmmProcess {
    /// The value after `--name` on its command line.
    pub fn flag(&self, name: &str) -> Option<&OsStr> {
        self.args
            .windows(2)
            .find(|w| w[0] == name)
            .map(|w| w[1].as_os_str())
    }

    /// True when some argument contains `needle`.
    pub fn mentions(&self, needle: &str) -> bool {
        self.args
            .iter()
            .any(|a| a.to_string_lossy().contains(needle))
    }
}

/// Every live process named `name` (the kernel keeps 15 bytes of it).
pub fn vmm_processes(name: &str) -> Vec<VmmProcess> {
    let name: String = name.chars().take(15).collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        // A zombie has an empty command line: it runs no more.
        if cmdline.is_empty() {
            continue;
        }
        let args = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect();
        found.push(VmmProcess {
            pid,
            start_time: start_time(pid),
            args,
        });
    }
    found.sort_by_key(|p| p.pid);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_processes_by_name_with_their_flags() {
        // A copy of sh under a distinctive name stands in for husk-vmm
        // (the flags after -c's script are its $0 and $1).
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-vmm-scan");
        std::fs::copy("/bin/sh", &fake).unwrap();
        let mut child = std::process::Command::new(&fake)
            .args([
                "-c",
                "sleep 30; true",
                "--vsock-uds",
                "/run/x/pods/abc/vsock.sock",
            ])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let mut seen = Vec::new();
        for _ in 0..50 {
            seen = vmm_processes("fake-vmm-scan");
            if !seen.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let started = start_time(pid);
        child.kill().unwrap();
        child.wait().unwrap();
        let vmm = seen.iter().find(|p| p.pid == pid).expect("found by name");
        assert_eq!(
            vmm.flag("--vsock-uds"),
            Some(OsStr::new("/run/x/pods/abc/vsock.sock"))
        );
        assert!(vmm.mentions("pods/abc"));
        assert!(!vmm.mentions("pods/zzz"));
        assert!(started.is_some());
        assert_eq!(vmm.start_time, started);
        assert!(vmm_processes("fake-vmm-scan").iter().all(|p| p.pid != pid));
    }
}
