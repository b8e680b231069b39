//! The model server's own metrics, in the manner of Triton's cumulative counters: recorded on atomics,
//! exposed as OpenMetrics text through a prometheus-client [`Collector`] that reads them at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;

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

    /// A registry holding one model's counters, labelled `model` and `version`.
    pub fn registry(self: &Arc<Self>, model: &str, version: &str) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ModelCollector {
            metrics: self.clone(),
            model: model.to_string(),
            version: version.to_string(),
        }));
        registry
    }
}

/// One model's counters, read at each scrape.
#[derive(Debug)]
struct ModelCollector {
    metrics: Arc<ModelMetrics>,
    model: String,
    version: String,
}

impl Collector for ModelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let labels = [("model", self.model.as_str()), ("version", self.version.as_str())];
        let m = &self.metrics;
        // OpenMetrics names a counter's sample `<family>_total`.
        for (name, help, v) in [
            (
                "revisor_model_inference_count",
                "Successful inference requests",
                m.inferences(),
            ),
            (
                "revisor_model_inference_failure_count",
                "Failed inference requests",
                m.failures(),
            ),
            (
                "revisor_model_inference_queue_duration_us",
                "Cumulative time requests waited for an inference thread, in microseconds",
                m.queue_us.load(Ordering::Relaxed),
            ),
            (
                "revisor_model_inference_compute_duration_us",
                "Cumulative time spent computing inferences, in microseconds",
                m.compute_us.load(Ordering::Relaxed),
            ),
        ] {
            let counter = ConstCounter::new(v);
            let mut family = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use revisor_gateway::sample;

    use super::*;

    fn exposition(m: &Arc<ModelMetrics>, model: &str, version: &str) -> String {
        let mut text = String::new();
        encode(&mut text, &m.registry(model, version)).unwrap();
        text
    }

    #[test]
    fn counts_and_times_as_openmetrics_counters() {
        let m = Arc::new(ModelMetrics::default());
        m.success(Duration::from_micros(30), Duration::from_micros(500));
        m.success(Duration::from_micros(12), Duration::from_micros(250));
        m.failure();
        let text = exposition(&m, "tabular", "1");
        let l = r#"{model="tabular",version="1"}"#;
        for (name, want) in [
            ("revisor_model_inference_count_total", "2"),
            ("revisor_model_inference_failure_count_total", "1"),
            ("revisor_model_inference_queue_duration_us_total", "42"),
            ("revisor_model_inference_compute_duration_us_total", "750"),
        ] {
            let series = format!("{name}{l}");
            assert_eq!(sample(&text, &series), Some(want), "{series} in\n{text}");
        }
        assert!(text.contains("# HELP revisor_model_inference_count Successful inference requests\n# TYPE revisor_model_inference_count counter\n"), "{text}");
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 4, "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.ends_with("\n# EOF\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        // A model's name is whatever its operator gave: a quote or backslash must not end the value.
        let m = Arc::new(ModelMetrics::default());
        m.success(Duration::ZERO, Duration::ZERO);
        let text = exposition(&m, r#"my "best" model\v2"#, "1");
        assert_eq!(
            sample(
                &text,
                r#"revisor_model_inference_count_total{model="my \"best\" model\\v2",version="1"}"#
            ),
            Some("1"),
            "{text}"
        );
    }
}
