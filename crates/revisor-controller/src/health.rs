//! Revision status from what the backend observes of its replicas, with Knative's conditions.

use chrono::{DateTime, Utc};
use revisor_api::meta::Conditions;
use revisor_api::{Condition, ConditionStatus, Revision, RevisionStatus};
use revisor_store::{Event, Store, StoreError};

use crate::status::same_ignoring_times;

/// What the backend knows of one revision's replicas.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RevisionHealth {
    pub namespace: String,
    pub name: String,
    /// The revision object the report is about: a report about a deleted revision is not written
    /// into another made since under the same name.
    pub uid: Option<String>,
    pub desired: u32,
    /// Replicas with a live process.
    pub running: u32,
    pub ready: u32,
    /// The revision cannot run here at all (no local command for its image, ...): (reason, message).
    pub unrunnable: Option<(String, String)>,
    /// The last replica failure since the last ready replica: (reason, message).
    pub failure: Option<(String, String)>,
    pub deadline_exceeded: bool,
    /// The autoscaler found the revision idle (Active=False, NoTraffic), replicas or not.
    pub inactive: bool,
    /// The revision starts at zero (`initial-scale: "0"` where `allow-zero-initial-scale` permits): as in
    /// Knative it is Ready without a replica, and the first request starts one.
    pub starts_at_zero: bool,
}

fn cond(t: &str, s: ConditionStatus, reason: &str, message: &str) -> Condition {
    Condition::new(t, s, Some(reason), Some(message.to_string()))
}

/// The revision's conditions and replica counts for a health report.
pub fn revision_status(old: &RevisionStatus, h: &RevisionHealth, now: DateTime<Utc>) -> RevisionStatus {
    use ConditionStatus::*;
    let was_ready = old.conditions.get_condition("Ready").is_some_and(|c| c.status == True);
    let mut st = old.clone();
    st.actual_replicas = Some(h.ready as i64);
    st.desired_replicas = Some(h.desired as i64);
    let (healthy, resources, ready, active) = if let Some((reason, msg)) = &h.unrunnable {
        let c = cond("", False, reason, msg);
        (c.clone(), c.clone(), c.clone(), cond("", False, reason, msg))
    } else if h.ready > 0 {
        let active = if h.inactive {
            cond("", False, "NoTraffic", "The target is not receiving traffic.")
        } else {
            Condition::truthy("")
        };
        (
            Condition::truthy(""),
            Condition::truthy(""),
            Condition::truthy(""),
            active,
        )
    } else if was_ready && h.desired > 0 && h.failure.is_none() && !h.deadline_exceeded {
        // Coming back from zero: still Ready (requests are held, not refused), not yet active.
        (
            Condition::truthy(""),
            Condition::truthy(""),
            Condition::truthy(""),
            cond(
                "",
                Unknown,
                "Queued",
                "Requests to the target are being buffered as resources are provisioned.",
            ),
        )
    } else if h.desired == 0 {
        let no_traffic = cond("", False, "NoTraffic", "The target is not receiving traffic.");
        if was_ready || (h.starts_at_zero && h.failure.is_none()) {
            (
                Condition::truthy(""),
                Condition::truthy(""),
                Condition::truthy(""),
                no_traffic,
            )
        } else {
            let idle = cond(
                "",
                Unknown,
                "NotRunning",
                "the revision has not been started: no traffic reaches it",
            );
            (idle.clone(), idle.clone(), idle, no_traffic)
        }
    } else if h.deadline_exceeded {
        let (freason, fmsg) = h
            .failure
            .clone()
            .unwrap_or_else(|| ("NotReady".into(), "no replica passed its readiness probe".into()));
        let msg =
            format!("Initial scale was never achieved within the progress deadline. Last failure ({freason}): {fmsg}");
        let c = cond("", False, "ProgressDeadlineExceeded", &msg);
        (
            cond("", False, &freason, &fmsg),
            c.clone(),
            c,
            cond("", Unknown, "Deploying", "waiting for a ready replica"),
        )
    } else if let Some((reason, msg)) = &h.failure {
        let c = cond("", False, reason, msg);
        (
            c.clone(),
            cond("", Unknown, "Deploying", "waiting for a ready replica"),
            c,
            cond("", Unknown, "Deploying", "waiting for a ready replica"),
        )
    } else {
        let c = cond("", Unknown, "Deploying", "starting replicas and probing for readiness");
        (c.clone(), c.clone(), c.clone(), c)
    };
    for (t, mut c) in [
        ("ContainerHealthy", healthy),
        ("ResourcesAvailable", resources),
        ("Ready", ready),
        ("Active", active),
    ] {
        c.type_ = t.into();
        st.conditions.set_condition(c, now);
    }
    st
}

/// Writes the reported health into the revisions' status (only what changed), in one transaction,
/// with an event when a revision's readiness changes.
pub fn record_health(store: &Store, reports: &[RevisionHealth], now: DateTime<Utc>) -> Result<(), StoreError> {
    store.write(|tx| {
        for h in reports {
            let Some(mut rev) = tx.get::<Revision>(&h.namespace, &h.name)? else {
                continue;
            };
            if h.uid.is_some() && rev.metadata.uid != h.uid {
                continue;
            }
            let old = rev.status();
            let new = revision_status(&old, h, now);
            if same_ignoring_times(&old, &new) {
                continue;
            }
            let before = old.conditions.get_condition("Ready").map(|c| c.status);
            let after = new.conditions.get_condition("Ready").cloned();
            rev.status = Some(new);
            tx.update(rev.clone())?;
            if let (Some(after), Some(svc)) = (after, rev.service_name()) {
                if before != Some(after.status) && after.status != ConditionStatus::Unknown {
                    let object = format!("Revision/{}", h.name);
                    let reason = after.reason.clone().unwrap_or_else(|| "Ready".into());
                    let message = after
                        .message
                        .clone()
                        .unwrap_or_else(|| format!("{} replica(s) ready", h.ready));
                    let event = if after.status == ConditionStatus::True {
                        Event::normal(object, &reason, message)
                    } else {
                        Event::warning(object, &reason, message)
                    };
                    tx.record(&h.namespace, svc, &event)?;
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(desired: u32, ready: u32) -> RevisionHealth {
        RevisionHealth {
            namespace: "default".into(),
            name: "r".into(),
            desired,
            running: ready,
            ready,
            ..Default::default()
        }
    }

    fn get(st: &RevisionStatus, t: &str) -> (ConditionStatus, String) {
        let c = st.conditions.get_condition(t).unwrap();
        (c.status, c.reason.clone().unwrap_or_default())
    }

    #[test]
    fn table() {
        use ConditionStatus::*;
        let now = Utc::now();
        let ready_before = revision_status(&RevisionStatus::default(), &health(1, 1), now);
        type Case<'a> = (
            &'a str,
            RevisionStatus,
            RevisionHealth,
            (ConditionStatus, &'a str),
            (ConditionStatus, &'a str),
        );
        let cases: Vec<Case> = vec![
            (
                "ready replicas",
                RevisionStatus::default(),
                health(1, 1),
                (True, ""),
                (True, ""),
            ),
            (
                "starting",
                RevisionStatus::default(),
                health(1, 0),
                (Unknown, "Deploying"),
                (Unknown, "Deploying"),
            ),
            (
                "scaled to zero after being ready",
                ready_before.clone(),
                health(0, 0),
                (True, ""),
                (False, "NoTraffic"),
            ),
            (
                "idle but still running (grace period)",
                ready_before.clone(),
                RevisionHealth {
                    inactive: true,
                    ..health(1, 1)
                },
                (True, ""),
                (False, "NoTraffic"),
            ),
            (
                "coming back from zero: still Ready, Active=Unknown",
                ready_before.clone(),
                health(1, 0),
                (True, ""),
                (Unknown, "Queued"),
            ),
            (
                "a missing command",
                RevisionStatus::default(),
                RevisionHealth {
                    failure: Some(("ExecFailed".into(), "No such file".into())),
                    ..health(1, 0)
                },
                (False, "ExecFailed"),
                (Unknown, "Deploying"),
            ),
            (
                "deadline exceeded",
                RevisionStatus::default(),
                RevisionHealth {
                    failure: Some(("ExitCode1".into(), "boom".into())),
                    deadline_exceeded: true,
                    ..health(1, 0)
                },
                (False, "ProgressDeadlineExceeded"),
                (Unknown, "Deploying"),
            ),
            (
                "not runnable here",
                RevisionStatus::default(),
                RevisionHealth {
                    unrunnable: Some(("ImageNotRunnableLocally".into(), "map it".into())),
                    ..health(1, 0)
                },
                (False, "ImageNotRunnableLocally"),
                (False, "ImageNotRunnableLocally"),
            ),
        ];
        for (name, old, h, ready, active) in cases {
            let st = revision_status(&old, &h, now);
            assert_eq!(get(&st, "Ready"), (ready.0, ready.1.to_string()), "{name}: Ready");
            assert_eq!(get(&st, "Active"), (active.0, active.1.to_string()), "{name}: Active");
            assert_eq!(st.actual_replicas, Some(h.ready as i64));
        }
        let st = revision_status(
            &RevisionStatus::default(),
            &RevisionHealth {
                failure: Some(("ExitCode1".into(), "boom".into())),
                deadline_exceeded: true,
                ..health(1, 0)
            },
            now,
        );
        assert!(st
            .conditions
            .get_condition("Ready")
            .unwrap()
            .message
            .as_deref()
            .unwrap()
            .contains("boom"));
    }
}
