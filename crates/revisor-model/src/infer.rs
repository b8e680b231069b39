//! One inference: the request checked against the model's inputs, run off the async threads, and
//! the requested outputs returned.

use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::datatype::DataType;
use crate::error::InferError;
use crate::model::{Model, TensorSpec};
use crate::protocol::{InferRequest, InferResponse, RequestInput, ResponseOutput};
use crate::tensor;

fn names(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| format!("{:?}", s.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks one request input against the model's input and builds its tensor.
fn input_tensor(spec: &TensorSpec, given: &RequestInput) -> Result<Tensor, InferError> {
    let name = &spec.name;
    let dt = DataType::parse(&given.datatype).ok_or_else(|| {
        InferError::BadRequest(format!(
            "input {name:?}: unknown datatype {:?} (use one of {})",
            given.datatype,
            DataType::names()
        ))
    })?;
    if dt != spec.dtype {
        return Err(InferError::BadRequest(format!(
            "input {name:?}: datatype {} does not match the model's {}",
            dt.name(),
            spec.datatype
        )));
    }
    if given.shape.len() != spec.shape.len()
        || given
            .shape
            .iter()
            .zip(&spec.shape)
            .any(|(g, m)| *g < 0 || (*m >= 0 && g != m))
    {
        return Err(InferError::BadRequest(format!(
            "input {name:?}: shape {:?} does not fit the model's {:?} (-1 is any size)",
            given.shape, spec.shape
        )));
    }
    let data = given.data.as_ref().ok_or_else(|| {
        InferError::BadRequest(format!(
            "input {name:?}: no data (binary tensor data is not supported yet)"
        ))
    })?;
    let shape: Vec<usize> = given.shape.iter().map(|d| *d as usize).collect();
    tensor::from_json(name, dt, &shape, data)
}

/// Runs a request against the model on `pool` (a bounded set of blocking threads).
pub async fn infer(
    model: Arc<Model>,
    req: InferRequest,
    pool: Arc<tokio::sync::Semaphore>,
) -> Result<InferResponse, InferError> {
    if !model.is_ready() {
        return Err(InferError::Unavailable(format!(
            "model {:?} is not ready yet",
            model.name
        )));
    }
    for given in &req.inputs {
        if !model.inputs.iter().any(|s| s.name == given.name) {
            return Err(InferError::BadRequest(format!(
                "unknown input {:?}: the model takes {}",
                given.name,
                names(&model.inputs)
            )));
        }
    }
    let mut tensors = TVec::new();
    for spec in &model.inputs {
        let mut matching = req.inputs.iter().filter(|g| g.name == spec.name);
        let given = matching
            .next()
            .ok_or_else(|| InferError::BadRequest(format!("missing input {:?}", spec.name)))?;
        if matching.next().is_some() {
            return Err(InferError::BadRequest(format!(
                "input {:?} is given more than once",
                spec.name
            )));
        }
        tensors.push(input_tensor(spec, given)?.into_tvalue());
    }
    let wanted: Vec<usize> = match &req.outputs {
        None => (0..model.outputs.len()).collect(),
        Some(outs) => outs
            .iter()
            .map(|o| {
                model.outputs.iter().position(|s| s.name == o.name).ok_or_else(|| {
                    InferError::BadRequest(format!(
                        "unknown output {:?}: the model gives {}",
                        o.name,
                        names(&model.outputs)
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let _permit = pool
        .acquire_owned()
        .await
        .map_err(|_| InferError::Unavailable("the server is stopping".into()))?;
    let m = model.clone();
    let results = tokio::task::spawn_blocking(move || m.run(tensors))
        .await
        .map_err(|e| InferError::Model(format!("inference worker failed: {e}")))?
        .map_err(|e| InferError::Model(format!("inference failed: {e:#}")))?;
    let mut outputs = Vec::with_capacity(wanted.len());
    for i in wanted {
        let (dt, shape, data) = tensor::to_json(&results[i])?;
        outputs.push(ResponseOutput {
            name: model.outputs[i].name.clone(),
            shape,
            datatype: dt.name(),
            data,
        });
    }
    Ok(InferResponse {
        model_name: model.name.clone(),
        model_version: model.version.clone(),
        id: req.id,
        parameters: req.parameters,
        outputs,
    })
}
