//! Who the container's process runs as: uid, gid, supplementary groups and
//! home folder, from the security context, else the image's USER, else
//! root. Names are resolved in the image's own passwd and group files.

use k8s_cri::v1::{LinuxContainerSecurityContext, SupplementalGroupsPolicy};

use super::passwd::{parse_group, parse_passwd, GroupEntry, PasswdEntry};
use super::{SpecError, SpecInput};

const RUN_AS_USER: &str = "security_context.run_as_user";
const RUN_AS_GROUP: &str = "security_context.run_as_group";
const RUN_AS_USERNAME: &str = "security_context.run_as_username";
const IMAGE_USER: &str = "image.user";

/// The resolved identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// The primary gid first (so the groups are right even where
    /// setgroups ignores the primary one, containerd's CVE-2023-25173 fix),
    /// then the image's groups listing the user, then the pod's
    /// supplemental groups; no repeats.
    pub additional_gids: Vec<u32>,
    /// The user's home in the image, for `HOME` when nothing sets it (as
    /// runc does); `/` for a user the image does not know.
    pub home: String,
}

/// The image's account files.
struct Accounts {
    passwd: Option<Vec<PasswdEntry>>,
    groups: Vec<GroupEntry>,
}

impl Accounts {
    fn by_uid(&self, uid: u32) -> Option<&PasswdEntry> {
        self.passwd.iter().flatten().find(|e| e.uid == uid)
    }

    fn by_name(&self, field: &str, name: &str) -> Result<&PasswdEntry, SpecError> {
        let Some(passwd) = &self.passwd else {
            return Err(SpecError::invalid(
                field,
                format!("user {name:?} cannot be resolved: the image has no /etc/passwd"),
            ));
        };
        passwd.iter().find(|e| e.name == name).ok_or_else(|| {
            SpecError::invalid(
                field,
                format!("user {name:?} is not in the image's /etc/passwd"),
            )
        })
    }

    fn group_by_name(&self, field: &str, name: &str) -> Result<u32, SpecError> {
        self.groups
            .iter()
            .find(|g| g.name == name)
            .map(|g| g.gid)
            .ok_or_else(|| {
                SpecError::invalid(
                    field,
                    format!("group {name:?} is not in the image's /etc/group"),
                )
            })
    }
}

/// See [`Identity`]. Errors name the field that asked for what cannot be.
pub(super) fn resolve(
    input: &SpecInput,
    sc: &LinuxContainerSecurityContext,
) -> Result<Identity, SpecError> {
    let accounts = Accounts {
        passwd: input.image_passwd.map(parse_passwd),
        groups: input.image_group.map(parse_group).unwrap_or_default(),
    };
    let by_username = !sc.run_as_username.is_empty();
    if sc.run_as_user.is_some() && by_username {
        return Err(SpecError::invalid(
            RUN_AS_USERNAME,
            "must not be set together with run_as_user",
        ));
    }
    if sc.run_as_group.is_some() && sc.run_as_user.is_none() && !by_username {
        // The CRI: "otherwise, the runtime MUST error".
        return Err(SpecError::invalid(
            RUN_AS_GROUP,
            "is set without run_as_user or run_as_username",
        ));
    }
    let image_user = input.image.user.as_deref().unwrap_or("");
    let (uid, mut gid) = if let Some(user) = &sc.run_as_user {
        let uid = id(RUN_AS_USER, user.value)?;
        (uid, accounts.by_uid(uid).map_or(0, |e| e.gid))
    } else if by_username {
        let entry = accounts.by_name(RUN_AS_USERNAME, &sc.run_as_username)?;
        (entry.uid, entry.gid)
    } else if !image_user.is_empty() {
        image_identity(&accounts, image_user)?
    } else {
        (0, 0)
    };
    if let Some(group) = &sc.run_as_group {
        gid = id(RUN_AS_GROUP, group.value)?;
    }

    let entry = accounts.by_uid(uid);
    let mut additional_gids = vec![gid];
    let strict = sc.supplemental_groups_policy == SupplementalGroupsPolicy::Strict as i32;
    if let (Some(entry), false) = (entry, strict) {
        // As containerd: groups listing the user by name, except the
        // user's own same-named group.
        additional_gids.extend(
            accounts
                .groups
                .iter()
                .filter(|g| g.name != entry.name && g.members.contains(&entry.name))
                .map(|g| g.gid),
        );
    }
    for (i, g) in sc.supplemental_groups.iter().enumerate() {
        additional_gids.push(id(
            &format!("security_context.supplemental_groups[{i}]"),
            *g,
        )?);
    }
    let mut seen = std::collections::HashSet::new();
    additional_gids.retain(|g| seen.insert(*g));

    let home = entry
        .map(|e| e.home.as_str())
        .filter(|h| !h.is_empty())
        .unwrap_or("/")
        .to_string();
    Ok(Identity {
        uid,
        gid,
        additional_gids,
        home,
    })
}

/// The image's `USER`: `user`, `user:group`, each a number or a name.
fn image_identity(accounts: &Accounts, spec: &str) -> Result<(u32, u32), SpecError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(SpecError::invalid(
            IMAGE_USER,
            format!("{spec:?} names no user"),
        ));
    }
    let (uid, passwd_gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, accounts.by_uid(uid).map_or(0, |e| e.gid)),
        Err(_) => {
            let entry = accounts.by_name(IMAGE_USER, user)?;
            (entry.uid, entry.gid)
        }
    };
    let gid = match group {
        None | Some("") => passwd_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => accounts.group_by_name(IMAGE_USER, g)?,
        },
    };
    Ok((uid, gid))
}

/// A uid or gid from an int64 CRI field; `u32::MAX` is the kernel's
/// "no id" and not allowed either.
fn id(field: &str, value: i64) -> Result<u32, SpecError> {
    u32::try_from(value)
        .ok()
        .filter(|v| *v != u32::MAX)
        .ok_or_else(|| {
            SpecError::invalid(
                field,
                format!("{value} is out of range 0..={}", u32::MAX - 1),
            )
        })
}

#[cfg(test)]
mod tests;
