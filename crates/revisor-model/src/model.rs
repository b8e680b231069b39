//! Loading one ONNX model: symbolic batch dimensions fixed, optimized once, warmed up, described.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{DimFact, Factoid, GenericFactoid, ShapeFactoid};

use crate::datatype::DataType;
use crate::error::LoadError;

/// A model input or output as the protocol describes it: -1 for a dimension of any size.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
    #[serde(skip)]
    pub dtype: DataType,
}

/// A loaded, optimized model, ready to run from many threads.
pub struct Model {
    pub name: String,
    pub version: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    plan: Arc<TypedSimplePlan>,
    ready: AtomicBool,
}

/// Where a model is: `file://...` or a plain path.
pub fn local_path(uri: &str) -> Result<PathBuf, LoadError> {
    let err = |message: String| LoadError {
        uri: uri.to_string(),
        message,
    };
    if let Some(rest) = uri.strip_prefix("file://") {
        return Ok(PathBuf::from(rest));
    }
    if uri.starts_with("http://") || uri.starts_with("https://") {
        return Err(err(
            "downloading models over HTTP is not supported yet; download it and pass a path".into(),
        ));
    }
    if uri.contains("://") {
        return Err(err("unsupported storage URI: use file:// or a path".into()));
    }
    Ok(PathBuf::from(uri))
}

/// The batch symbol the first dimension of every input is given when the model leaves it open.
const BATCH: &str = "N";

impl Model {
    /// Loads, fixes the batch dimension, optimizes and describes a model. Errors name the URI and cause.
    pub fn load(uri: &str, name: &str, version: &str) -> Result<Model, LoadError> {
        let err = |message: String| LoadError {
            uri: uri.to_string(),
            message,
        };
        let path = local_path(uri)?;
        let meta = std::fs::metadata(&path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(err(format!("{} is not a file", path.display())));
        }
        let plan = optimize(&path).map_err(|e| err(format!("not a model tract can run: {e:#}")))?;
        let model = plan.model();
        let spec = |outlet: OutletId, fact: &TypedFact| -> Result<TensorSpec, LoadError> {
            let dtype = DataType::from_datum(fact.datum_type).ok_or_else(|| {
                err(format!(
                    "tensor type {:?} has no Open Inference Protocol datatype",
                    fact.datum_type
                ))
            })?;
            let name = model
                .outlet_label(outlet)
                .unwrap_or(&model.node(outlet.node).name)
                .to_string();
            let shape = fact.shape.iter().map(|d| d.to_i64().unwrap_or(-1)).collect();
            Ok(TensorSpec {
                name,
                datatype: dtype.name(),
                shape,
                dtype,
            })
        };
        let mut inputs = Vec::new();
        for (i, o) in model
            .input_outlets()
            .map_err(|e| err(e.to_string()))?
            .iter()
            .enumerate()
        {
            inputs.push(spec(*o, model.input_fact(i).map_err(|e| err(e.to_string()))?)?);
        }
        let mut outputs = Vec::new();
        for (i, o) in model
            .output_outlets()
            .map_err(|e| err(e.to_string()))?
            .iter()
            .enumerate()
        {
            outputs.push(spec(*o, model.output_fact(i).map_err(|e| err(e.to_string()))?)?);
        }
        Ok(Model {
            name: name.into(),
            version: version.into(),
            inputs,
            outputs,
            plan,
            ready: AtomicBool::new(false),
        })
    }

    /// Runs the model once on zeros (batch 1), then answers ready: a revision is never routed to before
    /// it can answer.
    pub fn warm_up(&self) -> Result<(), LoadError> {
        let err = |message: String| LoadError {
            uri: self.name.clone(),
            message,
        };
        let mut tensors = TVec::new();
        for i in &self.inputs {
            let shape: Vec<usize> = i.shape.iter().map(|d| if *d < 0 { 1 } else { *d as usize }).collect();
            let t = Tensor::zero_dt(i.dtype.datum(), &shape)
                .map_err(|e| err(format!("warm-up input {:?}: {e}", i.name)))?;
            tensors.push(t.into_tvalue());
        }
        self.plan
            .run(tensors)
            .map_err(|e| err(format!("warm-up inference failed: {e:#}")))?;
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Runs one inference (blocking: call it off the async threads).
    pub fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.plan.run(inputs)
    }
}

/// Loads with tract, gives every input an open batch dimension when its first dimension is not fixed,
/// and optimizes once.
fn optimize(path: &Path) -> TractResult<Arc<TypedSimplePlan>> {
    let mut model = tract_onnx::onnx().model_for_path(path)?;
    let batch = model.symbols.sym(BATCH);
    for ix in 0..model.input_outlets()?.len() {
        let fact = model.input_fact(ix)?.clone();
        let dims: TVec<DimFact> = fact
            .shape
            .dims()
            .enumerate()
            .map(|(i, d)| match d.concretize() {
                Some(d) if i == 0 && d.to_i64().is_err() => GenericFactoid::Only(batch.to_dim()),
                Some(d) => GenericFactoid::Only(d),
                None if i == 0 => GenericFactoid::Only(batch.to_dim()),
                None => GenericFactoid::Any,
            })
            .collect();
        let fixed = InferenceFact {
            shape: ShapeFactoid::closed(dims),
            ..fact
        };
        model.set_input_fact(ix, fixed)?;
    }
    model.into_optimized()?.into_runnable()
}
