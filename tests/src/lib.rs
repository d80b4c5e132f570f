//! What eniflow's end-to-end tests and demo stand on: network namespaces the test creates,
//! the agent as a real process, and the real tools (ip, tc, bpftool) to look at the result.
//!
//! Everything here panics on failure, with the command and its output: tests want backtraces.

pub mod agent;
pub mod bpftool;
pub mod cluster;
pub mod cni;
pub mod dataplane;
pub mod hooks;
pub mod images;
pub mod kube;
pub mod lab;
pub mod netns;
pub mod network_policy;
pub mod procfs;
pub mod prometheus;
pub mod raw;
pub mod report;
pub mod resource_controller;
pub mod scale;
pub mod sh;
pub mod vpc_cni;

/// The number in environment variable `name`, None when it is unset; a value that is not a
/// number stops the run naming it (a typo must not quietly run the default).
pub fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    let text = std::env::var(name).ok()?;
    Some(
        text.parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
    )
}

/// Fails the test unless it runs as root: these tests create namespaces and attach programs,
/// and skipping them silently would make a missing feature look green.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "eniflow's end-to-end tests must run as root"
    );
}

/// A name unique to this process and call, with a prefix that says it is eniflow's.
pub fn unique_name(what: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "efl{}-{}-{}",
        what,
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A uniquely named directory on bpffs for one test's pins, removed with everything under it
/// when dropped (so a failed test leaves no pins behind). The directory itself is not created:
/// the agent does that.
pub struct BpffsDir(std::path::PathBuf);

/// bpffs's magic number in statfs(2).
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

pub fn bpffs_dir(what: &str) -> BpffsDir {
    ensure_bpffs();
    BpffsDir(std::path::Path::new("/sys/fs/bpf").join(unique_name(what)))
}

/// Mounts bpffs at /sys/fs/bpf unless it is there (a fresh machine may not have it). Once per
/// process: two tests mounting at once would stack mounts and hide each other's pins.
pub fn ensure_bpffs() {
    static MOUNTED: std::sync::Once = std::sync::Once::new();
    MOUNTED.call_once(|| {
        let c = std::ffi::CString::new("/sys/fs/bpf").unwrap();
        // SAFETY: a zeroed statfs is a valid out-parameter; c is NUL-terminated.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        let mounted =
            unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC;
        if !mounted {
            sh::run("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"]);
        }
    });
}

impl std::ops::Deref for BpffsDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for BpffsDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes what an earlier, crashed test run left: namespaces and bpffs directories named by
/// `unique_name` whose process is gone. Those of live processes (other tests) are kept.
pub fn sweep_crashed_runs() {
    fn dead_owner(name: &str) -> bool {
        let Some(rest) = name.strip_prefix("efl") else {
            return false;
        };
        let mut parts = rest.rsplitn(3, '-');
        let (Some(_n), Some(pid), Some(_what)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        pid.parse::<u32>()
            .is_ok_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    }
    for (dir, is_netns) in [("/run/netns", true), ("/sys/fs/bpf", false)] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !dead_owner(&name) {
                continue;
            }
            if is_netns {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &name])
                    .status();
            } else {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}
