//! Time windows over one-second buckets, with Knative's averaging rules, and the scale-down delay
//! window (the maximum of recent decisions).

use std::collections::VecDeque;
use std::time::Duration;

use crate::Time;

/// Values recorded into one-second buckets (values recorded in the same second add up, as stats of
/// several sources do in Knative), kept for the longest window asked of them: a ring of one value per
/// second, as Knative's own buckets are (the autoscaler records into every routed revision's every
/// second, 1,000 revisions on an idle server; a sorted map cost a node allocation each time).
#[derive(Debug, Clone)]
pub struct Buckets {
    keep: u64,
    /// One value per second, the newest (`last`) at the back; at most `keep` of them.
    values: VecDeque<f64>,
    first: Option<u64>,
    last: Option<u64>,
}

fn secs(w: Duration) -> u64 {
    w.as_secs().max(1)
}

impl Buckets {
    /// Buckets that can answer for windows up to `longest`.
    pub fn new(longest: Duration) -> Buckets {
        Buckets {
            keep: secs(longest),
            values: VecDeque::new(),
            first: None,
            last: None,
        }
    }

    /// Adds `value` to the bucket of `now`.
    pub fn record(&mut self, now: Time, value: f64) {
        let idx = now.as_secs();
        self.first.get_or_insert(idx);
        let Some(last) = self.last else {
            self.values.push_back(value);
            self.last = Some(idx);
            return;
        };
        if idx > last {
            if idx - last >= self.keep {
                self.values.clear();
            } else {
                self.values.extend(std::iter::repeat_n(0.0, (idx - last - 1) as usize));
            }
            self.values.push_back(value);
            while self.values.len() as u64 > self.keep {
                self.values.pop_front();
            }
            self.last = Some(idx);
            return;
        }
        // A second before the newest: within what is kept, or dropped.
        let back = last - idx;
        if back >= self.keep {
            return;
        }
        while (self.values.len() as u64) <= back {
            self.values.push_front(0.0);
        }
        let i = self.values.len() - 1 - back as usize;
        self.values[i] += value;
    }

    /// The average over the `window` ending at `now`: the sum of the buckets in it divided by the
    /// number of seconds it covers since the first record (a young series is not diluted by time
    /// before it existed). `None` when nothing was recorded within the window (no data).
    pub fn average(&self, now: Time, window: Duration) -> Option<f64> {
        let (first, last) = (self.first?, self.last?);
        let w = secs(window);
        let n = now.as_secs().max(last);
        if n - last >= w {
            return None;
        }
        let from = (n + 1).saturating_sub(w);
        let oldest = last + 1 - self.values.len() as u64;
        let skip = from.saturating_sub(oldest) as usize;
        let total: f64 = self.values.iter().skip(skip).sum();
        let count = (last - first + 1).min(w - (n - last));
        Some(total / count as f64)
    }
}

/// The largest value recorded within the last `delay` (Knative's scale-down delay: a decrease only
/// takes effect once it has held for the whole delay).
#[derive(Debug, Clone)]
pub struct DelayWindow {
    delay: Duration,
    entries: VecDeque<(Time, u32)>,
}

impl DelayWindow {
    pub fn new(delay: Duration) -> DelayWindow {
        DelayWindow {
            delay,
            entries: VecDeque::new(),
        }
    }

    /// Records a decision and returns the delayed one.
    pub fn record(&mut self, now: Time, value: u32) -> u32 {
        if self.delay.is_zero() {
            return value;
        }
        self.entries.push_back((now, value));
        while let Some(&(t, _)) = self.entries.front() {
            if t + self.delay > now {
                break;
            }
            self.entries.pop_front();
        }
        self.entries.iter().map(|(_, v)| *v).max().unwrap_or(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: u64) -> Time {
        Duration::from_secs(x)
    }

    #[test]
    fn averages_follow_knatives_rules() {
        let w = Duration::from_secs(6);
        let mut b = Buckets::new(Duration::from_secs(60));
        assert_eq!(b.average(s(10), w), None, "no data");
        b.record(s(10), 6.0);
        assert_eq!(
            b.average(s(10), w),
            Some(6.0),
            "one bucket: not diluted by time before the first record"
        );
        b.record(s(11), 0.0);
        assert_eq!(b.average(s(11), w), Some(3.0));
        for t in 12..=20 {
            b.record(s(t), 12.0);
        }
        assert_eq!(b.average(s(20), w), Some(12.0), "only the last 6 seconds count");
        assert_eq!(
            b.average(s(20), Duration::from_secs(60)),
            Some((6.0 + 9.0 * 12.0) / 11.0)
        );
        assert_eq!(
            b.average(s(22), w),
            Some(12.0 * 4.0 / 4.0),
            "two stale seconds leave the window"
        );
        assert_eq!(b.average(s(26), w), None, "nothing within the window");
        b.record(s(10_000), 1.0);
        assert_eq!(b.values.len(), 1, "old buckets are dropped");
        b.record(s(10_000), 2.0);
        assert_eq!(b.average(s(10_000), w), Some(3.0 / 6.0), "records in one second add up");
    }

    /// Out-of-order records land in their own second; gaps count as zero; what is older than the
    /// longest window is dropped.
    #[test]
    fn late_records_and_gaps() {
        let w = Duration::from_secs(4);
        let mut b = Buckets::new(Duration::from_secs(4));
        b.record(s(10), 4.0);
        b.record(s(13), 4.0);
        assert_eq!(b.average(s(13), w), Some(8.0 / 4.0), "two empty seconds between");
        b.record(s(11), 4.0);
        assert_eq!(
            b.average(s(13), w),
            Some(12.0 / 4.0),
            "a late record counts in its second"
        );
        b.record(s(9), 100.0);
        assert_eq!(
            b.average(s(13), w),
            Some(12.0 / 4.0),
            "older than the longest window: dropped"
        );
        b.record(s(14), 0.0);
        assert_eq!(b.average(s(14), w), Some(8.0 / 4.0), "second 10 left the window");
        assert!(b.values.len() <= 4);
    }

    #[test]
    fn the_delay_window_holds_the_maximum() {
        let mut d = DelayWindow::new(Duration::from_secs(10));
        assert_eq!(d.record(s(0), 5), 5);
        assert_eq!(d.record(s(2), 1), 5);
        assert_eq!(d.record(s(9), 1), 5);
        assert_eq!(d.record(s(10), 1), 1, "the 5 is now 10s old");
        assert_eq!(d.record(s(11), 3), 3);
        let mut none = DelayWindow::new(Duration::ZERO);
        assert_eq!(none.record(s(0), 5), 5);
        assert_eq!(none.record(s(1), 1), 1);
    }
}
