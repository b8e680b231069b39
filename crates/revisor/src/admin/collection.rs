//! Lists and watches of a kind, as Kubernetes serves them: `labelSelector` (the whole syntax),
//! `fieldSelector` (name, namespace), `limit` and `continue`, a `resourceVersion` to watch from,
//! `watch=true` streaming `ADDED`/`MODIFIED`/`DELETED`/`BOOKMARK` events (410 Gone, as an `ERROR`
//! event, for a version older than the store's history), and `kubectl get`'s Tables (`as=Table`) with
//! the columns `revisor get` prints.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use revisor_api::selector::{FieldSelector, LabelSelector};
use revisor_api::{Configuration, ObjectMeta, Revision, Rollout, Service};
use revisor_store::{Object, Since, Store};
use serde_json::{json, Value};

use super::handlers::blocking;
use super::{AdminState, ApiError};
use crate::columns;

/// How long a watch runs when the client does not say (Kubernetes picks 30 to 60 minutes).
const WATCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How often a quiet watch that asked for bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(10);

/// A kind that can be listed and watched: its API version and its Table columns.
pub(crate) trait Listed: Object + Send + Sync + 'static {
    const API_VERSION: &'static str;
    const COLUMNS: &'static [&'static str];
    /// The row's cells; `service` finds a service, for the columns that show its status.
    fn cells(&self, service: &mut dyn FnMut(&str, &str) -> Option<Service>) -> Vec<String>;
}

impl Listed for Service {
    const API_VERSION: &'static str = "serving.knative.dev/v1";
    const COLUMNS: &'static [&'static str] = &columns::SERVICE;
    fn cells(&self, _: &mut dyn FnMut(&str, &str) -> Option<Service>) -> Vec<String> {
        columns::service_cells(self)
    }
}

impl Listed for Revision {
    const API_VERSION: &'static str = "serving.knative.dev/v1";
    const COLUMNS: &'static [&'static str] = &columns::REVISION;
    fn cells(&self, service: &mut dyn FnMut(&str, &str) -> Option<Service>) -> Vec<String> {
        let svc = self
            .service_name()
            .and_then(|name| service(&self.metadata.namespace, name));
        columns::revision_cells(self, svc.as_ref())
    }
}

impl Listed for Configuration {
    const API_VERSION: &'static str = "serving.knative.dev/v1";
    const COLUMNS: &'static [&'static str] = &["NAME", "LATESTCREATED", "LATESTREADY", "AGE"];
    fn cells(&self, _: &mut dyn FnMut(&str, &str) -> Option<Service>) -> Vec<String> {
        let st = self.status();
        vec![
            self.metadata.name.clone(),
            st.latest_created_revision_name.unwrap_or_default(),
            st.latest_ready_revision_name.unwrap_or_default(),
            columns::age(self.metadata.creation_timestamp),
        ]
    }
}

impl Listed for Rollout {
    const API_VERSION: &'static str = revisor_api::rollout::ROLLOUT_API_VERSION;
    const COLUMNS: &'static [&'static str] = &columns::ROLLOUT;
    fn cells(&self, _: &mut dyn FnMut(&str, &str) -> Option<Service>) -> Vec<String> {
        columns::rollout_cells(self)
    }
}

/// What a Table row carries of its object (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Include {
    None,
    Metadata,
    Object,
}

/// A list or watch request's parameters, checked.
pub(crate) struct ListQuery {
    labels: LabelSelector,
    fields: FieldSelector,
    /// The selectors as given, for a server this one relays a watch to.
    pub(crate) label_text: String,
    pub(crate) field_text: String,
    limit: Option<usize>,
    /// From `continue`: the version of the first page and the last key given.
    after: Option<(u64, String)>,
    watch: bool,
    pub(crate) options: WatchOptions,
    /// `Some` when the client asked for a Table.
    table: Option<Include>,
}

impl ListQuery {
    pub(crate) fn parse(params: &HashMap<String, String>, headers: &HeaderMap) -> Result<Self, ApiError> {
        let bad = ApiError::BadRequest;
        let text = |name: &str| params.get(name).map(String::as_str).unwrap_or("");
        let labels = LabelSelector::parse(text("labelSelector")).map_err(bad)?;
        let fields = FieldSelector::parse(text("fieldSelector")).map_err(bad)?;
        let limit = match text("limit") {
            "" | "0" => None,
            n => Some(
                n.parse::<usize>()
                    .map_err(|_| bad(format!("limit={n:?}: want a whole number")))?,
            ),
        };
        let after = match text("continue") {
            "" => None,
            token => Some(decode_continue(token).ok_or_else(|| {
                bad(format!(
                    "continue={token:?} is not a token this server gave out: list again without it"
                ))
            })?),
        };
        let include = match text("includeObject") {
            "" | "Metadata" => Include::Metadata,
            "None" => Include::None,
            "Object" => Include::Object,
            other => return Err(bad(format!("includeObject={other:?}: want None, Metadata or Object"))),
        };
        Ok(ListQuery {
            labels,
            fields,
            label_text: text("labelSelector").to_string(),
            field_text: text("fieldSelector").to_string(),
            limit,
            after,
            watch: flag(params, "watch")?,
            options: WatchOptions::parse(params)?,
            table: wants_table(headers).then_some(include),
        })
    }

    /// Whether this is a watch (`watch=true`).
    pub(crate) fn watches(&self) -> bool {
        self.watch
    }

    fn matches(&self, meta: &ObjectMeta) -> bool {
        self.fields.matches(&meta.namespace, &meta.name) && self.labels.matches(meta.labels.as_ref())
    }
}

/// Whether one media range of the Accept header, split into its parameters, satisfies `wanted`.
pub(crate) fn accepts(headers: &HeaderMap, wanted: impl Fn(&[&str]) -> bool) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| wanted(&range.split(';').map(str::trim).collect::<Vec<_>>()))
}

/// Whether the Accept header asks for a `meta.k8s.io` Table (kubectl's `get` does, with JSON as its
/// fallback).
pub(crate) fn wants_table(headers: &HeaderMap) -> bool {
    accepts(headers, |params| {
        params.contains(&"as=Table") && !params.iter().any(|p| p.starts_with("g=") && *p != "g=meta.k8s.io")
    })
}

fn encode_continue(version: u64, key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{version}/{key}"))
}

fn decode_continue(token: &str) -> Option<(u64, String)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (version, key) = text.split_once('/')?;
    Some((version.parse().ok()?, key.to_string()))
}

/// The list answer for objects already read (in key order) at `version`: filtered, one page of them,
/// as a List or a Table.
pub(crate) fn respond<T: Listed>(
    items: Vec<T>,
    version: Option<u64>,
    q: &ListQuery,
    mut service: impl FnMut(&str, &str) -> Option<Service>,
) -> Response {
    let key = |m: &ObjectMeta| format!("{}/{}", m.namespace, m.name);
    let mut items: Vec<T> = items
        .into_iter()
        .filter(|o| q.matches(o.meta()))
        .filter(|o| q.after.as_ref().is_none_or(|(_, last)| key(o.meta()) > *last))
        .collect();
    // Every page says the version of the first, so that a watch from it misses nothing.
    let version = q.after.as_ref().map(|(v, _)| *v).or(version);
    let mut meta = json!({});
    if let Some(v) = version {
        meta["resourceVersion"] = json!(v.to_string());
    }
    // Pages need a version to continue from: without one (a cluster's caches) the list is whole.
    if let Some(limit) = q.limit.filter(|l| items.len() > *l && version.is_some()) {
        let remaining = items.len() - limit;
        items.truncate(limit);
        if let (Some(v), Some(last)) = (version, items.last()) {
            meta["continue"] = json!(encode_continue(v, &key(last.meta())));
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    match q.table {
        Some(include) => Json(table(&items, include, meta, &mut service)).into_response(),
        None => Json(json!({
            "apiVersion": T::API_VERSION,
            "kind": format!("{}List", T::KIND_NAME),
            "metadata": meta,
            "items": items,
        }))
        .into_response(),
    }
}

fn table<T: Listed>(
    items: &[T],
    include: Include,
    meta: Value,
    service: &mut dyn FnMut(&str, &str) -> Option<Service>,
) -> Value {
    let columns: Vec<Value> = T::COLUMNS
        .iter()
        .map(|c| {
            let mut d = json!({ "name": c, "type": "string", "format": "", "description": columns::description(c), "priority": 0 });
            if *c == "NAME" {
                d["format"] = json!("name");
            }
            d
        })
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut row = json!({ "cells": o.cells(service) });
            match include {
                Include::None => {}
                Include::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o.meta(),
                    })
                }
                Include::Object => row["object"] = serde_json::to_value(o).unwrap_or(Value::Null),
            }
            row
        })
        .collect();
    json!({ "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": columns, "rows": rows })
}

/// A list or watch of `T` in `ns` (every namespace with `None`) from the local store.
pub(crate) async fn local<T: Listed>(s: AdminState, ns: Option<String>, q: ListQuery) -> Result<Response, ApiError> {
    if q.watch {
        return Ok(watch::<T>(s.store, ns, q));
    }
    blocking(move || {
        // One service's revisions are one range of keys: a revision's name starts with its service's.
        let prefix = (T::KIND_NAME == "Revision")
            .then(|| q.labels.required_value(revisor_api::revision::labels::SERVICE))
            .flatten()
            .map(|svc| format!("{svc}-"));
        let (items, version) = s.store.list_versioned::<T>(ns.as_deref(), prefix.as_deref())?;
        let store = s.store.clone();
        Ok(respond(items, Some(version), &q, |ns, name| {
            store.get::<Service>(ns, name).ok().flatten()
        }))
    })
    .await
}

pub(crate) fn event_line(kind: &str, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + 32);
    line.extend_from_slice(format!("{{\"type\":\"{kind}\",\"object\":").as_bytes());
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

fn bookmark<T: Listed>(version: u64, initial_events_end: bool) -> Bytes {
    bookmark_of(T::KIND_NAME, T::API_VERSION, version, initial_events_end)
}

/// A watch's BOOKMARK of `kind` at `version`; `initial_events_end` marks the end of the initial events.
pub(crate) fn bookmark_of(kind: &str, api_version: &str, version: u64, initial_events_end: bool) -> Bytes {
    let mut meta = json!({ "resourceVersion": version.to_string() });
    if initial_events_end {
        meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    let object = json!({ "kind": kind, "apiVersion": api_version, "metadata": meta });
    event_line("BOOKMARK", object.to_string().as_bytes())
}

/// What a watch was asked for, beside what it watches.
#[derive(Clone)]
pub(crate) struct WatchOptions {
    pub(crate) resource_version: Option<String>,
    pub(crate) timeout: Duration,
    pub(crate) bookmarks: bool,
    pub(crate) initial_events: bool,
}

impl WatchOptions {
    /// `resourceVersion`, `timeoutSeconds`, `allowWatchBookmarks` and `sendInitialEvents`.
    pub(crate) fn parse(params: &HashMap<String, String>) -> Result<WatchOptions, ApiError> {
        // 0 is the default, as in Kubernetes; a watch is never asked to run more than a day.
        let timeout = match params.get("timeoutSeconds").map(String::as_str).unwrap_or("") {
            "" | "0" => WATCH_TIMEOUT,
            n => Duration::from_secs(
                n.parse::<u64>()
                    .map_err(|_| ApiError::BadRequest(format!("timeoutSeconds={n:?}: want a whole number")))?
                    .min(24 * 3600),
            ),
        };
        Ok(WatchOptions {
            resource_version: params.get("resourceVersion").cloned().filter(|v| !v.is_empty()),
            timeout,
            bookmarks: flag(params, "allowWatchBookmarks")?,
            initial_events: flag(params, "sendInitialEvents")?,
        })
    }
}

/// A boolean query parameter: absent or empty is false.
pub(crate) fn flag(params: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match params.get(name).map(String::as_str) {
        None | Some("") | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!("{name}={other:?}: want true or false"))),
    }
}

/// The streamed answer of a watch of `T`: events as they happen, one JSON object per line.
fn watch<T: Listed>(store: Store, ns: Option<String>, q: ListQuery) -> Response {
    let options = q.options.clone();
    let q = std::sync::Arc::new(q);
    let (reader, namespace, query) = (store.clone(), ns.clone(), q.clone());
    let initial = move || -> Result<(Vec<Bytes>, u64), String> {
        let (items, version) = reader
            .list_versioned::<T>(namespace.as_deref(), None)
            .map_err(|e| e.to_string())?;
        let lines = items
            .iter()
            .filter(|o| query.matches(o.meta()))
            .map(|o| {
                event_line(
                    "ADDED",
                    &encoded(&query, o, &serde_json::to_vec(o).unwrap_or_default(), &reader),
                )
            })
            .collect();
        Ok((lines, version))
    };
    let reader = store.clone();
    let change = move |e: &revisor_store::WatchEvent| -> Option<Bytes> {
        if e.kind != T::KIND || ns.as_deref().is_some_and(|n| n != e.namespace) {
            return None;
        }
        let obj = serde_json::from_slice::<T>(&e.object).ok()?;
        // As Kubernetes' watch cache: an object that enters the selection is ADDED, one that leaves
        // it DELETED (by its labels before the change).
        use revisor_store::WatchType;
        let now = q.matches(obj.meta());
        let before = match e.kind_of_change {
            WatchType::Added => false,
            WatchType::Modified => {
                q.fields.matches(&e.namespace, &e.name) && q.labels.matches(e.previous_labels.as_ref())
            }
            WatchType::Deleted => now,
        };
        let kind = match (e.kind_of_change, before, now) {
            (WatchType::Deleted, true, _) => "DELETED",
            (_, false, true) => "ADDED",
            (_, true, true) => "MODIFIED",
            (_, true, false) => "DELETED",
            _ => return None,
        };
        Some(event_line(kind, &encoded(&q, &obj, &e.object, &reader)))
    };
    streamed(store.history().clone(), options, initial, change, bookmark::<T>)
}

/// A watch another server streams (a cluster's API server), as (type, object) pairs: passed on, the
/// objects as Table rows when the client asked for a Table.
pub(crate) fn relay<T: Listed>(
    events: impl futures_util::Stream<Item = (&'static str, Value)> + Send + 'static,
    q: ListQuery,
    mut service: impl FnMut(&str, &str) -> Option<Service> + Send + 'static,
) -> Response {
    use futures_util::StreamExt;
    let body = events.map(move |(kind, object)| {
        let object = match (kind, q.table) {
            ("ADDED" | "MODIFIED" | "DELETED", Some(include)) => match T::deserialize(&object) {
                Ok(o) => table(std::slice::from_ref(&o), include, json!({}), &mut service),
                Err(_) => object,
            },
            _ => object,
        };
        Ok::<Bytes, Infallible>(event_line(kind, object.to_string().as_bytes()))
    });
    ([(header::CONTENT_TYPE, "application/json")], Body::from_stream(body)).into_response()
}

/// The encoded object of a watch event: itself, or a Table with its one row.
fn encoded<T: Listed>(q: &ListQuery, obj: &T, raw: &[u8], store: &Store) -> Vec<u8> {
    match q.table {
        None => raw.to_vec(),
        Some(include) => {
            let mut service = |ns: &str, name: &str| store.get::<Service>(ns, name).ok().flatten();
            table(std::slice::from_ref(obj), include, json!({}), &mut service)
                .to_string()
                .into_bytes()
        }
    }
}

/// A watch's streamed answer, one JSON object per line: from no version, what `initial` lists (it
/// reads the store: it runs off the async threads) and the version it read at; from a version, and
/// then, each later change in the store's history that `change` turns into a line; bookmarks when
/// asked for, until the watch's timeout or the client leaves.
pub(crate) fn streamed(
    history: revisor_store::History,
    options: WatchOptions,
    initial: impl FnOnce() -> Result<(Vec<Bytes>, u64), String> + Send + 'static,
    change: impl FnMut(&revisor_store::WatchEvent) -> Option<Bytes> + Send + 'static,
    bookmark: impl Fn(u64, bool) -> Bytes + Send + 'static,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        let _ = run_watch(history, options, initial, change, bookmark, &tx).await;
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx))
    });
    ([(header::CONTENT_TYPE, "application/json")], Body::from_stream(body)).into_response()
}

async fn run_watch(
    history: revisor_store::History,
    options: WatchOptions,
    initial: impl FnOnce() -> Result<(Vec<Bytes>, u64), String> + Send + 'static,
    mut change: impl FnMut(&revisor_store::WatchEvent) -> Option<Bytes>,
    bookmark: impl Fn(u64, bool) -> Bytes,
    tx: &tokio::sync::mpsc::Sender<Bytes>,
) -> Result<(), tokio::sync::mpsc::error::SendError<Bytes>> {
    let mut woken = history.subscribe();
    let deadline = tokio::time::Instant::now() + options.timeout;
    let mut from = match options.resource_version.as_deref() {
        None | Some("0") => {
            let listed = tokio::task::spawn_blocking(initial)
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
            let (lines, version) = match listed {
                Ok(r) => r,
                Err(e) => return tx.send(expired_or_failed(500, "InternalError", &e)).await,
            };
            for line in lines {
                tx.send(line).await?;
            }
            if options.initial_events {
                tx.send(bookmark(version, true)).await?;
            }
            version
        }
        Some(v) => match v.parse::<u64>() {
            Ok(v) => v,
            Err(_) => {
                let message = format!("resourceVersion {v:?} is not a version this server gave out");
                return tx.send(expired_or_failed(400, "BadRequest", &message)).await;
            }
        },
    };
    loop {
        match history.since(from) {
            Since::TooOld { oldest } => {
                let message = format!(
                    "too old resource version: {from} ({oldest}): the server keeps the last {} changes; list again",
                    revisor_store::WATCH_HISTORY
                );
                return tx.send(expired_or_failed(410, "Expired", &message)).await;
            }
            Since::Events(events) => {
                for e in events {
                    from = e.resource_version;
                    if let Some(line) = change(&e) {
                        tx.send(line).await?;
                    }
                }
            }
        }
        let quiet = tokio::time::sleep(BOOKMARK_EVERY);
        tokio::select! {
            changed = woken.changed() => if changed.is_err() { return Ok(()) },
            _ = quiet, if options.bookmarks => tx.send(bookmark(from, false)).await?,
            _ = tokio::time::sleep_until(deadline) => {
                if options.bookmarks {
                    tx.send(bookmark(from, false)).await?;
                }
                return Ok(());
            }
            _ = tx.closed() => return Ok(()),
        }
    }
}

/// A watch's ERROR event carrying a Status.
fn expired_or_failed(code: u16, reason: &str, message: &str) -> Bytes {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    event_line("ERROR", status.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(params: &[(&str, &str)], accept: Option<&str>) -> Result<ListQuery, ApiError> {
        let params = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut headers = HeaderMap::new();
        if let Some(a) = accept {
            headers.insert(header::ACCEPT, a.parse().unwrap());
        }
        ListQuery::parse(&params, &headers)
    }

    fn service(name: &str, labels: &[(&str, &str)]) -> Service {
        let mut s = Service::default();
        s.metadata.name = name.into();
        s.metadata.namespace = "default".into();
        for (k, v) in labels {
            s.metadata.set_label(k, *v);
        }
        s
    }

    async fn body(r: Response) -> Value {
        let bytes = axum::body::to_bytes(r.into_body(), usize::MAX).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn lists_page_filter_and_become_tables() {
        let items = || {
            vec![
                service("a", &[("team", "x")]),
                service("b", &[]),
                service("c", &[("team", "y")]),
            ]
        };
        let names = |v: &Value| -> Vec<String> {
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
                .collect()
        };
        let q = query(&[("labelSelector", "team in (x,y)")], None).unwrap();
        assert_eq!(
            names(&body(respond(items(), Some(7), &q, |_, _| None)).await),
            ["a", "c"]
        );
        let q = query(&[("fieldSelector", "metadata.name!=a")], None).unwrap();
        assert_eq!(
            names(&body(respond(items(), Some(7), &q, |_, _| None)).await),
            ["b", "c"]
        );

        let page1 = body(respond(
            items(),
            Some(7),
            &query(&[("limit", "2")], None).unwrap(),
            |_, _| None,
        ))
        .await;
        assert_eq!(names(&page1), ["a", "b"]);
        assert_eq!(page1["metadata"]["remainingItemCount"], 1);
        let token = page1["metadata"]["continue"].as_str().unwrap();
        // The next page is read later, at version 9, and still says the first page's version.
        let q = query(&[("limit", "2"), ("continue", token)], None).unwrap();
        let page2 = body(respond(items(), Some(9), &q, |_, _| None)).await;
        assert_eq!(names(&page2), ["c"]);
        assert_eq!(page2["metadata"]["resourceVersion"], "7");
        assert!(page2["metadata"].get("continue").is_none());

        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        let t = body(respond(
            items(),
            Some(7),
            &query(&[], Some(kubectl)).unwrap(),
            |_, _| None,
        ))
        .await;
        assert_eq!(t["kind"], "Table");
        let heads: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(heads, columns::SERVICE);
        assert_eq!(t["rows"][2]["cells"][0], "c");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert!(query(&[], Some("application/json")).unwrap().table.is_none());

        for (bad, why) in [
            (("limit", "x"), "limit"),
            (("continue", "garbage!"), "continue"),
            (("labelSelector", "a in b"), "labelSelector"),
            (("fieldSelector", "spec.x=1"), "fieldSelector"),
            (("watch", "maybe"), "watch"),
        ] {
            let err = query(&[bad], None).err().unwrap().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}
