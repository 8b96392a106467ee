//! `husk-boot-probe`: boots our guest under a VMM N times on this machine's
//! KVM (inside the rig's L1 host, or natively) and reports how long each
//! boot took to the agent's ready line, the VMM's peak RSS, and whether the
//! agent answered its health call over vsock and powered the VM off.
//!
//! It ends with one line per VMM:
//! `boot <vmm> median_ms=<x> p95_ms=<y> rss_mib=<peak> runs=<n> config=<how>`
//! and exits non-zero if any boot failed.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use husk::agent_client::AgentClient;
use husk_tests::stats;

#[derive(Parser)]
struct Args {
    /// The VMM to boot with (only `qemu` for now).
    #[arg(long, default_value = "qemu")]
    vmm: String,
    /// Guest kernel (ELF vmlinux).
    #[arg(long)]
    kernel: PathBuf,
    /// Guest initramfs (husk-agent as /init).
    #[arg(long)]
    initrd: PathBuf,
    /// Number of boots.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    #[arg(long, default_value_t = 256)]
    memory_mib: u32,
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Deadline for one boot, from VMM start to its exit.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Echo the guest's console.
    #[arg(long)]
    verbose: bool,
}

/// The line husk-agent prints once it serves its API.
const READY_PREFIX: &str = "husk-agent ready ";
/// vsock context id given to the guest.
const GUEST_CID: u32 = 3;

/// What one boot measured.
struct Boot {
    ready: Duration,
    peak_rss_kib: u64,
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("husk-boot-probe: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    for path in [&args.kernel, &args.initrd] {
        if !path.is_file() {
            bail!("{} does not exist", path.display());
        }
    }
    let vmm = Vmm::parse(&args.vmm)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut boots = Vec::new();
    for i in 1..=args.runs {
        let boot = boot_once(args, &vmm, &runtime)
            .with_context(|| format!("boot {i} of {}", args.runs))?;
        println!(
            "run {i} vmm={} ready_ms={} peak_rss_kib={}",
            vmm.name(),
            boot.ready.as_millis(),
            boot.peak_rss_kib
        );
        boots.push(boot);
    }
    let ms: Vec<f64> = boots
        .iter()
        .map(|b| b.ready.as_secs_f64() * 1000.0)
        .collect();
    let peak_kib = boots.iter().map(|b| b.peak_rss_kib).max().unwrap_or(0);
    println!(
        "boot {} median_ms={:.0} p95_ms={:.0} rss_mib={:.1} runs={} config={}",
        vmm.name(),
        stats::median(&ms).unwrap_or(0.0),
        stats::percentile(&ms, 95.0).unwrap_or(0.0),
        peak_kib as f64 / 1024.0,
        boots.len(),
        vmm.config()
    );
    Ok(())
}

/// The VMMs the probe can drive.
enum Vmm {
    Qemu,
}

impl Vmm {
    fn parse(name: &str) -> anyhow::Result<Vmm> {
        match name {
            "qemu" => Ok(Vmm::Qemu),
            other => bail!("--vmm {other:?}: expected \"qemu\""),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Vmm::Qemu => "qemu",
        }
    }

    /// How the VMM is configured, for the benchmark line.
    fn config(&self) -> &'static str {
        match self {
            // QEMU's fastest fair setup for a microVM guest (RIG.md): microvm
            // with its RTC (without it the guest's CMOS probe times out),
            // no ACPI so it declares virtio-mmio devices on the command line,
            // and in-kernel vhost-vsock.
            Vmm::Qemu => "microvm,rtc=on,acpi=off+vhost-vsock",
        }
    }

    fn command(&self, args: &Args) -> Command {
        match self {
            Vmm::Qemu => {
                let mut cmd = Command::new("qemu-system-x86_64");
                cmd.args([
                    "-accel",
                    "kvm",
                    "-cpu",
                    "host",
                    "-M",
                    "microvm,rtc=on,acpi=off",
                ])
                .args(["-m", &args.memory_mib.to_string()])
                .args(["-smp", &args.vcpus.to_string()])
                .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
                .args(["-serial", "stdio"])
                .arg("-kernel")
                .arg(&args.kernel)
                .arg("-initrd")
                .arg(&args.initrd)
                // QEMU's microvm has no i8042 unless asked for, so the
                // guest leaves by triple fault, which -no-reboot ends.
                .args(["-append", "console=ttyS0 reboot=t panic=-1 quiet"])
                .args([
                    "-device",
                    &format!("vhost-vsock-device,guest-cid={GUEST_CID}"),
                ]);
                cmd
            }
        }
    }
}

fn boot_once(args: &Args, vmm: &Vmm, runtime: &tokio::runtime::Runtime) -> anyhow::Result<Boot> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut cmd = vmm.command(args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", vmm.name()))?;
    let console = Console::attach(&mut child, args.verbose);

    let ready = match console.wait_for(READY_PREFIX, deadline) {
        Ok(line) => {
            let elapsed = started.elapsed();
            (elapsed, line)
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{e}; guest console:\n{}", console.transcript());
        }
    };
    let (ready_after, ready_line) = ready;
    let version = ready_line[READY_PREFIX.len()..].trim().to_string();

    let checked = runtime.block_on(async {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let agent = AgentClient::connect_vsock(GUEST_CID, husk_proto::AGENT_VSOCK_PORT, remaining)
            .await
            .context("connecting to the agent over vsock")?;
        let health = agent.health().await.context("agent health call")?;
        if health.agent_version != version {
            bail!(
                "agent reports version {:?} over vsock but {:?} on the console",
                health.agent_version,
                version
            );
        }
        println!(
            "health ok version={} api_version={} guest_uptime_ms={}",
            health.agent_version,
            health.api_version,
            health.system_uptime.as_millis()
        );
        agent.shutdown().await.context("agent shutdown call")?;
        anyhow::Ok(())
    });
    if let Err(e) = checked {
        let _ = child.kill();
        let _ = child.wait();
        bail!("{e:#}; guest console:\n{}", console.transcript());
    }

    let (status, peak_rss_kib) = wait_with_rusage(&mut child, deadline)?;
    if !status.success() {
        bail!(
            "{} exited with {status} after the guest was asked to power off; console:\n{}",
            vmm.name(),
            console.transcript()
        );
    }
    Ok(Boot {
        ready: ready_after,
        peak_rss_kib,
    })
}

/// Waits for `child` until `deadline` (then kills it) and returns its status
/// and peak RSS in KiB (from `wait4`'s rusage, which covers its whole life).
fn wait_with_rusage(child: &mut Child, deadline: Instant) -> anyhow::Result<(ExitStatus, u64)> {
    let pid = child.id() as libc::pid_t;
    loop {
        let mut status = 0;
        // SAFETY: plain FFI call with valid out-pointers; `rusage` is POD.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if rc == pid {
            return Ok((ExitStatus::from_raw(status), usage.ru_maxrss as u64));
        }
        if rc < 0 {
            bail!(
                "wait4 on the VMM failed: {}",
                std::io::Error::last_os_error()
            );
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the VMM did not exit after the guest was asked to power off");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The guest's console (the VMM's stdout and stderr), read on threads.
struct Console {
    lines: mpsc::Receiver<String>,
    seen: std::cell::RefCell<Vec<String>>,
}

impl Console {
    fn attach(child: &mut Child, verbose: bool) -> Console {
        let (tx, rx) = mpsc::channel();
        let stdout = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        let stderr = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        for source in [stdout, stderr].into_iter().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(source).lines() {
                    let Ok(line) = line else { break };
                    let line = line.trim_end_matches('\r').to_string();
                    if verbose {
                        eprintln!("guest| {line}");
                    }
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Console {
            lines: rx,
            seen: Default::default(),
        }
    }

    /// Waits for a line starting with `prefix` and returns it.
    fn wait_for(&self, prefix: &str, deadline: Instant) -> anyhow::Result<String> {
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(wait) {
                Ok(line) => {
                    self.seen.borrow_mut().push(line.clone());
                    if line.starts_with(prefix) {
                        return Ok(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("no {prefix:?} line before the deadline")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the VMM closed its console before printing {prefix:?}")
                }
            }
        }
    }

    /// Everything read so far (the last 60 lines).
    fn transcript(&self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.borrow_mut().push(line);
        }
        let seen = self.seen.borrow();
        seen[seen.len().saturating_sub(60)..].join("\n")
    }
}
