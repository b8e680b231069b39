//! Tensors between the protocol's JSON (`shape`, `datatype`, `data` flat or nested, row-major) and tract.

use serde_json::{Number, Value};
use tract_onnx::prelude::*;

use crate::datatype::DataType;
use crate::error::InferError;

/// Flattens nested JSON arrays in row-major order.
fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn element_error(name: &str, i: usize, v: &Value, dt: DataType) -> InferError {
    InferError::BadRequest(format!(
        "input {name:?}: element {i} ({v}) is not a valid {}",
        dt.name()
    ))
}

macro_rules! ints {
    ($name:expr, $dt:expr, $vals:expr, $shape:expr, $t:ty, $get:ident) => {{
        let mut out: Vec<$t> = Vec::with_capacity($vals.len());
        for (i, v) in $vals.iter().enumerate() {
            let x = v
                .$get()
                .and_then(|x| <$t>::try_from(x).ok())
                .ok_or_else(|| element_error($name, i, v, $dt))?;
            out.push(x);
        }
        Tensor::from_shape::<$t>($shape, &out)
    }};
}

macro_rules! floats {
    ($name:expr, $dt:expr, $vals:expr, $shape:expr, $t:ty, $conv:expr) => {{
        let mut out: Vec<$t> = Vec::with_capacity($vals.len());
        for (i, v) in $vals.iter().enumerate() {
            let x = v.as_f64().ok_or_else(|| element_error($name, i, v, $dt))?;
            out.push($conv(x));
        }
        Tensor::from_shape::<$t>($shape, &out)
    }};
}

/// Builds a tensor from an input's JSON `data`, checking every element against the datatype and the
/// element count against the shape.
pub fn from_json(name: &str, dt: DataType, shape: &[usize], data: &Value) -> Result<Tensor, InferError> {
    let mut vals = Vec::new();
    flatten(data, &mut vals);
    let want: usize = shape.iter().product();
    if vals.len() != want {
        return Err(InferError::BadRequest(format!(
            "input {name:?}: shape {shape:?} holds {want} elements, but data has {}",
            vals.len()
        )));
    }
    let t = match dt {
        DataType::Bool => {
            let mut out = Vec::with_capacity(vals.len());
            for (i, v) in vals.iter().enumerate() {
                out.push(v.as_bool().ok_or_else(|| element_error(name, i, v, dt))?);
            }
            Tensor::from_shape::<bool>(shape, &out)
        }
        DataType::Uint8 => ints!(name, dt, vals, shape, u8, as_u64),
        DataType::Uint16 => ints!(name, dt, vals, shape, u16, as_u64),
        DataType::Uint32 => ints!(name, dt, vals, shape, u32, as_u64),
        DataType::Uint64 => ints!(name, dt, vals, shape, u64, as_u64),
        DataType::Int8 => ints!(name, dt, vals, shape, i8, as_i64),
        DataType::Int16 => ints!(name, dt, vals, shape, i16, as_i64),
        DataType::Int32 => ints!(name, dt, vals, shape, i32, as_i64),
        DataType::Int64 => ints!(name, dt, vals, shape, i64, as_i64),
        DataType::Fp16 => floats!(name, dt, vals, shape, f16, |x: f64| f16::from_f64(x)),
        DataType::Fp32 => floats!(name, dt, vals, shape, f32, |x: f64| x as f32),
        DataType::Fp64 => floats!(name, dt, vals, shape, f64, |x: f64| x),
        DataType::Bytes => {
            let mut out = Vec::with_capacity(vals.len());
            for (i, v) in vals.iter().enumerate() {
                out.push(v.as_str().ok_or_else(|| element_error(name, i, v, dt))?.to_string());
            }
            tract_ndarray::ArrayD::from_shape_vec(shape, out)
                .map(Tensor::from)
                .map_err(|e| tract_onnx::prelude::TractError::msg(e.to_string()))
        }
    };
    t.map_err(|e| InferError::BadRequest(format!("input {name:?}: {e}")))
}

/// Whether a floating-point tensor holds NaN or an infinity.
pub fn has_non_finite(t: &Tensor) -> bool {
    match t.datum_type() {
        DatumType::F32 => t
            .to_plain_array_view::<f32>()
            .is_ok_and(|a| a.iter().any(|x| !x.is_finite())),
        DatumType::F64 => t
            .to_plain_array_view::<f64>()
            .is_ok_and(|a| a.iter().any(|x| !x.is_finite())),
        DatumType::F16 => t.cast_to::<f32>().is_ok_and(|c| {
            c.to_plain_array_view::<f32>()
                .is_ok_and(|a| a.iter().any(|x| !x.is_finite()))
        }),
        _ => false,
    }
}

fn number(x: f64) -> Result<Value, InferError> {
    Number::from_f64(x)
        .map(Value::Number)
        .ok_or_else(|| InferError::Model(format!("the model produced a value JSON cannot carry ({x})")))
}

/// An output tensor as (datatype, shape, flat JSON data).
pub fn to_json(t: &Tensor) -> Result<(DataType, Vec<usize>, Value), InferError> {
    let dt = DataType::from_datum(t.datum_type()).ok_or_else(|| {
        InferError::Model(format!(
            "the model produced a {:?} tensor, which the protocol cannot carry",
            t.datum_type()
        ))
    })?;
    let shape = t.shape().to_vec();
    let as_vals = |f: &dyn Fn() -> Result<Vec<Value>, InferError>| f().map(Value::Array);
    let data = match dt {
        DataType::Bool => as_vals(&|| {
            Ok(t.to_plain_array_view::<bool>()
                .map_err(model)?
                .iter()
                .map(|b| Value::Bool(*b))
                .collect())
        })?,
        DataType::Uint8 => as_vals(&|| {
            Ok(t.to_plain_array_view::<u8>()
                .map_err(model)?
                .iter()
                .map(|x| Value::from(*x))
                .collect())
        })?,
        DataType::Uint16 => as_vals(&|| {
            Ok(t.to_plain_array_view::<u16>()
                .map_err(model)?
                .iter()
                .map(|x| Value::from(*x))
                .collect())
        })?,
        DataType::Uint32 => as_vals(&|| {
            Ok(t.to_plain_array_view::<u32>()
                .map_err(model)?
                .iter()
                .map(|x| Value::from(*x))
                .collect())
        })?,
        DataType::Uint64 => as_vals(&|| {
            Ok(t.to_plain_array_view::<u64>()
                .map_err(model)?
                .iter()
                .map(|x| Value::from(*x))
                .collect())
        })?,
        DataType::Int8 => as_vals(&|| {
            Ok(t.to_plain_array_view::<i8>()
                .map_err(model)?
                .iter()
                .map(|x| Value::from(*x))
                .collect())
        })?,
        DataType::Int16 => as_vals(&|| {
            Ok(t.to_plain_array_view::<i16>()
                .map_err(model)?
                .iter()
                .map(|x| Value::from(*x))
                .collect())
        })?,
        DataType::Int32 => as_vals(&|| {
            Ok(t.to_plain_array_view::<i32>()
                .map_err(model)?
                .iter()
                .map(|x| Value::from(*x))
                .collect())
        })?,
        DataType::Int64 => as_vals(&|| {
            Ok(t.to_plain_array_view::<i64>()
                .map_err(model)?
                .iter()
                .map(|x| Value::from(*x))
                .collect())
        })?,
        DataType::Fp16 => as_vals(&|| {
            t.to_plain_array_view::<f16>()
                .map_err(model)?
                .iter()
                .map(|x| number(x.to_f64()))
                .collect()
        })?,
        DataType::Fp32 => as_vals(&|| {
            t.to_plain_array_view::<f32>()
                .map_err(model)?
                .iter()
                .map(|x| number(*x as f64))
                .collect()
        })?,
        DataType::Fp64 => as_vals(&|| {
            t.to_plain_array_view::<f64>()
                .map_err(model)?
                .iter()
                .map(|x| number(*x))
                .collect()
        })?,
        DataType::Bytes => as_vals(&|| {
            Ok(t.to_plain_array_view::<String>()
                .map_err(model)?
                .iter()
                .map(|s| Value::String(s.clone()))
                .collect())
        })?,
    };
    Ok((dt, shape, data))
}

fn model(e: impl std::fmt::Display) -> InferError {
    InferError::Model(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_and_flat_data_are_row_major() {
        let a = from_json("x", DataType::Fp32, &[2, 2], &json!([[1, 2], [3, 4.5]])).unwrap();
        let b = from_json("x", DataType::Fp32, &[2, 2], &json!([1, 2, 3, 4.5])).unwrap();
        assert_eq!(a, b);
        let (dt, shape, data) = to_json(&a).unwrap();
        assert_eq!(
            (dt, shape, data),
            (DataType::Fp32, vec![2, 2], json!([1.0, 2.0, 3.0, 4.5]))
        );
    }

    #[test]
    fn every_datatype_round_trips() {
        let cases = [
            (DataType::Bool, json!([true, false])),
            (DataType::Uint8, json!([0, 255])),
            (DataType::Uint16, json!([0, 65535])),
            (DataType::Uint32, json!([0, 4294967295u64])),
            (DataType::Uint64, json!([0, 18446744073709551615u64])),
            (DataType::Int8, json!([-128, 127])),
            (DataType::Int16, json!([-32768, 32767])),
            (DataType::Int32, json!([-2147483648i64, 2147483647])),
            (
                DataType::Int64,
                json!([-9223372036854775808i64, 9223372036854775807i64]),
            ),
            (DataType::Fp16, json!([0.5, -2.0])),
            (DataType::Fp32, json!([0.5, -2.0])),
            (DataType::Fp64, json!([0.5, -2.0])),
            (DataType::Bytes, json!(["a", "bc"])),
        ];
        for (dt, data) in cases {
            let t = from_json("x", dt, &[2], &data).unwrap();
            let (got_dt, shape, got) = to_json(&t).unwrap();
            assert_eq!((got_dt, shape), (dt, vec![2]), "{dt:?}");
            assert_eq!(got, data, "{dt:?}");
        }
    }

    #[test]
    fn bad_elements_and_counts_are_named() {
        let e = from_json("x", DataType::Uint8, &[2], &json!([1, 300])).unwrap_err();
        assert_eq!(e.to_string(), "input \"x\": element 1 (300) is not a valid UINT8");
        let e = from_json("x", DataType::Fp32, &[2, 2], &json!([1, 2, 3])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "input \"x\": shape [2, 2] holds 4 elements, but data has 3"
        );
        let e = from_json("x", DataType::Bool, &[1], &json!([1])).unwrap_err();
        assert!(e.to_string().contains("not a valid BOOL"));
    }
}

macro_rules! le {
    ($bytes:expr, $t:ty) => {
        $bytes
            .chunks_exact(std::mem::size_of::<$t>())
            .map(|c| <$t>::from_le_bytes(c.try_into().expect("exact chunk")))
            .collect::<Vec<$t>>()
    };
}

/// Builds a tensor from the binary tensor extension's raw bytes: little-endian, row-major; BYTES
/// elements each prefixed by a 4-byte little-endian length; BOOL one byte of 0 or 1.
pub fn from_binary(name: &str, dt: DataType, shape: &[usize], bytes: &[u8]) -> Result<Tensor, InferError> {
    let n: usize = shape.iter().product();
    let bad = |why: String| InferError::BadRequest(format!("input {name:?}: binary data {why}"));
    if let Some(size) = dt.size() {
        if bytes.len() != n * size {
            return Err(bad(format!(
                "has {} bytes, but shape {shape:?} of {} needs {}",
                bytes.len(),
                dt.name(),
                n * size
            )));
        }
    }
    let t = match dt {
        DataType::Bool => {
            if let Some(b) = bytes.iter().find(|b| **b > 1) {
                return Err(bad(format!("holds {b}, not a BOOL (0 or 1)")));
            }
            Tensor::from_shape::<bool>(shape, &bytes.iter().map(|b| *b == 1).collect::<Vec<_>>())
        }
        DataType::Uint8 => Tensor::from_shape::<u8>(shape, bytes),
        DataType::Int8 => Tensor::from_shape::<i8>(shape, &bytes.iter().map(|b| *b as i8).collect::<Vec<_>>()),
        DataType::Uint16 => Tensor::from_shape::<u16>(shape, &le!(bytes, u16)),
        DataType::Uint32 => Tensor::from_shape::<u32>(shape, &le!(bytes, u32)),
        DataType::Uint64 => Tensor::from_shape::<u64>(shape, &le!(bytes, u64)),
        DataType::Int16 => Tensor::from_shape::<i16>(shape, &le!(bytes, i16)),
        DataType::Int32 => Tensor::from_shape::<i32>(shape, &le!(bytes, i32)),
        DataType::Int64 => Tensor::from_shape::<i64>(shape, &le!(bytes, i64)),
        DataType::Fp16 => Tensor::from_shape::<f16>(
            shape,
            &le!(bytes, u16).into_iter().map(f16::from_bits).collect::<Vec<_>>(),
        ),
        DataType::Fp32 => Tensor::from_shape::<f32>(shape, &le!(bytes, f32)),
        DataType::Fp64 => Tensor::from_shape::<f64>(shape, &le!(bytes, f64)),
        DataType::Bytes => {
            let mut out = Vec::with_capacity(n);
            let mut rest = bytes;
            while rest.len() >= 4 {
                let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
                let Some(s) = rest.get(4..4 + len) else {
                    return Err(bad(format!("element {} runs past the end", out.len())));
                };
                out.push(
                    String::from_utf8(s.to_vec()).map_err(|_| bad(format!("element {} is not UTF-8", out.len())))?,
                );
                rest = &rest[4 + len..];
            }
            if !rest.is_empty() || out.len() != n {
                return Err(bad(format!(
                    "holds {} BYTES elements, but shape {shape:?} needs {n}",
                    out.len()
                )));
            }
            tract_ndarray::ArrayD::from_shape_vec(shape, out)
                .map(Tensor::from)
                .map_err(|e| TractError::msg(e.to_string()))
        }
    };
    t.map_err(|e| InferError::BadRequest(format!("input {name:?}: {e}")))
}

/// An output tensor as (datatype, shape, raw bytes) for the binary tensor extension.
pub fn to_binary(t: &Tensor) -> Result<(DataType, Vec<usize>, Vec<u8>), InferError> {
    let dt = DataType::from_datum(t.datum_type()).ok_or_else(|| {
        InferError::Model(format!(
            "the model produced a {:?} tensor, which the protocol cannot carry",
            t.datum_type()
        ))
    })?;
    let bytes = match dt {
        DataType::Bytes => {
            let mut out = Vec::new();
            for s in t.to_plain_array_view::<String>().map_err(model)?.iter() {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            out
        }
        _ => t.as_bytes().to_vec(),
    };
    Ok((dt, t.shape().to_vec(), bytes))
}

#[cfg(test)]
mod binary_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn binary_round_trips_equal_json() {
        for (dt, data) in [
            (DataType::Fp32, json!([1.5, -2.0])),
            (DataType::Int64, json!([-7, 9])),
            (DataType::Bool, json!([true, false])),
            (DataType::Bytes, json!(["ab", ""])),
            (DataType::Fp16, json!([0.5, 2.0])),
        ] {
            let t = from_json("x", dt, &[2], &data).unwrap();
            let (got_dt, shape, bytes) = to_binary(&t).unwrap();
            assert_eq!((got_dt, shape.as_slice()), (dt, &[2usize][..]));
            assert_eq!(from_binary("x", dt, &[2], &bytes).unwrap(), t, "{dt:?}");
        }
        let e = from_binary("x", DataType::Fp32, &[2], &[0; 7]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "input \"x\": binary data has 7 bytes, but shape [2] of FP32 needs 8"
        );
    }
}
