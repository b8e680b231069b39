//! The Rollout endpoints: `/apis/revisor.dev/v1alpha1/[namespaces/{ns}/]rollouts[/{name}]`, with the
//! same apply, create, replace and delete semantics as Services, and `POST .../rollouts/{name}/{action}`
//! for an operator's request (promote, promote-full, abort, retry, undo, pause, resume).

use axum::body::Bytes;
use axum::response::Response;
use revisor_api::{admit_rollout, Rollout};
use revisor_controller::ApplyMode;
use serde_json::Value;

use super::handlers::{applied, blocking, body_name, dry_run, placed, writer};
use super::patch::{read_modify_write, with_warnings, FieldValidation, Patch};
use super::{AdminState, ApiError};
use revisor_controller::admission::Writer;

/// Admits and stores a Rollout document; `?fieldValidation=` says what becomes of unknown fields.
pub(super) async fn write_value(
    s: AdminState,
    ns: String,
    name: Option<String>,
    value: Value,
    params: std::collections::HashMap<String, String>,
    mode: ApplyMode,
) -> Result<Response, ApiError> {
    let dry_run = dry_run(&params)?;
    let validation = FieldValidation::from_params(&params)?;
    let writer = writer(mode, &params)?;
    let (outcome, stored, warnings) =
        blocking(move || store(&s, &ns, name.as_deref(), value, validation, &writer, dry_run)).await?;
    Ok(with_warnings(applied(outcome, stored), &warnings))
}

/// Admission and the store write of one Rollout document, with the warnings to send: an apply is
/// merged into the stored Rollout by field ownership first.
fn store(
    s: &AdminState,
    ns: &str,
    name: Option<&str>,
    mut value: Value,
    validation: FieldValidation,
    writer: &Writer,
    dry_run: bool,
) -> Result<(revisor_controller::ApplyOutcome, Rollout, Vec<String>), ApiError> {
    let warnings = validation.prune(&mut value)?;
    let value = placed(ns, name, value)?;
    let shown = body_name(&value);
    let (outcome, stored) = if writer.mode == ApplyMode::Apply {
        revisor_controller::server_side_apply_rollout(&s.store, &value, writer, dry_run)
    } else {
        let rollout = admit_rollout(&value).map_err(|e| ApiError::invalid("Rollout", &shown, e))?;
        revisor_controller::apply_rollout(&s.store, rollout, writer, dry_run)
    }
    .map_err(|e| ApiError::from_apply("Rollout", &shown, e))?;
    Ok((outcome, stored, warnings))
}

/// A merge or JSON patch of a stored Rollout: patched, admitted and written as an update.
pub(super) async fn patch(
    s: AdminState,
    ns: String,
    name: String,
    patch: Patch,
    p: std::collections::HashMap<String, String>,
) -> Result<Response, ApiError> {
    let dry_run = dry_run(&p)?;
    let validation = FieldValidation::from_params(&p)?;
    let writer = writer(ApplyMode::Replace, &p)?;
    let (outcome, stored, warnings) = blocking(move || {
        read_modify_write::<Rollout, _>(&s.store, &ns, &name, &patch, |value| {
            store(&s, &ns, Some(&name), value, validation, &writer, dry_run)
        })
    })
    .await?;
    Ok(with_warnings(applied(outcome, stored), &warnings))
}

/// An action's optional body: `{"toRevision": "..."}`.
pub(crate) fn to_revision(headers: &axum::http::HeaderMap, body: &Bytes) -> Result<Option<String>, ApiError> {
    if body.is_empty() {
        return Ok(None);
    }
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        });
    if !json {
        return Err(ApiError::UnsupportedMediaType(
            "an action's body is JSON: send it with Content-Type: application/json".into(),
        ));
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("request body is not JSON: {e}")))?;
    match v.get("toRevision") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(r)) => Ok(Some(r.clone())),
        Some(other) => Err(ApiError::BadRequest(format!(
            "toRevision must be a revision name, got {other}"
        ))),
    }
}
