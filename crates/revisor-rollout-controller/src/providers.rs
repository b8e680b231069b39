//! Everything a Rollout step asks of the outside, behind one trait as Argo Rollouts' metric providers
//! are: a revision's counters or window (the gateway locally, Prometheus on Kubernetes), a manifest's
//! own Prometheus queries, webhooks, and the load generator. [`HttpProviders`] is the real one; tests
//! give the controller fakes that answer on a simulated clock.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use revisor_api::rollout::{LoadTest, Webhook};
use revisor_rollout::{Counters, Window};

use crate::prometheus::PrometheusClient;
use crate::world::Key;

/// Where analysis reads a revision's cumulative counters (locally the gateway; on Kubernetes,
/// Prometheus).
pub trait MetricsSource: Send + Sync + 'static {
    /// The revision's counters summed over every route to it; `None` if the data plane has not seen it.
    fn counters(&self, namespace: &str, revision: &str) -> impl Future<Output = Option<Counters>> + Send;
    /// The revision's window over the last `seconds`, for a source that computes windows itself
    /// (Prometheus: `increase()` over a range, which survives pods coming and going). `None`: the
    /// controller takes the difference of two readings of `counters`.
    fn window(&self, _namespace: &str, _revision: &str, _seconds: f64) -> impl Future<Output = Option<Window>> + Send {
        async { None }
    }
}

/// A load generator's aim: the URL, the Host header, and what to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    pub url: String,
    pub host: Option<String>,
    pub spec: LoadTest,
}

pub trait Providers: Send + Sync + 'static {
    fn counters(&self, namespace: &str, revision: &str) -> impl Future<Output = Option<Counters>> + Send;
    fn window(&self, namespace: &str, revision: &str, seconds: f64) -> impl Future<Output = Option<Window>> + Send;
    /// Runs a PromQL query at `address` (placeholders already filled): its scalar or first sample,
    /// `None` when it has no data.
    fn query(&self, address: &str, query: &str) -> impl Future<Output = Result<Option<f64>, String>> + Send;
    /// Calls one webhook with `payload`; `Ok` on 2xx. The controller bounds the call by the hook's
    /// timeout.
    fn webhook(&self, hook: &Webhook, payload: &serde_json::Value) -> impl Future<Output = Result<(), String>> + Send;
    /// Keeps `key`'s load generator running aimed at `load`, or stops it (`None`).
    fn load(&self, key: &Key, load: Option<Load>);
}

/// The real providers: a metrics source, and HTTP for Prometheus, webhooks and the load generator.
pub struct HttpProviders<M> {
    metrics: M,
    http: reqwest::Client,
    /// Running load generators by Rollout: their aim and their task.
    loads: Mutex<HashMap<Key, (Load, tokio::task::AbortHandle)>>,
}

impl<M: MetricsSource> HttpProviders<M> {
    pub fn new(metrics: M) -> Self {
        HttpProviders {
            metrics,
            http: reqwest::Client::new(),
            loads: Mutex::new(HashMap::new()),
        }
    }
}

impl<M> Drop for HttpProviders<M> {
    fn drop(&mut self) {
        for (_, (_, task)) in self.loads.get_mut().unwrap_or_else(|e| e.into_inner()).drain() {
            task.abort();
        }
    }
}

impl<M: MetricsSource> Providers for HttpProviders<M> {
    async fn counters(&self, namespace: &str, revision: &str) -> Option<Counters> {
        self.metrics.counters(namespace, revision).await
    }

    async fn window(&self, namespace: &str, revision: &str, seconds: f64) -> Option<Window> {
        self.metrics.window(namespace, revision, seconds).await
    }

    async fn query(&self, address: &str, query: &str) -> Result<Option<f64>, String> {
        let client = PrometheusClient::with_client(address, self.http.clone());
        Ok(client.query(query).await?.first())
    }

    async fn webhook(&self, hook: &Webhook, payload: &serde_json::Value) -> Result<(), String> {
        let sent = self
            .http
            .post(&hook.url)
            .timeout(hook.timeout())
            .json(payload)
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => {
                let code = resp.status().as_u16();
                let body: String = resp.text().await.unwrap_or_default().chars().take(200).collect();
                Err(format!("{} answered {code}: {}", hook.name, body.trim()))
            }
            Err(e) => Err(format!("{}: {e}", hook.name)),
        }
    }

    fn load(&self, key: &Key, load: Option<Load>) {
        let mut loads = self.loads.lock().unwrap_or_else(|e| e.into_inner());
        if loads.get(key).map(|(l, _)| l) == load.as_ref() {
            return;
        }
        if let Some((_, task)) = loads.remove(key) {
            task.abort();
        }
        if let Some(load) = load {
            let task = tokio::spawn(run_load(self.http.clone(), load.clone()));
            loads.insert(key.clone(), (load, task.abort_handle()));
        }
    }
}

/// Sends the load test's requests, one at a time at its rate, until aborted.
async fn run_load(http: reqwest::Client, load: Load) {
    let spec = &load.spec;
    let url = format!(
        "{}{}",
        load.url.trim_end_matches('/'),
        spec.path.as_deref().unwrap_or("/")
    );
    let period = Duration::from_secs_f64(1.0 / spec.rps.unwrap_or(10).max(1) as f64);
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let mut req = match spec.method.as_deref() {
            Some("POST") => http.post(&url).body(spec.body.clone().unwrap_or_default()),
            _ => http.get(&url),
        }
        .timeout(Duration::from_secs(10));
        if let Some(h) = &load.host {
            req = req.header("host", h.as_str());
        }
        for (k, v) in &spec.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Ok(resp) = req.send().await {
            let _ = resp.bytes().await;
        }
    }
}
