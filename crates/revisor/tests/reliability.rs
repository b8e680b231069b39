//! Issue 14: nothing a replica started outlives the server, whether it stops gracefully or is killed,
//! and a graceful stop is quiet and bounded.

mod common;

use std::time::Duration;

use common::{apply, children, comm, upstream_bin, wait_ready, wait_until, Server};

/// The pids of processes whose command line contains `marker`.
fn pids_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(marker))
                .unwrap_or(false)
        })
        .collect()
}

/// A service whose replica starts a helper process of its own (as nginx starts workers), then
/// becomes the test upstream. `marker` is the helper's sleep time, unique to the test.
fn forking_service(marker: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: forks\nspec:\n  template:\n    \
         spec:\n      containers:\n        - image: forks\n          command: [sh, -c, 'sleep {marker} & exec {}']\n",
        upstream_bin().display()
    )
}

/// Whether any of `pids` is a live process (a zombie has an empty command line).
fn alive(pids: &[u32]) -> bool {
    pids.iter()
        .any(|p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| !c.is_empty()))
}

/// The server's replica processes: its children but the lifeline and the pre-fork server, and the
/// pre-fork server's children.
fn replicas_of(server: &Server) -> Vec<u32> {
    let mut out = Vec::new();
    for p in children(server.child.id()) {
        match comm(p).as_str() {
            "lifeline" => {}
            "prefork" => out.extend(children(p)),
            _ => out.push(p),
        }
    }
    out
}

/// The server's pre-fork server.
fn prefork_of(server: &Server) -> Option<u32> {
    children(server.child.id()).into_iter().find(|p| comm(*p) == "prefork")
}

/// A server in `dir` running the forking service (helpers marked with `marker`), once its helper runs.
fn forking_server(dir: &std::path::Path, data: &std::path::Path, marker: &str) -> Server {
    let server = Server::start(data);
    apply(&server.admin, dir, "forks.yaml", &forking_service(marker));
    wait_ready(&server.admin, "forks", &["forks-00001"]);
    wait_until("the helper runs", Duration::from_secs(10), || {
        !pids_with(marker).is_empty()
    });
    server
}

#[test]
fn processes_replicas_start_are_ended_on_a_graceful_stop_and_after_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let marker = format!("86399.{}", std::process::id());
    let server = forking_server(dir.path(), &data, &marker);

    // kill -9: the server's lifeline ends the replica and the helper it started.
    let helpers = pids_with(&marker);
    let replica = replicas_of(&server);
    assert!(!replica.is_empty(), "the replica runs as the server's child");
    let prefork = prefork_of(&server).expect("revisor serve runs a pre-fork server");
    server.kill9();
    wait_until(
        "the lifeline ends the replica and its helper, and the pre-fork server ends",
        Duration::from_secs(10),
        || !alive(&helpers) && !alive(&replica) && !alive(&[prefork]),
    );

    // Without the lifeline too (killed first), the next start ends what the killed run left behind,
    // before it starts anything (the new replica starts a helper of its own, with the same command
    // line: only the old ones must go).
    let server = Server::start(&data);
    wait_ready(&server.admin, "forks", &["forks-00001"]);
    wait_until("the helper runs", Duration::from_secs(10), || {
        !pids_with(&marker).is_empty()
    });
    let orphans = pids_with(&marker);
    let lifeline = children(server.child.id()).into_iter().find(|p| comm(*p) == "lifeline");
    let lifeline = lifeline.expect("revisor serve runs a lifeline process");
    // SAFETY: kill(2) of the lifeline, a process this test's server started.
    unsafe { libc::kill(lifeline as libc::pid_t, libc::SIGKILL) };
    server.kill9();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        alive(&orphans),
        "the premise: with its lifeline gone, a killed server cannot end its replicas' helpers"
    );
    let server = Server::start(&data);
    wait_until("the orphaned helper is ended", Duration::from_secs(10), || {
        !alive(&orphans)
    });
    wait_ready(&server.admin, "forks", &["forks-00001"]);
    wait_until("the new replica's helper runs", Duration::from_secs(10), || {
        !pids_with(&marker).is_empty()
    });

    // A graceful stop ends the replica's whole group, and logs no error, even while a client
    // follows a log (an open admin request used to hold the server up for as long as it stayed).
    let mut follow = std::process::Command::new(env!("CARGO_BIN_EXE_revisor"))
        .args(["logs", "forks-00001", "-f", "--server", &server.admin])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let stopping = std::time::Instant::now();
    let (exited, log) = server.terminate(Duration::from_secs(20));
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(exited, "revisor serve did not stop within 20 s of SIGTERM:\n{log}");
    eprintln!("stopped {:?} after SIGTERM with a log followed", stopping.elapsed());
    assert!(pids_with(&marker).is_empty(), "a helper outlived the server");
    assert!(!log.contains("ERROR"), "a graceful stop logged an error:\n{log}");
}

/// The lifeline keeps its own list of the server's groups: a server killed while its data directory
/// is being removed (a test's temporary directory dropped with it, a wiped box) still leaves no
/// replica behind. A lifeline that read the recorded groups from the directory when the server died
/// found none, and the suite's servers left replicas running.
#[test]
fn a_killed_server_whose_data_directory_is_removed_leaves_no_replica() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let marker = format!("86398.{}", std::process::id());
    let server = forking_server(dir.path(), &data, &marker);
    let (helpers, replica) = (pids_with(&marker), replicas_of(&server));
    // Gone before the server is: whenever the lifeline looks, there is nothing to read.
    std::fs::remove_dir_all(&data).unwrap();
    server.kill9();
    wait_until("the replica and its helper are ended", Duration::from_secs(10), || {
        !alive(&helpers) && !alive(&replica)
    });
}
