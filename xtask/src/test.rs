//! `cargo xtask test`: everything CI checks, in order of cost: formatting,
//! lints, then every unit, integration and rig test of the workspace with
//! the guest image and in-rig programs built and passed to them, then the
//! CRI conformance suite (`cargo xtask critest`).

use std::process::Command;

use crate::{cmd, critest, rig};

pub fn run() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("husk: cargo fmt --check");
    cmd::run(Command::new(&cargo).args(["fmt", "--all", "--check"]))?;
    eprintln!("husk: cargo clippy");
    cmd::run(Command::new(&cargo).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let artifacts = rig::build_artifacts()?;
    eprintln!("husk: cargo test (rig tests included)");
    let mut test = Command::new(&cargo);
    test.args(["test", "--workspace"]);
    for (name, path) in artifacts.env() {
        test.env(name, path);
    }
    cmd::run(&mut test)?;
    eprintln!("husk: critest (CRI conformance, in the rig)");
    critest::run(&critest::Selection::default())
}
