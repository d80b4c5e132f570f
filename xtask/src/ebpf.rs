//! The nightly build of the tc programs.

use std::{path::PathBuf, process::Command};

use anyhow::Result;

/// Where the linked object lands; the agent's build script embeds it from here.
pub fn object() -> PathBuf {
    crate::root().join("ebpf/eniflow-ebpf/target/bpfel-unknown-none/release/eniflow-ebpf")
}

/// The lab's fabric programs (tests only), built beside eniflow's.
pub fn lab_object() -> PathBuf {
    crate::root().join("tests/lab/fabric-ebpf/target/bpfel-unknown-none/release/eniflow-lab")
}

/// Builds the tc programs, then the lab's fabric programs, on nightly with `-Z build-std=core`
/// and BTF (see each crate's `.cargo/config.toml`).
pub fn build() -> Result<()> {
    crate::step("build-ebpf: cargo +nightly build --release (bpfel-unknown-none)");
    nightly_build("ebpf/eniflow-ebpf")?;
    println!("    object: {}", object().display());
    nightly_build("tests/lab/fabric-ebpf")?;
    println!("    lab object: {}", lab_object().display());
    Ok(())
}

fn nightly_build(dir: &str) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "build", "--release"])
        .current_dir(crate::root().join(dir));
    // Settings meant for the outer stable build must not leak into the nightly one.
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
    crate::cmd::run(&mut cmd)
}
