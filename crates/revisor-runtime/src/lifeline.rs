//! The lifeline: a small process forked at the server's start that ends the replicas' process groups
//! when the server dies, even by SIGKILL. It holds the read end of a pipe whose write end only the
//! server holds (close-on-exec, so replicas never inherit it). The server writes each replica's group
//! to it when the group starts (`+PGID START`) and when it ends (`-PGID`), so the lifeline knows
//! them without reading anything when the server goes: its data directory may already be gone. When
//! the server exits however it exits, the kernel closes the write end, the read returns end-of-file,
//! and the lifeline kills the groups still listed, then exits.
//!
//! It replaces a parent-death signal set in each replica between fork and exec. That needed `fork`,
//! which copies the server's page tables and makes every page the server writes afterwards fault
//! once: with 1,000 services a cold start spent milliseconds there. Without code between fork and
//! exec, the standard library starts replicas with `posix_spawn` (a vfork: nothing copied). The
//! lifeline also ends what the replicas started (a parent-death signal reached only the replica).

use std::collections::HashMap;
use std::sync::OnceLock;

/// The write end of this process's lifeline, once started.
static LIFELINE: OnceLock<libc::c_int> = OnceLock::new();

/// Starts the lifeline. It must be called while the process has one thread (before any runtime
/// starts): the child of a multi-threaded fork may only make async-signal-safe calls.
pub fn start() -> std::io::Result<()> {
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
    // SAFETY: the process has one thread (checked above), so the child may run any code.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            // SAFETY: the child's copy of the write end; only the server keeps one.
            unsafe { libc::close(write_end) };
            watch(read_end)
        }
        _ => {
            // SAFETY: the server keeps only the write end, open until it exits (never closed: the
            // kernel closes it, which is the signal).
            unsafe { libc::close(read_end) };
            let _ = LIFELINE.set(write_end);
            Ok(())
        }
    }
}

/// Tells the lifeline that a replica's group started (leader start time `start`) or ended (`None`).
/// Does nothing without a lifeline. A line is shorter than the pipe's atomic write size, so lines
/// from several threads never interleave.
pub(crate) fn tell(pgid: libc::pid_t, start: Option<u64>) {
    let Some(fd) = LIFELINE.get() else { return };
    let line = match start {
        Some(t) => format!("+{pgid} {t}\n"),
        None => format!("-{pgid}\n"),
    };
    // SAFETY: write(2) of a buffer we own to a descriptor this process keeps open; a lifeline that
    // died makes it fail (EPIPE, SIGPIPE being ignored), which changes nothing here.
    unsafe {
        libc::write(*fd, line.as_ptr().cast(), line.len());
    }
}

/// The lifeline's whole life: follow the server's groups, end those left when it goes, exit.
fn watch(read_end: libc::c_int) -> ! {
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
    }
    let mut groups: HashMap<libc::pid_t, u64> = HashMap::new();
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: read(2) into a buffer we own.
        let n = unsafe { libc::read(read_end, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            break;
        }
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        pending.extend_from_slice(&buf[..n as usize]);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            apply(&mut groups, std::str::from_utf8(&line).unwrap_or("").trim());
        }
    }
    for (pgid, start) in groups {
        crate::process::end_group(pgid, Some(start));
    }
    // SAFETY: ends this process without running the server's exit handlers (they are the server's).
    unsafe { libc::_exit(0) }
}

/// One line from the server: `+PGID START` or `-PGID`.
fn apply(groups: &mut HashMap<libc::pid_t, u64>, line: &str) {
    if let Some(rest) = line.strip_prefix('+') {
        let mut f = rest.split_whitespace();
        if let (Some(Ok(pgid)), Some(Ok(start))) = (f.next().map(str::parse), f.next().map(str::parse)) {
            groups.insert(pgid, start);
        }
    } else if let Some(Ok(pgid)) = line.strip_prefix('-').map(str::parse) {
        groups.remove(&pgid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lifeline_follows_groups_that_start_and_end() {
        let mut g = HashMap::new();
        apply(&mut g, "+100 5555");
        apply(&mut g, "+200 6666");
        apply(&mut g, "-100");
        apply(&mut g, "garbage");
        apply(&mut g, "+300");
        assert_eq!(g, HashMap::from([(200, 6666)]));
    }
}
