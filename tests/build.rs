//! Embeds the lab's fabric programs (tests/lab/fabric-ebpf), built with eniflow's by
//! `cargo xtask build-ebpf`.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=ENIFLOW_LAB_EBPF_OBJECT");
    let object = env::var_os("ENIFLOW_LAB_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
                .join("lab/fabric-ebpf/target/bpfel-unknown-none/release/eniflow-lab")
        });
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.is_file() {
        panic!(
            "the lab's eBPF object {} is missing: run `cargo xtask build-ebpf`",
            object.display()
        );
    }
    println!(
        "cargo:rustc-env=ENIFLOW_LAB_EBPF_EMBED={}",
        object.display()
    );
}
