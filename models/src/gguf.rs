//! GGUF files: metadata, tensor directory and tensor bytes (memory-mapped),
//! plus a writer that tests use to build tiny models.
//!
//! Format: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md> (v2/v3).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use memmap2::Mmap;
use sluice_kernels::WeightDType;

use crate::ModelError;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// GGML tensor types this crate can read (ids from ggml.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: Self = Self(0);
    pub const F16: Self = Self(1);
    pub const Q4_0: Self = Self(2);
    pub const Q4_1: Self = Self(3);
    pub const Q8_0: Self = Self(8);
    pub const Q4K: Self = Self(12);
    pub const Q6K: Self = Self(14);
    pub const BF16: Self = Self(30);

    pub fn weight_dtype(self) -> Option<WeightDType> {
        Some(match self {
            Self::F32 => WeightDType::F32,
            Self::F16 => WeightDType::F16,
            Self::Q4_0 => WeightDType::Q4_0,
            Self::Q4_1 => WeightDType::Q4_1,
            Self::Q8_0 => WeightDType::Q8_0,
            Self::Q4K => WeightDType::Q4K,
            Self::Q6K => WeightDType::Q6K,
            Self::BF16 => WeightDType::BF16,
            _ => return None,
        })
    }

    pub fn from_weight_dtype(d: WeightDType) -> Self {
        match d {
            WeightDType::F32 => Self::F32,
            WeightDType::F16 => Self::F16,
            WeightDType::BF16 => Self::BF16,
            WeightDType::Q4_0 => Self::Q4_0,
            WeightDType::Q4_1 => Self::Q4_1,
            WeightDType::Q8_0 => Self::Q8_0,
            WeightDType::Q4K => Self::Q4K,
            WeightDType::Q6K => Self::Q6K,
        }
    }
}

/// Where one tensor lives in the file. `dims[0]` is the innermost (row) length.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

/// An opened GGUF file.
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: BTreeMap<String, TensorInfo>,
    data_start: usize,
    mmap: Mmap,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ModelError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end =
            end.ok_or_else(|| ModelError::Format(format!("GGUF truncated at byte {}", self.pos)))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], ModelError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn len(&mut self) -> Result<usize, ModelError> {
        let n = self.u64()?;
        // A length can never exceed the file; this also stops absurd allocations.
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.buf.len())
            .ok_or_else(|| ModelError::Format(format!("GGUF length {n} exceeds the file size")))
    }
    fn string(&mut self) -> Result<String, ModelError> {
        let n = self.len()?;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<GgufValue, ModelError> {
        Ok(match ty {
            0 => GgufValue::U8(self.arr::<1>()?[0]),
            1 => GgufValue::I8(self.arr::<1>()?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.arr()?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.arr()?)),
            4 => GgufValue::U32(self.u32()?),
            5 => GgufValue::I32(i32::from_le_bytes(self.arr()?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.arr()?)),
            7 => GgufValue::Bool(self.arr::<1>()?[0] != 0),
            8 => GgufValue::String(self.string()?),
            9 if depth < 4 => {
                let item_ty = self.u32()?;
                let n = self.len()?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(item_ty, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(i64::from_le_bytes(self.arr()?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.arr()?)),
            other => {
                return Err(ModelError::Format(format!(
                    "unknown GGUF value type {other}"
                )))
            }
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: the file is opened read-only and we never hand out mutable
        // access; a concurrent writer truncating it is outside our contract.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let mut r = Reader { buf: &mmap, pos: 0 };
        if r.take(4)? != MAGIC {
            return Err(ModelError::Format(format!(
                "{} is not a GGUF file (bad magic)",
                path.display()
            )));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::Format(format!(
                "GGUF version {version} is not supported (2 or 3)"
            )));
        }
        let n_tensors = r.len()?;
        let n_kv = r.len()?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            metadata.insert(key, r.value(ty, 0)?);
        }
        let mut tensors = BTreeMap::new();
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()? as usize;
            if n_dims > 4 {
                return Err(ModelError::Format(format!(
                    "tensor {name} has {n_dims} dims"
                )));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64())
                .collect::<Result<Vec<_>, _>>()?;
            let ggml_type = GgmlType(r.u32()?);
            let offset = r.u64()?;
            tensors.insert(
                name,
                TensorInfo {
                    dims,
                    ggml_type,
                    offset,
                },
            );
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(GgufValue::as_u64)
            .unwrap_or(DEFAULT_ALIGNMENT) as usize;
        let data_start = r.pos.div_ceil(alignment.max(1)) * alignment.max(1);
        Ok(Self {
            version,
            metadata,
            tensors,
            data_start,
            mmap,
        })
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// The bytes of a tensor, with its type and dims.
    pub fn tensor(&self, name: &str) -> Result<(&TensorInfo, &[u8]), ModelError> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let dtype = info.ggml_type.weight_dtype().ok_or_else(|| {
            ModelError::Unsupported(format!(
                "tensor {name} has GGML type {} which Sluice cannot read",
                info.ggml_type.0
            ))
        })?;
        let n: u64 = info.dims.iter().product();
        let bytes = (n as usize / dtype.block_values()) * dtype.block_bytes();
        let start = self.data_start + info.offset as usize;
        let slice = self.mmap.get(start..start + bytes).ok_or_else(|| {
            ModelError::Format(format!("tensor {name} runs past the end of the file"))
        })?;
        Ok((info, slice))
    }
}

/// Builds a GGUF file in memory; used by tests to make tiny models.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl GgufWriter {
    pub fn meta(&mut self, key: &str, value: GgufValue) -> &mut Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Adds a tensor; `dims[0]` is the row length, as GGUF stores it.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, bytes: Vec<u8>) -> &mut Self {
        self.tensors
            .push((name.to_string(), dims.to_vec(), ty, bytes));
        self
    }

    pub fn write(&self, path: &Path) -> Result<(), ModelError> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            put_value(&mut out, v, true);
        }
        let mut offset = 0u64;
        let align = DEFAULT_ALIGNMENT;
        for (name, dims, ty, bytes) in &self.tensors {
            put_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.0.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + bytes.len() as u64).div_ceil(align) * align;
        }
        while !(out.len() as u64).is_multiple_of(align) {
            out.push(0);
        }
        for (_, _, _, bytes) in &self.tensors {
            out.extend_from_slice(bytes);
            while !(out.len() as u64).is_multiple_of(align) {
                out.push(0);
            }
        }
        let mut f = File::create(path).map_err(|e| ModelError::io(path, e))?;
        f.write_all(&out).map_err(|e| ModelError::io(path, e))
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn type_id(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue, with_type: bool) {
    if with_type {
        out.extend_from_slice(&type_id(v).to_le_bytes());
    }
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.push(*x as u8),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => put_str(out, s),
        GgufValue::Array(items) => {
            let item_ty = items.first().map(type_id).unwrap_or(0);
            out.extend_from_slice(&item_ty.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                put_value(out, it, false);
            }
        }
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}
