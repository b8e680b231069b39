//! One inference: the request parsed and checked against the model's inputs (JSON data decoded
//! straight into tensors, or binary tensor data), large bodies decoded a few at a time and everything
//! run off the async threads, and the requested outputs returned as JSON or binary.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tract_onnx::prelude::*;

use crate::datatype::DataType;
use crate::error::InferError;
use crate::metrics::ModelMetrics;
use crate::model::{Model, TensorSpec};
use crate::protocol::{binary_size, flag, Checked, InferRequest, InferResponse, RequestInput, ResponseOutput};
use crate::tensor;

/// How deeply an input's `data` may nest: serde_json parses fewer than 128 levels of arrays and objects,
/// and the body, its `inputs` and the input itself take 3 of them.
const DATA_DEPTH: usize = 124;

/// Bodies up to this size are decoded on the async thread that read them; larger ones wait for a
/// decoding permit and are decoded on a blocking thread.
const INLINE_DECODE_BYTES: usize = 64 * 1024;

/// A run expected to take at most this long (by the model's recent runs and the request's size) runs
/// on the async thread that decoded it: handing it to a blocking thread and back costs two thread
/// wakeups, more than a small model's whole run (bench/RESULTS.md). Longer runs go to a blocking thread.
const INLINE_RUN: std::time::Duration = std::time::Duration::from_micros(50);

/// What the server shares with every inference.
pub struct Runner {
    pub model: Arc<Model>,
    /// Dynamic batching, when enabled.
    pub batcher: Option<crate::batching::Batcher>,
    /// Bounds concurrent inferences to the cores, so health checks stay fast under load.
    pub pool: Arc<tokio::sync::Semaphore>,
    /// Bounds concurrent decoding of large request bodies to the cores, so many large requests at once
    /// do not all hold their decoded tensors at once.
    pub decoding: Arc<tokio::sync::Semaphore>,
    /// Recorded on atomics by every inference.
    pub metrics: Arc<ModelMetrics>,
    /// What `GET /metrics` encodes: a collector reading `metrics` at each scrape.
    pub registry: prometheus_client::registry::Registry,
    /// Runs expected to take at most this long run on the async thread ([`INLINE_RUN`] by default).
    pub inline_run: std::time::Duration,
    /// Runs made on the async thread.
    pub inline_runs: std::sync::atomic::AtomicU64,
}

fn names(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| format!("{:?}", s.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn not_valid(e: impl std::fmt::Display) -> InferError {
    InferError::BadRequest(format!("request body is not a valid inference request: {e}"))
}

/// Checks one request input against the model's input and builds its tensor; `json` is the request's
/// JSON, which a JSON input's `data` is a slice of.
fn input_tensor(
    spec: &TensorSpec,
    given: &RequestInput<&RawValue>,
    binary: Option<&[u8]>,
    json: &[u8],
) -> Result<Tensor, InferError> {
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
    let shape: Vec<usize> = given.shape.iter().map(|d| *d as usize).collect();
    match (binary, given.data) {
        (Some(bytes), None) => tensor::from_binary(name, dt, &shape, bytes),
        (None, Some(data)) => json_tensor(name, dt, &shape, data, json),
        (Some(_), Some(_)) => Err(InferError::BadRequest(format!(
            "input {name:?}: give data or binary_data_size, not both"
        ))),
        (None, None) => Err(InferError::BadRequest(format!("input {name:?}: no data"))),
    }
}

/// Decodes one input's JSON `data` straight into its tensor.
fn json_tensor(name: &str, dt: DataType, shape: &[usize], data: &RawValue, json: &[u8]) -> Result<Tensor, InferError> {
    let text = data.get();
    let mut de = serde_json::Deserializer::from_str(text);
    // n elements take at least n bytes and n - 1 separators, whatever the shape claims.
    let most = text.len().div_ceil(2);
    tensor::decode_json(name, dt, shape, &mut de, most, DATA_DEPTH).unwrap_or_else(|e| Err(invalid_json(json, e)))
}

/// The error of a request whose JSON serde_json refuses. Scanning `data` as a slice of the body, and
/// decoding it apart from the body, words some mistakes differently than one parse of the whole body
/// does (a trailing comma is "expected value", nesting is counted from `data`, a number too large is
/// found late), so the body is read again as a whole, building nothing, for the usual words and place.
fn invalid_json(json: &[u8], found: serde_json::Error) -> InferError {
    not_valid(
        serde_json::from_slice::<InferRequest<Checked>>(json)
            .err()
            .unwrap_or(found),
    )
}

/// Splits the binary section among the inputs that declare `binary_data_size`, in request order.
fn binary_parts<'a>(
    req: &InferRequest<&RawValue>,
    binary: Option<&'a [u8]>,
) -> Result<HashMap<String, &'a [u8]>, InferError> {
    let mut parts = HashMap::new();
    let mut rest = binary.unwrap_or_default();
    for input in &req.inputs {
        let Some(size) = binary_size(&input.parameters) else {
            continue;
        };
        let size = size as usize;
        if binary.is_none() {
            return Err(InferError::BadRequest(format!(
                "input {:?} has binary_data_size but the request has no Inference-Header-Content-Length header",
                input.name
            )));
        }
        if rest.len() < size {
            return Err(InferError::BadRequest(format!(
                "input {:?}: binary_data_size {size} runs past the end of the body",
                input.name
            )));
        }
        parts.insert(input.name.clone(), &rest[..size]);
        rest = &rest[size..];
    }
    if !rest.is_empty() {
        return Err(InferError::BadRequest(format!(
            "{} bytes of binary data belong to no input",
            rest.len()
        )));
    }
    Ok(parts)
}

/// The outputs to return, each with whether it goes in the binary section.
fn wanted_outputs(model: &Model, req: &InferRequest<&RawValue>) -> Result<Vec<(usize, bool)>, InferError> {
    let all_binary = flag(&req.parameters, "binary_data_output");
    match &req.outputs {
        None => Ok((0..model.outputs.len()).map(|i| (i, all_binary)).collect()),
        Some(outs) => outs
            .iter()
            .map(|o| {
                let i = model.outputs.iter().position(|s| s.name == o.name).ok_or_else(|| {
                    InferError::BadRequest(format!(
                        "unknown output {:?}: the model gives {}",
                        o.name,
                        names(&model.outputs)
                    ))
                })?;
                Ok((i, all_binary || flag(&o.parameters, "binary_data")))
            })
            .collect(),
    }
}

/// Builds the input tensors of a request (JSON or binary data); `json` is the request's JSON.
fn inputs(
    model: &Model,
    req: &InferRequest<&RawValue>,
    binary: Option<&[u8]>,
    json: &[u8],
) -> Result<TVec<TValue>, InferError> {
    for given in &req.inputs {
        if !model.inputs.iter().any(|s| s.name == given.name) {
            return Err(InferError::BadRequest(format!(
                "unknown input {:?}: the model takes {}",
                given.name,
                names(&model.inputs)
            )));
        }
    }
    let parts = binary_parts(req, binary)?;
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
        tensors.push(input_tensor(spec, given, parts.get(&spec.name).copied(), json)?.into_tvalue());
    }
    Ok(tensors)
}

/// A request decoded: its input tensors, the outputs it wants (each with whether it goes in the
/// binary section), and what the response echoes. The body it came from is gone by then.
struct Decoded {
    tensors: TVec<TValue>,
    wanted: Vec<(usize, bool)>,
    id: Option<String>,
    parameters: Option<Map<String, Value>>,
}

/// Parses a request body, whose first `json_len` bytes are JSON and the rest the binary section (all of
/// it JSON without one), and builds its input tensors.
fn decode(model: &Model, body: &[u8], json_len: Option<usize>) -> Result<Decoded, InferError> {
    let (json, binary) = match json_len {
        None => (body, None),
        Some(n) => (&body[..n], Some(&body[n..])),
    };
    let req: InferRequest<&RawValue> = serde_json::from_slice(json).map_err(|e| invalid_json(json, e))?;
    let tensors = inputs(model, &req, binary, json)?;
    let wanted = wanted_outputs(model, &req)?;
    Ok(Decoded {
        tensors,
        wanted,
        id: req.id,
        parameters: req.parameters,
    })
}

impl Runner {
    pub fn new(model: Arc<Model>) -> Runner {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let metrics = Arc::new(ModelMetrics::default());
        let registry = metrics.registry(&model.name, &model.version);
        Runner {
            model,
            batcher: None,
            pool: Arc::new(tokio::sync::Semaphore::new(cores)),
            decoding: Arc::new(tokio::sync::Semaphore::new(cores)),
            metrics,
            registry,
            inline_run: INLINE_RUN,
            inline_runs: Default::default(),
        }
    }

    /// A runner that merges concurrent requests into batches (call inside a tokio runtime).
    pub fn batching(model: Arc<Model>, cfg: crate::batching::BatchConfig) -> Result<Runner, String> {
        let mut r = Runner::new(model);
        r.batcher = Some(crate::batching::Batcher::start(r.model.clone(), cfg, r.pool.clone())?);
        Ok(r)
    }

    /// Runs raw tensors on the bounded pool.
    pub async fn run(&self, tensors: TVec<TValue>) -> Result<TVec<TValue>, InferError> {
        if !self.model.is_ready() {
            return Err(InferError::Unavailable(format!(
                "model {:?} is not ready yet",
                self.model.name
            )));
        }
        if let Some(b) = &self.batcher {
            let started = Instant::now();
            let outs = b.run(tensors).await?;
            self.metrics.success(std::time::Duration::ZERO, started.elapsed());
            return Ok(outs.into_iter().map(|t| t.into_tvalue()).collect());
        }
        let queued = Instant::now();
        let _demand = self.model.demand();
        let _permit = self
            .pool
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| InferError::Unavailable("the server is stopping".into()))?;
        let (queue, started) = (queued.elapsed(), Instant::now());
        let short = self.model.is_short(&tensors, self.inline_run);
        let now = if short {
            let m = &self.model;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.try_run_now(tensors)))
                .map_err(|_| InferError::Model("inference failed: the run panicked".into()))?
        } else {
            Err(tensors)
        };
        let results = match now {
            Ok(r) => {
                self.inline_runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                r
            }
            Err(tensors) => {
                let m = self.model.clone();
                tokio::task::spawn_blocking(move || m.run(tensors))
                    .await
                    .map_err(|e| InferError::Model(format!("inference worker failed: {e}")))?
            }
        }
        .map_err(|e| InferError::Model(format!("inference failed: {e:#}")))?;
        self.metrics.success(queue, started.elapsed());
        Ok(results)
    }

    /// One V2 inference from a request body (its first `json_len` bytes JSON and the rest binary tensor
    /// data, or all JSON): the JSON response, and the binary section when any output asked for one.
    pub async fn infer(
        &self,
        body: Bytes,
        json_len: Option<usize>,
    ) -> Result<(InferResponse, Option<Vec<u8>>), InferError> {
        let result = self.infer_inner(body, json_len).await;
        if result.is_err() {
            self.metrics.failure();
        }
        result
    }

    /// Decodes a request body into tensors: a small one right here, a large one on a blocking thread once
    /// one of the cores' decoding permits is free. The body is dropped once decoded.
    async fn decode(&self, body: Bytes, json_len: Option<usize>) -> Result<Decoded, InferError> {
        if body.len() <= INLINE_DECODE_BYTES {
            return decode(&self.model, &body, json_len);
        }
        let _permit = self
            .decoding
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| InferError::Unavailable("the server is stopping".into()))?;
        let model = self.model.clone();
        tokio::task::spawn_blocking(move || decode(&model, &body, json_len))
            .await
            .map_err(|e| InferError::Model(format!("decoding worker failed: {e}")))?
    }

    async fn infer_inner(
        &self,
        body: Bytes,
        json_len: Option<usize>,
    ) -> Result<(InferResponse, Option<Vec<u8>>), InferError> {
        let model = &self.model;
        let Decoded {
            tensors,
            wanted,
            id,
            parameters,
        } = self.decode(body, json_len).await?;
        let nonfinite_input = tensors.iter().any(|t| tensor::has_non_finite(t));
        let results = self.run(tensors).await?;
        // A value JSON cannot carry, made from the client's own NaN or infinity, is the client's doing.
        let blame = |e: InferError| match e {
            InferError::Model(m) if nonfinite_input => InferError::BadRequest(format!(
                "{m}: the request's input holds NaN or infinite values, which the model carried into its output"
            )),
            e => e,
        };
        let mut outputs = Vec::with_capacity(wanted.len());
        let mut section: Option<Vec<u8>> = None;
        for (i, as_binary) in wanted {
            let name = model.outputs[i].name.clone();
            if as_binary {
                let (dt, shape, bytes) = tensor::to_binary(&results[i])?;
                let mut params = serde_json::Map::new();
                params.insert("binary_data_size".into(), bytes.len().into());
                section.get_or_insert_with(Vec::new).extend_from_slice(&bytes);
                outputs.push(ResponseOutput {
                    name,
                    shape,
                    datatype: dt.name(),
                    parameters: Some(params),
                    data: None,
                });
            } else {
                let (dt, shape, data) = tensor::json_data(results[i].clone()).map_err(blame)?;
                outputs.push(ResponseOutput {
                    name,
                    shape,
                    datatype: dt.name(),
                    parameters: None,
                    data: Some(data),
                });
            }
        }
        let response = InferResponse {
            model_name: model.name.clone(),
            model_version: model.version.clone(),
            id,
            parameters,
            outputs,
        };
        Ok((response, section))
    }
}
