//! Resolves traffic targets to concrete revisions, or says why the route cannot be programmed.

use revisor_api::{ConditionStatus, TrafficTarget};

/// What the resolver needs to know of one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionState {
    pub name: String,
    pub ready: ConditionStatus,
}

/// Why a route is not ready: `status` is False (broken) or Unknown (waiting); the reason is Knative's.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteProblem {
    pub status: ConditionStatus,
    pub reason: &'static str,
    pub message: String,
}

impl RouteProblem {
    fn missing(status: ConditionStatus, message: String) -> Self {
        Self {
            status,
            reason: "RevisionMissing",
            message,
        }
    }
}

/// Resolves every target to a revision name: `latestRevision` to the configuration's latest ready revision,
/// names to existing revisions. Fails with the most serious problem (False before Unknown).
pub fn resolve(
    configuration: &str,
    targets: &[TrafficTarget],
    latest_ready: Option<&str>,
    latest_created_failed: bool,
    revisions: &[RevisionState],
) -> Result<Vec<TrafficTarget>, RouteProblem> {
    let mut problems = Vec::new();
    let mut out = Vec::with_capacity(targets.len());
    for t in targets {
        let name = if t.is_latest() {
            match latest_ready {
                Some(n) => n.to_string(),
                None if latest_created_failed => {
                    problems.push(RouteProblem::missing(
                        ConditionStatus::False,
                        format!("Configuration {configuration:?} does not have any ready Revision."),
                    ));
                    continue;
                }
                None => {
                    problems.push(RouteProblem::missing(
                        ConditionStatus::Unknown,
                        format!("Configuration {configuration:?} is waiting for a Revision to become ready."),
                    ));
                    continue;
                }
            }
        } else {
            let name = t.revision().unwrap_or_default();
            match revisions.iter().find(|r| r.name == name) {
                None => problems.push(RouteProblem::missing(
                    ConditionStatus::False,
                    format!("Revision {name:?} referenced in traffic not found."),
                )),
                Some(r) if r.ready == ConditionStatus::False => problems.push(RouteProblem::missing(
                    ConditionStatus::False,
                    format!("Revision {name:?} failed to become ready."),
                )),
                Some(r) if r.ready == ConditionStatus::Unknown => problems.push(RouteProblem::missing(
                    ConditionStatus::Unknown,
                    format!("Revision {name:?} is not yet ready."),
                )),
                Some(_) => {}
            }
            name.to_string()
        };
        out.push(TrafficTarget {
            tag: t.tag.clone(),
            revision_name: Some(name),
            latest_revision: t.latest_revision,
            percent: t.percent,
            ..Default::default()
        });
    }
    problems.sort_by_key(|p| p.status != ConditionStatus::False);
    match problems.into_iter().next() {
        Some(p) => Err(p),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(name: &str, ready: ConditionStatus) -> RevisionState {
        RevisionState {
            name: name.into(),
            ready,
        }
    }

    fn latest(percent: i64) -> TrafficTarget {
        TrafficTarget {
            latest_revision: Some(true),
            percent: Some(percent),
            ..Default::default()
        }
    }

    fn named(name: &str, percent: i64, tag: Option<&str>) -> TrafficTarget {
        TrafficTarget {
            revision_name: Some(name.into()),
            latest_revision: Some(false),
            percent: Some(percent),
            tag: tag.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn table() {
        use ConditionStatus::*;
        let revs = [rev("s-00001", True), rev("s-00002", Unknown), rev("s-00003", False)];
        struct Case {
            name: &'static str,
            targets: Vec<TrafficTarget>,
            latest_ready: Option<&'static str>,
            failed: bool,
            want: Result<Vec<&'static str>, (ConditionStatus, &'static str)>,
        }
        let cases = [
            Case {
                name: "latest resolves",
                targets: vec![latest(100)],
                latest_ready: Some("s-00001"),
                failed: false,
                want: Ok(vec!["s-00001"]),
            },
            Case {
                name: "latest waits",
                targets: vec![latest(100)],
                latest_ready: None,
                failed: false,
                want: Err((Unknown, "is waiting for a Revision")),
            },
            Case {
                name: "latest failed",
                targets: vec![latest(100)],
                latest_ready: None,
                failed: true,
                want: Err((False, "does not have any ready Revision")),
            },
            Case {
                name: "named split",
                targets: vec![named("s-00001", 70, None), latest(30)],
                latest_ready: Some("s-00001"),
                failed: false,
                want: Ok(vec!["s-00001", "s-00001"]),
            },
            Case {
                name: "missing revision",
                targets: vec![named("s-00009", 100, None)],
                latest_ready: Some("s-00001"),
                failed: false,
                want: Err((False, "\"s-00009\" referenced in traffic not found")),
            },
            Case {
                name: "not yet ready",
                targets: vec![named("s-00002", 100, None)],
                latest_ready: Some("s-00001"),
                failed: false,
                want: Err((Unknown, "\"s-00002\" is not yet ready")),
            },
            Case {
                name: "False beats Unknown",
                targets: vec![named("s-00002", 50, None), named("s-00003", 50, None)],
                latest_ready: None,
                failed: false,
                want: Err((False, "\"s-00003\" failed to become ready")),
            },
        ];
        for c in cases {
            let got = resolve("s", &c.targets, c.latest_ready, c.failed, &revs);
            match (got, c.want) {
                (Ok(ts), Ok(names)) => {
                    let got: Vec<_> = ts.iter().map(|t| t.revision_name.clone().unwrap()).collect();
                    assert_eq!(got, names, "{}", c.name);
                }
                (Err(p), Err((status, msg))) => {
                    assert_eq!(p.status, status, "{}", c.name);
                    assert_eq!(p.reason, "RevisionMissing", "{}", c.name);
                    assert!(p.message.contains(msg), "{}: {}", c.name, p.message);
                }
                (got, want) => panic!("{}: got {got:?}, want {want:?}", c.name),
            }
        }
    }

    #[test]
    fn tags_and_latest_flag_survive() {
        let t = resolve(
            "s",
            &[named("s-00001", 100, Some("stable"))],
            None,
            false,
            &[rev("s-00001", ConditionStatus::True)],
        )
        .unwrap();
        assert_eq!(t[0].tag.as_deref(), Some("stable"));
        assert_eq!(t[0].latest_revision, Some(false));
    }
}
