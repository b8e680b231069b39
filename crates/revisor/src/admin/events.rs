//! The events revisor records, as Kubernetes' core v1 Events (`/api/v1/events` and
//! `/api/v1/namespaces/{ns}/events`), so that `kubectl get events` shows them: listed, selected by
//! `fieldSelector` on the object they are about, type and reason, and as Tables.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use revisor_api::selector::FieldSelector;
use revisor_store::{Event, EventType};
use serde_json::{json, Value};

use super::collection::wants_table;
use super::handlers::blocking;
use super::{AdminState, ApiError};

/// The fields an event can be selected by.
const FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "involvedObject.kind",
    "involvedObject.name",
    "involvedObject.namespace",
    "type",
    "reason",
];

/// One recorded event as a core v1 Event.
fn event(service_key: &str, seq: u64, e: &Event) -> Value {
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
    ns: Option<String>,
    params: HashMap<String, String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let selector = FieldSelector::parse_over(params.get("fieldSelector").map(String::as_str).unwrap_or(""), FIELDS)
        .map_err(ApiError::BadRequest)?;
    if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return Err(ApiError::BadRequest(
            "events are listed, not watched: list them again (revisor events NAME --watch follows one service)".into(),
        ));
    }
    let recorded = blocking(move || Ok(s.store.all_events(ns.as_deref())?)).await?;
    let items: Vec<Value> = recorded
        .iter()
        .map(|(key, seq, e)| event(key, *seq, e))
        .filter(|v| {
            selector.matches_by(|field| {
                let pointer = format!("/{}", field.replace('.', "/"));
                v.pointer(&pointer).and_then(Value::as_str).unwrap_or("")
            })
        })
        .collect();
    if wants_table(&headers) {
        let column = |name: &str, description: &str| json!({ "name": name, "type": "string", "format": "", "description": description, "priority": 0 });
        let rows: Vec<Value> = items
            .iter()
            .map(|v| {
                let age = chrono::DateTime::parse_from_rfc3339(v["lastTimestamp"].as_str().unwrap_or(""))
                    .ok()
                    .map(|t| t.with_timezone(&chrono::Utc));
                json!({
                    "cells": [
                        crate::columns::age(age),
                        v["type"],
                        v["reason"],
                        format!("{}/{}", v["involvedObject"]["kind"].as_str().unwrap_or("").to_lowercase(), v["involvedObject"]["name"].as_str().unwrap_or("")),
                        v["message"],
                    ],
                    "object": { "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": v["metadata"] },
                })
            })
            .collect();
        return Ok(Json(json!({
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {},
            "columnDefinitions": [
                column("LAST SEEN", "How long ago it happened."),
                column("TYPE", "Normal or Warning."),
                column("REASON", "Why, in a word."),
                column("OBJECT", "What it is about."),
                column("MESSAGE", "What happened."),
            ],
            "rows": rows,
        }))
        .into_response());
    }
    Ok(Json(json!({ "apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": items })).into_response())
}

pub(crate) async fn all(
    State(s): State<AdminState>,
    Query(p): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    list(s, None, p, headers).await
}

pub(crate) async fn namespaced(
    State(s): State<AdminState>,
    Path(ns): Path<String>,
    Query(p): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    list(s, Some(ns), p, headers).await
}
