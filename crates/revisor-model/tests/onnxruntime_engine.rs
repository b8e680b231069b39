//! The ONNX Runtime engine (`--engine onnxruntime`): the same protocol over the same models as tract,
//! with the same answers. scripts/test.sh installs onnxruntime in a venv and points
//! REVISOR_ONNXRUNTIME_LIB at the library its wheel ships.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use revisor_model::examples::{write_all, Example};
use revisor_model::model::Engine;
use revisor_model::rewrite::Rewrites;
use revisor_model::storage::DEFAULT_MAX_MODEL_BYTES;
use revisor_model::{router, state, Model};
use serde_json::{json, Value};
use tower::ServiceExt;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run ./scripts/test.sh, which installs onnxruntime in a venv and sets it")
    })
}

fn ort() -> Engine {
    Engine::OnnxRuntime {
        library: PathBuf::from(env("REVISOR_ONNXRUNTIME_LIB")),
    }
}

fn load(uri: &str, engine: &Engine, name: &str) -> Arc<Model> {
    let cache = tempfile::tempdir().unwrap();
    let m = Model::load_with(uri, None, cache.path(), name, "1", engine, DEFAULT_MAX_MODEL_BYTES).unwrap();
    m.warm_up().unwrap();
    Arc::new(m)
}

async fn call(model: &Arc<Model>, method: &str, uri: &str, body: String) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = router(state(model.clone())).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn floats(v: &Value) -> Vec<f64> {
    v["outputs"][0]["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no outputs: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn close(a: &[f64], b: &[f64], tol: f64) -> f64 {
    assert_eq!(a.len(), b.len());
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(worst < tol, "largest difference: {worst}");
    worst
}

#[tokio::test]
async fn the_example_models_answer_as_with_tract_and_client_mistakes_are_refused_alike() {
    let dir = tempfile::tempdir().unwrap();
    write_all(dir.path()).unwrap();
    let uri = |e: Example| format!("file://{}", dir.path().join(e.file_name()).display());
    let body = json!({ "id": "x", "inputs": [{ "name": "features", "shape": [3, 4], "datatype": "FP32",
        "data": [[1, 2, 3, 4], [0.5, -1, 2, 0], [9, 9, 9, 9]] }] })
    .to_string();
    for e in [Example::V1, Example::V2] {
        let (o, t) = (
            load(&uri(e), &ort(), "tabular"),
            load(&uri(e), &Engine::Tract, "tabular"),
        );
        assert_eq!(o.inputs, t.inputs, "metadata: inputs");
        assert_eq!(o.outputs, t.outputs, "metadata: outputs");
        let (so, vo) = call(&o, "POST", "/v2/models/tabular/infer", body.clone()).await;
        let (st, vt) = call(&t, "POST", "/v2/models/tabular/infer", body.clone()).await;
        assert_eq!((so, st), (StatusCode::OK, StatusCode::OK), "{vo} {vt}");
        assert_eq!(vo["outputs"][0]["shape"], json!([3, 3]), "{vo}");
        assert_eq!(vo["id"], "x");
        close(&floats(&vo), &floats(&vt), 1e-5);
    }
    let faulty = load(&uri(Example::V3Faulty), &ort(), "tabular");
    let (s, v) = call(&faulty, "POST", "/v2/models/tabular/infer", body).await;
    assert_eq!(
        s,
        StatusCode::INTERNAL_SERVER_ERROR,
        "the faulty model fails with either engine: {v}"
    );
    let m = load(&uri(Example::V1), &ort(), "tabular");
    for (bad, want) in [
        (json!([1, 5]), "does not fit the model's [-1, 4]"),
        (json!([2, 4]), "holds 8 elements, but data has 4"),
    ] {
        let req = json!({ "inputs": [{ "name": "features", "shape": bad, "datatype": "FP32", "data": [1, 2, 3, 4] }] });
        let (s, v) = call(&m, "POST", "/v2/models/tabular/infer", req.to_string()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["error"].as_str().unwrap().contains(want), "{v}");
    }
}

#[tokio::test]
async fn magika_through_onnx_runtime_matches_tract_within_1e_4() {
    let path = env("REVISOR_MAGIKA_MODEL");
    let (o, t) = (load(&path, &ort(), "magika"), load(&path, &Engine::Tract, "magika"));
    assert_eq!(
        (o.inputs[0].datatype, o.inputs[0].shape.clone()),
        ("INT32", vec![-1, 2048])
    );
    assert_eq!(
        (o.outputs[0].datatype, o.outputs[0].shape.clone()),
        ("FP32", vec![-1, 214])
    );
    // ONNX Runtime serves magika with its two tanh GELUs as FastGelu and its one-hot embedding as a
    // row lookup (revisor_model::rewrite); tract runs the graph as it is.
    assert_eq!(
        o.rewrites(),
        Rewrites {
            fast_gelu: 2,
            one_hot_gather: 1
        }
    );
    assert_eq!(t.rewrites(), Rewrites::default());
    // Rows of real byte values (0-255, 256 for padding), and a row where values no byte has (below 0,
    // above 256) are mixed in: those select no row of the embedding, in the lookup as in the product.
    let mut data: Vec<i32> = (0..2 * 2048).map(|i: i32| (i * 7919) % 257).collect();
    data.extend((0..2048).map(|i: i32| match i % 89 {
        0 => i32::MIN,
        1 => 100_000,
        _ => (i * 7919) % 300 - 20,
    }));
    let body =
        json!({ "inputs": [{ "name": "bytes", "shape": [3, 2048], "datatype": "INT32", "data": data }] }).to_string();
    let (_, vo) = call(&o, "POST", "/v2/models/magika/infer", body.clone()).await;
    let (_, vt) = call(&t, "POST", "/v2/models/magika/infer", body).await;
    assert_eq!(floats(&vo).len(), 3 * 214);
    close(&floats(&vo), &floats(&vt), 1e-4);
}

/// ONNX Runtime is loaded once per process, so this runs in a fresh one (this test binary again, for
/// this test alone): the other tests of this file may already have loaded the real library.
#[test]
fn a_missing_library_is_named() {
    if std::env::var_os("REVISOR_ORT_FRESH_PROCESS").is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_missing_library_is_named",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("REVISOR_ORT_FRESH_PROCESS", "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "in a fresh process:\n{text}");
        assert!(
            text.contains("1 passed"),
            "the test did not run in the fresh process:\n{text}"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.onnx");
    std::fs::write(&model, b"irrelevant").unwrap();
    let engine = Engine::OnnxRuntime {
        library: PathBuf::from("/nonexistent/libonnxruntime.so"),
    };
    let e = Model::load_with(
        model.to_str().unwrap(),
        None,
        dir.path(),
        "m",
        "1",
        &engine,
        DEFAULT_MAX_MODEL_BYTES,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("/nonexistent/libonnxruntime.so does not exist"), "{e}");
}

/// Inferences that overlap run in sessions of one core each (made in the background after loading),
/// one on its own in the session spread over every core, and both give the answers a run alone gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_inferences_run_in_narrow_sessions_with_the_same_answers() {
    let path = env("REVISOR_MAGIKA_MODEL");
    let m = load(&path, &ort(), "magika");
    let cores = std::thread::available_parallelism().unwrap().get();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while m.narrow_sessions().0 == 0 && cores > 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let want = if cores > 1 { cores } else { 0 };
    assert_eq!(m.narrow_sessions().0, want, "narrow sessions on {cores} cores");
    let body = |k: i32| {
        let data: Vec<i32> = (0..2048).map(|i: i32| (i * 7919 + k * 131) % 257).collect();
        json!({ "inputs": [{ "name": "bytes", "shape": [1, 2048], "datatype": "INT32", "data": data }] }).to_string()
    };
    // Alone, one at a time: the wide session.
    let mut alone = Vec::new();
    for k in 0..4 {
        let (s, v) = call(&m, "POST", "/v2/models/magika/infer", body(k)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        alone.push(floats(&v));
    }
    assert_eq!(m.narrow_sessions().1, 0, "a run on its own used a narrow session");
    // Sixteen at once, through one server (one bound of a run per core, as `model-server` has).
    let app = router(state(m.clone()));
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let req = Request::builder()
                .method("POST")
                .uri("/v2/models/magika/infer")
                .header("content-type", "application/json")
                .body(Body::from(body(i % 4)))
                .unwrap();
            let app = app.clone();
            tokio::spawn(async move {
                let resp = app.oneshot(req).await.unwrap();
                let status = resp.status();
                let bytes = resp.into_body().collect().await.unwrap().to_bytes();
                (status, serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null))
            })
        })
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        let (s, v) = c.await.unwrap();
        assert_eq!(s, StatusCode::OK, "{v}");
        close(&floats(&v), &alone[i % 4], 1e-5);
    }
    if cores > 1 {
        assert!(m.narrow_sessions().1 > 0, "no run overlapped another");
    }
}
