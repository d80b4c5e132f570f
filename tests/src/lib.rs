//! What eniflow's end-to-end tests and demo stand on: network namespaces the test creates,
//! the agent as a real process, and the real tools (ip, tc, bpftool) to look at the result.
//!
//! Everything here panics on failure, with the command and its output: tests want backtraces.

pub mod agent;
pub mod bpftool;
pub mod netns;
pub mod sh;

/// Fails the test unless it runs as root: these tests create namespaces and attach programs,
/// and skipping them silently would make a missing feature look green.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "eniflow's end-to-end tests must run as root");
}

/// A name unique to this process and call, with a prefix that says it is eniflow's.
pub fn unique_name(what: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("efl{}-{}-{}", what, std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}
