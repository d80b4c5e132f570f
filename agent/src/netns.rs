//! Entering a network namespace before the agent starts any threads.

use std::{fs::File, io, os::fd::AsRawFd, path::Path};

/// Moves the calling thread into the network namespace at `path` (e.g. `/run/netns/node`).
///
/// Call it first thing in `main`, before a runtime spawns threads: threads created later
/// inherit the namespace, earlier ones keep theirs.
pub fn enter(path: &Path) -> io::Result<()> {
    let ns = File::open(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("network namespace {}: {e}", path.display()),
        )
    })?;
    // SAFETY: a valid fd of a namespace file; CLONE_NEWNET asks the kernel to check its type.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("setns {}: {e}", path.display()),
        ));
    }
    Ok(())
}
