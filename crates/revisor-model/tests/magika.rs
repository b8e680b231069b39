//! A real, pretrained model: magika's content-type classifier (PyPI `magika` 1.0.3), served by revisor
//! and compared with onnxruntime on fixed inputs. scripts/test.sh installs onnxruntime in a venv,
//! downloads the wheel and extracts the model, and sets the variables this test reads.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use revisor_model::{router, state, Model};
use serde_json::{json, Value};
use tower::ServiceExt;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run ./scripts/test.sh, which installs onnxruntime in a venv and extracts magika's model")
    })
}

/// Fixed pseudo-random byte values (magika's inputs are bytes 0..=255 and the padding token 256).
fn inputs(rows: usize) -> Vec<i32> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..rows * 2048)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 257) as i32
        })
        .collect()
}

#[tokio::test]
async fn magika_outputs_match_onnxruntime_within_1e_4() {
    let (model_path, python) = (env("REVISOR_MAGIKA_MODEL"), env("REVISOR_PYTHON"));
    let m = Model::load(&model_path, "magika", "3.3").expect("magika loads");
    m.warm_up().expect("magika warms up");
    assert_eq!(
        (m.inputs[0].datatype, m.inputs[0].shape.as_slice()),
        ("INT32", &[-1i64, 2048][..])
    );
    assert_eq!(
        (m.outputs[0].datatype, m.outputs[0].shape.as_slice()),
        ("FP32", &[-1i64, 214][..])
    );

    let rows = 3;
    let data = inputs(rows);
    let req =
        json!({ "inputs": [{ "name": m.inputs[0].name, "shape": [rows, 2048], "datatype": "INT32", "data": data }] });
    let resp = router(state(Arc::new(m)))
        .oneshot(
            Request::builder()
                .method("POST")
                .uri("/v2/models/magika/infer")
                .body(Body::from(req.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let ours: Vec<f64> = got["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let (input_file, output_file) = (dir.path().join("in.json"), dir.path().join("out.json"));
    let spec = json!({ "inputs": { "bytes": { "shape": [rows, 2048], "dtype": "int32", "data": data } } });
    std::fs::write(&input_file, spec.to_string()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/onnxruntime_reference.py");
    let status = std::process::Command::new(&python)
        .arg(script)
        .arg(&model_path)
        .arg(&input_file)
        .arg(&output_file)
        .status()
        .unwrap();
    assert!(status.success(), "onnxruntime reference run failed");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(&output_file).unwrap()).unwrap();
    let theirs: Vec<f64> = reference["outputs"]["target_label"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(ours.len(), rows * 214);
    assert_eq!(ours.len(), theirs.len());
    let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-4, "largest difference from onnxruntime: {worst}");
}
