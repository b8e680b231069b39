//! The dashboard: `/ui`, a page (its script and style embedded in the binary, no build step) that
//! reads the admin API it is served by, and `/ui/stream`, Server-Sent Events every second with each
//! revision's request rate, error rate and latency over the last second and every Rollout. Behind the
//! same guard as the API: a browser gets in with the login link (`revisor dashboard` opens it).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use axum::Router;
use futures_util::Stream;
use revisor_rollout::{Counters, Window};
use serde_json::{json, Value};

use super::AdminState;

/// How often the stream sends.
const EVERY: Duration = Duration::from_secs(1);
/// Streams open at once, at most: each reads the gateway and the Rollouts every second.
const MAX_STREAMS: usize = 16;
/// A stream ends after this long; the browser's EventSource opens a new one by itself.
const STREAM_LIFETIME: Duration = Duration::from_secs(3600);

/// Streams open now.
static STREAMS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One open stream, counted while it lives.
struct Open;

impl Open {
    fn new() -> Option<Open> {
        use std::sync::atomic::Ordering;
        STREAMS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_STREAMS).then_some(n + 1)
            })
            .ok()
            .map(|_| Open)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        STREAMS.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui", get(page))
        .route("/ui/app.js", get(script))
        .route("/ui/style.css", get(style))
        .route("/ui/stream", get(stream))
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        include_str!("ui/index.html"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        include_str!("ui/app.js"),
    )
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        include_str!("ui/style.css"),
    )
}

/// What the stream keeps between two sends: each revision's counters at the last one.
struct Tick {
    state: AdminState,
    last: BTreeMap<(String, String), Counters>,
    at: Instant,
    first: bool,
    ends: Instant,
    _open: Open,
}

/// `GET /ui/stream`: an event `tick` every second, for an hour; at most [`MAX_STREAMS`] at once.
async fn stream(
    State(s): State<AdminState>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, super::ApiError> {
    let Some(open) = Open::new() else {
        return Err(super::ApiError::TooMany(format!(
            "{MAX_STREAMS} dashboard streams are open already: close a dashboard tab"
        )));
    };
    let start = Tick {
        state: s,
        last: BTreeMap::new(),
        at: Instant::now(),
        first: true,
        ends: Instant::now() + STREAM_LIFETIME,
        _open: open,
    };
    let events = futures_util::stream::unfold(start, |mut t| async move {
        if !t.first {
            tokio::time::sleep(EVERY).await;
        }
        if Instant::now() >= t.ends {
            return None;
        }
        t.first = false;
        let data = tick(&mut t).await;
        Some((Ok(Event::default().event("tick").data(data.to_string())), t))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// One send: the revisions' rates since the last one, and the Rollouts as the store holds them.
async fn tick(t: &mut Tick) -> Value {
    let now = Instant::now();
    let seconds = now.duration_since(t.at).as_secs_f64();
    let counters = t
        .state
        .gateway
        .as_ref()
        .map(|g| revisor_local::counters_by_revision(g.metrics()))
        .unwrap_or_default();
    let mut revisions = Vec::new();
    for ((ns, name), c) in &counters {
        let Some(before) = t.last.get(&(ns.clone(), name.clone())) else {
            continue;
        };
        let w = Window::between(before, c, seconds);
        revisions.push(json!({
            "namespace": ns,
            "revision": name,
            "requestsPerSecond": w.request_rate(),
            "errorRate": w.success_rate().map(|s| 100.0 - s),
            "p50": w.latency_percentile(50.0),
            "p99": w.latency_percentile(99.0),
            "requests": c.requests.iter().sum::<u64>(),
            "compared": c.compared,
            "agreed": c.argmax_agreed,
        }));
    }
    t.last = counters;
    t.at = now;
    let store = t.state.store.clone();
    let rollouts = tokio::task::spawn_blocking(move || store.list::<revisor_api::Rollout>(None))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    json!({
        "time": chrono::Utc::now().timestamp_millis(),
        "revisions": revisions,
        "rollouts": rollouts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_capped_and_counted_while_open() {
        let open: Vec<Open> = (0..MAX_STREAMS).map(|_| Open::new().expect("under the cap")).collect();
        assert!(Open::new().is_none(), "one more than the cap");
        drop(open);
        assert!(Open::new().is_some(), "closed streams make room");
    }
}
