//! Tensors between the protocol's JSON (`shape`, `datatype`, `data` flat or nested, row-major) and tract.

use serde_json::{Number, Value};
use tract_onnx::prelude::*;

use crate::datatype::DataType;
use crate::error::InferError;

/// A tensor element decoded from a JSON scalar, converted as `serde_json::Value`'s `as_u64`, `as_i64`,
/// `as_f64`, `as_bool` and `as_str` convert (a JSON integer is a valid float, a float never a valid
/// integer).
trait Element: Sized {
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    fn from_str(_: &str) -> Option<Self> {
        None
    }
}

macro_rules! unsigned {
    ($($t:ty),*) => {$(
        impl Element for $t {
            fn from_u64(x: u64) -> Option<Self> {
                <$t>::try_from(x).ok()
            }
            fn from_i64(x: i64) -> Option<Self> {
                u64::try_from(x).ok().and_then(|x| <$t>::try_from(x).ok())
            }
        }
    )*};
}

macro_rules! signed {
    ($($t:ty),*) => {$(
        impl Element for $t {
            fn from_u64(x: u64) -> Option<Self> {
                i64::try_from(x).ok().and_then(|x| <$t>::try_from(x).ok())
            }
            fn from_i64(x: i64) -> Option<Self> {
                <$t>::try_from(x).ok()
            }
        }
    )*};
}

macro_rules! float {
    ($t:ty, $conv:expr) => {
        impl Element for $t {
            fn from_u64(x: u64) -> Option<Self> {
                Some($conv(x as f64))
            }
            fn from_i64(x: i64) -> Option<Self> {
                Some($conv(x as f64))
            }
            fn from_f64(x: f64) -> Option<Self> {
                Some($conv(x))
            }
        }
    };
}

unsigned!(u8, u16, u32, u64);
signed!(i8, i16, i32, i64);
float!(f16, f16::from_f64);
float!(f32, |x: f64| x as f32);
float!(f64, |x: f64| x);

impl Element for bool {
    fn from_bool(b: bool) -> Option<Self> {
        Some(b)
    }
}

impl Element for String {
    fn from_str(s: &str) -> Option<Self> {
        Some(s.to_string())
    }
}

/// The leaves of an input's `data`, flattened row-major as they stream past: the valid elements,
/// written in place (while they fit), how many leaves there were, and the first one that is not a valid
/// element, shown as JSON.
struct Leaves<'o, T> {
    out: &'o mut [T],
    count: usize,
    bad: Option<(usize, String)>,
    /// How deeply arrays and objects may nest in `data`.
    max_depth: usize,
}

impl<T> Leaves<'_, T> {
    fn leaf(&mut self, x: Option<T>, show: impl FnOnce() -> String) {
        let i = self.count;
        self.count += 1;
        match x {
            Some(x) => {
                if let Some(slot) = self.out.get_mut(i) {
                    *slot = x;
                }
            }
            None if self.bad.is_none() => self.bad = Some((i, show())),
            None => {}
        }
    }
}

fn too_deep<E: serde::de::Error>() -> E {
    // serde_json's own words, so the message reads as it did when the whole body was one Value.
    E::custom("recursion limit exceeded")
}

/// One value of `data` at some depth: an array is walked, anything else is a leaf.
struct Level<'a, 'o, T> {
    leaves: &'a mut Leaves<'o, T>,
    depth: usize,
}

impl<'de, T: Element> serde::de::DeserializeSeed<'de> for Level<'_, '_, T> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: Element> serde::de::Visitor<'de> for Level<'_, '_, T> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("tensor data")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= self.leaves.max_depth {
            return Err(too_deep());
        }
        while seq
            .next_element_seed(Level {
                leaves: &mut *self.leaves,
                depth: self.depth + 1,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        // An object is one (invalid) element; only the first invalid element is shown.
        let leaves = self.leaves;
        let mut shown = leaves.bad.is_none().then(String::new);
        Compact {
            out: shown.as_mut(),
            depth: self.depth,
            max_depth: leaves.max_depth,
        }
        .visit_map(map)?;
        leaves.leaf(None, || shown.unwrap_or_default());
        Ok(())
    }

    fn visit_bool<E>(self, b: bool) -> Result<(), E> {
        self.leaves.leaf(T::from_bool(b), || Value::from(b).to_string());
        Ok(())
    }

    fn visit_u64<E>(self, x: u64) -> Result<(), E> {
        self.leaves.leaf(T::from_u64(x), || Value::from(x).to_string());
        Ok(())
    }

    fn visit_i64<E>(self, x: i64) -> Result<(), E> {
        self.leaves.leaf(T::from_i64(x), || Value::from(x).to_string());
        Ok(())
    }

    fn visit_f64<E>(self, x: f64) -> Result<(), E> {
        self.leaves.leaf(T::from_f64(x), || Value::from(x).to_string());
        Ok(())
    }

    fn visit_str<E>(self, s: &str) -> Result<(), E> {
        self.leaves.leaf(T::from_str(s), || Value::from(s).to_string());
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.leaves.leaf(None, || Value::Null.to_string());
        Ok(())
    }
}

/// Writes a value as compact JSON, as `serde_json::Value` displays it, without building one (or only
/// walks it, when `out` is None).
struct Compact<'a> {
    out: Option<&'a mut String>,
    depth: usize,
    max_depth: usize,
}

impl Compact<'_> {
    fn push(&mut self, s: &str) {
        if let Some(out) = self.out.as_deref_mut() {
            out.push_str(s);
        }
    }

    fn inner(&mut self) -> Compact<'_> {
        Compact {
            out: self.out.as_deref_mut(),
            depth: self.depth + 1,
            max_depth: self.max_depth,
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Compact<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Compact<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= self.max_depth {
            return Err(too_deep());
        }
        self.push("[");
        let mut first = true;
        loop {
            if !first {
                // Written before the element is known to exist, so taken back at the end.
                self.push(",");
            }
            if seq.next_element_seed(self.inner())?.is_none() {
                if !first {
                    if let Some(out) = self.out.as_deref_mut() {
                        out.pop();
                    }
                }
                break;
            }
            first = false;
        }
        self.push("]");
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        if self.depth >= self.max_depth {
            return Err(too_deep());
        }
        // As a Value's map keeps them: a repeated key keeps its first place and takes its last value.
        let mut entries: Vec<(String, String)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let mut value = self.out.is_some().then(String::new);
            map.next_value_seed(Compact {
                out: value.as_mut(),
                depth: self.depth + 1,
                max_depth: self.max_depth,
            })?;
            if let Some(value) = value {
                match entries.iter_mut().find(|(k, _)| *k == key) {
                    Some(entry) => entry.1 = value,
                    None => entries.push((key, value)),
                }
            }
        }
        self.push("{");
        for (i, (key, value)) in entries.iter().enumerate() {
            if i > 0 {
                self.push(",");
            }
            self.push(&Value::from(key.as_str()).to_string());
            self.push(":");
            self.push(value);
        }
        self.push("}");
        Ok(())
    }

    fn visit_bool<E>(mut self, b: bool) -> Result<(), E> {
        self.push(&Value::from(b).to_string());
        Ok(())
    }

    fn visit_u64<E>(mut self, x: u64) -> Result<(), E> {
        self.push(&Value::from(x).to_string());
        Ok(())
    }

    fn visit_i64<E>(mut self, x: i64) -> Result<(), E> {
        self.push(&Value::from(x).to_string());
        Ok(())
    }

    fn visit_f64<E>(mut self, x: f64) -> Result<(), E> {
        self.push(&Value::from(x).to_string());
        Ok(())
    }

    fn visit_str<E>(mut self, s: &str) -> Result<(), E> {
        self.push(&Value::from(s).to_string());
        Ok(())
    }

    fn visit_unit<E>(mut self) -> Result<(), E> {
        self.push("null");
        Ok(())
    }
}

/// Decodes `data` into `out` (as much as fits), then checks the element count against the shape and
/// every element against the datatype, in that order.
fn decode<'de, T: Element, D: serde::Deserializer<'de>>(
    name: &str,
    dt: DataType,
    shape: &[usize],
    data: D,
    out: &mut [T],
    max_depth: usize,
) -> Result<Result<(), InferError>, D::Error> {
    let want: usize = shape.iter().product();
    let mut leaves = Leaves {
        out,
        count: 0,
        bad: None,
        max_depth,
    };
    serde::de::DeserializeSeed::deserialize(
        Level {
            leaves: &mut leaves,
            depth: 0,
        },
        data,
    )?;
    if leaves.count != want {
        return Ok(Err(InferError::BadRequest(format!(
            "input {name:?}: shape {shape:?} holds {want} elements, but data has {}",
            leaves.count
        ))));
    }
    if let Some((i, shown)) = leaves.bad {
        return Ok(Err(InferError::BadRequest(format!(
            "input {name:?}: element {i} ({shown}) is not a valid {}",
            dt.name()
        ))));
    }
    if leaves.out.len() != want {
        return Ok(Err(InferError::Model(format!(
            "input {name:?}: {want} elements decoded without room for them"
        ))));
    }
    Ok(Ok(()))
}

/// Builds a tensor from an input's JSON `data` (flat or nested, row-major), decoding it straight into
/// the tensor: checks the element count against the shape and every element against the datatype.
/// `data` holds at most `most` elements (as far as its size tells): the shape is the client's word, so
/// room for more than that is never made, whatever it claims. `max_depth` bounds the nesting. The outer
/// error is the deserializer's own (nesting too deep).
pub fn decode_json<'de, D: serde::Deserializer<'de>>(
    name: &str,
    dt: DataType,
    shape: &[usize],
    data: D,
    most: usize,
    max_depth: usize,
) -> Result<Result<Tensor, InferError>, D::Error> {
    let want: usize = shape.iter().product();
    let room = want <= most;
    macro_rules! plain {
        ($t:ty) => {{
            let mut t = if room {
                match Tensor::zero_dt(dt.datum(), shape) {
                    Ok(t) => Some(t),
                    Err(e) => return Ok(Err(tensor_error(name, e))),
                }
            } else {
                None
            };
            let out: &mut [$t] = match t.as_mut().map(|t| t.to_plain_array_view_mut::<$t>()) {
                Some(Ok(view)) => view.into_slice().expect("a new tensor is contiguous"),
                Some(Err(e)) => return Ok(Err(tensor_error(name, e))),
                None => &mut [],
            };
            decode::<$t, D>(name, dt, shape, data, out, max_depth)?.map(|()| t.expect("room was made"))
        }};
    }
    Ok(match dt {
        DataType::Bool => plain!(bool),
        DataType::Uint8 => plain!(u8),
        DataType::Uint16 => plain!(u16),
        DataType::Uint32 => plain!(u32),
        DataType::Uint64 => plain!(u64),
        DataType::Int8 => plain!(i8),
        DataType::Int16 => plain!(i16),
        DataType::Int32 => plain!(i32),
        DataType::Int64 => plain!(i64),
        DataType::Fp16 => plain!(f16),
        DataType::Fp32 => plain!(f32),
        DataType::Fp64 => plain!(f64),
        DataType::Bytes => {
            let mut out = if room { vec![String::new(); want] } else { Vec::new() };
            decode::<String, D>(name, dt, shape, data, &mut out, max_depth)?.and_then(|()| {
                tract_ndarray::ArrayD::from_shape_vec(shape, out)
                    .map(Tensor::from)
                    .map_err(|e| tensor_error(name, TractError::msg(e.to_string())))
            })
        }
    })
}

fn tensor_error(name: &str, e: TractError) -> InferError {
    InferError::BadRequest(format!("input {name:?}: {e}"))
}

/// Builds a tensor from an input's JSON `data` (flat or nested, row-major), checking every element
/// against the datatype and the element count against the shape.
pub fn from_json(name: &str, dt: DataType, shape: &[usize], data: &Value) -> Result<Tensor, InferError> {
    fn leaves(v: &Value) -> usize {
        match v {
            Value::Array(items) => items.iter().map(leaves).sum(),
            _ => 1,
        }
    }
    decode_json(name, dt, shape, data, leaves(data), usize::MAX)
        .map_err(|e| InferError::BadRequest(format!("input {name:?}: {e}")))?
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

/// An output tensor's `data` as the protocol's flat JSON array, serialized straight from the tensor
/// (as [`to_json`] would give it, without a `serde_json::Value` per element).
#[derive(Debug)]
pub struct JsonData(TValue);

/// An output tensor as (datatype, shape, flat JSON data); refuses, as [`to_json`] does, a tensor holding
/// a value JSON cannot carry.
pub fn json_data(t: TValue) -> Result<(DataType, Vec<usize>, JsonData), InferError> {
    let dt = DataType::from_datum(t.datum_type()).ok_or_else(|| {
        InferError::Model(format!(
            "the model produced a {:?} tensor, which the protocol cannot carry",
            t.datum_type()
        ))
    })?;
    let first_non_finite = match dt {
        DataType::Fp16 => t
            .to_plain_array_view::<f16>()
            .map_err(model)?
            .iter()
            .map(|x| x.to_f64())
            .find(|x| !x.is_finite()),
        DataType::Fp32 => t
            .to_plain_array_view::<f32>()
            .map_err(model)?
            .iter()
            .map(|x| *x as f64)
            .find(|x| !x.is_finite()),
        DataType::Fp64 => t
            .to_plain_array_view::<f64>()
            .map_err(model)?
            .iter()
            .copied()
            .find(|x| !x.is_finite()),
        _ => None,
    };
    if let Some(x) = first_non_finite {
        return Err(number(x).expect_err("a value that is not finite"));
    }
    // Every element's type is checked here, so serializing cannot fail on it.
    let plain = match dt {
        DataType::Bool => t.to_plain_array_view::<bool>().map(|_| ()),
        DataType::Uint8 => t.to_plain_array_view::<u8>().map(|_| ()),
        DataType::Uint16 => t.to_plain_array_view::<u16>().map(|_| ()),
        DataType::Uint32 => t.to_plain_array_view::<u32>().map(|_| ()),
        DataType::Uint64 => t.to_plain_array_view::<u64>().map(|_| ()),
        DataType::Int8 => t.to_plain_array_view::<i8>().map(|_| ()),
        DataType::Int16 => t.to_plain_array_view::<i16>().map(|_| ()),
        DataType::Int32 => t.to_plain_array_view::<i32>().map(|_| ()),
        DataType::Int64 => t.to_plain_array_view::<i64>().map(|_| ()),
        DataType::Fp16 => t.to_plain_array_view::<f16>().map(|_| ()),
        DataType::Fp32 => t.to_plain_array_view::<f32>().map(|_| ()),
        DataType::Fp64 => t.to_plain_array_view::<f64>().map(|_| ()),
        DataType::Bytes => t.to_plain_array_view::<String>().map(|_| ()),
    };
    plain.map_err(model)?;
    let shape = t.shape().to_vec();
    Ok((dt, shape, JsonData(t)))
}

impl serde::Serialize for JsonData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let t = &self.0;
        macro_rules! seq {
            ($t:ty, $conv:expr) => {
                s.collect_seq(
                    t.to_plain_array_view::<$t>()
                        .map_err(S::Error::custom)?
                        .iter()
                        .map($conv),
                )
            };
        }
        let dt = DataType::from_datum(t.datum_type())
            .ok_or_else(|| S::Error::custom(format!("a {:?} tensor has no JSON form", t.datum_type())))?;
        match dt {
            DataType::Bool => seq!(bool, |x| *x),
            DataType::Uint8 => seq!(u8, |x| *x),
            DataType::Uint16 => seq!(u16, |x| *x),
            DataType::Uint32 => seq!(u32, |x| *x),
            DataType::Uint64 => seq!(u64, |x| *x),
            DataType::Int8 => seq!(i8, |x| *x),
            DataType::Int16 => seq!(i16, |x| *x),
            DataType::Int32 => seq!(i32, |x| *x),
            DataType::Int64 => seq!(i64, |x| *x),
            // Floats as f64, as `serde_json::Value` would hold them.
            DataType::Fp16 => seq!(f16, |x| x.to_f64()),
            DataType::Fp32 => seq!(f32, |x| *x as f64),
            DataType::Fp64 => seq!(f64, |x| *x),
            DataType::Bytes => seq!(String, |x| x.as_str()),
        }
    }
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
