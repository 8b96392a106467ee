//! Who the container process is: rlimits, user and groups, the five
//! capability sets, no_new_privileges and umask — applied in the order the
//! kernel's rules require (bounding set while still privileged; keep caps
//! across setuid; then the final sets).

use std::collections::HashSet;

use caps::{CapSet, Capability as Cap};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
use oci_spec::runtime::{Capabilities, PosixRlimitType, Process};

/// Why the process identity could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("process.rlimits: {name}: {source}")]
    Rlimit {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("process.capabilities: unknown capability {0}")]
    UnknownCap(String),
    #[error("process.capabilities.{set}: {source}")]
    Caps {
        set: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("process.user: {what}: {source}")]
    User {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("process.noNewPrivileges: {0}")]
    NoNewPrivs(#[source] nix::Error),
}

/// The rlimit resource for an OCI name.
fn rlimit_resource(typ: PosixRlimitType) -> libc::__rlimit_resource_t {
    use PosixRlimitType as T;
    match typ {
        T::RlimitCpu => libc::RLIMIT_CPU,
        T::RlimitFsize => libc::RLIMIT_FSIZE,
        T::RlimitData => libc::RLIMIT_DATA,
        T::RlimitStack => libc::RLIMIT_STACK,
        T::RlimitCore => libc::RLIMIT_CORE,
        T::RlimitRss => libc::RLIMIT_RSS,
        T::RlimitNproc => libc::RLIMIT_NPROC,
        T::RlimitNofile => libc::RLIMIT_NOFILE,
        T::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        T::RlimitAs => libc::RLIMIT_AS,
        T::RlimitLocks => libc::RLIMIT_LOCKS,
        T::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        T::RlimitNice => libc::RLIMIT_NICE,
        T::RlimitRtprio => libc::RLIMIT_RTPRIO,
        T::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

pub fn apply_rlimits(process: &Process) -> Result<(), IdentityError> {
    for limit in process.rlimits().iter().flatten() {
        let value = libc::rlimit {
            rlim_cur: limit.soft(),
            rlim_max: limit.hard(),
        };
        // SAFETY: setrlimit reads a valid struct we own.
        if unsafe { libc::setrlimit(rlimit_resource(limit.typ()), &value) } != 0 {
            return Err(IdentityError::Rlimit {
                name: limit.typ().to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

pub fn set_no_new_privs() -> Result<(), IdentityError> {
    nix::sys::prctl::set_no_new_privs().map_err(IdentityError::NoNewPrivs)
}

fn to_caps(set: &Option<Capabilities>) -> Result<HashSet<Cap>, IdentityError> {
    set.iter()
        .flatten()
        .map(|c| {
            let name = format!("CAP_{c}");
            name.parse().map_err(|_| IdentityError::UnknownCap(name))
        })
        .collect()
}

/// Drops what the bounding set excludes; needs CAP_SETPCAP, so it runs
/// before the user switch.
pub fn apply_bounding(process: &Process) -> Result<(), IdentityError> {
    let Some(spec_caps) = process.capabilities() else {
        return Ok(());
    };
    let keep = to_caps(spec_caps.bounding())?;
    let caps_err = |source| IdentityError::Caps {
        set: "bounding",
        source,
    };
    for cap in caps::runtime::thread_all_supported() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(caps_err)?;
        }
    }
    Ok(())
}

/// Switches to the spec's user and groups, keeping the permitted set across
/// setuid, then installs the spec's effective, permitted, inheritable and
/// ambient sets. Without a capabilities object the process gets none.
pub fn switch_user(process: &Process) -> Result<(), IdentityError> {
    let user = process.user();
    let user_err = |what| move |source| IdentityError::User { what, source };
    nix::sys::prctl::set_keepcaps(true).map_err(user_err("keepcaps"))?;
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|&g| Gid::from_raw(g))
        .collect();
    setgroups(&groups).map_err(user_err("additionalGids"))?;
    let gid = Gid::from_raw(user.gid());
    setresgid(gid, gid, gid).map_err(user_err("gid"))?;
    let uid = Uid::from_raw(user.uid());
    setresuid(uid, uid, uid).map_err(user_err("uid"))?;
    nix::sys::prctl::set_keepcaps(false).map_err(user_err("keepcaps"))?;

    let spec_caps = process.capabilities().clone().unwrap_or_default();
    let inheritable = to_caps(spec_caps.inheritable())?;
    let permitted = to_caps(spec_caps.permitted())?;
    let effective = to_caps(spec_caps.effective())?;
    let ambient = to_caps(spec_caps.ambient())?;
    let set = |set: CapSet, name: &'static str, value: &HashSet<Cap>| {
        caps::set(None, set, value).map_err(|source| IdentityError::Caps { set: name, source })
    };
    // Each capset must keep effective within permitted, and inheritable
    // within the old permitted set: inheritable while permitted is still
    // whole, then effective down, then permitted down to the spec's.
    set(CapSet::Inheritable, "inheritable", &inheritable)?;
    set(CapSet::Effective, "effective", &effective)?;
    set(CapSet::Permitted, "permitted", &permitted)?;
    set(CapSet::Ambient, "ambient", &ambient)?;
    Ok(())
}

pub fn apply_umask(process: &Process) {
    // 0022 when unset, as runc does.
    let mask = process.user().umask().unwrap_or(0o022);
    umask(Mode::from_bits_truncate(mask));
}
