//! What the data plane should be doing, derived purely from stored objects: which revisions run how
//! many replicas, and which routes are programmed. A [`Backend`] makes it so.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
#[derive(Debug, Clone)]
pub struct DesiredRevision {
    /// Shared with the controller's cache: a round hands the backend pointers, not copies.
    pub revision: Arc<Revision>,
    pub replicas: u32,
    /// Replicas a Rollout keeps whatever the autoscaler says (stable during a rollout, the previous
    /// stable within its rollback window).
    pub min_replicas: u32,
}

/// Equal when they run the same revision as many times. A revision read again unchanged keeps its
/// pointer, so comparing two desired states (after every change, with every revision in them) is a
/// pointer comparison per revision rather than a comparison of whole revisions.
impl PartialEq for DesiredRevision {
    fn eq(&self, other: &Self) -> bool {
        self.replicas == other.replicas
            && self.min_replicas == other.min_replicas
            && (Arc::ptr_eq(&self.revision, &other.revision) || self.revision == other.revision)
    }
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
    let mut of_service: HashMap<(&str, &str), Vec<&Arc<Revision>>> = HashMap::new();
    for rev in revisions {
        if let Some(svc) = rev.service_name() {
            of_service
                .entry((rev.metadata.namespace.as_str(), svc))
                .or_default()
                .push(rev);
        }
    }
    let timing = Timing::of(rollouts.iter().copied(), now);
    let mut out = DesiredState::default();
    for svc in services {
        let id = (svc.metadata.namespace.as_str(), svc.metadata.name.as_str());
        let revs = of_service.get(&id).map(Vec::as_slice).unwrap_or_default();
        service_part(svc, revs, &timing, defaults).append_to(&mut out);
    }
    out
}

/// What Rollouts add to a service's part: its Rollout (header route, mirror) and the replicas it
/// keeps (`floors`, which depend on the time).
struct Timing<'a> {
    rollout_of: HashMap<(&'a str, &'a str), &'a Rollout>,
    /// Per namespace, per revision name: looked up without allocating.
    floors: HashMap<&'a str, HashMap<String, u32>>,
}

impl<'a> Timing<'a> {
    fn of(rollouts: impl Iterator<Item = &'a Rollout>, now: chrono::DateTime<chrono::Utc>) -> Timing<'a> {
        let mut t = Timing {
            rollout_of: HashMap::new(),
            floors: HashMap::new(),
        };
        for r in rollouts {
            let ns = r.metadata.namespace.as_str();
            t.rollout_of.entry((ns, r.spec.service_ref.name.as_str())).or_insert(r);
            for (name, n) in revisor_rollout::floors(r, now) {
                let floor = t.floors.entry(ns).or_default().entry(name).or_default();
                *floor = (*floor).max(n);
            }
        }
        t
    }
}

/// One service's part of the desired state: its routes (once it has a URL) and its revisions.
#[derive(Debug, Clone, Default, PartialEq)]
struct ServicePart {
    routes: Option<ServiceRoutes>,
    revisions: Vec<DesiredRevision>,
}

impl ServicePart {
    fn append_to(&self, out: &mut DesiredState) {
        out.routes.extend(self.routes.iter().cloned());
        out.revisions.extend(self.revisions.iter().cloned());
    }
}

fn service_part(svc: &Service, revisions: &[&Arc<Revision>], timing: &Timing, defaults: &Defaults) -> ServicePart {
    let (ns, name) = (&svc.metadata.namespace, &svc.metadata.name);
    let rollout = timing.rollout_of.get(&(ns.as_str(), name.as_str()));
    let routes = svc.status.as_ref().and_then(|st| {
        let url = st.url.as_ref()?;
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
        if let Some(st) = rollout.and_then(|r| r.status.as_ref()) {
            if let Some(canary) = &st.canary_revision {
                if let Some(h) = &st.header_route {
                    routes.header_routes.push((h.matches.clone(), canary.clone()));
                }
                if let (Some(p), Some(stable)) = (st.mirror_percentage, &st.stable_revision) {
                    routes.mirror = Some((stable.clone(), canary.clone(), p));
                }
            }
        }
        Some(routes)
    });
    let floors = timing.floors.get(ns.as_str());
    let none = std::collections::BTreeMap::new();
    let revisions = revisions
        .iter()
        .map(|rev| {
            let a = parse_autoscaling(
                rev.metadata.annotations.as_ref().unwrap_or(&none),
                &Path::root("metadata.annotations"),
                defaults.annotation_limits(),
            )
            .unwrap_or_default();
            DesiredRevision {
                revision: Arc::clone(rev),
                replicas: if is_needed(svc, rev) { initial_replicas(&a) } else { 0 },
                min_replicas: floors.and_then(|f| f.get(&rev.metadata.name)).copied().unwrap_or(0),
            }
        })
        .collect();
    ServicePart { routes, revisions }
}

/// The desired state kept service by service, so that a change to one service derives that service
/// again and no other: with 1,000 services, deriving all of them after every change (a replica's
/// health, a reconcile) cost 1-6 ms of the controller's thread each time.
#[derive(Debug, Default)]
pub struct Derivation {
    parts: BTreeMap<(String, String), ServicePart>,
    /// The services a Rollout named at the last update (a Rollout that left one changes its part).
    timed: BTreeSet<(String, String)>,
}

impl Derivation {
    /// The desired state after `dirty` services changed (every service when `all`), from the
    /// current objects. Services a Rollout names are derived at every call: the replicas a Rollout
    /// keeps depend on the time. Equal to [`desired_state`] over the same objects.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        services: &BTreeMap<(String, String), Service>,
        revisions: &BTreeMap<(String, String), Arc<Revision>>,
        rollouts: &BTreeMap<(String, String), Rollout>,
        dirty: &BTreeSet<(String, String)>,
        all: bool,
        defaults: &Defaults,
        now: chrono::DateTime<chrono::Utc>,
    ) -> DesiredState {
        let timing = Timing::of(rollouts.values(), now);
        // The services a Rollout names, and the services of the revisions it keeps replicas of.
        let kept = timing.floors.iter().flat_map(|(ns, names)| {
            names.keys().filter_map(|name| {
                let svc = revisions.get(&(ns.to_string(), name.clone()))?.service_name()?;
                Some((ns.to_string(), svc.to_string()))
            })
        });
        let timed: BTreeSet<(String, String)> = timing
            .rollout_of
            .keys()
            .map(|(ns, name)| (ns.to_string(), name.to_string()))
            .chain(kept)
            .collect();
        let redo: BTreeSet<(String, String)> = if all {
            self.parts.clear();
            services.keys().cloned().collect()
        } else {
            dirty.iter().chain(&timed).chain(&self.timed).cloned().collect()
        };
        self.timed = timed;
        for id in redo {
            let Some(svc) = services.get(&id) else {
                self.parts.remove(&id);
                continue;
            };
            // A service's revisions are one range of keys: their names start with the service's.
            let prefix = format!("{}-", id.1);
            let revs: Vec<&Arc<Revision>> = revisions
                .range((id.0.clone(), prefix.clone())..)
                .take_while(|((ns, name), _)| *ns == id.0 && name.starts_with(&prefix))
                .map(|(_, r)| r)
                .filter(|r| r.service_name() == Some(id.1.as_str()))
                .collect();
            let part = service_part(svc, &revs, &timing, defaults);
            self.parts.insert(id, part);
        }
        let mut out = DesiredState::default();
        for part in self.parts.values() {
            part.append_to(&mut out);
        }
        out
    }
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

    /// The incremental derivation equals the whole one after every change, for the services it was
    /// told changed; a service it was not told about keeps its part (the point: a change to one
    /// service derives that one only).
    #[test]
    fn the_incremental_derivation_equals_the_whole_one() {
        type Key = (String, String);
        let named = |name: &str, ready: bool| {
            let mut s = svc(
                vec![target(None, true, 100, None)],
                vec![target(Some(&format!("{name}-00001")), false, 100, None)],
                &format!("{name}-00001"),
                ready.then(|| format!("{name}-00001")).as_deref(),
            );
            s.metadata.name = name.into();
            s.status.as_mut().unwrap().url = Some(format!("http://{name}.default.localhost:8080"));
            s
        };
        let revision = |svc: &str, n: u32, ready: bool| {
            let mut r = rev(&format!("{svc}-{n:05}"), ready, &[]);
            r.metadata.set_label("serving.knative.dev/service", svc);
            Arc::new(r)
        };
        let key = |n: &str| ("default".to_string(), n.to_string());
        // "a" and "a-b": one's revision names start with the other's name.
        let mut services: BTreeMap<Key, Service> = ["a", "a-b", "c"].iter().map(|n| (key(n), named(n, true))).collect();
        let mut revisions: BTreeMap<Key, Arc<Revision>> = BTreeMap::new();
        for (svc, n) in [("a", 1), ("a", 2), ("a-b", 1), ("c", 1)] {
            let r = revision(svc, n, true);
            revisions.insert(key(&r.metadata.name), r);
        }
        let rollouts = BTreeMap::new();
        let d = Defaults::default();
        let now = chrono::Utc::now();
        let whole = |services: &BTreeMap<Key, Service>, revisions: &BTreeMap<Key, Arc<Revision>>| {
            let s: Vec<&Service> = services.values().collect();
            let r: Vec<&Arc<Revision>> = revisions.values().collect();
            desired_state(&s, &r, &[], &d, now)
        };
        let mut inc = Derivation::default();
        let none = BTreeSet::new();
        assert_eq!(
            inc.update(&services, &revisions, &rollouts, &none, true, &d, now),
            whole(&services, &revisions)
        );

        // "a-b" gets a new, not yet ready revision; only "a-b" is said to have changed.
        let r = revision("a-b", 2, false);
        revisions.insert(key(&r.metadata.name), r);
        services
            .get_mut(&key("a-b"))
            .unwrap()
            .status
            .as_mut()
            .unwrap()
            .latest_created_revision_name = Some("a-b-00002".into());
        let dirty = BTreeSet::from([key("a-b")]);
        let got = inc.update(&services, &revisions, &rollouts, &dirty, false, &d, now);
        assert_eq!(got, whole(&services, &revisions));
        assert!(
            replicas(&got).contains(&("a-b-00002".into(), 1)),
            "{:?}",
            replicas(&got)
        );

        // "c" is deleted; a service not said to have changed keeps its part.
        services.remove(&key("c"));
        revisions.remove(&key("c-00001"));
        services.get_mut(&key("a")).unwrap().status.as_mut().unwrap().url = Some("http://elsewhere:1".into());
        let got = inc.update(
            &services,
            &revisions,
            &rollouts,
            &BTreeSet::from([key("c")]),
            false,
            &d,
            now,
        );
        assert!(got.routes.iter().all(|r| r.service != "c"));
        assert_eq!(
            got.routes[0].host, "a.default.localhost",
            "not told about a: its part stands"
        );
        let got = inc.update(
            &services,
            &revisions,
            &rollouts,
            &BTreeSet::from([key("a")]),
            false,
            &d,
            now,
        );
        assert_eq!(got, whole(&services, &revisions));
    }

    /// Desired revisions compare by pointer first, then by content: a revision read again unchanged
    /// and a copy of it are the same desired state; a changed one or another replica count is not.
    #[test]
    fn desired_revisions_compare_by_pointer_then_content() {
        let r = Arc::new(rev("svc-00001", true, &[]));
        let want = |revision: &Arc<Revision>, replicas| DesiredRevision {
            revision: Arc::clone(revision),
            replicas,
            min_replicas: 0,
        };
        assert_eq!(want(&r, 1), want(&r, 1));
        assert_eq!(want(&r, 1), want(&Arc::new((*r).clone()), 1));
        assert_ne!(want(&r, 1), want(&r, 2));
        assert_ne!(want(&r, 1), want(&Arc::new(rev("svc-00001", false, &[])), 1));
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
