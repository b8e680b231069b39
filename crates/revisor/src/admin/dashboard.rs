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
}

/// `GET /ui/stream`: an event `tick` every second.
async fn stream(State(s): State<AdminState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let start = Tick {
        state: s,
        last: BTreeMap::new(),
        at: Instant::now(),
        first: true,
    };
    let events = futures_util::stream::unfold(start, |mut t| async move {
        if !t.first {
            tokio::time::sleep(EVERY).await;
        }
        t.first = false;
        let data = tick(&mut t).await;
        Some((Ok(Event::default().event("tick").data(data.to_string())), t))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
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
