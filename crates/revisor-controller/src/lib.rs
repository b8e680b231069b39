//! Reconcilers: a Service's template becomes Configuration generations and immutable Revisions, and its
//! traffic is resolved into status, the way Knative's controllers do it.
//!
//! `resources` and `status` are pure builders; `reconcile` applies them in one store transaction;
//! `admission` holds the checks that need stored state; `run` drives reconciles from store changes.

pub mod admission;
pub mod dataplane;
pub mod fields;
pub mod gc;
pub mod health;
pub mod reconcile;
pub mod resources;
pub mod rollout_world;
pub mod run;
pub mod status;

pub use admission::{
    apply_rollout, apply_service, delete_revision, delete_rollout, delete_service, request_rollout, server_side_apply,
    server_side_apply_rollout, ApplyError, ApplyMode, ApplyOutcome, DeleteOptions,
};
pub use dataplane::{Backend, DesiredRevision, DesiredState, RoutedTarget, ServiceRoutes};
pub use health::{record_health, RevisionHealth};
pub use reconcile::reconcile_service;
pub use rollout_world::StoreWorld;
pub use run::Controller;

/// What the controller needs to know about the server it runs in.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerConfig {
    /// The domain services are reached under (`<svc>.<ns>.<domain>`).
    pub domain: String,
    /// The gateway's port, written into URLs unless it is 80.
    pub gateway_port: u16,
    /// Knative's config-network `rollout-duration`: how long traffic takes to move to a new latest
    /// revision (per service: the `serving.knative.dev/rollout-duration` annotation). 0 is at once.
    pub rollout_duration: std::time::Duration,
    /// Where the gateway can be reached from this process (for the rollout load generator).
    pub gateway_ip: std::net::IpAddr,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            domain: "localhost".into(),
            gateway_port: 8080,
            rollout_duration: std::time::Duration::ZERO,
            gateway_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        }
    }
}

impl ControllerConfig {
    /// `http://<host>.<ns>.<domain>[:port]`.
    pub fn url(&self, host_label: &str, namespace: &str) -> String {
        let port = if self.gateway_port == 80 {
            String::new()
        } else {
            format!(":{}", self.gateway_port)
        };
        format!("http://{host_label}.{namespace}.{}{port}", self.domain)
    }
}
