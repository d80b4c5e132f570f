//! `cargo xtask setup`: makes a fresh machine of the project's kind ready, idempotently.
//!
//! Each step checks before it acts and says what it did; a second run installs nothing.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::cmd::{capture, run, succeeds};

/// Debian packages the tests, the demo and the lab use.
const DEBIAN_PACKAGES: &[&str] = &[
    "bpftool",
    "iproute2",
    "iptables",
    // `nft`, with which the lab wires a node as VPC CNI 1.23 does on nftables hosts.
    "nftables",
    "iputils-ping",
    "tcpdump",
    "procps",
    // The reference CNI plugins chained after eniflow (portmap, bandwidth, tuning) ...
    "containernetworking-plugins",
    // ... and what builds cnitool, the CNI project's reference client, from Debian's source.
    "golang-go",
    "golang-github-appc-cni-dev",
    // kube-apiserver's vendored reflect2 1.0.1 crashes on Go >= 1.18; Debian's 1.0.2 replaces it.
    "golang-github-modern-go-reflect2-dev",
    // containerd's CRI (what kubelet drives) and podman, with runc; busybox is the workload.
    "containerd",
    "runc",
    "podman",
    "busybox-static",
];

/// The Debian source package that carries cnitool.
const CNITOOL_SOURCE_PACKAGE: &str = "golang-github-appc-cni";

/// bpf-linker release known to link aya programs with the nightly toolchain's LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The lab's EC2 emulator requirements (exact pins), relative to the workspace root.
const LAB_REQUIREMENTS: &str = "tests/lab/emulator/requirements.txt";

enum Outcome {
    Present,
    Installed,
}

struct Step {
    name: &'static str,
    run: fn() -> Result<Outcome>,
}

const STEPS: &[Step] = &[
    Step {
        name: "nightly rust-src",
        run: rust_src,
    },
    Step {
        name: "bpf-linker",
        run: bpf_linker,
    },
    Step {
        name: "Debian packages",
        run: debian_packages,
    },
    Step {
        name: "cnitool",
        run: cnitool,
    },
    Step {
        name: "Kubernetes (built from Debian's source) and etcd",
        run: kubernetes,
    },
    Step {
        name: "lab Python venv",
        run: lab_venv,
    },
    Step {
        name: "Prometheus and promtool (unpacked from Debian's package)",
        run: prometheus,
    },
];

/// Runs every step; keeps going past a failed one so a single run reports every missing piece.
pub fn run_all() -> Result<()> {
    crate::step("setup");
    let mut installed = 0;
    let mut failed = Vec::new();
    for step in STEPS {
        match (step.run)() {
            Ok(Outcome::Present) => println!("    {}: already there", step.name),
            Ok(Outcome::Installed) => {
                installed += 1;
                println!("    {}: installed", step.name);
            }
            Err(err) => {
                println!("    {}: cannot install: {err:#}", step.name);
                failed.push(step.name);
            }
        }
    }
    if !failed.is_empty() {
        bail!("setup incomplete: {}", failed.join(", "));
    }
    if installed == 0 {
        println!("    nothing to do: this machine is ready");
    }
    Ok(())
}

fn rust_src() -> Result<Outcome> {
    let installed = capture(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("rustup is not on PATH")?;
    if !installed.status.success() {
        bail!("the nightly toolchain is not installed under rustup (it cannot be downloaded here)");
    }
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|line| line.starts_with("rust-src"))
    {
        return Ok(Outcome::Present);
    }
    println!("    nightly rust-src: rustup component add rust-src --toolchain nightly");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    Ok(Outcome::Installed)
}

/// bpf-linker must link against the same LLVM major as nightly rustc. No system LLVM of that
/// version exists, so it is built against the libLLVM the nightly toolchain ships
/// (see shared/notes/toolchain.md).
fn bpf_linker() -> Result<Outcome> {
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        return Ok(Outcome::Present);
    }
    let sysroot = nightly_output(&["--print", "sysroot"])?;
    let version = nightly_output(&["-vV"])?;
    let llvm_major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("nightly rustc does not report its LLVM version")?
        .to_owned();
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let libllvm = fs::read_dir(&lib_dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib_dir.display()))?;

    // The linker records this prefix as its rpath, so it lives outside any clone.
    let prefix = cargo_home().join("eniflow-llvm").join(&libllvm);
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    for link in ["libLLVM.so", libllvm.as_str()] {
        let path = prefix_lib.join(link);
        let _ = fs::remove_file(&path);
        std::os::unix::fs::symlink(lib_dir.join(&libllvm), &path)
            .with_context(|| format!("cannot link {}", path.display()))?;
    }
    println!(
        "    bpf-linker: cargo install bpf-linker@{BPF_LINKER_VERSION} --features llvm-{llvm_major} \
         against {} (a few minutes)",
        lib_dir.join(&libllvm).display()
    );
    run(Command::new("cargo")
        .args([
            "install",
            "--locked",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTUP_TOOLCHAIN"))?;
    Ok(Outcome::Installed)
}

fn debian_packages() -> Result<Outcome> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            !capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
                .is_some_and(|out| String::from_utf8_lossy(&out.stdout).ends_with("installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(Outcome::Present);
    }
    println!("    Debian packages: apt-get install {}", missing.join(" "));
    run(Command::new("apt-get")
        .args(["update", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(Outcome::Installed)
}

/// The EC2 emulator runs from a venv pinned by its requirements file; the venv is rebuilt
/// whenever that file changes.
fn lab_venv() -> Result<Outcome> {
    let requirements = crate::root().join(LAB_REQUIREMENTS);
    let wanted = fs::read_to_string(&requirements)
        .with_context(|| format!("cannot read {}", requirements.display()))?;
    let venv = lab_venv_dir();
    let marker = venv.join("eniflow-requirements.txt");
    if fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(Outcome::Present);
    }
    println!(
        "    lab Python venv: python3 -m venv {} + pip install",
        venv.display()
    );
    let _ = fs::remove_dir_all(&venv);
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements))?;
    fs::write(&marker, wanted)?;
    Ok(Outcome::Installed)
}

/// cnitool is packaged nowhere as a binary: it is built from Debian's source package with
/// Debian's Go and Go libraries (GOPATH mode, offline), fetched through a private deb-src list so
/// the machine's apt sources stay untouched.
fn cnitool() -> Result<Outcome> {
    let binary = cnitool_path();
    if binary.exists() {
        return Ok(Outcome::Present);
    }
    let work = home().join(".cache/eniflow/cnitool-src");
    let _ = fs::remove_dir_all(&work);
    let apt = private_apt(&work, "deb-src", "main")?;
    println!("    cnitool: apt-get source {CNITOOL_SOURCE_PACKAGE} + go build");
    run(&mut apt(&["update", "-qq"]))?;
    run(&mut apt(&[
        "source",
        "--download-only",
        "-qq",
        CNITOOL_SOURCE_PACKAGE,
    ]))?;
    let tarball = find_file(&work, ".orig.tar.xz")?;
    run(Command::new("tar")
        .arg("-xJf")
        .arg(&tarball)
        .current_dir(&work))?;
    let source = fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path().join("cnitool/cnitool.go")))
        .find(|p| p.exists())
        .context("no cnitool/cnitool.go in the source package")?;
    fs::create_dir_all(binary.parent().expect("a bin directory"))?;
    run(Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .current_dir(source.parent().expect("cnitool's directory"))
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", work.join("gocache")))?;
    fs::remove_dir_all(&work)?;
    Ok(Outcome::Installed)
}

/// The Debian source package whose orig tarball carries kube-apiserver and its vendored modules.
const KUBERNETES_SOURCE_PACKAGE: &str = "kubernetes";

/// Where golang-github-modern-go-reflect2-dev puts its source.
const REFLECT2_SOURCE: &str = "/usr/share/gocode/src/github.com/modern-go/reflect2";

/// The Kubernetes binaries the lab runs, built together from Debian's `kubernetes` source: the
/// API server (the agent's cluster side), a node's kubelet and kube-proxy, the scheduler and
/// controller-manager (real workloads), and kubectl (applies deploy/ with `-k`).
pub const KUBERNETES_BINARIES: &[&str] = &[
    "kube-apiserver",
    "kubelet",
    "kube-proxy",
    "kube-scheduler",
    "kube-controller-manager",
    "kubectl",
];

/// The lab's Kubernetes is real: kube-apiserver on a real etcd, kubelets on containerd. No
/// registry carries these binaries, so they are built from Debian's `kubernetes` source package
/// with Debian's Go (GOPATH mode, offline, after generating the one file the tarball lacks), in
/// one `go build` so they share one compile; etcd is unpacked from Debian's etcd-server.
fn kubernetes() -> Result<Outcome> {
    let bin = home().join(".cache/eniflow/bin");
    let etcd = bin.join("etcd");
    let missing: Vec<&str> = KUBERNETES_BINARIES
        .iter()
        .copied()
        .filter(|name| !bin.join(name).exists())
        .collect();
    if missing.is_empty() && etcd.exists() {
        return Ok(Outcome::Present);
    }
    fs::create_dir_all(&bin)?;
    let work = home().join(".cache/eniflow/kubernetes-src");
    if !etcd.exists() {
        println!("    etcd: apt-get download etcd-server + dpkg -x");
        let root = unpack_deb(&work, "main", "etcd-server")?;
        fs::copy(root.join("usr/bin/etcd"), &etcd).context("copy etcd out of etcd-server")?;
    }
    if !missing.is_empty() {
        let _ = fs::remove_dir_all(&work);
        let apt = private_apt(&work, "deb-src", "main")?;
        println!(
            "    {}: apt-get source {KUBERNETES_SOURCE_PACKAGE} + one go build (about 6 minutes)",
            missing.join(", ")
        );
        run(&mut apt(&["update", "-qq"]))?;
        run(&mut apt(&[
            "source",
            "--download-only",
            "-qq",
            KUBERNETES_SOURCE_PACKAGE,
        ]))?;
        let tarball = find_file(&work, ".orig.tar.gz")?;
        let version = kubernetes_version(&tarball)?;
        let source = work.join("gopath/src/k8s.io/kubernetes");
        fs::create_dir_all(&source)?;
        run(Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("--strip-components=1")
            .arg("-C")
            .arg(&source))?;
        let go = |args: &[&str]| {
            let mut cmd = Command::new("go");
            cmd.args(args)
                .current_dir(&source)
                .env("GO111MODULE", "off")
                .env("CGO_ENABLED", "0")
                .env("GOPATH", work.join("gopath"))
                .env("GOCACHE", work.join("gocache"));
            cmd
        };
        // Vendored reflect2 1.0.1 reads Go's map internals as they were before Go 1.18: the API
        // server would panic decoding any object with a map (labels). Debian's 1.0.2 is fixed.
        let reflect2 = source.join("vendor/github.com/modern-go/reflect2");
        fs::remove_dir_all(&reflect2)?;
        run(Command::new("cp")
            .arg("-rL")
            .arg(REFLECT2_SOURCE)
            .arg(&reflect2))?;
        // The tarball lacks pkg/generated/openapi, which `make` generates from these markers.
        let openapi_gen = work.join("openapi-gen");
        run(go(&["build", "-o"])
            .arg(&openapi_gen)
            .arg("./vendor/k8s.io/kube-openapi/cmd/openapi-gen"))?;
        let inputs = openapi_inputs(&source)?;
        run(Command::new(&openapi_gen)
            .arg("-i")
            .arg(inputs.join(","))
            .args([
                "-p",
                "k8s.io/kubernetes/pkg/generated/openapi",
                "-O",
                "zz_generated.openapi",
                "-h",
                "vendor/k8s.io/code-generator/hack/boilerplate.go.txt",
                // Upstream's known API-rule violations, listed instead of printed.
                "--report-filename",
                "violations.txt",
                "-o",
            ])
            .arg(work.join("gopath/src"))
            .current_dir(&source)
            .env("GOPATH", work.join("gopath"))
            .env("GO111MODULE", "off"))?;
        // Without the version stamped in, the Node would report kubeletVersion v0.0.0-master.
        let (major, minor) = version
            .trim_start_matches('v')
            .split_once('.')
            .and_then(|(major, rest)| Some((major, rest.split('.').next()?)))
            .with_context(|| format!("version {version} is not major.minor.patch"))?;
        let ldflags = [
            "k8s.io/component-base/version",
            "k8s.io/client-go/pkg/version",
        ]
        .iter()
        .map(|pkg| {
            let pkg = format!("k8s.io/kubernetes/vendor/{pkg}");
            format!(
                "-X {pkg}.gitVersion={version} -X {pkg}.gitMajor={major} \
                     -X {pkg}.gitMinor={minor} -X {pkg}.gitTreeState=clean"
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
        let staging = work.join("bin");
        fs::create_dir_all(&staging)?;
        run(go(&["build", "-ldflags"])
            .arg(format!("-s -w {ldflags}"))
            .arg("-o")
            .arg(format!("{}/", staging.display()))
            .args(
                KUBERNETES_BINARIES
                    .iter()
                    .map(|name| format!("./cmd/{name}")),
            ))?;
        for name in KUBERNETES_BINARIES {
            fs::rename(staging.join(name), bin.join(name))
                .with_context(|| format!("move {name} into {}", bin.display()))?;
        }
    }
    fs::remove_dir_all(&work)?;
    Ok(Outcome::Installed)
}

/// The upstream version in Debian's orig tarball name (`kubernetes_1.20.5+really1.20.2.orig…`:
/// Debian's version can carry the upstream one after `really`).
fn kubernetes_version(tarball: &Path) -> Result<String> {
    let name = tarball.file_name().unwrap_or_default().to_string_lossy();
    let version = name
        .strip_prefix(&format!("{KUBERNETES_SOURCE_PACKAGE}_"))
        .and_then(|rest| rest.split(".orig").next())
        .with_context(|| format!("no version in {name}"))?;
    let upstream = version.rsplit("really").next().unwrap_or(version);
    Ok(format!("v{upstream}"))
}

/// The Go packages carrying `+k8s:openapi-gen=` markers, as openapi-gen's `-i` wants them.
fn openapi_inputs(source: &Path) -> Result<Vec<String>> {
    let out = capture(
        Command::new("grep")
            .args([
                "-Rl",
                "--include=*.go",
                "+k8s:openapi-gen=",
                "pkg",
                "cmd",
                "vendor/k8s.io",
            ])
            .current_dir(source),
    )
    .context("cannot run grep")?;
    let mut dirs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|file| {
            !file.starts_with("vendor/k8s.io/code-generator/")
                && !file.starts_with("vendor/k8s.io/sample-apiserver/")
        })
        .filter_map(|file| Path::new(file).parent())
        .map(|dir| format!("k8s.io/kubernetes/{}", dir.display()))
        .collect();
    dirs.sort();
    dirs.dedup();
    if dirs.is_empty() {
        bail!("no +k8s:openapi-gen= markers in {}", source.display());
    }
    Ok(dirs)
}

/// Downloads Debian's `package` (the release's `component`) into a fresh `work` through a private
/// list and unpacks it, not installing it; returns the unpacked root.
fn unpack_deb(work: &Path, component: &str, package: &str) -> Result<PathBuf> {
    let _ = fs::remove_dir_all(work);
    let apt = private_apt(work, "deb", component)?;
    run(&mut apt(&["update", "-qq"]))?;
    run(&mut apt(&["download", "-qq", package]))?;
    let deb = find_file(work, ".deb")?;
    let root = work.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    Ok(root)
}

/// The one file in `dir` whose name ends with `suffix`.
fn find_file(dir: &Path, suffix: &str) -> Result<PathBuf> {
    fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(suffix))
        .with_context(|| format!("no *{suffix} in {}", dir.display()))
}

/// apt-get with a sources list of its own (one line of `kind` and `component` for the machine's
/// Debian release, from the mirror its own apt configuration names) and its own lists under
/// `work`: the machine's apt configuration stays untouched.
pub fn private_apt(
    work: &Path,
    kind: &str,
    component: &str,
) -> Result<impl Fn(&[&str]) -> Command> {
    let (mirror, release) = debian_mirror()?;
    fs::create_dir_all(work.join("lists/partial"))?;
    let sources = work.join("sources.list");
    fs::write(
        &sources,
        format!("{kind} [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} {release} {component}\n"),
    )?;
    let work = work.to_owned();
    Ok(move |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.arg("-o")
            .arg(format!("Dir::Etc::sourcelist={}", sources.display()))
            .args([
                "-o",
                "Dir::Etc::sourceparts=-",
                "-o",
                "APT::Sandbox::User=root",
                "-o",
            ])
            .arg(format!(
                "Dir::State::Lists={}",
                work.join("lists").display()
            ))
            .args(args)
            .current_dir(&work);
        cmd
    })
}

/// The Debian release this machine runs (`VERSION_CODENAME`) and the mirror its apt sources use
/// for that release's main suite, so setup fetches from wherever this machine is configured to.
fn debian_mirror() -> Result<(String, String)> {
    let os_release = fs::read_to_string("/etc/os-release").context("read /etc/os-release")?;
    let release = os_release
        .lines()
        .find_map(|line| line.strip_prefix("VERSION_CODENAME="))
        .map(|name| name.trim_matches('"').to_owned())
        .context("/etc/os-release names no VERSION_CODENAME")?;
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut listed: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        listed.sort();
        files.extend(listed);
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        let name = file.to_string_lossy();
        let mirror = if name.ends_with(".sources") {
            deb822_mirror(&text, &release)
        } else if name.ends_with(".list") {
            one_line_mirror(&text, &release)
        } else {
            None
        };
        if let Some(mirror) = mirror {
            return Ok((mirror, release));
        }
    }
    bail!("no apt source for Debian {release} (a `deb` entry with suite {release}) in /etc/apt")
}

/// The URI of the first `deb` stanza of a deb822 `.sources` file that carries suite `release`.
fn deb822_mirror(text: &str, release: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |key: &str| {
            stanza
                .lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
                .map(str::trim)
        };
        let deb = field("Types")?.split_whitespace().any(|t| t == "deb");
        let suite = field("Suites")?.split_whitespace().any(|s| s == release);
        let enabled = field("Enabled").is_none_or(|e| e != "no");
        (deb && suite && enabled)
            .then(|| field("URIs")?.split_whitespace().next().map(str::to_owned))
            .flatten()
    })
}

/// The URI of the first `deb URI release ...` line of a one-line-style `.list` file.
fn one_line_mirror(text: &str, release: &str) -> Option<String> {
    text.lines().find_map(|line| {
        // Options in brackets may hold spaces: drop them before splitting the fields.
        let line = match (line.find('['), line.find(']')) {
            (Some(open), Some(close)) if open < close => {
                format!("{}{}", &line[..open], &line[close + 1..])
            }
            _ => line.to_owned(),
        };
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["deb", uri, suite, ..] if *suite == release => Some((*uri).to_owned()),
            _ => None,
        }
    })
}

/// netperf (the data-plane bench's load generator) is only in Debian's non-free component:
/// its package is downloaded through a private list and unpacked, not installed.
pub fn netperf() -> Result<PathBuf> {
    unpacked_tools("netperf", "non-free", &["netperf", "netserver"]).map(|(bin, _)| bin)
}

/// Prometheus and promtool, which the metrics tests run in a lab namespace: unpacked rather
/// than installed, so no Prometheus service starts on the machine itself.
fn prometheus() -> Result<Outcome> {
    unpacked_tools("prometheus", "main", &["prometheus", "promtool"]).map(|(_, outcome)| outcome)
}

/// `tools` from Debian's `package` (of `component`), copied into eniflow's cache bin directory
/// (returned) unless they are there already.
fn unpacked_tools(package: &str, component: &str, tools: &[&str]) -> Result<(PathBuf, Outcome)> {
    let bin = home().join(".cache/eniflow/bin");
    if tools.iter().all(|tool| bin.join(tool).exists()) {
        return Ok((bin, Outcome::Present));
    }
    let work = home().join(format!(".cache/eniflow/{package}-deb"));
    println!("    {package}: apt-get download {package} ({component}) + dpkg -x");
    let unpacked = unpack_deb(&work, component, package)?;
    fs::create_dir_all(&bin)?;
    for tool in tools {
        fs::copy(unpacked.join("usr/bin").join(tool), bin.join(tool))
            .with_context(|| format!("copy {tool} out of the {package} package"))?;
    }
    fs::remove_dir_all(&work)?;
    Ok((bin, Outcome::Installed))
}

/// Where setup puts cnitool; the tests read the same default (`ENIFLOW_CNITOOL` overrides).
pub fn cnitool_path() -> PathBuf {
    env::var_os("ENIFLOW_CNITOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache/eniflow/bin/cnitool"))
}

/// Where the lab's venv lives; the tests read the same default (`ENIFLOW_LAB_VENV` overrides).
pub fn lab_venv_dir() -> PathBuf {
    env::var_os("ENIFLOW_LAB_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache/eniflow/lab-venv"))
}

fn nightly_output(args: &[&str]) -> Result<String> {
    let out = capture(Command::new("rustc").arg("+nightly").args(args))
        .context("cannot run rustc +nightly")?;
    if !out.status.success() {
        bail!("rustc +nightly {} failed", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn home() -> PathBuf {
    env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cargo"))
}
