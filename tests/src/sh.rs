//! Running the real tools.

use std::process::{Command, Stdio};

/// Runs `program args…` and returns its stdout; panics with stderr if it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e} (is it installed? `cargo xtask setup`)")
        });
    assert!(
        out.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `program args…` inside the network namespace at `/run/netns/<ns>` without remounting
/// /sys (so bpffs stays visible, unlike `ip netns exec`).
pub fn run_in(ns: &str, program: &str, args: &[&str]) -> String {
    let target = format!("--net=/run/netns/{ns}");
    let mut full = vec![target.as_str(), program];
    full.extend_from_slice(args);
    run("nsenter", &full)
}

/// `ip args…`, as a shorthand.
pub fn ip(args: &[&str]) -> String {
    run("ip", args)
}

/// `ip args…`; None when it fails (a link that is not there yet).
pub fn try_ip(args: &[&str]) -> Option<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
