//! The lifeline: a small process forked at the server's start that ends the replicas' process groups
//! when the server dies, even by SIGKILL. It holds the read end of a pipe whose write end only the
//! server holds (close-on-exec, so replicas never inherit it): the kernel closes it when the server
//! exits however it exits, the read returns end-of-file, and the lifeline kills the groups this server
//! recorded, then exits.
//!
//! It replaces a parent-death signal set in each replica between fork and exec. That needed `fork`,
//! which copies the server's page tables and makes every page the server writes afterwards fault
//! once: with 1,000 services a cold start spent milliseconds there. Without code between fork and
//! exec, the standard library starts replicas with `posix_spawn` (a vfork: nothing copied). The
//! lifeline also ends what the replicas started (a parent-death signal reached only the replica).

use std::path::Path;

/// Starts the lifeline for the groups recorded in `groups_dir`. It must be called while the process
/// has one thread (before any runtime starts): the child of a multi-threaded fork may only make
/// async-signal-safe calls, and the lifeline reads a directory.
pub fn start(groups_dir: &Path) -> std::io::Result<()> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(std::io::Error::other(format!(
            "the lifeline must start before any thread does ({threads} are running)"
        )));
    }
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let [read_end, write_end] = fds;
    let server = std::process::id();
    // SAFETY: the process has one thread (checked above), so the child may run any code.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            // SAFETY: the child's copy of the write end; only the server keeps one.
            unsafe { libc::close(write_end) };
            watch(read_end, groups_dir, server)
        }
        _ => {
            // SAFETY: the server keeps only the write end, open until it exits (never closed: the
            // kernel closes it, which is the signal).
            unsafe { libc::close(read_end) };
            Ok(())
        }
    }
}

/// The lifeline's whole life: wait for the server to go, end its groups, exit.
fn watch(read_end: libc::c_int, groups_dir: &Path, server: u32) -> ! {
    // SAFETY: plain system calls on this process's own signals, name and descriptors.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"lifeline".as_ptr());
        // A terminal's Ctrl-C or a stop signal meant for the server must not end the lifeline first.
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGPIPE] {
            libc::signal(sig, libc::SIG_IGN);
        }
        // Hold none of the server's standard streams: a reader of its output sees end-of-file when
        // the server exits, not when the lifeline does.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
        }
        let mut byte = 0u8;
        loop {
            let n = libc::read(read_end, (&mut byte as *mut u8).cast(), 1);
            if n == 0 || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted) {
                break;
            }
        }
    }
    crate::process::end_groups(groups_dir, Some(server));
    // SAFETY: ends this process without running the server's exit handlers (they are the server's).
    unsafe { libc::_exit(0) }
}
