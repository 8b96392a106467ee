//! Where the agent's own cgroups are: `/proc/self/cgroup` gives the path in
//! each hierarchy, `/proc/self/mountinfo` where each hierarchy is mounted
//! and which subtree the mount shows (a container host may bind-mount only
//! its own part of the tree).

use std::path::{Component, Path, PathBuf};

use super::CgroupError;
use crate::mountinfo;

/// One line of `/proc/self/cgroup`.
#[derive(Debug, PartialEq, Eq)]
pub struct OwnCgroup {
    /// Controllers of a v1 hierarchy ("name=systemd" for named ones);
    /// empty for the v2 hierarchy.
    pub controllers: Vec<String>,
    pub path: String,
}

/// One cgroup or cgroup2 mount.
#[derive(Debug, PartialEq, Eq)]
pub struct CgroupMount {
    /// The cgroup path the mount shows at its mount point.
    pub root: String,
    pub mount_point: PathBuf,
    pub v2: bool,
    /// Super options: for v1 they list the hierarchy's controllers.
    pub options: Vec<String>,
}

pub fn parse_own_cgroups(content: &str) -> Result<Vec<OwnCgroup>, CgroupError> {
    content
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut parts = line.splitn(3, ':');
            let (Some(_id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                let msg = format!("bad /proc/self/cgroup line {line:?}");
                return Err(CgroupError::Detect(msg));
            };
            Ok(OwnCgroup {
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// The cgroup mounts in a mountinfo file; other lines are skipped.
pub fn parse_cgroup_mounts(content: &str) -> Vec<CgroupMount> {
    mountinfo::parse(content.as_bytes())
        .into_iter()
        .filter_map(|m| {
            let v2 = match m.fstype.as_str() {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            Some(CgroupMount {
                root: m.root.to_string_lossy().into_owned(),
                mount_point: m.mount_point,
                v2,
                options: m.super_options.split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// `own` relative to the cgroup path `root` a mount shows, as a relative
/// path of plain components (safe to join under the mount point).
pub fn relative_to(own: &str, root: &str) -> Result<PathBuf, CgroupError> {
    let rest = Path::new(own).strip_prefix(root).map_err(|_| {
        let msg = format!("own cgroup {own:?} is outside the mounted subtree {root:?}");
        CgroupError::Detect(msg)
    })?;
    let mut relative = PathBuf::new();
    for component in rest.components() {
        match component {
            Component::Normal(name) => relative.push(name),
            Component::RootDir | Component::CurDir => {}
            _ => {
                let msg = format!("own cgroup {own:?} is not a plain path");
                return Err(CgroupError::Detect(msg));
            }
        }
    }
    Ok(relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST_CGROUP: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/dd2c\n\
        2:cpu,cpuacct:/\n0::/\n";

    const HOST_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 /kube\\040pods /sys/fs/cgroup/uni\\040fied rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn parses_own_cgroups() {
        let own = parse_own_cgroups(HOST_CGROUP).unwrap();
        assert_eq!(own.len(), 5);
        assert_eq!(own[2].controllers, ["memory"]);
        assert_eq!(own[2].path, "/process_api/dd2c");
        assert_eq!(own[3].controllers, ["cpu", "cpuacct"]);
        assert_eq!(own[4].controllers, Vec::<String>::new());
        assert_eq!(own[4].path, "/");
        assert!(parse_own_cgroups("garbage\n").is_err());
    }

    #[test]
    fn parses_cgroup_mounts_only() {
        let mounts = parse_cgroup_mounts(HOST_MOUNTINFO);
        assert_eq!(mounts.len(), 4);
        assert_eq!(
            mounts[0].mount_point,
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(mounts[0].options, ["rw", "cpu", "cpuacct"]);
        assert!(!mounts[0].v2);
        assert_eq!(mounts[3].root, "/kube pods");
        assert_eq!(mounts[3].mount_point, Path::new("/sys/fs/cgroup/uni fied"));
        assert!(mounts[3].v2);
    }

    #[test]
    fn own_path_is_taken_relative_to_the_mount_root() {
        assert_eq!(relative_to("/", "/").unwrap(), Path::new(""));
        assert_eq!(relative_to("/a/b", "/").unwrap(), Path::new("a/b"));
        assert_eq!(relative_to("/pod/c1", "/pod").unwrap(), Path::new("c1"));
        assert!(relative_to("/other", "/pod").is_err());
        assert!(relative_to("/a/../b", "/").is_err());
    }
}
