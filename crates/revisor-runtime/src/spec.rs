//! What to run for one revision: the resolved command, environment and readiness probe.

use std::path::PathBuf;
use std::time::Duration;

/// Identifies a revision: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RevisionKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for RevisionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How readiness is checked.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeAction {
    /// Connect to the port (`None`: the replica's `$PORT`).
    Tcp { port: Option<u16> },
    /// GET a path; 2xx and 3xx are ready.
    Http {
        port: Option<u16>,
        path: String,
        headers: Vec<(String, String)>,
    },
    /// Run a command; exit 0 is ready.
    Exec { command: Vec<String> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub action: ProbeAction,
    /// Wait before the first probe.
    pub initial_delay: Duration,
    /// Time between probes; Knative's default (period 0) is aggressive probing.
    pub period: Duration,
    pub timeout: Duration,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            action: ProbeAction::Tcp { port: None },
            initial_delay: Duration::ZERO,
            period: AGGRESSIVE_PERIOD,
            timeout: Duration::from_secs(1),
        }
    }
}

/// How often a replica is probed until it is ready when the probe sets no period (Knative's queue-proxy
/// probes every 50 ms or faster in that case).
pub const AGGRESSIVE_PERIOD: Duration = Duration::from_millis(50);

/// Everything needed to run a revision's replicas.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSpec {
    pub key: RevisionKey,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The full environment of the child (nothing is inherited).
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    pub probe: Probe,
    /// Give up on becoming ready after this long (`serving.knative.dev/progress-deadline`).
    pub progress_deadline: Duration,
    /// Longest wait for in-flight requests when a replica is stopped.
    pub drain_timeout: Duration,
    /// Time between SIGTERM and SIGKILL.
    pub termination_grace: Duration,
}
