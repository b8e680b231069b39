//! Revision garbage collection with Knative's config-gc rules: a revision is never collected while it
//! is active (routed, the latest created or latest ready, or annotated `serving.knative.dev/no-gc`);
//! an inactive one goes once it is older than `retain-since-create-time` and was last routed longer
//! ago than `retain-since-last-active-time`, as long as `min-non-active-revisions` remain; beyond
//! `max-non-active-revisions` the least recently active go regardless.

use std::collections::BTreeMap;
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, Utc};
use revisor_api::units::parse_go_duration;
use revisor_api::{Revision, Service};
use revisor_store::{Event, Store, StoreError};

/// The routing-state label Knative keeps on revisions: `active` while a route reaches it, else `reserve`.
pub const ROUTING_STATE: &str = "serving.knative.dev/routingState";
/// When the routing state last changed (RFC 3339).
pub const ROUTING_STATE_MODIFIED: &str = "serving.knative.dev/routingStateModified";
pub const NO_GC: &str = "serving.knative.dev/no-gc";

/// Knative's config-gc; `None` is "disabled".
#[derive(Debug, Clone, PartialEq)]
pub struct GcConfig {
    pub retain_since_create_time: Option<Duration>,
    pub retain_since_last_active_time: Option<Duration>,
    pub min_non_active_revisions: u32,
    pub max_non_active_revisions: Option<u32>,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            retain_since_create_time: Some(Duration::from_secs(48 * 3600)),
            retain_since_last_active_time: Some(Duration::from_secs(15 * 3600)),
            min_non_active_revisions: 20,
            max_non_active_revisions: Some(1000),
        }
    }
}

pub const KEYS: [&str; 4] = [
    "retain-since-create-time",
    "retain-since-last-active-time",
    "min-non-active-revisions",
    "max-non-active-revisions",
];

impl GcConfig {
    /// Reads Knative's keys (string values, `disabled` allowed where Knative allows it); errors name
    /// the key.
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<GcConfig, String> {
        let mut c = GcConfig::default();
        let duration = |k: &str, v: &str| -> Result<Option<Duration>, String> {
            match v {
                "disabled" => Ok(None),
                v => parse_go_duration(v).map(Some).map_err(|e| format!("{k}: {e}")),
            }
        };
        let count = |k: &str, v: &str| -> Result<u32, String> {
            v.parse::<u32>()
                .map_err(|_| format!("{k}: {v:?} is not a whole number >= 0 or \"disabled\""))
        };
        for (k, v) in map {
            let v = v.trim();
            match k.as_str() {
                "retain-since-create-time" => c.retain_since_create_time = duration(k, v)?,
                "retain-since-last-active-time" => c.retain_since_last_active_time = duration(k, v)?,
                "min-non-active-revisions" => c.min_non_active_revisions = count(k, v)?,
                "max-non-active-revisions" => {
                    c.max_non_active_revisions = if v == "disabled" { None } else { Some(count(k, v)?) }
                }
                _ => return Err(format!("{k}: unknown key; the keys are {}", KEYS.join(", "))),
            }
        }
        if let Some(max) = c.max_non_active_revisions {
            if max < c.min_non_active_revisions {
                return Err(format!(
                    "max-non-active-revisions ({max}) must not be below min-non-active-revisions ({})",
                    c.min_non_active_revisions
                ));
            }
        }
        Ok(c)
    }

    fn disabled(&self) -> bool {
        self.max_non_active_revisions.is_none()
            && self.retain_since_create_time.is_none()
            && self.retain_since_last_active_time.is_none()
    }
}

fn last_active(rev: &Revision) -> DateTime<Utc> {
    rev.metadata
        .annotation(ROUTING_STATE_MODIFIED)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .or(rev.metadata.creation_timestamp)
        .unwrap_or_else(Utc::now)
}

fn active(rev: &Revision, svc: &Service) -> bool {
    let st = svc.status();
    let name = Some(rev.metadata.name.as_str());
    name == st.latest_created_revision_name.as_deref()
        || name == st.latest_ready_revision_name.as_deref()
        || rev.metadata.annotation(NO_GC) == Some("true")
        || rev.metadata.label(ROUTING_STATE) == Some("active")
}

fn stale(cfg: &GcConfig, rev: &Revision, now: DateTime<Utc>) -> bool {
    let age = |t: DateTime<Utc>| (now - t).to_std().unwrap_or_default();
    if let (Some(keep), Some(created)) = (cfg.retain_since_create_time, rev.metadata.creation_timestamp) {
        if age(created) < keep {
            return false;
        }
    }
    if let Some(keep) = cfg.retain_since_last_active_time {
        if age(last_active(rev)) < keep {
            return false;
        }
    }
    true
}

/// The revisions of `svc` to collect now.
pub fn collectable(cfg: &GcConfig, svc: &Service, revisions: &[Revision], now: DateTime<Utc>) -> Vec<String> {
    let min = cfg.min_non_active_revisions as usize;
    if cfg.disabled() || revisions.len() <= min {
        return Vec::new();
    }
    let mut inactive: Vec<&Revision> = revisions.iter().filter(|r| !active(r, svc)).collect();
    // Most recently active first.
    inactive.sort_by_key(|r| std::cmp::Reverse(last_active(r)));
    let mut out = Vec::new();
    let mut i = inactive.len();
    while i > min {
        i -= 1;
        if stale(cfg, inactive[i], now) {
            out.push(inactive.remove(i).metadata.name.clone());
        }
    }
    if let Some(max) = cfg.max_non_active_revisions {
        for r in inactive.iter().skip(max as usize) {
            out.push(r.metadata.name.clone());
        }
    }
    out
}

/// Collects every service's collectable revisions, each service in one transaction with an event.
/// What is collectable is found from one read of every service and revision (no write, and no fsync,
/// for a service with nothing to collect); each service with something to collect is checked again
/// inside its own write.
pub fn collect(store: &Store, cfg: &GcConfig, now: DateTime<Utc>) -> Result<usize, StoreError> {
    if cfg.disabled() {
        return Ok(0);
    }
    let mut by_service: BTreeMap<(String, String), Vec<Revision>> = BTreeMap::new();
    for r in store.list::<Revision>(None)? {
        if let Some(svc) = r.service_name() {
            let key = (r.metadata.namespace.clone(), svc.to_string());
            by_service.entry(key).or_default().push(r);
        }
    }
    let mut total = 0;
    for svc in store.list::<Service>(None)? {
        let (ns, name) = (svc.metadata.namespace.clone(), svc.metadata.name.clone());
        let revisions = by_service.remove(&(ns.clone(), name.clone())).unwrap_or_default();
        if collectable(cfg, &svc, &revisions, now).is_empty() {
            continue;
        }
        total += store.write(|tx| -> Result<usize, StoreError> {
            let Some(svc) = tx.get::<Service>(&ns, &name)? else {
                return Ok(0);
            };
            let revisions = crate::reconcile::revisions_of(tx, &ns, &name)?;
            let doomed = collectable(cfg, &svc, &revisions, now);
            for r in &doomed {
                tx.delete::<Revision>(&ns, r)?;
                tx.record(
                    &ns,
                    &name,
                    &Event::normal(
                        format!("Revision/{r}"),
                        "GarbageCollected",
                        format!("Revision {r:?} collected: inactive beyond config-gc's retention"),
                    ),
                )?;
            }
            Ok(doomed.len())
        })?;
    }
    Ok(total)
}

/// Runs [`collect`] every `period` on a thread.
pub fn spawn(store: Store, cfg: GcConfig, period: Duration) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("revision-gc".into())
        .spawn(move || loop {
            match collect(&store, &cfg, Utc::now()) {
                Ok(0) => {}
                Ok(n) => tracing::info!("collected {n} inactive revision(s)"),
                Err(e) => tracing::warn!("revision garbage collection: {e}"),
            }
            std::thread::sleep(period);
        })
        .expect("spawn the revision collector")
}

#[cfg(test)]
mod tests {
    use super::*;
    use revisor_api::ServiceStatus;

    fn rev(
        name: &str,
        created_h_ago: i64,
        active_h_ago: Option<i64>,
        routed: bool,
        no_gc: bool,
        now: DateTime<Utc>,
    ) -> Revision {
        let mut r = Revision::default();
        r.metadata.name = name.into();
        r.metadata.creation_timestamp = Some(now - chrono::Duration::hours(created_h_ago));
        r.metadata
            .set_label(ROUTING_STATE, if routed { "active" } else { "reserve" });
        let mut ann = BTreeMap::new();
        if let Some(h) = active_h_ago {
            ann.insert(
                ROUTING_STATE_MODIFIED.to_string(),
                (now - chrono::Duration::hours(h)).to_rfc3339(),
            );
        }
        if no_gc {
            ann.insert(NO_GC.to_string(), "true".to_string());
        }
        r.metadata.annotations = Some(ann);
        r
    }

    fn svc(created: &str, ready: &str) -> Service {
        Service {
            status: Some(ServiceStatus {
                latest_created_revision_name: Some(created.into()),
                latest_ready_revision_name: Some(ready.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn knatives_rules() {
        let now = Utc::now();
        let cfg = |min, max: Option<u32>| GcConfig {
            min_non_active_revisions: min,
            max_non_active_revisions: max,
            ..Default::default()
        };
        let revs = vec![
            rev("r1", 100, Some(90), false, false, now), // old, long inactive: stale
            rev("r2", 100, Some(10), false, false, now), // active 10h ago: kept (15h)
            rev("r3", 20, Some(20), false, false, now),  // created 20h ago: kept (48h)
            rev("r4", 100, Some(80), false, true, now),  // no-gc
            rev("r5", 100, Some(70), true, false, now),  // routed
            rev("r6", 100, Some(60), false, false, now), // stale
            rev("r7", 100, None, false, false, now),     // latest ready (never routed: creation time)
            rev("r8", 1, None, false, false, now),       // latest created
        ];
        let s = svc("r8", "r7");
        let mut got = collectable(&cfg(0, Some(1000)), &s, &revs, now);
        got.sort();
        assert_eq!(
            got,
            vec!["r1", "r6"],
            "stale and inactive; never routed, latest, or no-gc"
        );
        assert_eq!(
            collectable(&cfg(4, Some(1000)), &s, &revs, now),
            Vec::<String>::new(),
            "all 4 inactive kept"
        );
        assert_eq!(
            collectable(&cfg(3, Some(1000)), &s, &revs, now),
            vec!["r1"],
            "the 3 most recently active stay; the least recently active stale one goes"
        );
        assert_eq!(collectable(&cfg(2, Some(1000)), &s, &revs, now), vec!["r1", "r6"]);
        let immediate = GcConfig {
            retain_since_create_time: None,
            retain_since_last_active_time: None,
            min_non_active_revisions: 0,
            max_non_active_revisions: Some(0),
        };
        let mut got = collectable(&immediate, &s, &revs, now);
        got.sort();
        assert_eq!(got, vec!["r1", "r2", "r3", "r6"], "every inactive revision");
        let over_max = GcConfig {
            retain_since_create_time: Some(Duration::from_secs(1000 * 3600)),
            retain_since_last_active_time: Some(Duration::from_secs(1000 * 3600)),
            min_non_active_revisions: 0,
            max_non_active_revisions: Some(2),
        };
        assert_eq!(
            collectable(&over_max, &s, &revs, now),
            vec!["r6", "r1"],
            "beyond max, least recently active"
        );
        let off = GcConfig {
            retain_since_create_time: None,
            retain_since_last_active_time: None,
            max_non_active_revisions: None,
            min_non_active_revisions: 0,
        };
        assert!(collectable(&off, &s, &revs, now).is_empty(), "disabled");
    }

    #[test]
    fn config_reads_knatives_keys() {
        let m = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(
            GcConfig::from_map(&m(&[
                ("retain-since-create-time", "48h"),
                ("retain-since-last-active-time", "15h"),
                ("min-non-active-revisions", "20"),
                ("max-non-active-revisions", "1000"),
            ]))
            .unwrap(),
            GcConfig::default()
        );
        let c = GcConfig::from_map(&m(&[
            ("retain-since-create-time", "disabled"),
            ("max-non-active-revisions", "disabled"),
        ]))
        .unwrap();
        assert_eq!((c.retain_since_create_time, c.max_non_active_revisions), (None, None));
        assert!(GcConfig::from_map(&m(&[("min-non-active-revisions", "-1")]))
            .unwrap_err()
            .contains("min-non-active-revisions"));
        assert!(GcConfig::from_map(&m(&[
            ("min-non-active-revisions", "5"),
            ("max-non-active-revisions", "2")
        ]))
        .is_err());
        assert!(GcConfig::from_map(&m(&[("retain", "1h")]))
            .unwrap_err()
            .contains("unknown key"));
    }
}
