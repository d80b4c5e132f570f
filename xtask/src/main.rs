//! `cargo xtask`: everything a fresh machine needs to build, test and demo eniflow.

mod cmd;
mod ebpf;
mod fuzz;
mod image;
mod report;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "eniflow's build, test and demo tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Make this machine ready: nightly rust-src, bpf-linker, Debian packages, cnitool and
    /// Kubernetes built from Debian's source, the lab's Python venv.
    Setup,
    /// Build the tc programs (nightly, bpfel-unknown-none, with BTF).
    BuildEbpf,
    /// Build the tc programs, then every userspace crate.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, lint (fmt, clippy -D warnings), then run every test (needs root).
    Test {
        /// Passed to `cargo test` as a test-name filter.
        filter: Option<String>,
    },
    /// Set up, build, and run eniflow on an emulated node in network namespaces (needs root).
    Demo,
    /// Set up, build, and run the benchmarks: EC2 calls and idle addresses of the pool under VPC
    /// CNI's default knobs and eniflow's recommended ones; CNI ADD/DEL latency; pod-to-VPC-host
    /// netperf through eniflow vs per-pod ip rules vs the floor; pod startup through kubelet
    /// (needs root).
    Bench {
        /// Only one part: ipam, cni, datapath or kubelet.
        part: Option<BenchPart>,
    },
    /// Build eniflow's OCI image offline (release binaries, iptables and its libraries from
    /// Debian) into target/eniflow-<version>.oci.tar, for `ctr images import` or `podman load`.
    Image {
        /// The debug binaries the tests run, instead of a release build.
        #[arg(long)]
        debug: bool,
    },
    /// Fuzz the parsers of untrusted input (cargo-fuzz on nightly): each target for `--minutes`,
    /// crashes copied into fuzz/regressions/, the corpus minimised. Not part of `test`, which
    /// replays the committed corpus and regressions instead.
    Fuzz {
        /// Targets to run (default: all).
        targets: Vec<String>,
        /// Minutes per target.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
    /// Regenerate the agent's bundled instance-type limits from the AWS data the lab's moto carries.
    GenLimits,
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Setup => setup::run_all(),
        Task::BuildEbpf => ebpf::build(),
        Task::Build { release } => build(release),
        Task::Test { filter } => test(filter),
        Task::Demo => demo(),
        Task::Bench { part } => bench(part),
        Task::Image { debug } => image(debug),
        Task::Fuzz { targets, minutes } => fuzz::run_all(&targets, minutes),
        Task::GenLimits => gen_limits(),
    };
    // One line per cause; a backtrace of xtask itself helps nobody.
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

fn build(release: bool) -> Result<()> {
    ebpf::build()?;
    let mut args = vec!["build", "--workspace", "--all-targets"];
    if release {
        args.push("--release");
    }
    cmd::cargo(&args)
}

fn test(filter: Option<String>) -> Result<()> {
    cmd::require_root("the tests create network namespaces and attach tc programs")?;
    setup::run_all()?;
    ebpf::build()?;
    step("lint: cargo fmt --check");
    cmd::cargo(&["fmt", "--all", "--check"])?;
    step("lint: cargo clippy -D warnings");
    cmd::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The end-to-end tests run the workspace's binaries; building them here, with the same
    // package selection the tests use, keeps the tests from building anything themselves.
    step("build: cargo build --workspace --bins");
    cmd::cargo(&["build", "--workspace", "--bins"])?;
    step("test: cargo test --workspace");
    let mut args = vec!["test", "--workspace"];
    if let Some(filter) = filter.as_deref() {
        args.push(filter);
    }
    cmd::cargo(&args)
}

fn demo() -> Result<()> {
    cmd::require_root("the demo creates network namespaces and attaches tc programs")?;
    setup::run_all()?;
    ebpf::build()?;
    step("build: cargo build --workspace --bins");
    cmd::cargo(&["build", "--quiet", "--workspace", "--bins"])?;
    step("demo: an emulated node in network namespaces");
    cmd::run(&mut std::process::Command::new(
        root().join("target/debug/eniflow-demo"),
    ))
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchPart {
    Ipam,
    Cni,
    Datapath,
    Kubelet,
    /// A hundred nodes (ENIFLOW_SCALE_NODES) against EC2's account-wide request budget.
    Scale,
    /// Not in the default run: 20,000 ADD/DEL cycles (`ENIFLOW_SOAK_CYCLES`) take half an hour.
    Soak,
}

impl BenchPart {
    /// The part's name in the report directory.
    fn name(self) -> &'static str {
        match self {
            BenchPart::Ipam => "ipam",
            BenchPart::Cni => "cni",
            BenchPart::Datapath => "datapath",
            BenchPart::Kubelet => "kubelet",
            BenchPart::Scale => "scale",
            BenchPart::Soak => "soak",
        }
    }
}

/// A bench driver from the release build, told to run the release build of everything else.
fn bench_driver(name: &str) -> std::process::Command {
    let mut driver = std::process::Command::new(root().join("target/release").join(name));
    driver.env("ENIFLOW_PROFILE", "release");
    driver
}

fn bench(part: Option<BenchPart>) -> Result<()> {
    let runs = |p| part.is_none_or(|only| only == p);
    setup::run_all()?;
    ebpf::build()?;
    // What ships is measured: release builds of the agent, the shim and the drivers.
    step("build: cargo build --release --workspace --bins");
    cmd::cargo(&["build", "--quiet", "--release", "--workspace", "--bins"])?;
    report::clear(part.map(BenchPart::name))?;
    if runs(BenchPart::Ipam) {
        step("bench: the address pool against the lab's EC2 emulator");
        cmd::run(&mut bench_driver("eniflow-bench-ipam"))?;
    }
    if runs(BenchPart::Cni) {
        cmd::require_root("the CNI bench creates network namespaces and pods")?;
        step("bench: CNI ADD and DEL latency on the lab's node");
        cmd::run(&mut bench_driver("eniflow-bench-cni"))?;
    }
    if runs(BenchPart::Datapath) {
        cmd::require_root("the data-plane bench creates network namespaces")?;
        let netperf = setup::netperf()?;
        step("bench: pod to VPC host, netperf RR, STREAM and CRR: eniflow, ip rules, floor; per-program cost");
        cmd::run(bench_driver("eniflow-bench-datapath").env("ENIFLOW_NETPERF_DIR", netperf))?;
    }
    if runs(BenchPart::Kubelet) {
        cmd::require_root("the kubelet bench runs a node in network namespaces")?;
        step("bench: pod startup through kubelet, eniflow against bridge + host-local");
        cmd::run(&mut bench_driver("eniflow-bench-kubelet"))?;
    }
    if runs(BenchPart::Scale) {
        step("bench: nodes scaling at once against EC2's account-wide request buckets");
        cmd::run(&mut bench_driver("eniflow-bench-scale"))?;
    }
    if part == Some(BenchPart::Soak) {
        cmd::require_root("the soak runs pods in network namespaces")?;
        step("bench: soak, ADD/DEL cycles through the shim on one agent");
        cmd::run(&mut bench_driver("eniflow-bench-soak"))?;
    }
    let report = report::assemble()?;
    step(&format!("report: {}", report.display()));
    Ok(())
}

fn image(debug: bool) -> Result<()> {
    setup::run_all()?;
    ebpf::build()?;
    if debug {
        // The same selection the tests build, so nothing is rebuilt.
        step("build: cargo build --workspace --bins");
        cmd::cargo(&["build", "--quiet", "--workspace", "--bins"])?;
    } else {
        step("build: cargo build --release (agent, shim)");
        cmd::cargo(&[
            "build",
            "--release",
            "-p",
            "eniflow-agent",
            "-p",
            "eniflow-cni",
        ])?;
    }
    step("image: root filesystem from Debian's packages, then podman build and save");
    image::build(if debug { "debug" } else { "release" })?;
    Ok(())
}

fn gen_limits() -> Result<()> {
    setup::run_all()?;
    step("gen-limits: agent/src/limits/instance_types.csv");
    cmd::run(
        std::process::Command::new(setup::lab_venv_dir().join("bin/python"))
            .arg(root().join("xtask/scripts/instance_limits.py"))
            .arg(root().join("agent/src/limits/instance_types.csv")),
    )
}

/// Prints a step header so long runs say where they are.
pub fn step(what: &str) {
    println!("==> {what}");
}
