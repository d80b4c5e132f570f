//! Embeds the tc programs' object, built separately on nightly by `cargo xtask build-ebpf`.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=ENIFLOW_EBPF_OBJECT");
    let object = env::var_os("ENIFLOW_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
                .join("../ebpf/eniflow-ebpf/target/bpfel-unknown-none/release/eniflow-ebpf")
        });
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.is_file() {
        panic!(
            "the eBPF object {} is missing: run `cargo xtask build-ebpf` (or `cargo xtask build`)",
            object.display()
        );
    }
    println!("cargo:rustc-env=ENIFLOW_EBPF_EMBED={}", object.display());
}
