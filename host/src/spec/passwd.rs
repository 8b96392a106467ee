//! The image's `/etc/passwd` and `/etc/group`, read as text the daemon was
//! handed: user names and groups are resolved the way the image defines
//! them, never the way the host does.

/// One `/etc/passwd` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// One `/etc/group` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// `name:password:uid:gid:gecos:home:shell`; comments, blank and malformed
/// lines are skipped, as libc does.
pub(super) fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    fields(text)
        .filter_map(|f| {
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).copied().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// `name:password:gid:member,member`.
pub(super) fn parse_group(text: &str) -> Vec<GroupEntry> {
    fields(text)
        .filter_map(|f| {
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .copied()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

fn fields(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.first().is_some_and(|n| !n.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lines() {
        let p = parse_passwd(
            "root:x:0:0:root:/root:/bin/sh\n# comment\n\nbad line\nnobody:x:65534:65534::/nonexistent:/sbin/nologin\nbroken:x:abc:1::/:/bin/sh\nshort:x:5:6\n",
        );
        assert_eq!(p.len(), 3);
        assert_eq!(
            p[1],
            PasswdEntry {
                name: "nobody".into(),
                uid: 65534,
                gid: 65534,
                home: "/nonexistent".into()
            }
        );
        assert_eq!(p[2].home, "");
    }

    #[test]
    fn group_lines() {
        let g = parse_group("root:x:0:\nwheel:x:10:root, alice\nstaff:x:50\nbad:x:q:\n");
        assert_eq!(g.len(), 3);
        assert_eq!(g[1].members, ["root", "alice"]);
        assert!(g[0].members.is_empty() && g[2].members.is_empty());
    }
}
