//! `husk-boot-probe`: boots our guest under one or more VMMs N times on this
//! machine's KVM (inside the rig's L1 host, or natively) and reports how long
//! each boot took to the agent's ready line, the VMM's peak RSS and its
//! overhead beyond the guest's own memory, and whether the agent answered
//! its health call over vsock and powered the VM off.
//!
//! With several VMMs (`--vmm qemu,husk-vmm`) the boots alternate, so both
//! see the same machine noise. It ends with one line per VMM:
//! `boot <vmm> median_ms=<x> p95_ms=<y> rss_mib=<peak> overhead_mib=<o> runs=<n> config=<how>`
//! then, when both qemu and husk-vmm ran, `ratio husk-vmm/qemu median=<r>`,
//! and exits non-zero if any boot failed.
//!
//! `overhead_mib` is the worst run's peak RSS (`wait4`'s `ru_maxrss`) minus
//! the guest RAM the guest had touched, read from `/proc/PID/smaps` after
//! Health and just before Shutdown (see `husk_tests::guest_memory`).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use husk_agent_client::{AgentAddr, AgentClient};
use husk_proto::{AGENT_VSOCK_PORT, SHARED_DIR_GUEST_PATH};
use husk_tests::{guest_memory, stats};

mod containers;

#[derive(Parser)]
struct Args {
    /// The VMM(s) to boot with: `qemu`, `husk-vmm`, or a comma-separated
    /// list booted alternately run by run (`qemu,husk-vmm`).
    #[arg(long, default_value = "qemu")]
    vmm: String,
    /// The husk-vmm binary (default: `$HUSK_VMM`, else `husk-vmm` on PATH).
    #[arg(long, value_name = "PATH")]
    husk_vmm: Option<PathBuf>,
    /// With husk-vmm: share a scratch folder over virtio-fs, then have the
    /// agent read a file the host wrote there and write one the host reads.
    #[arg(long)]
    shared_dir_check: bool,
    /// With husk-vmm: build a busybox image layer in the shared folder from
    /// this static busybox, then run containers in the guest through the
    /// agent's container API (cgroup v2 limits, an OOM kill, an exec).
    #[arg(long, value_name = "BUSYBOX")]
    container_check: Option<PathBuf>,
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

/// The busybox layer's folder name in the shared folder.
const LAYER: &str = "busybox";

/// The line husk-agent prints once it serves its API.
const READY_PREFIX: &str = "husk-agent ready ";
/// vsock context id given to the guest.
const GUEST_CID: u32 = 3;
/// The environment variable naming husk-vmm when `--husk-vmm` is absent.
const ENV_HUSK_VMM: &str = "HUSK_VMM";

/// What one boot measured.
struct Boot {
    ready: Duration,
    peak_rss_kib: u64,
    /// Guest RAM resident in the VMM just before Shutdown.
    guest_kib: u64,
}

impl Boot {
    /// The VMM's own memory: peak RSS beyond the guest's touched RAM.
    fn overhead_kib(&self) -> u64 {
        self.peak_rss_kib.saturating_sub(self.guest_kib)
    }
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
    let vmms = Vmm::parse_list(&args.vmm, husk_vmm_path(args))?;
    if (args.shared_dir_check || args.container_check.is_some())
        && !vmms.iter().any(|v| matches!(v, Vmm::HuskVmm(_)))
    {
        bail!("--shared-dir-check and --container-check need --vmm husk-vmm (QEMU here has no virtio-fs daemon)");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut boots: Vec<Vec<Boot>> = vmms.iter().map(|_| Vec::new()).collect();
    for i in 1..=args.runs {
        for (vmm, done) in vmms.iter().zip(&mut boots) {
            let boot = boot_once(args, vmm, &runtime)
                .with_context(|| format!("{} boot {i} of {}", vmm.name(), args.runs))?;
            println!(
                "run {i} vmm={} ready_ms={} peak_rss_kib={} guest_rss_kib={} overhead_kib={}",
                vmm.name(),
                boot.ready.as_millis(),
                boot.peak_rss_kib,
                boot.guest_kib,
                boot.overhead_kib()
            );
            done.push(boot);
        }
    }
    let mut medians = Vec::new();
    for (vmm, done) in vmms.iter().zip(&boots) {
        let ms: Vec<f64> = done
            .iter()
            .map(|b| b.ready.as_secs_f64() * 1000.0)
            .collect();
        let peak_kib = done.iter().map(|b| b.peak_rss_kib).max().unwrap_or(0);
        let overhead_kib = done.iter().map(Boot::overhead_kib).max().unwrap_or(0);
        let median = stats::median(&ms).unwrap_or(0.0);
        println!(
            "boot {} median_ms={:.0} p95_ms={:.0} rss_mib={:.1} overhead_mib={:.1} runs={} config={}",
            vmm.name(),
            median,
            stats::percentile(&ms, 95.0).unwrap_or(0.0),
            peak_kib as f64 / 1024.0,
            overhead_kib as f64 / 1024.0,
            done.len(),
            vmm.config(args)
        );
        medians.push((vmm.name(), median));
    }
    let median_of = |name| medians.iter().find(|(n, _)| *n == name).map(|(_, m)| *m);
    if let (Some(ours), Some(qemu)) = (median_of("husk-vmm"), median_of("qemu")) {
        if qemu > 0.0 {
            println!("ratio husk-vmm/qemu median={:.2}", ours / qemu);
        }
    }
    Ok(())
}

/// `--husk-vmm`, else `$HUSK_VMM`, else `husk-vmm` looked up on PATH.
fn husk_vmm_path(args: &Args) -> PathBuf {
    args.husk_vmm
        .clone()
        .or_else(|| std::env::var_os(ENV_HUSK_VMM).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("husk-vmm"))
}

/// The VMMs the probe can drive.
enum Vmm {
    Qemu,
    /// Our VMM, at this path.
    HuskVmm(PathBuf),
}

impl Vmm {
    fn parse_list(list: &str, husk_vmm: PathBuf) -> anyhow::Result<Vec<Vmm>> {
        let vmms = list
            .split(',')
            .map(|name| match name.trim() {
                "qemu" => Ok(Vmm::Qemu),
                "husk-vmm" => Ok(Vmm::HuskVmm(husk_vmm.clone())),
                other => bail!("--vmm {other:?}: expected \"qemu\" or \"husk-vmm\""),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut names: Vec<_> = vmms.iter().map(Vmm::name).collect();
        names.sort_unstable();
        names.dedup();
        ensure!(
            names.len() == vmms.len(),
            "--vmm {list:?} names a VMM twice"
        );
        Ok(vmms)
    }

    fn name(&self) -> &'static str {
        match self {
            Vmm::Qemu => "qemu",
            Vmm::HuskVmm(_) => "husk-vmm",
        }
    }

    /// How the VMM is configured, for the benchmark line.
    fn config(&self, args: &Args) -> String {
        match self {
            // QEMU's fastest fair setup for a microVM guest (RIG.md): microvm
            // with its RTC (without it the guest's CMOS probe times out),
            // no ACPI so it declares virtio-mmio devices on the command line,
            // and in-kernel vhost-vsock.
            Vmm::Qemu => "microvm,rtc=on,acpi=off+vhost-vsock".to_owned(),
            Vmm::HuskVmm(_) => {
                let fs = if args.uses_shared_dir() {
                    "+virtio-fs"
                } else {
                    ""
                };
                format!("husk-vmm,vcpus={},mem={}M{fs}", args.vcpus, args.memory_mib)
            }
        }
    }

    /// The command that boots the guest; `scratch` is this boot's folder.
    fn command(&self, args: &Args, scratch: &Scratch) -> Command {
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
            Vmm::HuskVmm(path) => {
                let mut cmd = Command::new(path);
                cmd.arg("--kernel")
                    .arg(&args.kernel)
                    .arg("--initrd")
                    .arg(&args.initrd)
                    .args(["--vcpus", &args.vcpus.to_string()])
                    .args(["--memory-mib", &args.memory_mib.to_string()])
                    .arg("--vsock-uds")
                    .arg(scratch.vsock_uds())
                    // husk-vmm's base command line already has `quiet`.
                    .args(["--cid", &GUEST_CID.to_string()]);
                if args.uses_shared_dir() {
                    cmd.arg("--shared-dir").arg(scratch.shared_dir());
                }
                cmd
            }
        }
    }

    /// How the host reaches the agent in this VMM's guest.
    fn agent_addr(&self, scratch: &Scratch) -> AgentAddr {
        match self {
            Vmm::Qemu => AgentAddr::Vsock {
                cid: GUEST_CID,
                port: AGENT_VSOCK_PORT,
            },
            Vmm::HuskVmm(_) => AgentAddr::HybridVsock {
                uds: scratch.vsock_uds(),
                port: AGENT_VSOCK_PORT,
            },
        }
    }
}

/// One boot's scratch folder (vsock socket, shared folder), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("husk-boot-probe-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("shared"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Scratch(dir))
    }

    fn vsock_uds(&self) -> PathBuf {
        self.0.join("vsock.sock")
    }

    fn shared_dir(&self) -> PathBuf {
        self.0.join("shared")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Args {
    fn uses_shared_dir(&self) -> bool {
        self.shared_dir_check || self.container_check.is_some()
    }
}

fn boot_once(args: &Args, vmm: &Vmm, runtime: &tokio::runtime::Runtime) -> anyhow::Result<Boot> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let scratch = Scratch::new()?;
    if let Some(busybox) = &args.container_check {
        husk_tests::busybox::build_layer_from(busybox, &scratch.shared_dir().join(LAYER))?;
    }
    let mut cmd = vmm.command(args, &scratch);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", vmm.name()))?;
    let pid = child.id();
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

    let addr = vmm.agent_addr(&scratch);
    let checked = runtime.block_on(async {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let agent = AgentClient::connect(addr.clone(), remaining)
            .await
            .with_context(|| format!("connecting to the agent at {addr}"))?;
        let health = agent.health().await.context("agent health call")?;
        if health.agent_version != version {
            bail!(
                "agent reports version {:?} over vsock but {:?} on the console",
                health.agent_version,
                version
            );
        }
        println!(
            "health ok version={} api_version={} guest_uptime_ms={} agent_uptime_ms={}",
            health.agent_version,
            health.api_version,
            health.system_uptime.as_millis(),
            health.agent_uptime.as_millis()
        );
        if args.shared_dir_check && matches!(vmm, Vmm::HuskVmm(_)) {
            check_shared_dir(&agent, &scratch.shared_dir()).await?;
        }
        if args.container_check.is_some() && matches!(vmm, Vmm::HuskVmm(_)) {
            containers::check(&agent).await?;
        }
        // Just before Shutdown: the guest has done all it will do.
        let guest_kib = guest_memory::guest_touched_kib(pid, args.memory_mib)
            .context("accounting the guest's memory")?;
        agent.shutdown().await.context("agent shutdown call")?;
        anyhow::Ok(guest_kib)
    });
    let guest_kib = match checked {
        Ok(kib) => kib,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{e:#}; guest console:\n{}", console.transcript());
        }
    };

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
        guest_kib,
    })
}

/// Host → guest and guest → host through the virtio-fs share: the agent
/// reads a file of random content the host wrote, then writes one the host
/// reads back. Random, so a stale file from anywhere cannot pass.
async fn check_shared_dir(agent: &AgentClient, host_dir: &Path) -> anyhow::Result<()> {
    let inbound = format!("from the host {}\n", random_hex(16)?);
    let host_in = host_dir.join("probe-in.txt");
    std::fs::write(&host_in, &inbound)
        .with_context(|| format!("cannot write {}", host_in.display()))?;
    let guest_in = format!("{SHARED_DIR_GUEST_PATH}/probe-in.txt");
    let read = agent
        .read_file(&guest_in, 4096)
        .await
        .with_context(|| format!("shared-dir check: the agent cannot read {guest_in}"))?;
    ensure!(
        read == inbound.as_bytes(),
        "shared-dir check: the host wrote {inbound:?} to {} but the agent read {:?} from {guest_in}",
        host_in.display(),
        String::from_utf8_lossy(&read)
    );

    let outbound = format!("from the guest {}\n", random_hex(16)?);
    let guest_out = format!("{SHARED_DIR_GUEST_PATH}/probe-out.txt");
    agent
        .write_file(&guest_out, outbound.as_bytes(), 0o644)
        .await
        .with_context(|| format!("shared-dir check: the agent cannot write {guest_out}"))?;
    let host_out = host_dir.join("probe-out.txt");
    let seen = std::fs::read(&host_out).with_context(|| {
        format!(
            "shared-dir check: the agent wrote {guest_out} but the host cannot read {}",
            host_out.display()
        )
    })?;
    ensure!(
        seen == outbound.as_bytes(),
        "shared-dir check: the agent wrote {outbound:?} to {guest_out} but the host read {:?} from {}",
        String::from_utf8_lossy(&seen),
        host_out.display()
    );
    println!(
        "shared-dir ok host->guest={} guest->host={} bytes",
        read.len(),
        seen.len()
    );
    Ok(())
}

/// `bytes` random bytes from the kernel, as hex.
fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("cannot read /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
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
