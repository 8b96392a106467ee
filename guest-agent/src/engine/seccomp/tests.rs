//! compile() checked by running its programs in a small BPF interpreter:
//! the tests assert what a syscall gets, not which instructions say so.

use libc::{
    SECCOMP_RET_ALLOW as ALLOW, SECCOMP_RET_ERRNO, SECCOMP_RET_KILL_PROCESS as KILL_PROCESS,
    SECCOMP_RET_KILL_THREAD as KILL_THREAD, SECCOMP_RET_LOG as LOG, SECCOMP_RET_TRACE,
    SECCOMP_RET_TRAP as TRAP,
};
use seccompiler::sock_filter;
use serde_json::json;

use super::link::AUDIT_ARCH_X86_64;
use super::{compile, SeccompError, SeccompProgram};

const AUDIT_ARCH_I386: u32 = 0x4000_0003;

fn errno(e: i32) -> u32 {
    SECCOMP_RET_ERRNO | e as u32
}

fn parse(spec: serde_json::Value) -> Result<SeccompProgram, SeccompError> {
    compile(&serde_json::from_value(spec).expect("a valid OCI seccomp section"))
}

fn program(spec: serde_json::Value) -> SeccompProgram {
    parse(spec).expect("compiles")
}

fn error(spec: serde_json::Value) -> String {
    parse(spec).expect_err("must be refused").to_string()
}

/// Runs the program the way the kernel would on `struct seccomp_data`.
fn run_arch(p: &SeccompProgram, arch: u32, nr: i64, args: [u64; 6]) -> u32 {
    if p.bpf.is_empty() {
        return ALLOW;
    }
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&(nr as u32).to_ne_bytes());
    data[4..8].copy_from_slice(&arch.to_ne_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
    }
    let code = |c: u32| c as u16;
    let (mut acc, mut pc) = (0u32, 0usize);
    loop {
        let sock_filter {
            code: op,
            jt,
            jf,
            k,
        } = p.bpf[pc].clone();
        let jump = |taken: bool| 1 + usize::from(if taken { jt } else { jf });
        pc += match op {
            o if o == code(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) => {
                let at = k as usize;
                assert!(
                    at.is_multiple_of(4) && at < data.len(),
                    "load out of seccomp_data: {k}"
                );
                acc = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
                1
            }
            o if o == code(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) => {
                acc &= k;
                1
            }
            o if o == code(libc::BPF_JMP | libc::BPF_JA) => 1 + k as usize,
            o if o == code(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) => jump(acc == k),
            o if o == code(libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) => jump(acc > k),
            o if o == code(libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) => jump(acc >= k),
            o if o == code(libc::BPF_RET | libc::BPF_K) => return k,
            o => panic!("unexpected BPF opcode {o:#x} at {pc}"),
        };
        assert!(pc < p.bpf.len(), "jump past the end of the program");
    }
}

fn run(p: &SeccompProgram, nr: i64, args: [u64; 6]) -> u32 {
    run_arch(p, AUDIT_ARCH_X86_64, nr, args)
}

fn run0(p: &SeccompProgram, nr: i64) -> u32 {
    run(p, nr, [0; 6])
}

#[test]
fn allow_everything_installs_nothing() {
    assert!(program(json!({"defaultAction": "SCMP_ACT_ALLOW"}))
        .bpf
        .is_empty());
    let p = program(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["getpid", "read"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["write"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
        ]
    }));
    assert!(p.bpf.is_empty());
}

#[test]
fn each_group_gets_its_own_action() {
    let p = program(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["chdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"names": ["ptrace"], "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["reboot"], "action": "SCMP_ACT_KILL"},
            {"names": ["acct"], "action": "SCMP_ACT_KILL_THREAD"},
            {"names": ["swapon"], "action": "SCMP_ACT_TRAP"},
            {"names": ["getcwd"], "action": "SCMP_ACT_LOG"},
            {"names": ["uname"], "action": "SCMP_ACT_TRACE"},
            {"names": ["umask"], "action": "SCMP_ACT_TRACE", "errnoRet": 38},
            {"names": ["getppid"], "action": "SCMP_ACT_ALLOW"},
        ]
    }));
    assert_eq!(run0(&p, libc::SYS_mkdir), errno(libc::EPERM));
    assert_eq!(run0(&p, libc::SYS_rmdir), errno(libc::EACCES));
    assert_eq!(run0(&p, libc::SYS_chdir), errno(libc::EPERM));
    assert_eq!(run0(&p, libc::SYS_ptrace), KILL_PROCESS);
    assert_eq!(run0(&p, libc::SYS_reboot), KILL_THREAD);
    assert_eq!(run0(&p, libc::SYS_acct), KILL_THREAD);
    assert_eq!(run0(&p, libc::SYS_swapon), TRAP);
    assert_eq!(run0(&p, libc::SYS_getcwd), LOG);
    assert_eq!(
        run0(&p, libc::SYS_uname),
        SECCOMP_RET_TRACE | libc::EPERM as u32
    );
    assert_eq!(
        run0(&p, libc::SYS_umask),
        SECCOMP_RET_TRACE | libc::ENOSYS as u32
    );
    assert_eq!(run0(&p, libc::SYS_getppid), ALLOW);
    assert_eq!(run0(&p, libc::SYS_getpid), ALLOW);
}

#[test]
fn default_action_applies_to_unlisted_syscalls() {
    let allow_getpid = json!([{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}]);
    let cases = [
        (
            json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38}),
            errno(38),
        ),
        (
            json!({"defaultAction": "SCMP_ACT_ERRNO"}),
            errno(libc::EPERM),
        ),
        (
            json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 0}),
            errno(0),
        ),
        (
            json!({"defaultAction": "SCMP_ACT_KILL_PROCESS"}),
            KILL_PROCESS,
        ),
        (json!({"defaultAction": "SCMP_ACT_KILL"}), KILL_THREAD),
        (json!({"defaultAction": "SCMP_ACT_TRAP"}), TRAP),
        (json!({"defaultAction": "SCMP_ACT_LOG"}), LOG),
    ];
    for (mut spec, expected) in cases {
        spec["syscalls"] = allow_getpid.clone();
        let p = program(spec.clone());
        assert_eq!(run0(&p, libc::SYS_getpid), ALLOW, "{spec}");
        assert_eq!(run0(&p, libc::SYS_mkdir), expected, "{spec}");
    }
}

#[test]
fn a_default_action_group_still_beats_a_weaker_one() {
    // Docker's shape: socket allowed, socket(AF_VSOCK) denied with the
    // default errno. Dropping the ERRNO group would let AF_VSOCK through.
    let p = program(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "syscalls": [
            {"names": ["socket", "getpid"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
             "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_EQ"}]},
        ]
    }));
    assert_eq!(run(&p, libc::SYS_socket, [40, 1, 0, 0, 0, 0]), errno(1));
    assert_eq!(run(&p, libc::SYS_socket, [1, 1, 0, 0, 0, 0]), ALLOW);
    assert_eq!(run0(&p, libc::SYS_getpid), ALLOW);
    assert_eq!(run0(&p, libc::SYS_mkdir), errno(1));
}

#[test]
fn the_strongest_matching_action_wins() {
    let p = program(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["getpid"], "action": "SCMP_ACT_LOG"},
            {"names": ["mkdir", "getpid"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["mkdir"], "action": "SCMP_ACT_KILL_PROCESS",
             "args": [{"index": 1, "value": 0o777, "op": "SCMP_CMP_EQ"}]},
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
        ]
    }));
    assert_eq!(
        run(&p, libc::SYS_mkdir, [0, 0o777, 0, 0, 0, 0]),
        KILL_PROCESS
    );
    // Two ERRNO groups: the earlier entry's errno.
    assert_eq!(
        run(&p, libc::SYS_mkdir, [0, 0o755, 0, 0, 0, 0]),
        errno(libc::EPERM)
    );
    assert_eq!(run0(&p, libc::SYS_getpid), errno(libc::EPERM));
}

#[test]
fn comparisons_use_all_64_bits() {
    let v: u64 = 0x1_0000_0010;
    let probes = [
        0,
        0x10,
        v - 1,
        v,
        v + 1,
        0x0_ffff_ffff,
        0x2_0000_0000,
        0x2_0000_0010,
        u64::MAX,
    ];
    type Cmp = fn(u64, u64) -> bool;
    let ops: [(&str, Cmp); 6] = [
        ("SCMP_CMP_EQ", |a, b| a == b),
        ("SCMP_CMP_NE", |a, b| a != b),
        ("SCMP_CMP_LT", |a, b| a < b),
        ("SCMP_CMP_LE", |a, b| a <= b),
        ("SCMP_CMP_GT", |a, b| a > b),
        ("SCMP_CMP_GE", |a, b| a >= b),
    ];
    for (op, holds) in ops {
        let p = program(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                          "args": [{"index": 2, "value": v, "op": op}]}]
        }));
        for probe in probes {
            let expected = if holds(probe, v) { errno(1) } else { ALLOW };
            let got = run(&p, libc::SYS_mkdir, [0, 0, probe, 0, 0, 0]);
            assert_eq!(got, expected, "arg2 = {probe:#x} {op} {v:#x}");
        }
    }
}

#[test]
fn masked_eq_masks_argument_and_datum() {
    let mask: u64 = 0xff00_0000_0000_00ff;
    let p = program(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 5, "value": mask, "valueTwo": 0x0100_0000_0000_0001u64,
                       "op": "SCMP_CMP_MASKED_EQ"}]},
            // Go drops `valueTwo: 0`: absent compares with 0.
            {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 0x7e02_0000u64, "op": "SCMP_CMP_MASKED_EQ"}]},
        ]
    }));
    let mkdir = |a5: u64| run(&p, libc::SYS_mkdir, [0, 0, 0, 0, 0, a5]);
    assert_eq!(mkdir(0x0100_0000_0000_0001), errno(1));
    assert_eq!(mkdir(0x01ff_ffff_ffff_ff01), errno(1));
    assert_eq!(mkdir(0x0000_0000_0000_0001), ALLOW);
    assert_eq!(mkdir(0x0100_0000_0000_0003), ALLOW);
    let rmdir = |a0: u64| run(&p, libc::SYS_rmdir, [a0, 0, 0, 0, 0, 0]);
    assert_eq!(rmdir(0x0000_0011), errno(1));
    assert_eq!(rmdir(0x1000_0000), ALLOW);
}

#[test]
fn args_are_anded_and_entries_ored() {
    let p = program(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 1, "value": 1, "op": "SCMP_CMP_EQ"},
                      {"index": 2, "value": 2, "op": "SCMP_CMP_EQ"}]},
            {"names": ["mkdir", "rmdir"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 1, "value": 3, "op": "SCMP_CMP_EQ"}]},
            {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO"},
        ]
    }));
    let mkdir = |a1, a2| run(&p, libc::SYS_mkdir, [0, a1, a2, 0, 0, 0]);
    assert_eq!(mkdir(1, 2), errno(1));
    assert_eq!(mkdir(1, 0), ALLOW);
    assert_eq!(mkdir(0, 2), ALLOW);
    assert_eq!(mkdir(3, 0), errno(1));
    // An entry without args matches whatever the arguments.
    assert_eq!(run(&p, libc::SYS_rmdir, [0, 7, 0, 0, 0, 0]), errno(1));
}

#[test]
fn unknown_names_are_skipped_with_a_warning() {
    let p = program(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["socketcall", "mkdir", "no_such_syscall"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["_llseek"], "action": "SCMP_ACT_KILL_PROCESS"},
        ]
    }));
    assert_eq!(run0(&p, libc::SYS_mkdir), errno(1));
    assert_eq!(run0(&p, libc::SYS_getpid), ALLOW);
    let warning = p.warnings().join("\n");
    for name in ["socketcall", "no_such_syscall", "_llseek"] {
        assert!(warning.contains(name), "{warning}");
    }
    // Nothing known left: nothing to install.
    let p = program(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["socketcall"], "action": "SCMP_ACT_KILL"}]
    }));
    assert!(p.bpf.is_empty());
}

#[test]
fn bad_fields_are_named() {
    let entry = |e: serde_json::Value| {
        json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["getppid"], "action": "SCMP_ACT_ALLOW"},
            e,
        ]})
    };
    let cases = [
        (
            entry(json!({"names": [], "action": "SCMP_ACT_ERRNO"})),
            "linux.seccomp.syscalls[2].names: ",
        ),
        (
            entry(json!({"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                          "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                                   {"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]})),
            "linux.seccomp.syscalls[2].args[1].index: argument index 6",
        ),
        (
            entry(json!({"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                          "args": [{"index": 0, "value": 1, "valueTwo": 2,
                                    "op": "SCMP_CMP_EQ"}]})),
            "linux.seccomp.syscalls[2].args[0].op: SCMP_CMP_EQ",
        ),
        (
            entry(json!({"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"})),
            "linux.seccomp.syscalls[2].action: SCMP_ACT_NOTIFY",
        ),
        (
            entry(json!({"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 4096})),
            "linux.seccomp.syscalls[2].errnoRet: errno 4096",
        ),
        (
            entry(json!({"names": ["mkdir"], "action": "SCMP_ACT_TRACE", "errnoRet": 70000})),
            "linux.seccomp.syscalls[2].errnoRet: errno 70000",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_NOTIFY"}),
            "linux.seccomp.defaultAction: SCMP_ACT_NOTIFY",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 65536}),
            "linux.seccomp.defaultErrnoRet: errno 65536",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}),
            "linux.seccomp.listenerPath: ",
        ),
    ];
    for (spec, expected) in cases {
        let message = error(spec.clone());
        assert!(message.starts_with(expected), "{spec}\n => {message}");
    }
}

#[test]
fn work_is_bounded() {
    let entries = vec![json!({"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}); 4097];
    let message = error(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": entries}));
    assert!(
        message.starts_with("linux.seccomp.syscalls: more than 4096 entries"),
        "{message}"
    );

    let entries: Vec<_> = (1..=17)
        .map(|e| json!({"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": e}))
        .collect();
    let message = error(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": entries}));
    assert!(
        message.starts_with("linux.seccomp.syscalls[16].action: more than 16"),
        "{message}"
    );

    let arg = json!({"index": 0, "value": 1, "op": "SCMP_CMP_NE"});
    let entry = json!({"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "args": vec![arg; 7]});
    let message = error(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [entry]}));
    assert!(
        message.starts_with("linux.seccomp.syscalls[0].args: more than 6"),
        "{message}"
    );

    // 1000 conditional rules on one syscall need more than 4096 insns.
    let entries: Vec<_> = (0..1000)
        .map(|v| {
            json!({"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                        "args": [{"index": 1, "value": v, "op": "SCMP_CMP_EQ"}]})
        })
        .collect();
    let message = error(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": entries}));
    assert!(message.contains("BPF instructions"), "{message}");
}

#[test]
fn only_x86_64_syscalls_pass() {
    let p = program(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}]
    }));
    let warning = p.warnings().join("\n");
    assert!(
        warning.contains("SCMP_ARCH_X86,") && warning.contains("SCMP_ARCH_X32"),
        "{warning}"
    );
    assert!(!warning.contains("SCMP_ARCH_X86_64"), "{warning}");
    assert_eq!(run0(&p, libc::SYS_getpid), ALLOW);
    // i386 getpid (20) and x32 getpid.
    assert_eq!(run_arch(&p, AUDIT_ARCH_I386, 20, [0; 6]), KILL_PROCESS);
    assert_eq!(run0(&p, 0x4000_0000 | libc::SYS_getpid), KILL_PROCESS);
    // -1 is no x32 call: it gets the default.
    assert_eq!(run0(&p, -1), errno(1));

    // A deny list with default ALLOW must not be bypassed through x32.
    let p = program(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": [],
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]
    }));
    assert!(p.warnings().is_empty(), "{:?}", p.warnings());
    assert_eq!(run0(&p, 0x4000_0000 | libc::SYS_mkdir), KILL_PROCESS);
    assert_eq!(run0(&p, -1), ALLOW);
}

#[test]
fn an_allow_list_of_every_syscall_fits() {
    // Docker's default profile allows ~370 names on x86_64: this is more.
    let names: Vec<&str> = syscalls::Sysno::iter().map(|s| s.name()).collect();
    assert!(names.len() > 350, "{}", names.len());
    let p = program(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": names, "action": "SCMP_ACT_ALLOW"},
            {"names": ["socket"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_EQ"}]},
            {"names": ["clone"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 0x7e02_0000u64, "op": "SCMP_CMP_MASKED_EQ"}]},
        ]
    }));
    assert!(p.bpf.len() <= 4096, "{}", p.bpf.len());
    assert_eq!(run0(&p, libc::SYS_getpid), ALLOW);
    assert_eq!(run(&p, libc::SYS_socket, [40, 0, 0, 0, 0, 0]), errno(1));
    assert_eq!(run0(&p, 1000), errno(1));
}

#[test]
fn flags_become_seccomp_bits() {
    let p = program(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                  "SECCOMP_FILTER_FLAG_TSYNC"]
    }));
    let want = libc::SECCOMP_FILTER_FLAG_LOG
        | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
        | libc::SECCOMP_FILTER_FLAG_TSYNC;
    assert_eq!(p.flags, want);
    assert!(p.warnings().is_empty());
    let p = program(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]
    }));
    assert_eq!(p.flags, 0);
    assert!(p.warnings()[0].contains("WAIT_KILLABLE_RECV"));
}
