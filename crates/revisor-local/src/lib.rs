//! The local backend: the controller's desired data plane made real on one machine. Revisions run as
//! processes (revisor-runtime), requests reach them through the gateway (revisor-gateway), and what the
//! replicas do flows back into the revisions' status.
//!
//! Routes are republished whenever the desired state or the set of ready replicas changes, and always
//! before replicas are scaled down, so a replica leaves the route before it is drained and stopped.
//!
//! Routed revisions are scaled by the KPA (`autoscale.rs`); others run their initial scale while they are
//! needed (the latest revision becoming ready, a revision traffic is about to move to) and nothing after.
//!
//! Two guarantees hold whatever the store says (its view of readiness can lag a moment behind the
//! processes): a service's route only moves to targets that all have ready replicas or that the
//! autoscaler took to zero (whose requests the gateway holds while it brings them back); until then it
//! keeps its last good targets. And a revision leaves zero the moment a request waits for it.

pub mod autoscale;
pub mod command;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use revisor_api::annotations::{parse_autoscaling, HPA_CLASS};
use revisor_api::Path;
use revisor_autoscaler::DeciderSpec;
use revisor_controller::{record_health, Backend, DesiredState, RevisionHealth, RoutedTarget, ServiceRoutes};
use revisor_store::Event;

use crate::autoscale::{counters, drive, AutoscalerCollector, Autoscaling};
use revisor_gateway::{
    Gateway, HeaderMatchSpec, HeaderRouteSpec, MatchSpec, MirrorSpec, Protocol, RevisionSpec, RoutesSpec, ServiceSpec,
    TargetSpec,
};
use revisor_runtime::{RevisionKey, Runtime, Snapshot};
use revisor_store::Store;
use tokio::sync::Notify;

pub use command::{process_spec, ImageCommand, LocalConfig, Unrunnable};

/// What the loop hands its health writer: revision health that changed, and cold starts to record
/// as events (the revision, its service, the wait, the replica's start timings).
type HealthBatch = (
    Vec<RevisionHealth>,
    Vec<(
        RevisionKey,
        String,
        autoscale::ColdStart,
        Option<revisor_runtime::StartTiming>,
    )>,
);

struct Inner {
    /// To the health writer: the loop never waits for the store.
    health: tokio::sync::mpsc::UnboundedSender<HealthBatch>,
    runtime: Runtime,
    gateway: Gateway,
    config: LocalConfig,
    desired: Mutex<Arc<DesiredState>>,
    changed: Notify,
    autoscaling: Arc<Autoscaling>,
}

/// The local backend. Cheap to clone.
#[derive(Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

impl Backend for LocalBackend {
    fn sync(&self, desired: Arc<DesiredState>) {
        *self.inner.desired.lock().unwrap() = desired;
        self.inner.changed.notify_one();
    }
}

/// Rollout analysis reads the gateway: a revision's counters summed over every route to it.
pub struct GatewayMetrics(Gateway);

impl revisor_rollout_controller::MetricsSource for GatewayMetrics {
    async fn counters(&self, namespace: &str, revision: &str) -> Option<revisor_rollout::Counters> {
        let mine = self
            .0
            .metrics()
            .into_iter()
            .filter(|m| m.labels.namespace == namespace && m.labels.revision == revision);
        counters_by_revision(mine).into_values().next()
    }
}

/// The gateway's per-route counters summed per revision (namespace, name): what analysis and the
/// dashboard read.
pub fn counters_by_revision(
    metrics: impl IntoIterator<Item = revisor_gateway::MetricsSnapshot>,
) -> BTreeMap<(String, String), revisor_rollout::Counters> {
    let mut out: BTreeMap<(String, String), revisor_rollout::Counters> = BTreeMap::new();
    for m in metrics {
        let key = (m.labels.namespace.clone(), m.labels.revision.clone());
        let c = out.entry(key).or_insert_with(|| revisor_rollout::Counters {
            requests: [0; 5],
            bounds_ms: m.latency_buckets_ms.clone(),
            latency_counts: vec![0; m.latency_counts.len()],
            diff_bounds: revisor_gateway::DIFF_BUCKETS.to_vec(),
            diff_counts: vec![0; m.diff_counts.len()],
            ..Default::default()
        });
        for (a, b) in c.requests.iter_mut().zip(m.requests) {
            *a += b;
        }
        for (a, b) in c.latency_counts.iter_mut().zip(&m.latency_counts) {
            *a += b;
        }
        c.compared += m.compared;
        c.argmax_agreed += m.argmax_agreed;
        for (a, b) in c.diff_counts.iter_mut().zip(&m.diff_counts) {
            *a += b;
        }
    }
    out
}

/// What the loop knows about each revision beyond the runtime's snapshot.
#[derive(Default)]
struct Known {
    protocols: HashMap<RevisionKey, Protocol>,
    unrunnable: HashMap<RevisionKey, Unrunnable>,
    reported: BTreeMap<RevisionKey, RevisionHealth>,
    /// Replicas last asked of the runtime.
    replicas: HashMap<RevisionKey, u32>,
    /// The uid of the revision each runtime entry runs: a revision deleted and made again under the
    /// same name (a service deleted and applied again) is another object, whose replicas start afresh.
    uids: HashMap<RevisionKey, Option<String>>,
    /// The targets last published per service (namespace, service).
    published: HashMap<(String, String), Vec<RoutedTarget>>,
    /// The route table last given to the gateway: one unchanged is not published again.
    routes: Option<RoutesSpec>,
    /// What each revision's spec and annotations say, parsed once per version of the revision.
    parsed: HashMap<RevisionKey, Parsed>,
}

/// What the loop reads from a revision's spec and annotations: parsed once per version of the
/// revision (its uid and resourceVersion), not on every round, which with a thousand revisions was
/// most of a round's time.
struct Parsed {
    uid: Option<String>,
    version: Option<String>,
    process: Result<(Arc<revisor_runtime::ProcessSpec>, Protocol), Unrunnable>,
    decider: Option<DeciderSpec>,
    initial: u32,
}

impl Parsed {
    fn of(rev: &revisor_api::Revision, cfg: &LocalConfig) -> Parsed {
        Parsed {
            uid: rev.metadata.uid.clone(),
            version: rev.metadata.resource_version.clone(),
            process: process_spec(rev, cfg).map(|(spec, protocol)| (Arc::new(spec), protocol)),
            decider: decider_spec(rev, cfg),
            initial: initial_replicas(rev, cfg),
        }
    }

    fn is_of(&self, rev: &revisor_api::Revision) -> bool {
        self.uid == rev.metadata.uid && self.version.is_some() && self.version == rev.metadata.resource_version
    }
}

impl Known {
    /// `rev`'s parsed spec and annotations, parsed again only when the revision changed.
    fn parsed(&mut self, key: &RevisionKey, rev: &revisor_api::Revision, cfg: &LocalConfig) -> &Parsed {
        let fresh = self.parsed.get(key).is_some_and(|p| p.is_of(rev));
        if !fresh {
            self.parsed.insert(key.clone(), Parsed::of(rev, cfg));
        }
        &self.parsed[key]
    }

    /// Gives the gateway `routes` unless they are what it has already.
    fn publish(&mut self, gateway: &Gateway, routes: RoutesSpec) {
        if self.routes.as_ref() != Some(&routes) {
            gateway.publish(&routes);
            self.routes = Some(routes);
        }
    }
}

impl LocalBackend {
    /// Starts the backend's loop on the current tokio runtime.
    pub fn start(store: Store, runtime: Runtime, gateway: Gateway, config: LocalConfig) -> LocalBackend {
        let autoscaling = Arc::new(Autoscaling::new(config.autoscaler.clone()));
        let (health, batches) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(write_health(store, batches));
        let inner = Arc::new(Inner {
            health,
            runtime,
            gateway,
            config,
            desired: Mutex::new(Arc::new(DesiredState::default())),
            changed: Notify::new(),
            autoscaling,
        });
        let (poke, pokes) = tokio::sync::mpsc::unbounded_channel();
        inner
            .gateway
            .set_activator(Arc::new(move |ns: &str, rev: &str, held: usize| {
                let _ = poke.send((key_of(ns, rev), held));
            }));
        tokio::spawn(run(inner.clone()));
        let i = inner.clone();
        tokio::spawn(async move {
            let replicas = i.runtime.subscribe();
            let ready = |k: &RevisionKey| replicas.borrow().get(k).map(|s| s.ready.len() as u32).unwrap_or(0);
            drive(
                &i.autoscaling,
                || counters(&i.gateway),
                ready,
                || i.changed.notify_one(),
                pokes,
            )
            .await
        });
        LocalBackend { inner }
    }

    /// The gateway's counters, for rollout analysis.
    pub fn metrics_source(&self) -> GatewayMetrics {
        GatewayMetrics(self.inner.gateway.clone())
    }

    /// The autoscaler's metrics (desired and actual replicas, panic mode, observed values) for a
    /// prometheus-client registry, read at each scrape.
    pub fn autoscaler_collector(&self) -> AutoscalerCollector {
        let runtime = self.inner.runtime.clone();
        AutoscalerCollector::new(self.inner.autoscaling.clone(), move || {
            let snapshot = runtime.subscribe().borrow().clone();
            snapshot
                .iter()
                .map(|(k, s)| (k.clone(), s.ready.len() as u32))
                .collect()
        })
    }

    /// Drains and stops every replica (server shutdown).
    pub async fn shutdown(&self) {
        self.inner.runtime.shutdown().await;
    }
}

/// Where each service's route and revisions are in a desired state.
#[derive(Default)]
struct Index {
    /// (namespace, service) -> its route in `routes`, and its revisions in `revisions`.
    services: HashMap<(String, String), (Option<usize>, Vec<usize>)>,
    /// Each revision's (namespace, service).
    service_of: HashMap<RevisionKey, (String, String)>,
}

impl Index {
    fn of(desired: &DesiredState) -> Index {
        let mut services: HashMap<(String, String), (Option<usize>, Vec<usize>)> = HashMap::new();
        for (i, r) in desired.routes.iter().enumerate() {
            services.entry((r.namespace.clone(), r.service.clone())).or_default().0 = Some(i);
        }
        let mut service_of = HashMap::new();
        for (i, d) in desired.revisions.iter().enumerate() {
            let Some(svc) = d.revision.service_name() else { continue };
            let id = (d.revision.metadata.namespace.clone(), svc.to_string());
            service_of.insert(key_of(&id.0, &d.revision.metadata.name), id.clone());
            services.entry(id).or_default().1.push(i);
        }
        Index { services, service_of }
    }
}

/// The services whose part of the desired state differs between `old` and `new` (their route, or
/// one of their revisions: another object, or other replicas asked), or `None` when services or
/// revisions came, went or moved, which only a whole round handles.
fn changed_services(old: &DesiredState, new: &DesiredState) -> Option<Vec<(String, String)>> {
    if std::ptr::eq(old, new) {
        return Some(Vec::new());
    }
    if old.routes.len() != new.routes.len() || old.revisions.len() != new.revisions.len() {
        return None;
    }
    let mut out: Vec<(String, String)> = Vec::new();
    let mut note = |ns: &str, svc: &str| {
        if !out.iter().any(|(n, s)| n == ns && s == svc) {
            out.push((ns.to_string(), svc.to_string()));
        }
    };
    for (a, b) in old.routes.iter().zip(&new.routes) {
        if a.namespace != b.namespace || a.service != b.service {
            return None;
        }
        if a != b {
            note(&b.namespace, &b.service);
        }
    }
    for (a, b) in old.revisions.iter().zip(&new.revisions) {
        let (ma, mb) = (&a.revision.metadata, &b.revision.metadata);
        if ma.namespace != mb.namespace || ma.name != mb.name || a.revision.service_name() != b.revision.service_name()
        {
            return None;
        }
        if !Arc::ptr_eq(&a.revision, &b.revision) || a.replicas != b.replicas || a.min_replicas != b.min_replicas {
            match b.revision.service_name() {
                Some(svc) => note(&mb.namespace, svc),
                None => return None,
            }
        }
    }
    Some(out)
}

/// The revisions whose replica state differs between two snapshots (both are sorted maps).
fn changed_revisions(before: &Snapshot, now: &Snapshot) -> Vec<RevisionKey> {
    if Arc::ptr_eq(before, now) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let (mut a, mut b) = (before.iter().peekable(), now.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return out,
            (Some((k, _)), None) => {
                out.push((*k).clone());
                a.next();
            }
            (None, Some((k, _))) => {
                out.push((*k).clone());
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    out.push((*ka).clone());
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.push((*kb).clone());
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if va != vb {
                        out.push((*ka).clone());
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}

async fn run(inner: Arc<Inner>) {
    let mut replicas = inner.runtime.subscribe();
    let mut known = Known::default();
    // What the last round worked from: unless services or revisions came or went, a round derives
    // again only the services whose desired part or replicas changed since, or whose replicas the
    // autoscaler changed.
    let mut last: Option<(Arc<DesiredState>, Index, Snapshot)> = None;
    loop {
        let desired = inner.desired.lock().unwrap().clone();
        let snapshot = replicas.borrow_and_update().clone();
        let scaled = inner.autoscaling.take_changed();
        let light = match &mut last {
            Some((d, index, before)) => match changed_services(d, &desired) {
                Some(services) => {
                    let mut changed = changed_revisions(before, &snapshot);
                    changed.extend(scaled);
                    let done = light_round(
                        &inner, &desired, index, &services, &changed, &snapshot, &replicas, &mut known,
                    );
                    if done {
                        *d = desired.clone();
                        *before = snapshot.clone();
                    }
                    done
                }
                None => false,
            },
            None => false,
        };
        if !light {
            let effective = effective_routes(&desired, &snapshot, &mut known, &|k| inner.autoscaling.activatable(k));
            let table = routes(&desired, &effective, &snapshot, &known);
            known.publish(&inner.gateway, table);
            scale(&inner, &desired, &effective, &snapshot, &mut known);
            // Not marked seen: what changed after `snapshot` (a replica that became ready meanwhile)
            // wakes the next round, which compares with `snapshot`.
            let now = replicas.borrow().clone();
            // Scaling can change the protocol or set of revisions known; publish what is current.
            let table = routes(&desired, &effective, &now, &known);
            known.publish(&inner.gateway, table);
            report(&inner, desired.revisions.iter(), &now, &mut known);
            let index = match last.take() {
                Some((d, index, _)) if changed_services(&d, &desired).is_some() => index,
                _ => Index::of(&desired),
            };
            last = Some((desired, index, snapshot));
        }
        tokio::select! {
            _ = inner.changed.notified() => {}
            r = replicas.changed() => if r.is_err() { return },
        }
    }
}

/// A round for a few services: those whose desired part changed (`changed_services`) and those of
/// the `changed` revisions (their replicas changed, or the autoscaler changed what they should run)
/// are derived again (their routes patched into the published table, their revisions scaled and
/// reported) and no other, so a cold start, a replica becoming ready or one service's new traffic
/// costs a round whose time does not grow with the number of services.
/// False when it cannot stand for a whole round (nothing published yet, or most revisions changed).
///
/// It reads replicas without marking them seen: what changes meanwhile (its own scaling among it)
/// wakes the next round, which compares with `snapshot`.
#[allow(clippy::too_many_arguments)]
fn light_round(
    inner: &Arc<Inner>,
    desired: &DesiredState,
    index: &Index,
    changed_services: &[(String, String)],
    changed: &[RevisionKey],
    snapshot: &Snapshot,
    replicas: &tokio::sync::watch::Receiver<Snapshot>,
    known: &mut Known,
) -> bool {
    let most = 64.max(desired.routes.len() / 8);
    if known.routes.is_none() || changed.len() + changed_services.len() > most {
        return false;
    }
    // Those services, and the services of the changed revisions (a revision serves its own service
    // only).
    let mut services: Vec<&(String, String)> = Vec::new();
    let ids = changed_services
        .iter()
        .filter_map(|id| index.services.get_key_value(id).map(|(k, _)| k))
        .chain(changed.iter().filter_map(|key| index.service_of.get(key)));
    for id in ids {
        if !services.contains(&id) {
            services.push(id);
        }
    }
    let activatable = |k: &RevisionKey| inner.autoscaling.activatable(k);
    let mut effective = Vec::new();
    for id in &services {
        if let Some(i) = index.services[*id].0 {
            effective.push(effective_route(&desired.routes[i], snapshot, known, &activatable));
        }
    }
    patch_routes(inner, desired, index, &effective, snapshot, known);
    let routed = routed_revisions(&effective);
    let mut unmanaged = HashSet::new();
    for id in &services {
        for i in &index.services[*id].1 {
            let d = &desired.revisions[*i];
            let key = key_of(&d.revision.metadata.namespace, &d.revision.metadata.name);
            if !scale_one(inner, d, &key, routed.contains(&key), snapshot, known) {
                unmanaged.insert(key);
            }
        }
    }
    // A revision traffic left is the autoscaler's no more, as a whole round would decide.
    if !unmanaged.is_empty() {
        inner.autoscaling.retain(|k| !unmanaged.contains(k));
    }
    let now = replicas.borrow().clone();
    patch_routes(inner, desired, index, &effective, &now, known);
    let revisions: Vec<&revisor_controller::DesiredRevision> = services
        .iter()
        .flat_map(|id| index.services[*id].1.iter())
        .map(|i| &desired.revisions[*i])
        .collect();
    report(inner, revisions.into_iter(), &now, known);
    true
}

/// Replaces the given services' routes and revisions in the published table, and publishes it if
/// that changed it.
fn patch_routes(
    inner: &Inner,
    desired: &DesiredState,
    index: &Index,
    effective: &[ServiceRoutes],
    snapshot: &Snapshot,
    known: &mut Known,
) {
    let Some(mut table) = known.routes.take() else { return };
    if patch_table(&mut table, desired, index, effective, snapshot, known) {
        inner.gateway.publish(&table);
    }
    known.routes = Some(table);
}

/// Replaces the given services' routes and revisions in `table`; true if that changed it.
fn patch_table(
    table: &mut RoutesSpec,
    desired: &DesiredState,
    index: &Index,
    effective: &[ServiceRoutes],
    snapshot: &Snapshot,
    known: &Known,
) -> bool {
    let mut changed = false;
    for r in effective {
        let revs = &index.services[&(r.namespace.clone(), r.service.clone())].1;
        let revision = |name: &str| {
            revs.iter()
                .map(|i| &*desired.revisions[*i].revision)
                .find(|rev| rev.metadata.name == name)
        };
        let (service, revisions) = service_table(r, &revision, snapshot, known, &mut HashSet::new());
        match table
            .services
            .iter_mut()
            .find(|s| s.namespace == r.namespace && s.name == r.service)
        {
            Some(s) if *s == service => {}
            Some(s) => {
                *s = service;
                changed = true;
            }
            None => {
                table.services.push(service);
                changed = true;
            }
        }
        let mine = |x: &RevisionSpec| x.namespace == r.namespace && x.service == r.service;
        let before: Vec<&RevisionSpec> = table.revisions.iter().filter(|x| mine(x)).collect();
        if before.len() != revisions.len() || before.iter().zip(&revisions).any(|(a, b)| *a != b) {
            // In the place a whole round gives them (a service's revisions are together, in the
            // services' order), so the next whole round finds the same table.
            let at = table.revisions.iter().position(mine);
            table.revisions.retain(|x| !mine(x));
            let at = at.unwrap_or(table.revisions.len()).min(table.revisions.len());
            table.revisions.splice(at..at, revisions);
            changed = true;
        }
    }
    changed
}

fn key_of(namespace: &str, name: &str) -> RevisionKey {
    RevisionKey {
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

/// The routes to publish: each service's desired targets when every target with traffic has a ready
/// replica; else the targets it had, if those all still have one; else the desired targets that can
/// answer now (their weights keep their proportions). Traffic never goes to a revision that cannot
/// answer while another one can.
fn effective_routes(
    desired: &DesiredState,
    snapshot: &Snapshot,
    known: &mut Known,
    activatable: &dyn Fn(&RevisionKey) -> bool,
) -> Vec<ServiceRoutes> {
    let out = desired
        .routes
        .iter()
        .map(|r| effective_route(r, snapshot, known, activatable))
        .collect();
    let services: HashSet<(&str, &str)> = desired
        .routes
        .iter()
        .map(|r| (r.namespace.as_str(), r.service.as_str()))
        .collect();
    known
        .published
        .retain(|(ns, svc), _| services.contains(&(ns.as_str(), svc.as_str())));
    out
}

/// One service's effective route (see [`effective_routes`]).
fn effective_route(
    r: &ServiceRoutes,
    snapshot: &Snapshot,
    known: &mut Known,
    activatable: &dyn Fn(&RevisionKey) -> bool,
) -> ServiceRoutes {
    let serving = |t: &RoutedTarget| {
        let key = key_of(&r.namespace, &t.revision);
        t.percent == 0 || snapshot.get(&key).is_some_and(|s| !s.ready.is_empty()) || activatable(&key)
    };
    let id = (r.namespace.clone(), r.service.clone());
    let ready = |ts: &[RoutedTarget]| ts.iter().all(serving);
    let targets = match known.published.get(&id) {
        _ if ready(&r.targets) => r.targets.clone(),
        Some(prev) if !prev.is_empty() && ready(prev) => prev.clone(),
        _ => {
            let able: Vec<RoutedTarget> = r.targets.iter().filter(|t| serving(t)).cloned().collect();
            if able.iter().any(|t| t.percent > 0) {
                tracing::debug!(service = %r.service, "routing only to the targets with ready replicas: {able:?}");
                able
            } else {
                r.targets.clone()
            }
        }
    };
    known.published.insert(id, targets.clone());
    ServiceRoutes { targets, ..r.clone() }
}

/// The revisions a published route reaches (by percent or by tag).
fn routed_revisions(effective: &[ServiceRoutes]) -> HashSet<RevisionKey> {
    effective
        .iter()
        .flat_map(|r| {
            r.targets
                .iter()
                .filter(|t| t.percent > 0 || t.tag.is_some())
                .map(|t| key_of(&r.namespace, &t.revision))
        })
        .collect()
}

/// The autoscaler's spec for a revision, or `None` for a revision the local KPA does not scale (the
/// HPA class scales on CPU or memory, which the local backend does not measure: such a revision runs
/// its initial scale).
fn decider_spec(rev: &revisor_api::Revision, cfg: &LocalConfig) -> Option<DeciderSpec> {
    let annotations = rev.metadata.annotations_map();
    let limits = cfg.autoscaler.annotation_limits();
    let a = parse_autoscaling(&annotations, &Path::root("metadata.annotations"), limits).unwrap_or_default();
    let class = a.class.as_deref().unwrap_or(&cfg.autoscaler.pod_autoscaler_class);
    if class == HPA_CLASS {
        return None;
    }
    let cc = rev.spec.container_concurrency.unwrap_or(0).max(0) as u32;
    let mut spec = DeciderSpec::resolve(&cfg.autoscaler, &a, cc);
    if a.progress_deadline.is_none() {
        spec.activation_timeout = cfg.progress_deadline + revisor_autoscaler::config::ACTIVATION_TIMEOUT_BUFFER;
    }
    Some(spec)
}

/// What a needed revision runs before the autoscaler takes it over: its initial scale (at least one,
/// so it can become ready, unless zero is allowed and asked for), within min and max scale.
fn initial_replicas(rev: &revisor_api::Revision, cfg: &LocalConfig) -> u32 {
    let annotations = rev.metadata.annotations_map();
    let limits = cfg.autoscaler.annotation_limits();
    let a = parse_autoscaling(&annotations, &Path::root("metadata.annotations"), limits).unwrap_or_default();
    let c = &cfg.autoscaler;
    let mut n = (a.initial_scale.unwrap_or(c.initial_scale as i64)).max(a.min_scale.unwrap_or(c.min_scale as i64));
    let max = a.max_scale.unwrap_or(c.max_scale as i64);
    if max > 0 {
        n = n.min(max);
    }
    let least = if c.allow_zero_initial_scale { 0 } else { 1 };
    n.clamp(least, u32::MAX as i64) as u32
}

/// Replicas to run: none unless the controller needs the revision; for a routed one, the autoscaler's
/// answer; otherwise its initial scale. Never fewer than the Rollout's floor (the stable revision
/// during a rollout, the previous stable within its rollback window), whatever the autoscaler says,
/// so `rollout undo` switches to a warm revision.
fn replicas_for(
    inner: &Inner,
    d: &revisor_controller::DesiredRevision,
    parsed: &Parsed,
    routed: bool,
    snapshot: &Snapshot,
    key: &RevisionKey,
) -> u32 {
    autoscaled_replicas(inner, d, parsed, routed, snapshot, key).max(d.min_replicas)
}

fn autoscaled_replicas(
    inner: &Inner,
    d: &revisor_controller::DesiredRevision,
    parsed: &Parsed,
    routed: bool,
    snapshot: &Snapshot,
    key: &RevisionKey,
) -> u32 {
    if d.replicas == 0 {
        return 0;
    }
    let initial = parsed.initial;
    match parsed.decider.clone() {
        Some(mut spec) if routed => {
            // The floor is the autoscaler's minimum too, so it never takes the revision to zero
            // meanwhile: when the floor goes (an undo makes the warm revision stable), the revision
            // is still running and serves at once.
            spec.min_scale = spec.min_scale.max(d.min_replicas);
            let running = snapshot
                .get(key)
                .map(|s| s.desired)
                .filter(|n| *n > 0)
                .unwrap_or(initial);
            let service = d.revision.service_name().unwrap_or_default();
            inner.autoscaling.manage(key, service, spec, running)
        }
        _ => initial,
    }
}

/// Starts, scales and stops replicas to match the desired state; forgets deleted revisions.
fn scale(inner: &Inner, desired: &DesiredState, effective: &[ServiceRoutes], snapshot: &Snapshot, known: &mut Known) {
    // Sets, not lists: with a thousand revisions, every lookup below would otherwise walk them all.
    let routed = routed_revisions(effective);
    let mut wanted: HashSet<(&str, &str)> = HashSet::new();
    let mut managed: HashSet<(&str, &str)> = HashSet::new();
    for d in &desired.revisions {
        let id = (
            d.revision.metadata.namespace.as_str(),
            d.revision.metadata.name.as_str(),
        );
        wanted.insert(id);
        let key = key_of(id.0, id.1);
        if scale_one(inner, d, &key, routed.contains(&key), snapshot, known) {
            managed.insert(id);
        }
    }
    inner
        .autoscaling
        .retain(|k| managed.contains(&(k.namespace.as_str(), k.name.as_str())));
    for key in inner
        .runtime
        .keys()
        .into_iter()
        .filter(|k| !wanted.contains(&(k.namespace.as_str(), k.name.as_str())))
    {
        forget(inner, known, &key);
        known.uids.remove(&key);
    }
}

/// Scales one revision (`key`); true if the autoscaler manages it (it is routed and needed).
fn scale_one(
    inner: &Inner,
    d: &revisor_controller::DesiredRevision,
    key: &RevisionKey,
    routed: bool,
    snapshot: &Snapshot,
    known: &mut Known,
) -> bool {
    let uid = &d.revision.metadata.uid;
    match known.uids.get(key) {
        Some(u) if u == uid => {}
        known_uid => {
            if known_uid.is_some() {
                forget(inner, known, key);
            }
            known.uids.insert(key.clone(), uid.clone());
        }
    }
    let parsed = known.parsed(key, &d.revision, &inner.config);
    match &parsed.process {
        Ok((spec, protocol)) => {
            let (spec, protocol) = (spec.clone(), *protocol);
            let replicas = replicas_for(inner, d, parsed, routed, snapshot, key);
            known.unrunnable.remove(key);
            known.protocols.insert(key.clone(), protocol);
            known.replicas.insert(key.clone(), replicas);
            inner.runtime.scale(spec, replicas);
            d.replicas > 0 && routed
        }
        Err(u) => {
            let u = u.clone();
            let wanted = if d.replicas > 0 { parsed.initial } else { d.min_replicas };
            known.replicas.insert(key.clone(), wanted);
            known.unrunnable.insert(key.clone(), u);
            false
        }
    }
}

/// Stops a revision's replicas (they drain in the background) and forgets what was known of it.
fn forget(inner: &Inner, known: &mut Known, key: &RevisionKey) {
    known.protocols.remove(key);
    known.reported.remove(key);
    known.replicas.remove(key);
    known.parsed.remove(key);
    tokio::spawn(inner.runtime.remove(key));
}

/// The gateway's routes: the effective traffic, with each revision's ready replicas.
fn routes(desired: &DesiredState, effective: &[ServiceRoutes], snapshot: &Snapshot, known: &Known) -> RoutesSpec {
    let by_name: HashMap<(&str, &str), &revisor_api::Revision> = desired
        .revisions
        .iter()
        .map(|d| {
            (
                (
                    d.revision.metadata.namespace.as_str(),
                    d.revision.metadata.name.as_str(),
                ),
                &*d.revision,
            )
        })
        .collect();
    let mut spec = RoutesSpec::default();
    let mut listed: HashSet<(&str, &str)> = HashSet::new();
    for r in effective {
        let (service, revisions) = service_table(
            r,
            &|name| by_name.get(&(r.namespace.as_str(), name)).copied(),
            snapshot,
            known,
            &mut listed,
        );
        spec.services.push(service);
        spec.revisions.extend(revisions);
    }
    spec
}

/// One service's part of the gateway's routes: its route, and its targets' revisions not `listed`
/// already (each is listed once).
fn service_table<'a>(
    r: &'a ServiceRoutes,
    revision: &dyn Fn(&str) -> Option<&'a revisor_api::Revision>,
    snapshot: &Snapshot,
    known: &Known,
    listed: &mut HashSet<(&'a str, &'a str)>,
) -> (ServiceSpec, Vec<RevisionSpec>) {
    let targets = r
        .targets
        .iter()
        .map(|t| TargetSpec {
            revision: t.revision.clone(),
            percent: t.percent,
            tag: t.tag.clone(),
            tag_host: t.tag_host.clone(),
        })
        .collect();
    let header_routes = r
        .header_routes
        .iter()
        .map(|(matches, revision)| HeaderRouteSpec {
            matches: matches
                .iter()
                .map(|m| HeaderMatchSpec {
                    name: m.header_name.to_ascii_lowercase(),
                    value: match (&m.header_value.exact, &m.header_value.prefix, &m.header_value.regex) {
                        (Some(v), _, _) => MatchSpec::Exact(v.clone()),
                        (_, Some(v), _) => MatchSpec::Prefix(v.clone()),
                        (_, _, Some(v)) => MatchSpec::Regex(v.clone()),
                        _ => MatchSpec::Exact(String::new()),
                    },
                })
                .collect(),
            revision: revision.clone(),
        })
        .collect();
    let service = ServiceSpec {
        namespace: r.namespace.clone(),
        name: r.service.clone(),
        host: r.host.clone(),
        targets,
        header_routes,
        mirror: r.mirror.as_ref().map(|(from, to, percent)| MirrorSpec {
            from: from.clone(),
            to: to.clone(),
            percent: *percent,
        }),
    };
    let mut revisions = Vec::new();
    for t in &r.targets {
        let Some(rev) = revision(&t.revision) else {
            continue;
        };
        if !listed.insert((r.namespace.as_str(), t.revision.as_str())) {
            continue;
        }
        let key = RevisionKey {
            namespace: r.namespace.clone(),
            name: t.revision.clone(),
        };
        let endpoints = snapshot
            .get(&key)
            .map(|s| s.ready.iter().map(|x| x.addr).collect())
            .unwrap_or_default();
        revisions.push(RevisionSpec {
            namespace: r.namespace.clone(),
            service: r.service.clone(),
            name: t.revision.clone(),
            endpoints,
            container_concurrency: rev.spec.container_concurrency.unwrap_or(0).max(0) as u32,
            timeout: Duration::from_secs(rev.spec.timeout_seconds.unwrap_or(300).max(1) as u64),
            protocol: known.protocols.get(&key).copied().unwrap_or_default(),
        });
    }
    (service, revisions)
}

/// Writes changed revision health into the store.
fn report<'a>(
    inner: &Inner,
    revisions: impl Iterator<Item = &'a revisor_controller::DesiredRevision>,
    snapshot: &Snapshot,
    known: &mut Known,
) {
    let mut changed = Vec::new();
    let mut cold_starts = Vec::new();
    for d in revisions {
        let key = RevisionKey {
            namespace: d.revision.metadata.namespace.clone(),
            name: d.revision.metadata.name.clone(),
        };
        let st = snapshot.get(&key).cloned().unwrap_or_default();
        if !st.ready.is_empty() {
            if let (Some(cold), Some(svc)) = (inner.autoscaling.ready(&key), d.revision.service_name()) {
                cold_starts.push((key.clone(), svc.to_string(), cold, st.last_start));
            }
        }
        let h = RevisionHealth {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            uid: d.revision.metadata.uid.clone(),
            desired: known.replicas.get(&key).copied().unwrap_or(0),
            inactive: inner.autoscaling.inactive(&key),
            running: st.running,
            ready: st.ready.len() as u32,
            unrunnable: known
                .unrunnable
                .get(&key)
                .map(|u| (u.reason.to_string(), u.message.clone())),
            failure: st.last_failure.map(|f| (f.reason, f.message)),
            deadline_exceeded: st.deadline_exceeded,
            starts_at_zero: known
                .parsed
                .get(&key)
                .map_or_else(|| initial_replicas(&d.revision, &inner.config), |p| p.initial)
                == 0,
        };
        if known.reported.get(&key) != Some(&h) {
            known.reported.insert(key, h.clone());
            changed.push(h);
        }
    }
    if !changed.is_empty() || !cold_starts.is_empty() {
        let _ = inner.health.send((changed, cold_starts));
    }
}

/// Writes what the loop reports, in order, batching what queued meanwhile: a store write (an fsync)
/// never holds up the loop, so a replica that becomes ready reaches the gateway whatever the store
/// is doing.
async fn write_health(store: Store, mut batches: tokio::sync::mpsc::UnboundedReceiver<HealthBatch>) {
    while let Some((mut changed, mut cold_starts)) = batches.recv().await {
        while let Ok((more, cold)) = batches.try_recv() {
            changed.extend(more);
            cold_starts.extend(cold);
        }
        let store = store.clone();
        let result =
            tokio::task::spawn_blocking(move || {
                for (key, svc, cold, timing) in cold_starts {
                    let mut msg = format!(
                        "scaled from zero: the first waiting request got a ready replica after {} ms",
                        cold.waited.as_millis()
                    );
                    if let Some(t) = timing {
                        msg.push_str(&format!(
                        " (process {} {:.1} ms, first successful readiness probe {:.1} ms after the start, {} probes)",
                        if t.forked { "forked from the pre-fork server in" } else { "spawn" },
                        t.spawn.as_secs_f64() * 1e3,
                        t.ready.as_secs_f64() * 1e3,
                        t.probes
                    ));
                    }
                    let event = Event::normal(format!("Revision/{}", key.name), "ColdStart", msg);
                    if let Err(e) = store.write(|tx| tx.record(&key.namespace, &svc, &event)) {
                        tracing::error!("recording a cold start of {key}: {e}");
                    }
                }
                record_health(&store, &changed, chrono::Utc::now())
            })
            .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("recording revision health: {e}"),
            // The server is stopping: the runtime cancelled the write, and the next start reports afresh.
            Err(e) if e.is_cancelled() => tracing::debug!("recording revision health: stopped ({e})"),
            Err(e) => tracing::error!("recording revision health: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use revisor_runtime::{ReadyReplica, RevisionState};
    use std::collections::BTreeMap;

    fn t(rev: &str, percent: u32) -> RoutedTarget {
        RoutedTarget {
            revision: rev.into(),
            percent,
            tag: None,
            tag_host: None,
        }
    }

    fn desired(targets: Vec<RoutedTarget>) -> DesiredState {
        let route = ServiceRoutes {
            namespace: "ns".into(),
            service: "s".into(),
            host: "s.ns.localhost".into(),
            targets,
            ..Default::default()
        };
        DesiredState {
            revisions: vec![],
            routes: vec![route],
        }
    }

    fn snapshot(ready: &[&str]) -> Snapshot {
        let mut m = BTreeMap::new();
        for (i, r) in ready.iter().enumerate() {
            let st = RevisionState {
                ready: vec![ReadyReplica {
                    id: 1,
                    addr: ([127, 0, 0, 1], 1000 + i as u16).into(),
                    pid: 1,
                }],
                ..Default::default()
            };
            m.insert(key_of("ns", r), st);
        }
        Arc::new(m)
    }

    fn revision(name: &str, uid: &str, version: &str, initial_scale: &str) -> revisor_api::Revision {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "ns", "uid": uid, "resourceVersion": version,
                "labels": { "serving.knative.dev/service": "s" },
                "annotations": { "autoscaling.knative.dev/initial-scale": initial_scale },
            },
            "spec": { "containers": [{ "image": "app" }] },
        }))
        .unwrap()
    }

    /// A revision's annotations are parsed once per version of it; a revision made again under the
    /// same name (another uid) or written again (another resourceVersion) is parsed afresh.
    #[test]
    fn parsed_revisions_are_kept_per_uid_and_version() {
        let cfg = LocalConfig {
            images: Default::default(),
            revisor_exe: "/opt/revisor".into(),
            model_cache: None,
            progress_deadline: Duration::from_secs(600),
            termination_grace: Duration::from_secs(10),
            autoscaler: Default::default(),
        };
        let mut known = Known::default();
        let key = key_of("ns", "s-00001");
        assert_eq!(
            known.parsed(&key, &revision("s-00001", "u1", "1", "2"), &cfg).initial,
            2
        );
        // The same version: the kept parse, whatever the object says now.
        assert_eq!(
            known.parsed(&key, &revision("s-00001", "u1", "1", "3"), &cfg).initial,
            2
        );
        assert_eq!(
            known.parsed(&key, &revision("s-00001", "u1", "2", "3"), &cfg).initial,
            3
        );
        assert_eq!(
            known.parsed(&key, &revision("s-00001", "u2", "2", "4"), &cfg).initial,
            4
        );
    }

    #[test]
    fn changed_services_name_what_differs_or_none_when_things_came_or_went() {
        let rev = |name: &str, version: &str| revisor_controller::DesiredRevision {
            revision: Arc::new(revision(name, "u", version, "1")),
            replicas: 1,
            min_replicas: 0,
        };
        let mut old = desired(vec![t("s-00001", 100)]);
        old.revisions = vec![rev("s-00001", "1")];
        assert_eq!(changed_services(&old, &old), Some(vec![]));
        let same = DesiredState {
            revisions: vec![rev("s-00001", "1")],
            ..old.clone()
        };
        // Another object (its Arc) for the same revision: its service is derived again.
        assert_eq!(changed_services(&old, &same), Some(vec![("ns".into(), "s".into())]));
        let mut retagged = old.clone();
        retagged.routes[0].targets[0].tag = Some("t".into());
        assert_eq!(changed_services(&old, &retagged), Some(vec![("ns".into(), "s".into())]));
        let mut more = old.clone();
        more.revisions.push(rev("s-00002", "1"));
        assert_eq!(changed_services(&old, &more), None, "a revision came: a whole round");
        let mut gone = old.clone();
        gone.routes.clear();
        assert_eq!(changed_services(&old, &gone), None, "a service went: a whole round");
    }

    /// A table patched for one service is the table a whole round derives, order included (a
    /// patch that moved the service's revisions to the end made the next whole round publish again).
    #[test]
    fn a_patched_table_is_the_whole_rounds_table() {
        let svc = |name: &str| {
            let rev: revisor_api::Revision = serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": format!("{name}-00001"), "namespace": "ns", "uid": name, "resourceVersion": "1",
                    "labels": { "serving.knative.dev/service": name },
                },
                "spec": { "containers": [{ "image": "app" }] },
            }))
            .unwrap();
            let route = ServiceRoutes {
                namespace: "ns".into(),
                service: name.into(),
                host: format!("{name}.ns.localhost"),
                targets: vec![t(&format!("{name}-00001"), 100)],
                ..Default::default()
            };
            let rev = revisor_controller::DesiredRevision {
                revision: Arc::new(rev),
                replicas: 1,
                min_replicas: 0,
            };
            (route, rev)
        };
        let (services, revisions) = ["a", "b", "c"].map(svc).into_iter().unzip();
        let desired = DesiredState {
            routes: services,
            revisions,
        };
        let index = Index::of(&desired);
        let known = Known::default();
        let before = snapshot(&["a-00001", "b-00001", "c-00001"]);
        let mut table = routes(&desired, &desired.routes, &before, &known);
        // b's replica moves: only b is derived again.
        let mut m = (*before).clone();
        m.get_mut(&key_of("ns", "b-00001")).unwrap().ready[0].addr = ([127, 0, 0, 1], 2000).into();
        let after = Arc::new(m);
        let patch =
            |table: &mut RoutesSpec| patch_table(table, &desired, &index, &desired.routes[1..2], &after, &known);
        assert!(patch(&mut table));
        assert_eq!(table, routes(&desired, &desired.routes, &after, &known));
        assert!(!patch(&mut table), "patched again: nothing changes");
    }

    #[test]
    fn changed_revisions_are_those_added_removed_or_different() {
        let before = snapshot(&["a", "b", "c"]);
        assert!(changed_revisions(&before, &before).is_empty());
        let mut m = (*before).clone();
        m.remove(&key_of("ns", "a"));
        m.get_mut(&key_of("ns", "b")).unwrap().running = 1;
        m.insert(key_of("ns", "d"), RevisionState::default());
        let got = changed_revisions(&before, &Arc::new(m));
        assert_eq!(got, vec![key_of("ns", "a"), key_of("ns", "b"), key_of("ns", "d")]);
    }

    #[test]
    fn routes_never_move_onto_revisions_without_ready_replicas() {
        let mut known = Known::default();
        let got = |known: &mut Known, d: &DesiredState, ready: &[&str]| {
            effective_routes(d, &snapshot(ready), known, &|_| false)[0]
                .targets
                .clone()
        };
        let a100 = vec![t("a", 100)];
        assert_eq!(
            got(&mut known, &desired(a100.clone()), &["a"]),
            a100,
            "all serving: as desired"
        );
        let b100 = vec![t("b", 100)];
        assert_eq!(
            got(&mut known, &desired(b100.clone()), &["a"]),
            a100,
            "b not ready: keep a"
        );
        assert_eq!(
            got(&mut known, &desired(b100.clone()), &["a", "b"]),
            b100,
            "b ready: move"
        );
        let split = vec![t("a", 90), t("b", 10)];
        assert_eq!(
            got(&mut known, &desired(split), &["a"]),
            vec![t("a", 90)],
            "neither fully ready: only what can answer"
        );
        let zero_tagged = vec![t("a", 100), t("c", 0)];
        assert_eq!(
            got(&mut known, &desired(zero_tagged.clone()), &["a"]),
            zero_tagged,
            "0% targets need no replica"
        );
    }
}
