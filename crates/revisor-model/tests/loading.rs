//! Loading models with tract whose inputs declare no shape (ONNX allows it): the graph fixes what it
//! can, and a rank it cannot fix is a load error that names the input.

use prost::Message;
use revisor_model::examples::{write_all, Example};
use revisor_model::Model;
use tract_onnx::pb::{self, ModelProto};
use tract_onnx::prelude::*;

/// `model` with the shape of its first input's type cleared (the element type stays).
fn unshaped(mut model: ModelProto) -> ModelProto {
    let input = &mut model.graph.as_mut().unwrap().input[0];
    match input.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        Some(pb::type_proto::Value::TensorType(t)) => t.shape = None,
        _ => panic!("the example's input is a tensor"),
    }
    model
}

fn run(m: &Model, rows: &[f32]) -> Vec<f32> {
    let x = tract_ndarray::Array2::from_shape_vec((rows.len() / 4, 4), rows.to_vec()).unwrap();
    let out = m.run(tvec!(x.into_tensor().into_tvalue())).unwrap();
    out[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect()
}

#[test]
fn an_input_without_a_declared_shape_takes_the_shape_the_graph_gives_it() {
    let dir = tempfile::tempdir().unwrap();
    write_all(dir.path()).unwrap();
    let shaped = dir.path().join(Example::V1.file_name());
    let proto = ModelProto::decode(std::fs::read(&shaped).unwrap().as_slice()).unwrap();
    let file = dir.path().join("unshaped.onnx");
    std::fs::write(&file, unshaped(proto).encode_to_vec()).unwrap();

    let (a, b) = (
        Model::load(shaped.to_str().unwrap(), "tabular", "1").unwrap(),
        Model::load(file.to_str().unwrap(), "tabular", "1").unwrap(),
    );
    // Rank 2 from the Gemm, 4 features from its weights, the batch open.
    assert_eq!(b.inputs[0].shape, vec![-1, 4]);
    let rows = [1.0, 2.0, 3.0, 4.0, 0.5, -1.0, 0.0, 2.0];
    assert_eq!(run(&a, &rows), run(&b, &rows));
}

#[test]
fn an_input_whose_rank_nothing_fixes_is_a_load_error_naming_it() {
    // y = Relu(x), x FLOAT with no shape: any rank would do, and tract needs one.
    let tensor = |name: &str, shape: Option<pb::TensorShapeProto>| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape,
            })),
        }),
        doc_string: String::new(),
    };
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(pb::GraphProto {
            node: vec![pb::NodeProto {
                input: vec!["x".into()],
                output: vec!["y".into()],
                name: "relu".into(),
                op_type: "Relu".into(),
                ..Default::default()
            }],
            input: vec![tensor("x", None)],
            output: vec![tensor("y", None)],
            name: "g".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relu.onnx");
    std::fs::write(&file, model.encode_to_vec()).unwrap();
    let err = Model::load(file.to_str().unwrap(), "relu", "1")
        .err()
        .expect("no rank, no model");
    assert!(
        err.message
            .contains("input \"x\" declares no shape and the graph does not fix its rank"),
        "{}",
        err.message
    );
}
