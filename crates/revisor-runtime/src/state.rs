//! What the runtime publishes: per revision, its ready replicas and its last failure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::spec::RevisionKey;

/// A replica that passed its readiness probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyReplica {
    pub id: u64,
    pub addr: SocketAddr,
    /// The process (the leader of the replica's process group).
    pub pid: u32,
}

/// Why a replica failed, as a Knative-style reason and a message with the process's last output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    pub message: String,
}

/// How the last replica to become ready got there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartTiming {
    /// Creating the process (fork and exec, or a fork of the pre-fork server).
    pub spawn: Duration,
    /// Whether the pre-fork server forked it (`prefork.rs`).
    pub forked: bool,
    /// From asking for the process to its first successful readiness probe.
    pub ready: Duration,
    /// Readiness probes made.
    pub probes: u32,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RevisionState {
    /// Replicas asked for.
    pub desired: u32,
    /// Replicas with a live process (ready or not).
    pub running: u32,
    pub ready: Vec<ReadyReplica>,
    /// Whether any replica was ever ready (a revision at zero stays Ready, as in Knative).
    pub ever_ready: bool,
    /// Whether a replica became ready since the last scale-up from zero.
    pub ready_since_scale_up: bool,
    /// The last failure since a replica was last ready.
    pub last_failure: Option<Failure>,
    pub deadline_exceeded: bool,
    pub last_start: Option<StartTiming>,
}

pub type Snapshot = Arc<BTreeMap<RevisionKey, RevisionState>>;
