//! Traffic: resolving `spec.traffic` against revisions (Knative's Route rules) and kn-style traffic edits.
//!
//! Pure functions only: no I/O, no clocks.

pub mod edit;
pub mod gradual;
pub mod resolve;

pub use edit::{compute, TrafficEdit};
pub use resolve::{resolve, RevisionState, RouteProblem};
