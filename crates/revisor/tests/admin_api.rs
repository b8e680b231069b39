//! The admin API through `router(..).oneshot(..)`: status codes, Status bodies, and that refusals change nothing.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use revisor::admin::{router, AdminState};
use revisor_api::Defaults;
use revisor_controller::{Controller, ControllerConfig};
use revisor_store::Store;
use serde_json::{json, Value};
use tower::ServiceExt;

const SVC: &str = "/apis/serving.knative.dev/v1/namespaces/default/services";

struct Api {
    _dir: tempfile::TempDir,
    state: AdminState,
}

impl Api {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        Controller::new(store.clone(), ControllerConfig::default()).spawn();
        Api {
            _dir: dir,
            state: AdminState {
                store,
                defaults: Arc::new(Defaults::default()),
                gateway: None,
                logs: None,
                metrics: None,
            },
        }
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        ctype: &str,
        body: impl Into<String>,
    ) -> (StatusCode, Option<String>, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", ctype)
            .body(Body::from(body.into()))
            .unwrap();
        let resp = router(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let outcome = resp
            .headers()
            .get("revisor-apply-result")
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, outcome, v)
    }

    async fn apply(&self, name: &str, body: &str) -> (StatusCode, Option<String>, Value) {
        self.call("PATCH", &format!("{SVC}/{name}"), "application/apply-patch+yaml", body)
            .await
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        let (s, _, v) = self.call("GET", uri, "application/json", "").await;
        (s, v)
    }

    /// Waits for the controller to observe the service's generation.
    async fn observed(&self, name: &str) -> Value {
        for _ in 0..500 {
            let (_, v) = self.get(&format!("{SVC}/{name}")).await;
            if v["status"]["observedGeneration"] == v["metadata"]["generation"] {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("controller never observed {name}");
    }
}

fn manifest(name: &str, image: &str) -> String {
    format!("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n      containers:\n        - image: {image}\n")
}

#[tokio::test]
async fn apply_creates_then_reports_unchanged_then_configured() {
    let api = Api::new();
    let (s, outcome, v) = api.apply("svc", &manifest("svc", "img:v1")).await;
    assert_eq!((s, outcome.as_deref()), (StatusCode::CREATED, Some("created")));
    assert_eq!(v["metadata"]["namespace"], "default");
    assert_eq!(
        v["spec"]["traffic"],
        json!([{ "latestRevision": true, "percent": 100 }])
    );
    let (s, outcome, _) = api.apply("svc", &manifest("svc", "img:v1")).await;
    assert_eq!((s, outcome.as_deref()), (StatusCode::OK, Some("unchanged")));
    let (_, outcome, v) = api.apply("svc", &manifest("svc", "img:v2")).await;
    assert_eq!(
        (outcome.as_deref(), &v["metadata"]["generation"]),
        (Some("configured"), &json!(2))
    );
    let v = api.observed("svc").await;
    assert_eq!(v["status"]["latestCreatedRevisionName"], "svc-00002");
    let (_, list) = api
        .get("/apis/serving.knative.dev/v1/namespaces/default/revisions?labelSelector=serving.knative.dev/service=svc")
        .await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["svc-00001", "svc-00002"]);
    assert_eq!(list["kind"], "RevisionList");
}

#[tokio::test]
async fn invalid_services_get_a_status_with_causes_and_change_nothing() {
    let api = Api::new();
    let bad = manifest("svc", "img").replace(
        "spec:\n  template",
        "spec:\n  traffic:\n    - latestRevision: true\n      percent: 120\n  template",
    );
    let (s, _, v) = api.apply("svc", &bad).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        (v["kind"].as_str(), v["reason"].as_str(), v["code"].as_u64()),
        (Some("Status"), Some("Invalid"), Some(422))
    );
    let fields: Vec<&str> = v["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["spec.traffic[0].percent", "spec.traffic"]);
    let (s, _) = api.get(&format!("{SVC}/svc")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn malformed_requests_are_refused_clearly() {
    let api = Api::new();
    let cases: Vec<(&str, String, &str, String, StatusCode, &str)> = vec![
        ("PATCH", format!("{SVC}/svc"), "application/apply-patch+yaml", "kind: [".to_string(), StatusCode::BAD_REQUEST, "invalid YAML"),
        ("PATCH", format!("{SVC}/svc"), "text/plain", "x".to_string(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "content type \"text/plain\" is not a kind of patch"),
        ("PATCH", format!("{SVC}/other"), "application/apply-patch+yaml", "".to_string(), StatusCode::BAD_REQUEST, "request body is empty"),
        ("PATCH", format!("{SVC}/svc"), "application/apply-patch+yaml", "{\"apiVersion\":\"serving.knative.dev/v1\",\"kind\":\"Service\",\"metadata\":{\"name\":\"x\"}}".to_string(), StatusCode::BAD_REQUEST, "the name of the object (x) does not match"),
        ("PATCH", format!("{SVC}/svc"), "application/apply-patch+yaml", "{\"apiVersion\":\"serving.knative.dev/v1\",\"kind\":\"Service\",\"metadata\":{\"name\":\"svc\",\"namespace\":\"prod\"}}".to_string(), StatusCode::BAD_REQUEST, "namespace of the object (prod)"),
        // A PATCH says by its type what kind of patch it is: a whole object in JSON is not one.
        ("PATCH", format!("{SVC}/svc"), "application/json", manifest("svc", "i"), StatusCode::UNSUPPORTED_MEDIA_TYPE, "not a kind of patch"),
        ("PATCH", format!("{SVC}/svc"), "application/apply-patch+yaml", "\"x\"".to_string(), StatusCode::UNPROCESSABLE_ENTITY, "an apply configuration must be an object"),
        ("PATCH", format!("{SVC}/svc"), "application/apply-patch+yaml", "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: [1]\n".to_string(), StatusCode::UNPROCESSABLE_ENTITY, "metadata must be an object"),
        ("PATCH", format!("{SVC}/svc"), "application/apply-patch+yaml", "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: svc}\nspec: {bogus: 1}\n".to_string(), StatusCode::UNPROCESSABLE_ENTITY, "spec.bogus: unknown field"),
        ("PATCH", format!("{SVC}/svc?dryRun=Some"), "application/apply-patch+yaml", manifest("svc", "i"), StatusCode::BAD_REQUEST, "dryRun"),
        ("PATCH", format!("{SVC}/svc"), "application/apply-patch+yaml", format!("{}---\n{}", manifest("svc", "a"), manifest("svc", "b")), StatusCode::BAD_REQUEST, "holds 2 documents"),
        ("GET", "/apis/serving.knative.dev/v1/namespaces/default/revisions?labelSelector=a%20in%20b".into(), "application/json", "".to_string(), StatusCode::BAD_REQUEST, "want a list of values in parentheses"),
        ("GET", "/apis/serving.knative.dev/v1/namespaces/default/revisions?fieldSelector=spec.x%3D1".into(), "application/json", "".to_string(), StatusCode::BAD_REQUEST, "not a field you can select on"),
        ("PATCH", format!("{SVC}/svc"), "application/strategic-merge-patch+json", "{}".to_string(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/merge-patch+json"),
        ("PATCH", format!("{SVC}/svc"), "application/merge-patch+json", "[1]".to_string(), StatusCode::BAD_REQUEST, "a merge patch must be a JSON object"),
        ("PATCH", format!("{SVC}/svc"), "application/json-patch+json", "{}".to_string(), StatusCode::BAD_REQUEST, "not a list of operations"),
        ("PATCH", format!("{SVC}/svc?fieldValidation=Loose"), "application/apply-patch+yaml", manifest("svc", "i"), StatusCode::BAD_REQUEST, "want Strict, Warn or Ignore"),
        ("GET", "/apis/nope".into(), "application/json", "".to_string(), StatusCode::NOT_FOUND, "no such path /apis/nope"),
        ("GET", format!("{SVC}/ghost/events"), "application/json", "".to_string(), StatusCode::NOT_FOUND, "not found"),
        ("DELETE", format!("{SVC}/ghost"), "application/json", "".to_string(), StatusCode::NOT_FOUND, "not found"),
        ("PUT", format!("{SVC}/ghost"), "application/yaml", manifest("ghost", "i"), StatusCode::NOT_FOUND, "not found"),
    ];
    for (method, uri, ctype, body, want, text) in cases {
        let (s, _, v) = api.call(method, &uri, ctype, body).await;
        assert_eq!(s, want, "{method} {uri}: {v}");
        assert_eq!(v["kind"], "Status", "{method} {uri}");
        assert!(
            v["message"].as_str().unwrap().contains(text),
            "{method} {uri}: {}",
            v["message"]
        );
    }
    let big = format!(
        "{}# {}\n",
        manifest("svc", "i"),
        "x".repeat(revisor::admin::MAX_BODY_BYTES)
    );
    let (s, _, v) = api.apply("svc", &big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    let (_, list) = api.get(SVC).await;
    assert_eq!(list["items"], json!([]), "no refused request stored anything");
}

#[tokio::test]
async fn create_conflicts_and_stale_updates() {
    let api = Api::new();
    let (s, _, _) = api.call("POST", SVC, "application/yaml", manifest("svc", "i")).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _, v) = api.call("POST", SVC, "application/yaml", manifest("svc", "i")).await;
    assert_eq!((s, v["reason"].as_str()), (StatusCode::CONFLICT, Some("AlreadyExists")));
    let stale = manifest("svc", "j").replace("  name: svc\n", "  name: svc\n  resourceVersion: \"1\"\n");
    let (s, _, v) = api.call("PUT", &format!("{SVC}/svc"), "application/yaml", stale).await;
    assert_eq!(
        (s, v["reason"].as_str()),
        (StatusCode::CONFLICT, Some("Conflict")),
        "{v}"
    );
    let (_, v) = api.get(&format!("{SVC}/svc")).await;
    assert_eq!(v["spec"]["template"]["spec"]["containers"][0]["image"], "i");
}

#[tokio::test]
async fn dry_run_checks_against_stored_state_but_writes_nothing() {
    let api = Api::new();
    let named = |image: &str| {
        manifest("svc", image).replace("  template:\n", "  template:\n    metadata:\n      name: svc-one\n")
    };
    let (_, outcome, _) = api
        .call(
            "PATCH",
            &format!("{SVC}/svc?dryRun=All"),
            "application/apply-patch+yaml",
            named("a"),
        )
        .await;
    assert_eq!(outcome.as_deref(), Some("created"));
    assert_eq!(api.get(&format!("{SVC}/svc")).await.0, StatusCode::NOT_FOUND);
    api.apply("svc", &named("a")).await;
    let (s, _, v) = api
        .call(
            "PATCH",
            &format!("{SVC}/svc?dryRun=All"),
            "application/apply-patch+yaml",
            named("b"),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a changed template under the same name: {v}"
    );
}

#[tokio::test]
async fn delete_removes_the_service_and_everything_it_owns() {
    let api = Api::new();
    api.apply("svc", &manifest("svc", "a")).await;
    api.observed("svc").await;
    let (_, ev) = api.get(&format!("{SVC}/svc/events")).await;
    assert!(ev["items"].as_array().unwrap().iter().any(|e| e["reason"] == "Created"));
    let (s, _, v) = api.call("DELETE", &format!("{SVC}/svc"), "application/json", "").await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("Success")));
    let (_, revs) = api.get("/apis/serving.knative.dev/v1/revisions").await;
    assert_eq!(revs["items"], json!([]));
    assert_eq!(
        api.get("/apis/serving.knative.dev/v1/namespaces/default/configurations/svc")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

const ROLLOUTS: &str = "/apis/revisor.dev/v1alpha1/namespaces/default/rollouts";

fn rollout(name: &str, service: &str) -> String {
    format!(
        "apiVersion: revisor.dev/v1alpha1\nkind: Rollout\nmetadata:\n  name: {name}\nspec:\n  serviceRef:\n    name: {service}\n  strategy:\n    canary:\n      steps: [{{setWeight: 10}}, {{pause: {{}}}}]\n"
    )
}

#[tokio::test]
async fn rollouts_apply_list_act_and_refuse_what_is_wrong() {
    let api = Api::new();
    let ty = "application/apply-patch+yaml";
    let (s, outcome, v) = api
        .call("PATCH", &format!("{ROLLOUTS}/web"), ty, rollout("web", "web"))
        .await;
    assert_eq!((s, outcome.as_deref()), (StatusCode::CREATED, Some("created")), "{v}");
    let (s, outcome, _) = api
        .call("PATCH", &format!("{ROLLOUTS}/web"), ty, rollout("web", "web"))
        .await;
    assert_eq!((s, outcome.as_deref()), (StatusCode::OK, Some("unchanged")));
    let (s, v) = api.get(ROLLOUTS).await;
    assert_eq!(
        (s, v["kind"].as_str(), v["items"].as_array().map(Vec::len)),
        (StatusCode::OK, Some("RolloutList"), Some(1))
    );

    let (s, _, v) = api
        .call("PATCH", &format!("{ROLLOUTS}/other"), ty, rollout("other", "web"))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["details"]["causes"][0]["field"], "spec.serviceRef.name", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("Rollout.revisor.dev \"other\" is invalid"),
        "{v}"
    );

    let bad = "apiVersion: revisor.dev/v1alpha1\nkind: Rollout\nmetadata:\n  name: bad\nspec:\n  serviceRef:\n    name: x\n  strategy:\n    canary:\n      steps: [{setWeight: 101}]\n";
    let (s, _, v) = api.call("PATCH", &format!("{ROLLOUTS}/bad"), ty, bad).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(
        v["details"]["causes"][0]["field"],
        "spec.strategy.canary.steps[0].setWeight"
    );
    assert_eq!(
        api.get(&format!("{ROLLOUTS}/bad")).await.0,
        StatusCode::NOT_FOUND,
        "nothing written"
    );

    let (s, _, v) = api
        .call("POST", &format!("{ROLLOUTS}/web/promote"), "application/json", "")
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"]["requests"][0], "promote");
    let (s, _, v) = api
        .call("POST", &format!("{ROLLOUTS}/web/pause"), "application/json", "")
        .await;
    assert_eq!((s, v["spec"]["paused"].as_bool()), (StatusCode::OK, Some(true)));
    let (s, _, v) = api
        .call("POST", &format!("{ROLLOUTS}/web/explode"), "application/json", "")
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("unknown action \"explode\""),
        "{v}"
    );
    let (s, _, v) = api
        .call(
            "POST",
            &format!("{ROLLOUTS}/web/undo"),
            "application/json",
            r#"{"toRevision": "nope-00009"}"#,
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["message"].as_str().unwrap().contains("does not exist"), "{v}");
    let (s, _, _) = api
        .call("POST", &format!("{ROLLOUTS}/ghost/abort"), "application/json", "")
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = api
        .call("DELETE", &format!("{ROLLOUTS}/web"), "application/json", "")
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(api.get(&format!("{ROLLOUTS}/web")).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_rollout_owns_its_services_traffic() {
    let api = Api::new();
    let svc = |image: &str, traffic: &str| {
        format!("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  template:\n    spec:\n      containers:\n        - image: {image}\n{traffic}")
    };
    api.apply("web", &svc("img:1", "")).await;
    let ty = "application/apply-patch+yaml";
    api.call("PATCH", &format!("{ROLLOUTS}/web"), ty, rollout("web", "web"))
        .await;
    let before = api.get(&format!("{SVC}/web")).await.1["spec"]["traffic"].clone();
    let (s, _, v) = api
        .apply(
            "web",
            &svc(
                "img:2",
                "  traffic:\n    - latestRevision: true\n      percent: 100\n      tag: mine\n",
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["spec"]["template"]["spec"]["containers"][0]["image"], "img:2",
        "the template changes"
    );
    assert_eq!(v["spec"]["traffic"], before, "the traffic stays the Rollout's");
}

/// Issue 14 (security): `..%2F..` in a namespace read any directory through the log endpoint. Names
/// and namespaces must be DNS labels before they reach a path.
#[tokio::test]
async fn the_log_endpoint_reads_no_directory_outside_the_logs() {
    let mut api = Api::new();
    let root = api._dir.path().to_path_buf();
    std::fs::create_dir_all(root.join("logs")).unwrap();
    std::fs::create_dir_all(root.join("secret")).unwrap();
    std::fs::write(root.join("secret/replica-1.log"), "TOPSECRET\n").unwrap();
    api.state.logs = Some(root.join("logs"));
    for uri in [
        "/apis/serving.knative.dev/v1/namespaces/%2E%2E/revisions/secret/log",
        "/apis/serving.knative.dev/v1/namespaces/default/revisions/..%2F..%2Fsecret/log",
    ] {
        let (status, body) = api.get(uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(!body.to_string().contains("TOPSECRET"), "{uri}: {body}");
        assert!(body.to_string().contains("DNS-1123"), "{uri}: {body}");
    }
}

/// Issue 16: a Rollout's server-side apply merges by field ownership, as a Service's does: a second
/// manager's apply of a label alone keeps the spec, and its apply of other steps conflicts with the
/// first manager until forced.
#[tokio::test]
async fn rollouts_are_server_side_applied_field_by_field() {
    let api = Api::new();
    let ty = "application/apply-patch+yaml";
    let uri = |manager: &str, force: bool| format!("{ROLLOUTS}/web?fieldManager={manager}&force={force}");
    let (s, _, v) = api
        .call("PATCH", &uri("team-a", false), ty, rollout("web", "web"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let label = "apiVersion: revisor.dev/v1alpha1\nkind: Rollout\nmetadata:\n  name: web\n  labels: {owner: b}\n";
    let (s, outcome, v) = api.call("PATCH", &uri("team-b", false), ty, label).await;
    assert_eq!((s, outcome.as_deref()), (StatusCode::OK, Some("configured")), "{v}");
    assert_eq!(v["metadata"]["labels"]["owner"], "b");
    assert_eq!(
        v["spec"]["strategy"]["canary"]["steps"][0]["setWeight"], 10,
        "the spec was kept"
    );
    let other_steps = rollout("web", "web").replace("setWeight: 10", "setWeight: 50");
    let (s, _, v) = api.call("PATCH", &uri("team-b", false), ty, other_steps.clone()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("conflict with \"team-a\": .spec.strategy.canary.steps"),
        "{message}"
    );
    let (s, _, v) = api.call("PATCH", &uri("team-b", true), ty, other_steps).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["spec"]["strategy"]["canary"]["steps"][0]["setWeight"], 50);
    assert!(
        v["metadata"].get("labels").is_none(),
        "team-b's label, left out, is removed: {v}"
    );
    let managers: Vec<&str> = v["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["manager"].as_str().unwrap())
        .collect();
    assert!(
        managers.contains(&"team-a") && managers.contains(&"team-b"),
        "{managers:?}"
    );
}
