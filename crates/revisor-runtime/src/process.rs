//! Starting and signalling child processes, and reading the tail of their output.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;

use tokio::process::{Child, Command};

use crate::prefork::{self, Forked, Prefork};
use crate::spec::ProcessSpec;

/// A running replica: spawned by exec, or forked by the pre-fork server (`prefork.rs`).
pub enum Proc {
    Spawned(Child),
    Forked(Forked),
}

impl Proc {
    /// Its pid, while it has not been reaped (a forked one: while it has not ended, since the
    /// pre-fork server reaps it at once).
    pub fn id(&self) -> Option<u32> {
        match self {
            Proc::Spawned(c) => c.id(),
            Proc::Forked(f) => f.running().then(|| f.id()),
        }
    }

    /// Waits for it to end (cancel-safe).
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self {
            Proc::Spawned(c) => c.wait().await,
            Proc::Forked(f) => f.wait().await,
        }
    }

    pub fn forked(&self) -> bool {
        matches!(self, Proc::Forked(_))
    }
}

/// Starts one replica with `PORT` set; its stdout and stderr are appended to `log`. A replica of the
/// pre-fork server's program is forked from it when it can be (`prefork::eligible`), else exec'd.
pub async fn spawn(spec: &ProcessSpec, port: u16, log: &Path, prefork: Option<&Arc<Prefork>>) -> std::io::Result<Proc> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let port_text = port.to_string();
    let lookup = |name: &str| match name {
        "PORT" => Some(port_text.as_str()),
        _ => spec.env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()),
    };
    let args: Vec<String> = spec.args.iter().map(|a| expand(a, &lookup)).collect();
    let mut env: Vec<(String, String)> = spec.env.iter().filter(|(k, _)| k != "PORT").cloned().collect();
    env.push(("PORT".into(), port_text.clone()));
    let cwd = spec.working_dir.as_deref();
    if let Some(p) = prefork.filter(|p| prefork::eligible(p.exe(), &spec.program, &args, &env, cwd)) {
        if let Some(forked) = p.spawn(&args, &env, cwd, &out).await {
            return forked.map(Proc::Forked);
        }
    }
    let err = out.try_clone()?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    // Its own process group, so that signals reach the whole replica. Nothing else runs between fork
    // and exec, so the standard library uses posix_spawn (no copy of the server's page tables); the
    // lifeline (`lifeline.rs`) ends the group if the server is killed.
    cmd.process_group(0);
    cmd.spawn().map(Proc::Spawned)
}

/// Sends a signal to the replica's whole process group.
pub fn signal(child: &Proc, sig: libc::c_int) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a negative pid signals the process group the replica leads (made at
        // spawn, or by the forked child and the pre-fork server both).
        unsafe {
            libc::kill(-(pid as libc::pid_t), sig);
        }
    }
}

/// A replica's process group, recorded in a directory while it may have members, so that when the
/// server is killed before it could stop them (SIGKILL), its lifeline ends them at once (`lifeline.rs`),
/// or else its next start does. Dropping it ends the group: whatever the replica left behind when it
/// exited or was stopped is killed.
pub struct Group {
    pgid: libc::pid_t,
    record: Option<std::path::PathBuf>,
}

impl Group {
    /// The group `child` leads, recorded in `dir` (file: the group id; content: the leader's start
    /// time, to tell it from a later process with the same id) and told to the lifeline.
    pub fn new(child: &Proc, dir: &Path) -> Group {
        let pgid = child.id().unwrap_or(0) as libc::pid_t;
        let record = (pgid > 0).then(|| start_time(pgid)).flatten().and_then(|t| {
            std::fs::create_dir_all(dir).ok()?;
            let path = dir.join(pgid.to_string());
            // Written whole, then renamed: a lifeline reading the directory meanwhile never sees half.
            let partial = dir.join(format!(".{pgid}.new"));
            let written = std::fs::write(&partial, t.to_string()).and_then(|_| std::fs::rename(&partial, &path));
            crate::lifeline::tell(pgid, Some(t));
            if let Err(e) = written {
                tracing::warn!("recording process group {pgid} in {}: {e}", dir.display());
                return None;
            }
            Some(path)
        });
        Group { pgid, record }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.pgid > 0 {
            // SAFETY: kill(2) on the group this replica led; a group id is not reused while any of
            // its members lives, and ESRCH (none left) is the usual answer.
            unsafe {
                libc::kill(-self.pgid, libc::SIGKILL);
            }
        }
        crate::lifeline::tell(self.pgid, None);
        if let Some(r) = &self.record {
            let _ = std::fs::remove_file(r);
        }
    }
}

/// A process's start time (clock ticks since boot: field 22 of `/proc/PID/stat`).
fn start_time(pid: libc::pid_t) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// The fields of `/proc/PID/stat` after the command name (field 3 first).
fn stat_fields(pid: libc::pid_t) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Whether any process is in group `pgid`.
fn group_has_members(pgid: libc::pid_t) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .any(|pid| stat_fields(pid).and_then(|f| f.get(2)?.parse::<libc::pid_t>().ok()) == Some(pgid))
}

/// Ends the process groups a previous run recorded in `dir` and left running; returns how many.
/// A group is ours when its leader is the process recorded (same start time), or when the leader is
/// gone and members remain (the id cannot have been reused while they live).
pub fn end_leftovers(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut ended = 0;
    for e in entries.flatten() {
        let path = e.path();
        let Some(pgid) = e.file_name().to_str().and_then(|n| n.parse::<libc::pid_t>().ok()) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let recorded: Option<u64> = text.split_whitespace().next().and_then(|t| t.parse().ok());
        if end_group(pgid, recorded) {
            ended += 1;
        }
        let _ = std::fs::remove_file(&path);
    }
    ended
}

/// SIGKILLs group `pgid` if it is the one recorded: its leader started at `recorded`, or the leader
/// is gone and members remain (the id cannot have been reused while they live). True if it did.
pub(crate) fn end_group(pgid: libc::pid_t, recorded: Option<u64>) -> bool {
    let ours = match start_time(pgid) {
        Some(now) => Some(now) == recorded,
        None => true,
    };
    if pgid > 0 && ours && group_has_members(pgid) {
        // SAFETY: see `Group::drop`.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        return true;
    }
    false
}

/// The last `n` lines of a log file (what a failed replica printed last).
pub fn tail(log: &Path, n: usize) -> String {
    let Ok(bytes) = std::fs::read(log) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(64 * 1024);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("--- revisor:")).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A free loopback port, found by binding port 0.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Kubernetes' `$(VAR)` expansion in command arguments: `$(PORT)` becomes the replica's port, other
/// names their value in the container's environment; unknown references stay as written, and `$$(X)`
/// is a literal `$(X)`.
pub fn expand<'a>(arg: &str, lookup: &impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$(") {
            out.push_str("$(");
            rest = after;
        } else if let Some((name, after)) = tail.strip_prefix("$(").and_then(|t| t.split_once(')')) {
            match lookup(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = after;
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn kubernetes_variable_expansion() {
        let lookup = |n: &str| match n {
            "PORT" => Some("8081"),
            "MODEL" => Some("v1.onnx"),
            _ => None,
        };
        assert_eq!(expand("--port=$(PORT)", &lookup), "--port=8081");
        assert_eq!(expand("$(MODEL) and $(NOPE)", &lookup), "v1.onnx and $(NOPE)");
        assert_eq!(expand("$$(PORT) costs $5", &lookup), "$(PORT) costs $5");
    }
}
