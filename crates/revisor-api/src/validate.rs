//! Validation as Knative's webhook does it: every problem collected with its field path.

use std::collections::{BTreeMap, BTreeSet};

use crate::annotations::{check_misplaced_autoscaling, parse_autoscaling, ROLLOUT_DURATION};
use crate::defaults::Defaults;
use crate::field::{FieldErrors, Path};
use crate::names::{
    dns1035_label_error, dns1123_label_error, label_value_error, qualified_name_error, MAX_SERVICE_NAME,
};
use crate::podspec::{Container, Probe, ResourceRequirements, RevisionSpec, Volume};
use crate::service::{Service, TrafficTarget};
use crate::units::{parse_go_duration, parse_quantity};

/// Ports the queue-proxy owns in Knative; a user container may not listen on them.
const RESERVED_PORTS: [i64; 5] = [8012, 8013, 8022, 9090, 9091];
/// Mount paths Knative refuses because the runtime needs them.
const RESERVED_PATHS: [&str; 6] = ["/", "/dev", "/dev/log", "/tmp", "/var", "/var/log"];

/// Validates a defaulted Service on its own (no knowledge of what is stored).
pub fn validate_service(svc: &Service, defaults: &Defaults) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::default();
    validate_metadata(svc, &mut errs);
    validate_template(svc, defaults, &mut errs);
    validate_traffic(svc, &mut errs);
    errs.into_result()
}

/// Validates an update against the stored object: a named template may not change under the same name.
pub fn validate_service_update(old: &Service, new: &Service) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::default();
    let (old_t, new_t) = (&old.spec.template, &new.spec.template);
    if let (Some(a), Some(b)) = (old_t.byo_name(), new_t.byo_name()) {
        if a == b && old_t != new_t {
            errs.push(
                "spec.template.metadata.name",
                format!(
                    "spec.template changed but its name {b:?} did not: a revision is immutable, \
                     so give the new template a new name (or remove the name to let revisor pick one)"
                ),
            );
        }
    }
    errs.into_result()
}

fn validate_metadata(svc: &Service, errs: &mut FieldErrors) {
    let meta = &svc.metadata;
    let path = Path::root("metadata");
    if meta.name.is_empty() {
        errs.push(path.field("name"), "missing field(s)");
    } else if let Some(e) = dns1035_label_error(&meta.name) {
        errs.push(path.field("name"), e);
    } else if meta.name.len() > MAX_SERVICE_NAME {
        errs.push(
            path.field("name"),
            format!(
                "must be no more than {MAX_SERVICE_NAME} characters so that revision names \
                 (<name>-00001) stay within 63, got {}",
                meta.name.len()
            ),
        );
    }
    if let Some(e) = dns1123_label_error(&meta.namespace) {
        errs.push(path.field("namespace"), e);
    }
    check_labels(meta.labels.as_ref(), &path.field("labels"), errs);
    check_annotation_keys(meta.annotations.as_ref(), &path.field("annotations"), errs);
    let annotations = meta.annotations_map();
    check_misplaced_autoscaling(&annotations, &path.field("annotations"), errs);
    if let Some(v) = annotations.get(ROLLOUT_DURATION) {
        if let Err(e) = parse_go_duration(v) {
            errs.push(path.field("annotations").field(ROLLOUT_DURATION), e);
        }
    }
}

fn check_labels(labels: Option<&BTreeMap<String, String>>, path: &Path, errs: &mut FieldErrors) {
    for (k, v) in labels.into_iter().flatten() {
        if let Some(e) = qualified_name_error(k) {
            errs.push(path.field(k), e);
        }
        if let Some(e) = label_value_error(v) {
            errs.push(path.field(k), e);
        }
    }
}

fn check_annotation_keys(annotations: Option<&BTreeMap<String, String>>, path: &Path, errs: &mut FieldErrors) {
    for k in annotations.into_iter().flatten().map(|(k, _)| k) {
        if let Some(e) = qualified_name_error(k) {
            errs.push(path.field(k), e);
        }
    }
}

fn validate_template(svc: &Service, defaults: &Defaults, errs: &mut FieldErrors) {
    let template = &svc.spec.template;
    let path = Path::root("spec").field("template");
    let mpath = path.field("metadata");
    if let Some(meta) = &template.metadata {
        if let Some(name) = meta.name.as_deref().filter(|n| !n.is_empty()) {
            let prefix = format!("{}-", svc.metadata.name);
            if let Some(e) = dns1035_label_error(name) {
                errs.push(mpath.field("name"), e);
            } else if !name.starts_with(&prefix) {
                errs.push(mpath.field("name"), format!("{name:?} must have prefix {prefix:?}"));
            }
        }
        if let Some(ns) = meta.namespace.as_deref().filter(|n| !n.is_empty()) {
            if ns != svc.metadata.namespace {
                errs.push(
                    mpath.field("namespace"),
                    format!(
                        "must match the service's namespace {:?}, got {ns:?}",
                        svc.metadata.namespace
                    ),
                );
            }
        }
        check_labels(meta.labels.as_ref(), &mpath.field("labels"), errs);
        check_annotation_keys(meta.annotations.as_ref(), &mpath.field("annotations"), errs);
    }
    if let Err(e) = parse_autoscaling(
        &template.annotations(),
        &mpath.field("annotations"),
        defaults.annotation_limits(),
    ) {
        errs.extend(e);
    }
    validate_revision_spec(&template.spec, &path.field("spec"), defaults, errs);
}

/// Validates a revision's spec (the template's, or a stored Revision's).
pub fn validate_revision_spec(spec: &RevisionSpec, path: &Path, defaults: &Defaults, errs: &mut FieldErrors) {
    let containers = spec.containers();
    if containers.is_empty() {
        errs.push(
            path.field("containers"),
            "missing field(s): at least one container is required",
        );
    }
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let volume_names = validate_volumes(volumes, &path.field("volumes"), errs);
    let mut container_names = BTreeSet::new();
    let mut mounted = BTreeSet::new();
    for (i, c) in containers.iter().enumerate() {
        let cpath = path.field("containers").index(i);
        validate_container(c, &cpath, &volume_names, &mut container_names, &mut mounted, errs);
        validate_ports(c, &cpath, errs);
    }
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        let cpath = path.field("initContainers").index(i);
        validate_container(c, &cpath, &volume_names, &mut container_names, &mut mounted, errs);
    }
    let with_ports = containers.iter().filter(|c| !c.ports().is_empty()).count();
    if containers.len() > 1 && with_ports != 1 {
        errs.push(
            path.field("containers"),
            format!(
                "with several containers exactly one (the serving container) must declare a port, got {with_ports}"
            ),
        );
    }
    for (i, v) in volumes.iter().enumerate() {
        if !v.name.is_empty() && !mounted.contains(&v.name) {
            errs.push(
                path.field("volumes").index(i).field("name"),
                format!("volume {:?} is not mounted", v.name),
            );
        }
    }
    for (i, s) in spec.image_pull_secrets.iter().flatten().enumerate() {
        if s.name.is_empty() {
            errs.push(
                path.field("imagePullSecrets").index(i).field("name"),
                "missing field(s)",
            );
        }
    }
    validate_scalars(spec, path, defaults, errs);
}

fn validate_scalars(spec: &RevisionSpec, path: &Path, defaults: &Defaults, errs: &mut FieldErrors) {
    let max_cc = defaults.container_concurrency_max_limit;
    if let Some(cc) = spec.container_concurrency {
        if !(0..=max_cc).contains(&cc) {
            errs.push(
                path.field("containerConcurrency"),
                format!("must be in [0, {max_cc}], got {cc}"),
            );
        } else if cc == 0 && !defaults.allow_container_concurrency_zero {
            errs.push(
                path.field("containerConcurrency"),
                "0 (unbounded) is not allowed by this server",
            );
        }
    }
    let max_t = defaults.max_revision_timeout_seconds;
    for (field, value) in [
        ("timeoutSeconds", spec.timeout_seconds),
        ("responseStartTimeoutSeconds", spec.response_start_timeout_seconds),
        ("idleTimeoutSeconds", spec.idle_timeout_seconds),
    ] {
        if let Some(v) = value.filter(|v| !(0..=max_t).contains(v)) {
            errs.push(path.field(field), format!("must be in [0, {max_t}], got {v}"));
        }
    }
    if let (Some(rs), Some(t)) = (spec.response_start_timeout_seconds, spec.timeout_seconds) {
        if rs > t && rs <= max_t {
            errs.push(
                path.field("responseStartTimeoutSeconds"),
                format!("must not exceed timeoutSeconds ({t}), got {rs}"),
            );
        }
    }
    if let Some(sa) = spec.service_account_name.as_deref().filter(|s| !s.is_empty()) {
        if sa.split('.').any(|p| dns1123_label_error(p).is_some()) {
            errs.push(
                path.field("serviceAccountName"),
                format!("{sa:?} is not a DNS-1123 subdomain"),
            );
        }
    }
}

fn validate_container(
    c: &Container,
    path: &Path,
    volumes: &BTreeSet<String>,
    names: &mut BTreeSet<String>,
    mounted: &mut BTreeSet<String>,
    errs: &mut FieldErrors,
) {
    if c.image.as_deref().unwrap_or("").trim().is_empty() {
        errs.push(path.field("image"), "missing field(s)");
    }
    if let Some(name) = c.name.as_deref() {
        if let Some(e) = dns1123_label_error(name) {
            errs.push(path.field("name"), e);
        } else if !names.insert(name.to_string()) {
            errs.push(path.field("name"), format!("duplicate container name {name:?}"));
        }
    }
    if let Some(p) = c.image_pull_policy.as_deref() {
        if !matches!(p, "Always" | "IfNotPresent" | "Never") {
            errs.push(
                path.field("imagePullPolicy"),
                format!("must be Always, IfNotPresent or Never, got {p:?}"),
            );
        }
    }
    validate_env(c, path, errs);
    for (field, probe) in [
        ("readinessProbe", &c.readiness_probe),
        ("livenessProbe", &c.liveness_probe),
        ("startupProbe", &c.startup_probe),
    ] {
        if let Some(p) = probe {
            validate_probe(p, field, &path.field(field), errs);
        }
    }
    if let Some(r) = &c.resources {
        validate_resources(r, &path.field("resources"), errs);
    }
    let mut paths = BTreeSet::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let mpath = path.field("volumeMounts").index(i);
        if m.name.is_empty() {
            errs.push(mpath.field("name"), "missing field(s)");
        } else if !volumes.contains(&m.name) {
            errs.push(
                mpath.field("name"),
                format!("no volume named {:?} in spec.volumes", m.name),
            );
        } else {
            mounted.insert(m.name.clone());
        }
        let mp = m.mount_path.trim_end_matches('/');
        if m.mount_path.is_empty() {
            errs.push(mpath.field("mountPath"), "missing field(s)");
        } else if !m.mount_path.starts_with('/') {
            errs.push(
                mpath.field("mountPath"),
                format!("must be an absolute path, got {:?}", m.mount_path),
            );
        } else if RESERVED_PATHS.contains(&m.mount_path.as_str()) || RESERVED_PATHS.contains(&mp) {
            errs.push(
                mpath.field("mountPath"),
                format!("{:?} is a reserved path", m.mount_path),
            );
        } else if !paths.insert(mp.to_string()) {
            errs.push(mpath.field("mountPath"), format!("{:?} is mounted twice", m.mount_path));
        }
    }
}

fn validate_env(c: &Container, path: &Path, errs: &mut FieldErrors) {
    for (i, e) in c.env().iter().enumerate() {
        let epath = path.field("env").index(i);
        if e.name.is_empty() {
            errs.push(epath.field("name"), "missing field(s)");
        } else if e.name.contains('=') {
            errs.push(epath.field("name"), format!("{:?} must not contain '='", e.name));
        }
        if e.value.is_some() && e.value_from.is_some() {
            errs.push(epath.clone(), "set value or valueFrom, not both");
        }
        if let Some(vf) = &e.value_from {
            let refs = ["configMapKeyRef", "fieldRef", "resourceFieldRef", "secretKeyRef"];
            let set = vf
                .as_object()
                .map(|o| o.keys().filter(|k| refs.contains(&k.as_str())).count())
                .unwrap_or(0);
            if set != 1 {
                errs.push(
                    epath.field("valueFrom"),
                    format!("set exactly one of {}, got {set}", refs.join(", ")),
                );
            }
        }
    }
    for (i, e) in c.env_from.iter().flatten().enumerate() {
        if e.config_map_ref.is_some() == e.secret_ref.is_some() {
            errs.push(
                path.field("envFrom").index(i),
                "set exactly one of configMapRef or secretRef",
            );
        }
    }
}

fn validate_ports(c: &Container, path: &Path, errs: &mut FieldErrors) {
    let ports = c.ports();
    if ports.len() > 1 {
        errs.push(
            path.field("ports"),
            format!("a container may declare at most one port, got {}", ports.len()),
        );
    }
    for (i, p) in ports.iter().enumerate() {
        let ppath = path.field("ports").index(i);
        match p.container_port {
            Some(n) if !(1..=65535).contains(&n) => {
                errs.push(ppath.field("containerPort"), format!("must be in [1, 65535], got {n}"))
            }
            Some(n) if RESERVED_PORTS.contains(&n) => {
                errs.push(ppath.field("containerPort"), format!("{n} is a reserved port"))
            }
            _ => {}
        }
        if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
            if !matches!(name, "http1" | "h2c") {
                errs.push(
                    ppath.field("name"),
                    format!("must be empty, \"http1\" or \"h2c\", got {name:?}"),
                );
            }
        }
        if let Some(proto) = p.protocol.as_deref().filter(|n| !n.is_empty()) {
            if proto != "TCP" {
                errs.push(ppath.field("protocol"), format!("must be \"TCP\", got {proto:?}"));
            }
        }
    }
}

fn validate_probe(p: &Probe, kind: &str, path: &Path, errs: &mut FieldErrors) {
    match p.handler_count() {
        0 if kind != "readinessProbe" => errs.push(path.clone(), "set one of httpGet, tcpSocket, grpc or exec"),
        n if n > 1 => errs.push(
            path.clone(),
            format!("set exactly one of httpGet, tcpSocket, grpc or exec, got {n}"),
        ),
        _ => {}
    }
    for (field, v) in [
        ("initialDelaySeconds", p.initial_delay_seconds),
        ("periodSeconds", p.period_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ] {
        match v {
            Some(v) if v < 0 => errs.push(path.field(field), format!("must not be negative, got {v}")),
            // Kubernetes' probe fields are int32.
            Some(v) if v > i64::from(i32::MAX) => errs.push(
                path.field(field),
                format!("must be at most {} (an int32, as in Kubernetes), got {v}", i32::MAX),
            ),
            _ => {}
        }
    }
    if kind != "readinessProbe" && p.success_threshold.is_some_and(|s| s != 1) {
        errs.push(
            path.field("successThreshold"),
            "must be 1 for liveness and startup probes",
        );
    }
    if let Some(h) = &p.http_get {
        if let Some(path_) = h.path.as_deref().filter(|s| !s.is_empty() && !s.starts_with('/')) {
            errs.push(
                path.field("httpGet").field("path"),
                format!("must start with '/', got {path_:?}"),
            );
        }
        if let Some(s) = h.scheme.as_deref().filter(|s| !matches!(*s, "HTTP" | "HTTPS")) {
            errs.push(
                path.field("httpGet").field("scheme"),
                format!("must be HTTP or HTTPS, got {s:?}"),
            );
        }
    }
}

fn validate_resources(r: &ResourceRequirements, path: &Path, errs: &mut FieldErrors) {
    let mut parsed: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for (kind, map) in [("requests", &r.requests), ("limits", &r.limits)] {
        for (name, q) in map.iter().flatten() {
            let qpath = path.field(kind).field(name);
            let known = matches!(name.as_str(), "cpu" | "memory" | "ephemeral-storage")
                || name.starts_with("hugepages-")
                || name.contains('/');
            if !known {
                errs.push(qpath.clone(), format!("unknown resource {name:?} (cpu, memory, ephemeral-storage, hugepages-*, or a domain-prefixed name)"));
            }
            match parse_quantity(&q.text()) {
                Ok(v) => {
                    parsed.insert((kind, name.as_str()), v);
                }
                Err(e) => errs.push(qpath, e),
            }
        }
    }
    for ((kind, name), req) in &parsed {
        if *kind != "requests" {
            continue;
        }
        if let Some(limit) = parsed.get(&("limits", *name)) {
            if req > limit {
                errs.push(
                    path.field("requests").field(name),
                    format!("must be less than or equal to the {name} limit"),
                );
            }
        }
    }
}

fn validate_volumes(volumes: &[Volume], path: &Path, errs: &mut FieldErrors) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, v) in volumes.iter().enumerate() {
        let vpath = path.index(i);
        if v.name.is_empty() {
            errs.push(vpath.field("name"), "missing field(s)");
        } else if let Some(e) = dns1123_label_error(&v.name) {
            errs.push(vpath.field("name"), e);
        } else if !names.insert(v.name.clone()) {
            errs.push(vpath.field("name"), format!("duplicate volume name {:?}", v.name));
        }
        if v.source_count() != 1 {
            errs.push(
                vpath,
                format!(
                    "set exactly one volume source (secret, configMap, emptyDir, projected, ...), got {}",
                    v.source_count()
                ),
            );
        }
    }
    names
}

fn validate_traffic(svc: &Service, errs: &mut FieldErrors) {
    let path = Path::root("spec").field("traffic");
    let traffic = svc.spec.traffic();
    let mut tags: BTreeMap<&str, usize> = BTreeMap::new();
    let mut sum = 0i64;
    for (i, t) in traffic.iter().enumerate() {
        let tpath = path.index(i);
        validate_target(t, &tpath, &svc.metadata.name, errs);
        if let Some(p) = t.percent {
            if !(0..=100).contains(&p) {
                errs.push(tpath.field("percent"), format!("must be in [0, 100], got {p}"));
            }
            sum += p;
        }
        if let Some(tag) = t.tag() {
            if let Some(first) = tags.insert(tag, i) {
                errs.push(
                    tpath.field("tag"),
                    format!("duplicate tag {tag:?} (also at spec.traffic[{first}])"),
                );
            }
        }
    }
    if !traffic.is_empty() && sum != 100 {
        errs.push(path, format!("traffic targets sum to {sum}, want 100"));
    }
}

fn validate_target(t: &TrafficTarget, path: &Path, service: &str, errs: &mut FieldErrors) {
    if t.configuration_name.as_deref().is_some_and(|s| !s.is_empty()) {
        errs.push(
            path.field("configurationName"),
            "must not set the field(s): a Service routes to its own configuration",
        );
    }
    if t.url.as_deref().is_some_and(|s| !s.is_empty()) {
        errs.push(
            path.field("url"),
            "must not set the field(s): url is set by the server in status",
        );
    }
    match (t.revision(), t.is_latest()) {
        (Some(_), true) => errs.push(path.clone(), "set revisionName or latestRevision: true, not both"),
        (None, false) => errs.push(
            path.field("revisionName"),
            "missing field(s): latestRevision is false, so a revision must be named",
        ),
        (Some(r), false) => {
            if let Some(e) = dns1035_label_error(r) {
                errs.push(path.field("revisionName"), e);
            }
        }
        (None, true) => {}
    }
    if let Some(tag) = t.tag() {
        if let Some(e) = dns1035_label_error(tag) {
            errs.push(path.field("tag"), e);
        } else if tag.len() + 1 + service.len() > 63 {
            errs.push(
                path.field("tag"),
                format!("the tagged host label {tag}-{service} must be no more than 63 characters"),
            );
        }
    }
}
