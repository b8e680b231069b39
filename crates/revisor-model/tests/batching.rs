//! Dynamic batching: concurrent requests merge into fewer runs, and every answer is what it would
//! have been alone.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use revisor_model::batching::BatchConfig;
use revisor_model::examples::{write_all, Example};
use revisor_model::{router, Model, Runner};
use serde_json::{json, Value};
use tower::ServiceExt;

fn model() -> (tempfile::TempDir, Arc<Model>) {
    let dir = tempfile::tempdir().unwrap();
    write_all(dir.path()).unwrap();
    let m = Model::load(
        dir.path().join(Example::V2.file_name()).to_str().unwrap(),
        "tabular",
        "2",
    )
    .unwrap();
    m.warm_up().unwrap();
    (dir, Arc::new(m))
}

async fn infer(app: axum::Router, rows: Vec<[f32; 4]>) -> Value {
    let body =
        json!({ "inputs": [{ "name": "features", "shape": [rows.len(), 4], "datatype": "FP32", "data": rows }] });
    let req = Request::builder()
        .method("POST")
        .uri("/v2/models/tabular/infer")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    serde_json::from_slice::<Value>(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()["outputs"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_answers_equal_unbatched_ones_in_fewer_runs() {
    let (_d, m) = model();
    let plain = router(Arc::new(Runner::new(m.clone())));
    let cfg = BatchConfig {
        max_size: 64,
        max_delay: Duration::from_millis(50),
    };
    let batched = router(Arc::new(Runner::batching(m.clone(), cfg).unwrap()));
    let requests: Vec<Vec<[f32; 4]>> = (0..16)
        .map(|i| {
            (0..(1 + i % 3))
                .map(|r| [i as f32, r as f32, -0.5 * i as f32, 1.0])
                .collect()
        })
        .collect();
    let mut alone = Vec::new();
    for r in &requests {
        alone.push(infer(plain.clone(), r.clone()).await);
    }
    let before = m.runs();
    let together: Vec<Value> = futures_join(
        requests
            .iter()
            .map(|r| tokio::spawn(infer(batched.clone(), r.clone())))
            .collect(),
    )
    .await;
    let runs = m.runs() - before;
    assert!(runs < 16, "16 concurrent requests ran {runs} times");
    // Same shapes and names; values equal up to float rounding: tract's matrix kernels sum a row in a
    // full tile and in an edge tile in different orders, so a row can differ by an ulp with its place
    // in the batch.
    assert_eq!(together.len(), alone.len());
    for (t, a) in together.iter().zip(&alone) {
        assert_eq!(t[0]["shape"], a[0]["shape"]);
        assert_eq!(t[0]["name"], a[0]["name"]);
        let (x, y) = (t[0]["data"].as_array().unwrap(), a[0]["data"].as_array().unwrap());
        assert_eq!(x.len(), y.len());
        for (p, q) in x.iter().zip(y) {
            let (p, q) = (p.as_f64().unwrap(), q.as_f64().unwrap());
            assert!(
                (p - q).abs() <= 1e-6 * q.abs().max(1e-3),
                "batching changed an answer: {p} vs {q}"
            );
        }
    }
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<Value>>) -> Vec<Value> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn batching_needs_a_batch_dimension_and_a_size() {
    let (_d, m) = model();
    let e = Runner::batching(
        m.clone(),
        BatchConfig {
            max_size: 1,
            max_delay: Duration::from_millis(1),
        },
    )
    .err()
    .unwrap();
    assert!(e.contains("at least 2"), "{e}");
}
