//! KServe's V1 protocol: `GET /v1/models/{name}` and `POST /v1/models/{name}:predict` with `instances`
//! (or `inputs`) in, `predictions` out, one row per instance.

use serde_json::{Map, Value};
use tract_onnx::prelude::*;

use crate::error::InferError;
use crate::infer::Runner;
use crate::model::TensorSpec;
use crate::tensor;

/// The shape of a nested JSON array (`[[1,2],[3,4]]` -> [2, 2]).
fn shape_of(v: &Value) -> Vec<usize> {
    let mut shape = Vec::new();
    let mut cur = v;
    while let Value::Array(items) = cur {
        shape.push(items.len());
        match items.first() {
            Some(first) => cur = first,
            None => break,
        }
    }
    shape
}

/// The batch tensor of one input from its rows.
fn batch(spec: &TensorSpec, rows: Vec<&Value>) -> Result<Tensor, InferError> {
    let row_shape: Vec<usize> = if spec.shape[1..].iter().all(|d| *d >= 0) {
        spec.shape[1..].iter().map(|d| *d as usize).collect()
    } else {
        rows.first().map(|r| shape_of(r)).unwrap_or_default()
    };
    let mut shape = vec![rows.len()];
    shape.extend(row_shape);
    let data = Value::Array(rows.into_iter().cloned().collect());
    tensor::from_json(&spec.name, spec.dtype, &shape, &data)
}

/// Splits an output's flat data into one value per row (nested as the row's shape).
fn rows_of(t: &Tensor) -> Result<Vec<Value>, InferError> {
    let (_, shape, data) = tensor::to_json(t)?;
    let flat = data.as_array().cloned().unwrap_or_default();
    let n = shape.first().copied().unwrap_or(1).max(1);
    let per = flat.len() / n;
    Ok(flat.chunks(per.max(1)).map(|c| nest(c, &shape[1..])).collect())
}

fn nest(flat: &[Value], shape: &[usize]) -> Value {
    match shape.split_first() {
        None => flat.first().cloned().unwrap_or(Value::Null),
        Some((_, [])) => Value::Array(flat.to_vec()),
        Some((_, rest)) => {
            let per: usize = rest.iter().product();
            Value::Array(flat.chunks(per.max(1)).map(|c| nest(c, rest)).collect())
        }
    }
}

pub async fn predict(runner: &Runner, body: &Value) -> Result<Value, InferError> {
    let model = &runner.model;
    let instances = body
        .get("instances")
        .or_else(|| body.get("inputs"))
        .and_then(Value::as_array)
        .ok_or_else(|| InferError::BadRequest("expected {\"instances\": [...]} (or \"inputs\")".into()))?;
    if instances.is_empty() {
        return Err(InferError::BadRequest("instances is empty".into()));
    }
    let mut tensors = TVec::new();
    if model.inputs.len() == 1 && !instances[0].is_object() {
        tensors.push(batch(&model.inputs[0], instances.iter().collect())?.into_tvalue());
    } else {
        for spec in &model.inputs {
            let rows = instances
                .iter()
                .enumerate()
                .map(|(i, inst)| {
                    inst.as_object().and_then(|o| o.get(&spec.name)).ok_or_else(|| {
                        InferError::BadRequest(format!(
                            "instance {i} has no {:?} (the model takes several inputs)",
                            spec.name
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            tensors.push(batch(spec, rows)?.into_tvalue());
        }
    }
    let results = runner.run(tensors).await?;
    let predictions = if model.outputs.len() == 1 {
        rows_of(&results[0])?
    } else {
        let per_output: Vec<Vec<Value>> = results.iter().map(|t| rows_of(t)).collect::<Result<_, _>>()?;
        (0..instances.len())
            .map(|i| {
                let mut row = Map::new();
                for (spec, rows) in model.outputs.iter().zip(&per_output) {
                    row.insert(spec.name.clone(), rows.get(i).cloned().unwrap_or(Value::Null));
                }
                Value::Object(row)
            })
            .collect()
    };
    Ok(serde_json::json!({ "predictions": predictions }))
}
