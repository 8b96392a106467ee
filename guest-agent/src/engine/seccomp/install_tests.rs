//! Filters installed for real, each in a fresh copy of the test binary: a
//! filter in the multi-threaded harness would poison every other test.
//! The parent re-runs this binary on [`child_entry`] with the case in the
//! environment; the child installs the filter, probes syscalls, prints one
//! line per probe and exits; the parent checks lines and exit status.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};

use serde_json::json;

use super::compile;

const CASE_ENV: &str = "HUSK_SECCOMP_TEST_CASE";
const DIR_ENV: &str = "HUSK_SECCOMP_TEST_DIR";
const PROBE: &str = "seccomp-probe";

/// What the child needs after the filter is in, for allow-list cases.
const CHILD_NEEDS: [&str; 4] = ["write", "exit_group", "exit", "getpid"];

/// A syscall the child makes after installing, and what it printed.
#[derive(Clone, Copy, Debug)]
enum Probe {
    Getpid,
    Getppid(u64),
    Mkdir,
    Rmdir,
    Socket(i32),
    NoNewPrivs,
    X32Getpid,
    I386Getpid,
    /// seccomp(SECCOMP_GET_ACTION_AVAIL, 0, &ALLOW): harmless.
    Seccomp,
}

fn case(name: &str) -> (serde_json::Value, Vec<Probe>) {
    use Probe::*;
    let allow = |names: &[&str]| {
        let mut all: Vec<&str> = CHILD_NEEDS.to_vec();
        all.extend_from_slice(names);
        json!({"names": all, "action": "SCMP_ACT_ALLOW"})
    };
    match name {
        "deny_mkdir" => (
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}),
            vec![NoNewPrivs, Getpid, Mkdir, Rmdir, NoNewPrivs],
        ),
        "allow_list" => (
            json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": libc::ENOSYS,
                   "syscalls": [allow(&[])]}),
            vec![Getpid, Getppid(0), Mkdir],
        ),
        "arguments" => (
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EACCES,
                 "args": [{"index": 0, "value": libc::AF_INET, "op": "SCMP_CMP_EQ"}]},
                {"names": ["getppid"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 0x1_0000_0005u64, "op": "SCMP_CMP_EQ"}]}]}),
            vec![
                Socket(libc::AF_INET),
                Socket(libc::AF_UNIX),
                Getppid(5),
                Getppid(0x1_0000_0005),
            ],
        ),
        "default_group_over_allow" => (
            json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                allow(&["socket", "close"]),
                {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                 "args": [{"index": 0, "value": libc::AF_INET, "op": "SCMP_CMP_EQ"}]}]}),
            vec![Socket(libc::AF_INET), Socket(libc::AF_UNIX), Mkdir],
        ),
        // Denying seccomp(2) itself must not break installing the rest.
        "two_errnos" => (
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["seccomp"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EIO},
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EACCES},
                {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EROFS}]}),
            vec![Mkdir, Rmdir, Seccomp],
        ),
        "kill_process" => (
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"}]}),
            vec![Getpid, Getppid(0), Getpid],
        ),
        "flags" => (
            json!({"defaultAction": "SCMP_ACT_ALLOW",
                   "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                             "SECCOMP_FILTER_FLAG_TSYNC"],
                   "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}),
            vec![Mkdir],
        ),
        "x32" | "i386" => (
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}),
            vec![
                Getpid,
                if name == "x32" { X32Getpid } else { I386Getpid },
                Getpid,
            ],
        ),
        _ => panic!("unknown case {name}"),
    }
}

/// Writes a line with write(2) only: after install, nothing else is sure
/// to be allowed.
fn say(line: &[u8]) {
    // SAFETY: writes from a live buffer to stdout.
    unsafe { libc::write(1, line.as_ptr().cast(), line.len()) };
}

/// Raw result: the return value, or -errno.
fn probe(p: Probe, dir: &CString) -> i64 {
    // SAFETY: raw syscalls with plain integers or pointers to live
    // NUL-terminated strings; extra arguments are ignored by the kernel.
    let rc = unsafe {
        match p {
            Probe::Getpid => libc::syscall(libc::SYS_getpid),
            Probe::Getppid(a) => libc::syscall(libc::SYS_getppid, a),
            Probe::Mkdir => libc::syscall(libc::SYS_mkdir, dir.as_ptr(), 0o700),
            Probe::Rmdir => libc::syscall(libc::SYS_rmdir, c"/nonexistent-husk-dir".as_ptr()),
            Probe::Socket(domain) => {
                let fd = libc::syscall(libc::SYS_socket, domain, libc::SOCK_STREAM, 0);
                if fd >= 0 {
                    libc::syscall(libc::SYS_close, fd);
                }
                fd.min(0)
            }
            Probe::NoNewPrivs => {
                libc::syscall(libc::SYS_prctl, libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
            }
            Probe::Seccomp => {
                let allow = libc::SECCOMP_RET_ALLOW;
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_GET_ACTION_AVAIL,
                    0,
                    &allow as *const u32,
                )
            }
            Probe::X32Getpid => libc::syscall(0x4000_0000 | libc::SYS_getpid),
            Probe::I386Getpid => {
                let ret: i64;
                // i386 getpid (20) through the compat entry point.
                std::arch::asm!("int 0x80", inlateout("rax") 20i64 => ret,
                    out("r8") _, out("r9") _, out("r10") _, out("r11") _);
                return ret;
            }
        }
    };
    if rc < 0 {
        -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        rc
    }
}

#[test]
#[ignore = "child half of the install tests: run by them in a fresh process"]
fn child_entry() {
    let Ok(name) = std::env::var(CASE_ENV) else {
        return;
    };
    let dir = CString::new(std::env::var(DIR_ENV).unwrap() + "/made").unwrap();
    let (spec, probes) = case(&name);
    let program = compile(&serde_json::from_value(spec).unwrap()).unwrap();
    // SAFETY: plain prctl; SIGSYS deaths should leave no core files.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let nnp = probe(Probe::NoNewPrivs, &dir);
    say(format!("{PROBE} before-install nnp={nnp}\n").as_bytes());
    if let Err(e) = program.install() {
        say(format!("{PROBE} install-error {e}\n").as_bytes());
        // SAFETY: ends the process at once.
        unsafe { libc::_exit(2) };
    }
    // No allocation from here on: brk/mmap may be denied.
    for (i, p) in probes.iter().enumerate() {
        let mut line = [0u8; 96];
        let mut cursor = std::io::Cursor::new(&mut line[..]);
        let rc = probe(*p, &dir);
        let _ = writeln!(cursor, "{PROBE} {i} {p:?} {rc}");
        let len = cursor.position() as usize;
        say(&line[..len]);
    }
    say(b"seccomp-probe done\n");
    // SAFETY: ends the process without running the harness's cleanup.
    unsafe { libc::_exit(0) };
}

struct ChildRun {
    status: ExitStatus,
    /// Probe results by position, e.g. `"Mkdir -1"`.
    lines: Vec<String>,
    output: String,
}

impl ChildRun {
    fn assert_done(&self) {
        assert!(self.status.success(), "{}", self.output);
        assert!(
            self.lines.last().is_some_and(|l| l == "done"),
            "{}",
            self.output
        );
    }

    fn results(&self) -> BTreeMap<usize, String> {
        self.lines
            .iter()
            .filter_map(|l| {
                let (i, rest) = l.split_once(' ')?;
                Some((i.parse().ok()?, rest.to_owned()))
            })
            .collect()
    }
}

fn run_child(name: &str) -> ChildRun {
    let dir = std::env::temp_dir().join(format!("husk-seccomp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let test = format!(
        "{}::child_entry",
        module_path!().split_once("::").unwrap().1
    );
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            &test,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CASE_ENV, name)
        .env(DIR_ENV, &dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let output = format!(
        "case {name}: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = stdout
        .lines()
        .filter_map(|l| {
            l.find(PROBE)
                .map(|at| l[at + PROBE.len()..].trim().to_owned())
        })
        .collect();
    assert!(
        lines.first().is_some_and(|l| l == "before-install nnp=0"),
        "the child must start without no_new_privs: {output}"
    );
    ChildRun {
        status: out.status,
        lines: lines[1..].to_vec(),
        output,
    }
}

fn errno(e: i32) -> String {
    (-e).to_string()
}

fn check(run: &ChildRun, expected: &[(&str, String)]) {
    let results = run.results();
    for (i, (what, value)) in expected.iter().enumerate() {
        assert_eq!(
            results.get(&i).map(String::as_str),
            Some(format!("{what} {value}").as_str()),
            "probe {i}: {}",
            run.output
        );
    }
}

#[test]
fn errno_rule_denies_only_its_syscall_and_keeps_nnp_off() {
    let run = run_child("deny_mkdir");
    run.assert_done();
    let pid = run.results()[&1]
        .split(' ')
        .nth(1)
        .unwrap()
        .parse::<i64>()
        .unwrap();
    assert!(pid > 0, "{}", run.output);
    check(
        &run,
        &[
            ("NoNewPrivs", "0".into()),
            ("Getpid", pid.to_string()),
            ("Mkdir", errno(libc::EPERM)),
            ("Rmdir", errno(libc::ENOENT)),
            // Installed as root without no_new_privs, and still without.
            ("NoNewPrivs", "0".into()),
        ],
    );
}

#[test]
fn allow_list_returns_the_default_errno_for_the_rest() {
    let run = run_child("allow_list");
    run.assert_done();
    let results = run.results();
    assert!(!results[&0].contains('-'), "getpid allowed: {}", run.output);
    check(
        &run,
        &[
            ("Getpid", results[&0].split(' ').nth(1).unwrap().into()),
            ("Getppid(0)", errno(libc::ENOSYS)),
            ("Mkdir", errno(libc::ENOSYS)),
        ],
    );
}

#[test]
fn argument_conditions_select_calls() {
    let run = run_child("arguments");
    run.assert_done();
    let ppid = std::process::id().to_string();
    check(
        &run,
        &[
            ("Socket(2)", errno(libc::EACCES)),
            ("Socket(1)", "0".into()),
            ("Getppid(5)", ppid),
            // Same low 32 bits as 5: the comparison must use all 64.
            ("Getppid(4294967301)", errno(libc::EPERM)),
        ],
    );
}

#[test]
fn default_errno_group_overrides_an_allow() {
    let run = run_child("default_group_over_allow");
    run.assert_done();
    check(
        &run,
        &[
            ("Socket(2)", errno(libc::EPERM)),
            ("Socket(1)", "0".into()),
            ("Mkdir", errno(libc::EPERM)),
        ],
    );
}

#[test]
fn two_groups_keep_their_errnos() {
    let run = run_child("two_errnos");
    run.assert_done();
    check(
        &run,
        &[
            ("Mkdir", errno(libc::EACCES)),
            ("Rmdir", errno(libc::EROFS)),
            ("Seccomp", errno(libc::EIO)),
        ],
    );
}

#[test]
fn kill_process_kills_with_sigsys() {
    let run = run_child("kill_process");
    assert_eq!(run.status.signal(), Some(libc::SIGSYS), "{}", run.output);
    assert_eq!(run.lines.len(), 1, "died at getppid: {}", run.output);
    assert!(run.lines[0].starts_with("0 Getpid "), "{}", run.output);
}

#[test]
fn filter_flags_are_accepted_by_the_kernel() {
    let run = run_child("flags");
    run.assert_done();
    check(&run, &[("Mkdir", errno(libc::EPERM))]);
}

#[test]
fn x32_and_i386_syscalls_are_killed() {
    for name in ["x32", "i386"] {
        let run = run_child(name);
        assert_eq!(run.status.signal(), Some(libc::SIGSYS), "{}", run.output);
        assert_eq!(
            run.lines.len(),
            1,
            "died at the foreign call: {}",
            run.output
        );
    }
}
