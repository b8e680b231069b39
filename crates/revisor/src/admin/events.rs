//! The events revisor records, as Kubernetes' core v1 Events (`/api/v1/events` and
//! `/api/v1/namespaces/{ns}/events`, so that `kubectl get events` shows them) and as
//! `events.k8s.io/v1` Events (`/apis/events.k8s.io/v1/...`): listed and watched, selected by
//! `fieldSelector` on the object they are about, type and reason, and as Tables.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use revisor_api::selector::FieldSelector;
use revisor_store::{Event, EventType};
use serde_json::{json, Value};

use super::collection::{bookmark_of, event_line, flag, streamed, wants_table, WatchOptions};
use super::handlers::blocking;
use super::{AdminState, ApiError};

/// The fields an events.k8s.io event can be selected by.
const EVENTS_V1_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "regarding.kind",
    "regarding.name",
    "regarding.namespace",
    "type",
    "reason",
    "reportingController",
];

/// The fields a core event can be selected by.
const FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "involvedObject.kind",
    "involvedObject.name",
    "involvedObject.namespace",
    "type",
    "reason",
];

/// The two shapes an event is served in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `v1` Event (`/api/v1`): `involvedObject`, `message`.
    Core,
    /// `events.k8s.io/v1` Event: `regarding`, `note`, `reportingController`.
    EventsV1,
}

/// One recorded event in `shape`.
fn event(shape: Shape, service_key: &str, seq: u64, e: &Event) -> Value {
    let core = core_event(service_key, seq, e);
    match shape {
        Shape::Core => core,
        Shape::EventsV1 => json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": core["metadata"],
            "eventTime": e.time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "regarding": core["involvedObject"],
            "note": core["message"],
            "reason": core["reason"],
            "type": core["type"],
            "action": core["reason"],
            "reportingController": "revisor.dev/revisor",
            "reportingInstance": "revisor",
        }),
    }
}

/// One recorded event as a core v1 Event.
fn core_event(service_key: &str, seq: u64, e: &Event) -> Value {
    let (ns, service) = service_key.split_once('/').unwrap_or(("", service_key));
    let (kind, name) = e.object.split_once('/').unwrap_or(("Service", &e.object));
    let api_version = if kind == "Rollout" {
        revisor_api::rollout::ROLLOUT_API_VERSION
    } else {
        "serving.knative.dev/v1"
    };
    let time = e.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": { "name": format!("{service}.{seq:x}"), "namespace": ns, "creationTimestamp": time, "resourceVersion": seq.to_string() },
        "involvedObject": { "apiVersion": api_version, "kind": kind, "name": name, "namespace": ns },
        "reason": e.reason,
        "message": e.message,
        "type": match e.type_ { EventType::Normal => "Normal", EventType::Warning => "Warning" },
        "source": { "component": "revisor" },
        "firstTimestamp": time,
        "lastTimestamp": time,
        "count": 1,
    })
}

async fn list(
    s: AdminState,
    shape: Shape,
    ns: Option<String>,
    params: HashMap<String, String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let fields = match shape {
        Shape::Core => FIELDS,
        Shape::EventsV1 => EVENTS_V1_FIELDS,
    };
    let selector = FieldSelector::parse_over(params.get("fieldSelector").map(String::as_str).unwrap_or(""), fields)
        .map_err(ApiError::BadRequest)?;
    let table = wants_table(&headers);
    let keep = move |v: &Value| {
        selector.matches_by(|field| {
            let pointer = format!("/{}", field.replace('.', "/"));
            v.pointer(&pointer).and_then(Value::as_str).unwrap_or("")
        })
    };
    if flag(&params, "watch")? {
        return Ok(watch(s, shape, ns, WatchOptions::parse(&params)?, table, keep));
    }
    let (recorded, version) = blocking(move || Ok(s.store.all_events_versioned(ns.as_deref())?)).await?;
    let items: Vec<Value> = recorded
        .iter()
        .map(|(key, seq, e)| event(shape, key, *seq, e))
        .filter(keep)
        .collect();
    let meta = json!({ "resourceVersion": version.to_string() });
    if table {
        return Ok(Json(as_table(&items, meta)).into_response());
    }
    let api_version = match shape {
        Shape::Core => "v1",
        Shape::EventsV1 => "events.k8s.io/v1",
    };
    Ok(
        Json(json!({ "apiVersion": api_version, "kind": "EventList", "metadata": meta, "items": items }))
            .into_response(),
    )
}

/// A watch of events: those recorded after the version it starts from (or all, then those), each as
/// an ADDED event, selected as a list selects them.
fn watch(
    s: AdminState,
    shape: Shape,
    ns: Option<String>,
    options: WatchOptions,
    table: bool,
    keep: impl Fn(&Value) -> bool + Send + Sync + 'static,
) -> Response {
    let line = move |v: Value| {
        let v = if table {
            as_table(std::slice::from_ref(&v), json!({}))
        } else {
            v
        };
        event_line("ADDED", v.to_string().as_bytes())
    };
    let keep = std::sync::Arc::new(keep);
    let (reader, namespace, kept) = (s.store.clone(), ns.clone(), keep.clone());
    let initial = move || -> Result<(Vec<Bytes>, u64), String> {
        let (recorded, version) = reader
            .all_events_versioned(namespace.as_deref())
            .map_err(|e| e.to_string())?;
        let lines = recorded
            .iter()
            .map(|(key, seq, e)| event(shape, key, *seq, e))
            .filter(|v| kept(v))
            .map(line)
            .collect();
        Ok((lines, version))
    };
    let change = move |e: &revisor_store::WatchEvent| -> Option<Bytes> {
        if e.kind != revisor_store::Kind::Event || ns.as_deref().is_some_and(|n| n != e.namespace) {
            return None;
        }
        let recorded: Event = serde_json::from_slice(&e.object).ok()?;
        let v = event(
            shape,
            &format!("{}/{}", e.namespace, e.name),
            e.resource_version,
            &recorded,
        );
        keep(&v).then(|| line(v))
    };
    let api_version = if shape == Shape::Core { "v1" } else { "events.k8s.io/v1" };
    let bookmark = move |version: u64, end: bool| bookmark_of("Event", api_version, version, end);
    streamed(s.store.event_history().clone(), options, initial, change, bookmark)
}

/// Events as a Table with kubectl's columns for them.
fn as_table(items: &[Value], meta: Value) -> Value {
    let column = |name: &str, description: &str| json!({ "name": name, "type": "string", "format": "", "description": description, "priority": 0 });
    let rows: Vec<Value> = items
        .iter()
        .map(|v| {
            let time = v.get("lastTimestamp").or(v.get("eventTime")).and_then(Value::as_str);
            let age = chrono::DateTime::parse_from_rfc3339(time.unwrap_or(""))
                .ok()
                .map(|t| t.with_timezone(&chrono::Utc));
            let about = v.get("involvedObject").or(v.get("regarding")).cloned().unwrap_or_default();
            let message = v.get("message").or(v.get("note")).cloned().unwrap_or_default();
            json!({
                "cells": [
                    crate::columns::age(age),
                    v["type"],
                    v["reason"],
                    format!("{}/{}", about["kind"].as_str().unwrap_or("").to_lowercase(), about["name"].as_str().unwrap_or("")),
                    message,
                ],
                "object": { "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": v["metadata"] },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": [
            column("LAST SEEN", "How long ago it happened."),
            column("TYPE", "Normal or Warning."),
            column("REASON", "Why, in a word."),
            column("OBJECT", "What it is about."),
            column("MESSAGE", "What happened."),
        ],
        "rows": rows,
    })
}

/// The shape a route serves: `V1` for `events.k8s.io/v1`, else core v1.
const fn shape(v1: bool) -> Shape {
    if v1 {
        Shape::EventsV1
    } else {
        Shape::Core
    }
}

pub(crate) async fn all<const V1: bool>(
    State(s): State<AdminState>,
    Query(p): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    list(s, shape(V1), None, p, headers).await
}

pub(crate) async fn namespaced<const V1: bool>(
    State(s): State<AdminState>,
    Path(ns): Path<String>,
    Query(p): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    list(s, shape(V1), Some(ns), p, headers).await
}
