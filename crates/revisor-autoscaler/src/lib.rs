//! Knative's Pod Autoscaler (KPA), made of pure parts with time as a parameter: per-second metric
//! buckets averaged over a stable and a panic window (`window.rs`), the decider that turns them into a
//! replica count (`decider.rs`), and the per-revision state machine around it that applies bounds,
//! initial and activation scale, and scale to zero with its grace and retention periods (`scaler.rs`).
//! `config.rs` holds Knative's `config-autoscaler` keys and defaults and resolves a revision's
//! annotations against them. Nothing here sleeps, reads a clock or does I/O: the local backend drives it.

pub mod config;
pub mod decider;
pub mod scaler;
pub mod window;

pub use config::{AutoscalerConfig, DeciderSpec, Metric};
pub use decider::{Decider, ScaleResult};
pub use scaler::{Activity, Autoscaler, Decision, RevisionAutoscaler};
pub use window::{Buckets, DelayWindow};

/// A point on the autoscaler's clock: time since an arbitrary epoch chosen by the caller.
pub type Time = std::time::Duration;
