//! The Open Inference Protocol over the example models, through `router(..).oneshot(..)`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use revisor_model::examples::{write_all, Example};
use revisor_model::{router, state, Model};
use serde_json::{json, Value};
use tower::ServiceExt;

fn load(which: Example, version: &str) -> (tempfile::TempDir, Arc<Model>) {
    let dir = tempfile::tempdir().unwrap();
    write_all(dir.path()).unwrap();
    let uri = format!("file://{}", dir.path().join(which.file_name()).display());
    let m = Model::load(&uri, "tabular", version).unwrap();
    m.warm_up().unwrap();
    (dir, Arc::new(m))
}

async fn call(model: &Arc<Model>, method: &str, uri: &str, body: impl Into<String>) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.into()))
        .unwrap();
    let resp = router(state(model.clone())).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn request(data: Value, shape: Value) -> String {
    json!({ "id": "req-7", "inputs": [{ "name": "features", "shape": shape, "datatype": "FP32", "data": data }] })
        .to_string()
}

#[tokio::test]
async fn health_metadata_and_readiness() {
    let (_d, m) = load(Example::V1, "1");
    assert_eq!(call(&m, "GET", "/v2/health/live", "").await.0, StatusCode::OK);
    assert_eq!(call(&m, "GET", "/v2/health/ready", "").await.0, StatusCode::OK);
    let (s, v) = call(&m, "GET", "/v2", "").await;
    assert_eq!((s, v["name"].as_str()), (StatusCode::OK, Some("revisor")));
    let (_, v) = call(&m, "GET", "/v2/models/tabular", "").await;
    assert_eq!(v["platform"], "onnx_onnxv1");
    assert_eq!(v["versions"], json!(["1"]));
    assert_eq!(
        v["inputs"],
        json!([{ "name": "features", "datatype": "FP32", "shape": [-1, 4] }])
    );
    assert_eq!(
        v["outputs"],
        json!([{ "name": "probabilities", "datatype": "FP32", "shape": [-1, 3] }])
    );
    assert_eq!(
        call(&m, "GET", "/v2/models/tabular/versions/1", "").await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&m, "GET", "/v2/models/tabular/versions/1/ready", "").await.1,
        json!({ "name": "tabular", "ready": true })
    );
}

#[tokio::test]
async fn inference_on_any_batch_size_with_nested_or_flat_data() {
    let (_d, m) = load(Example::V1, "1");
    let (s, v) = call(
        &m,
        "POST",
        "/v2/models/tabular/infer",
        request(json!([[1, 2, 3, 4], [0, 0, 0, 0], [-1, 0.5, 2, 1]]), json!([3, 4])),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["model_name"].as_str(), v["model_version"].as_str(), v["id"].as_str()),
        (Some("tabular"), Some("1"), Some("req-7"))
    );
    let out = &v["outputs"][0];
    assert_eq!(
        (out["name"].as_str(), out["datatype"].as_str(), &out["shape"]),
        (Some("probabilities"), Some("FP32"), &json!([3, 3]))
    );
    let probs: Vec<f64> = out["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    for row in probs.chunks(3) {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{row:?}");
    }
    let (_, flat) = call(
        &m,
        "POST",
        "/v2/models/tabular/versions/1/infer",
        request(json!([1, 2, 3, 4, 0, 0, 0, 0, -1, 0.5, 2, 1]), json!([3, 4])),
    )
    .await;
    assert_eq!(flat["outputs"], v["outputs"]);
    let (_, one) = call(
        &m,
        "POST",
        "/v2/models/tabular/infer",
        request(json!([1, 2, 3, 4]), json!([1, 4])),
    )
    .await;
    assert_eq!(
        one["outputs"][0]["data"].as_array().unwrap()[..],
        out["data"].as_array().unwrap()[..3],
        "batch 1 equals row 1 of batch 3"
    );
}

#[tokio::test]
async fn versions_differ_and_the_faulty_one_fails_at_inference() {
    let (_d1, v1) = load(Example::V1, "1");
    let (_d2, v2) = load(Example::V2, "2");
    let (_d3, v3) = load(Example::V3Faulty, "3");
    let body = request(json!([1, 2, 3, 4]), json!([1, 4]));
    let (_, a) = call(&v1, "POST", "/v2/models/tabular/infer", body.clone()).await;
    let (_, b) = call(&v2, "POST", "/v2/models/tabular/infer", body.clone()).await;
    assert_ne!(a["outputs"][0]["data"], b["outputs"][0]["data"]);
    assert_eq!(b["model_version"], "2");
    assert_eq!(
        call(&v3, "GET", "/v2/health/ready", "").await.0,
        StatusCode::OK,
        "v3 loads and warms up"
    );
    let (s, e) = call(&v3, "POST", "/v2/models/tabular/infer", body).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{e}");
    assert!(e["error"].as_str().unwrap().contains("JSON cannot carry"), "{e}");
}

#[tokio::test]
async fn client_mistakes_get_400_or_404_with_an_error_message() {
    let (_d, m) = load(Example::V1, "1");
    let ok = |shape: Value, dt: &str, data: Value| {
        json!({ "inputs": [{ "name": "features", "shape": shape, "datatype": dt, "data": data }] }).to_string()
    };
    let cases: Vec<(&str, &str, String, StatusCode, &str)> = vec![
        ("POST", "/v2/models/tabular/infer", "not json".into(), StatusCode::BAD_REQUEST, "not a valid inference request"),
        ("POST", "/v2/models/tabular/infer", "{}".into(), StatusCode::BAD_REQUEST, "missing field `inputs`"),
        ("POST", "/v2/models/tabular/infer", json!({ "inputs": [] }).to_string(), StatusCode::BAD_REQUEST, "missing input \"features\""),
        ("POST", "/v2/models/tabular/infer", json!({ "inputs": [{ "name": "x", "shape": [1], "datatype": "FP32", "data": [1] }] }).to_string(), StatusCode::BAD_REQUEST, "unknown input \"x\""),
        ("POST", "/v2/models/tabular/infer", ok(json!([1, 4]), "FP64", json!([1, 2, 3, 4])), StatusCode::BAD_REQUEST, "datatype FP64 does not match the model's FP32"),
        ("POST", "/v2/models/tabular/infer", ok(json!([1, 4]), "FLOAT", json!([1, 2, 3, 4])), StatusCode::BAD_REQUEST, "unknown datatype \"FLOAT\""),
        ("POST", "/v2/models/tabular/infer", ok(json!([1, 5]), "FP32", json!([1, 2, 3, 4, 5])), StatusCode::BAD_REQUEST, "does not fit the model's [-1, 4]"),
        ("POST", "/v2/models/tabular/infer", ok(json!([4]), "FP32", json!([1, 2, 3, 4])), StatusCode::BAD_REQUEST, "does not fit"),
        ("POST", "/v2/models/tabular/infer", ok(json!([2, 4]), "FP32", json!([1, 2, 3, 4])), StatusCode::BAD_REQUEST, "holds 8 elements, but data has 4"),
        ("POST", "/v2/models/tabular/infer", ok(json!([1, 4]), "FP32", json!([1, "two", 3, 4])), StatusCode::BAD_REQUEST, "element 1 (\"two\") is not a valid FP32"),
        ("POST", "/v2/models/tabular/infer", json!({ "inputs": [{ "name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4] }], "outputs": [{ "name": "logits" }] }).to_string(), StatusCode::BAD_REQUEST, "unknown output \"logits\""),
        ("POST", "/v2/models/other/infer", ok(json!([1, 4]), "FP32", json!([1, 2, 3, 4])), StatusCode::NOT_FOUND, "unknown model \"other\""),
        ("POST", "/v2/models/tabular/versions/9/infer", ok(json!([1, 4]), "FP32", json!([1, 2, 3, 4])), StatusCode::NOT_FOUND, "has no version \"9\""),
        ("GET", "/v2/models/tabular/versions/9", String::new(), StatusCode::NOT_FOUND, "has no version"),
        ("GET", "/v2/nothing", String::new(), StatusCode::NOT_FOUND, "no such endpoint"),
    ];
    for (method, uri, body, want, text) in cases {
        let (s, v) = call(&m, method, uri, body.clone()).await;
        assert_eq!(s, want, "{method} {uri} {body}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains(text)),
            "{method} {uri} {body}: {v}"
        );
    }
    let big = format!(
        "{{\"inputs\": [], \"pad\": \"{}\"}}",
        "x".repeat(revisor_model::server::MAX_BODY_BYTES)
    );
    let (s, v) = call(&m, "POST", "/v2/models/tabular/infer", big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
}

/// Issue 14: `data` is decoded straight into the tensor, not through a serde_json::Value; what a
/// mistake in it is called, and where, is what it was when the whole body was parsed into a Value.
#[tokio::test]
async fn mistakes_in_json_data_are_worded_as_a_whole_body_parse_words_them() {
    let (_d, m) = load(Example::V1, "1");
    let with = |shape: &str, data: &str| {
        format!(r#"{{"inputs": [{{"name": "features", "shape": {shape}, "datatype": "FP32", "data": {data}}}]}}"#)
    };
    let nested = |levels: usize| format!("{}1, 2, 3, 4{}", "[".repeat(levels), "]".repeat(levels));
    let cases = [
        (
            with("[1, 4]", "[1, 2, 3, 4,]"),
            "request body is not a valid inference request: trailing comma at line 1 column 91",
        ),
        (
            with("[1, 4]", "[[1, 2], [3, 1e999]]"),
            "request body is not a valid inference request: number out of range at line 1 column 96",
        ),
        // The body, `inputs` and the input take 3 of the 127 levels serde_json parses.
        (
            with("[1, 4]", &nested(125)),
            "request body is not a valid inference request: recursion limit exceeded at line 1 column 203",
        ),
        (
            with("[1, 4]", r#"[1, 2, 3, {"a": [1, 2]}]"#),
            r#"input "features": element 3 ({"a":[1,2]}) is not a valid FP32"#,
        ),
        (
            with("[1, 4]", r#"[1, 2, 3, {"a": 1, "b": "\u0041", "a": 2}]"#),
            r#"input "features": element 3 ({"a":2,"b":"A"}) is not a valid FP32"#,
        ),
        (
            with("[1, 4]", "[1, 2, null, 1e2]"),
            r#"input "features": element 2 (null) is not a valid FP32"#,
        ),
        // No room is made for what a shape claims beyond what the data could hold.
        (
            with("[1000000000000, 4]", "[1, 2, 3, 4]"),
            r#"input "features": shape [1000000000000, 4] holds 4000000000000 elements, but data has 4"#,
        ),
    ];
    for (body, want) in cases {
        let (s, v) = call(&m, "POST", "/v2/models/tabular/infer", body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["error"].as_str(), Some(want), "{body}");
    }
    let (s, v) = call(&m, "POST", "/v2/models/tabular/infer", with("[1, 4]", &nested(124))).await;
    assert_eq!(s, StatusCode::OK, "124 levels of data are parsed: {v}");
    // `data` may come before the datatype and shape it is decoded by.
    let before = r#"{"inputs": [{"data": [[1, 2, 3, 4]], "name": "features", "shape": [1, 4], "datatype": "FP32"}]}"#;
    let (s, a) = call(&m, "POST", "/v2/models/tabular/infer", before).await;
    let (_, b) = call(&m, "POST", "/v2/models/tabular/infer", with("[1, 4]", "[1, 2, 3, 4]")).await;
    assert_eq!((s, &a["outputs"]), (StatusCode::OK, &b["outputs"]), "{a}");
}

/// Issue 14: large bodies are decoded a few at a time (as many as there are cores), small ones at once.
#[tokio::test]
async fn large_bodies_wait_for_a_decoding_permit_and_small_ones_do_not() {
    let (_d, m) = load(Example::V1, "1");
    let s = state(m);
    let permits = s.decoding.available_permits() as u32;
    let held = s.decoding.clone().acquire_many_owned(permits).await.unwrap();
    let post = |body: String| {
        let app = router(s.clone());
        let req = Request::builder()
            .method("POST")
            .uri("/v2/models/tabular/infer")
            .body(Body::from(body))
            .unwrap();
        tokio::spawn(async move { app.oneshot(req).await.unwrap().status() })
    };
    let rows: Vec<[f32; 4]> = vec![[0.5, -1.0, 2.0, 0.25]; 5000];
    let large = request(json!(rows), json!([5000, 4]));
    assert!(large.len() > 64 * 1024);
    let waiting = post(large);
    assert_eq!(
        post(request(json!([1, 2, 3, 4]), json!([1, 4]))).await.unwrap(),
        StatusCode::OK
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "a large body is decoded only with a permit");
    drop(held);
    assert_eq!(waiting.await.unwrap(), StatusCode::OK);
}

#[test]
fn a_missing_or_invalid_model_names_the_uri_and_cause() {
    let e = Model::load("file:///nonexistent/m.onnx", "m", "1")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with("model file:///nonexistent/m.onnx: cannot read /nonexistent/m.onnx"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"not a model").unwrap();
    let e = Model::load(junk.to_str().unwrap(), "m", "1").err().unwrap().to_string();
    assert!(e.contains("not a model tract can run"), "{e}");
    let e = Model::load("s3://bucket/m.onnx", "m", "1").err().unwrap().to_string();
    assert!(e.contains("unsupported storage URI"), "{e}");
}

async fn raw(
    model: &Arc<Model>,
    uri: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut req = Request::builder().method("POST").uri(uri);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = router(state(model.clone()))
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    (
        status,
        headers,
        resp.into_body().collect().await.unwrap().to_bytes().to_vec(),
    )
}

#[tokio::test]
async fn the_binary_tensor_extension_gives_what_json_gives() {
    let (_d, m) = load(Example::V1, "1");
    let features: Vec<f32> = vec![1.0, 2.0, 3.0, 4.0, 0.5, -1.0, 0.0, 2.0];
    let bin: Vec<u8> = features.iter().flat_map(|x| x.to_le_bytes()).collect();
    let head = json!({
        "inputs": [{ "name": "features", "shape": [2, 4], "datatype": "FP32", "parameters": { "binary_data_size": bin.len() } }],
        "parameters": { "binary_data_output": true }
    })
    .to_string();
    let mut body = head.clone().into_bytes();
    body.extend_from_slice(&bin);
    let (s, h, out) = raw(
        &m,
        "/v2/models/tabular/infer",
        &[("inference-header-content-length", head.len().to_string())],
        body,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&out));
    let n: usize = h["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let meta: Value = serde_json::from_slice(&out[..n]).unwrap();
    assert_eq!(meta["outputs"][0]["parameters"]["binary_data_size"], 24);
    let probs: Vec<f32> = out[n..]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let (_, j) = call(
        &m,
        "POST",
        "/v2/models/tabular/infer",
        request(json!([1, 2, 3, 4, 0.5, -1, 0, 2]), json!([2, 4])),
    )
    .await;
    let want: Vec<f32> = j["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(probs, want);
    let (s, _, out) = raw(
        &m,
        "/v2/models/tabular/infer",
        &[("inference-header-content-length", head.len().to_string())],
        {
            let mut b = head.clone().into_bytes();
            b.extend_from_slice(&bin[..10]);
            b
        },
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        String::from_utf8_lossy(&out).contains("runs past the end"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[tokio::test]
async fn the_v1_protocol_predicts_per_instance() {
    let (_d, m) = load(Example::V1, "1");
    let (s, v) = call(
        &m,
        "POST",
        "/v1/models/tabular:predict",
        json!({ "instances": [[1, 2, 3, 4], [0.5, -1, 0, 2]] }).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let preds = v["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 2);
    assert_eq!(preds[0].as_array().unwrap().len(), 3);
    let (_, j) = call(
        &m,
        "POST",
        "/v2/models/tabular/infer",
        request(json!([1, 2, 3, 4]), json!([1, 4])),
    )
    .await;
    assert_eq!(preds[0], j["outputs"][0]["data"]);
    assert_eq!(
        call(&m, "GET", "/v1/models/tabular", "").await.1,
        json!({ "name": "tabular", "ready": true })
    );
    let (s, v) = call(
        &m,
        "POST",
        "/v1/models/tabular:predict",
        json!({ "rows": [] }).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = call(&m, "POST", "/v1/models/tabular:explain", "{}").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_count_inferences_and_failures() {
    let (_d, m) = load(Example::V1, "1");
    let app = router(state(m.clone()));
    let send = |body: String| {
        let app = app.clone();
        async move {
            let req = Request::builder()
                .method("POST")
                .uri("/v2/models/tabular/infer")
                .body(Body::from(body))
                .unwrap();
            app.oneshot(req).await.unwrap().status()
        }
    };
    assert_eq!(send(request(json!([1, 2, 3, 4]), json!([1, 4]))).await, StatusCode::OK);
    assert_eq!(send(request(json!([1, 2, 3, 4]), json!([1, 4]))).await, StatusCode::OK);
    assert_eq!(send("nope".into()).await, StatusCode::BAD_REQUEST);
    let resp = app
        .oneshot(Request::builder().uri("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let value = |series: &str| {
        text.lines().find_map(|l| {
            l.rsplit_once(' ')
                .filter(|(s, _)| *s == series)
                .map(|(_, v)| v.to_string())
        })
    };
    let labels = "{model=\"tabular\",version=\"1\"}";
    assert_eq!(
        value(&format!("revisor_model_inference_count_total{labels}")).as_deref(),
        Some("2"),
        "{text}"
    );
    assert_eq!(
        value(&format!("revisor_model_inference_failure_count_total{labels}")).as_deref(),
        Some("1"),
        "{text}"
    );
    let compute = value(&format!("revisor_model_inference_compute_duration_us_total{labels}"));
    assert!(compute.and_then(|v| v.parse::<u64>().ok()).is_some(), "{text}");
    assert!(text.ends_with("\n# EOF\n"), "{text}");
}

/// Issue 13: NaN sent in a binary input, carried by the model into an output JSON cannot hold, is the
/// client's doing: 400, not a 500 that would count against a canary. The faulty model's NaN on finite
/// input stays a 500.
#[tokio::test]
async fn a_nan_from_the_clients_input_is_a_400_and_the_models_own_nan_a_500() {
    let (_d, m) = load(Example::V1, "1");
    let features: Vec<f32> = vec![f32::NAN, 2.0, 3.0, 4.0];
    let bin: Vec<u8> = features.iter().flat_map(|x| x.to_le_bytes()).collect();
    let head = json!({
        "inputs": [{ "name": "features", "shape": [1, 4], "datatype": "FP32", "parameters": { "binary_data_size": bin.len() } }]
    })
    .to_string();
    let mut body = head.clone().into_bytes();
    body.extend_from_slice(&bin);
    let (s, _, out) = raw(
        &m,
        "/v2/models/tabular/infer",
        &[("inference-header-content-length", head.len().to_string())],
        body,
    )
    .await;
    let out = String::from_utf8_lossy(&out);
    assert_eq!(s, StatusCode::BAD_REQUEST, "{out}");
    assert!(out.contains("input holds NaN or infinite values"), "{out}");

    let (_d3, faulty) = load(Example::V3Faulty, "3");
    let (s, v) = call(
        &faulty,
        "POST",
        "/v2/models/tabular/infer",
        request(json!([1, 2, 3, 4]), json!([1, 4])),
    )
    .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
}
