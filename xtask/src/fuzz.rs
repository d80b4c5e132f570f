//! `cargo xtask fuzz`: each target of tests/fuzz-targets under libFuzzer (cargo-fuzz, nightly,
//! AddressSanitizer) for a while, with a cap on every allocation so an input that makes a parser
//! allocate without bound is a crash too. Every crash is copied into fuzz/regressions/, and the
//! corpus is minimised afterwards: both are committed, and CI replays them on stable.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::cmd::{capture, run, succeeds};

/// cargo-fuzz release the fuzz crate's layout was written for.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// No single allocation above this: JSON of a few KiB never needs it.
const MALLOC_LIMIT_MB: &str = "64";
/// Inputs stay small, as the agent's inputs are (a CNI request is capped at 1 MiB).
const MAX_LEN: &str = "8192";

pub fn run_all(targets: &[String], minutes: u64) -> Result<()> {
    cargo_fuzz()?;
    let fuzz = crate::root().join("fuzz");
    // The workspace's lockfile pins what the targets build with; the fuzz crate starts from it.
    let lock = fuzz.join("Cargo.lock");
    if !lock.exists() {
        fs::copy(crate::root().join("Cargo.lock"), &lock)?;
    }
    let all = list()?;
    let chosen: Vec<String> = if targets.is_empty() {
        all.clone()
    } else {
        for t in targets {
            if !all.contains(t) {
                bail!("no fuzz target {t:?}; the targets are {}", all.join(", "));
            }
        }
        targets.to_vec()
    };
    let logs = crate::root().join("target/fuzz-logs");
    fs::create_dir_all(&logs)?;
    let mut summary = Vec::new();
    let mut crashed = Vec::new();
    for target in &chosen {
        crate::step(&format!("fuzz: {target} for {minutes} min"));
        let log = logs.join(format!("{target}.log"));
        let ok = fuzz_one(target, minutes, &log)?;
        let found = keep_crashes(&fuzz, target)?;
        if !ok || !found.is_empty() {
            crashed.push(format!("{target}: {}", found.join(", ")));
        }
        crate::step(&format!("fuzz: cargo fuzz cmin {target}"));
        run(&mut nightly(&["fuzz", "cmin", target]))?;
        summary.push((target.clone(), stats(&log), corpus_len(&fuzz, target)));
    }
    println!("\n| target | executions | coverage (edges) | corpus after cmin |");
    println!("|---|---|---|---|");
    for (target, (execs, cov), corpus) in &summary {
        println!("| {target} | {execs} | {cov} | {corpus} |");
    }
    if !crashed.is_empty() {
        bail!(
            "crashes, copied into fuzz/regressions/ (commit them with the fix): {}",
            crashed.join("; ")
        );
    }
    Ok(())
}

/// `cargo +nightly <args>` in the repository root.
fn nightly(args: &[&str]) -> Command {
    crate::cmd::nightly_cargo(args, &crate::root())
}

fn cargo_fuzz() -> Result<()> {
    if succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        return Ok(());
    }
    println!("    cargo-fuzz: cargo install cargo-fuzz@{CARGO_FUZZ_VERSION}");
    run(Command::new("cargo")
        .args([
            "install",
            "--locked",
            &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
        ])
        .env_remove("RUSTUP_TOOLCHAIN"))
}

fn list() -> Result<Vec<String>> {
    let out = capture(&mut nightly(&["fuzz", "list"])).context("cannot run cargo fuzz list")?;
    if !out.status.success() {
        bail!(
            "cargo fuzz list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Runs one target; false when libFuzzer stopped on a crash. Its output goes to `log`.
fn fuzz_one(target: &str, minutes: u64, log: &Path) -> Result<bool> {
    let seconds = (minutes * 60).to_string();
    let mut cmd = nightly(&[
        "fuzz",
        "run",
        target,
        "--",
        &format!("-max_total_time={seconds}"),
        &format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"),
        "-rss_limit_mb=2048",
        &format!("-max_len={MAX_LEN}"),
        "-timeout=10",
        "-print_final_stats=1",
    ]);
    cmd.stderr(Stdio::from(fs::File::create(log)?));
    println!("    libFuzzer's output: {}", log.display());
    let status = cmd.status().context("cannot start cargo fuzz run")?;
    Ok(status.success())
}

/// Copies what libFuzzer saved for `target` (crashes, leaks, timeouts, out-of-memory) into
/// fuzz/regressions/<target>/; returns their names.
fn keep_crashes(fuzz: &Path, target: &str) -> Result<Vec<String>> {
    let artifacts = fuzz.join("artifacts").join(target);
    let Ok(entries) = fs::read_dir(&artifacts) else {
        return Ok(Vec::new());
    };
    let kept = fuzz.join("regressions").join(target);
    let mut names = Vec::new();
    for entry in entries {
        let path: PathBuf = entry?.path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        fs::create_dir_all(&kept)?;
        fs::copy(&path, kept.join(&name))?;
        fs::remove_file(&path)?;
        names.push(name);
    }
    Ok(names)
}

/// Executions and edges covered, from libFuzzer's final stats and last status line.
fn stats(log: &Path) -> (String, String) {
    let text = fs::read_to_string(log).unwrap_or_default();
    let execs = text
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units: "))
        .unwrap_or("?")
        .to_owned();
    let cov = text
        .lines()
        .rev()
        .find_map(|l| l.split_once(" cov: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("?")
        .to_owned();
    (execs, cov)
}

fn corpus_len(fuzz: &Path, target: &str) -> usize {
    fs::read_dir(fuzz.join("corpus").join(target)).map_or(0, |d| d.count())
}
