//! `cargo xtask image`: eniflow's OCI image, built offline. The root filesystem holds the agent,
//! the shim, and the files of exactly the Debian packages they and iptables load (found with
//! ldd and dpkg, downloaded from the machine's own apt mirror and unpacked, docs dropped);
//! podman turns it into an image with deploy/Containerfile's contract and saves an OCI archive.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{cmd, setup};

/// The image's name and tag (the crate version), fully qualified as the CRI expands
/// deploy/daemonset.yaml's `eniflow:<version>`, so an imported archive is found under that name.
pub fn reference() -> String {
    format!("docker.io/library/eniflow:{}", env!("CARGO_PKG_VERSION"))
}

/// The host programs the agent execs, besides its own binaries.
const EXECS: &[&str] = &["/usr/sbin/xtables-nft-multi"];
/// The names the agent execs them by (what update-alternatives would link).
const EXEC_LINKS: &[(&str, &str)] = &[
    ("usr/sbin/iptables", "xtables-nft-multi"),
    ("usr/sbin/iptables-save", "xtables-nft-multi"),
    ("usr/sbin/iptables-restore", "xtables-nft-multi"),
];
/// Packages needed that no ELF names: iptables' extensions (dlopened), /etc/protocols and
/// /etc/services (iptables resolves `-p tcp`), and the CAs for EC2's and the API's TLS.
const DATA_PACKAGES: &[&str] = &["iptables", "netbase", "ca-certificates"];
/// Parts of the unpacked packages nothing in the image reads.
const DROPPED: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/lintian",
    "usr/share/locale",
    "usr/lib/x86_64-linux-gnu/gconv",
    "usr/share/bug",
];

/// Builds the image from `profile`'s binaries ("release", or "debug" for the tests); returns
/// the OCI archive's path.
pub fn build(profile: &str) -> Result<PathBuf> {
    let target = crate::root().join("target");
    let work = target.join("image");
    let rootfs = work.join("rootfs");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&rootfs)?;
    let bin = target.join(profile);
    let own = ["eniflow-agent", "eniflow-cni"].map(|name| bin.join(name));
    let packages = packages(own.iter().map(PathBuf::as_path))?;
    println!(
        "    packages: {}",
        packages.iter().cloned().collect::<Vec<_>>().join(" ")
    );
    let debs = work.join("debs");
    let apt = setup::private_apt(&debs, "deb", "main")?;
    cmd::run(&mut apt(&["update", "-qq"]))?;
    let names: Vec<&str> = packages.iter().map(String::as_str).collect();
    cmd::run(&mut apt(&[&["download", "-qq"][..], &names].concat()))?;
    for deb in fs::read_dir(&debs)?.filter_map(|e| e.ok().map(|e| e.path())) {
        if deb.extension().is_some_and(|ext| ext == "deb") {
            cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&rootfs))?;
        }
    }
    for dropped in DROPPED {
        let _ = fs::remove_dir_all(rootfs.join(dropped));
    }
    for (link, to) in EXEC_LINKS {
        let link = rootfs.join(link);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(to, &link)
            .with_context(|| format!("link {}", link.display()))?;
    }
    ca_bundle(&rootfs)?;
    for dir in ["run", "tmp", "host/opt/cni/bin", "etc/cni/net.d"] {
        fs::create_dir_all(rootfs.join(dir))?;
    }
    // Paths the runtime hands over (/var/run/netns/...) resolve as on the node.
    fs::create_dir_all(rootfs.join("var"))?;
    std::os::unix::fs::symlink("/run", rootfs.join("var/run"))?;
    for binary in &own {
        let name = binary.file_name().expect("a file name");
        fs::copy(binary, rootfs.join("usr/bin").join(name))
            .with_context(|| format!("copy {}", binary.display()))?;
    }
    let containerfile = work.join("Containerfile");
    fs::write(&containerfile, offline_containerfile()?)?;
    let reference = reference();
    cmd::run(
        Command::new("podman")
            .args([
                "build",
                "--quiet",
                "--no-cache",
                "--network=none",
                "-t",
                &reference,
                "-f",
            ])
            .stdout(std::process::Stdio::null())
            .arg(&containerfile)
            .arg(&work),
    )?;
    let archive = target.join(format!("eniflow-{}.oci.tar", env!("CARGO_PKG_VERSION")));
    let _ = fs::remove_file(&archive);
    cmd::run(
        Command::new("podman")
            .args(["save", "--quiet", "--format", "oci-archive", "-o"])
            .arg(&archive)
            .arg(&reference),
    )?;
    // The archive is the product: podman's store is left as it was (`podman load` brings it).
    cmd::run(
        Command::new("podman")
            .args(["rmi", "--force", &reference])
            .stdout(std::process::Stdio::null()),
    )?;
    fs::remove_dir_all(&work)?;
    println!(
        "    {reference}: {} ({:.1} MiB)",
        archive.display(),
        fs::metadata(&archive)?.len() as f64 / (1024.0 * 1024.0)
    );
    Ok(archive)
}

/// deploy/Containerfile's contract (below its marker) on a root filesystem of our own.
fn offline_containerfile() -> Result<String> {
    let path = crate::root().join("deploy/Containerfile");
    let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let (_, contract) = text
        .split_once("\n# --- ")
        .with_context(|| format!("{} has no `# --- ` marker line", path.display()))?;
    Ok(format!("FROM scratch\nCOPY rootfs/ /\n# --- {contract}"))
}

/// The Debian packages owning every library `binaries` and iptables load, and DATA_PACKAGES.
fn packages<'a>(binaries: impl Iterator<Item = &'a Path>) -> Result<BTreeSet<String>> {
    let mut elves: Vec<PathBuf> = binaries.map(Path::to_owned).collect();
    elves.extend(EXECS.iter().map(PathBuf::from));
    let extensions = Path::new("/usr/lib/x86_64-linux-gnu/xtables");
    elves.extend(
        fs::read_dir(extensions)
            .with_context(|| format!("list {} (iptables installed?)", extensions.display()))?
            .filter_map(|e| e.ok().map(|e| e.path())),
    );
    let mut libraries = BTreeSet::new();
    for elf in &elves {
        let out = cmd::capture(Command::new("ldd").arg(elf)).context("run ldd")?;
        if !out.status.success() {
            bail!(
                "ldd {}: {}",
                elf.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
            let path = line
                .split("=>")
                .last()
                .unwrap_or(line)
                .split_whitespace()
                .next();
            if let Some(path) = path.filter(|p| p.starts_with('/')) {
                libraries.insert(path.to_owned());
            }
        }
    }
    let mut packages: BTreeSet<String> = DATA_PACKAGES.iter().map(|p| p.to_string()).collect();
    for library in libraries {
        packages.insert(owner(&library)?);
    }
    Ok(packages)
}

/// The installed package that ships `path` (merged-/usr aware: /lib and /usr/lib are one).
fn owner(path: &str) -> Result<String> {
    let real = fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
    let mut candidates = vec![path.to_owned(), real.display().to_string()];
    for p in candidates.clone() {
        if let Some(rest) = p.strip_prefix("/usr") {
            candidates.push(rest.to_owned());
        } else {
            candidates.push(format!("/usr{p}"));
        }
    }
    for candidate in &candidates {
        let out = cmd::capture(Command::new("dpkg-query").args(["-S", candidate]));
        if let Some(out) = out.filter(|o| o.status.success()) {
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some((package, _)) = text.lines().next().and_then(|l| l.split_once(": ")) {
                return Ok(package.split(':').next().unwrap_or(package).to_owned());
            }
        }
    }
    bail!("no installed Debian package ships {path}")
}

/// /etc/ssl/certs/ca-certificates.crt from the package's certificates, as update-ca-certificates
/// would make it (the package's own script needs a shell and openssl the image does not carry).
fn ca_bundle(rootfs: &Path) -> Result<()> {
    let certs = rootfs.join("usr/share/ca-certificates");
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in fs::read_dir(&certs).with_context(|| format!("list {}", certs.display()))? {
        for cert in fs::read_dir(dir?.path())? {
            files.push(cert?.path());
        }
    }
    files.sort();
    let mut bundle = String::new();
    for file in &files {
        bundle.push_str(&fs::read_to_string(file)?);
    }
    if files.is_empty() {
        bail!("ca-certificates carried no certificates");
    }
    let target = rootfs.join("etc/ssl/certs");
    fs::create_dir_all(&target)?;
    fs::write(target.join("ca-certificates.crt"), bundle)?;
    fs::remove_dir_all(&certs)?;
    Ok(())
}
