//! Issue 16: lists and watches of the admin API as Kubernetes clients use them: a watch from a list's
//! resourceVersion sees every later change in order, selectors turn changes into ADDED and DELETED,
//! a version older than the server's history is answered 410 Gone, bookmarks, pages.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use revisor::admin::{router, AdminState};
use revisor_api::Defaults;
use revisor_store::Store;
use serde_json::Value;
use tower::ServiceExt;

const SERVING: &str = "/apis/serving.knative.dev/v1";

fn state(path: &std::path::Path) -> AdminState {
    AdminState {
        store: Store::open(path).unwrap(),
        defaults: Arc::new(Defaults::default()),
        gateway: None,
        logs: None,
        metrics: None,
    }
}

fn service(name: &str, ns: &str, team: &str) -> String {
    format!(
        r#"{{"apiVersion":"serving.knative.dev/v1","kind":"Service","metadata":{{"name":"{name}","namespace":"{ns}","labels":{{"team":"{team}"}}}},"spec":{{"template":{{"spec":{{"containers":[{{"image":"x","command":["app"]}}]}}}}}}}}"#
    )
}

async fn call(s: &AdminState, method: &str, uri: &str, ctype: &str, body: String) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", ctype)
        .body(Body::from(body))
        .unwrap();
    let resp = router(s.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn create(s: &AdminState, name: &str, ns: &str, team: &str) {
    let (code, body) = call(
        s,
        "POST",
        &format!("{SERVING}/namespaces/{ns}/services"),
        "application/json",
        service(name, ns, team),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
}

async fn relabel(s: &AdminState, name: &str, team: &str) {
    let patch = format!(r#"{{"metadata":{{"labels":{{"team":"{team}"}}}}}}"#);
    let uri = format!("{SERVING}/namespaces/default/services/{name}");
    let (code, body) = call(s, "PATCH", &uri, "application/merge-patch+json", patch).await;
    assert_eq!(code, StatusCode::OK, "{body}");
}

/// A watch's stream, read line by line.
struct Watch {
    body: Body,
    buf: Vec<u8>,
}

impl Watch {
    async fn start(s: &AdminState, query: &str) -> Watch {
        Watch::at(
            s,
            &format!("{SERVING}/namespaces/default/services?watch=true&{query}"),
            None,
        )
        .await
    }

    /// A watch of any path, with an Accept header when given.
    async fn at(s: &AdminState, uri: &str, accept: Option<&str>) -> Watch {
        let mut req = Request::get(uri);
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let resp = router(s.clone())
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        Watch {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next event as (type, name, resourceVersion), or `None` when the stream ended.
    async fn next(&mut self) -> Option<(String, String, String)> {
        let v = self.next_value().await?;
        let text = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
        Some((
            text("/type"),
            text("/object/metadata/name"),
            text("/object/metadata/resourceVersion"),
        ))
    }

    /// The next event whole, or `None` when the stream ended.
    async fn next_value(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let frame = tokio::time::timeout(Duration::from_secs(60), self.body.frame())
                .await
                .expect("a watch event within a minute")?
                .unwrap();
            self.buf.extend_from_slice(frame.data_ref().unwrap());
        }
    }

    async fn next_of(&mut self) -> (String, String) {
        let (t, name, _) = self.next().await.expect("an event");
        (t, name)
    }
}

fn ev(t: &str, name: &str) -> (String, String) {
    (t.to_string(), name.to_string())
}

#[tokio::test]
async fn a_watch_from_a_lists_version_sees_every_later_change_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(&dir.path().join("s.redb"));
    create(&s, "before", "default", "a").await;
    let (_, list) = call(
        &s,
        "GET",
        &format!("{SERVING}/namespaces/default/services"),
        "",
        String::new(),
    )
    .await;
    let version = list["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    // Changes between the list and the watch are not lost: the watch starts from the list's version.
    create(&s, "a", "default", "a").await;
    create(&s, "elsewhere", "other", "a").await;
    let mut w = Watch::start(&s, &format!("resourceVersion={version}")).await;
    relabel(&s, "a", "b").await;
    let (code, _) = call(
        &s,
        "DELETE",
        &format!("{SERVING}/namespaces/default/services/a"),
        "",
        String::new(),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(w.next_of().await, ev("ADDED", "a"));
    assert_eq!(w.next_of().await, ev("MODIFIED", "a"));
    let (t, name, deleted_at) = w.next().await.unwrap();
    assert_eq!((t.as_str(), name.as_str()), ("DELETED", "a"));
    assert!(deleted_at.parse::<u64>().unwrap() > version.parse::<u64>().unwrap());

    // Without a version, a watch starts with the objects there are, as ADDED.
    let mut w = Watch::start(&s, "").await;
    assert_eq!(w.next_of().await, ev("ADDED", "before"));
}

#[tokio::test]
async fn selectors_turn_changes_into_added_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(&dir.path().join("s.redb"));
    create(&s, "x", "default", "a").await;
    create(&s, "y", "default", "b").await;
    let mut w = Watch::start(&s, "labelSelector=team%20in%20(a)").await;
    assert_eq!(w.next_of().await, ev("ADDED", "x"));
    relabel(&s, "x", "c").await; // leaves the selection
    relabel(&s, "y", "a").await; // enters it
    assert_eq!(w.next_of().await, ev("DELETED", "x"));
    assert_eq!(w.next_of().await, ev("ADDED", "y"));

    // The same from a list's version, as informers and `kubectl get -l -w` watch: the watch knows
    // nothing of what matched before it, and still tells an object leaving the selection.
    let (_, list) = call(
        &s,
        "GET",
        &format!("{SERVING}/namespaces/default/services?labelSelector=team%3Da"),
        "",
        String::new(),
    )
    .await;
    let version = list["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let mut informer = Watch::start(&s, &format!("labelSelector=team%3Da&resourceVersion={version}")).await;
    relabel(&s, "y", "e").await;
    relabel(&s, "x", "a").await;
    assert_eq!(informer.next_of().await, ev("DELETED", "y"));
    assert_eq!(informer.next_of().await, ev("ADDED", "x"));
    relabel(&s, "x", "a").await; // unchanged: no event
    relabel(&s, "y", "a").await;
    assert_eq!(informer.next_of().await, ev("ADDED", "y"));

    let mut by_name = Watch::start(&s, "fieldSelector=metadata.name%3Dy").await;
    assert_eq!(by_name.next_of().await, ev("ADDED", "y"));
    relabel(&s, "x", "d").await;
    relabel(&s, "y", "d").await;
    assert_eq!(by_name.next_of().await, ev("MODIFIED", "y"));
}

#[tokio::test]
async fn a_version_older_than_the_history_is_gone_and_bookmarks_say_where_a_watch_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let s = state(&path);
    create(&s, "a", "default", "a").await;
    create(&s, "b", "default", "a").await;
    drop(s);
    // A restarted server keeps no history from before it started: a watch from then must list again.
    let s = state(&path);
    let mut w = Watch::start(&s, "resourceVersion=1").await;
    let req = Request::get(format!(
        "{SERVING}/namespaces/default/services?watch=true&resourceVersion=1"
    ))
    .body(Body::empty())
    .unwrap();
    let resp = router(s.clone()).oneshot(req).await.unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let error: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(error["type"], "ERROR");
    assert_eq!(error["object"]["code"], 410);
    assert_eq!(error["object"]["reason"], "Expired");
    assert!(
        error["object"]["message"]
            .as_str()
            .unwrap()
            .contains("too old resource version: 1"),
        "{error}"
    );
    assert_eq!(w.next().await.unwrap().0, "ERROR");
    assert!(w.next().await.is_none(), "the watch ends after the error");

    // Bookmarks, when asked for: the initial events end with one, and the watch ends with one.
    let mut w = Watch::start(&s, "allowWatchBookmarks=true&sendInitialEvents=true&timeoutSeconds=1").await;
    assert_eq!(w.next_of().await, ev("ADDED", "a"));
    assert_eq!(w.next_of().await, ev("ADDED", "b"));
    let (t, _, version) = w.next().await.unwrap();
    assert_eq!(t, "BOOKMARK");
    assert!(version.parse::<u64>().unwrap() >= 2);
    assert_eq!(w.next().await.unwrap().0, "BOOKMARK");
    assert!(w.next().await.is_none(), "timeoutSeconds ends the watch");
}

/// A quiet watch that asked for bookmarks gets one every 10 s (on tokio's paused clock).
#[tokio::test(start_paused = true)]
async fn a_quiet_watch_gets_bookmarks() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(&dir.path().join("s.redb"));
    let mut w = Watch::start(&s, "allowWatchBookmarks=true&resourceVersion=0").await;
    let start = tokio::time::Instant::now();
    assert_eq!(w.next().await.unwrap().0, "BOOKMARK");
    assert_eq!(w.next().await.unwrap().0, "BOOKMARK");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(20) && waited < Duration::from_secs(25),
        "{waited:?}"
    );
}

/// Deletes take Kubernetes' DeleteOptions in the body: a dry run deletes nothing, a precondition that
/// does not hold is a conflict, and Orphan (which revisor cannot do) is refused.
#[tokio::test]
async fn deletes_take_their_options_from_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(&dir.path().join("s.redb"));
    create(&s, "a", "default", "x").await;
    let uri = format!("{SERVING}/namespaces/default/services/a");
    let delete = |body: &str| call(&s, "DELETE", &uri, "application/json", body.to_string());
    let (code, _) = delete(r#"{"propagationPolicy":"Background","dryRun":["All"]}"#).await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) = call(&s, "GET", &uri, "", String::new()).await;
    assert_eq!(code, StatusCode::OK, "a dry run deleted nothing");
    let (code, body) = delete(r#"{"preconditions":{"resourceVersion":"1000"}}"#).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    let (code, body) = delete(r#"{"propagationPolicy":"Orphan"}"#).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(body["message"].as_str().unwrap().contains("Orphan"), "{body}");
    let (code, body) = delete(r#"{"dryRun":["Some"]}"#).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    // The status subresource reads the object; status is the controllers' to write.
    let (code, status) = call(&s, "GET", &format!("{uri}/status"), "", String::new()).await;
    assert_eq!((code, status["metadata"]["name"].as_str()), (StatusCode::OK, Some("a")));
    let (code, refused) = call(
        &s,
        "PUT",
        &format!("{uri}/status"),
        "application/json",
        service("a", "default", "x"),
    )
    .await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("written by revisor's controllers"),
        "{refused}"
    );
    let (_, svc) = call(&s, "GET", &uri, "", String::new()).await;
    let version = svc["metadata"]["resourceVersion"].as_str().unwrap();
    let (code, body) = delete(&format!(r#"{{"preconditions":{{"resourceVersion":"{version}"}}}}"#)).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, _) = call(&s, "GET", &uri, "", String::new()).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn pages_of_a_list_continue_where_the_last_ended() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(&dir.path().join("s.redb"));
    for name in ["a", "b", "c", "d", "e"] {
        create(&s, name, "default", "a").await;
    }
    let list = format!("{SERVING}/namespaces/default/services?limit=2");
    let (_, first) = call(&s, "GET", &list, "", String::new()).await;
    let mut names: Vec<String> = vec![];
    let mut page = first.clone();
    loop {
        names.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_string()),
        );
        assert_eq!(
            page["metadata"]["resourceVersion"],
            first["metadata"]["resourceVersion"]
        );
        let Some(token) = page["metadata"]["continue"].as_str() else {
            break;
        };
        // A change between pages does not repeat or skip anything already listed.
        create(&s, &format!("z{}", names.len()), "default", "a").await;
        let (code, next) = call(&s, "GET", &format!("{list}&continue={token}"), "", String::new()).await;
        assert_eq!(code, StatusCode::OK, "{next}");
        page = next;
    }
    assert_eq!(&names[..5], ["a", "b", "c", "d", "e"]);
    let (code, bad) = call(&s, "GET", &format!("{list}&continue=nonsense"), "", String::new()).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        bad["message"]
            .as_str()
            .unwrap()
            .contains("not a token this server gave out"),
        "{bad}"
    );
}

/// Records an event about `object` (`Kind/name`) in `service`'s log, as the controllers do.
fn record(s: &AdminState, ns: &str, service: &str, object: &str, reason: &str) {
    let event = revisor_store::Event::normal(object.to_string(), reason, format!("{reason} happened"));
    s.store.write(|tx| tx.record(ns, service, &event)).unwrap();
}

/// Issue 16: events are watched as they are listed (`kubectl get events -w`, client-go informers):
/// from a list's version, in both shapes, selected by field, and as Table rows.
#[tokio::test]
async fn events_are_watched_from_a_lists_version_in_both_shapes_and_as_tables() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(&dir.path().join("s.redb"));
    record(&s, "default", "web", "Revision/web-00001", "Ready");
    let (code, list) = call(&s, "GET", "/api/v1/namespaces/default/events", "", String::new()).await;
    assert_eq!(code, StatusCode::OK, "{list}");
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    let version = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("a list says its version")
        .to_string();
    let mut core = Watch::at(
        &s,
        &format!(
            "/api/v1/namespaces/default/events?watch=true&resourceVersion={version}&fieldSelector=involvedObject.kind%3DService"
        ),
        None,
    )
    .await;
    let mut v1 = Watch::at(
        &s,
        &format!("/apis/events.k8s.io/v1/events?watch=true&resourceVersion={version}"),
        None,
    )
    .await;
    let mut rows = Watch::at(
        &s,
        &format!("/api/v1/events?watch=true&resourceVersion={version}"),
        Some("application/json;as=Table;v=v1;g=meta.k8s.io"),
    )
    .await;
    record(&s, "default", "web", "Revision/web-00002", "Created");
    record(&s, "other", "api", "Service/api", "Ready");
    record(&s, "default", "web", "Service/web", "Ready");

    // The namespaced core watch, Services only: the last one alone.
    let e = core.next_value().await.unwrap();
    assert_eq!(e["type"], "ADDED", "{e}");
    assert_eq!(e["object"]["involvedObject"]["kind"], "Service", "{e}");
    assert_eq!(e["object"]["involvedObject"]["name"], "web", "{e}");
    assert_eq!(e["object"]["reason"], "Ready", "{e}");
    assert!(
        e["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > version.parse::<u64>().unwrap()
    );
    // events.k8s.io, every namespace: all three, in order, in that shape.
    let seen: Vec<(String, String)> = [
        v1.next_value().await.unwrap(),
        v1.next_value().await.unwrap(),
        v1.next_value().await.unwrap(),
    ]
    .iter()
    .map(|e| {
        assert_eq!(e["object"]["apiVersion"], "events.k8s.io/v1", "{e}");
        (
            e["object"]["regarding"]["namespace"].as_str().unwrap().to_string(),
            e["object"]["regarding"]["name"].as_str().unwrap().to_string(),
        )
    })
    .collect();
    assert_eq!(
        seen,
        [
            ("default".into(), "web-00002".into()),
            ("other".into(), "api".into()),
            ("default".into(), "web".into())
        ]
    );
    // As Tables: one row per event, kubectl's columns.
    let e = rows.next_value().await.unwrap();
    assert_eq!(e["object"]["kind"], "Table", "{e}");
    assert_eq!(e["object"]["rows"][0]["cells"][2], "Created", "{e}");
    assert_eq!(e["object"]["rows"][0]["cells"][3], "revision/web-00002", "{e}");
}
