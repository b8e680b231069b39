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
pub mod server;
pub mod storage;
pub mod tensor;
pub mod v1;

pub use error::{InferError, LoadError};
pub use infer::Runner;
pub use model::{Model, TensorSpec};
pub use server::{router, state, ServerState};
