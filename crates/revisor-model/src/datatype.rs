//! The Open Inference Protocol's tensor datatypes and their tract counterparts.

use tract_onnx::prelude::DatumType;

/// A V2 datatype name (`FP32`, `INT64`, `BYTES`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
}

const ALL: [(DataType, &str, DatumType); 13] = [
    (DataType::Bool, "BOOL", DatumType::Bool),
    (DataType::Uint8, "UINT8", DatumType::U8),
    (DataType::Uint16, "UINT16", DatumType::U16),
    (DataType::Uint32, "UINT32", DatumType::U32),
    (DataType::Uint64, "UINT64", DatumType::U64),
    (DataType::Int8, "INT8", DatumType::I8),
    (DataType::Int16, "INT16", DatumType::I16),
    (DataType::Int32, "INT32", DatumType::I32),
    (DataType::Int64, "INT64", DatumType::I64),
    (DataType::Fp16, "FP16", DatumType::F16),
    (DataType::Fp32, "FP32", DatumType::F32),
    (DataType::Fp64, "FP64", DatumType::F64),
    (DataType::Bytes, "BYTES", DatumType::String),
];

impl DataType {
    pub fn parse(name: &str) -> Option<DataType> {
        ALL.iter().find(|(_, n, _)| *n == name).map(|(d, _, _)| *d)
    }

    pub fn name(self) -> &'static str {
        ALL.iter()
            .find(|(d, _, _)| *d == self)
            .map(|(_, n, _)| *n)
            .expect("every datatype has a name")
    }

    pub fn datum(self) -> DatumType {
        ALL.iter()
            .find(|(d, _, _)| *d == self)
            .map(|(_, _, t)| *t)
            .expect("every datatype has a datum type")
    }

    pub fn from_datum(t: DatumType) -> Option<DataType> {
        ALL.iter().find(|(_, _, x)| *x == t).map(|(d, _, _)| *d)
    }

    /// Bytes per element in the binary tensor extension (BYTES is length-prefixed instead).
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
            DataType::Bytes => return None,
        })
    }

    pub fn names() -> String {
        ALL.iter().map(|(_, n, _)| *n).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (d, n, t) in ALL {
            assert_eq!(DataType::parse(n), Some(d));
            assert_eq!(d.name(), n);
            assert_eq!(DataType::from_datum(t), Some(d));
        }
        assert_eq!(DataType::parse("FLOAT"), None);
    }
}
