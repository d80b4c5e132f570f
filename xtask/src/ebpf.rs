//! The nightly build of the tc programs.

use std::path::PathBuf;

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
    crate::cmd::run(&mut crate::cmd::nightly_cargo(
        &["build", "--release"],
        &crate::root().join(dir),
    ))
}
