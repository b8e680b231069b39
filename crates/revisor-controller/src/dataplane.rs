//! What the data plane should be doing, derived purely from stored objects: which revisions run how
//! many replicas, and which routes are programmed. A [`Backend`] makes it so.

use std::collections::HashMap;
use std::sync::Arc;

use revisor_api::annotations::{parse_autoscaling, AutoscalingAnnotations};
use revisor_api::meta::Conditions;
use revisor_api::rollout::HeaderMatch;
use revisor_api::{ConditionStatus, Defaults, Path, Revision, Rollout, Service};

/// The engine that runs revisions and routes requests (locally: processes and the gateway).
pub trait Backend: Send + Sync {
    /// Brings the data plane to `desired`. Called after every change; must be idempotent and quick.
    fn sync(&self, desired: Arc<DesiredState>);
}

/// One revision and how many replicas it should run.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredRevision {
    /// Shared with the controller's cache: a round hands the backend pointers, not copies.
    pub revision: Arc<Revision>,
    pub replicas: u32,
    /// Replicas a Rollout keeps whatever the autoscaler says (stable during a rollout, the previous
    /// stable within its rollback window).
    pub min_replicas: u32,
}

/// One routed target of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedTarget {
    pub revision: String,
    pub percent: u32,
    pub tag: Option<String>,
    /// The host of the tag's URL.
    pub tag_host: Option<String>,
}

/// The programmed routes of one service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRoutes {
    pub namespace: String,
    pub service: String,
    pub host: String,
    pub targets: Vec<RoutedTarget>,
    /// A Rollout's header route: matching requests go to `revision` (A/B).
    pub header_routes: Vec<(Vec<HeaderMatch>, String)>,
    /// A Rollout's mirror: (from, to, percent).
    pub mirror: Option<(String, String, u32)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredState {
    pub revisions: Vec<DesiredRevision>,
    pub routes: Vec<ServiceRoutes>,
}

/// The host of a URL (`http://a.b.c:8080` -> `a.b.c`).
pub fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(authority)
        .to_string()
}

/// The replicas a revision runs while it is needed: `initial-scale` (default 1) within min/max-scale.
pub fn initial_replicas(a: &AutoscalingAnnotations) -> u32 {
    let mut n = a.initial_scale.unwrap_or(1).max(a.min_scale.unwrap_or(0));
    if let Some(max) = a.max_scale.filter(|m| *m > 0) {
        n = n.min(max);
    }
    n.max(1) as u32
}

fn revision_ready(rev: &Revision) -> bool {
    rev.status
        .as_ref()
        .and_then(|s| s.conditions.get_condition("Ready"))
        .is_some_and(|c| c.status == ConditionStatus::True)
}

/// Derives the desired data plane: a revision runs when the service's programmed or declared traffic
/// reaches it (by percent or tag), or when it is its service's latest revision and not yet ready (so it
/// can become ready); everything else runs nothing.
pub fn desired_state(
    services: &[&Service],
    revisions: &[&Arc<Revision>],
    rollouts: &[&Rollout],
    defaults: &Defaults,
    now: chrono::DateTime<chrono::Utc>,
) -> DesiredState {
    let mut out = DesiredState::default();
    // Looked up once per service and per revision: maps, so that a thousand services cost a thousand
    // lookups rather than a million comparisons.
    let by_name: HashMap<(&str, &str), &Service> = services
        .iter()
        .map(|s| ((s.metadata.namespace.as_str(), s.metadata.name.as_str()), *s))
        .collect();
    let mut rollout_of: HashMap<(&str, &str), &Rollout> = HashMap::new();
    let mut floors: HashMap<(String, String), u32> = HashMap::new();
    for r in rollouts {
        let ns = r.metadata.namespace.as_str();
        rollout_of.entry((ns, r.spec.service_ref.name.as_str())).or_insert(*r);
        for (name, n) in revisor_rollout::floors(r, now) {
            let floor = floors.entry((ns.to_string(), name)).or_default();
            *floor = (*floor).max(n);
        }
    }
    for svc in services {
        let Some(st) = &svc.status else { continue };
        let (ns, name) = (&svc.metadata.namespace, &svc.metadata.name);
        if let Some(url) = &st.url {
            let targets = st
                .traffic
                .iter()
                .filter_map(|t| {
                    Some(RoutedTarget {
                        revision: t.revision_name.clone()?,
                        percent: t.percent().clamp(0, 100) as u32,
                        tag: t.tag().map(str::to_string),
                        tag_host: t.url.as_deref().map(host_of),
                    })
                })
                .collect();
            let mut routes = ServiceRoutes {
                namespace: ns.clone(),
                service: name.clone(),
                host: host_of(url),
                targets,
                ..Default::default()
            };
            let rollout = rollout_of
                .get(&(ns.as_str(), name.as_str()))
                .and_then(|r| r.status.as_ref());
            if let Some(st) = rollout {
                if let Some(canary) = &st.canary_revision {
                    if let Some(h) = &st.header_route {
                        routes.header_routes.push((h.matches.clone(), canary.clone()));
                    }
                    if let (Some(p), Some(stable)) = (st.mirror_percentage, &st.stable_revision) {
                        routes.mirror = Some((stable.clone(), canary.clone(), p));
                    }
                }
            }
            out.routes.push(routes);
        }
    }
    for rev in revisions {
        let Some(svc) = rev
            .service_name()
            .and_then(|s| by_name.get(&(rev.metadata.namespace.as_str(), s)).copied())
        else {
            continue;
        };
        let needed = is_needed(svc, rev);
        let annotations = rev.metadata.annotations_map();
        let a = parse_autoscaling(
            &annotations,
            &Path::root("metadata.annotations"),
            defaults.annotation_limits(),
        )
        .unwrap_or_default();
        let replicas = if needed { initial_replicas(&a) } else { 0 };
        let min_replicas = floors
            .get(&(rev.metadata.namespace.clone(), rev.metadata.name.clone()))
            .copied()
            .unwrap_or(0);
        out.revisions.push(DesiredRevision {
            revision: Arc::clone(rev),
            replicas,
            min_replicas,
        });
    }
    out
}

fn is_needed(svc: &Service, rev: &Revision) -> bool {
    let name = rev.metadata.name.as_str();
    let Some(st) = &svc.status else {
        return false;
    };
    let reaches = |t: &revisor_api::TrafficTarget, resolved: Option<&str>| {
        resolved == Some(name) && (t.percent() > 0 || t.tag().is_some())
    };
    let programmed = st.traffic.iter().any(|t| reaches(t, t.revision_name.as_deref()));
    let latest_ready = st.latest_ready_revision_name.as_deref();
    let declared = svc
        .spec
        .traffic()
        .iter()
        .any(|t| reaches(t, if t.is_latest() { latest_ready } else { t.revision() }));
    let latest_created = st.latest_created_revision_name.as_deref() == Some(name);
    programmed || declared || (latest_created && !revision_ready(rev))
}

#[cfg(test)]
mod tests {
    use super::*;
    use revisor_api::{Condition, RevisionStatus, ServiceStatus, TrafficTarget};

    fn rev(name: &str, ready: bool, annotations: &[(&str, &str)]) -> Revision {
        let mut r = Revision::default();
        r.metadata.name = name.into();
        r.metadata.namespace = "default".into();
        r.metadata.set_label("serving.knative.dev/service", "svc");
        if !annotations.is_empty() {
            r.metadata.annotations = Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
        }
        let status = if ready {
            ConditionStatus::True
        } else {
            ConditionStatus::Unknown
        };
        r.status = Some(RevisionStatus {
            conditions: vec![Condition::new("Ready", status, None, None)],
            ..Default::default()
        });
        r
    }

    fn target(rev: Option<&str>, latest: bool, percent: i64, tag: Option<&str>) -> TrafficTarget {
        TrafficTarget {
            revision_name: rev.map(str::to_string),
            latest_revision: Some(latest),
            percent: Some(percent),
            tag: tag.map(str::to_string),
            url: tag.map(|t| format!("http://{t}-svc.default.localhost:8080")),
            ..Default::default()
        }
    }

    fn svc(spec: Vec<TrafficTarget>, programmed: Vec<TrafficTarget>, created: &str, ready: Option<&str>) -> Service {
        let mut s = Service::default();
        s.metadata.name = "svc".into();
        s.metadata.namespace = "default".into();
        s.spec.traffic = Some(spec);
        s.status = Some(ServiceStatus {
            url: Some("http://svc.default.localhost:8080".into()),
            traffic: programmed,
            latest_created_revision_name: Some(created.into()),
            latest_ready_revision_name: ready.map(str::to_string),
            ..Default::default()
        });
        s
    }

    fn replicas(d: &DesiredState) -> Vec<(String, u32)> {
        d.revisions
            .iter()
            .map(|r| (r.revision.metadata.name.clone(), r.replicas))
            .collect()
    }

    #[test]
    fn which_revisions_run() {
        let d = Defaults::default();
        let r1 = rev("svc-00001", true, &[]);
        let r2 = rev("svc-00002", false, &[("autoscaling.knative.dev/initial-scale", "3")]);
        let r3 = rev("svc-00003", true, &[]);
        let cases = [
            (
                "the latest, not yet ready, runs to become ready; the routed one runs",
                svc(
                    vec![target(None, true, 100, None)],
                    vec![target(Some("svc-00001"), true, 100, None)],
                    "svc-00002",
                    Some("svc-00001"),
                ),
                vec![("svc-00001", 1), ("svc-00002", 3), ("svc-00003", 0)],
            ),
            (
                "a revision named in spec runs before the route moves to it",
                svc(
                    vec![target(Some("svc-00003"), false, 100, None)],
                    vec![target(Some("svc-00001"), true, 100, None)],
                    "svc-00003",
                    Some("svc-00003"),
                ),
                vec![("svc-00001", 1), ("svc-00002", 0), ("svc-00003", 1)],
            ),
            (
                "a tag keeps a 0% revision running",
                svc(
                    vec![
                        target(Some("svc-00001"), false, 100, None),
                        target(Some("svc-00003"), false, 0, Some("old")),
                    ],
                    vec![
                        target(Some("svc-00001"), false, 100, None),
                        target(Some("svc-00003"), false, 0, Some("old")),
                    ],
                    "svc-00003",
                    Some("svc-00003"),
                ),
                vec![("svc-00001", 1), ("svc-00002", 0), ("svc-00003", 1)],
            ),
        ];
        for (name, s, want) in cases {
            let (r1, r2, r3) = (Arc::new(r1.clone()), Arc::new(r2.clone()), Arc::new(r3.clone()));
            let got = desired_state(&[&s], &[&r1, &r2, &r3], &[], &d, chrono::Utc::now());
            let want: Vec<(String, u32)> = want.into_iter().map(|(n, r)| (n.to_string(), r)).collect();
            assert_eq!(replicas(&got), want, "{name}");
        }
    }

    #[test]
    fn routes_come_from_programmed_traffic() {
        let s = svc(
            vec![],
            vec![
                target(Some("svc-00001"), false, 90, Some("stable")),
                target(Some("svc-00002"), true, 10, None),
            ],
            "svc-00002",
            Some("svc-00002"),
        );
        let d = desired_state(&[&s], &[], &[], &Defaults::default(), chrono::Utc::now());
        assert_eq!(d.routes[0].host, "svc.default.localhost");
        assert_eq!(
            d.routes[0].targets[0].tag_host.as_deref(),
            Some("stable-svc.default.localhost")
        );
        assert_eq!(
            d.routes[0].targets[1],
            RoutedTarget {
                revision: "svc-00002".into(),
                percent: 10,
                tag: None,
                tag_host: None
            }
        );
    }

    #[test]
    fn initial_replicas_respect_bounds() {
        let a = |i, min, max| AutoscalingAnnotations {
            initial_scale: i,
            min_scale: min,
            max_scale: max,
            ..Default::default()
        };
        assert_eq!(initial_replicas(&a(None, None, None)), 1);
        assert_eq!(initial_replicas(&a(Some(3), None, Some(2))), 2);
        assert_eq!(initial_replicas(&a(Some(1), Some(4), None)), 4);
        assert_eq!(
            initial_replicas(&a(Some(0), None, None)),
            1,
            "locally a needed revision always runs"
        );
    }
}
