//! The runtime with real processes: readiness, environment, failures, restarts, draining.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use revisor_runtime::{Probe, ProbeAction, ProcessSpec, RevisionKey, RevisionState, Runtime};

/// The test upstream binary, built beside this test (scripts/test.sh builds it).
fn upstream() -> PathBuf {
    revisor_testapp::upstream_binary()
}

fn spec(name: &str, program: PathBuf, env: &[(&str, &str)]) -> ProcessSpec {
    let mut env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    env.push(("K_REVISION".into(), name.into()));
    ProcessSpec {
        key: RevisionKey {
            namespace: "default".into(),
            name: name.into(),
        },
        program,
        args: vec![],
        env,
        working_dir: None,
        probe: Probe::default(),
        progress_deadline: Duration::from_secs(30),
        drain_timeout: Duration::from_secs(5),
        termination_grace: Duration::from_secs(2),
    }
}

async fn wait_for(rt: &Runtime, name: &str, what: &str, f: impl Fn(&RevisionState) -> bool) -> RevisionState {
    let mut rx = rt.subscribe();
    let key = RevisionKey {
        namespace: "default".into(),
        name: name.into(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = rx.borrow_and_update().get(&key).filter(|s| f(s)) {
            return st.clone();
        }
        if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
            panic!(
                "{name}: timed out waiting for {what}; state: {:?}",
                rx.borrow().get(&key)
            );
        }
    }
}

fn get(addr: SocketAddr) -> String {
    get_path(addr, "/")
}

fn get_path(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn runtime(in_flight: Arc<AtomicUsize>) -> (tempfile::TempDir, Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(
        dir.path().join("logs"),
        Arc::new(move |_| in_flight.load(Ordering::SeqCst)),
    );
    (dir, rt)
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_become_ready_and_answer_on_their_own_ports() {
    let (_d, rt) = runtime(Default::default());
    rt.scale(spec("web-00001", upstream(), &[]), 2);
    let st = wait_for(&rt, "web-00001", "two ready replicas", |s| s.ready.len() == 2).await;
    assert_ne!(st.ready[0].addr, st.ready[1].addr);
    for r in &st.ready {
        let body = tokio::task::spawn_blocking({
            let a = r.addr;
            move || get(a)
        })
        .await
        .unwrap();
        assert!(body.ends_with("web-00001\n"), "{body}");
    }
    rt.scale(spec("web-00001", upstream(), &[]), 1);
    wait_for(&rt, "web-00001", "one replica", |s| {
        s.ready.len() == 1 && s.running == 1
    })
    .await;
    rt.shutdown().await;
    assert!(rt.subscribe().borrow().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_child_sees_only_its_declared_environment() {
    let (d, rt) = runtime(Default::default());
    let out = d.path().join("env.txt");
    let mut s = spec(
        "env-00001",
        "/bin/sh".into(),
        &[("GREETING", "hi"), ("PATH", "/usr/bin:/bin")],
    );
    s.args = vec!["-c".into(), format!("env > {}; exec sleep 30", out.display())];
    s.probe = Probe {
        action: ProbeAction::Exec {
            command: vec!["test".into(), "-s".into(), out.display().to_string()],
        },
        ..Probe::default()
    };
    rt.scale(s, 1);
    wait_for(&rt, "env-00001", "ready", |s| !s.ready.is_empty()).await;
    let env = std::fs::read_to_string(&out).unwrap();
    assert!(
        env.contains("GREETING=hi") && env.contains("K_REVISION=env-00001") && env.contains("PORT="),
        "{env}"
    );
    assert!(
        !env.lines().any(|l| l.starts_with("HOME=") || l.starts_with("CARGO")),
        "the server's environment leaked: {env}"
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_command_reports_the_os_error() {
    let (_d, rt) = runtime(Default::default());
    rt.scale(spec("bad-00001", "/nonexistent/model-server".into(), &[]), 1);
    let st = wait_for(&rt, "bad-00001", "a failure", |s| s.last_failure.is_some()).await;
    let f = st.last_failure.unwrap();
    assert_eq!(f.reason, "ExecFailed");
    assert!(
        f.message.contains("/nonexistent/model-server") && f.message.contains("No such file"),
        "{}",
        f.message
    );
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashing_replica_misses_its_deadline_with_its_last_output() {
    let (_d, rt) = runtime(Default::default());
    let mut s = spec("crash-00001", upstream(), &[("EXIT_AT_START", "3")]);
    s.progress_deadline = Duration::from_millis(800);
    rt.scale(s, 1);
    let st = wait_for(&rt, "crash-00001", "the deadline", |s| s.deadline_exceeded).await;
    let f = st.last_failure.unwrap();
    assert_eq!(f.reason, "ExitCode3");
    assert!(f.message.contains("exiting at start with code 3"), "{}", f.message);
    // The status says that it restarts, and how long it waits.
    assert!(
        f.message.contains("in a row; restarting in") && f.message.contains("up to 10s"),
        "{}",
        f.message
    );
    assert!(st.ready.is_empty() && !st.ever_ready);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_replica_is_restarted() {
    let (_d, rt) = runtime(Default::default());
    rt.scale(spec("kill-00001", upstream(), &[]), 1);
    let st = wait_for(&rt, "kill-00001", "ready", |s| s.ready.len() == 1).await;
    let port = st.ready[0].addr.port();
    // Find the replica's pid by the PORT in its environment and SIGKILL it.
    let pids = std::process::Command::new("bash")
        .args(["-c", &format!("for p in /proc/[0-9]*; do if tr '\\0' '\\n' < $p/environ 2>/dev/null | grep -qx 'PORT={port}'; then basename $p; fi; done")])
        .output()
        .unwrap();
    let pid: i32 = String::from_utf8_lossy(&pids.stdout)
        .lines()
        .next()
        .expect("replica pid")
        .trim()
        .parse()
        .unwrap();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let st = wait_for(&rt, "kill-00001", "the failure", |s| s.last_failure.is_some()).await;
    assert_eq!(st.last_failure.unwrap().reason, "Killed");
    let st = wait_for(&rt, "kill-00001", "a restarted replica", |s| {
        s.ready.len() == 1 && s.ready[0].addr.port() != port
    })
    .await;
    assert!(st.last_failure.is_none(), "a ready replica clears the failure");
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_replica_waits_for_in_flight_requests() {
    let in_flight = Arc::new(AtomicUsize::new(1));
    let (_d, rt) = runtime(in_flight.clone());
    rt.scale(spec("drain-00001", upstream(), &[]), 1);
    let st = wait_for(&rt, "drain-00001", "ready", |s| s.ready.len() == 1).await;
    let addr = st.ready[0].addr;
    rt.scale(spec("drain-00001", upstream(), &[]), 0);
    wait_for(&rt, "drain-00001", "out of the route", |s| s.ready.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let still = tokio::task::spawn_blocking(move || get(addr)).await.unwrap();
    assert!(
        still.ends_with("drain-00001\n"),
        "a draining replica still serves its in-flight requests"
    );
    let released = Instant::now();
    in_flight.store(0, Ordering::SeqCst);
    wait_for(&rt, "drain-00001", "stopped", |s| s.running == 0).await;
    assert!(released.elapsed() < Duration::from_secs(3));
    assert!(TcpStream::connect(addr).is_err(), "the replica is gone after draining");
}

/// Issue 12: a service deleted while its replica answers a request and applied again at once gets a
/// revision of the same name. The old replica's drain must not touch the new one's state: before, its
/// end wiped the new replica from the snapshot, which then showed `0/1` forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_revision_made_again_while_its_old_replicas_drain_keeps_its_new_replicas() {
    let in_flight = Arc::new(AtomicUsize::new(1));
    let (_d, rt) = runtime(in_flight.clone());
    rt.scale(spec("again-00001", upstream(), &[]), 1);
    let old = wait_for(&rt, "again-00001", "ready", |s| s.ready.len() == 1)
        .await
        .ready[0]
        .addr;
    let key = RevisionKey {
        namespace: "default".into(),
        name: "again-00001".into(),
    };
    let removing = tokio::spawn({
        let rt = rt.clone();
        let key = key.clone();
        async move { rt.remove(&key).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    rt.scale(spec("again-00001", upstream(), &[]), 1);
    let st = wait_for(&rt, "again-00001", "a new ready replica", |s| {
        s.ready.len() == 1 && s.ready[0].addr != old
    })
    .await;
    let new = st.ready[0].addr;
    // The old replica finishes its request and stops.
    in_flight.store(0, Ordering::SeqCst);
    removing.await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let now = rt.subscribe().borrow().get(&key).cloned();
    let now = now.expect("the new revision is still in the snapshot");
    assert_eq!(now.ready.iter().map(|r| r.addr).collect::<Vec<_>>(), vec![new]);
    assert_eq!((now.desired, now.running), (1, 1), "{now:?}");
    let body = tokio::task::spawn_blocking(move || get(new)).await.unwrap();
    assert!(body.ends_with("again-00001\n"), "{body}");
    rt.shutdown().await;
}

/// A runtime whose replicas of the test upstream are forked from its pre-fork server.
fn forking_runtime() -> (tempfile::TempDir, Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::with_prefork(dir.path().join("logs"), Arc::new(|_| 0), upstream());
    (dir, rt)
}

/// Field `n` (from 1) of `/proc/PID/stat`.
fn stat_field(pid: u32, n: usize) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    rest.split_whitespace().nth(n - 3).unwrap().to_string()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap()
        .trim()
        .to_string()
}

fn cmdline(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Issue 15: a replica of the pre-fork server's own program is forked from it, and is what an exec'd
/// one would be: its arguments, only its declared environment, its own process group, its output in
/// its log, its name and command line as `ps` shows them.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_of_the_prefork_program_is_forked_and_looks_exec_d() {
    let (d, rt) = forking_runtime();
    let mut s = spec("fork-00001", upstream(), &[("GREETING", "hi")]);
    s.args = vec!["--port-was".into(), "$(PORT)".into(), "two words".into()];
    rt.scale(s, 1);
    let st = wait_for(&rt, "fork-00001", "ready", |s| s.ready.len() == 1).await;
    assert!(st.last_start.unwrap().forked, "{:?}", st.last_start);
    let r = &st.ready[0];
    let body = tokio::task::spawn_blocking({
        let a = r.addr;
        move || get(a)
    })
    .await
    .unwrap();
    assert!(body.ends_with("fork-00001\n"), "its K_REVISION: {body}");
    let env = tokio::task::spawn_blocking({
        let a = r.addr;
        move || get_path(a, "/env")
    })
    .await
    .unwrap();
    let env: Vec<&str> = env.split("\r\n\r\n").nth(1).unwrap().lines().collect();
    let mut want = vec![
        "GREETING=hi".to_string(),
        "K_REVISION=fork-00001".into(),
        format!("PORT={}", r.addr.port()),
    ];
    want.sort();
    let mut got = env.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    got.sort();
    assert_eq!(got, want, "its declared environment and nothing of the server's");
    let pid = r.pid;
    assert_eq!(stat_field(pid, 5), pid.to_string(), "it leads its own process group");
    let parent: u32 = stat_field(pid, 4).parse().unwrap();
    assert_eq!(comm(parent), "prefork", "forked from the pre-fork server");
    assert_eq!(
        comm(pid),
        "revisor-test-up",
        "named after its program, as exec names it"
    );
    assert_eq!(
        cmdline(pid),
        [
            upstream().display().to_string(),
            "--port-was".into(),
            r.addr.port().to_string(),
            "two words".into()
        ]
    );
    let log = std::fs::read_to_string(d.path().join("logs/default/fork-00001/replica-1.log")).unwrap();
    assert!(
        log.contains("revisor-test-upstream fork-00001 listening"),
        "its output: {log}"
    );
    rt.shutdown().await;
    assert!(!std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists() || cmdline(pid).is_empty());
}

/// Issue 15: what a forked replica cannot take after `main` has started (variables the loader and the
/// allocator read before it) makes it exec'd, and a bad working directory is reported as exec reports
/// it.
#[tokio::test(flavor = "multi_thread")]
async fn what_cannot_be_forked_is_exec_d_and_bad_directories_are_reported() {
    let (_d, rt) = forking_runtime();
    rt.scale(spec("ld-00001", upstream(), &[("LD_BIND_NOW", "1")]), 1);
    let st = wait_for(&rt, "ld-00001", "ready", |s| s.ready.len() == 1).await;
    assert!(!st.last_start.unwrap().forked);
    assert_ne!(comm(stat_field(st.ready[0].pid, 4).parse().unwrap()), "prefork");
    rt.scale(spec("keep-00001", upstream(), &[]), 1);
    let kept = wait_for(&rt, "keep-00001", "ready", |s| s.ready.len() == 1).await;
    assert!(kept.last_start.unwrap().forked);
    // A missing directory is refused, with its name; one so long that the refusal is cut short
    // (the server's reply has a size) fails that replica alone: the forked one beside it runs on.
    for (name, dir) in [
        ("cwd-00001", "/nonexistent/dir".to_string()),
        ("long-00001", format!("/nonexistent/{}", "d".repeat(3000))),
    ] {
        let mut s = spec(name, upstream(), &[]);
        s.working_dir = Some(dir.into());
        rt.scale(s, 1);
        let st = wait_for(&rt, name, "a failure", |s| s.last_failure.is_some()).await;
        let f = st.last_failure.unwrap();
        assert_eq!(f.reason, "ExecFailed");
        assert!(f.message.contains("/nonexistent/d"), "{}", f.message);
    }
    assert_eq!(
        comm(kept.ready[0].pid),
        "revisor-test-up",
        "the forked replica beside them runs on"
    );
    rt.scale(spec("after-00001", upstream(), &[]), 1);
    let st = wait_for(&rt, "after-00001", "ready", |s| s.ready.len() == 1).await;
    assert!(st.last_start.unwrap().forked, "the same server forks the next one");
    assert_eq!(stat_field(st.ready[0].pid, 4), stat_field(kept.ready[0].pid, 4));
    rt.shutdown().await;
}

/// Issue 15: a forked replica's exit code and signal reach the runtime as an exec'd one's do.
#[tokio::test(flavor = "multi_thread")]
async fn a_forked_replica_s_exit_code_and_signal_are_reported() {
    let (_d, rt) = forking_runtime();
    rt.scale(spec("exit-00001", upstream(), &[("EXIT_AT_START", "3")]), 1);
    let st = wait_for(&rt, "exit-00001", "a failure", |s| s.last_failure.is_some()).await;
    let f = st.last_failure.unwrap();
    assert_eq!(f.reason, "ExitCode3");
    assert!(f.message.contains("exiting at start with code 3"), "{}", f.message);
    rt.scale(spec("sig-00001", upstream(), &[]), 1);
    let st = wait_for(&rt, "sig-00001", "ready", |s| s.ready.len() == 1).await;
    assert!(st.last_start.unwrap().forked);
    let pid = st.ready[0].pid;
    // SAFETY: kill(2) of the replica this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let st = wait_for(&rt, "sig-00001", "the failure", |s| s.last_failure.is_some()).await;
    assert_eq!(st.last_failure.unwrap().reason, "Killed");
    wait_for(&rt, "sig-00001", "a restarted replica", |s| {
        s.ready.len() == 1 && s.ready[0].pid != pid
    })
    .await;
    rt.shutdown().await;
}

/// Issue 15: when the pre-fork server dies, its replicas keep running and are still supervised (their
/// end is seen through a pidfd), replicas are exec'd meanwhile, and a new server takes over.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_outlive_a_dead_prefork_server_which_is_restarted() {
    let (_d, rt) = forking_runtime();
    rt.scale(spec("orphan-00001", upstream(), &[]), 1);
    let st = wait_for(&rt, "orphan-00001", "ready", |s| s.ready.len() == 1).await;
    let pid = st.ready[0].pid;
    let server: u32 = stat_field(pid, 4).parse().unwrap();
    assert_eq!(comm(server), "prefork");
    // SAFETY: kill(2) of the pre-fork server this runtime started.
    unsafe { libc::kill(server as i32, libc::SIGKILL) };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(comm(pid), "revisor-test-up", "the replica is still running");
    // SAFETY: as above, the replica.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let st = wait_for(&rt, "orphan-00001", "the failure", |s| s.last_failure.is_some()).await;
    let f = st.last_failure.unwrap();
    assert!(f.message.contains("exit status is unknown"), "{}", f.message);
    let st = wait_for(&rt, "orphan-00001", "a restarted replica", |s| {
        s.ready.len() == 1 && s.ready[0].pid != pid
    })
    .await;
    assert!(!st.last_start.unwrap().forked, "exec'd while there was no server");
    rt.scale(spec("again-00001", upstream(), &[]), 1);
    let st = wait_for(&rt, "again-00001", "ready", |s| s.ready.len() == 1).await;
    assert!(st.last_start.unwrap().forked, "forked by a new server");
    assert_ne!(stat_field(st.ready[0].pid, 4), server.to_string());
    rt.shutdown().await;
}
