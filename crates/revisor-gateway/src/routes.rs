//! Route tables: the declarative spec the control plane publishes, and the immutable table the gateway
//! builds from it (hosts -> weighted revisions and tags).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::endpoint::{Breaker, Endpoint};
use crate::metrics::RevisionMetrics;

/// The wire protocol a revision's container speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (the container port is named `h2c`), for gRPC.
    H2c,
}

/// One revision as the control plane describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionSpec {
    pub namespace: String,
    pub service: String,
    pub name: String,
    pub endpoints: Vec<SocketAddr>,
    /// Hard in-flight limit per replica; 0 is unlimited.
    pub container_concurrency: u32,
    pub timeout: Duration,
    pub protocol: Protocol,
}

/// One traffic target of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetSpec {
    pub revision: String,
    pub percent: u32,
    pub tag: Option<String>,
    /// The host of the tag's own URL (`<tag>-<svc>.<ns>.<domain>`).
    pub tag_host: Option<String>,
}

/// One service's routes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceSpec {
    pub namespace: String,
    pub name: String,
    pub host: String,
    pub targets: Vec<TargetSpec>,
    /// Requests matching every header match go to the revision, before the weighted split (A/B).
    pub header_routes: Vec<HeaderRouteSpec>,
    /// A share of the requests routed to one revision copied to another (measured, never answered).
    pub mirror: Option<MirrorSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HeaderRouteSpec {
    pub matches: Vec<HeaderMatchSpec>,
    pub revision: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HeaderMatchSpec {
    pub name: String,
    pub value: MatchSpec,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MatchSpec {
    Exact(String),
    Prefix(String),
    Regex(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct MirrorSpec {
    /// Requests routed to this revision are mirrored...
    pub from: String,
    /// ...to this one...
    pub to: String,
    /// ...this often (percent).
    pub percent: u32,
}

/// Everything the gateway routes, as the control plane sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutesSpec {
    pub services: Vec<ServiceSpec>,
    /// The revisions the services' targets name.
    pub revisions: Vec<RevisionSpec>,
}

/// Requests held for a revision that has no ready replica (the activator's queue), shared by every
/// route to it.
#[derive(Debug, Default)]
pub struct Activation {
    held: AtomicUsize,
}

/// Counts one held request until dropped.
pub struct HeldGuard(Arc<Activation>);

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activation {
    /// Holds one more request, unless `limit` are held already.
    pub fn enter(self: &Arc<Self>, limit: usize) -> Option<HeldGuard> {
        if self.held.fetch_add(1, Ordering::AcqRel) >= limit {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(HeldGuard(self.clone()))
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// A revision as the gateway routes to it: its ready replicas, breaker and metrics.
pub struct RevisionTarget {
    pub namespace: String,
    pub name: String,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub breaker: Option<Arc<Breaker>>,
    pub timeout: Duration,
    pub protocol: Protocol,
    pub metrics: Arc<RevisionMetrics>,
    pub activation: Arc<Activation>,
}

/// Where a host leads: a fixed revision (a tag's URL) or the service's split.
pub enum HostRoute {
    Split(Arc<ServiceRoute>),
    Tag(Arc<RevisionTarget>),
}

/// A compiled header match.
pub enum Matcher {
    Exact(String),
    Prefix(String),
    Regex(regex_lite::Regex),
}

impl Matcher {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(s) => value == s,
            Matcher::Prefix(p) => value.starts_with(p.as_str()),
            Matcher::Regex(r) => r.is_match(value),
        }
    }
}

/// A built header route: all of `matches` (header name, matcher) must hold.
pub struct HeaderRoute {
    pub matches: Vec<(hyper::header::HeaderName, Matcher)>,
    pub target: Arc<RevisionTarget>,
}

/// A built mirror.
pub struct Mirror {
    pub from: String,
    /// The copy's target (its metrics carry the tag `mirror`).
    pub to: Arc<RevisionTarget>,
    pub percent: u32,
}

pub struct ServiceRoute {
    pub name: String,
    pub header_routes: Vec<HeaderRoute>,
    pub mirror: Option<Mirror>,
    /// Targets with a positive percent, with cumulative weights for one random draw.
    pub split: Vec<(u32, Arc<RevisionTarget>)>,
    pub total: u32,
    /// For the `Knative-Serving-Tag` header.
    pub tags: HashMap<String, Arc<RevisionTarget>>,
}

impl ServiceRoute {
    /// Picks a revision by weight.
    pub fn pick(&self) -> Option<&Arc<RevisionTarget>> {
        if self.total == 0 {
            return None;
        }
        let x = fastrand::u32(0..self.total);
        self.split.iter().find(|(cum, _)| x < *cum).map(|(_, t)| t)
    }
}

/// An immutable routing snapshot; requests hold the one they started with.
#[derive(Default)]
pub struct RouteTable {
    pub hosts: HashMap<String, HostRoute>,
    /// Every routed revision by (namespace, name), for requests waiting for a revision's replicas.
    pub revisions: HashMap<(String, String), Arc<RevisionTarget>>,
}
