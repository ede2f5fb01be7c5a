//! A GGUF v3 writer: metadata in insertion order, tensors laid out in order, each aligned.

use std::io::Write;
use std::path::Path;

use super::metadata::{MetaArray, MetaValue};
use super::reader::{DEFAULT_ALIGNMENT, GGUF_MAGIC};
use crate::quant::GgmlType;
use crate::{Error, Result};

struct PendingTensor {
    name: String,
    ty: GgmlType,
    dims: Vec<u64>,
    data: Vec<u8>,
}

/// Builds a GGUF file in memory and writes it out.
pub struct GgufWriter {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<PendingTensor>,
    alignment: u64,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_scalar(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.push(*x as u8),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(*x as u8),
        MetaValue::String(s) => put_str(out, s),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Array(a) => {
            out.extend_from_slice(&(a.elem_type() as u32).to_le_bytes());
            out.extend_from_slice(&(a.len() as u64).to_le_bytes());
            macro_rules! each {
                ($v:expr, $variant:ident) => {
                    for x in $v {
                        put_scalar(out, &MetaValue::$variant(x.clone()));
                    }
                };
            }
            match a {
                MetaArray::U8(v) => each!(v, U8),
                MetaArray::I8(v) => each!(v, I8),
                MetaArray::U16(v) => each!(v, U16),
                MetaArray::I16(v) => each!(v, I16),
                MetaArray::U32(v) => each!(v, U32),
                MetaArray::I32(v) => each!(v, I32),
                MetaArray::F32(v) => each!(v, F32),
                MetaArray::Bool(v) => each!(v, Bool),
                MetaArray::String(v) => each!(v, String),
                MetaArray::U64(v) => each!(v, U64),
                MetaArray::I64(v) => each!(v, I64),
                MetaArray::F64(v) => each!(v, F64),
            }
        }
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        Self {
            metadata: Vec::new(),
            tensors: Vec::new(),
            alignment: DEFAULT_ALIGNMENT,
        }
    }

    /// Set a metadata key (replacing an earlier value of the same key).
    pub fn set(&mut self, key: impl Into<String>, value: MetaValue) -> &mut Self {
        let key = key.into();
        if key == "general.alignment" {
            if let Some(a) = value.as_u64().filter(|a| a.is_power_of_two()) {
                self.alignment = a;
            }
        }
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Add a tensor; `dims` in ggml order (innermost first), `data` its raw bytes.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        dims: &[u64],
        data: Vec<u8>,
    ) -> Result<&mut Self> {
        let name = name.into();
        let n: u64 = dims.iter().product();
        let need = ty.bytes_for(n).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "tensor '{name}': {n} elements is not a whole number of {ty} blocks of {}",
                ty.block_elems()
            ))
        })?;
        if need != data.len() as u64 {
            return Err(Error::ShapeMismatch {
                what: format!("tensor '{name}' ({ty}, dims {dims:?}) data bytes"),
                expected: need as usize,
                got: data.len(),
            });
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(Error::InvalidArgument(format!(
                "duplicate tensor name '{name}'"
            )));
        }
        self.tensors.push(PendingTensor {
            name,
            ty,
            dims: dims.to_vec(),
            data,
        });
        Ok(self)
    }

    fn align(&self, n: u64) -> u64 {
        n.div_ceil(self.alignment) * self.alignment
    }

    /// The whole file as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            put_scalar(&mut out, v);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset = self.align(offset + t.data.len() as u64);
        }
        let data_start = self.align(out.len() as u64);
        out.resize(data_start as usize, 0);
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            let end = data_start + self.align(out.len() as u64 - data_start);
            out.resize(end as usize, 0);
        }
        out
    }

    pub fn write_to(&self, mut w: impl Write) -> std::io::Result<()> {
        w.write_all(&self.to_bytes())
    }

    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes()).map_err(|e| Error::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgufFile, MetaArray};

    #[test]
    fn write_then_read_round_trips() {
        let mut w = GgufWriter::new();
        w.set("general.architecture", MetaValue::String("llama".into()));
        w.set("a.u32", MetaValue::U32(7));
        w.set("a.f32", MetaValue::F32(1.5));
        w.set(
            "a.strs",
            MetaValue::Array(MetaArray::String(vec!["x".into(), "yz".into()])),
        );
        let q = vec![3u8; 18 * 3];
        w.add_tensor("t.q", GgmlType::Q4_0, &[32, 3], q.clone())
            .unwrap();
        let f: Vec<u8> = (0..7u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
        w.add_tensor("t.f", GgmlType::F32, &[7], f.clone()).unwrap();
        let file = GgufFile::from_bytes("mem", w.to_bytes()).unwrap();
        assert_eq!(file.get("a.u32"), Some(&MetaValue::U32(7)));
        assert_eq!(
            file.header().get_str("general.architecture").unwrap(),
            "llama"
        );
        let a = file.get("a.strs").and_then(|v| v.as_array()).unwrap();
        assert_eq!(a, &MetaArray::String(vec!["x".into(), "yz".into()]));
        let tq = file.tensor("t.q").unwrap();
        assert_eq!((tq.n_cols(), tq.n_rows()), (32, 3));
        assert_eq!(file.tensor_data(tq), &q[..]);
        let tf = file.tensor("t.f").unwrap();
        assert_eq!(tf.offset % 32, 0);
        assert_eq!(file.tensor_data(tf), &f[..]);
    }

    #[test]
    fn writer_rejects_wrong_sizes() {
        let mut w = GgufWriter::new();
        assert!(w
            .add_tensor("a", GgmlType::Q4_0, &[31], vec![0; 18])
            .is_err());
        assert!(w.add_tensor("a", GgmlType::F32, &[4], vec![0; 15]).is_err());
    }
}
