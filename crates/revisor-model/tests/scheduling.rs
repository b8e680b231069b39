//! Where an inference runs: a run expected to be short (by the model's recent runs, scaled by the
//! request's size) on the async thread that decoded it, a longer one on a blocking thread; the answers
//! are the same either way.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use revisor_model::examples::{write_all, Example};
use revisor_model::{router, Model, Runner};
use serde_json::{json, Value};
use tower::ServiceExt;

async fn infer(runner: &Arc<Runner>, rows: &[[f32; 4]]) -> Vec<f64> {
    let body =
        json!({ "inputs": [{ "name": "features", "shape": [rows.len(), 4], "datatype": "FP32", "data": rows }] });
    let req = Request::builder()
        .method("POST")
        .uri("/v2/models/tabular/infer")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router(runner.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_runs_stay_on_the_async_thread_and_long_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    write_all(dir.path()).unwrap();
    let file = dir.path().join(Example::V1.file_name());
    let m = Model::load(file.to_str().unwrap(), "tabular", "1").unwrap();
    assert_eq!(m.expected_run(4), None, "an estimate before any run");
    m.warm_up().unwrap();
    let m = Arc::new(m);
    // A generous bound, so a debug build on a busy machine still counts one row as short.
    let bound = std::time::Duration::from_millis(5);
    let mut runner = Runner::new(m.clone());
    runner.inline_run = bound;
    let runner = Arc::new(runner);
    let row = [1.0f32, 2.0, 3.0, 4.0];

    // The tabular model answers one row in microseconds: after a few runs, its runs are inline.
    let mut one = Vec::new();
    for _ in 0..20 {
        one = infer(&runner, &[row]).await;
    }
    let inline = runner.inline_runs.load(Ordering::Relaxed);
    assert!(
        inline > 0,
        "no one-row run was inline (expected {:?} for 4 elements)",
        m.expected_run(4)
    );
    assert!(m.expected_run(4).unwrap() < bound);

    // 200,000 rows are expected to take far longer: a blocking thread runs them, with the same answer
    // per row.
    let many = vec![row; 200_000];
    assert!(m.expected_run(800_000).unwrap() > bound);
    let out = infer(&runner, &many).await;
    assert_eq!(
        runner.inline_runs.load(Ordering::Relaxed),
        inline,
        "a long run was inline"
    );
    let width = one.len();
    assert_eq!(out.len(), width * 200_000);
    // Within float rounding: tract may tile a large batch differently from one row.
    for (got, want) in out[..width]
        .iter()
        .chain(&out[out.len() - width..])
        .zip(one.iter().cycle())
    {
        assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "{got} against {want}");
    }
}
