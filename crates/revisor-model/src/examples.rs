//! Example models made by revisor itself (no download): a small tabular classifier in two versions
//! with different weights, and a faulty third version that loads but fails at inference.
//!
//! Each takes `features` (FP32, [N, 4]) and gives `probabilities` (FP32, [N, 3]).

use std::path::{Path, PathBuf};

use prost::Message;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType as PbType, tensor_shape_proto::dimension::Value as Dim,
    tensor_shape_proto::Dimension, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The example versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Example {
    V1,
    V2,
    /// Loads and warms up, but every answer holds NaN, which the server refuses to send (500).
    V3Faulty,
}

impl Example {
    pub const ALL: [Example; 3] = [Example::V1, Example::V2, Example::V3Faulty];

    pub fn file_name(self) -> &'static str {
        match self {
            Example::V1 => "tabular-v1.onnx",
            Example::V2 => "tabular-v2.onnx",
            Example::V3Faulty => "tabular-v3-faulty.onnx",
        }
    }

    /// Weights [4, 3] and bias [3] of the linear layer.
    fn weights(self) -> (Vec<f32>, Vec<f32>) {
        let w1 = vec![0.8, -0.4, 0.1, -0.3, 0.9, 0.2, 0.5, 0.1, -0.7, -0.2, 0.3, 0.6];
        match self {
            Example::V1 | Example::V3Faulty => (w1, vec![0.1, 0.0, -0.1]),
            // Retrained: close to v1, so the classes mostly agree while the probabilities differ.
            Example::V2 => (
                w1.iter()
                    .enumerate()
                    .map(|(i, w)| w * 1.15 + if i % 3 == 1 { 0.05 } else { -0.02 })
                    .collect(),
                vec![0.05, 0.05, -0.05],
            ),
        }
    }
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let shape = TensorShapeProto {
        dim: dims
            .iter()
            .map(|d| Dimension {
                denotation: String::new(),
                value: Some(d.clone()),
            })
            .collect(),
    };
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            denotation: String::new(),
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: PbType::Float as i32,
                shape: Some(shape),
            })),
        }),
        doc_string: String::new(),
    }
}

fn floats(name: &str, dims: &[i64], data: Vec<f32>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: PbType::Float as i32,
        float_data: data,
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: format!("{op}_{output}"),
        op_type: op.into(),
        attribute,
        ..Default::default()
    }
}

/// The ONNX bytes of an example model.
pub fn model_bytes(which: Example) -> Vec<u8> {
    let (w, b) = which.weights();
    let axis = AttributeProto {
        name: "axis".into(),
        r#type: AttributeType::Int as i32,
        i: 1,
        ..Default::default()
    };
    let mut nodes = vec![node("Gemm", &["features", "W", "B"], "logits", vec![])];
    let mut initializer = vec![floats("W", &[4, 3], w), floats("B", &[3], b)];
    if which == Example::V3Faulty {
        // log(softmax - 1) is the log of a negative number: NaN for every input.
        nodes.push(node("Softmax", &["logits"], "softmax", vec![axis]));
        nodes.push(node("Sub", &["softmax", "ONE"], "shifted", vec![]));
        nodes.push(node("Log", &["shifted"], "probabilities", vec![]));
        initializer.push(floats("ONE", &[], vec![1.0]));
    } else {
        nodes.push(node("Softmax", &["logits"], "probabilities", vec![axis]));
    }
    let batch = Dim::DimParam("N".into());
    let graph = GraphProto {
        name: format!("tabular-{:?}", which).to_lowercase(),
        node: nodes,
        initializer,
        input: vec![value_info("features", &[batch.clone(), Dim::DimValue(4)])],
        output: vec![value_info("probabilities", &[batch, Dim::DimValue(3)])],
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: 7,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "revisor".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        ..Default::default()
    };
    model.encode_to_vec()
}

/// Writes every example into `dir`; returns their paths.
pub fn write_all(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    Example::ALL
        .iter()
        .map(|e| {
            let p = dir.join(e.file_name());
            std::fs::write(&p, model_bytes(*e))?;
            Ok(p)
        })
        .collect()
}
