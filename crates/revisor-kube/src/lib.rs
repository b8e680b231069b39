//! The Knative backend: revisor's progressive delivery on a Kubernetes cluster that runs Knative
//! Serving. The only crate that depends on kube-rs.
//!
//! The cluster is the source of truth here. Knative's own controllers turn Services into Revisions and
//! route traffic; revisor server-side applies the Services it is given (`apply`), watches Services,
//! Revisions and `rollouts.revisor.dev` objects into local caches (`Cluster`, kube-runtime reflectors),
//! and runs the same Rollout controller and state machine as locally over them (`KnativeWorld`): it
//! moves traffic by patching the Knative Service's `spec.traffic`, writes the Rollout's status
//! subresource, and records Kubernetes Events. Analysis reads the queue-proxy's request metrics from
//! Prometheus (`PrometheusMetrics`).

pub mod apply;
pub mod cluster;
pub mod prometheus;
pub mod request;
pub mod world;

pub use apply::{apply, delete, ApplyError, ApplyOptions, FIELD_MANAGER};
pub use cluster::{connect, Cluster, ClusterError, Kind as ClusterKind, WatchParams, REVISION, ROLLOUT, SERVICE};
pub use kube::Error as KubeError;
pub use prometheus::{ClusterMetrics, PrometheusMetrics};
pub use request::request;
pub use world::KnativeWorld;
