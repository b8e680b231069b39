//! One replica's supervisor: start, probe until ready, watch, restart with backoff, drain and stop.

use std::net::SocketAddr;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::probe::check;
use crate::process::{free_port, signal, spawn, tail, Group, Proc};
use crate::spec::{ProbeAction, ProcessSpec, AGGRESSIVE_PERIOD};
use crate::state::{Failure, ReadyReplica, StartTiming};
use crate::Shared;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A replica that stayed up this long resets the restart backoff.
const STABLE_UPTIME: Duration = Duration::from_secs(10);
/// How long a replica taken out of the route waits before it looks at its in-flight count, so that
/// requests that picked it just before the route changed have registered.
const ROUTE_PROPAGATION: Duration = Duration::from_millis(100);
const LOG_TAIL_LINES: usize = 20;

enum Phase {
    Exited(std::io::Result<ExitStatus>),
    Stopped,
    /// Ready after this many probes.
    Ready(u32),
}

/// The first wait between readiness probes when the probe sets no period: probing runs every
/// millisecond for the first `EAGER_PROBING`, then backs off (by a quarter each time) to the probe's
/// period, so a replica that starts in a few milliseconds (a model server starts in 5-10) is seen
/// within a millisecond, and a slow one costs few probes (a failed connect to a loopback port is a few
/// microseconds).
const FIRST_PROBE_INTERVAL: Duration = Duration::from_millis(1);
const EAGER_PROBING: Duration = Duration::from_millis(50);

/// One replica of one incarnation of a revision.
pub(crate) struct Replica {
    pub shared: Arc<Shared>,
    pub spec: Arc<ProcessSpec>,
    pub id: u64,
    pub incarnation: u64,
}

impl Replica {
    /// Changes this replica's revision state, unless its incarnation has ended.
    fn update(&self, f: impl FnOnce(&mut crate::RevisionState)) {
        self.shared.update(&self.spec.key, self.incarnation, f)
    }

    fn fail(&self, reason: &str, message: String) {
        tracing::warn!(revision = %self.spec.key, reason, "{message}");
        self.update(|st| {
            st.last_failure = Some(Failure {
                reason: reason.into(),
                message,
            })
        });
    }
}

pub(crate) async fn run(r: Replica, mut stop: watch::Receiver<bool>) {
    let (shared, spec, id) = (&r.shared, &r.spec, r.id);
    let key = &spec.key;
    let log = shared.log_path(key, id);
    let mut backoff = MIN_BACKOFF;
    let mut crashes = 0u64;
    while !*stop.borrow() {
        let port = match free_port() {
            Ok(p) => p,
            Err(e) => {
                r.fail("PortUnavailable", format!("no free loopback port: {e}"));
                if wait_or_stop(&mut stop, backoff).await {
                    break;
                }
                continue;
            }
        };
        mark(&log, &format!("replica {id} starting on port {port}"));
        let asked = Instant::now();
        let mut child = match spawn(spec, port, &log, shared.prefork.as_ref()).await {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("cannot start {}: {e}", spec.program.display());
                r.fail("ExecFailed", msg);
                if wait_or_stop(&mut stop, backoff).await {
                    break;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let spawned = asked.elapsed();
        // Ends whatever the replica started when it exits or is stopped (at the end of this turn).
        let group = Group::new(&child, &shared.groups_dir());
        let pid = child.id().unwrap_or(0);
        r.update(|st| st.running += 1);
        let started = Instant::now();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let phase = match wait_ready(spec, &mut child, port, &mut stop).await {
            Phase::Ready(probes) => {
                let timing = StartTiming {
                    spawn: spawned,
                    forked: child.forked(),
                    ready: asked.elapsed(),
                    probes,
                };
                r.update(|st| {
                    st.last_start = Some(timing);
                    st.ready.push(ReadyReplica { id, addr, pid });
                    st.ever_ready = true;
                    st.ready_since_scale_up = true;
                    st.deadline_exceeded = false;
                    st.last_failure = None;
                });
                tokio::select! {
                    status = child.wait() => Phase::Exited(status),
                    _ = stopped(&mut stop) => Phase::Stopped,
                }
            }
            other => other,
        };
        r.update(|st| st.ready.retain(|x| x.id != id));
        match phase {
            Phase::Stopped => {
                terminate(shared, spec, &mut child, addr).await;
                drop(group);
                r.update(|st| st.running -= 1);
                mark(&log, &format!("replica {id} stopped"));
                return;
            }
            Phase::Exited(status) => {
                drop(group);
                r.update(|st| st.running -= 1);
                let (reason, how) = describe_exit(&status);
                mark(&log, &format!("replica {id} {how}"));
                let output = tail(&log, LOG_TAIL_LINES);
                backoff = next_backoff(backoff, started.elapsed());
                crashes = if backoff == MIN_BACKOFF { 1 } else { crashes + 1 };
                r.fail(
                    &reason,
                    format!(
                        "replica {how} ({crashes} time(s) in a row; restarting in {:.1}s, a back-off that doubles \
                         up to {}s); last output:\n{output}",
                        backoff.as_secs_f64(),
                        MAX_BACKOFF.as_secs()
                    ),
                );
                if wait_or_stop(&mut stop, backoff).await {
                    break;
                }
            }
            Phase::Ready(_) => unreachable!("ready is followed by exit or stop"),
        }
    }
}

/// `d` after `now`, or a year after it when that is beyond what the clock can hold (a probe's
/// period can be as long as Kubernetes allows; time arithmetic must not panic).
fn later(now: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    now.checked_add(d.min(YEAR)).unwrap_or(now)
}

/// Probes until the replica is ready, exits, or is told to stop.
async fn wait_ready(spec: &ProcessSpec, child: &mut Proc, port: u16, stop: &mut watch::Receiver<bool>) -> Phase {
    let probe = &spec.probe;
    let mut next = later(tokio::time::Instant::now(), probe.initial_delay);
    let mut interval = if probe.period == AGGRESSIVE_PERIOD {
        FIRST_PROBE_INTERVAL
    } else {
        probe.period
    };
    let mut probes = 0;
    // A connect is cheap; a command probe is a process each time, so it backs off from the first.
    let eager = if matches!(probe.action, ProbeAction::Exec { .. }) {
        Duration::ZERO
    } else {
        EAGER_PROBING
    };
    let eager_until = next + eager;
    loop {
        tokio::select! {
            status = child.wait() => return Phase::Exited(status),
            _ = stopped(stop) => return Phase::Stopped,
            _ = tokio::time::sleep_until(next) => {
                probes += 1;
                if check(&probe.action, port, probe.timeout).await {
                    return Phase::Ready(probes);
                }
                let now = tokio::time::Instant::now();
                next = later(now, interval);
                if now >= eager_until {
                    interval = (interval.saturating_mul(5) / 4).min(probe.period);
                }
            }
        }
    }
}

/// The wait before restarting a replica that exited after `uptime`: from the start again after a
/// stable run, else double the last wait, up to `MAX_BACKOFF` (a crash loop settles at one restart
/// every ten seconds or so).
fn next_backoff(last: Duration, uptime: Duration) -> Duration {
    if uptime >= STABLE_UPTIME {
        MIN_BACKOFF
    } else {
        (last * 2).min(MAX_BACKOFF)
    }
}

/// Graceful stop: wait for in-flight requests (bounded), SIGTERM, then SIGKILL after the grace period.
async fn terminate(shared: &Shared, spec: &ProcessSpec, child: &mut Proc, addr: SocketAddr) {
    let drain_until = Instant::now() + spec.drain_timeout;
    tokio::time::sleep(ROUTE_PROPAGATION).await;
    while (shared.in_flight)(addr) > 0 && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(child, libc::SIGTERM);
    if tokio::time::timeout(spec.termination_grace, child.wait())
        .await
        .is_err()
    {
        signal(child, libc::SIGKILL);
        let _ = child.wait().await;
    }
}

fn describe_exit(status: &std::io::Result<ExitStatus>) -> (String, String) {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => (format!("ExitCode{code}"), format!("exited with code {code}")),
            (None, Some(sig)) => ("Killed".into(), format!("was killed by signal {sig}")),
            _ => ("Exited".into(), "exited".into()),
        },
        Err(e) => ("Exited".into(), format!("could not be waited for: {e}")),
    }
}

/// Waits for `d` unless told to stop first; true when stopped.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stopped(stop) => true,
    }
}

/// Resolves once the stop flag is set.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Writes a marker line into the replica's log, so `revisor logs` shows starts and exits.
fn mark(log: &std::path::Path, what: &str) {
    use std::io::Write;
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(f, "--- revisor: {what} ---");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14: a probe period of i64::MAX seconds made the supervisor panic on every respawn.
    #[test]
    fn the_longest_probe_times_never_overflow_the_clock() {
        let now = tokio::time::Instant::now();
        let far = later(now, Duration::from_secs(i64::MAX as u64));
        assert!(far > now);
        assert_eq!(later(now, Duration::from_millis(5)), now + Duration::from_millis(5));
        let grown = Duration::MAX.saturating_mul(5) / 4;
        assert!(grown > Duration::from_secs(1));
    }

    /// Issue 14: a crash loop's back-off reaches its cap and stays there; a stable run resets it.
    #[test]
    fn a_crash_loop_backs_off_to_its_cap() {
        let quick = Duration::from_millis(50);
        let mut b = MIN_BACKOFF;
        let mut waits = vec![];
        for _ in 0..10 {
            b = next_backoff(b, quick);
            waits.push(b);
        }
        assert_eq!(waits[0], Duration::from_millis(200));
        assert_eq!(*waits.last().unwrap(), MAX_BACKOFF);
        assert_eq!(waits[7], MAX_BACKOFF, "{waits:?}");
        // 35 crash-loop restarts take at least 5 minutes once at the cap.
        let total: Duration = (0..35).map(|i| waits[i.min(9)]).sum();
        assert!(total >= Duration::from_secs(280), "{total:?}");
        assert_eq!(next_backoff(MAX_BACKOFF, STABLE_UPTIME), MIN_BACKOFF);
    }
}
