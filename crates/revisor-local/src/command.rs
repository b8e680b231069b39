//! From a Revision's container to a process: the command (or the image's local mapping), environment,
//! probe and timings that the runtime needs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use revisor_api::annotations::PROGRESS_DEADLINE;
use revisor_api::podspec::{Container, IntOrString, Probe as KProbe};
use revisor_api::units::parse_go_duration;
use revisor_api::Revision;
use revisor_gateway::Protocol;
use revisor_runtime::{Probe, ProbeAction, ProcessSpec, RevisionKey, AGGRESSIVE_PERIOD};
use serde::Deserialize;

/// How an image runs locally when its container gives no command (`[images."<image>"]` in revisor.toml).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ImageCommand {
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<PathBuf>,
}

/// What the local backend needs to turn revisions into processes.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub images: BTreeMap<String, ImageCommand>,
    /// The running revisor executable: a command named `revisor` means this one.
    pub revisor_exe: PathBuf,
    /// Where `revisor model-server` replicas cache downloaded models (`REVISOR_MODEL_CACHE`).
    pub model_cache: Option<PathBuf>,
    pub progress_deadline: Duration,
    pub termination_grace: Duration,
    /// Knative's config-autoscaler, for the KPA that scales routed revisions.
    pub autoscaler: revisor_autoscaler::AutoscalerConfig,
}

/// Why a revision cannot run on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unrunnable {
    pub reason: &'static str,
    pub message: String,
}

/// The process for a revision's serving container, and the protocol it speaks.
pub fn process_spec(rev: &Revision, cfg: &LocalConfig) -> Result<(ProcessSpec, Protocol), Unrunnable> {
    let unrunnable = |reason, message| Unrunnable { reason, message };
    let container = rev.spec.serving_container().ok_or_else(|| {
        unrunnable(
            "NoServingContainer",
            "the revision has no container that serves requests".into(),
        )
    })?;
    let image = container.image.clone().unwrap_or_default();
    let mapped = cfg.images.get(&image);
    let (program, args) = command_of(container, mapped, &cfg.revisor_exe).ok_or_else(|| {
        unrunnable(
            "ImageNotRunnableLocally",
            format!(
                "image {image:?} has no local command: give the container a `command`, or map the image in revisor.toml:\n\
                 [images.\"{image}\"]\ncommand = [\"/path/to/server\", \"--flag\"]"
            ),
        )
    })?;
    let mut env = environment(rev, container, mapped)?;
    let program = on_path(program, &env);
    if program == cfg.revisor_exe {
        let mut unless_set = |k: &str, v: String| {
            if !env.iter().any(|(name, _)| name == k) {
                env.push((k.into(), v));
            }
        };
        if let Some(cache) = &cfg.model_cache {
            unless_set("REVISOR_MODEL_CACHE", cache.display().to_string());
        }
        // revisor's allocator (mimalloc) reads this before `main`: without transparent huge pages
        // from its first allocation, a model server starts in 10-15 ms instead of 25-45 (it zeroed
        // a 2 MiB page at each first touch), and keeps less memory resident. See bench/RESULTS.md.
        unless_set("MIMALLOC_ALLOW_THP", "0".into());
    }
    let container_port = container.ports().first().and_then(|p| p.container_port);
    let probe = container
        .readiness_probe
        .as_ref()
        .map(|p| probe(p, container_port))
        .unwrap_or_default();
    let timeout = Duration::from_secs(rev.spec.timeout_seconds.unwrap_or(300).max(1) as u64);
    let deadline = rev
        .metadata
        .annotation(PROGRESS_DEADLINE)
        .and_then(|v| parse_go_duration(v).ok())
        .unwrap_or(cfg.progress_deadline);
    let protocol = match container.ports().first().and_then(|p| p.name.as_deref()) {
        Some("h2c") => Protocol::H2c,
        _ => Protocol::Http1,
    };
    let spec = ProcessSpec {
        key: RevisionKey {
            namespace: rev.metadata.namespace.clone(),
            name: rev.metadata.name.clone(),
        },
        program,
        args,
        env,
        working_dir: container
            .working_dir
            .clone()
            .map(PathBuf::from)
            .or_else(|| mapped.and_then(|m| m.working_dir.clone())),
        probe,
        progress_deadline: deadline,
        drain_timeout: timeout,
        termination_grace: cfg.termination_grace,
    };
    Ok((spec, protocol))
}

/// Kubernetes semantics: `command` replaces the image's entrypoint, `args` its default arguments.
fn command_of(c: &Container, mapped: Option<&ImageCommand>, exe: &std::path::Path) -> Option<(PathBuf, Vec<String>)> {
    let args = c.args.clone();
    let (mut words, defaults) = match (c.command.as_ref().filter(|v| !v.is_empty()), mapped) {
        (Some(cmd), _) => (cmd.clone(), Vec::new()),
        (None, Some(m)) if !m.command.is_empty() => (m.command.clone(), m.args.clone()),
        _ => return None,
    };
    words.extend(args.unwrap_or(defaults));
    let program = words.remove(0);
    let program = if program == "revisor" {
        exe.to_path_buf()
    } else {
        PathBuf::from(program)
    };
    Some((program, words))
}

/// A program named without a directory, found on the replica's `PATH` as exec would find it; as
/// named when it is on none. Spawning a path lets the runtime start the replica by `posix_spawn`:
/// the standard library falls back to `fork` for a bare name in an environment of the caller's
/// making, which copies the server's page tables.
fn on_path(program: PathBuf, env: &[(String, String)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    if program.components().count() != 1 || program.as_os_str().is_empty() || program.is_absolute() {
        return program;
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    path.split(':')
        // A relative directory means the replica's own working directory: left to exec.
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| std::path::Path::new(dir).join(&program))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .unwrap_or(program)
}

fn environment(
    rev: &Revision,
    c: &Container,
    mapped: Option<&ImageCommand>,
) -> Result<Vec<(String, String)>, Unrunnable> {
    let mut env: BTreeMap<String, String> = mapped.map(|m| m.env.clone()).unwrap_or_default();
    if let Ok(path) = std::env::var("PATH") {
        env.entry("PATH".into()).or_insert(path);
    }
    for e in c.env() {
        match (&e.value, &e.value_from) {
            (_, Some(_)) => {
                return Err(Unrunnable {
                    reason: "UnsupportedLocally",
                    message: format!(
                        "env {:?} takes its value from a Secret, ConfigMap or field, which only exist on Kubernetes",
                        e.name
                    ),
                })
            }
            (v, None) => {
                env.insert(e.name.clone(), v.clone().unwrap_or_default());
            }
        }
    }
    if c.env_from.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(Unrunnable {
            reason: "UnsupportedLocally",
            message: "envFrom reads Secrets or ConfigMaps, which only exist on Kubernetes".into(),
        });
    }
    let service = rev.service_name().unwrap_or_default().to_string();
    let configuration = rev
        .metadata
        .label(revisor_api::revision::labels::CONFIGURATION)
        .unwrap_or(&service)
        .to_string();
    env.insert("K_SERVICE".into(), service);
    env.insert("K_CONFIGURATION".into(), configuration);
    env.insert("K_REVISION".into(), rev.metadata.name.clone());
    Ok(env.into_iter().collect())
}

/// A probe port equal to the container's declared port means the replica's `$PORT` locally.
fn port(p: &Option<IntOrString>, container_port: Option<i64>) -> Option<u16> {
    match p {
        Some(IntOrString::Int(n)) if Some(*n) != container_port && *n > 0 => u16::try_from(*n).ok(),
        _ => None,
    }
}

fn probe(p: &KProbe, container_port: Option<i64>) -> Probe {
    let secs = |v: Option<i64>| Duration::from_secs(v.unwrap_or(0).max(0) as u64);
    let action = if let Some(h) = &p.http_get {
        ProbeAction::Http {
            port: port(&h.port, container_port),
            path: h.path.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "/".into()),
            headers: h
                .http_headers
                .iter()
                .flatten()
                .map(|x| (x.name.clone(), x.value.clone()))
                .collect(),
        }
    } else if let Some(e) = &p.exec {
        ProbeAction::Exec {
            command: e.command.clone().unwrap_or_default(),
        }
    } else if let Some(t) = &p.tcp_socket {
        ProbeAction::Tcp {
            port: port(&t.port, container_port),
        }
    } else {
        ProbeAction::Tcp {
            port: p
                .grpc
                .as_ref()
                .and_then(|g| port(&g.port.map(IntOrString::Int), container_port)),
        }
    };
    let period = match p.period_seconds.unwrap_or(0) {
        0 => AGGRESSIVE_PERIOD,
        n => Duration::from_secs(n as u64),
    };
    let timeout = match p.timeout_seconds.unwrap_or(0) {
        0 => Duration::from_secs(1),
        n => Duration::from_secs(n as u64),
    };
    Probe {
        action,
        initial_delay: secs(p.initial_delay_seconds),
        period,
        timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(spec_yaml: &str) -> Revision {
        let doc = revisor_api::read_documents(spec_yaml).unwrap().remove(0);
        let mut r = Revision {
            spec: serde_json::from_value(doc.value).unwrap(),
            ..Default::default()
        };
        r.metadata.name = "svc-00001".into();
        r.metadata.namespace = "default".into();
        r.metadata.set_label("serving.knative.dev/service", "svc");
        r.metadata.set_label("serving.knative.dev/configuration", "svc");
        r
    }

    fn cfg() -> LocalConfig {
        let mut images = BTreeMap::new();
        let web = ImageCommand {
            command: vec!["/usr/bin/web".into()],
            args: vec!["--default".into()],
            ..Default::default()
        };
        images.insert("example.com/web:v1".to_string(), web);
        LocalConfig {
            images,
            revisor_exe: "/opt/revisor".into(),
            model_cache: Some("/data/models".into()),
            progress_deadline: Duration::from_secs(600),
            termination_grace: Duration::from_secs(10),
            autoscaler: Default::default(),
        }
    }

    fn run(spec_yaml: &str) -> Result<(ProcessSpec, Protocol), Unrunnable> {
        process_spec(&revision(spec_yaml), &cfg())
    }

    #[test]
    fn commands_images_and_revisor_itself() {
        let (s, _) =
            run("containers:\n- image: x\n  command: [revisor, model-server]\n  args: [--model, m.onnx]\n").unwrap();
        assert_eq!(
            (s.program.to_str().unwrap(), s.args.join(" ").as_str()),
            ("/opt/revisor", "model-server --model m.onnx")
        );
        let env: BTreeMap<_, _> = s.env.into_iter().collect();
        assert_eq!(
            env["MIMALLOC_ALLOW_THP"], "0",
            "revisor's own replicas run without huge pages"
        );
        let (s, _) = run(
            "containers:\n- image: x\n  command: [revisor, model-server]\n  env: [{name: MIMALLOC_ALLOW_THP, value: \"1\"}]\n",
        )
        .unwrap();
        assert!(
            s.env.contains(&("MIMALLOC_ALLOW_THP".into(), "1".into())),
            "the user's choice stands"
        );
        let (s, _) = run("containers:\n- image: example.com/web:v1\n").unwrap();
        assert_eq!(
            (s.program.to_str().unwrap(), s.args.join(" ").as_str()),
            ("/usr/bin/web", "--default")
        );
        // A bare name is found on the replica's PATH (so the runtime can posix_spawn it); one on no
        // directory of it stays as written (and fails to start, naming it).
        let (s, _) = run("containers:\n- image: x\n  command: [sh, -c, 'exit 0']\n  env: [{name: PATH, value: /nowhere:/bin:/usr/bin}]\n").unwrap();
        assert!(s.program.is_absolute() && s.program.ends_with("sh"), "{:?}", s.program);
        let (s, _) = run("containers:\n- image: x\n  command: [no-such-program-here]\n").unwrap();
        assert_eq!(s.program.to_str(), Some("no-such-program-here"));
        assert!(
            !s.env.iter().any(|(k, _)| k == "MIMALLOC_ALLOW_THP"),
            "other programs' environment is theirs"
        );
        let (s, _) = run("containers:\n- image: example.com/web:v1\n  args: [--mine]\n").unwrap();
        assert_eq!(
            s.args,
            ["--mine"],
            "container args replace the image's default arguments"
        );
        let err = run("containers:\n- image: gcr.io/p/model:v1\n").unwrap_err();
        assert_eq!(err.reason, "ImageNotRunnableLocally");
        assert!(
            err.message.contains("[images.\"gcr.io/p/model:v1\"]"),
            "{}",
            err.message
        );
    }

    #[test]
    fn environment_is_declared_plus_knatives() {
        let (s, _) = run("containers:\n- image: x\n  command: [app]\n  env: [{name: A, value: \"1\"}]\n").unwrap();
        let env: BTreeMap<_, _> = s.env.into_iter().collect();
        assert_eq!(env["A"], "1");
        assert_eq!(
            (
                env["K_SERVICE"].as_str(),
                env["K_CONFIGURATION"].as_str(),
                env["K_REVISION"].as_str()
            ),
            ("svc", "svc", "svc-00001")
        );
        assert!(env.contains_key("PATH") && !env.contains_key("HOME"));
        let err = run("containers:\n- image: x\n  command: [app]\n  env: [{name: A, valueFrom: {secretKeyRef: {name: s, key: k}}}]\n").unwrap_err();
        assert_eq!(err.reason, "UnsupportedLocally");
    }

    #[test]
    fn probes_and_protocol() {
        let (s, p) = run("containers:\n- image: x\n  command: [app]\n  ports: [{containerPort: 8080, name: h2c}]\n  readinessProbe:\n    httpGet: {path: /ready, port: 8080}\n").unwrap();
        assert_eq!(p, Protocol::H2c);
        assert_eq!(
            s.probe.action,
            ProbeAction::Http {
                port: None,
                path: "/ready".into(),
                headers: vec![]
            }
        );
        assert_eq!(s.probe.period, AGGRESSIVE_PERIOD);
        let (s, _) = run("containers:\n- image: x\n  command: [app]\n  readinessProbe:\n    tcpSocket: {port: 9000}\n    periodSeconds: 2\n").unwrap();
        assert_eq!(s.probe.action, ProbeAction::Tcp { port: Some(9000) });
        assert_eq!(s.probe.period, Duration::from_secs(2));
    }
}
