//! Knative's gradual rollout (`serving.knative.dev/rollout-duration`): when the revision behind a
//! `latestRevision: true` target changes, traffic moves to the new one over the duration, 1% first,
//! then in equal steps, newest revisions drained first. The state is a pure value the caller keeps
//! between reconciles; time is a parameter (milliseconds since the Unix epoch).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a target's traffic is during a rollout: revisions oldest to newest with their percents
/// (summing to `percent`), and the stepping parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gradual {
    pub percent: u32,
    pub revisions: Vec<(String, u32)>,
    #[serde(default)]
    pub step_size: u32,
    #[serde(default)]
    pub step_ms: i64,
    #[serde(default)]
    pub next_step_ms: i64,
}

impl Gradual {
    /// Whether a rollout is still moving traffic.
    pub fn in_progress(&self) -> bool {
        self.revisions.len() > 1
    }

    /// Changes the target's total share: more goes to the newest, less comes from the oldest.
    fn adjust(&mut self, goal: u32) {
        if goal == 0 {
            self.revisions.clear();
        } else if goal > self.percent {
            if let Some(last) = self.revisions.last_mut() {
                last.1 += goal - self.percent;
            }
        } else if goal < self.percent {
            let mut diff = self.percent - goal;
            while diff > 0 && !self.revisions.is_empty() {
                if self.revisions[0].1 > diff {
                    self.revisions[0].1 -= diff;
                    break;
                }
                diff -= self.revisions[0].1;
                self.revisions.remove(0);
            }
        }
        self.percent = goal;
    }

    /// One step: `step_size` more to the newest revision, taken from the next newest first.
    fn step(&mut self, now_ms: i64) {
        if now_ms < self.next_step_ms || self.revisions.len() < 2 {
            return;
        }
        let mut remaining = self.step_size;
        let newest = self.revisions.pop().expect("at least two revisions");
        while remaining > 0 {
            let Some(last) = self.revisions.last_mut() else { break };
            if last.1 > remaining {
                last.1 -= remaining;
                remaining = 0;
            } else {
                remaining -= last.1;
                self.revisions.pop();
            }
        }
        let moved = self.step_size - remaining;
        let taken: u32 = self.revisions.iter().map(|r| r.1).sum();
        self.revisions
            .push((newest.0, (newest.1 + moved).min(self.percent - taken)));
        if self.revisions.len() > 1 {
            self.next_step_ms = now_ms + self.step_ms;
        } else {
            let only = self.revisions[0].0.clone();
            *self = Gradual {
                percent: self.percent,
                revisions: vec![(only, self.percent)],
                ..Default::default()
            };
        }
    }
}

/// The next state for a target that should send `percent` to `goal` (the latest ready revision).
pub fn advance(prev: Option<&Gradual>, goal: &str, percent: u32, duration: Duration, now_ms: i64) -> Gradual {
    let done = || Gradual {
        percent,
        revisions: vec![(goal.to_string(), percent)],
        ..Default::default()
    };
    let Some(prev) = prev.filter(|p| !p.revisions.is_empty()) else {
        return done();
    };
    let mut cur = prev.clone();
    cur.adjust(percent);
    if cur.revisions.is_empty() || duration.is_zero() || percent <= 1 {
        return done();
    }
    if cur.revisions.last().is_some_and(|r| r.0 == goal) {
        cur.step(now_ms);
        return cur;
    }
    // A new revision: 1% from the newest revision that has traffic, then equal steps over the rest
    // of the duration (at least a second apart, at least 1% each).
    if let Some(r) = cur.revisions.iter_mut().rev().find(|r| r.1 > 0) {
        r.1 -= 1;
    }
    cur.revisions.retain(|r| r.1 > 0);
    cur.revisions.retain(|r| r.0 != goal);
    cur.revisions.push((goal.to_string(), 1));
    let min_step_secs = 1.0;
    let duration_secs = (duration.as_secs_f64() - min_step_secs).max(1.0);
    let steps = (duration_secs / min_step_secs).max(1.0).min((percent - 1) as f64);
    cur.step_size = ((percent - 1) as f64 / steps).round().max(1.0) as u32;
    cur.step_ms = (duration_secs / steps * 1000.0) as i64;
    cur.next_step_ms = now_ms + cur.step_ms;
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(g: &Gradual) -> Vec<(&str, u32)> {
        g.revisions.iter().map(|(n, p)| (n.as_str(), *p)).collect()
    }

    #[test]
    fn one_percent_first_then_equal_steps_over_the_duration() {
        let d = Duration::from_secs(5);
        let g = advance(None, "r1", 100, d, 0);
        assert_eq!(split(&g), vec![("r1", 100)], "the first revision takes everything");
        let g = advance(Some(&g), "r2", 100, d, 0);
        assert_eq!(split(&g), vec![("r1", 99), ("r2", 1)]);
        assert_eq!(
            (g.step_size, g.step_ms),
            (25, 1000),
            "99% in 4 steps over the remaining 4 s"
        );
        let g = advance(Some(&g), "r2", 100, d, 500);
        assert_eq!(split(&g), vec![("r1", 99), ("r2", 1)], "not yet");
        let g = advance(Some(&g), "r2", 100, d, 1000);
        assert_eq!(split(&g), vec![("r1", 74), ("r2", 26)]);
        let mut g = g;
        for t in [2000, 3000, 4000] {
            g = advance(Some(&g), "r2", 100, d, t);
        }
        assert_eq!(split(&g), vec![("r2", 100)]);
        assert!(!g.in_progress());
    }

    #[test]
    fn a_newer_revision_mid_rollout_drains_the_newest_first_and_percent_changes_adjust() {
        let d = Duration::from_secs(100);
        let g = advance(None, "r1", 100, d, 0);
        let g = advance(Some(&g), "r2", 100, d, 0);
        let g = advance(Some(&g), "r2", 100, d, g.next_step_ms);
        let (r1, r2) = (g.revisions[0].1, g.revisions[1].1);
        let g = advance(Some(&g), "r3", 100, d, g.next_step_ms);
        assert_eq!(split(&g), vec![("r1", r1), ("r2", r2 - 1), ("r3", 1)]);
        let g2 = advance(Some(&g), "r3", 50, d, 0);
        assert_eq!(
            g2.revisions.iter().map(|r| r.1).sum::<u32>(),
            50,
            "less share: from the oldest"
        );
        assert_eq!(g2.revisions.last().unwrap(), &("r3".to_string(), 1));
        let instant = advance(Some(&g), "r4", 100, Duration::ZERO, 0);
        assert_eq!(split(&instant), vec![("r4", 100)], "no duration: at once");
    }
}
