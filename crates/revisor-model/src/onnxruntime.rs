//! ONNX Runtime as a second engine for the model server (`--engine onnxruntime`). The library is loaded
//! at run time from a file the user names (PyPI's `onnxruntime` wheel ships one as
//! `onnxruntime/capi/libonnxruntime.so.<version>`), so revisor neither downloads nor links it. Tensors
//! cross between tract's representation, which the rest of the server uses, and ONNX Runtime's by one
//! byte copy each way.
//!
//! One inference on its own is spread over every core by a "wide" session (ONNX Runtime's intra-op
//! threads); inferences that overlap each run on one core in "narrow" sessions of their own, since
//! splitting every run over every core costs more in hand-offs than it gains once the cores are busy
//! (bench/RESULTS.md, "Model server against KServe on magika"). The sessions share their prepacked weights.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};

use anyhow::{bail, format_err};
use ort::memory::Allocator;
use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights, SessionBuilder};
use ort::session::Session;
use ort::tensor::TensorElementType as E;
use ort::value::{DynTensor, DynTensorValueType, DynValue, Tensor as OrtTensor, ValueType};
use tract_onnx::prelude::*;

use crate::datatype::DataType;
use crate::model::TensorSpec;
use crate::rewrite::Rewrites;

/// ONNX Runtime sessions of one model: a wide one for a run on its own, and narrow ones (one core
/// each) for runs that overlap, made in the background once the model is loaded.
pub struct OrtEngine {
    wide: Mutex<Session>,
    narrow: Arc<OnceLock<Vec<Mutex<Session>>>>,
    /// Runs made in a narrow session.
    overlapped: std::sync::atomic::AtomicU64,
    inputs: Vec<String>,
    rewrites: Rewrites,
}

/// The model ONNX Runtime opens: the file as it is, or its bytes after [`crate::rewrite`].
enum Source {
    File(PathBuf),
    Rewritten(Vec<u8>),
}

impl Source {
    /// `model`, rewritten where [`crate::rewrite`] finds something to rewrite.
    fn of(model: &Path) -> (Source, Rewrites) {
        let file = || Source::File(model.to_path_buf());
        let bytes = match std::fs::read(model) {
            Ok(b) => b,
            // ONNX Runtime names the problem when it opens the file.
            Err(_) => return (file(), Rewrites::default()),
        };
        match crate::rewrite::rewrite(&bytes) {
            Ok(Some((bytes, done))) => {
                tracing::info!("ONNX Runtime: {} rewritten for speed: {done}", model.display());
                (Source::Rewritten(bytes), done)
            }
            Ok(None) => (file(), Rewrites::default()),
            Err(why) => {
                tracing::info!("ONNX Runtime: {} served without rewrites: {why}", model.display());
                (file(), Rewrites::default())
            }
        }
    }
}

/// A session of `model` with all graph optimizations, `threads` intra-op threads (0: one per core)
/// and the engine's shared prepacked weights.
fn open(model: &Source, threads: usize, weights: &PrepackedWeights) -> ort::Result<Session> {
    let builder: SessionBuilder = Session::builder()?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .with_prepacked_weights(weights)?;
    let builder = if threads > 0 {
        // One thread: nothing to spin for.
        builder
            .with_intra_threads(threads)?
            .with_intra_op_spinning(threads > 1)?
    } else {
        // Every core's threads spin between the operators of a run, but not once it ends: a thread
        // still spinning then holds the core the server needs to read and parse the next request
        // (magika at 1 client, by hand: p99 9.7-9.8 ms spinning on, 5.8-7.8 ms with this).
        builder.with_config_entry("session.force_spinning_stop", "1")?
    };
    match model {
        Source::File(path) => builder.commit_from_file(path),
        Source::Rewritten(bytes) => builder.commit_from_memory(bytes),
    }
}

/// The library ONNX Runtime was loaded from, once loaded (a process can load only one).
static LOADED: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Loads the ONNX Runtime library (once per process).
fn init(lib: &Path) -> Result<(), String> {
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    match loaded.as_deref() {
        Some(l) if l == lib => return Ok(()),
        Some(l) => {
            return Err(format!(
                "ONNX Runtime is already loaded from {} in this process; cannot load {} too",
                l.display(),
                lib.display()
            ))
        }
        None => {}
    }
    if !lib.is_file() {
        return Err(format!(
            "the ONNX Runtime library {} does not exist (pip install onnxruntime ships one as \
             onnxruntime/capi/libonnxruntime.so.<version>)",
            lib.display()
        ));
    }
    ort::init_from(lib.display().to_string())
        .with_name("revisor")
        .commit()
        .map_err(|e| format!("loading ONNX Runtime from {}: {e}", lib.display()))?;
    *loaded = Some(lib.to_path_buf());
    Ok(())
}

fn datum(t: E) -> Option<DatumType> {
    Some(match t {
        E::Bool => DatumType::Bool,
        E::Uint8 => DatumType::U8,
        E::Uint16 => DatumType::U16,
        E::Uint32 => DatumType::U32,
        E::Uint64 => DatumType::U64,
        E::Int8 => DatumType::I8,
        E::Int16 => DatumType::I16,
        E::Int32 => DatumType::I32,
        E::Int64 => DatumType::I64,
        E::Float16 => DatumType::F16,
        E::Float32 => DatumType::F32,
        E::Float64 => DatumType::F64,
        E::String => DatumType::String,
        _ => return None,
    })
}

fn element(dt: DatumType) -> Option<E> {
    [
        E::Bool,
        E::Uint8,
        E::Uint16,
        E::Uint32,
        E::Uint64,
        E::Int8,
        E::Int16,
        E::Int32,
        E::Int64,
        E::Float16,
        E::Float32,
        E::Float64,
        E::String,
    ]
    .into_iter()
    .find(|e| datum(*e) == Some(dt))
}

fn spec(name: &str, ty: &ValueType) -> Result<TensorSpec, String> {
    let ValueType::Tensor { ty, shape, .. } = ty else {
        return Err(format!("{name:?} is not a tensor (sequences and maps are not served)"));
    };
    let dtype = datum(*ty)
        .and_then(DataType::from_datum)
        .ok_or_else(|| format!("{name:?} has element type {ty:?}, which has no Open Inference Protocol datatype"))?;
    Ok(TensorSpec {
        name: name.to_string(),
        datatype: dtype.name(),
        shape: shape.iter().map(|d| if *d < 0 { -1 } else { *d }).collect(),
        dtype,
    })
}

/// Opens a model with ONNX Runtime (all graph optimizations on) and describes its inputs and outputs.
/// `narrow` sessions for overlapping runs are made on a thread of their own afterwards (none: every run
/// waits for the wide session).
pub fn load(model: &Path, lib: &Path, narrow: usize) -> Result<(OrtEngine, Vec<TensorSpec>, Vec<TensorSpec>), String> {
    init(lib)?;
    // One thread makes every session: the prepacked weights they share cannot move between threads.
    // The wide one comes back first; the narrow ones follow while the model already serves.
    let slot: Arc<OnceLock<Vec<Mutex<Session>>>> = Arc::new(OnceLock::new());
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let later = slot.clone();
    let (mut source, rewrites) = Source::of(model);
    let file = model.to_path_buf();
    std::thread::Builder::new()
        .name("onnxruntime-sessions".into())
        .spawn(move || {
            let weights = PrepackedWeights::new();
            let mut wide = open(&source, 0, &weights).map(|s| (s, rewrites));
            if let (Err(e), Source::Rewritten(_)) = (&wide, &source) {
                // A rewrite ONNX Runtime refuses (a build without FastGelu, say) costs the speed, not
                // the model.
                tracing::warn!("ONNX Runtime refused the rewritten graph ({e}); serving the file as it is");
                source = Source::File(file);
                wide = open(&source, 0, &weights).map(|s| (s, Rewrites::default()));
            }
            let failed = wide.is_err();
            let _ = tx.send(wide);
            if failed || narrow == 0 {
                return;
            }
            // Those made before a failure are kept; with none, the wide session serves every run.
            let mut made = Vec::new();
            for _ in 0..narrow {
                match open(&source, 1, &weights) {
                    Ok(s) => made.push(Mutex::new(s)),
                    Err(e) => {
                        tracing::warn!(
                            "ONNX Runtime: {} of {narrow} sessions for overlapping runs: {e}",
                            made.len()
                        );
                        break;
                    }
                }
            }
            if !made.is_empty() {
                let _ = later.set(made);
            }
        })
        .map_err(|e| format!("cannot start a thread for ONNX Runtime: {e}"))?;
    let (session, rewrites) = rx
        .recv()
        .map_err(|_| "ONNX Runtime's loading thread failed".to_string())?
        .map_err(|e| format!("ONNX Runtime cannot load it: {e}"))?;
    let inputs = session
        .inputs
        .iter()
        .map(|i| spec(&i.name, &i.input_type))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = session
        .outputs
        .iter()
        .map(|o| spec(&o.name, &o.output_type))
        .collect::<Result<Vec<_>, _>>()?;
    let engine = OrtEngine {
        inputs: inputs.iter().map(|s| s.name.clone()).collect(),
        wide: Mutex::new(session),
        narrow: slot,
        overlapped: Default::default(),
        rewrites,
    };
    Ok((engine, inputs, outputs))
}

/// A session's lock if it is free now; a lock poisoned by a run that panicked is free too.
fn free(s: &Mutex<Session>) -> Option<MutexGuard<'_, Session>> {
    match s.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

fn to_ort(t: &Tensor) -> TractResult<DynValue> {
    let shape: Vec<i64> = t.shape().iter().map(|d| *d as i64).collect();
    if t.datum_type() == DatumType::String {
        let strings: Vec<String> = t.to_plain_array_view::<String>()?.iter().cloned().collect();
        return Ok(OrtTensor::from_string_array((shape, strings.as_slice()))
            .map_err(|e| format_err!("{e}"))?
            .into_dyn());
    }
    let et = element(t.datum_type()).ok_or_else(|| format_err!("no ONNX Runtime type for {:?}", t.datum_type()))?;
    let mut v = DynTensor::new(&Allocator::default(), et, shape).map_err(|e| format_err!("{e}"))?;
    let bytes = t.as_bytes();
    if !bytes.is_empty() {
        // SAFETY: the value was just allocated on the CPU for exactly this element type and shape, which
        // is `bytes.len()` bytes, and nothing else refers to it yet.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.data_ptr_mut().cast::<u8>(), bytes.len()) };
    }
    Ok(v.into_dyn())
}

fn from_ort(v: &DynValue) -> TractResult<Tensor> {
    let ValueType::Tensor { ty, shape, .. } = v.dtype() else {
        bail!("the model returned a value that is not a tensor");
    };
    let dims: Vec<usize> = shape.iter().map(|d| (*d).max(0) as usize).collect();
    if *ty == E::String {
        let (_, strings) = v.try_extract_strings().map_err(|e| format_err!("{e}"))?;
        return Ok(tract_ndarray::ArrayD::from_shape_vec(dims, strings)?.into_tensor());
    }
    let dt = datum(*ty).ok_or_else(|| format_err!("the model returned element type {ty:?}"))?;
    let n: usize = dims.iter().product();
    let t = v.downcast_ref::<DynTensorValueType>().map_err(|e| format_err!("{e}"))?;
    let bytes: &[u8] = if n == 0 {
        &[]
    } else {
        // SAFETY: a CPU tensor of `n` elements of `dt` owns `n * size_of(dt)` bytes at its data pointer,
        // alive while `v` is.
        unsafe { std::slice::from_raw_parts(t.data_ptr().cast::<u8>(), n * dt.size_of()) }
    };
    // SAFETY: `bytes` holds exactly `dims` elements of `dt`.
    unsafe { Tensor::from_raw_dt(dt, &dims, bytes) }
}

impl OrtEngine {
    /// The narrow sessions, once made.
    pub fn narrow_sessions(&self) -> usize {
        self.narrow.get().map_or(0, Vec::len)
    }

    /// What [`crate::rewrite`] changed in the model before ONNX Runtime opened it.
    pub fn rewrites(&self) -> Rewrites {
        self.rewrites
    }

    /// Runs made in a narrow session, beside another.
    pub fn overlapped_runs(&self) -> u64 {
        self.overlapped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs once (blocking): in the wide session when `alone` (no other run waits or runs), else in a
    /// free narrow one; in the wide one when none is free.
    pub fn run(&self, inputs: TVec<TValue>, alone: bool) -> TractResult<TVec<TValue>> {
        let session = self
            .session(alone, true)
            .expect("waiting for the wide session always gets it");
        Self::run_in(session, &self.inputs, inputs)
    }

    /// Runs once if a session is free now (as [`OrtEngine::run`] would pick it), without waiting for
    /// one; gives the inputs back otherwise.
    pub fn try_run(&self, inputs: TVec<TValue>, alone: bool) -> Result<TractResult<TVec<TValue>>, TVec<TValue>> {
        match self.session(alone, false) {
            Some(session) => Ok(Self::run_in(session, &self.inputs, inputs)),
            None => Err(inputs),
        }
    }

    /// The session a run takes: a free narrow one unless `alone`, else the wide one, waited for when
    /// `wait`. A session whose lock was poisoned (a run panicked in it) is used as it is.
    fn session(&self, alone: bool, wait: bool) -> Option<MutexGuard<'_, Session>> {
        if !alone {
            if let Some(g) = self.narrow.get().and_then(|all| all.iter().find_map(free)) {
                self.overlapped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Some(g);
            }
        }
        if wait {
            Some(self.wide.lock().unwrap_or_else(|p| p.into_inner()))
        } else {
            free(&self.wide)
        }
    }

    fn run_in(
        mut session: MutexGuard<'_, Session>,
        names: &[String],
        inputs: TVec<TValue>,
    ) -> TractResult<TVec<TValue>> {
        let values: Vec<(String, DynValue)> = names
            .iter()
            .zip(inputs.iter())
            .map(|(name, t)| Ok((name.clone(), to_ort(t)?)))
            .collect::<TractResult<_>>()?;
        let outputs = session.run(values).map_err(|e| format_err!("{e}"))?;
        outputs.values().map(|v| Ok(from_ort(&v)?.into_tvalue())).collect()
    }
}
