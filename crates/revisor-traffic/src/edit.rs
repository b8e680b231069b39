//! kn-style traffic edits: `--traffic REF=PCT`, `--tag REV=TAG`, `--untag TAG`, applied to `spec.traffic`.
//!
//! Precedence is kn's: untag, then tag, then traffic. REF is a revision name, a tag, or `@latest`.
//! When the given percents sum below 100, the one current target left unmentioned gets the rest.

use revisor_api::TrafficTarget;

pub const LATEST: &str = "@latest";

/// The edit as the user typed it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrafficEdit {
    pub traffic: Vec<String>,
    pub tags: Vec<String>,
    pub untags: Vec<String>,
}

/// Which target a reference names.
#[derive(Debug, Clone, PartialEq)]
enum Ident {
    Latest,
    Revision(String),
}

fn ident(t: &TrafficTarget) -> Ident {
    if t.is_latest() {
        Ident::Latest
    } else {
        Ident::Revision(t.revision().unwrap_or_default().to_string())
    }
}

fn refers_to(reference: &str, t: &TrafficTarget) -> bool {
    match reference {
        LATEST => t.is_latest(),
        r => t.tag() == Some(r) || (!t.is_latest() && t.revision() == Some(r)),
    }
}

fn split_pair<'a>(flag: &str, s: &'a str) -> Result<(&'a str, &'a str), String> {
    match s.split_once('=') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains('=') => Ok((a, b)),
        _ => Err(format!("{flag} {s:?}: expected the form NAME=VALUE")),
    }
}

fn parse_percents(edit: &TrafficEdit) -> Result<Vec<(String, i64)>, String> {
    let mut out: Vec<(String, i64)> = Vec::new();
    for s in &edit.traffic {
        // kn reads a bare number as the share of @latest.
        let (r, p) = if s.contains('=') {
            split_pair("--traffic", s)?
        } else {
            (LATEST, s.as_str())
        };
        let pct: i64 = p
            .trim_end_matches('%')
            .parse()
            .map_err(|_| format!("--traffic {s:?}: {p:?} is not a whole number of percent"))?;
        if !(0..=100).contains(&pct) {
            return Err(format!("--traffic {s:?}: percent must be in [0, 100], got {pct}"));
        }
        if out.iter().any(|(o, _)| o == r) {
            return Err(format!("--traffic: {r:?} is given more than once"));
        }
        out.push((r.to_string(), pct));
    }
    let sum: i64 = out.iter().map(|(_, p)| p).sum();
    if sum > 100 {
        return Err(format!("--traffic: the given percents sum to {sum}, want at most 100"));
    }
    Ok(out)
}

/// Applies an edit to the current `spec.traffic`. `revisions` are the service's revision names,
/// so a reference to a revision that does not exist is refused here instead of breaking the route.
pub fn compute(
    current: &[TrafficTarget],
    edit: &TrafficEdit,
    revisions: &[String],
) -> Result<Vec<TrafficTarget>, String> {
    let percents = parse_percents(edit)?;
    let remainder_to = remainder_target(current, &percents)?;
    let mut traffic = current.to_vec();
    untag(&mut traffic, &edit.untags)?;
    for s in &edit.tags {
        let (rev, tag) = split_pair("--tag", s)?;
        tag_target(&mut traffic, rev, tag, revisions)?;
    }
    if !percents.is_empty() {
        for t in &mut traffic {
            t.percent = Some(0);
        }
        let mut set: Vec<(usize, &str)> = Vec::new();
        for (r, pct) in &percents {
            let i = set_percent(&mut traffic, r, *pct, revisions)?;
            // Two references to one target (its tag and @latest, say) would leave it the last one's
            // share and the sum short of 100.
            if let Some((_, other)) = set.iter().find(|(j, _)| *j == i) {
                return Err(format!(
                    "--traffic: {other:?} and {r:?} name the same target; give it one percent"
                ));
            }
            set.push((i, r));
        }
        if let Some((who, rest)) = remainder_to {
            if let Some(t) = traffic.iter_mut().find(|t| ident(t) == who) {
                t.percent = Some(rest);
            }
        }
    }
    traffic.retain(|t| t.tag().is_some() || t.percent() != 0);
    Ok(traffic)
}

/// The current target that gets what the given percents leave, when they sum below 100.
fn remainder_target(current: &[TrafficTarget], percents: &[(String, i64)]) -> Result<Option<(Ident, i64)>, String> {
    let sum: i64 = percents.iter().map(|(_, p)| p).sum();
    if percents.is_empty() || sum == 100 {
        return Ok(None);
    }
    let mut left: Vec<Ident> = Vec::new();
    for t in current
        .iter()
        .filter(|t| !percents.iter().any(|(r, _)| refers_to(r, t)))
    {
        let id = ident(t);
        if !left.contains(&id) {
            left.push(id);
        }
    }
    match left.len() {
        1 => Ok(Some((left.remove(0), 100 - sum))),
        0 => Err(format!(
            "--traffic: the given percents sum to {sum}, and no other target is left to take the remaining {}%",
            100 - sum
        )),
        n => Err(format!(
            "--traffic: the given percents sum to {sum}, and {n} targets are left unmentioned; \
             leave out exactly one to give it the remaining {}%",
            100 - sum
        )),
    }
}

fn untag(traffic: &mut [TrafficTarget], untags: &[String]) -> Result<(), String> {
    let mut missing = Vec::new();
    for tag in untags {
        match traffic.iter_mut().find(|t| t.tag() == Some(tag.as_str())) {
            Some(t) => t.tag = None,
            None => missing.push(tag.as_str()),
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("--untag: no target has the tag(s) {}", missing.join(", ")))
    }
}

fn check_revision(rev: &str, revisions: &[String]) -> Result<(), String> {
    if revisions.iter().any(|r| r == rev) {
        Ok(())
    } else {
        Err(format!(
            "revision {rev:?} does not exist (revisions: {})",
            revisions.join(", ")
        ))
    }
}

fn tag_target(traffic: &mut Vec<TrafficTarget>, rev: &str, tag: &str, revisions: &[String]) -> Result<(), String> {
    if traffic.iter().any(|t| t.tag() == Some(tag) && refers_to(rev, t)) {
        return Ok(());
    }
    if traffic.iter().any(|t| t.tag() == Some(tag)) {
        return Err(format!(
            "--tag: tag {tag:?} is already in use; add --untag {tag} to move it"
        ));
    }
    if rev == LATEST {
        if let Some(t) = traffic.iter_mut().find(|t| t.is_latest()) {
            if let Some(old) = t.tag() {
                return Err(format!(
                    "--tag: the latest revision is already tagged {old:?}; add --untag {old} to replace it"
                ));
            }
            t.tag = Some(tag.to_string());
            return Ok(());
        }
        traffic.push(TrafficTarget {
            tag: Some(tag.into()),
            latest_revision: Some(true),
            percent: Some(0),
            ..Default::default()
        });
        return Ok(());
    }
    check_revision(rev, revisions)?;
    if let Some(t) = traffic
        .iter_mut()
        .find(|t| !t.is_latest() && t.revision() == Some(rev) && t.tag().is_none())
    {
        t.tag = Some(tag.to_string());
    } else {
        traffic.push(named(rev, 0, Some(tag)));
    }
    Ok(())
}

/// Sets the percent of the target `r` names (made when none does); the target's index.
fn set_percent(traffic: &mut Vec<TrafficTarget>, r: &str, pct: i64, revisions: &[String]) -> Result<usize, String> {
    let found = if r == LATEST {
        traffic.iter().position(|t| t.is_latest())
    } else {
        traffic
            .iter()
            .position(|t| t.tag() == Some(r))
            .or_else(|| traffic.iter().position(|t| !t.is_latest() && t.revision() == Some(r)))
    };
    if let Some(i) = found {
        traffic[i].percent = Some(pct);
        return Ok(i);
    }
    if r == LATEST {
        traffic.push(TrafficTarget {
            latest_revision: Some(true),
            percent: Some(pct),
            ..Default::default()
        });
    } else {
        check_revision(r, revisions).map_err(|e| format!("--traffic {r}: not a tag, and {e}"))?;
        traffic.push(named(r, pct, None));
    }
    Ok(traffic.len() - 1)
}

fn named(rev: &str, pct: i64, tag: Option<&str>) -> TrafficTarget {
    TrafficTarget {
        tag: tag.map(str::to_string),
        revision_name: Some(rev.to_string()),
        latest_revision: Some(false),
        percent: Some(pct),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revs() -> Vec<String> {
        vec!["s-00001".into(), "s-00002".into()]
    }

    fn latest(pct: i64) -> TrafficTarget {
        TrafficTarget {
            latest_revision: Some(true),
            percent: Some(pct),
            ..Default::default()
        }
    }

    fn edit(traffic: &[&str], tags: &[&str], untags: &[&str]) -> TrafficEdit {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        TrafficEdit {
            traffic: v(traffic),
            tags: v(tags),
            untags: v(untags),
        }
    }

    /// Renders a traffic list compactly: `@latest=70 s-00001=30#stable`.
    fn show(ts: &[TrafficTarget]) -> String {
        ts.iter()
            .map(|t| {
                let who = if t.is_latest() {
                    LATEST.to_string()
                } else {
                    t.revision().unwrap().to_string()
                };
                let tag = t.tag().map(|x| format!("#{x}")).unwrap_or_default();
                format!("{who}={}{tag}", t.percent())
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn table() {
        let start = vec![latest(100)];
        let split = vec![named("s-00001", 70, Some("stable")), latest(30)];
        let tagged_zero = vec![latest(100), named("s-00001", 0, Some("old"))];
        let three = vec![latest(50), named("s-00001", 25, None), named("s-00002", 25, None)];
        type Case<'a> = (&'a str, &'a [TrafficTarget], TrafficEdit, Result<&'a str, &'a str>);
        let cases: Vec<Case> = vec![
            (
                "split latest and a revision",
                &start,
                edit(&["@latest=70", "s-00001=30"], &[], &[]),
                Ok("@latest=70 s-00001=30"),
            ),
            (
                "remainder to the one left out",
                &split,
                edit(&["stable=90"], &[], &[]),
                Ok("s-00001=90#stable @latest=10"),
            ),
            (
                "percent sign accepted",
                &start,
                edit(&["s-00001=100%"], &[], &[]),
                Ok("s-00001=100"),
            ),
            (
                "bare number means @latest",
                &split,
                edit(&["stable=50", "50"], &[], &[]),
                Ok("s-00001=50#stable @latest=50"),
            ),
            (
                "tag latest",
                &start,
                edit(&[], &["@latest=current"], &[]),
                Ok("@latest=100#current"),
            ),
            (
                "tag a revision adds a 0% target",
                &start,
                edit(&[], &["s-00001=old"], &[]),
                Ok("@latest=100 s-00001=0#old"),
            ),
            (
                "untag drops a 0% target",
                &tagged_zero,
                edit(&[], &[], &["old"]),
                Ok("@latest=100"),
            ),
            (
                "untag then retag",
                &split,
                edit(&[], &["s-00002=stable"], &["stable"]),
                Ok("s-00001=70 @latest=30 s-00002=0#stable"),
            ),
            (
                "tag in use",
                &split,
                edit(&[], &["s-00002=stable"], &[]),
                Err("tag \"stable\" is already in use"),
            ),
            (
                "unknown untag",
                &start,
                edit(&[], &[], &["nope"]),
                Err("no target has the tag(s) nope"),
            ),
            (
                "sum above 100",
                &start,
                edit(&["@latest=70", "s-00001=40"], &[], &[]),
                Err("sum to 110"),
            ),
            (
                "two left out",
                &three,
                edit(&["@latest=50"], &[], &[]),
                Err("2 targets are left unmentioned"),
            ),
            (
                "nothing left out",
                &start,
                edit(&["@latest=50"], &[], &[]),
                Err("no other target is left"),
            ),
            (
                "bad percent",
                &start,
                edit(&["@latest=lots"], &[], &[]),
                Err("is not a whole number"),
            ),
            (
                "percent out of range",
                &start,
                edit(&["@latest=150"], &[], &[]),
                Err("must be in [0, 100]"),
            ),
            (
                "duplicate ref",
                &start,
                edit(&["@latest=50", "@latest=50"], &[], &[]),
                Err("given more than once"),
            ),
            (
                "unknown revision",
                &start,
                edit(&["@latest=50", "s-00009=50"], &[], &[]),
                Err("revision \"s-00009\" does not exist"),
            ),
            (
                "malformed tag",
                &start,
                edit(&[], &["s-00001"], &[]),
                Err("expected the form NAME=VALUE"),
            ),
        ];
        for (name, current, e, want) in cases {
            match (compute(current, &e, &revs()), want) {
                (Ok(got), Ok(w)) => assert_eq!(show(&got), w, "{name}"),
                (Err(got), Err(w)) => assert!(got.contains(w), "{name}: {got}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// Found by the `traffic` fuzzer (issue 14): a tag and `@latest` naming the same target left it
    /// the second share and the sum at 90.
    #[test]
    fn two_references_to_one_target_are_refused() {
        let mut current = latest(50);
        current.tag = Some("current".into());
        let cur = vec![current, named("s-00001", 50, None)];
        let e = compute(&cur, &edit(&["current=10%", "0"], &[], &[]), &revs()).unwrap_err();
        assert!(e.contains("\"current\" and \"@latest\" name the same target"), "{e}");
        let e = compute(&cur, &edit(&["s-00001=90", "current=10"], &[], &[]), &revs());
        assert!(e.is_ok(), "{e:?}");
    }
}
