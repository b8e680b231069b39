//! Comparing two Open Inference Protocol responses to the same request (stable's and a mirrored
//! canary's): per output, the argmax of every row and the largest absolute difference of any element.

use serde_json::Value;

/// How two answers to the same request compare.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// Every output's argmax agrees on every row.
    pub argmax_agree: bool,
    /// The largest absolute difference of any element (infinite when shapes or names differ).
    pub max_abs_diff: f64,
}

fn flatten(v: &Value, out: &mut Vec<f64>) -> bool {
    match v {
        Value::Array(items) => items.iter().all(|x| flatten(x, out)),
        Value::Number(n) => {
            out.push(n.as_f64().unwrap_or(f64::NAN));
            true
        }
        Value::Bool(b) => {
            out.push(*b as u8 as f64);
            true
        }
        _ => false,
    }
}

/// Row-wise argmax of `data` laid out as `rows` rows.
fn argmax_rows(data: &[f64], rows: usize) -> Vec<usize> {
    let cols = data.len() / rows.max(1);
    (0..rows)
        .map(|r| {
            let row = &data[r * cols..(r + 1) * cols];
            row.iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |best, (i, v)| if *v > best.1 { (i, *v) } else { best },
                )
                .0
        })
        .collect()
}

/// Compares two V2 JSON inference responses; `None` when either is not one (nothing to compare).
pub fn compare(a: &[u8], b: &[u8]) -> Option<Comparison> {
    let (a, b): (Value, Value) = (serde_json::from_slice(a).ok()?, serde_json::from_slice(b).ok()?);
    let (oa, ob) = (a.get("outputs")?.as_array()?, b.get("outputs")?.as_array()?);
    let mut out = Comparison {
        argmax_agree: true,
        max_abs_diff: 0.0,
    };
    let mut compared = 0;
    for x in oa {
        let name = x.get("name")?.as_str()?;
        let Some(y) = ob.iter().find(|y| y.get("name").and_then(Value::as_str) == Some(name)) else {
            return Some(Comparison {
                argmax_agree: false,
                max_abs_diff: f64::INFINITY,
            });
        };
        let (mut dx, mut dy) = (Vec::new(), Vec::new());
        if !flatten(x.get("data")?, &mut dx) || !flatten(y.get("data")?, &mut dy) {
            continue; // BYTES outputs are not compared
        }
        compared += 1;
        if dx.len() != dy.len() || x.get("shape") != y.get("shape") {
            out.argmax_agree = false;
            out.max_abs_diff = f64::INFINITY;
            continue;
        }
        let rows = x
            .get("shape")
            .and_then(Value::as_array)
            .filter(|s| s.len() >= 2)
            .and_then(|s| s[0].as_u64())
            .unwrap_or(1) as usize;
        if argmax_rows(&dx, rows) != argmax_rows(&dy, rows) {
            out.argmax_agree = false;
        }
        for (p, q) in dx.iter().zip(&dy) {
            let d = (p - q).abs();
            out.max_abs_diff = out.max_abs_diff.max(if d.is_nan() { f64::INFINITY } else { d });
        }
    }
    (compared > 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(data: &str, shape: &str) -> Vec<u8> {
        format!(r#"{{"model_name":"m","outputs":[{{"name":"p","shape":{shape},"datatype":"FP32","data":{data}}}]}}"#)
            .into_bytes()
    }

    #[test]
    fn argmax_per_row_and_the_largest_difference() {
        let a = resp("[0.1, 0.9, 0.8, 0.2]", "[2, 2]");
        let same = compare(&a, &a).unwrap();
        assert_eq!((same.argmax_agree, same.max_abs_diff), (true, 0.0));
        let close = compare(&a, &resp("[0.2, 0.8, 0.7, 0.3]", "[2, 2]")).unwrap();
        assert!(
            close.argmax_agree && (close.max_abs_diff - 0.1).abs() < 1e-9,
            "{close:?}"
        );
        let flipped = compare(&a, &resp("[0.1, 0.9, 0.2, 0.8]", "[2, 2]")).unwrap();
        assert!(!flipped.argmax_agree, "the second row's argmax differs");
        let nested = compare(&a, &resp("[[0.1, 0.9], [0.8, 0.2]]", "[2, 2]")).unwrap();
        assert_eq!(nested.max_abs_diff, 0.0, "nested data is row-major too");
        let other_shape = compare(&a, &resp("[0.1, 0.9, 0.8]", "[1, 3]")).unwrap();
        assert!(!other_shape.argmax_agree && other_shape.max_abs_diff.is_infinite());
        assert_eq!(compare(b"not json", &a), None);
        assert_eq!(
            compare(br#"{"error": "x"}"#, &a),
            None,
            "an error answer is not compared"
        );
    }
}
