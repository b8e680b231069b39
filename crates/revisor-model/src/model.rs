//! Loading one ONNX model: symbolic batch dimensions fixed, optimized once, warmed up, described.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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
    plans: Plans,
    ready: AtomicBool,
    runs: std::sync::atomic::AtomicU64,
    /// Inferences waiting for a core or running ([`Model::demand`]).
    demand: Arc<std::sync::atomic::AtomicUsize>,
    /// What a run has cost per input element lately, in nanoseconds: a moving average over the runs
    /// that succeeded (as `f64` bits; 0 before the first), read by [`Model::expected_run`].
    cost: std::sync::atomic::AtomicU64,
    /// The most input elements a successful run had.
    largest: std::sync::atomic::AtomicUsize,
}

/// One inference counted in [`Model::demand`] until dropped.
pub struct Demand(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Demand {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How batch sizes are served: one plan for any batch (the batch dimension is a symbol), or, for
/// models whose shape computations tract cannot keep symbolic, one plan per batch size seen,
/// optimized on first use and kept.
enum Plans {
    Symbolic(Arc<TypedSimplePlan>),
    /// The model runs in ONNX Runtime instead (`--engine onnxruntime`).
    OnnxRuntime(crate::onnxruntime::OrtEngine),
    PerBatch {
        model: Box<InferenceModel>,
        plans: Mutex<HashMap<usize, Arc<TypedSimplePlan>>>,
    },
}

/// Which engine runs the model.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Engine {
    /// tract, built in (the default).
    #[default]
    Tract,
    /// ONNX Runtime, loaded from this shared library.
    OnnxRuntime { library: std::path::PathBuf },
}

/// ONNX Runtime's one-core sessions for overlapping runs are at most this many; on more cores, runs
/// beyond them share the wide session.
const MAX_NARROW_SESSIONS: usize = 8;

/// Batch sizes with a plan of their own are capped, so odd clients cannot grow memory without bound.
const MAX_BATCH_PLANS: usize = 64;

/// The batch symbol the first dimension of every input is given when the model leaves it open.
const BATCH: &str = "N";

impl Model {
    /// Loads a local model (a path or `file://`), or downloads it into the default cache.
    pub fn load(uri: &str, name: &str, version: &str) -> Result<Model, LoadError> {
        Model::load_from(uri, None, &crate::storage::default_cache(), name, version)
    }

    /// Fetches (checking `sha256` when given), loads, fixes the batch dimension, optimizes and describes
    /// a model. Errors name the URI and the cause.
    pub fn load_from(
        uri: &str,
        sha256: Option<&str>,
        cache: &Path,
        name: &str,
        version: &str,
    ) -> Result<Model, LoadError> {
        Model::load_with(
            uri,
            sha256,
            cache,
            name,
            version,
            &Engine::Tract,
            crate::storage::DEFAULT_MAX_MODEL_BYTES,
        )
    }

    /// [`Model::load_from`] with a choice of engine and a limit on the size of a download.
    pub fn load_with(
        uri: &str,
        sha256: Option<&str>,
        cache: &Path,
        name: &str,
        version: &str,
        engine: &Engine,
        max_bytes: u64,
    ) -> Result<Model, LoadError> {
        let err = |message: String| LoadError {
            uri: uri.to_string(),
            message,
        };
        let path = crate::storage::fetch(uri, sha256, cache, max_bytes)?;
        let meta = std::fs::metadata(&path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(err(format!("{} is not a file", path.display())));
        }
        if let Engine::OnnxRuntime { library } = engine {
            // Overlapping runs get a core each once more than one core is there to share, up to
            // MAX_NARROW_SESSIONS (each session holds its own arena and the weights it does not prepack).
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let narrow = if cores > 1 { cores.min(MAX_NARROW_SESSIONS) } else { 0 };
            let (ort, inputs, outputs) = crate::onnxruntime::load(&path, library, narrow).map_err(err)?;
            return Ok(Model {
                name: name.into(),
                version: version.into(),
                inputs,
                outputs,
                plans: Plans::OnnxRuntime(ort),
                ready: AtomicBool::new(false),
                runs: Default::default(),
                demand: Default::default(),
                cost: Default::default(),
                largest: Default::default(),
            });
        }
        let (plans, plan) = match optimize(&path, None) {
            Ok(plan) => (None, plan),
            Err(symbolic) => {
                // Fall back to concrete batch sizes; describe the model from its batch-1 plan.
                let plan = optimize(&path, Some(1)).map_err(|e| {
                    err(format!(
                        "not a model tract can run: {e:#} (with a symbolic batch: {symbolic:#})"
                    ))
                })?;
                let raw = tract_onnx::onnx()
                    .model_for_path(&path)
                    .map_err(|e| err(format!("{e:#}")))?;
                let mut cache = HashMap::new();
                cache.insert(1, plan.clone());
                (
                    Some(Plans::PerBatch {
                        model: Box::new(raw),
                        plans: Mutex::new(cache),
                    }),
                    plan,
                )
            }
        };
        let per_batch = plans.is_some();
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
            let shape = fact
                .shape
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    if per_batch && i == 0 {
                        -1
                    } else {
                        d.to_i64().unwrap_or(-1)
                    }
                })
                .collect();
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
        let plans = plans.unwrap_or_else(|| Plans::Symbolic(plan.clone()));
        Ok(Model {
            name: name.into(),
            version: version.into(),
            inputs,
            outputs,
            plans,
            ready: AtomicBool::new(false),
            runs: Default::default(),
            demand: Default::default(),
            cost: Default::default(),
            largest: Default::default(),
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
        self.run(tensors)
            .map_err(|e| err(format!("warm-up inference failed: {e:#}")))?;
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// How many times the model has run (a batch counts once).
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Counts one inference as wanting the model from now until the guard drops: from before it waits
    /// for a core until its run ends. An engine that can spread one run over the cores does so only
    /// when no other inference wants them.
    pub fn demand(&self) -> Demand {
        self.demand.fetch_add(1, Ordering::Relaxed);
        Demand(self.demand.clone())
    }

    /// No other inference waits for a core or runs beside the one asking.
    fn alone(&self) -> bool {
        self.demand.load(Ordering::Relaxed) <= 1
    }

    /// ONNX Runtime's sessions for overlapping runs made so far, and the runs they made (0 with tract).
    pub fn narrow_sessions(&self) -> (usize, u64) {
        match &self.plans {
            Plans::OnnxRuntime(engine) => (engine.narrow_sessions(), engine.overlapped_runs()),
            _ => (0, 0),
        }
    }

    /// What was rewritten in the graph before ONNX Runtime opened it (nothing with tract).
    pub fn rewrites(&self) -> crate::rewrite::Rewrites {
        match &self.plans {
            Plans::OnnxRuntime(engine) => engine.rewrites(),
            _ => Default::default(),
        }
    }

    /// How long a run over inputs of `elements` elements in all is expected to take, from the runs so
    /// far (None before the first).
    pub fn expected_run(&self, elements: usize) -> Option<std::time::Duration> {
        let per = f64::from_bits(self.cost.load(Ordering::Relaxed));
        (per > 0.0).then(|| std::time::Duration::from_nanos((per * elements.max(1) as f64) as u64))
    }

    /// Whether a run over `inputs` is expected to take at most `bound`: by [`Model::expected_run`],
    /// for inputs no larger than a run that succeeded already (cost may grow faster than the input),
    /// and, for a model with a plan per batch size, with the plan for their batch size already made.
    pub fn is_short(&self, inputs: &[TValue], bound: std::time::Duration) -> bool {
        let elements: usize = inputs.iter().map(|t| t.len()).sum();
        if elements > self.largest.load(Ordering::Relaxed) {
            return false;
        }
        if let Plans::PerBatch { plans, .. } = &self.plans {
            let batch = inputs.first().and_then(|t| t.shape().first().copied()).unwrap_or(1);
            if !plans.lock().unwrap().contains_key(&batch) {
                return false;
            }
        }
        self.expected_run(elements).is_some_and(|d| d <= bound)
    }

    /// Runs one inference (blocking: call it off the async threads unless [`Model::is_short`]).
    pub fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.timed(inputs, |m, inputs| Ok(m.dispatch(inputs)))
            .unwrap_or_else(|_| unreachable!("dispatch always runs"))
    }

    /// Runs one inference now if the engine can start it without waiting (ONNX Runtime: a session is
    /// free; tract: always); gives the inputs back otherwise.
    pub fn try_run_now(&self, inputs: TVec<TValue>) -> Result<TractResult<TVec<TValue>>, TVec<TValue>> {
        self.timed(inputs, |m, inputs| match &m.plans {
            Plans::OnnxRuntime(engine) => engine.try_run(inputs, m.alone()).inspect(|_| {
                m.runs.fetch_add(1, Ordering::Relaxed);
            }),
            _ => Ok(m.dispatch(inputs)),
        })
    }

    /// Runs `f` and, when it ran and succeeded, folds its time per input element into the moving
    /// average (over about the last eight runs; concurrent runs may each overwrite the other's update,
    /// which only makes the estimate a little older).
    fn timed<F>(&self, inputs: TVec<TValue>, f: F) -> Result<TractResult<TVec<TValue>>, TVec<TValue>>
    where
        F: FnOnce(&Model, TVec<TValue>) -> Result<TractResult<TVec<TValue>>, TVec<TValue>>,
    {
        let elements: usize = inputs.iter().map(|t| t.len()).sum();
        let started = std::time::Instant::now();
        let result = f(self, inputs)?;
        if result.is_ok() {
            let ns = started.elapsed().as_nanos() as f64 / elements.max(1) as f64;
            let old = f64::from_bits(self.cost.load(Ordering::Relaxed));
            let new = if old > 0.0 { old + (ns - old) / 8.0 } else { ns };
            self.cost.store(new.to_bits(), Ordering::Relaxed);
            self.largest.fetch_max(elements, Ordering::Relaxed);
        }
        Ok(result)
    }

    fn dispatch(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        match &self.plans {
            Plans::Symbolic(plan) => plan.run(inputs),
            Plans::OnnxRuntime(engine) => engine.run(inputs, self.alone()),
            Plans::PerBatch { model, plans } => {
                let batch = inputs.first().and_then(|t| t.shape().first().copied()).unwrap_or(1);
                let cached = plans.lock().unwrap().get(&batch).cloned();
                let plan = match cached {
                    Some(p) => p,
                    None => {
                        let p = with_batch((**model).clone(), Some(batch))?
                            .into_optimized()?
                            .into_runnable()?;
                        let mut plans = plans.lock().unwrap();
                        if plans.len() < MAX_BATCH_PLANS {
                            plans.insert(batch, p.clone());
                        }
                        p
                    }
                };
                plan.run(inputs)
            }
        }
    }
}

/// Loads with tract and optimizes once: with `batch` None every input gets an open (symbolic) batch
/// dimension when its first dimension is not fixed; with `Some(n)` the batch is n.
fn optimize(path: &Path, batch: Option<usize>) -> TractResult<Arc<TypedSimplePlan>> {
    let model = tract_onnx::onnx().model_for_path(path)?;
    with_batch(model, batch)?.into_optimized()?.into_runnable()
}

/// Sets the first dimension of every input whose first dimension is not fixed.
pub(crate) fn with_batch(mut model: InferenceModel, batch: Option<usize>) -> TractResult<InferenceModel> {
    let dim = match batch {
        Some(n) => n.to_dim(),
        None => model.symbols.sym(BATCH).to_dim(),
    };
    // An input that declares no shape is an open fact of no dimensions, not rank 0: let the graph
    // say what it can (a Gemm makes its input rank 2, a weight fixes a dimension) before closing it.
    let unshaped = |m: &InferenceModel, ix: usize| {
        m.input_fact(ix)
            .is_ok_and(|f| f.shape.is_open() && f.shape.dims().next().is_none())
    };
    if (0..model.input_outlets()?.len()).any(|ix| unshaped(&model, ix)) {
        let _ = model.analyse(false);
    }
    for ix in 0..model.input_outlets()?.len() {
        let fact = model.input_fact(ix)?.clone();
        if fact.shape.is_open() {
            anyhow::bail!(
                "input {:?} declares no shape and the graph does not fix its rank",
                model.node(model.input_outlets()?[ix].node).name
            );
        }
        let dims: TVec<DimFact> = fact
            .shape
            .dims()
            .enumerate()
            .map(|(i, d)| match d.concretize() {
                Some(d) if i == 0 && d.to_i64().is_err() => GenericFactoid::Only(dim.clone()),
                Some(d) => GenericFactoid::Only(d),
                None if i == 0 => GenericFactoid::Only(dim.clone()),
                None => GenericFactoid::Any,
            })
            .collect();
        let fixed = InferenceFact {
            shape: ShapeFactoid::closed(dims),
            ..fact
        };
        model.set_input_fact(ix, fixed)?;
    }
    Ok(model)
}
