//! husk-vmm's seccomp filter in a real process: after `install`, threads
//! still start (the VMM needs them), but starting a program kills the
//! process with SIGSYS. Each case runs in a child copy of this test binary,
//! since a filter cannot be removed once installed.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

const CASE_VAR: &str = "HUSK_VMM_SECCOMP_CASE";

fn run_case(case: &str) -> std::process::ExitStatus {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CASE_VAR, case)
        .status()
        .unwrap()
}

/// The child side: does nothing unless started by `run_case`.
#[test]
fn child_entry() {
    let Ok(case) = std::env::var(CASE_VAR) else {
        return;
    };
    husk_vmm::seccomp::install().expect("filter installs");
    match case.as_str() {
        "thread" => {
            let answer = std::thread::spawn(|| 6 * 7).join().unwrap();
            std::process::exit(if answer == 42 { 0 } else { 3 });
        }
        "exec" => {
            let _ = Command::new("/bin/true").status();
            // Only reached if the filter let the spawn through.
            std::process::exit(4);
        }
        other => panic!("unknown case {other}"),
    }
}

#[test]
fn threads_still_start_under_the_filter() {
    let status = run_case("thread");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn starting_a_program_kills_the_process_with_sigsys() {
    let status = run_case("exec");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?}");
}
