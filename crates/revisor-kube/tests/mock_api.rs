//! The Knative backend's calls against a mocked API server (`tower_test::mock::pair`), scenario by
//! scenario: each test says which requests revisor must send, in order, and what the server answers.

use std::time::Duration;

use http::{Request, Response};
use kube::api::DynamicObject;
use kube::client::Body;
use revisor_api::Defaults;
use revisor_kube::{ApplyError, ApplyOptions, Cluster, KnativeWorld};
use revisor_rollout_controller::{Commit, World};
use serde_json::{json, Value};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn mocked() -> (kube::Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// One expected request: its method, path and query, content type and JSON body.
struct Seen {
    method: String,
    uri: String,
    content_type: String,
    body: Value,
}

/// Takes the next request and answers it with `code` and `answer`.
async fn expect(handle: &mut Handle, code: u16, answer: Value) -> Seen {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("revisor sent a request")
        .expect("the client is alive");
    let seen = Seen {
        method: request.method().to_string(),
        uri: request.uri().to_string(),
        content_type: request
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        body: {
            let bytes = request.into_body().collect_bytes().await.unwrap();
            if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).expect("a JSON body")
            }
        },
    };
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&answer).unwrap()))
            .unwrap(),
    );
    seen
}

/// revisor's apply of `doc` into namespace `default` (where the document names none).
async fn apply(cluster: &Cluster, doc: &Value, options: ApplyOptions) -> Result<Value, ApplyError> {
    revisor_kube::apply(cluster, doc, &Defaults::default(), "default", options).await
}

/// Asserts revisor sends nothing more for a while (or drops its client).
async fn expect_nothing(handle: &mut Handle) {
    if let Ok(Some((r, _))) = tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await {
        panic!("an unexpected request: {} {}", r.method(), r.uri());
    }
}

fn conflict(message: &str) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": "Conflict", "code": 409 })
}

fn object(v: Value) -> DynamicObject {
    serde_json::from_value(v).unwrap()
}

fn service_doc() -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": { "name": "model", "namespace": "default" },
        "spec": {
            "template": { "spec": { "containers": [{ "image": "ghcr.io/example/model:2" }] } },
            "traffic": [{ "latestRevision": true, "percent": 100 }],
        },
    })
}

fn rollout_obj(status: Value) -> Value {
    json!({
        "apiVersion": "revisor.dev/v1alpha1", "kind": "Rollout",
        "metadata": { "name": "model", "namespace": "default", "resourceVersion": "7", "uid": "u-1" },
        "spec": { "serviceRef": { "name": "model" }, "strategy": { "canary": { "steps": [{ "setWeight": 20 }] } } },
        "status": status,
    })
}

#[tokio::test]
async fn apply_is_a_server_side_apply_of_the_users_fields_as_revisor() {
    let (client, mut handle) = mocked();
    let cluster = Cluster::from_objects(client, None, vec![]);
    let server = tokio::spawn(async move {
        let mut answer = service_doc();
        answer["metadata"]["resourceVersion"] = json!("12");
        expect(&mut handle, 200, answer).await
    });
    let out = apply(&cluster, &service_doc(), ApplyOptions::default()).await.unwrap();
    assert_eq!(out["metadata"]["resourceVersion"], "12");
    let seen = server.await.unwrap();
    assert_eq!(seen.method, "PATCH");
    assert!(
        seen.uri
            .starts_with("/apis/serving.knative.dev/v1/namespaces/default/services/model?"),
        "{}",
        seen.uri
    );
    assert!(seen.uri.contains("fieldManager=revisor"), "{}", seen.uri);
    assert!(!seen.uri.contains("force=true"), "never forced: {}", seen.uri);
    assert_eq!(seen.content_type, "application/apply-patch+yaml");
    // Only what the user wrote: no defaults revisor would fill in, no status.
    assert_eq!(seen.body, service_doc());
}

#[tokio::test]
async fn a_services_traffic_stays_with_its_rollout_and_a_dry_run_says_so() {
    let (client, mut handle) = mocked();
    let cluster = Cluster::from_objects(client, None, vec![object(rollout_obj(json!({})))]);
    let server = tokio::spawn(async move { expect(&mut handle, 200, service_doc()).await });
    apply(
        &cluster,
        &service_doc(),
        ApplyOptions {
            dry_run: true,
            force: false,
        },
    )
    .await
    .unwrap();
    let seen = server.await.unwrap();
    assert!(seen.uri.contains("dryRun=All"), "{}", seen.uri);
    assert!(seen.body["spec"].get("traffic").is_none(), "{}", seen.body);
    assert!(seen.body["spec"].get("template").is_some());
}

#[tokio::test]
async fn a_conflict_is_reported_with_the_other_manager_and_an_invalid_manifest_is_never_sent() {
    let (client, mut handle) = mocked();
    let cluster = Cluster::from_objects(client, None, vec![]);
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            409,
            conflict("Apply failed with 1 conflict: conflict with \"kubectl\": .spec.template"),
        )
        .await;
        expect_nothing(&mut handle).await;
    });
    let err = apply(&cluster, &service_doc(), ApplyOptions::default())
        .await
        .unwrap_err();
    match &err {
        ApplyError::Conflict(m) => {
            assert!(m.contains("conflict with \"kubectl\": .spec.template"), "{m}");
            assert!(m.contains("does not force"), "{m}");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let mut bad = service_doc();
    bad["spec"]["template"]["spec"]["containers"][0]["ports"] = json!([{ "containerPort": 99999 }]);
    match apply(&cluster, &bad, ApplyOptions::default()).await {
        Err(ApplyError::Invalid(errs)) => {
            let text = errs.to_string();
            assert!(text.contains("containerPort"), "{text}");
        }
        other => panic!("expected invalid, got {other:?}"),
    }
    server.await.unwrap();
}

/// Forcing is only ever asked for: `--force-conflicts` becomes server-side apply's `force=true`.
#[tokio::test]
async fn force_is_sent_only_when_asked() {
    let (client, mut handle) = mocked();
    let cluster = Cluster::from_objects(client, None, vec![]);
    let server = tokio::spawn(async move { expect(&mut handle, 200, service_doc()).await });
    let forced = ApplyOptions {
        dry_run: false,
        force: true,
    };
    apply(&cluster, &service_doc(), forced).await.unwrap();
    let seen = server.await.unwrap();
    assert!(
        seen.uri.contains("force=true") && seen.uri.contains("fieldManager=revisor"),
        "{}",
        seen.uri
    );
}

/// A revisor that watches one namespace refuses objects of another (it would never see them again),
/// and the cluster's own refusal (Knative's webhook) comes back as a rejection, not a server fault.
#[tokio::test]
async fn other_namespaces_are_refused_and_the_clusters_refusal_is_reported() {
    let (client, mut handle) = mocked();
    let cluster = Cluster::from_objects(client, Some("models".into()), vec![]);
    let err = apply(&cluster, &service_doc(), ApplyOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ApplyError::Invalid(e) if e.to_string().contains("metadata.namespace")),
        "{err:?}"
    );
    let mut doc = service_doc();
    doc["metadata"]["namespace"] = json!("models");
    let server = tokio::spawn(async move {
        let refusal = json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "admission webhook \"validation.webhook.serving.knative.dev\" denied the request", "reason": "BadRequest", "code": 400 });
        expect(&mut handle, 400, refusal).await
    });
    let err = apply(&cluster, &doc, ApplyOptions::default()).await.unwrap_err();
    assert!(
        matches!(&err, ApplyError::Rejected(m) if m.contains("denied the request") && m.contains("models/model")),
        "{err:?}"
    );
    assert!(server
        .await
        .unwrap()
        .uri
        .starts_with("/apis/serving.knative.dev/v1/namespaces/models/services/model?"));
}

/// A step's commit: the Rollout's status subresource on the resourceVersion read, then the Knative
/// Service's traffic (merge patch, its own field manager), then an Event about the Rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_writes_status_then_traffic_then_an_event() {
    let (client, mut handle) = mocked();
    let r = rollout_obj(json!({ "phase": "Initialized", "stableRevision": "model-00001" }));
    let cluster = Cluster::from_objects(client, None, vec![object(r.clone())]);
    let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let world = KnativeWorld::new(cluster, rx);
    let server = tokio::spawn(async move {
        let mut written = r.clone();
        written["metadata"]["resourceVersion"] = json!("8");
        let status = expect(&mut handle, 200, written).await;
        let traffic = expect(&mut handle, 200, service_doc()).await;
        let event = expect(&mut handle, 201, json!({})).await;
        expect_nothing(&mut handle).await;
        (status, traffic, event)
    });
    let rollout: revisor_api::Rollout = serde_json::from_value(rollout_obj(json!({}))).unwrap();
    let mut status = revisor_api::RolloutStatus {
        phase: revisor_api::rollout::phase::PROGRESSING,
        stable_revision: Some("model-00001".into()),
        canary_revision: Some("model-00002".into()),
        canary_weight: 20,
        ..Default::default()
    };
    status.message = Some("step 1/1".into());
    let traffic: Vec<revisor_api::TrafficTarget> = serde_json::from_value(json!([
        { "revisionName": "model-00001", "percent": 80 },
        { "latestRevision": true, "percent": 20, "tag": "canary" },
    ]))
    .unwrap();
    let events = vec![revisor_rollout::Event {
        warning: false,
        reason: "Progressing".into(),
        message: "model-00002 takes 20%".into(),
    }];
    assert_eq!(world.rollouts().await.unwrap().len(), 1);
    let committed = world
        .commit(Commit {
            rollout,
            status,
            traffic: Some(traffic),
            events,
        })
        .await;
    assert!(committed.unwrap());
    // Until the watch brings the written version, the Rollout is not stepped on the old one.
    assert_eq!(world.rollouts().await.unwrap().len(), 0);
    let key = revisor_rollout_controller::Key::new("default", "model");
    let waited = world.rollout(&key).await.unwrap_err();
    assert!(waited.contains("has not brought the status"), "{waited}");
    let (status, traffic, event) = server.await.unwrap();
    assert_eq!(status.method, "PUT");
    assert!(
        status
            .uri
            .starts_with("/apis/revisor.dev/v1alpha1/namespaces/default/rollouts/model/status"),
        "{}",
        status.uri
    );
    assert_eq!(status.body["metadata"]["resourceVersion"], "7");
    assert_eq!(status.body["status"]["phase"], "Progressing");
    assert_eq!(status.body["status"]["canaryWeight"], 20);
    assert_eq!(traffic.method, "PATCH");
    assert!(
        traffic
            .uri
            .starts_with("/apis/serving.knative.dev/v1/namespaces/default/services/model?"),
        "{}",
        traffic.uri
    );
    assert!(traffic.uri.contains("fieldManager=revisor-rollouts"), "{}", traffic.uri);
    assert_eq!(traffic.content_type, "application/merge-patch+json");
    assert_eq!(
        traffic.body,
        json!({ "spec": { "traffic": [
            { "revisionName": "model-00001", "percent": 80 },
            { "latestRevision": true, "percent": 20, "tag": "canary" },
        ] } })
    );
    assert_eq!(event.method, "POST");
    assert!(
        event
            .uri
            .starts_with("/apis/events.k8s.io/v1/namespaces/default/events"),
        "{}",
        event.uri
    );
    assert_eq!(event.body["reason"], "Progressing");
    assert_eq!(event.body["note"], "model-00002 takes 20%");
    assert_eq!(event.body["type"], "Normal");
    assert_eq!(event.body["regarding"]["kind"], "Rollout");
    assert_eq!(event.body["regarding"]["apiVersion"], "revisor.dev/v1alpha1");
    assert_eq!(event.body["regarding"]["uid"], "u-1");
}

/// Someone wrote the Rollout since the step read it: nothing else is written; the step runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_status_write_moves_no_traffic() {
    let (client, mut handle) = mocked();
    let r = rollout_obj(json!({ "phase": "Progressing" }));
    let cluster = Cluster::from_objects(client, None, vec![object(r)]);
    let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let world = KnativeWorld::new(cluster, rx);
    let server = tokio::spawn(async move {
        let seen = expect(&mut handle, 409, conflict("the object has been modified")).await;
        expect_nothing(&mut handle).await;
        seen
    });
    let rollout: revisor_api::Rollout = serde_json::from_value(rollout_obj(json!({}))).unwrap();
    let status = revisor_api::RolloutStatus {
        phase: revisor_api::rollout::phase::PROGRESSING,
        canary_weight: 50,
        ..Default::default()
    };
    let committed = world
        .commit(Commit {
            rollout,
            status,
            traffic: Some(vec![]),
            events: vec![],
        })
        .await
        .unwrap();
    assert!(!committed);
    assert_eq!(server.await.unwrap().method, "PUT");
}

/// `revisor rollout promote` on the cluster: read the Rollout, then write its status with the request.
#[tokio::test]
async fn an_operators_request_reads_the_rollout_then_appends_to_its_status() {
    let (client, mut handle) = mocked();
    let cluster = Cluster::from_objects(client, None, vec![]);
    let server = tokio::spawn(async move {
        let current = rollout_obj(json!({ "phase": "Paused", "requests": [] }));
        let read = expect(&mut handle, 200, current.clone()).await;
        let mut written = current;
        written["status"]["requests"] = json!(["promote"]);
        let write = expect(&mut handle, 200, written).await;
        (read, write)
    });
    let r = revisor_kube::request(&cluster, "default", "model", "promote", None)
        .await
        .unwrap();
    assert_eq!(r.status().requests, vec!["promote".to_string()]);
    let (read, write) = server.await.unwrap();
    assert_eq!(
        (read.method.as_str(), read.uri.as_str()),
        ("GET", "/apis/revisor.dev/v1alpha1/namespaces/default/rollouts/model")
    );
    assert_eq!(write.method, "PUT");
    assert!(write.uri.ends_with("/rollouts/model/status?"), "{}", write.uri);
    assert_eq!(write.body["status"]["requests"], json!(["promote"]));
    assert_eq!(write.body["metadata"]["resourceVersion"], "7");

    // An unknown action is refused before any request.
    let (client, mut handle) = mocked();
    let cluster = Cluster::from_objects(client, None, vec![]);
    let err = revisor_kube::request(&cluster, "default", "model", "launch", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown action \"launch\""), "{err}");
    expect_nothing(&mut handle).await;
}
