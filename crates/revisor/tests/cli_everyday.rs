//! The everyday CLI, run as the real binary: `--server` only where a server is talked to, shell
//! completions, a closed standard output, `-o` on describe and rollout status, `get -l` and `get -w`,
//! and the flag to change when a port is taken.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{cli, ok, write, Server, BIN};

fn run(args: &[&str]) -> common::Run {
    // The client commands here need no server: point any at one that is not there.
    cli("http://127.0.0.1:1", args)
}

fn service(name: &str, image: &str, labels: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\n{labels}spec:\n  template:\n    spec:\n      containers:\n        - image: {image}\n"
    )
}

#[test]
fn server_flag_is_on_the_commands_that_talk_to_a_server_only() {
    for args in [
        &["serve", "--help"][..],
        &["model-server", "--help"],
        &["demo", "--help"],
        &["example-models", "--help"],
        &["rewrite-model", "--help"],
        &["crd", "--help"],
        &["completions", "--help"],
    ] {
        let r = run(args);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        assert!(!r.stdout.contains("--server"), "{args:?} lists --server:\n{}", r.stdout);
    }
    for args in [
        &["get", "--help"][..],
        &["apply", "--help"],
        &["describe", "--help"],
        &["delete", "--help"],
        &["traffic", "--help"],
        &["logs", "--help"],
        &["events", "--help"],
        &["export", "--help"],
        &["rollout", "--help"],
        &["rollout", "status", "--help"],
    ] {
        let r = run(args);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        assert!(
            r.stdout.contains("--server") && r.stdout.contains("REVISOR_SERVER"),
            "{args:?} does not list --server:\n{}",
            r.stdout
        );
    }
    let r = run(&["serve", "--server", "http://127.0.0.1:1"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("unexpected argument '--server'"), "{}", r.stderr);
}

#[test]
fn every_command_says_what_its_arguments_are() {
    // The unit test in cli/mod.rs checks every argument; these are the ones that had none.
    let line = |args: &[&str], flag: &str| -> String {
        let r = run(args);
        r.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{args:?} lists no {flag}:\n{}", r.stdout))
            .to_string()
    };
    assert!(line(&["rollout", "promote", "--help"], "--full").contains("Skip every remaining step"));
    assert!(line(&["rollout", "undo", "--help"], "--to-revision").contains("The revision to move all traffic to"));
    assert!(line(&["get", "-h"], "-n, --namespace").contains("The namespace to look in"));
    assert!(line(&["describe", "-h"], "<KIND>").contains("a service (ksvc, svc), a revision (rev) or a rollout"));
    let r = run(&["describe", "--help"]);
    assert!(
        r.stdout
            .starts_with("Show a service, a revision or a Rollout in detail"),
        "{}",
        r.stdout
    );
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let bash = run(&["completions", "bash"]);
    assert_eq!(bash.code, 0, "{}", bash.stderr);
    assert!(bash.stdout.contains("complete -F _revisor"), "{}", bash.stdout);
    for sub in ["apply", "get", "describe", "rollout", "completions", "--selector"] {
        assert!(bash.stdout.contains(sub), "bash completion lacks {sub}");
    }
    let zsh = run(&["completions", "zsh"]);
    assert_eq!(zsh.code, 0, "{}", zsh.stderr);
    assert!(zsh.stdout.starts_with("#compdef revisor"), "{}", zsh.stdout);
    let fish = run(&["completions", "fish"]);
    assert_eq!(fish.code, 0, "{}", fish.stderr);
    assert!(fish.stdout.contains("complete -c revisor") && fish.stdout.contains("apply"));

    let tcsh = run(&["completions", "tcsh"]);
    assert_eq!(tcsh.code, 2, "{}", tcsh.stderr);
    assert!(
        tcsh.stderr.contains("invalid value 'tcsh'") && tcsh.stderr.contains("bash") && tcsh.stderr.contains("fish"),
        "{}",
        tcsh.stderr
    );
    assert!(tcsh.stdout.is_empty());
}

#[test]
fn a_closed_stdout_ends_the_command_without_a_panic() {
    // Far more output than a pipe holds, so the command is still writing when the reader goes away.
    let tmp = tempfile::tempdir().unwrap();
    let manifest: String = (0..3000)
        .map(|i| format!("---\n{}", service(&format!("svc-{i}"), "img", "")))
        .collect();
    let file = write(tmp.path(), "many.yaml", &manifest);
    let mut child = Command::new(BIN)
        .args(["export", "-f"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1024];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "{status}: {stderr}");
    assert!(stderr.is_empty(), "{status}: {stderr}");
    assert_ne!(status.code(), Some(101), "{status}: {stderr}");
    assert!(!status.success(), "the export cannot have finished: {status}");
}

#[test]
fn describe_and_rollout_status_print_objects_and_get_selects_by_label() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let s = server.admin.as_str();
    common::apply(
        s,
        tmp.path(),
        "a.yaml",
        &service("a", "img", "  labels:\n    team: ml\n"),
    );
    common::apply(
        s,
        tmp.path(),
        "b.yaml",
        &service("b", "img", "  labels:\n    team: web\n"),
    );
    common::apply(
        s,
        tmp.path(),
        "ro.yaml",
        "apiVersion: revisor.dev/v1alpha1\nkind: Rollout\nmetadata:\n  name: a\nspec:\n  serviceRef:\n    name: a\n  strategy:\n    canary:\n      steps:\n        - setWeight: 50\n",
    );

    // The default stays the description; -o prints the object.
    assert!(ok(s, &["describe", "service", "a"]).starts_with("Name:        a\n"));
    let svc: serde_json::Value = serde_json::from_str(&ok(s, &["describe", "service", "a", "-o", "json"])).unwrap();
    assert_eq!(
        (svc["kind"].as_str(), svc["metadata"]["name"].as_str()),
        (Some("Service"), Some("a"))
    );
    let rev = ok(s, &["describe", "revision", "a-00001", "-o", "yaml"]);
    assert!(
        rev.contains("kind: Revision\n") && rev.contains("name: a-00001\n"),
        "{rev}"
    );
    assert!(ok(s, &["rollout", "status", "a"]).starts_with("Rollout:"));
    let ro: serde_json::Value = serde_json::from_str(&ok(s, &["rollout", "status", "a", "-o", "json"])).unwrap();
    assert_eq!(
        (ro["kind"].as_str(), ro["spec"]["serviceRef"]["name"].as_str()),
        (Some("Rollout"), Some("a"))
    );
    let ro = ok(s, &["rollout", "status", "a", "-o", "yaml"]);
    assert!(ro.contains("kind: Rollout\n"), "{ro}");
    let table = cli(s, &["describe", "service", "a", "-o", "table"]);
    assert_eq!(table.code, 2, "describe has no table output: {}", table.stderr);

    // --selector on every kind, in the table and in -o json.
    let names = |args: &[&str]| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&ok(s, args)).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&["get", "services", "-o", "json"]), ["a", "b"]);
    assert_eq!(names(&["get", "services", "-l", "team=ml", "-o", "json"]), ["a"]);
    assert_eq!(
        names(&["get", "services", "--selector", "team==web", "-o", "json"]),
        ["b"]
    );
    assert!(names(&["get", "services", "-l", "team=ml,tier=x", "-o", "json"]).is_empty());
    assert_eq!(
        names(&["get", "revisions", "-l", "serving.knative.dev/service=b", "-o", "json"]),
        ["b-00001"]
    );
    assert!(names(&["get", "rollouts", "-l", "team=ml", "-o", "json"]).is_empty());
    let listed = ok(s, &["get", "svc", "-l", "team=web"]);
    let rows: Vec<&str> = listed.lines().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(rows, ["NAME", "b"], "{listed}");
    assert_eq!(ok(s, &["get", "services", "-l", "team=none"]), "No services found.\n");
    let bad = cli(s, &["get", "services", "-l", "team!=ml"]);
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr
            .contains("--selector \"team!=ml\": only key=value terms are supported"),
        "{}",
        bad.stderr
    );

    // --server after the command does what REVISOR_SERVER does.
    let out = Command::new(BIN)
        .args(["get", "services", "-l", "team=ml", "--server", s])
        .env_remove("REVISOR_SERVER")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\na "));
}

#[test]
fn get_watch_prints_the_table_then_changed_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let s = server.admin.clone();
    common::apply(&s, tmp.path(), "a.yaml", &service("a", "img", ""));
    common::apply(&s, tmp.path(), "other.yaml", &service("other", "img", ""));

    let mut child = Command::new(BIN)
        .args(["get", "services", "-w", "--server", &s])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Only a guard against hanging: the lines are expected, however long they take.
    let next = |what: &str| -> String {
        match lines.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(e) => panic!("no line while waiting for {what}: {e}"),
        }
    };
    let header = next("the header");
    assert!(header.starts_with("NAME ") && header.contains("LATEST"), "{header}");
    let mut seen = vec![next("the first row"), next("the second row")];
    seen.sort();
    assert!(seen[0].starts_with("a ") && seen[1].starts_with("other "), "{seen:?}");

    common::apply(&s, tmp.path(), "a.yaml", &service("a", "img:v2", ""));
    loop {
        let line = next("a row of a on its second revision");
        assert!(!line.starts_with("NAME"), "the header again: {line}");
        if line.starts_with("a ") && line.contains(" a-00002 ") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_taken_port_names_the_flag_to_change() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for (flag, other, what) in [
        ("--gateway-addr", "--admin-addr", "gateway address"),
        ("--admin-addr", "--gateway-addr", "admin API address"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let out = Command::new(BIN)
            .args(["serve", flag, &addr, other, "127.0.0.1:0", "--data-dir"])
            .arg(tmp.path())
            .env("REVISOR_LOG", "warn")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "serve started with {flag} {addr} taken");
        assert!(
            stderr.contains(&format!("{what} {addr} is in use: pass {flag}")),
            "{flag}: {stderr}"
        );
    }
}

/// Issue 14: names go into URLs only as DNS labels. `revisor delete revision ../services/rv1` used to
/// delete the service `rv1` (the URL's `..` was resolved); now it is refused before any request.
#[test]
fn names_that_would_change_the_url_are_refused_before_any_request() {
    let server = "http://127.0.0.1:1";
    for args in [
        &["delete", "revision", "../services/rv1"][..],
        &["get", "services", "-n", ".."][..],
        &["describe", "service", "a/b"][..],
        &["rollout", "undo", "web", "--to-revision", "../x"][..],
        &["logs", "web-00001", "-n", "default/../x"][..],
    ] {
        let r = cli(server, args);
        assert_eq!(r.code, 2, "{args:?}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("DNS-1123"), "{args:?}: {}", r.stderr);
        assert!(
            !r.stderr.contains("cannot reach"),
            "refused before any request: {}",
            r.stderr
        );
    }
}
