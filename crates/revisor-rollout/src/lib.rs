//! Progressive delivery as pure functions of their inputs: `analysis.rs` turns two readings of a
//! revision's cumulative counters into a window (requests, errors, latency histogram) and judges it
//! against a Rollout's metrics; `machine.rs` is the Rollout state machine, which, given the Service's
//! revisions, the time and (when due) the canary's window, says what the status, the Service's
//! traffic and the events become; `baseline.rs` says when a window is due and where it starts (a
//! baseline kept in the Rollout's status). The controller (revisor-rollout-controller) reads the world
//! and the data plane, calls these, and writes the results.

pub mod analysis;
pub mod baseline;
pub mod machine;
pub mod sequential;

pub use analysis::{evaluate, evaluate_with, Counters, Provided, Run, Window};
pub use baseline::next_window;
pub use machine::{
    advance, analysis_due, floors, hooks_due, CanaryState, Event, Hooks, Input, Output, CANARY_TAG, PREVIEW_TAG,
    PREVIOUS_TAG,
};
