//! The Open Inference Protocol's JSON objects.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::TensorSpec;

#[derive(Debug, Serialize)]
pub struct ServerMetadata {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct ModelMetadata<'a> {
    pub name: &'a str,
    pub versions: Vec<&'a str>,
    pub platform: &'static str,
    pub inputs: &'a [TensorSpec],
    pub outputs: &'a [TensorSpec],
}

#[derive(Debug, Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    pub inputs: Vec<RequestInput>,
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
}

#[derive(Debug, Deserialize)]
pub struct RequestInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    #[serde(default)]
    pub data: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct RequestOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
}

#[derive(Debug, Serialize)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    pub outputs: Vec<ResponseOutput>,
}

#[derive(Debug, Serialize)]
pub struct ResponseOutput {
    pub name: String,
    pub shape: Vec<usize>,
    pub datatype: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// A boolean parameter (`binary_data_output`, `binary_data`).
pub fn flag(params: &Option<Map<String, Value>>, key: &str) -> bool {
    params
        .as_ref()
        .and_then(|p| p.get(key))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The `binary_data_size` of an input, when its data is in the binary section.
pub fn binary_size(params: &Option<Map<String, Value>>) -> Option<u64> {
    params
        .as_ref()
        .and_then(|p| p.get("binary_data_size"))
        .and_then(Value::as_u64)
}
