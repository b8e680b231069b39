//! Knative's defaulting (config-defaults), in one place: what an omitted field means.

use serde::{Deserialize, Serialize};

use crate::annotations::AnnotationLimits;
use crate::podspec::{Probe, RevisionSpec, TcpSocketAction};
use crate::service::{Service, TrafficTarget};

pub const DEFAULT_NAMESPACE: &str = "default";

/// Server-wide defaults, with Knative's `config-defaults` key names and values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Defaults {
    pub revision_timeout_seconds: i64,
    pub max_revision_timeout_seconds: i64,
    pub revision_response_start_timeout_seconds: Option<i64>,
    pub revision_idle_timeout_seconds: i64,
    pub container_name_template: String,
    pub init_container_name_template: String,
    pub container_concurrency: i64,
    pub container_concurrency_max_limit: i64,
    pub allow_container_concurrency_zero: bool,
    pub enable_service_links: Option<bool>,
    /// From config-autoscaler (set there, under `[autoscaler]`): may `initial-scale` be 0?
    #[serde(skip)]
    pub allow_zero_initial_scale: bool,
    /// From config-autoscaler (set there): the highest `max-scale` a revision may ask for (0: no limit).
    #[serde(skip)]
    pub max_scale_limit: i64,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            revision_timeout_seconds: 300,
            max_revision_timeout_seconds: 600,
            revision_response_start_timeout_seconds: None,
            revision_idle_timeout_seconds: 0,
            container_name_template: "user-container".into(),
            init_container_name_template: "init-container".into(),
            container_concurrency: 0,
            container_concurrency_max_limit: 1000,
            allow_container_concurrency_zero: true,
            enable_service_links: Some(false),
            allow_zero_initial_scale: false,
            max_scale_limit: 0,
        }
    }
}

impl Defaults {
    /// Checks the operator's settings the way Knative checks its ConfigMap.
    pub fn validate(&self) -> Result<(), String> {
        if self.revision_timeout_seconds <= 0 {
            return Err(format!(
                "revision-timeout-seconds must be positive, got {}",
                self.revision_timeout_seconds
            ));
        }
        if self.max_revision_timeout_seconds < self.revision_timeout_seconds {
            return Err(format!(
                "max-revision-timeout-seconds ({}) must be at least revision-timeout-seconds ({})",
                self.max_revision_timeout_seconds, self.revision_timeout_seconds
            ));
        }
        if self.container_concurrency_max_limit < 1 {
            return Err("container-concurrency-max-limit must be at least 1".into());
        }
        if !(0..=self.container_concurrency_max_limit).contains(&self.container_concurrency) {
            return Err(format!(
                "container-concurrency must be in [0, {}], got {}",
                self.container_concurrency_max_limit, self.container_concurrency
            ));
        }
        if self.container_name_template.is_empty() {
            return Err("container-name-template must not be empty".into());
        }
        Ok(())
    }

    pub fn annotation_limits(&self) -> AnnotationLimits {
        AnnotationLimits {
            allow_zero_initial_scale: self.allow_zero_initial_scale,
            max_scale_limit: self.max_scale_limit,
        }
    }

    /// Fills in what the user left out, as Knative's webhook does before validating.
    pub fn apply(&self, svc: &mut Service) {
        if svc.metadata.namespace.is_empty() {
            svc.metadata.namespace = DEFAULT_NAMESPACE.into();
        }
        if svc.spec.traffic().is_empty() {
            svc.spec.traffic = Some(vec![TrafficTarget {
                latest_revision: Some(true),
                percent: Some(100),
                ..Default::default()
            }]);
        }
        for t in svc.spec.traffic.iter_mut().flatten() {
            default_target(t);
        }
        self.apply_revision_spec(&mut svc.spec.template.spec);
    }

    /// Defaults of one revision spec: timeouts, concurrency, container names, the readiness probe.
    pub fn apply_revision_spec(&self, spec: &mut RevisionSpec) {
        spec.timeout_seconds.get_or_insert(self.revision_timeout_seconds);
        spec.container_concurrency.get_or_insert(self.container_concurrency);
        if spec.response_start_timeout_seconds.is_none() {
            spec.response_start_timeout_seconds = self.revision_response_start_timeout_seconds;
        }
        if spec.idle_timeout_seconds.is_none() && self.revision_idle_timeout_seconds > 0 {
            spec.idle_timeout_seconds = Some(self.revision_idle_timeout_seconds);
        }
        if spec.enable_service_links.is_none() {
            spec.enable_service_links = self.enable_service_links;
        }
        name_containers(spec.containers.iter_mut().flatten(), &self.container_name_template);
        name_containers(
            spec.init_containers.iter_mut().flatten(),
            &self.init_container_name_template,
        );
        let serving = {
            let cs = spec.containers.as_deref().unwrap_or_default();
            cs.iter()
                .position(|c| !c.ports().is_empty())
                .or(if cs.len() == 1 { Some(0) } else { None })
        };
        if let Some(c) = serving.and_then(|i| spec.containers.as_mut().map(|cs| &mut cs[i])) {
            default_readiness(c.readiness_probe.get_or_insert_with(Probe::default));
        }
    }
}

fn default_target(t: &mut TrafficTarget) {
    if t.latest_revision.is_none() {
        t.latest_revision = Some(t.revision().is_none());
    }
}

fn name_containers<'a>(containers: impl Iterator<Item = &'a mut crate::podspec::Container>, template: &str) {
    let mut containers: Vec<_> = containers.collect();
    let taken: Vec<String> = containers.iter().filter_map(|c| c.name.clone()).collect();
    let many = containers.len() > 1;
    let mut suffix = 0;
    for c in containers
        .iter_mut()
        .filter(|c| c.name.as_deref().unwrap_or("").is_empty())
    {
        let mut name = template.to_string();
        if many || taken.contains(&name) {
            loop {
                name = format!("{template}-{suffix}");
                suffix += 1;
                if !taken.contains(&name) {
                    break;
                }
            }
        }
        c.name = Some(name);
    }
}

fn default_readiness(p: &mut Probe) {
    if p.tcp_socket.is_none() && p.http_get.is_none() && p.exec.is_none() && p.grpc.is_none() {
        p.tcp_socket = Some(TcpSocketAction::default());
    }
    p.success_threshold.get_or_insert(1);
    if p.period_seconds.unwrap_or(0) != 0 {
        p.failure_threshold.get_or_insert(3);
        p.timeout_seconds.get_or_insert(1);
    }
}
