//! Starting and signalling child processes, and reading the tail of their output.

use std::path::Path;
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::spec::ProcessSpec;

/// Starts one replica with `PORT` set; its stdout and stderr are appended to `log`.
pub fn spawn(spec: &ProcessSpec, port: u16, log: &Path) -> std::io::Result<Child> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    let port_text = port.to_string();
    let lookup = |name: &str| match name {
        "PORT" => Some(port_text.as_str()),
        _ => spec.env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()),
    };
    let mut cmd = Command::new(&spec.program);
    cmd.args(spec.args.iter().map(|a| expand(a, &lookup)))
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    if let Some(dir) = &spec.working_dir {
        cmd.current_dir(dir);
    }
    // SAFETY: only async-signal-safe calls between fork and exec: a new process group (so signals reach
    // the whole replica), and a parent-death signal (so a killed server leaves no orphans).
    unsafe {
        cmd.pre_exec(|| {
            libc::setpgid(0, 0);
            #[cfg(target_os = "linux")]
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
}

/// Sends a signal to the replica's whole process group.
pub fn signal(child: &Child, sig: libc::c_int) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a negative pid signals the process group we created at spawn.
        unsafe {
            libc::kill(-(pid as libc::pid_t), sig);
        }
    }
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
