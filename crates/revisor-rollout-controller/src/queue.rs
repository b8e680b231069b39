//! The work queue: one entry per Rollout with the time it is due. A Rollout is stepped by one task at
//! a time; a wake while its step runs is kept and applied when the step ends, together with the time
//! the step asked to be looked at again (requeue-after), as kube-runtime's controller does.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

use tokio::time::Instant;

#[derive(Debug, Default)]
struct Entry {
    /// When it is due next (while running: when it is due once the step ends).
    due: Option<Instant>,
    running: bool,
}

#[derive(Debug)]
pub struct Queue<K> {
    entries: HashMap<K, Entry>,
    schedule: BTreeSet<(Instant, K)>,
}

impl<K: Ord + Hash + Clone> Default for Queue<K> {
    fn default() -> Self {
        Queue {
            entries: HashMap::new(),
            schedule: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Hash + Clone> Queue<K> {
    /// Makes `key` due at `at`, unless it is due sooner already.
    pub fn wake(&mut self, key: K, at: Instant) {
        let e = self.entries.entry(key.clone()).or_default();
        if e.due.is_some_and(|d| d <= at) {
            return;
        }
        if let (Some(old), false) = (e.due, e.running) {
            self.schedule.remove(&(old, key.clone()));
        }
        e.due = Some(at);
        if !e.running {
            self.schedule.insert((at, key));
        }
    }

    /// The earliest time a key not being stepped is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.schedule.first().map(|(at, _)| *at)
    }

    /// The keys due by `now`, marked running.
    pub fn take_due(&mut self, now: Instant) -> Vec<K> {
        let mut out = Vec::new();
        while let Some((at, _)) = self.schedule.first() {
            if *at > now {
                break;
            }
            let (_, key) = self.schedule.pop_first().expect("a first entry");
            let e = self.entries.get_mut(&key).expect("a scheduled key has an entry");
            e.due = None;
            e.running = true;
            out.push(key);
        }
        out
    }

    /// `key`'s step ended and asks to be looked at again at `requeue` (if at all); a wake that came
    /// while it ran counts too.
    pub fn finish(&mut self, key: &K, requeue: Option<Instant>) {
        let Some(e) = self.entries.get_mut(key) else { return };
        e.running = false;
        let due = match (e.due.take(), requeue) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match due {
            Some(at) => {
                e.due = Some(at);
                self.schedule.insert((at, key.clone()));
            }
            None => {
                self.entries.remove(key);
            }
        }
    }

    /// Drops `key` (its Rollout is gone), unless a step of it is running.
    pub fn forget(&mut self, key: &K) {
        if let Some(e) = self.entries.get(key) {
            if e.running {
                return;
            }
            if let Some(at) = e.due {
                self.schedule.remove(&(at, key.clone()));
            }
            self.entries.remove(key);
        }
    }

    /// Whether no key is due or running.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn is_running(&self, key: &K) -> bool {
        self.entries.get(key).is_some_and(|e| e.running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// `n` seconds after `t`.
    fn at(t: Instant, n: u64) -> Instant {
        t + Duration::from_secs(n)
    }

    #[test]
    fn keys_come_due_in_time_order_once_and_a_sooner_wake_moves_one_forward() {
        let t = Instant::now();
        let mut q = Queue::default();
        q.wake("b", at(t, 2));
        q.wake("a", at(t, 1));
        q.wake("a", at(t, 5)); // later than it is due already: no change
        assert_eq!(q.next_due(), Some(at(t, 1)));
        assert_eq!(q.take_due(t), Vec::<&str>::new());
        assert_eq!(q.take_due(at(t, 3)), vec!["a", "b"]);
        assert_eq!(q.next_due(), None);
        q.finish(&"a", Some(at(t, 10)));
        q.wake("a", at(t, 4));
        assert_eq!(q.next_due(), Some(at(t, 4)), "moved forward");
        assert_eq!(q.take_due(at(t, 4)), vec!["a"]);
        assert_eq!(q.take_due(at(t, 20)), Vec::<&str>::new(), "and due once");
    }

    #[test]
    fn a_running_key_is_never_handed_out_twice_and_keeps_its_wake() {
        let t = Instant::now();
        let mut q = Queue::default();
        q.wake("a", t);
        assert_eq!(q.take_due(t), vec!["a"]);
        assert!(q.is_running(&"a"));
        // Changes while it runs: kept, not handed out.
        q.wake("a", t);
        assert_eq!(q.next_due(), None);
        assert_eq!(q.take_due(at(t, 1)), Vec::<&str>::new());
        // The step asks for 5 s; the wake during it makes it due at once.
        q.finish(&"a", Some(at(t, 5)));
        assert_eq!(q.take_due(t), vec!["a"]);
        q.finish(&"a", Some(at(t, 5)));
        assert_eq!(q.next_due(), Some(at(t, 5)));
    }

    #[test]
    fn a_key_with_nothing_due_leaves_the_queue() {
        let t = Instant::now();
        let mut q = Queue::default();
        q.wake("a", t);
        q.take_due(t);
        q.finish(&"a", None);
        assert!(q.is_empty());
        q.wake("b", at(t, 1));
        q.forget(&"b");
        assert!(q.is_empty());
        assert_eq!(q.next_due(), None);
    }
}
