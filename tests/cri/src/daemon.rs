//! The husk daemon as a child process with its own config, folders and
//! socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::client::Cri;

/// How long a stopping daemon may take before it is killed.
pub const STOP_WAIT: Duration = Duration::from_secs(30);

/// Where a test daemon keeps everything, and what it boots.
#[derive(Debug, Clone)]
pub struct DaemonSetup {
    pub husk: PathBuf,
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// Root of the socket, state, images and run folders.
    pub root: PathBuf,
    pub insecure_registries: Vec<String>,
    /// Upstream registry hosts served only by a mirror endpoint each
    /// (`skip_upstream`: the rig has no internet).
    pub mirrors: Vec<(String, String)>,
    pub boot_timeout_secs: u64,
}

impl DaemonSetup {
    pub fn socket(&self) -> PathBuf {
        self.root.join("husk.sock")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("husk.log")
    }

    fn config_toml(&self) -> String {
        let insecure: Vec<String> = self
            .insecure_registries
            .iter()
            .map(|r| format!("{r:?}"))
            .collect();
        let mirrors: String = self
            .mirrors
            .iter()
            .map(|(host, endpoint)| {
                format!(
                    "\n[registry.mirrors.{host:?}]\nendpoints = [{endpoint:?}]\nskip_upstream = true\n"
                )
            })
            .collect();
        let base = format!(
            "socket = {socket:?}\nstate_dir = {state:?}\nimage_dir = {images:?}\nrun_dir = {run:?}\n\
             log_level = \"info,husk=debug\"\n\n[vm]\nvmm = {vmm:?}\nkernel = {kernel:?}\n\
             initramfs = {initramfs:?}\nboot_timeout_secs = {timeout}\n\n[registry]\ninsecure = [{insecure}]\n",
            socket = self.socket(),
            state = self.root.join("state"),
            images = self.root.join("images"),
            run = self.run_dir(),
            vmm = self.vmm,
            kernel = self.kernel,
            initramfs = self.initramfs,
            timeout = self.boot_timeout_secs,
            insecure = insecure.join(", "),
        );
        base + &mirrors
    }
}

/// A running daemon.
pub struct Daemon {
    pub setup: DaemonSetup,
    child: Option<Child>,
}

impl Daemon {
    /// Writes the config and starts the daemon; returns once its CRI
    /// socket answers.
    pub async fn start(setup: DaemonSetup) -> anyhow::Result<(Daemon, Cri)> {
        std::fs::create_dir_all(&setup.root)?;
        std::fs::write(setup.config_path(), setup.config_toml())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(setup.log_path())?;
        let child = Command::new(&setup.husk)
            .arg("--config")
            .arg(setup.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", setup.husk.display()))?;
        let mut daemon = Daemon {
            setup,
            child: Some(child),
        };
        let cri = match Cri::connect(&daemon.setup.socket(), Duration::from_secs(60)).await {
            Ok(cri) => cri,
            Err(error) => {
                let exited = daemon
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                anyhow::bail!(
                    "{error} (daemon exit status {exited:?}); its log:\n{}",
                    daemon.log_tail()
                );
            }
        };
        Ok((daemon, cri))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, as a crash would: nothing gets to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to [`STOP_WAIT`]; SIGKILL if it is still
    /// there. True when it exited on its own.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let until = std::time::Instant::now() + STOP_WAIT;
        while std::time::Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Starts the daemon again with the same setup.
    pub async fn restart(&mut self) -> anyhow::Result<Cri> {
        self.kill9();
        let (mut next, cri) = Daemon::start(self.setup.clone()).await?;
        self.child = next.child.take();
        Ok(cri)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.setup.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Resident set of `pid` in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_field(pid, "VmRSS:")
}

pub fn proc_status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Pids of husk-vmm processes whose command line mentions `needle`, from
/// the daemon's own scan of /proc (the one recovery finds strays with).
pub fn vmm_processes_mentioning(needle: &str) -> Vec<u32> {
    husk::vm::procscan::vmm_processes(VMM_NAME)
        .into_iter()
        .filter(|vmm| vmm.mentions(needle))
        .map(|vmm| vmm.pid as u32)
        .collect()
}

/// The VMM's process name.
const VMM_NAME: &str = "husk-vmm";

/// Reads a file on a helper thread; `None` if it takes longer than
/// `limit` (the thread is left behind, blocked).
fn read_with_timeout(path: PathBuf, limit: Duration) -> Option<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read(path).unwrap_or_default());
    });
    rx.recv_timeout(limit).ok()
}

/// `pid (comm) state ...` and the kernel function it waits in, each read on
/// a helper thread too (a process stuck in the kernel can block even these).
fn stat_line(pid: u32) -> String {
    let read = |name: &str| {
        read_with_timeout(
            PathBuf::from(format!("/proc/{pid}/{name}")),
            Duration::from_secs(1),
        )
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_else(|| format!("<{name} unreadable>"))
    };
    let stat = read("stat");
    let short: String = stat.split(' ').take(4).collect::<Vec<_>>().join(" ");
    format!(
        "pid {pid}: {short} wchan={} stack={}",
        read("wchan"),
        read("stack").replace('\n', " | ")
    )
}

/// Every process with its state and wait channel, for hang reports.
pub fn process_table() -> String {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() {
            lines.push(stat_line(pid));
            // Every thread of our own programs: where each one waits.
            if lines.last().is_some_and(|l| l.contains("(husk")) {
                for task in std::fs::read_dir(entry.path().join("task"))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let tid = task.file_name().to_string_lossy().into_owned();
                    if let Ok(tid) = tid.parse::<u32>() {
                        lines.push(format!("  thread {}", stat_line(tid)));
                    }
                }
            }
        }
    }
    lines.join("\n")
}

/// Mount points at or under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.display().to_string();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}
