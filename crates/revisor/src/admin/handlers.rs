//! Handlers of the admin API: decode, admit, call the controller's admission or the store, encode.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use revisor_api::{admit_service, read_documents, Configuration, Revision, Rollout, Service};
use revisor_controller::admission::{ApplyMode, Writer};
use revisor_controller::DeleteOptions;
use revisor_store::Object;
use serde_json::{json, Value};

use super::backend::{Backend, Change, Kind, Write};
use super::collection::{self, ListQuery};
use super::patch::{read_modify_write, with_warnings, FieldValidation, Patch};
use super::{rollouts, AdminState, ApiError};

pub async fn healthz() -> &'static str {
    "ok"
}

/// Runs blocking store work off the async threads.
pub(crate) async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, ApiError> + Send + 'static,
) -> Result<R, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("worker failed: {e}")))?
}

async fn get_one<T: Object + Send + 'static>(s: AdminState, ns: String, name: String) -> Result<Value, ApiError> {
    blocking(move || {
        s.store
            .get::<T>(&ns, &name)?
            .map(|o| serde_json::to_value(o).unwrap_or(Value::Null))
            .ok_or_else(|| ApiError::NotFound(format!("{} \"{ns}/{name}\" not found", T::KIND_NAME)))
    })
    .await
}

/// A write of a status subresource: status is revisor's controllers' to write.
pub async fn write_status(uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{} is written by revisor's controllers (it is computed from the spec and what runs); change the \
         spec instead",
        uri.path()
    ))
}

/// The single document of a request body, as JSON or YAML by its content type.
pub(crate) fn body_document(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge(format!("request body is larger than {} bytes", super::MAX_BODY_BYTES))
        }
        _ => ApiError::BadRequest(format!("cannot read the request body: {e}")),
    })?;
    // No default for a browser's request: a body without an explicit type (what a cross-site form or
    // `fetch` sends as a "simple request", with the login cookie) is refused. A request with an
    // `Authorization` header cannot come from another site's page without a preflight (which is never
    // answered), so there the type defaults to JSON, as Kubernetes' does (Python's client sends none).
    let bearer = headers.contains_key(header::AUTHORIZATION);
    let Some(ctype) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .or(bearer.then_some("application/json"))
    else {
        return Err(ApiError::UnsupportedMediaType(
            "the request body has no Content-Type: send application/json, application/yaml or \
             application/apply-patch+yaml"
                .into(),
        ));
    };
    let mime = ctype.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let mime = mime.as_str();
    if !matches!(
        mime,
        "application/json" | "application/yaml" | "application/apply-patch+yaml" | "text/yaml" | "application/x-yaml"
    ) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "content type {mime:?} is not supported: send application/json, application/yaml or application/apply-patch+yaml"
        )));
    }
    let text = std::str::from_utf8(&body).map_err(|_| ApiError::BadRequest("request body is not UTF-8".into()))?;
    let mut docs = read_documents(text).map_err(|e| ApiError::BadRequest(format!("request body: {e}")))?;
    match docs.len() {
        1 => Ok(docs.remove(0).value),
        0 => Err(ApiError::BadRequest("request body is empty".into())),
        n => Err(ApiError::BadRequest(format!(
            "request body holds {n} documents; send one object per request"
        ))),
    }
}

/// Admits a Service body for the object at `ns`/`name` (name `None` for a create, which takes the body's).
fn admit(state: &AdminState, ns: &str, name: Option<&str>, value: Value) -> Result<Service, ApiError> {
    let value = placed(ns, name, value)?;
    let shown = body_name(&value);
    admit_service(&value, &state.defaults).map_err(|e| ApiError::invalid("Service", &shown, e))
}

/// The body with the request's namespace (and name) filled in, refusing a body that names others.
pub(crate) fn placed(ns: &str, name: Option<&str>, mut value: Value) -> Result<Value, ApiError> {
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        let body_ns = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
        if body_ns.is_empty() {
            meta.insert("namespace".into(), Value::String(ns.to_string()));
        } else if body_ns != ns {
            return Err(ApiError::BadRequest(format!(
                "the namespace of the object ({body_ns}) does not match the namespace of the request ({ns})"
            )));
        }
        let body_name = meta.get("name").and_then(Value::as_str).unwrap_or("");
        if let Some(n) = name.filter(|n| !body_name.is_empty() && n != &body_name) {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({body_name}) does not match the name of the request ({n})"
            )));
        }
        if body_name.is_empty() {
            if let Some(n) = name {
                meta.insert("name".into(), Value::String(n.to_string()));
            }
        }
    }
    Ok(value)
}

/// `?dryRun=All` or nothing.
pub(crate) fn dry_run(params: &HashMap<String, String>) -> Result<bool, ApiError> {
    match params.get("dryRun").map(String::as_str) {
        None => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "dryRun={other:?}: the only supported value is All"
        ))),
    }
}

/// Admits and writes a Service document: fields it does not have are refused, or dropped with a
/// warning or silently, as `?fieldValidation=` says.
async fn write_service_value(
    s: AdminState,
    ns: String,
    name: Option<String>,
    mut value: Value,
    params: HashMap<String, String>,
    mode: ApplyMode,
) -> Result<Response, ApiError> {
    let dry_run = dry_run(&params)?;
    let warnings = FieldValidation::from_params(&params)?.prune(&mut value)?;
    let writer = writer(mode, &params)?;
    let (outcome, stored) = if mode == ApplyMode::Apply {
        // Server-side apply: the manager's fields merged into the stored Service, then admitted.
        let value = placed(&ns, name.as_deref(), value)?;
        let shown = body_name(&value);
        blocking(move || {
            revisor_controller::server_side_apply(&s.store, &value, &s.defaults, &writer, dry_run)
                .map_err(|e| ApiError::from_apply("Service", &shown, e))
        })
        .await?
    } else {
        let svc = admit(&s, &ns, name.as_deref(), value)?;
        let shown = svc.metadata.name.clone();
        blocking(move || {
            revisor_controller::apply_service(&s.store, svc, &writer, dry_run)
                .map_err(|e| ApiError::from_apply("Service", &shown, e))
        })
        .await?
    };
    Ok(with_warnings(applied(outcome, stored), &warnings))
}

/// A merge or JSON patch of a stored Service: patched, admitted and written as an update.
async fn patch_service(
    s: AdminState,
    ns: String,
    name: String,
    patch: Patch,
    params: HashMap<String, String>,
) -> Result<Response, ApiError> {
    let dry_run = dry_run(&params)?;
    let validation = FieldValidation::from_params(&params)?;
    let writer = writer(ApplyMode::Replace, &params)?;
    let (outcome, stored, warnings) = blocking(move || {
        read_modify_write::<Service, _>(&s.store, &ns, &name, &patch, |mut value| {
            let warnings = validation.prune(&mut value)?;
            let svc = admit(&s, &ns, Some(&name), value)?;
            let (outcome, stored) = revisor_controller::apply_service(&s.store, svc, &writer, dry_run)
                .map_err(|e| ApiError::from_apply("Service", &name, e))?;
            Ok((outcome, stored, warnings))
        })
    })
    .await?;
    Ok(with_warnings(applied(outcome, stored), &warnings))
}

/// The writer of a Service request: `?fieldManager=` (apply's default `revisor`, a replace's or create's
/// `revisor-update`) and `?force=true`.
pub(crate) fn writer(mode: ApplyMode, params: &HashMap<String, String>) -> Result<Writer, ApiError> {
    let manager = match params.get("fieldManager").map(String::as_str) {
        Some("") => return Err(ApiError::BadRequest("fieldManager must not be empty".into())),
        Some(m) if m.len() > 128 => {
            return Err(ApiError::BadRequest(format!(
                "fieldManager is {} characters long; the limit is 128",
                m.len()
            )))
        }
        Some(m) => m.to_string(),
        None if mode == ApplyMode::Apply => revisor_controller::admission::APPLY_MANAGER.into(),
        None => revisor_controller::admission::UPDATE_MANAGER.into(),
    };
    let force = match params.get("force").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(ApiError::BadRequest(format!("force={other:?}: want true or false"))),
    };
    Ok(Writer { mode, manager, force })
}

/// An apply's answer: 201 when created, else 200, with the outcome in `revisor-apply-result`.
pub(crate) fn applied(outcome: revisor_controller::ApplyOutcome, stored: impl serde::Serialize) -> Response {
    let code = if outcome == revisor_controller::ApplyOutcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (code, [("revisor-apply-result", outcome.as_str())], Json(stored)).into_response()
}

/// The body's `metadata.name`, for error messages.
pub(crate) fn body_name(value: &Value) -> String {
    value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

pub(crate) fn deleted(kind: &str, name: &str) -> Json<Value> {
    Json(
        json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": { "name": name, "kind": kind } }),
    )
}

/// A DELETE's options: `?dryRun=All`, or Kubernetes' `DeleteOptions` in the body (what kubectl
/// sends): `dryRun`, `preconditions` (uid, resourceVersion) and `propagationPolicy` (Background or
/// Foreground; a Service's configuration and revisions are always deleted with it, so Orphan is
/// refused).
pub(crate) fn delete_options(params: &HashMap<String, String>, body: &Bytes) -> Result<DeleteOptions, ApiError> {
    let mut options = DeleteOptions {
        dry_run: dry_run(params)?,
        ..Default::default()
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(options);
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the DeleteOptions body is not valid JSON: {e}")))?;
    match v.get("dryRun") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(Value::Array(a)) if a.len() == 1 && a[0] == "All" => options.dry_run = true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "DeleteOptions.dryRun {other}: the only supported value is [\"All\"]"
            )))
        }
    }
    match v.get("propagationPolicy").and_then(Value::as_str) {
        None | Some("Background") | Some("Foreground") => {}
        Some("Orphan") => {
            return Err(ApiError::BadRequest(
                "propagationPolicy Orphan is not supported: what an object owns (a Service's configuration \
                 and revisions) is deleted with it"
                    .into(),
            ))
        }
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "propagationPolicy {other:?}: want Background, Foreground or Orphan"
            )))
        }
    }
    let text = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
    options.uid = text("/preconditions/uid");
    options.resource_version = text("/preconditions/resourceVersion");
    Ok(options)
}

impl Backend for AdminState {
    const LOCAL: bool = true;

    async fn list(&self, kind: Kind, ns: Option<String>, q: ListQuery) -> Result<Response, ApiError> {
        let s = self.clone();
        match kind {
            Kind::Service => collection::local::<Service>(s, ns, q).await,
            Kind::Revision => collection::local::<Revision>(s, ns, q).await,
            Kind::Configuration => collection::local::<Configuration>(s, ns, q).await,
            Kind::Rollout => collection::local::<Rollout>(s, ns, q).await,
        }
    }

    async fn get(&self, kind: Kind, ns: String, name: String) -> Result<Value, ApiError> {
        let s = self.clone();
        match kind {
            Kind::Service => get_one::<Service>(s, ns, name).await,
            Kind::Revision => get_one::<Revision>(s, ns, name).await,
            Kind::Configuration => get_one::<Configuration>(s, ns, name).await,
            Kind::Rollout => get_one::<Rollout>(s, ns, name).await,
        }
    }

    async fn write(&self, kind: Kind, w: Write) -> Result<Response, ApiError> {
        let s = self.clone();
        let Write {
            ns,
            name,
            change,
            params,
        } = w;
        match (kind, change) {
            (Kind::Service, Change::Create(v)) => write_service_value(s, ns, None, v, params, ApplyMode::Create).await,
            (Kind::Service, Change::Replace(v)) => {
                write_service_value(s, ns, name, v, params, ApplyMode::Replace).await
            }
            (Kind::Service, Change::Patch(Patch::Apply(v))) => {
                write_service_value(s, ns, name, v, params, ApplyMode::Apply).await
            }
            (Kind::Service, Change::Patch(p)) => patch_service(s, ns, name.unwrap_or_default(), p, params).await,
            (Kind::Rollout, Change::Create(v)) => {
                rollouts::write_value(s, ns, None, v, params, ApplyMode::Create).await
            }
            (Kind::Rollout, Change::Replace(v)) => {
                rollouts::write_value(s, ns, name, v, params, ApplyMode::Replace).await
            }
            (Kind::Rollout, Change::Patch(Patch::Apply(v))) => {
                rollouts::write_value(s, ns, name, v, params, ApplyMode::Apply).await
            }
            (Kind::Rollout, Change::Patch(p)) => rollouts::patch(s, ns, name.unwrap_or_default(), p, params).await,
            (kind, _) => Err(ApiError::MethodNotAllowed(format!(
                "{}s are made from a Service's template and are not written directly",
                kind.name()
            ))),
        }
    }

    async fn delete(
        &self,
        kind: Kind,
        ns: String,
        name: String,
        options: DeleteOptions,
        force: bool,
    ) -> Result<(), ApiError> {
        let s = self.clone();
        blocking(move || match kind {
            Kind::Service => Ok(revisor_controller::delete_service(&s.store, &ns, &name, &options).map(drop)?),
            Kind::Rollout => Ok(revisor_controller::delete_rollout(&s.store, &ns, &name, &options).map(drop)?),
            Kind::Revision => revisor_controller::delete_revision(&s.store, &ns, &name, force, &options)
                .map(drop)
                .map_err(|e| ApiError::from_apply("Revision", &name, e)),
            Kind::Configuration => Err(ApiError::MethodNotAllowed(
                "a configuration is deleted with its Service: delete the Service".into(),
            )),
        })
        .await
    }

    async fn request(&self, ns: String, name: String, action: String, to: Option<String>) -> Result<Value, ApiError> {
        let s = self.clone();
        blocking(move || {
            revisor_controller::request_rollout(&s.store, &ns, &name, &action, to.as_deref())
                .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
                .map_err(|e| ApiError::from_apply("Rollout", &name, e))
        })
        .await
    }

    async fn service_events(&self, ns: String, name: String) -> Result<Vec<Value>, ApiError> {
        let s = self.clone();
        blocking(move || {
            if s.store.get::<Service>(&ns, &name)?.is_none() {
                return Err(Kind::Service.not_found(&ns, &name));
            }
            Ok(s.store
                .events(&ns, &name)?
                .iter()
                .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
                .collect())
        })
        .await
    }

    fn extra(&self) -> Router {
        super::local_routes().with_state(self.clone())
    }

    fn not_found(uri: &Uri) -> ApiError {
        ApiError::NotFound(format!("no such path {}", uri.path()))
    }
}
