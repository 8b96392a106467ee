//! Links the per-action groups into one classic-BPF program.
//!
//! seccompiler gives a filter one match action, but OCI gives each entry
//! its own. The obvious answer, one filter per action stacked in the
//! kernel, is exact (the kernel runs every filter and keeps the strongest
//! result) but cannot be installed reliably: once the first filter is in,
//! the next seccomp(2) call is itself filtered, so a spec that denies
//! `seccomp` fails half-installed. So the filters are chained in one
//! program instead, with the same result:
//!
//! - each group's filter (match: its action) is built by seccompiler, and
//!   its "no match" returns are rewritten into jumps to the next filter;
//! - groups run strongest action first, in the kernel's order
//!   (KILL_PROCESS, KILL_THREAD, TRAP, ERRNO, TRACE, LOG, ALLOW), so the
//!   first group that matches is the strongest that matches, which is what
//!   stacking would return; equal actions (ERRNO with two errnos) keep spec
//!   order, the earlier entry wins;
//! - a syscall no group matches falls through to the default action.
//!
//! A group whose action is the default cannot simply be dropped: a
//! syscall it matches may also match a weaker group (Docker's profile
//! allows `socket` and denies `socket(AF_VSOCK)` with the default errno),
//! which would then win. Only trailing ones, with no weaker group after
//! them, are dropped. With default ALLOW and nothing else, there is no
//! program at all.

use seccompiler::{sock_filter, BpfProgram, SeccompAction, SeccompFilter, TargetArch};

use super::spec::Group;
use super::SeccompError;

/// BPF_MAXINSNS: the kernel's limit for one program.
pub(super) const MAX_INSNS: usize = 4096;
/// `struct seccomp_data` offsets.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
pub(super) const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// x32 syscalls come in as x86_64 with this bit set in the number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const LD_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

fn insn(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The kernel's precedence of a result: lower is stronger (`ACTION_ONLY`
/// compares the action bits as a signed number).
fn strength(action: &SeccompAction) -> i32 {
    (u32::from(action.clone()) & libc::SECCOMP_RET_ACTION_FULL) as i32
}

pub(super) fn link(
    mut groups: Vec<Group>,
    default: &SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    groups.sort_by_key(|g| strength(&g.action));
    while groups.last().is_some_and(|g| g.action == *default) {
        groups.pop();
    }
    if groups.is_empty() && *default == SeccompAction::Allow {
        return Ok(BpfProgram::new());
    }
    let mut program = guard();
    for group in groups {
        program.extend(group_filter(group)?);
        check_len(program.len())?;
    }
    program.push(insn(RET, default.clone().into(), 0, 0));
    check_len(program.len())?;
    Ok(program)
}

fn check_len(len: usize) -> Result<(), SeccompError> {
    if len > MAX_INSNS {
        return Err(SeccompError::TooLarge {
            len,
            max: MAX_INSNS,
        });
    }
    Ok(())
}

/// Kills foreign-arch syscalls (i386 `int 0x80`) and x32 ones: the group
/// filters compare bare numbers, so an x32 `mkdir` would otherwise slip
/// past a deny list. Number -1 is not x32 (libseccomp spares it too).
fn guard() -> BpfProgram {
    let kill = libc::SECCOMP_RET_KILL_PROCESS;
    vec![
        insn(LD_ABS, ARCH_OFFSET, 0, 0),
        insn(JEQ, AUDIT_ARCH_X86_64, 1, 0),
        insn(RET, kill, 0, 0),
        insn(LD_ABS, NR_OFFSET, 0, 0),
        insn(JGE, X32_SYSCALL_BIT, 0, 2),
        insn(JEQ, u32::MAX, 1, 0),
        insn(RET, kill, 0, 0),
    ]
}

/// One group's filter whose non-matching paths continue with whatever
/// follows it instead of returning.
fn group_filter(group: Group) -> Result<BpfProgram, SeccompError> {
    // A return value seccompiler uses only for "no match": not the group's
    // action, nor KILL_PROCESS (its own arch check).
    let next = match group.action {
        SeccompAction::Allow => SeccompAction::Log,
        _ => SeccompAction::Allow,
    };
    let rules = group
        .rules
        .into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(rules, next.clone(), group.action, TargetArch::x86_64)
        .map_err(SeccompError::Backend)?;
    let mut program = BpfProgram::try_from(filter).map_err(|e| match e {
        seccompiler::BackendError::FilterTooLarge(len) => SeccompError::TooLarge {
            len,
            max: MAX_INSNS,
        },
        e => SeccompError::Backend(e),
    })?;
    let next = u32::from(next);
    let len = program.len();
    for (i, ins) in program.iter_mut().enumerate() {
        if ins.code == RET && ins.k == next {
            // Lands on the first instruction after this filter.
            *ins = insn(JA, (len - 1 - i) as u32, 0, 0);
        }
    }
    Ok(program)
}
