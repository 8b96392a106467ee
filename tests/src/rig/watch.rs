//! Watching a running command's combined output against a deadline, for
//! both rig modes: the command runs inside a wrapper that prints
//! [`START_MARKER`] before it and `HUSK-RIG-EXIT <status>` after it.

use std::io::{BufRead, BufReader, Read};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::console::{classify, is_kernel_log, tail, Line, HEARTBEAT_MARKER, START_MARKER};
use super::{Mode, Options, RigError, RigRun};

/// Shell text that runs the command file and reports its status; both
/// modes run it from the payload folder as [`super::RUNNER_FILE`].
pub fn wrapper() -> String {
    format!(
        "echo {START_MARKER}\n\
         (cd / && while :; do sleep {HEARTBEAT_SECS} >/dev/null 2>&1; echo {HEARTBEAT_MARKER}; done) &\n\
         heartbeat=$!\n\
         sh {} </dev/null 2>&1\n\
         status=$?\n\
         kill $heartbeat 2>/dev/null\n\
         echo \"HUSK-RIG-EXIT $status\"\n",
        super::COMMAND_FILE
    )
}

/// How often the wrapper prints a heartbeat, and how long a silence (L1's
/// kernel log aside) means the test host stopped responding. The heartbeat runs from `/` with its
/// `sleep`s' output discarded, so a leftover `sleep` neither holds the
/// payload mount busy nor keeps the console pipe open.
const HEARTBEAT_SECS: u64 = 10;
const SILENCE_LIMIT: Duration = Duration::from_secs(90);

/// How long the rig may take to shut down after the command reported.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long the rig may take to start the command. L1 normally starts in
/// 3-5 s; one that has not in this long has hung in early boot under TCG.
const STARTUP_DEADLINE: Duration = Duration::from_secs(120);

/// Reads `child`'s stdout (and stderr) until the exit marker, then lets the
/// child end; kills it on the deadline.
pub fn watch(
    mut child: Child,
    mode: Mode,
    command: &str,
    options: &Options,
) -> Result<RigRun, RigError> {
    let started = Instant::now();
    let deadline = started + options.timeout;
    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(spawn_reader(out, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(spawn_reader(err, tx.clone()));
    }
    drop(tx);

    let mut transcript = String::new();
    let mut output = String::new();
    let mut startup = None;
    let mut exit_code = None;
    let mut last_line = started;
    loop {
        let now = Instant::now();
        let limit = match (startup, exit_code) {
            (_, Some(_)) => deadline.min(now + SHUTDOWN_GRACE),
            (None, None) => deadline.min(started + STARTUP_DEADLINE),
            (Some(_), None) => deadline.min(last_line + SILENCE_LIMIT),
        };
        let wait = limit.saturating_duration_since(now);
        match rx.recv_timeout(wait) {
            Ok(raw) => {
                if !is_kernel_log(&raw) {
                    last_line = Instant::now();
                }
                if !is_noise(&raw) {
                    transcript.push_str(&raw);
                    transcript.push('\n');
                }
                match classify(&raw) {
                    Line::Start => startup = Some(started.elapsed()),
                    Line::Heartbeat => {}
                    Line::Exit(code) if startup.is_some() => exit_code = Some(code),
                    Line::Exit(_) => {
                        // The rig itself failed before the command began.
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(RigError::HostFailed {
                            tail: tail(&transcript, 40),
                        });
                    }
                    Line::Output(line) => {
                        if options.echo && !is_noise(line) {
                            eprintln!("{line}");
                        }
                        if startup.is_some() && exit_code.is_none() {
                            output.push_str(line);
                            output.push('\n');
                        }
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                if exit_code.is_some() {
                    break; // reported, but did not shut down in time
                }
                if startup.is_some() && Instant::now() < deadline {
                    return Err(RigError::Unresponsive {
                        silent_for: SILENCE_LIMIT,
                        tail: tail(&transcript, 40),
                    });
                }
                if startup.is_none() && Instant::now() < deadline {
                    return Err(RigError::StartupTimeout {
                        waited: STARTUP_DEADLINE,
                        tail: tail(&transcript, 40),
                    });
                }
                return Err(RigError::Timeout {
                    command: command.to_string(),
                    timeout: options.timeout,
                    tail: tail(&transcript, 40),
                });
            }
        }
    }
    let _ = child.wait();
    for reader in readers {
        let _ = reader.join();
    }
    match exit_code {
        Some(exit_code) => Ok(RigRun {
            mode,
            output,
            exit_code,
            startup: startup.unwrap_or_default(),
            total: started.elapsed(),
        }),
        None => Err(RigError::NoExitStatus {
            tail: tail(&transcript, 40),
        }),
    }
}

fn spawn_reader<R: Read + Send + 'static>(
    source: R,
    tx: mpsc::Sender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(source);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']).to_string();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// QEMU's TCG lists every CPUID feature of the emulated EPYC it cannot
/// provide, twice per start; none of them matter to the rig.
fn is_noise(line: &str) -> bool {
    line.contains("TCG doesn't support requested feature") || line.trim_end() == HEARTBEAT_MARKER
}
