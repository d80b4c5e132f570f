//! Running other programs, with the command line in every error.

use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// Runs `cargo` (stable, the workspace's toolchain) in the workspace root.
pub fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new(env!("CARGO"))
        .args(args)
        .current_dir(crate::root()))
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
