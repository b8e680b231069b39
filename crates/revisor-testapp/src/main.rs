//! A test upstream honouring Knative's container contract: listens on `$PORT`, answers with its
//! revision name, and misbehaves when told to by environment variables:
//!
//! - `RESPONSE_BYTES`: pad the body to this many bytes (default: just `<revision>\n`)
//! - `LATENCY_MS`: wait this long before answering
//! - `FAIL_PERCENT`: answer this share of requests with 500
//! - `START_DELAY_MS`: wait this long before listening
//! - `CRASH_AFTER`: exit(3) after this many requests
//! - `EXIT_AT_START`: exit with this code at once, after printing to stderr
//!
//! `GET /healthz` always answers 200 (for httpGet readiness probes); `GET /env` answers with its
//! environment, one `KEY=value` per line; `?sleep_ms=N` delays one request.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

struct App {
    body: Bytes,
    latency: Duration,
    fail_percent: u64,
    crash_after: Option<u64>,
    served: AtomicU64,
}

fn env_u64(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.parse().ok())
}

async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = app.served.fetch_add(1, Ordering::Relaxed) + 1;
    if req.uri().path() == "/healthz" {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))));
    }
    if req.uri().path() == "/env" {
        let env: String = std::env::vars().map(|(k, v)| format!("{k}={v}\n")).collect();
        return Ok(Response::new(Full::new(Bytes::from(env))));
    }
    let sleep = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("sleep_ms=")))
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(app.latency);
    if !sleep.is_zero() {
        tokio::time::sleep(sleep).await;
    }
    if app.crash_after.is_some_and(|c| n >= c) {
        eprintln!("crashing after {n} requests, as CRASH_AFTER asks");
        std::process::exit(3);
    }
    let failing = app.fail_percent > 0 && (n * 7919) % 100 < app.fail_percent;
    let mut resp = Response::new(Full::new(app.body.clone()));
    if failing {
        *resp.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
    }
    resp.headers_mut().insert("content-type", "text/plain".parse().unwrap());
    Ok(resp)
}

/// Runs as revisor-runtime's pre-fork server when asked (its tests fork this program's replicas).
fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == revisor_runtime::prefork::COMMAND) {
        revisor_runtime::prefork::serve(run);
    }
    std::process::exit(run(args))
}

fn run(_args: Vec<std::ffi::OsString>) -> i32 {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(serve());
    0
}

async fn serve() {
    if let Some(code) = env_u64("EXIT_AT_START") {
        eprintln!("exiting at start with code {code}, as EXIT_AT_START asks");
        std::process::exit(code as i32);
    }
    if let Some(ms) = env_u64("START_DELAY_MS") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let revision = std::env::var("K_REVISION").unwrap_or_else(|_| "unknown".into());
    let mut body = format!("{revision}\n").into_bytes();
    if let Some(n) = env_u64("RESPONSE_BYTES") {
        body.resize(n as usize, b'.');
        if let Some(last) = body.last_mut() {
            *last = b'\n';
        }
    }
    let app = Arc::new(App {
        body: Bytes::from(body),
        latency: Duration::from_millis(env_u64("LATENCY_MS").unwrap_or(0)),
        fail_percent: env_u64("FAIL_PERCENT").unwrap_or(0),
        crash_after: env_u64("CRASH_AFTER"),
        served: AtomicU64::new(0),
    });
    let port = env_u64("PORT").unwrap_or(8080);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port as u16))
        .await
        .expect("bind $PORT");
    eprintln!("revisor-test-upstream {revision} listening on 127.0.0.1:{port}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(app.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
