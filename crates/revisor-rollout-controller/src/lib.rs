//! The Rollout controller: one work queue keyed by Rollout, woken by changes to a Rollout or its
//! Service and by the time each Rollout asks to be looked at again; each step runs the state machine
//! (revisor-rollout) on its own task, so a slow webhook or Prometheus delays only its own Rollout.
//!
//! It depends on the API types, the pure cores and three small traits:
//! - [`World`]: where Rollouts, Services and Revisions live and where a step's status, traffic and
//!   events are written (locally the store, on Kubernetes the cluster);
//! - [`Providers`]: everything a step asks of the outside: revisions' counters or windows, Prometheus
//!   queries, webhooks and the load generator ([`HttpProviders`] over a [`MetricsSource`] is the real
//!   one);
//! - [`Clock`]: the time, so that tests drive whole rollouts on a simulated clock.
//!
//! `sim.rs` runs this controller against synthetic traffic on tokio's paused clock (`revisor
//! simulate`).

pub mod clock;
pub mod controller;
pub mod metrics;
pub mod prometheus;
pub mod providers;
pub mod queue;
pub mod sim;
pub mod world;

pub use clock::{Clock, SystemClock, TokioClock};
pub use controller::{RolloutController, Stepped};
pub use metrics::{Outcomes, RolloutCollector};
pub use prometheus::PrometheusClient;
pub use providers::{HttpProviders, Load, MetricsSource, Providers};
pub use world::{Change, Commit, Key, World};
