//! revisor's model server: one ONNX model, loaded and optimized once with tract, served over the Open
//! Inference Protocol (KServe V2) REST API.

pub mod batching;
pub mod datatype;
pub mod error;
pub mod examples;
pub mod infer;
pub mod metrics;
pub mod model;
pub mod onnxruntime;
pub mod protocol;
pub mod rewrite;
pub mod server;
pub mod storage;
pub mod tensor;
pub mod v1;

pub use error::{InferError, LoadError};

/// mimalloc's `purge_delay` option (the same index in its v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Has mimalloc (the allocator of the `revisor` binary) give freed memory back to the system at once
/// rather than after its purge delay and the next allocation: a model server sits idle between large
/// requests, and what a request used should not stay resident after it. Call it before serving; it
/// does nothing under another allocator.
pub fn return_freed_memory_at_once() {
    purge_freed_memory_after(std::time::Duration::ZERO);
}

/// Has mimalloc give freed memory back to the system only after `delay` (its default is 10 ms). The
/// server (`revisor serve`) frees and allocates again about the same memory every second (the
/// autoscaler's samples of every revision): purged and faulted in again each time, it was a fifth of
/// an idle server's CPU, zeroing pages.
pub fn purge_freed_memory_after(delay: std::time::Duration) {
    let ms = delay.as_millis().min(i64::MAX as u128) as std::os::raw::c_long;
    // SAFETY: sets a process-wide option of the linked mimalloc; any thread may call it at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms) };
}
pub use infer::Runner;
pub use model::{Model, TensorSpec};
pub use server::{router, state, ServerState};
