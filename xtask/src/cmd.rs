//! Running other programs, with the command line in every error.

use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// Runs `cargo` (stable, the workspace's toolchain) in the workspace root.
pub fn cargo(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(args).current_dir(crate::root());
    // `cargo run` gives xtask its own package's CARGO_* variables; passed on, build scripts that
    // watch them (ring's) would rebuild whenever cargo is run from elsewhere, and the SDK with them.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name == "OUT_DIR"
            || name == "CARGO_MANIFEST_DIR"
            || name == "CARGO_MANIFEST_PATH"
            || name == "CARGO_CRATE_NAME"
            || name == "CARGO_PRIMARY_PACKAGE"
            || name == "CARGO_TARGET_TMPDIR"
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_")
        {
            cmd.env_remove(name.as_ref());
        }
    }
    run(&mut cmd)
}

/// `cargo +nightly <args>` in `dir`, without the outer stable build's settings (which must not
/// leak into the nightly one).
pub fn nightly_cargo(args: &[&str], dir: &std::path::Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly").args(args).current_dir(dir);
    for var in [
        "RUSTC",
        "RUSTDOC",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs a command with inherited stdio and fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {line}"))?;
    if !status.success() {
        bail!("{line} failed: {status}");
    }
    Ok(())
}

/// Runs a command quietly and returns its output, or `None` if it could not start.
pub fn capture(cmd: &mut Command) -> Option<Output> {
    cmd.stdin(Stdio::null()).output().ok()
}

/// Whether a command starts and exits 0.
pub fn succeeds(cmd: &mut Command) -> bool {
    capture(cmd).is_some_and(|out| out.status.success())
}

/// Fails with a one-line reason unless this process runs as root.
pub fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root: {why}");
    }
    Ok(())
}
