//! Makes sure pinned objects land on a bpf filesystem.

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where bpffs is conventionally mounted; eniflow mounts it there if nothing has.
pub const DEFAULT_MOUNT: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("{0} is not on a bpf filesystem (mount one there, or choose a directory under {DEFAULT_MOUNT})")]
    NotBpffs(PathBuf),
    #[error("cannot mount bpffs at {DEFAULT_MOUNT}: {0}")]
    Mount(io::Error),
    #[error("cannot inspect {0}: {1}")]
    Statfs(PathBuf, io::Error),
}

/// Ensures `dir` (which may not exist yet) would be created on bpffs, mounting bpffs at
/// `/sys/fs/bpf` when `dir` is below it and nothing is mounted there yet.
pub fn ensure(dir: &Path) -> Result<(), BpffsError> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if is_bpffs(existing)? {
        return Ok(());
    }
    if dir.starts_with(DEFAULT_MOUNT) && Path::new(DEFAULT_MOUNT).is_dir() {
        mount_default()?;
        if is_bpffs(&first_existing(dir))? {
            return Ok(());
        }
    }
    Err(BpffsError::NotBpffs(dir.to_path_buf()))
}

fn first_existing(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

fn is_bpffs(path: &Path) -> Result<bool, BpffsError> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| BpffsError::Statfs(path.to_path_buf(), e.into()))?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a properly sized out-parameter.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(BpffsError::Statfs(
            path.to_path_buf(),
            io::Error::last_os_error(),
        ));
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

fn mount_default() -> Result<(), BpffsError> {
    let target = CString::new(DEFAULT_MOUNT).expect("no NUL in a constant");
    let fstype = CString::new("bpf").expect("no NUL in a constant");
    // SAFETY: all pointers are valid NUL-terminated strings; no mount data.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(BpffsError::Mount(io::Error::last_os_error()));
    }
    tracing::info!("mounted bpffs at {DEFAULT_MOUNT}");
    Ok(())
}
