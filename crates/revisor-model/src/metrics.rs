//! The model server's own Prometheus metrics, in the manner of Triton's cumulative counters.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct ModelMetrics {
    inferences: AtomicU64,
    failures: AtomicU64,
    queue_us: AtomicU64,
    compute_us: AtomicU64,
}

impl ModelMetrics {
    pub fn success(&self, queue: Duration, compute: Duration) {
        self.inferences.fetch_add(1, Ordering::Relaxed);
        self.queue_us.fetch_add(queue.as_micros() as u64, Ordering::Relaxed);
        self.compute_us.fetch_add(compute.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn inferences(&self) -> u64 {
        self.inferences.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Prometheus text for one model.
    pub fn text(&self, model: &str, version: &str) -> String {
        let labels = format!("model=\"{model}\",version=\"{version}\"");
        let mut out = String::new();
        for (name, help, v) in [
            (
                "revisor_model_inference_count",
                "Successful inference requests",
                self.inferences(),
            ),
            (
                "revisor_model_inference_failure_count",
                "Failed inference requests",
                self.failures(),
            ),
            (
                "revisor_model_inference_queue_duration_us",
                "Cumulative time requests waited for an inference thread, in microseconds",
                self.queue_us.load(Ordering::Relaxed),
            ),
            (
                "revisor_model_inference_compute_duration_us",
                "Cumulative time spent computing inferences, in microseconds",
                self.compute_us.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{labels}}} {v}"
            );
        }
        out
    }
}
