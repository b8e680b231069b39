//! A pre-forked server for replicas that run revisor itself (model servers, most of all).
//!
//! Starting a replica by exec pays for loading and relocating a large binary and initialising its
//! runtime before the replica's own work begins: most of a model revision's cold start on a quiet
//! machine (bench/RESULTS.md). The server here (`revisor __prefork`) does that once. It is started
//! by exec like any replica, with one end of a `SOCK_SEQPACKET` socket pair as its standard input,
//! stays single-threaded, and forks one child per request: the child takes the request's standard
//! output and error (sent as a file descriptor), working directory, environment and arguments, and
//! runs the command in-process, exactly as `revisor <args>` would after exec.
//!
//! The server reports each child's pid (with a pidfd) and, when it ends, its wait status. The
//! runtime (`Forked`) waits on that status, and falls back to the pidfd when the server itself is
//! gone. Children put themselves in their own process group, as spawned replicas do, so signals
//! and the lifeline (`lifeline.rs`) treat both kinds alike. The server exits when the runtime's end
//! of the socket closes, which happens however the runtime ends, and then kills the groups of the
//! children it still has: a request the runtime sent as it was stopping leaves no orphan.
//!
//! Only what the child can take after `main` has started is eligible (`eligible`): an environment
//! that the dynamic loader or the allocator read before `main` (`LD_*`, `MALLOC_*`, `MIMALLOC_*`,
//! `GLIBC_TUNABLES`) means exec, as before.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

/// The hidden subcommand that runs the pre-fork server.
pub const COMMAND: &str = "__prefork";

/// The largest request (arguments and environment) sent to the server; a larger one is exec'd.
const MAX_MESSAGE: usize = 256 * 1024;
/// The largest reply the server sends (an `E` reply's reason is cut to fit).
const MAX_REPLY: usize = 2048;
/// How long a spawn waits for the server's answer before the replica is exec'd instead.
const SPAWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The environment the server itself starts with: what revisor-local gives replicas of revisor, read
/// by the allocator before `main` (see `eligible`).
const SERVER_ENV: [(&str, &str); 1] = [("MIMALLOC_ALLOW_THP", "0")];

/// Whether a replica of `program` with this environment can be forked from the server of `exe`.
pub fn eligible(exe: &Path, program: &Path, args: &[String], env: &[(String, String)], cwd: Option<&Path>) -> bool {
    let before_main = |k: &str| {
        k.starts_with("LD_") || k.starts_with("MALLOC_") || k.starts_with("MIMALLOC_") || k == "GLIBC_TUNABLES"
    };
    let size: usize = args.iter().map(|a| a.len() + 1).sum::<usize>()
        + env.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>()
        + cwd.map_or(0, |c| c.as_os_str().len());
    program == exe
        && size + exe.as_os_str().len() < MAX_MESSAGE - 64
        && !args.iter().any(|a| a.contains('\0'))
        && !env
            .iter()
            .any(|(k, v)| k.is_empty() || k.contains(['\0', '=']) || v.contains('\0'))
        && env
            .iter()
            .all(|(k, v)| !before_main(k) || SERVER_ENV.contains(&(k.as_str(), v.as_str())))
        && cwd.is_none_or(|c| !c.as_os_str().is_empty() && !c.as_os_str().as_encoded_bytes().contains(&0))
}

// The request: NUL-terminated fields `id`, `cwd` (empty: none), the number of arguments, the
// arguments, then `KEY=value` environment entries to the end. The log file travels as SCM_RIGHTS.
// Replies: `S <id> <pid>` with a pidfd, `E <id> <reason>`, and `X <pid> <wait status>` when a child
// ends (always after its `S`).

fn encode(id: u64, args: &[String], env: &[(String, String)], cwd: Option<&Path>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut field = |b: &[u8]| {
        out.extend_from_slice(b);
        out.push(0);
    };
    field(id.to_string().as_bytes());
    field(cwd.map_or(&[][..], |c| c.as_os_str().as_encoded_bytes()));
    field(args.len().to_string().as_bytes());
    for a in args {
        field(a.as_bytes());
    }
    for (k, v) in env {
        field(format!("{k}={v}").as_bytes());
    }
    out
}

struct Request {
    id: u64,
    cwd: Option<OsString>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

fn decode(msg: &[u8]) -> Option<Request> {
    let mut fields = msg.strip_suffix(&[0])?.split(|b| *b == 0);
    let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
    let id = text(fields.next()?)?.parse().ok()?;
    let cwd = fields.next()?;
    let cwd = (!cwd.is_empty()).then(|| OsString::from_vec(cwd.to_vec()));
    let n: usize = text(fields.next()?)?.parse().ok()?;
    let args = fields
        .by_ref()
        .take(n)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect::<Vec<_>>();
    if args.len() != n {
        return None;
    }
    let env = fields
        .map(|e| {
            let at = e.iter().position(|b| *b == b'=')?;
            Some((
                OsString::from_vec(e[..at].to_vec()),
                OsString::from_vec(e[at + 1..].to_vec()),
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Request { id, cwd, args, env })
}

/// Sends one message, with `fd` attached when given.
fn send(sock: RawFd, data: &[u8], fd: Option<RawFd>) -> io::Result<()> {
    // SAFETY: the iovec and control buffer outlive the call; the control message is built with the
    // CMSG_* helpers inside a buffer sized by CMSG_SPACE.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let mut control = [0u64; 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some(fd) = fd {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        }
        if libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives one message into `buf`: its length (0 at end of stream) and the file descriptor attached
/// to it, if any (close-on-exec).
fn recv(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    // SAFETY: as in `send`; a received descriptor is owned by us from here on.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u64; 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut fd = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
                fd = Some(OwnedFd::from_raw_fd(raw));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        // A message cut short is an error; a descriptor that could not be passed (the receiver out
        // of descriptors) is only missing, and the one request or reply it came with fails alone.
        if msg.msg_flags & libc::MSG_TRUNC != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a message was truncated"));
        }
        Ok((n as usize, fd))
    }
}

/// A connected pair of `SOCK_SEQPACKET` sockets (close-on-exec): the runtime's end and the server's.
fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut pair = [0; 2];
    // SAFETY: socketpair fills two new descriptors, owned below.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    })?;
    // SAFETY: both are new descriptors nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) })
}

/// Registers a descriptor with the reactor.
fn watch(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open for its whole life and always returns the same descriptor.
    unsafe { AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Runs the pre-fork server on the socket at standard input; `run` is the binary's own `main`
/// after argument collection, called in each child with the request's arguments.
pub fn serve(run: fn(Vec<OsString>) -> i32) -> ! {
    match serve_until_closed(run) {
        Ok(()) => std::process::exit(0),
        // The runtime's end closed while a reply was on its way: the same end.
        Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) => {
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("revisor {COMMAND}: {e} (this command is started by `revisor serve`, not by hand)");
            std::process::exit(1)
        }
    }
}

fn serve_until_closed(run: fn(Vec<OsString>) -> i32) -> io::Result<()> {
    let mut children = HashSet::new();
    let result = serve_children(run, &mut children);
    // The runtime is gone (its end closed, or its process died): so must everything forked for it.
    // Replicas it was told about are ended by it or its lifeline; these are also those whose start
    // it never heard of (asked for as it was stopping). Their groups cannot have been reused: they
    // are this process's unreaped children.
    for pid in children {
        // SAFETY: kill(2) of the group an unreaped child of ours leads.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    result
}

fn serve_children(run: fn(Vec<OsString>) -> i32, children: &mut HashSet<i32>) -> io::Result<()> {
    // SAFETY: getppid(2) has no preconditions.
    let parent = unsafe { libc::getppid() };
    let exe: OsString = std::env::args_os().next().unwrap_or_default();
    retitle(&[exe, COMMAND.into()]);
    name_process(b"prefork");
    let sock: RawFd = 0;
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes an int into `kind`.
    cvt(unsafe {
        libc::getsockopt(
            sock,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    if kind != libc::SOCK_SEQPACKET {
        return Err(io::Error::other("standard input is not a SOCK_SEQPACKET socket"));
    }
    // Children's ends arrive on a signalfd, so the loop below waits on one poll.
    // SAFETY: plain signal-mask and signalfd calls on a zeroed, then filled, set.
    let sigfd = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        cvt(libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()))?;
        OwnedFd::from_raw_fd(cvt(libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK))?)
    };
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: sock,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sigfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on two valid descriptors.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
            // SAFETY: reads whole siginfo records into a buffer of that size; EAGAIN ends it.
            while unsafe { libc::read(sigfd.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) } > 0 {}
            reap(sock, children)?;
        }
        // SAFETY: getppid(2) has no preconditions. A runtime that died may leave requests queued in
        // the socket: none is started for a parent that is gone.
        if unsafe { libc::getppid() } != parent {
            return Ok(());
        }
        if fds[0].revents != 0 {
            let (n, log) = match recv(sock, &mut buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other?,
            };
            if n == 0 {
                return Ok(());
            }
            match (decode(&buf[..n]), log) {
                (Some(req), Some(log)) => start(sock, sigfd.as_raw_fd(), req, log, run, children)?,
                (Some(req), None) => refuse(sock, req.id, "the request's log file did not arrive")?,
                // Nothing to answer to: the runtime's wait for it times out, and it execs.
                (None, _) => eprintln!("revisor {COMMAND}: a malformed request, ignored"),
            }
        }
    }
}

/// Reports every child that has ended.
fn reap(sock: RawFd, children: &mut HashSet<i32>) -> io::Result<()> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid for any child, without blocking.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return Ok(());
        }
        children.remove(&pid);
        send(sock, format!("X {pid} {status}").as_bytes(), None)?;
    }
}

/// Forks the child a request asks for (recorded in `children` at once, before anything can fail)
/// and answers the request.
fn start(
    sock: RawFd,
    sigfd: RawFd,
    req: Request,
    log: OwnedFd,
    run: fn(Vec<OsString>) -> i32,
    children: &mut HashSet<i32>,
) -> io::Result<()> {
    if let Some(dir) = &req.cwd {
        if !Path::new(dir).is_dir() {
            let why = format!("working directory {:?} is not a directory", Path::new(dir));
            return refuse(sock, req.id, &why);
        }
    }
    // SAFETY: this process is single-threaded (it never starts a thread), so the child may run
    // anything after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return refuse(sock, req.id, &format!("fork: {}", io::Error::last_os_error()));
    }
    if pid == 0 {
        become_child(sigfd, req, log, run);
    }
    children.insert(pid);
    // Also here, so the group exists before the runtime records it (the child may not have run yet).
    // SAFETY: setpgid on our own child; failure only means the child did it first.
    unsafe { libc::setpgid(pid, pid) };
    drop(log);
    // SAFETY: pidfd_open on our own, unreaped child: the pid cannot have been reused.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    if pidfd < 0 {
        let why = format!("pidfd_open: {}", io::Error::last_os_error());
        // SAFETY: the child is ours; it is reaped and reported as any other.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        return refuse(sock, req.id, &why);
    }
    // SAFETY: pidfd_open returned a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    send(sock, format!("S {} {pid}", req.id).as_bytes(), Some(pidfd.as_raw_fd()))
}

/// Answers a request that started nothing, with the reason (cut to what a reply can carry).
fn refuse(sock: RawFd, id: u64, why: &str) -> io::Result<()> {
    let mut text = format!("E {id} {why}");
    if text.len() > MAX_REPLY {
        let mut end = MAX_REPLY - 3;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    send(sock, text.as_bytes(), None)
}

/// In the child: becomes the requested command and never returns.
fn become_child(sigfd: RawFd, req: Request, log: OwnedFd, run: fn(Vec<OsString>) -> i32) -> ! {
    // SAFETY: single-threaded child of fork: descriptor and signal-mask calls on what this process
    // owns, then environment changes while no other thread can read it.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::setpgid(0, 0);
        libc::close(sigfd);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        let ok = null >= 0
            && libc::dup2(null, 0) == 0
            && libc::dup2(log.as_raw_fd(), 1) == 1
            && libc::dup2(log.as_raw_fd(), 2) == 2;
        if null > 2 {
            libc::close(null);
        }
        drop(log);
        if !ok {
            libc::_exit(127);
        }
        for (k, _) in std::env::vars_os() {
            std::env::remove_var(k);
        }
        for (k, v) in &req.env {
            // `eligible` lets no name through that set_var would refuse.
            if !k.is_empty() {
                std::env::set_var(k, v);
            }
        }
    }
    retitle(&req.args);
    if let Some(dir) = &req.cwd {
        if let Err(e) = std::env::set_current_dir(dir) {
            eprintln!("revisor: cannot change to working directory {:?}: {e}", Path::new(dir));
            // SAFETY: ends the child without running the server's exit handlers.
            unsafe { libc::_exit(127) };
        }
    }
    let code = std::panic::catch_unwind(move || run(req.args)).unwrap_or(101);
    std::process::exit(code)
}

/// Makes this process show `args` as its command line (`/proc/PID/cmdline`, what `ps` shows) and
/// the program's file name as its name, as an exec'd replica would: the server was started with
/// room for that (`TITLE_ROOM`), and the kernel reads the command line from that memory. A longer
/// command line is cut at the room's end.
fn retitle(args: &[OsString]) {
    let Some((start, end)) = std::fs::read_to_string("/proc/self/stat").ok().and_then(|stat| {
        // Fields 48 and 49 (arg_start, arg_end), counted after the parenthesised name (field 2).
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut f = rest.split_whitespace().skip(45);
        Some((f.next()?.parse::<usize>().ok()?, f.next()?.parse::<usize>().ok()?))
    }) else {
        return;
    };
    if end <= start {
        return;
    }
    let mut title: Vec<u8> = args
        .iter()
        .flat_map(|a| a.as_encoded_bytes().iter().copied().chain([0]))
        .collect();
    title.resize(end - start, 0);
    if let Some(last) = title.last_mut() {
        *last = 0;
    }
    // SAFETY: [arg_start, arg_end) is this process's own argument memory, on its stack and writable;
    // nothing in the child reads the old arguments (it parses `args`).
    unsafe { std::ptr::copy_nonoverlapping(title.as_ptr(), start as *mut u8, title.len()) };
    name_process(
        args.first()
            .and_then(|a| Path::new(a).file_name())
            .unwrap_or_default()
            .as_encoded_bytes(),
    );
}

/// Sets this process's name (`/proc/PID/comm`, at most 15 bytes).
fn name_process(name: &[u8]) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) };
}

/// The room kept in the server's command line for its children's (`retitle`).
const TITLE_ROOM: usize = 8 * 1024;

/// The runtime's side: starts the server, asks it for children, and routes what it reports.
pub struct Prefork {
    exe: PathBuf,
    conn: Mutex<Option<Arc<Conn>>>,
}

struct Conn {
    sock: AsyncFd<OwnedFd>,
    state: Mutex<ConnState>,
    /// The server, which exits when `sock` closes.
    _server: tokio::process::Child,
}

#[derive(Default)]
struct ConnState {
    next_id: u64,
    closed: bool,
    spawns: HashMap<u64, oneshot::Sender<io::Result<Forked>>>,
    exits: HashMap<i32, oneshot::Sender<i32>>,
}

impl Prefork {
    /// A pre-fork server of `exe`, started now (in the background: replicas are exec'd until it is up).
    /// Must be called inside a tokio runtime.
    pub fn start(exe: PathBuf) -> Arc<Prefork> {
        let p = Arc::new(Prefork {
            exe,
            conn: Mutex::new(None),
        });
        p.connect();
        p
    }

    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// Starts a server if none is running.
    fn connect(self: &Arc<Self>) {
        let mut conn = self.conn.lock().unwrap();
        if conn.is_some() {
            return;
        }
        match Conn::start(&self.exe) {
            Ok(c) => {
                let c = Arc::new(c);
                *conn = Some(c.clone());
                let me = Arc::downgrade(self);
                tokio::spawn(async move {
                    let why = c.read_replies().await;
                    tracing::warn!("the pre-fork server ended ({why}); replicas are exec'd until it is restarted");
                    if let Some(me) = me.upgrade() {
                        let mut conn = me.conn.lock().unwrap();
                        if conn.as_ref().is_some_and(|now| Arc::ptr_eq(now, &c)) {
                            *conn = None;
                        }
                    }
                });
            }
            Err(e) => tracing::warn!("cannot start the pre-fork server {}: {e}", self.exe.display()),
        }
    }

    /// Forks a replica: `args` without the program, `env` all of it, output appended to `log`.
    /// `None` when there is no server to ask (one is started for the next time).
    pub async fn spawn(
        self: &Arc<Self>,
        args: &[String],
        env: &[(String, String)],
        cwd: Option<&Path>,
        log: &std::fs::File,
    ) -> Option<io::Result<Forked>> {
        let conn = self.conn.lock().unwrap().clone();
        let Some(conn) = conn else {
            self.connect();
            return None;
        };
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = conn.state.lock().unwrap();
            if st.closed {
                return None;
            }
            st.next_id += 1;
            let id = st.next_id;
            st.spawns.insert(id, tx);
            id
        };
        let mut all = vec![self.exe.display().to_string()];
        all.extend(args.iter().cloned());
        let msg = encode(id, &all, env, cwd);
        loop {
            let Ok(mut ready) = conn.sock.writable().await else {
                return None;
            };
            match ready.try_io(|s| send(s.as_raw_fd(), &msg, Some(log.as_raw_fd()))) {
                Ok(Ok(())) => break,
                Ok(Err(e)) => {
                    conn.state.lock().unwrap().spawns.remove(&id);
                    tracing::warn!("the pre-fork server did not take a request: {e}");
                    return None;
                }
                Err(_would_block) => continue,
            }
        }
        // Dropped unanswered only when the server ends. An answer later than the timeout finds no
        // one waiting, and its child is killed (`route`).
        match tokio::time::timeout(SPAWN_TIMEOUT, rx).await {
            Ok(answer) => answer.ok(),
            Err(_) => {
                conn.state.lock().unwrap().spawns.remove(&id);
                tracing::warn!("the pre-fork server did not answer within {SPAWN_TIMEOUT:?}: exec'ing the replica");
                None
            }
        }
    }
}

impl Conn {
    fn start(exe: &Path) -> io::Result<Conn> {
        let (ours, theirs) = seqpacket_pair()?;
        // SAFETY: fcntl on our own descriptor.
        cvt(unsafe { libc::fcntl(ours.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) })?;
        let server = tokio::process::Command::new(exe)
            .arg(COMMAND)
            // Room for the children's command lines (`retitle`); blanked at once.
            .arg(" ".repeat(TITLE_ROOM))
            .env_clear()
            .envs(SERVER_ENV)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            // Not killed when dropped: it ends when our end of the socket closes, and ends what it
            // started then (a SIGKILL would leave orphans of requests it had not answered).
            // Its own group: a terminal's Ctrl-C is for `serve`, which stops the replicas in order.
            .process_group(0)
            .spawn()?;
        Ok(Conn {
            sock: watch(ours)?,
            state: Mutex::new(ConnState::default()),
            _server: server,
        })
    }

    /// Routes replies until the server ends; returns why it ended.
    async fn read_replies(&self) -> String {
        let mut buf = vec![0u8; MAX_REPLY + 64];
        let why = loop {
            let mut ready = match self.sock.readable().await {
                Ok(r) => r,
                Err(e) => break e.to_string(),
            };
            match ready.try_io(|s| recv(s.as_raw_fd(), &mut buf)) {
                Err(_would_block) => continue,
                Ok(Err(e)) => break e.to_string(),
                Ok(Ok((0, _))) => break "it closed its socket".to_string(),
                Ok(Ok((n, fd))) => {
                    if let Err(e) = self.route(&buf[..n], fd) {
                        break e;
                    }
                }
            }
        };
        let mut st = self.state.lock().unwrap();
        st.closed = true;
        // Dropping the senders tells every waiter: spawns fall back to exec, waits to the pidfd.
        st.spawns.clear();
        st.exits.clear();
        why
    }

    fn route(&self, msg: &[u8], fd: Option<OwnedFd>) -> Result<(), String> {
        let text = std::str::from_utf8(msg).map_err(|_| "a reply that is not UTF-8".to_string())?;
        let bad = || format!("an unexpected reply {text:?}");
        let mut parts = text.splitn(3, ' ');
        let (kind, a, b) = (parts.next(), parts.next(), parts.next());
        let mut st = self.state.lock().unwrap();
        match (kind, a, b) {
            (Some("S"), Some(id), Some(pid)) => {
                let id: u64 = id.parse().map_err(|_| bad())?;
                let pid: i32 = pid.parse().map_err(|_| bad())?;
                let waiter = st.spawns.remove(&id);
                // Without its pidfd (this process out of descriptors) or with no one waiting (the
                // spawn gave up), the child is not supervised: it is ended (the server's unreaped
                // child, so its group is its own), and the spawn, if waiting, fails alone.
                let pidfd = match fd.map(watch) {
                    Some(Ok(pidfd)) if waiter.is_some() => pidfd,
                    lost => {
                        // SAFETY: kill(2) of the group of the server's child, not yet reaped.
                        unsafe { libc::kill(-pid, libc::SIGKILL) };
                        if let (Some(w), Some(Err(e))) = (waiter, lost) {
                            let _ = w.send(Err(io::Error::other(format!("watching the forked replica: {e}"))));
                        }
                        return Ok(());
                    }
                };
                let (tx, rx) = oneshot::channel();
                st.exits.insert(pid, tx);
                if let Some(waiter) = waiter {
                    let forked = Forked {
                        pid,
                        pidfd,
                        status: Some(rx),
                        done: None,
                    };
                    // A waiter that went away drops the Forked, which kills the child.
                    let _ = waiter.send(Ok(forked));
                }
            }
            (Some("E"), Some(id), why) => {
                let id: u64 = id.parse().map_err(|_| bad())?;
                if let Some(waiter) = st.spawns.remove(&id) {
                    let _ = waiter.send(Err(io::Error::other(why.unwrap_or("").to_string())));
                }
            }
            (Some("X"), Some(pid), Some(status)) => {
                let pid: i32 = pid.parse().map_err(|_| bad())?;
                let status: i32 = status.parse().map_err(|_| bad())?;
                if let Some(tx) = st.exits.remove(&pid) {
                    let _ = tx.send(status);
                }
            }
            _ => return Err(bad()),
        }
        Ok(())
    }
}

/// A replica forked by the pre-fork server. Dropping it before it has ended kills it (as a spawned
/// replica's `kill_on_drop` does).
pub struct Forked {
    pid: i32,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<oneshot::Receiver<i32>>,
    done: Option<ExitStatus>,
}

impl Forked {
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Waits for the replica to end (cancel-safe). When the server ended first, the end is seen
    /// through the pidfd, and its status is unknown: an error says so.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.done {
            return Ok(s);
        }
        if let Some(rx) = self.status.as_mut() {
            match rx.await {
                Ok(raw) => {
                    let s = ExitStatus::from_raw(raw);
                    self.done = Some(s);
                    return Ok(s);
                }
                Err(_) => self.status = None,
            }
        }
        loop {
            let mut ready = self.pidfd.readable().await?;
            // A pidfd polls readable once the process has ended.
            let mut fds = [libc::pollfd {
                fd: self.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: poll with a zero timeout on our own descriptor.
            if unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) } > 0 {
                return Err(io::Error::other(
                    "it ended after the pre-fork server that started it, so its exit status is unknown",
                ));
            }
            ready.clear_ready();
        }
    }

    /// Whether it has not ended: its pidfd is not readable yet (the pid, and so its group, is
    /// still its own).
    pub fn running(&self) -> bool {
        if self.done.is_some() {
            return false;
        }
        let mut fds = [libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: poll with a zero timeout on our own descriptor.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) == 0 }
    }

    /// Sends `sig` to the replica itself (not its group), if it has not been reaped.
    fn signal(&self, sig: libc::c_int) {
        // SAFETY: pidfd_send_signal on our own pidfd; it cannot reach a reused pid.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
    }
}

impl Drop for Forked {
    fn drop(&mut self) {
        if self.done.is_none() {
            self.signal(libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_survive_the_wire() {
        let args = vec![
            "revisor".to_string(),
            "model-server".into(),
            "--name".into(),
            "m n".into(),
        ];
        let env = vec![("PORT".to_string(), "8080".to_string()), ("A".into(), "x=y".into())];
        let msg = encode(7, &args, &env, Some(Path::new("/tmp/w d")));
        let r = decode(&msg).unwrap();
        assert_eq!(r.id, 7);
        assert_eq!(r.cwd.as_deref(), Some(std::ffi::OsStr::new("/tmp/w d")));
        assert_eq!(r.args, args.iter().map(OsString::from).collect::<Vec<_>>());
        assert_eq!(r.env[1], ("A".into(), "x=y".into()));
        let none = decode(&encode(1, &[], &[], None)).unwrap();
        assert!(none.cwd.is_none() && none.args.is_empty() && none.env.is_empty());
        assert!(decode(b"1\0\x003\0a\0").is_none(), "fewer arguments than announced");
        assert!(decode(b"x\0").is_none());
    }

    /// What the server was asked for as the runtime went (a request it answered to no one) is
    /// ended with it: the bench's stopped servers left such model servers running.
    #[test]
    fn requests_left_when_the_runtime_goes_leave_no_orphan() {
        let exe = revisor_testapp::upstream_binary();
        let (ours, theirs) = seqpacket_pair().unwrap();
        let mut server = std::process::Command::new(&exe)
            .arg(COMMAND)
            .stdin(Stdio::from(theirs))
            .spawn()
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = tempfile::tempfile().unwrap();
        let args = [exe.display().to_string()];
        let msg = encode(1, &args, &[("PORT".into(), port.to_string())], None);
        send(ours.as_raw_fd(), &msg, Some(log.as_raw_fd())).unwrap();
        // The child starts: it listens on its port.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "the forked child never listened");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // The runtime goes without reading the answer.
        drop(ours);
        assert!(server.wait().unwrap().success());
        let alive = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while alive() {
            assert!(
                std::time::Instant::now() < deadline,
                "the forked child outlived the runtime"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn only_what_can_be_set_after_main_is_forked() {
        let exe = Path::new("/bin/revisor");
        let env = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let args = ["model-server".to_string()];
        assert!(eligible(exe, exe, &args, &env("PORT", "1"), None));
        assert!(eligible(exe, exe, &args, &env("MIMALLOC_ALLOW_THP", "0"), None));
        assert!(
            !eligible(exe, Path::new("/bin/python3"), &args, &[], None),
            "another program"
        );
        for (k, v) in [
            ("LD_LIBRARY_PATH", "/x"),
            ("MIMALLOC_ALLOW_THP", "1"),
            ("MALLOC_ARENA_MAX", "2"),
            ("GLIBC_TUNABLES", "x"),
        ] {
            assert!(
                !eligible(exe, exe, &args, &env(k, v), None),
                "{k}={v} is read before main"
            );
        }
        assert!(!eligible(exe, exe, &["a\0b".into()], &[], None));
        assert!(!eligible(exe, exe, &args, &env("A=B", "c"), None));
        assert!(!eligible(exe, exe, &args, &[], Some(Path::new(""))));
        assert!(
            !eligible(exe, exe, &["x".repeat(MAX_MESSAGE)], &[], None),
            "too large for one message"
        );
    }
}
