//! The bodies of revisor's fuzz targets: each takes any bytes and must neither panic nor hang, and
//! checks what must hold of whatever it accepts. `fuzz/` (cargo-fuzz, nightly) calls them under
//! libFuzzer; `tests/corpus.rs` replays the kept corpora through them as ordinary tests.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use revisor_api::units::{parse_go_duration, parse_quantity};
use revisor_api::{admit_rollout, admit_service, read_documents, Defaults, TrafficTarget};
use revisor_gateway::{Gateway, GatewayConfig, Protocol, RevisionSpec, RoutesSpec, ServiceSpec, TargetSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A target's body.
pub type Target = fn(&[u8]);

/// The targets by name (the names of `fuzz/fuzz_targets/*.rs` and of `fuzz/corpus/*`).
pub const TARGETS: &[(&str, Target)] = &[
    ("manifest", manifest),
    ("units", units),
    ("traffic", traffic),
    ("gateway_head", gateway_head),
    ("inference", inference),
];

/// Manifest decoding and admission (Service and Rollout), as `revisor apply` and the admin API do.
/// Whatever is admitted must be admitted again as it was stored (admission is a fixed point), and
/// every refusal must say what is wrong.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(docs) = read_documents(text) else {
        return;
    };
    let defaults = Defaults::default();
    for d in docs.iter().take(4) {
        match admit_service(&d.value, &defaults) {
            Ok(svc) => {
                let stored = serde_json::to_value(&svc).expect("an admitted Service serializes");
                if let Err(e) = admit_service(&stored, &defaults) {
                    panic!("an admitted Service is refused when admitted again: {e:?}\n{stored}");
                }
            }
            Err(errs) => assert!(errs.iter().all(|e| !e.to_string().trim().is_empty())),
        }
        if let Err(errs) = admit_rollout(&d.value) {
            assert!(errs.iter().all(|e| !e.to_string().trim().is_empty()));
        }
    }
}

/// Go durations and Kubernetes quantities: anything accepted is within what the rest of revisor can
/// compute with.
pub fn units(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = parse_go_duration(text) {
        assert!(d.as_secs() <= i64::MAX as u64 / 1_000_000_000, "{text:?} -> {d:?}");
    }
    if let Ok(q) = parse_quantity(text) {
        assert!(q.is_finite() && q >= 0.0 && q <= i64::MAX as f64, "{text:?} -> {q}");
    }
}

/// kn's `--traffic`, `--tag` and `--untag` arithmetic on a two-revision service: lines starting
/// `t:`, `g:` or `u:` are the flags' values. An accepted edit sends exactly 100 percent, and every
/// tag names one target.
pub fn traffic(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut edit = revisor_traffic::TrafficEdit::default();
    for line in text.lines().take(16) {
        match line.split_at_checked(2) {
            Some(("t:", v)) => edit.traffic.push(v.to_string()),
            Some(("g:", v)) => edit.tags.push(v.to_string()),
            Some(("u:", v)) => edit.untags.push(v.to_string()),
            _ => {}
        }
    }
    let current = vec![
        TrafficTarget {
            latest_revision: Some(true),
            percent: Some(50),
            tag: Some("current".into()),
            ..Default::default()
        },
        TrafficTarget {
            revision_name: Some("svc-00001".into()),
            latest_revision: Some(false),
            percent: Some(50),
            ..Default::default()
        },
    ];
    let revisions = ["svc-00001".to_string(), "svc-00002".to_string()];
    if let Ok(out) = revisor_traffic::edit::compute(&current, &edit, &revisions) {
        let sum: i64 = out.iter().map(|t| t.percent.unwrap_or(0)).sum();
        assert_eq!(sum, 100, "{edit:?} -> {out:?}");
        let mut tags: Vec<&str> = out.iter().filter_map(|t| t.tag.as_deref()).collect();
        let n = tags.len();
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), n, "a tag on two targets: {edit:?} -> {out:?}");
    }
}

/// A gateway routing `svc.default.localhost` to one upstream that answers every request, in a
/// runtime kept between runs.
fn gateway() -> &'static (tokio::runtime::Runtime, Gateway) {
    static GW: OnceLock<(tokio::runtime::Runtime, Gateway)> = OnceLock::new();
    GW.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let upstream = rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a loopback port");
            let addr = l.local_addr().expect("its address");
            tokio::spawn(async move {
                while let Ok((mut s, _)) = l.accept().await {
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut head = Vec::new();
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 {
                                return;
                            }
                            head.extend_from_slice(&buf[..n]);
                            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                                break;
                            }
                        }
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
                            .await;
                    });
                }
            });
            addr
        });
        let gw = Gateway::new(GatewayConfig {
            max_header_bytes: 8192,
            max_body_bytes: 64 * 1024,
            ..Default::default()
        });
        gw.publish(&RoutesSpec {
            services: vec![ServiceSpec {
                namespace: "default".into(),
                name: "svc".into(),
                host: "svc.default.localhost".into(),
                targets: vec![TargetSpec {
                    revision: "svc-00001".into(),
                    percent: 100,
                    tag: Some("t".into()),
                    tag_host: Some("t-svc.default.localhost".into()),
                }],
                ..Default::default()
            }],
            revisions: vec![RevisionSpec {
                namespace: "default".into(),
                service: "svc".into(),
                name: "svc-00001".into(),
                endpoints: vec![upstream],
                container_concurrency: 0,
                timeout: Duration::from_secs(2),
                protocol: Protocol::Http1,
            }],
        });
        (rt, gw)
    })
}

/// The gateway's handling of whatever a client sends on a connection: the bytes, then the end of
/// the stream. What comes back is nothing (the connection closed) or HTTP responses.
pub fn gateway_head(data: &[u8]) {
    let out = gateway_exchange(data);
    if !out.is_empty() {
        let is_h2 = data.starts_with(b"PRI * HTTP/2.0");
        assert!(
            is_h2 || out.starts_with(b"HTTP/1."),
            "not an HTTP/1 response: {:?}",
            String::from_utf8_lossy(&out[..out.len().min(200)])
        );
    }
}

/// What the gateway sends back on a connection that carried `data` and then ended (empty when it
/// took longer than five seconds).
pub fn gateway_exchange(data: &[u8]) -> Vec<u8> {
    let (rt, gw) = gateway();
    let data = data.to_vec();
    rt.block_on(async move {
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        let remote: SocketAddr = "127.0.0.1:40000".parse().expect("an address");
        let gw = gw.clone();
        let served = tokio::spawn(async move { gw.serve_connection(server, remote, true).await });
        let _ = client.write_all(&data).await;
        let _ = client.shutdown().await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out)).await;
        served.abort();
        // Wait until the connection's task is dropped, so nothing of this run outlives it.
        let _ = served.await;
        if read.is_err() {
            out.clear();
        }
        out
    })
}

/// The example tabular model (`features`: FP32 [N, 4]) behind the model server's routes, loaded once.
fn model_server() -> &'static (tokio::runtime::Runtime, axum::Router) {
    static MS: OnceLock<(tokio::runtime::Runtime, axum::Router)> = OnceLock::new();
    MS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        revisor_model::examples::write_all(dir.path()).expect("the example models");
        let path = dir.path().join(revisor_model::examples::Example::V2.file_name());
        let m = revisor_model::Model::load(path.to_str().expect("a UTF-8 path"), "tabular", "2").expect("the model");
        m.warm_up().expect("a warm model");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        (rt, revisor_model::router(revisor_model::state(std::sync::Arc::new(m))))
    })
}

/// An Open Inference Protocol infer request to the model server: the first byte picks JSON (even)
/// or the binary extension (odd, the next two bytes the JSON header's length); the rest is the
/// body. The answer is 200 or a 4xx with a message (a request can never make the server fail), and a
/// 200 carries the model's output.
pub fn inference(data: &[u8]) {
    let (status, body) = infer_exchange(data);
    assert!(
        status == 200 || (400..500).contains(&status),
        "status {status}: {}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    let text = String::from_utf8_lossy(&body);
    if status == 200 {
        assert!(text.contains("outputs"), "a 200 without outputs");
    } else {
        assert!(!text.trim().is_empty(), "a {status} without a message");
    }
}

/// The status and body the model server answers to the request `data` encodes (see [`inference`]).
pub fn infer_exchange(data: &[u8]) -> (u16, Vec<u8>) {
    use tower::ServiceExt;
    let (rt, app) = model_server();
    let (binary, header_len, body) = match data.split_first() {
        Some((b, rest)) if b % 2 == 1 && rest.len() >= 2 => (
            true,
            u16::from_le_bytes([rest[0], rest[1]]) as usize,
            rest[2..].to_vec(),
        ),
        Some((_, rest)) => (false, 0, rest.to_vec()),
        None => (false, 0, Vec::new()),
    };
    let mut req = axum::http::Request::builder()
        .method("POST")
        .uri("/v2/models/tabular/infer")
        .header("content-type", "application/json");
    if binary {
        req = req
            .header("content-type", "application/octet-stream")
            .header("inference-header-content-length", header_len.to_string());
    }
    let req = req.body(axum::body::Body::from(body)).expect("a request");
    rt.block_on(async {
        let resp = app.clone().oneshot(req).await.expect("the router answers");
        let status = resp.status().as_u16();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default();
        (status, body)
    })
}
