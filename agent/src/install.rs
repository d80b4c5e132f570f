//! What a node needs from the agent's image before pods can be wired: the CNI shim in the
//! runtime's plugin directory, and the kernel settings the data plane relies on. The DaemonSet's
//! init container runs this privileged, so the agent itself needs no writable /proc/sys.

use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

/// The shim's file name, in the image beside the agent and in the CNI plugin directory.
pub const SHIM: &str = "eniflow-cni";

/// Forwarding between pods and ENIs.
pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Loose mode, as VPC CNI sets it on the primary ENI.
const RP_FILTER_LOOSE: &str = "2";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot find the running binary's directory (to find {SHIM} beside it): {0}")]
    OwnPath(std::io::Error),
    #[error("{step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is {found:?}, eniflow needs {wanted:?}, and it cannot be written here ({source}): \
         run `eniflow-agent install` privileged first (the DaemonSet's init container does)"
    )]
    Sysctl {
        path: String,
        found: String,
        wanted: String,
        source: std::io::Error,
    },
}

fn io<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        step,
        path: path.to_owned(),
        source,
    }
}

/// Copies the shim that sits beside this binary into `cni_bin_dir`, replacing an older one by
/// rename so a runtime executing it meanwhile never sees half a file. Returns where it went.
pub fn install_shim(cni_bin_dir: &Path) -> Result<PathBuf, InstallError> {
    let own = std::env::current_exe().map_err(InstallError::OwnPath)?;
    let source = own.with_file_name(SHIM);
    let target = cni_bin_dir.join(SHIM);
    let partial = cni_bin_dir.join(format!(".{SHIM}.partial"));
    fs::create_dir_all(cni_bin_dir).map_err(io("create", cni_bin_dir))?;
    fs::copy(&source, &partial).map_err(io("copy the shim from", &source))?;
    fs::set_permissions(&partial, fs::Permissions::from_mode(0o755))
        .map_err(io("make executable", &partial))?;
    fs::rename(&partial, &target).map_err(io("move into place", &target))?;
    Ok(target)
}

/// The kernel settings the data plane needs on the node: forwarding on, and loose
/// reverse-path filtering on every interface there now (never tightening one) and by default
/// for ENIs attached later.
pub fn set_node_sysctls() -> Result<(), InstallError> {
    ensure_sysctl(IP_FORWARD, "1")?;
    // "default" is what ENIs attached later start with.
    let conf = Path::new("/proc/sys/net/ipv4/conf");
    for entry in fs::read_dir(conf).map_err(io("list", conf))?.flatten() {
        let name = entry.file_name();
        if name != "lo" && name != "all" {
            loose_rp_filter(&name.to_string_lossy())?;
        }
    }
    Ok(())
}

/// Makes reverse-path filtering on `ifname` loose unless it is already loose or off: strict
/// (1) drops a pod's replies that arrive on another ENI than the route back would take.
pub fn loose_rp_filter(ifname: &str) -> Result<(), InstallError> {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/rp_filter");
    let now = fs::read_to_string(&path).map_err(io("read", Path::new(&path)))?;
    if now.trim() == "0" {
        return Ok(());
    }
    ensure_sysctl(&path, RP_FILTER_LOOSE)
}

/// Sets the sysctl at `path` to `value` unless it already is; where /proc/sys is read-only (an
/// unprivileged container) a value already in place is enough.
pub fn ensure_sysctl(path: &str, value: &str) -> Result<(), InstallError> {
    let found = fs::read_to_string(path)
        .map_err(io("read", Path::new(path)))?
        .trim()
        .to_owned();
    if found == value {
        return Ok(());
    }
    match fs::write(path, value) {
        Ok(()) => Ok(()),
        Err(source) if matches!(source.kind(), ErrorKind::ReadOnlyFilesystem) => {
            Err(InstallError::Sysctl {
                path: path.to_owned(),
                found,
                wanted: value.to_owned(),
                source,
            })
        }
        Err(source) => Err(io("write", Path::new(path))(source)),
    }
}
