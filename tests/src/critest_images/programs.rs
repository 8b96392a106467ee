//! The two programs no Debian package provides in the form the specs want,
//! compiled here from a few lines of C with the host's `cc` into static
//! binaries (they then need nothing from the image they sit in):
//!
//! - `nnp`: the no-new-privileges spec's setuid-root probe. It prints its
//!   effective uid, `Effective uid: 0` when the setuid bit took effect and
//!   the caller's uid under no_new_privs, exactly as the spec matches the
//!   container log line.
//! - `pause`: the pause images' one program: sleeps until SIGINT or
//!   SIGTERM (then exits 0), reaping children reparented to it; `-v`
//!   prints its version, which also makes each pause tag a different
//!   image.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context};

use crate::debian;

/// The host packages compiling needs (static glibc is in libc6-dev).
pub(super) const TOOLCHAIN: &[&str] = &["gcc", "libc6-dev"];

const NNP_C: &str = r#"/* Reports whether the setuid bit raised this process to root. */
#include <stdio.h>
#include <unistd.h>

int main(void)
{
	printf("Effective uid: %u\n", (unsigned)geteuid());
	return 0;
}
"#;

const PAUSE_C: &str = r#"/* Holds a pod's namespaces: waits for a stop signal, reaping orphans. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig)
{
	(void)sig;
	_exit(0);
}

static void reap(int sig)
{
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

static void handle(int sig, void (*handler)(int))
{
	struct sigaction action;

	memset(&action, 0, sizeof action);
	action.sa_handler = handler;
	action.sa_flags = SA_RESTART;
	sigaction(sig, &action, NULL);
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		printf("husk pause %s\n", PAUSE_VERSION);
		return 0;
	}
	handle(SIGINT, stop);
	handle(SIGTERM, stop);
	handle(SIGCHLD, reap);
	for (;;)
		pause();
}
"#;

/// What the compiled output depends on besides the sources: the compiler's
/// version line and the static C library's package version.
pub(super) fn toolchain_id() -> anyhow::Result<String> {
    debian::ensure_installed(TOOLCHAIN)?;
    let out = Command::new("cc")
        .arg("--version")
        .output()
        .context("cannot run cc")?;
    ensure!(out.status.success(), "cc --version failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let compiler = text.lines().next().unwrap_or_default().trim().to_string();
    let libc = debian::installed_version("libc6-dev").unwrap_or_default();
    Ok(format!("{compiler}; libc6-dev {libc}\n{NNP_C}{PAUSE_C}"))
}

/// Compiles `nnp` into `dir`.
pub(super) fn nnp(dir: &Path) -> anyhow::Result<PathBuf> {
    compile(dir, "nnp", NNP_C, &[])
}

/// Compiles `pause` reporting `version` into `dir`.
pub(super) fn pause(dir: &Path, version: &str) -> anyhow::Result<PathBuf> {
    ensure!(
        version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.'),
        "odd pause version {version:?}"
    );
    let define = format!("-DPAUSE_VERSION=\"{version}\"");
    compile(dir, &format!("pause-{version}"), PAUSE_C, &[&define])
}

/// A static, stripped binary `dir/<name>` from `source`.
fn compile(dir: &Path, name: &str, source: &str, flags: &[&str]) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let c = dir.join(format!("{name}.c"));
    let binary = dir.join(name);
    fs::write(&c, source)?;
    let out = Command::new("cc")
        .args(["-static", "-Os", "-s", "-Wall", "-Werror"])
        .args(flags)
        .arg("-o")
        .arg(&binary)
        .arg(&c)
        .output()
        .context("cannot run cc")?;
    ensure!(
        out.status.success(),
        "cc {name}.c failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(binary)
}
