//! From the OCI `linux.seccomp` to rule groups, one per distinct action.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};
use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
use syscalls::Sysno;

use super::SeccompError;

/// Bounds on the work a spec can ask for; real profiles (Docker's default:
/// ~60 entries, ~450 names, 4 actions) stay far below.
pub(super) const MAX_ENTRIES: usize = 4096;
pub(super) const MAX_NAMES: usize = 16384;
pub(super) const MAX_ARGS: usize = 6;
pub(super) const MAX_GROUPS: usize = 16;
/// The kernel clamps larger errnos to this (MAX_ERRNO) anyway.
const MAX_ERRNO: u32 = 4095;
/// runc's choice when errnoRet is absent, for ERRNO and TRACE alike.
const DEFAULT_ERRNO: u32 = libc::EPERM as u32;

/// Per syscall number: `None` matches any arguments, `Some(rules)` matches
/// when one of the rules does (each rule ANDs its conditions).
pub(super) type Rules = BTreeMap<i64, Option<Vec<SeccompRule>>>;

/// The syscalls that get one action (ERRNO with different errnos are
/// different groups).
pub(super) struct Group {
    pub action: SeccompAction,
    pub rules: Rules,
}

/// A checked spec, ready to be linked into BPF.
pub(super) struct Parsed {
    pub default: SeccompAction,
    pub groups: Vec<Group>,
    pub flags: libc::c_ulong,
    pub warnings: Vec<String>,
}

pub(super) fn parse(seccomp: &LinuxSeccomp) -> Result<Parsed, SeccompError> {
    if seccomp.listener_path().is_some() {
        return Err(SeccompError::Listener);
    }
    let mut warnings = Vec::new();
    check_architectures(
        seccomp.architectures().as_deref().unwrap_or(&[]),
        &mut warnings,
    );
    let flags = filter_flags(seccomp.flags().as_deref().unwrap_or(&[]), &mut warnings);
    let default = action(
        seccomp.default_action(),
        seccomp.default_errno_ret(),
        "linux.seccomp.defaultAction",
        "linux.seccomp.defaultErrnoRet",
    )?;
    let syscalls = seccomp.syscalls().as_deref().unwrap_or(&[]);
    if syscalls.len() > MAX_ENTRIES {
        return Err(too_many(
            "linux.seccomp.syscalls".into(),
            "entries",
            MAX_ENTRIES,
        ));
    }
    let mut groups: Vec<Group> = Vec::new();
    let mut unknown: BTreeSet<&str> = BTreeSet::new();
    let mut names = 0usize;
    for (i, entry) in syscalls.iter().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        names += entry.names().len();
        if names > MAX_NAMES {
            return Err(too_many(
                "linux.seccomp.syscalls".into(),
                "syscall names in all",
                MAX_NAMES,
            ));
        }
        let (action, rule) = parse_entry(entry, &field)?;
        let mut numbers = Vec::new();
        for name in entry.names() {
            match Sysno::from_str(name) {
                Ok(sysno) => numbers.push(i64::from(sysno.id())),
                // runc skips the names libseccomp does not know; profiles
                // list 32-bit-only calls (socketcall, _llseek...) on x86_64.
                Err(_) => {
                    unknown.insert(name);
                }
            }
        }
        if numbers.is_empty() {
            continue;
        }
        let rules = group_rules(&mut groups, action, &field)?;
        for nr in numbers {
            add_rule(rules, nr, rule.as_ref());
        }
    }
    if !unknown.is_empty() {
        warnings.push(format!(
            "linux.seccomp.syscalls: skipped syscall names unknown on x86_64: {}",
            Vec::from_iter(unknown).join(", ")
        ));
    }
    Ok(Parsed {
        default,
        groups,
        flags,
        warnings,
    })
}

/// The rules of the group for `action`, new if it is the first entry
/// with that action.
fn group_rules<'a>(
    groups: &'a mut Vec<Group>,
    action: SeccompAction,
    field: &str,
) -> Result<&'a mut Rules, SeccompError> {
    let at = match groups.iter().position(|g| g.action == action) {
        Some(at) => at,
        None if groups.len() == MAX_GROUPS => {
            let what = "distinct actions (each errnoRet counts apart)";
            return Err(too_many(format!("{field}.action"), what, MAX_GROUPS));
        }
        None => {
            groups.push(Group {
                action,
                rules: Rules::new(),
            });
            groups.len() - 1
        }
    };
    Ok(&mut groups[at].rules)
}

fn too_many(field: String, what: &'static str, max: usize) -> SeccompError {
    SeccompError::TooMany { field, what, max }
}

/// An entry's action and its argument rule (`None`: any arguments).
fn parse_entry(
    entry: &LinuxSyscall,
    field: &str,
) -> Result<(SeccompAction, Option<SeccompRule>), SeccompError> {
    if entry.names().is_empty() {
        return Err(SeccompError::NoNames {
            field: format!("{field}.names"),
        });
    }
    let action = action(
        entry.action(),
        entry.errno_ret(),
        &format!("{field}.action"),
        &format!("{field}.errnoRet"),
    )?;
    let args = entry.args().as_deref().unwrap_or(&[]);
    if args.len() > MAX_ARGS {
        return Err(too_many(format!("{field}.args"), "conditions", MAX_ARGS));
    }
    let conditions = args
        .iter()
        .enumerate()
        .map(|(j, arg)| condition(arg, &format!("{field}.args[{j}]")))
        .collect::<Result<Vec<_>, _>>()?;
    if conditions.is_empty() {
        return Ok((action, None));
    }
    let rule = SeccompRule::new(conditions).map_err(SeccompError::Backend)?;
    Ok((action, Some(rule)))
}

/// Several entries for one syscall are ORed; an entry without args makes
/// the syscall match whatever its arguments.
fn add_rule(rules: &mut Rules, nr: i64, rule: Option<&SeccompRule>) {
    match (rules.get_mut(&nr), rule) {
        (Some(None), _) => {}
        (Some(Some(list)), Some(rule)) => list.push(rule.clone()),
        (_, rule) => {
            rules.insert(nr, rule.map(|r| vec![r.clone()]));
        }
    }
}

fn action(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    action_field: &str,
    errno_field: &str,
) -> Result<SeccompAction, SeccompError> {
    let errno = || match errno_ret {
        Some(value) if value > MAX_ERRNO => Err(SeccompError::Errno {
            field: errno_field.to_owned(),
            value,
            max: MAX_ERRNO,
        }),
        value => Ok(value.unwrap_or(DEFAULT_ERRNO)),
    };
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno()?),
        // libseccomp's SCMP_ACT_KILL is the thread variant.
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno()?),
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::Notify {
                field: action_field.to_owned(),
            })
        }
    })
}

/// One argument comparison, always on the full 64 bits (as libseccomp does
/// on 64-bit architectures).
fn condition(arg: &LinuxSeccompArg, field: &str) -> Result<SeccompCondition, SeccompError> {
    let index = u8::try_from(arg.index())
        .ok()
        .filter(|i| *i <= 5)
        .ok_or_else(|| SeccompError::ArgIndex {
            field: format!("{field}.index"),
            index: arg.index(),
        })?;
    // Go's runtime-spec drops `valueTwo: 0` (omitempty): absent means 0.
    let two = arg.value_two().unwrap_or(0);
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        // OCI: `value` is the mask, `valueTwo` the datum; like libseccomp
        // (and seccompiler) the datum is masked too.
        LinuxSeccompOperator::ScmpCmpMaskedEq => (SeccompCmpOp::MaskedEq(arg.value()), two),
    };
    if two != 0 && arg.op() != LinuxSeccompOperator::ScmpCmpMaskedEq {
        return Err(SeccompError::ValueTwo {
            field: format!("{field}.op"),
            op: arg.op(),
        });
    }
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value).map_err(SeccompError::Backend)
}

/// The filter is for x86_64 only (the guest's only ABI): other entries
/// cannot apply and are dropped with a note; their syscalls get killed.
fn check_architectures(arches: &[Arch], warnings: &mut Vec<String>) {
    let ignored: Vec<String> = arches
        .iter()
        .filter(|a| !matches!(a, Arch::ScmpArchX86_64 | Arch::ScmpArchNative))
        .map(|a| a.to_string())
        .collect();
    if !ignored.is_empty() {
        warnings.push(format!(
            "linux.seccomp.architectures: ignoring {}; only x86_64 syscalls pass the filter, \
             others kill the process",
            ignored.join(", ")
        ));
    }
}

/// The seccomp(2) flags the spec asks for.
fn filter_flags(flags: &[LinuxSeccompFilterFlag], warnings: &mut Vec<String>) -> libc::c_ulong {
    let mut bits = 0;
    for flag in flags {
        match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => bits |= libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => {
                bits |= libc::SECCOMP_FILTER_FLAG_TSYNC
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                bits |= libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            // The kernel takes it only with a notify listener, which we refuse.
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => warnings.push(
                "linux.seccomp.flags: ignoring SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV \
                 (only meaningful with SCMP_ACT_NOTIFY)"
                    .to_owned(),
            ),
        }
    }
    bits
}
