//! `eniflow-peak-rss <report> <program> [args]`: runs `program` (stdin, stdout, stderr and the
//! environment passed through) and writes its peak RSS in KiB to the file `report`; exits as
//! `program` did.
//!
//! Why a process of its own: the kernel records, at exec, the peak RSS of the memory the new
//! program replaces, and a child spawned straight from a large process (a bench driver, with
//! posix_spawn's shared memory or fork's copy) starts its peak at the parent's size. Forked
//! from this small process, the program's peak starts at this process's size, which the bench
//! also reports (this launcher running `true`) as the floor of the figure.

use std::{ffi::CString, os::unix::ffi::OsStrExt};

fn main() {
    let args: Vec<CString> = std::env::args_os()
        .skip(1)
        .map(|a| CString::new(a.as_bytes()).expect("no NUL in arguments"))
        .collect();
    let [report, program @ ..] = args.as_slice() else {
        eprintln!("usage: eniflow-peak-rss <report> <program> [args]");
        std::process::exit(2);
    };
    assert!(!program.is_empty(), "eniflow-peak-rss: no program given");
    let mut argv: Vec<*const libc::c_char> = program.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: this process is single-threaded; the child only calls execvp and _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: argv is NUL-terminated and its strings outlive the call.
        unsafe {
            libc::execvp(argv[0], argv.as_ptr());
            libc::_exit(127);
        }
    }
    assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
    let mut status = 0;
    // SAFETY: plain data the kernel fills, for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    let report = std::path::Path::new(std::ffi::OsStr::from_bytes(report.as_bytes()));
    std::fs::write(report, usage.ru_maxrss.to_string()).expect("write the report");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    std::process::exit(code);
}
