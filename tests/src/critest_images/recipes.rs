//! What each image critest pulls holds, and under which names it goes.
//!
//! Almost all start from one busybox layer (Debian's dynamically linked
//! busybox, its glibc, procps' `pgrep` and util-linux's `ipcs`), as the
//! upstream test images start from a busybox image. The web servers are
//! Debian's nginx and Apache, unpacked from their .debs with the libraries
//! they load; the pause and no-new-privileges programs are compiled here
//! ([`super::programs`]).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::{ensure, Context};
use serde_json::{json, Value};

use super::debs::{add_libraries, Debs};
use super::files::{
    nginx_site, DEFAULT_USER, DEFAULT_USER_GROUPS, GROUP, HTTPD_CONF, HTTPD_FOREGROUND,
    HTTPD_MODULES, NGINX_CONF, NSSWITCH, PASSWD,
};
use super::programs;
use super::tree::Tree;
use crate::registry::{Compress, Layer};

/// The packages recipes take programs and files from (the libraries those
/// load come from the table in [`super::debs`]).
pub(super) const PROGRAM_PACKAGES: &[&str] = &[
    "busybox",
    "libc6",
    "procps",
    "util-linux",
    "nginx",
    "nginx-common",
    "apache2-bin",
];

const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const K8S: &[&str] = &["registry.k8s.io"];
/// pause:3.9 is pulled under both names, and must be one image.
const K8S_OLD_AND_NEW: &[&str] = &["registry.k8s.io", "k8s.gcr.io"];
const GCR: &[&str] = &["gcr.io"];

/// Applets the specs run in the busybox-based images; a busybox without
/// one of them fails the build.
const SPEC_APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "sleep", "top", "id", "hostname", "touch", "mkdir", "mount", "grep",
    "dd", "ping", "brctl", "netstat", "pidof", "chmod", "nc", "wget", "timeout", "ps",
];

/// Programs the specs run that Debian's busybox leaves out (Debian builds
/// it without them, as procps and util-linux ship the real ones): where
/// they come from.
const EXTRA_PROGRAMS: &[(&str, &str)] =
    &[("procps", "usr/bin/pgrep"), ("util-linux", "usr/bin/ipcs")];

/// One image: its layers and config, pushed under every host's
/// `repository:tag`.
pub(super) struct Recipe {
    pub(super) hosts: &'static [&'static str],
    /// The upstream repository path, without the registry host.
    pub(super) repository: &'static str,
    pub(super) tags: &'static [&'static str],
    pub(super) layers: Vec<Arc<Layer>>,
    /// The image config's `config` (Env, Cmd, User...).
    pub(super) run: Value,
}

impl Recipe {
    /// Upstream names with tags, e.g. `registry.k8s.io/pause:3.9`.
    pub(super) fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for host in self.hosts {
            for tag in self.tags {
                names.push(format!("{host}/{}:{tag}", self.repository));
            }
        }
        names
    }
}

fn layer(tree: &Tree) -> anyhow::Result<Arc<Layer>> {
    Ok(Arc::new(Layer::new(tree.to_tar()?, Compress::Gzip)?))
}

/// `run` for a busybox-like image: upstream busybox's command.
fn shell() -> Value {
    json!({ "Env": [PATH], "Cmd": ["sh"] })
}

/// Builds every image's layers; `work` holds compiled programs.
pub(super) fn all(debs: &mut Debs, work: &Path) -> anyhow::Result<Vec<Recipe>> {
    let base_tree = busybox_tree(debs)?;
    let base = layer(&base_tree)?;
    let nginx_tree = nginx_tree(debs, &base_tree)?;
    let nginx = layer(&nginx_tree)?;
    let with_base = |more: &[&Arc<Layer>]| {
        let mut layers = vec![base.clone()];
        layers.extend(more.iter().map(|l| Arc::clone(l)));
        layers
    };
    let nginx_run = |port: u16| {
        json!({
            "Env": [PATH],
            "Cmd": ["nginx", "-g", "daemon off;"],
            "ExposedPorts": { format!("{port}/tcp"): {} }
        })
    };
    let mut recipes = vec![
        Recipe {
            hosts: K8S,
            repository: "e2e-test-images/busybox",
            tags: &["1.29-2"],
            layers: with_base(&[]),
            run: shell(),
        },
        Recipe {
            hosts: K8S,
            repository: "e2e-test-images/nginx",
            tags: &["1.14-2"],
            layers: with_base(&[&nginx]),
            run: nginx_run(80),
        },
        Recipe {
            hosts: GCR,
            repository: "k8s-staging-cri-tools/hostnet-nginx-amd64",
            tags: &["latest"],
            layers: with_base(&[&nginx, &layer(&hostnet_tree()?)?]),
            run: nginx_run(12003),
        },
        Recipe {
            hosts: K8S,
            repository: "e2e-test-images/httpd",
            tags: &["2.4.39-4"],
            layers: with_base(&[&layer(&httpd_tree(debs, &base_tree)?)?]),
            run: json!({
                "Env": [format!("PATH=/usr/local/apache2/bin:{}", &PATH[5..])],
                "Cmd": ["httpd-foreground"],
                "ExposedPorts": { "80/tcp": {} },
                "WorkingDir": "/usr/local/apache2"
            }),
        },
        Recipe {
            hosts: K8S,
            repository: "e2e-test-images/nonewprivs",
            tags: &["1.3"],
            layers: with_base(&[&layer(&nnp_tree(work)?)?]),
            run: json!({ "Env": [PATH], "Entrypoint": ["/usr/local/bin/nnp"] }),
        },
        pause(work, K8S_OLD_AND_NEW, "3.9")?,
        pause(work, K8S, "3.10")?,
    ];
    // Each its own image (its own marker file), as upstream's are.
    for (repository, tags) in [
        ("k8s-staging-cri-tools/test-image-latest", &["latest"]),
        ("k8s-staging-cri-tools/test-image-tag", &["test"]),
        ("k8s-staging-cri-tools/test-image-tag", &["all"]),
        ("k8s-staging-cri-tools/test-image-1", &["latest"]),
        ("k8s-staging-cri-tools/test-image-2", &["latest"]),
        ("k8s-staging-cri-tools/test-image-3", &["latest"]),
    ] {
        let marker = layer(&marker_tree(&format!("{repository}:{}", tags[0]))?)?;
        recipes.push(Recipe {
            hosts: GCR,
            repository,
            tags,
            layers: with_base(&[&marker]),
            run: shell(),
        });
    }
    // One image, three tags: one manifest digest.
    let marker = layer(&marker_tree("k8s-staging-cri-tools/test-image-tags")?)?;
    recipes.push(Recipe {
        hosts: GCR,
        repository: "k8s-staging-cri-tools/test-image-tags",
        tags: &["1", "2", "3"],
        layers: with_base(&[&marker]),
        run: shell(),
    });
    for (repository, user) in [
        ("k8s-staging-cri-tools/test-image-user-uid", "1002"),
        ("k8s-staging-cri-tools/test-image-user-username", "www-data"),
        (
            "k8s-staging-cri-tools/test-image-user-uid-group",
            "1003:1004",
        ),
        (
            "k8s-staging-cri-tools/test-image-user-username-group",
            "www-data:1004",
        ),
    ] {
        recipes.push(Recipe {
            hosts: GCR,
            repository,
            tags: &["latest"],
            layers: with_base(&[]),
            run: json!({ "Env": [PATH], "Cmd": ["sh"], "User": user }),
        });
    }
    recipes.push(Recipe {
        hosts: GCR,
        repository: "k8s-staging-cri-tools/test-image-predefined-group",
        tags: &["latest"],
        layers: with_base(&[&layer(&predefined_group_tree()?)?]),
        run: json!({ "Env": [PATH], "Cmd": ["sh"], "User": "1000" }),
    });
    Ok(recipes)
}

/// Upstream's pause: the program alone, run as 65535.
fn pause(
    work: &Path,
    hosts: &'static [&'static str],
    version: &'static str,
) -> anyhow::Result<Recipe> {
    let binary = programs::pause(work, version)?;
    let mut tree = Tree::default();
    tree.host_file("pause", 0o755, &binary)?;
    let tags: &'static [&'static str] = match version {
        "3.9" => &["3.9"],
        "3.10" => &["3.10"],
        other => anyhow::bail!("no pause recipe for {other}"),
    };
    Ok(Recipe {
        hosts,
        repository: "pause",
        tags,
        layers: vec![layer(&tree)?],
        run: json!({
            "Env": [PATH],
            "Entrypoint": ["/pause"],
            "User": "65535:65535",
            "WorkingDir": "/"
        }),
    })
}

/// The base layer: busybox with a hard link per applet in /bin (hard, not
/// symbolic: masking `/bin/ls` with a bind mount must not mask the
/// busybox binary behind it, or the masked-paths spec's shell goes too),
/// `pgrep` and `ipcs`, the libraries they load, and /etc.
fn busybox_tree(debs: &mut Debs) -> anyhow::Result<Tree> {
    let busybox = debs.root("busybox")?;
    let libc = debs.root("libc6")?;
    let mut tree = Tree::default();
    tree.copy_from(&busybox, "bin/busybox")?;
    let applets = applets(&busybox, &libc)?;
    let missing: Vec<_> = SPEC_APPLETS
        .iter()
        .filter(|a| !applets.iter().any(|b| b == *a))
        .collect();
    ensure!(
        missing.is_empty(),
        "Debian's busybox has no {missing:?} applet"
    );
    for applet in applets.iter().filter(|a| *a != "busybox") {
        tree.hardlink(&format!("bin/{applet}"), "bin/busybox")?;
    }
    for (package, path) in EXTRA_PROGRAMS {
        let root = debs.root(package)?;
        tree.copy_from(&root, path)?;
    }
    for dir in [
        "dev",
        "home",
        "proc",
        "sys",
        "run",
        "usr/sbin",
        "usr/local/bin",
        "var/www",
    ] {
        tree.dir(dir, 0o755)?;
    }
    tree.dir("root", 0o700)?
        .dir("tmp", 0o1777)?
        .dir("var/tmp", 0o1777)?;
    tree.symlink("var/run", "/run")?;
    tree.text("etc/passwd", PASSWD)?
        .text("etc/group", GROUP)?
        .text("etc/nsswitch.conf", NSSWITCH)?;
    add_libraries(&mut tree, &[], debs)?;
    Ok(tree)
}

/// The names `busybox --list` prints, run through the unpacked glibc's
/// loader so the host's own C library plays no part.
fn applets(busybox: &Path, libc: &Path) -> anyhow::Result<Vec<String>> {
    let libs = libc.join("lib/x86_64-linux-gnu");
    let out = Command::new(libs.join("ld-linux-x86-64.so.2"))
        .arg("--library-path")
        .arg(&libs)
        .arg(busybox.join("bin/busybox"))
        .arg("--list")
        .output()
        .context("cannot run the unpacked busybox")?;
    ensure!(
        out.status.success(),
        "busybox --list failed: {}",
        out.status
    );
    crate::busybox::applet_list(out.stdout)
}

/// nginx over the base layer: Debian's binary with the libraries it loads
/// that the base lacks, its mime types and welcome page.
fn nginx_tree(debs: &mut Debs, base: &Tree) -> anyhow::Result<Tree> {
    let nginx = debs.root("nginx")?;
    let common = debs.root("nginx-common")?;
    let mut tree = Tree::default();
    tree.copy_from(&nginx, "usr/sbin/nginx")?;
    tree.copy_from(&common, "etc/nginx/mime.types")?;
    tree.copy_from(&common, "usr/share/nginx/html/index.html")?;
    tree.text("etc/nginx/nginx.conf", NGINX_CONF)?
        .text("etc/nginx/conf.d/default.conf", &nginx_site("80"))?
        .symlink("var/log/nginx/access.log", "/dev/stdout")?
        .symlink("var/log/nginx/error.log", "/dev/stderr")?
        .dir("var/lib/nginx", 0o755)?
        .dir("var/cache/nginx", 0o755)?;
    add_libraries(&mut tree, &[base], debs)?;
    Ok(tree)
}

/// The host-network image's site, over the nginx layer: port 12003 (on
/// every address, as upstream's, so 127.0.0.1:12003 answers).
fn hostnet_tree() -> anyhow::Result<Tree> {
    let mut tree = Tree::default();
    tree.text("etc/nginx/conf.d/default.conf", &nginx_site("12003"))?;
    Ok(tree)
}

/// Apache over the base layer. The multi-container spec wants a second
/// web server answering 200 on port 80, `echo` in it, and `httpd` in its
/// log; Debian's Apache does all that, so the image holds a real httpd
/// (2.4 from Debian 12, not 2.4.39) rather than a stand-in.
fn httpd_tree(debs: &mut Debs, base: &Tree) -> anyhow::Result<Tree> {
    let apache = debs.root("apache2-bin")?;
    let mut tree = Tree::default();
    tree.copy_from(&apache, "usr/sbin/apache2")?;
    for module in HTTPD_MODULES {
        tree.copy_from(&apache, &format!("usr/lib/apache2/modules/{module}.so"))?;
    }
    // Debian's binary reads /etc/apache2/apache2.conf unless told: the
    // link makes a plain `httpd` find upstream's config path. /bin/httpd
    // (busybox's own little web server in the base) becomes Apache too,
    // so `httpd` is Apache whatever the PATH.
    tree.symlink("usr/local/apache2/bin/httpd", "/usr/sbin/apache2")?
        .symlink("bin/httpd", "/usr/sbin/apache2")?
        .text("usr/local/apache2/conf/httpd.conf", HTTPD_CONF)?
        .symlink(
            "etc/apache2/apache2.conf",
            "/usr/local/apache2/conf/httpd.conf",
        )?
        .text(
            "usr/local/apache2/htdocs/index.html",
            "<html><body><h1>It works!</h1></body></html>\n",
        )?
        .dir("usr/local/apache2/logs", 0o755)?
        .file(
            "usr/local/bin/httpd-foreground",
            0o755,
            HTTPD_FOREGROUND.as_bytes(),
        )?;
    add_libraries(&mut tree, &[base], debs)?;
    Ok(tree)
}

/// The setuid-root probe, where upstream's image has it.
fn nnp_tree(work: &Path) -> anyhow::Result<Tree> {
    let binary = programs::nnp(work)?;
    let mut tree = Tree::default();
    tree.host_file("usr/local/bin/nnp", 0o4755, &binary)?;
    Ok(tree)
}

/// A file naming the image, so images otherwise alike differ (upstream
/// adds one per test image the same way).
fn marker_tree(name: &str) -> anyhow::Result<Tree> {
    let mut tree = Tree::default();
    tree.text("critest-image", &format!("gcr.io/{name}\n"))?;
    Ok(tree)
}

/// The base's accounts plus the predefined-group user and its home.
fn predefined_group_tree() -> anyhow::Result<Tree> {
    let mut tree = Tree::default();
    tree.text("etc/passwd", &format!("{PASSWD}{DEFAULT_USER}"))?
        .text("etc/group", &format!("{GROUP}{DEFAULT_USER_GROUPS}"))?
        .dir_owned("home/default-user", 0o755, (1000, 1000))?;
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_predefined_group_user_is_in_its_group_by_etc_group_only() {
        let passwd = format!("{PASSWD}{DEFAULT_USER}");
        let user = passwd
            .lines()
            .find(|l| l.starts_with("default-user:"))
            .unwrap();
        let fields: Vec<_> = user.split(':').collect();
        assert_eq!((fields[2], fields[3]), ("1000", "1000"));
        let group = format!("{GROUP}{DEFAULT_USER_GROUPS}");
        assert!(group
            .lines()
            .any(|l| l == "group-defined-in-image:x:50000:default-user"));
        // nobody and www-data exist for RunAsUserName and the username images.
        assert!(PASSWD.contains("\nnobody:x:65534:") && PASSWD.contains("\nwww-data:x:33:33:"));
    }

    #[test]
    fn names_cover_every_host_and_tag() {
        let recipe = Recipe {
            hosts: K8S_OLD_AND_NEW,
            repository: "pause",
            tags: &["3.9"],
            layers: vec![],
            run: shell(),
        };
        assert_eq!(
            recipe.names(),
            ["registry.k8s.io/pause:3.9", "k8s.gcr.io/pause:3.9"]
        );
        assert!(nginx_site("12003").contains("listen 12003;"));
    }
}
