//! The hardened GGUF parser and the mmap-backed [`GgufFile`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::metadata::{key_type_error, MetaArray, MetaValue, ValueType};
use super::GgufError;
use crate::quant::GgmlType;
use crate::{Error, Result};

/// `GGUF` read as a little-endian u32.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: u32 = 4;
/// ggml's GGML_MAX_NAME (including the terminating NUL in ggml; the name itself is shorter).
const MAX_TENSOR_NAME: u64 = 64;
/// Longest metadata string accepted (chat templates run to tens of KiB; nothing real is
/// near this).
const MAX_STRING: u64 = 16 << 20;
/// Smallest possible tensor info: name length, n_dims, one dim, type, offset.
const MIN_TENSOR_INFO: u64 = 8 + 4 + 8 + 4 + 8;
/// Smallest possible key-value: key length, value type, one byte of value.
const MIN_KV: u64 = 8 + 4 + 1;

/// One tensor's info; its data lies at `offset` bytes into the data section.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub ty: GgmlType,
    /// ggml order: `dims[0]` is the innermost (contiguous) dimension.
    pub dims: Vec<u64>,
    /// Offset from the start of the data section.
    pub offset: u64,
    pub n_elements: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    /// A 2-D tensor of `rows` rows of `cols` values held in memory rather than read from a
    /// file (offset 0): for benchmarks and tests that build weights themselves.
    pub fn in_memory(name: &str, ty: GgmlType, cols: usize, rows: usize, n_bytes: usize) -> Self {
        Self {
            name: name.into(),
            ty,
            dims: vec![cols as u64, rows as u64],
            offset: 0,
            n_elements: (cols * rows) as u64,
            n_bytes: n_bytes as u64,
        }
    }

    /// Rows of a 2-D view: the product of all dims after the first.
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }

    /// Elements per row (the first dim).
    pub fn n_cols(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }
}

/// Everything before the tensor data: version, metadata, tensor infos and where data begins.
#[derive(Clone, Debug)]
pub struct GgufHeader {
    pub version: u32,
    pub alignment: u64,
    /// Absolute byte offset of the data section.
    pub data_offset: u64,
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<TensorInfo>,
    meta_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.left() {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                need: n,
                left: self.left(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items of at least `min_size` bytes each, checked against what is left.
    fn count(&mut self, min_size: u64, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        let n = self.u64(what)?;
        let max = self.left() / min_size.max(1);
        if n > max {
            return Err(GgufError::CountTooLarge {
                what: what(),
                count: n,
                max,
                left: self.left(),
            });
        }
        Ok(n)
    }

    fn string(&mut self, max: u64, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let start = self.pos as u64;
        let len = self.u64(what)?;
        if len > max {
            return Err(GgufError::StringTooLong {
                what: what(),
                offset: start,
                len,
                max,
            });
        }
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| GgufError::Utf8 {
                what: what(),
                offset: start,
            })
    }
}

fn read_scalar(c: &mut Cursor, ty: ValueType, key: &str) -> Result<MetaValue, GgufError> {
    let what = || format!("value of key '{key}'");
    Ok(match ty {
        ValueType::U8 => MetaValue::U8(c.array::<1>(&what)?[0]),
        ValueType::I8 => MetaValue::I8(c.array::<1>(&what)?[0] as i8),
        ValueType::U16 => MetaValue::U16(u16::from_le_bytes(c.array(&what)?)),
        ValueType::I16 => MetaValue::I16(i16::from_le_bytes(c.array(&what)?)),
        ValueType::U32 => MetaValue::U32(c.u32(&what)?),
        ValueType::I32 => MetaValue::I32(i32::from_le_bytes(c.array(&what)?)),
        ValueType::F32 => MetaValue::F32(f32::from_le_bytes(c.array(&what)?)),
        ValueType::Bool => MetaValue::Bool(c.array::<1>(&what)?[0] != 0),
        ValueType::String => MetaValue::String(c.string(MAX_STRING, &what)?),
        ValueType::U64 => MetaValue::U64(c.u64(&what)?),
        ValueType::I64 => MetaValue::I64(i64::from_le_bytes(c.array(&what)?)),
        ValueType::F64 => MetaValue::F64(f64::from_le_bytes(c.array(&what)?)),
        ValueType::Array => return Err(GgufError::NestedArray { key: key.into() }),
    })
}

fn read_vec<T>(
    c: &mut Cursor,
    n: u64,
    ty: ValueType,
    key: &str,
    pick: impl Fn(MetaValue) -> Option<T>,
) -> Result<Vec<T>, GgufError> {
    // `n` was checked against the bytes left; still, reserve only a bounded amount up front
    // so that a hostile count costs no more memory than the items actually read.
    let mut v = Vec::with_capacity((n as usize).min(1 << 16));
    for _ in 0..n {
        let val = read_scalar(c, ty, key)?;
        // read_scalar returns the variant of `ty`, so `pick` always matches.
        if let Some(x) = pick(val) {
            v.push(x);
        }
    }
    Ok(v)
}

fn read_value(c: &mut Cursor, ty: ValueType, key: &str) -> Result<MetaValue, GgufError> {
    if ty != ValueType::Array {
        return read_scalar(c, ty, key);
    }
    let what = || format!("array type of key '{key}'");
    let elem_id = c.u32(&what)?;
    let elem = ValueType::from_id(elem_id).ok_or_else(|| GgufError::UnknownValueType {
        key: key.into(),
        got: elem_id,
    })?;
    if elem == ValueType::Array {
        return Err(GgufError::NestedArray { key: key.into() });
    }
    let n = c.count(elem.min_size(), &|| format!("array length of key '{key}'"))?;
    macro_rules! arr {
        ($variant:ident) => {
            MetaArray::$variant(read_vec(c, n, elem, key, |v| match v {
                MetaValue::$variant(x) => Some(x),
                _ => None,
            })?)
        };
    }
    let a = match elem {
        ValueType::U8 => arr!(U8),
        ValueType::I8 => arr!(I8),
        ValueType::U16 => arr!(U16),
        ValueType::I16 => arr!(I16),
        ValueType::U32 => arr!(U32),
        ValueType::I32 => arr!(I32),
        ValueType::F32 => arr!(F32),
        ValueType::Bool => arr!(Bool),
        ValueType::String => arr!(String),
        ValueType::U64 => arr!(U64),
        ValueType::I64 => arr!(I64),
        ValueType::F64 => arr!(F64),
        ValueType::Array => return Err(GgufError::NestedArray { key: key.into() }),
    };
    Ok(MetaValue::Array(a))
}

/// Parse and validate everything up to the tensor data of a GGUF image. `bytes` is the
/// whole file: tensor byte ranges are checked against its length.
pub fn parse(bytes: &[u8]) -> Result<GgufHeader, GgufError> {
    const HEADER: u64 = 4 + 4 + 8 + 8;
    if (bytes.len() as u64) < HEADER {
        return Err(GgufError::TooSmall {
            len: bytes.len() as u64,
            need: HEADER,
        });
    }
    let mut c = Cursor { buf: bytes, pos: 0 };
    let magic = c.array::<4>(&|| "magic".into())?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { got: magic });
    }
    let version = c.u32(&|| "version".into())?;
    if version != 2 && version != 3 {
        return Err(GgufError::Version { got: version });
    }
    let n_tensors = c.u64(&|| "tensor count".into())?;
    let n_kv = c.count(MIN_KV, &|| "key-value".into())?;
    // Tensor infos follow the key-values, so their count can only be bounded by what is
    // left now; it is checked again once the key-values are read.
    let max_tensors = c.left() / MIN_TENSOR_INFO;
    if n_tensors > max_tensors {
        return Err(GgufError::CountTooLarge {
            what: "tensor".into(),
            count: n_tensors,
            max: max_tensors,
            left: c.left(),
        });
    }

    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut meta_index = HashMap::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key = c.string(MAX_STRING, &|| format!("key #{i}"))?;
        let ty_id = c.u32(&|| format!("value type of key '{key}'"))?;
        let ty = ValueType::from_id(ty_id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.clone(),
            got: ty_id,
        })?;
        let value = read_value(&mut c, ty, &key)?;
        if meta_index.insert(key.clone(), metadata.len()).is_some() {
            return Err(GgufError::DuplicateKey { key });
        }
        metadata.push((key, value));
    }

    let alignment = match meta_index.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(&i) => {
            let v = &metadata[i].1;
            let a = v
                .as_u64()
                .ok_or_else(|| key_type_error("general.alignment", "an integer", v))?;
            if a == 0 || !a.is_power_of_two() {
                return Err(GgufError::Alignment { got: a });
            }
            a
        }
    };

    let max_tensors = c.left() / MIN_TENSOR_INFO;
    if n_tensors > max_tensors {
        return Err(GgufError::CountTooLarge {
            what: "tensor".into(),
            count: n_tensors,
            max: max_tensors,
            left: c.left(),
        });
    }
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
    let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = c.string(MAX_TENSOR_NAME, &|| format!("name of tensor #{i}"))?;
        let n_dims = c.u32(&|| format!("dimension count of tensor '{name}'"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(GgufError::Dims {
                tensor: name,
                got: n_dims,
                max: MAX_DIMS,
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(c.u64(&|| format!("dimension {d} of tensor '{name}'"))?);
        }
        let ty_id = c.u32(&|| format!("type of tensor '{name}'"))?;
        let offset = c.u64(&|| format!("offset of tensor '{name}'"))?;
        let ty = GgmlType::from_id(ty_id).ok_or_else(|| GgufError::TensorType {
            tensor: name.clone(),
            got: ty_id,
        })?;
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64 && dims.iter().all(|&d| d <= i64::MAX as u64))
            .ok_or_else(|| GgufError::DimsOverflow {
                tensor: name.clone(),
                dims: dims.clone(),
            })?;
        let block = ty.block_elems() as u64;
        if dims[0] % block != 0 {
            return Err(GgufError::BlockMultiple {
                tensor: name,
                ty: ty.name().into(),
                ne0: dims[0],
                block,
            });
        }
        let n_bytes = ty
            .bytes_for(n_elements)
            .ok_or_else(|| GgufError::DimsOverflow {
                tensor: name.clone(),
                dims: dims.clone(),
            })?;
        if offset % alignment != 0 {
            return Err(GgufError::Misaligned {
                tensor: name,
                offset,
                alignment,
            });
        }
        if tensor_index.insert(name.clone(), tensors.len()).is_some() {
            return Err(GgufError::DuplicateTensor { tensor: name });
        }
        tensors.push(TensorInfo {
            name,
            ty,
            dims,
            offset,
            n_elements,
            n_bytes,
        });
    }

    // The data section starts at the next multiple of the alignment.
    let pos = c.pos as u64;
    let data_offset = pos.div_ceil(alignment).saturating_mul(alignment);
    // With tensors present the data section must exist, even for zero-size tensors.
    let data_len = match (bytes.len() as u64).checked_sub(data_offset) {
        Some(n) => n,
        None => {
            if let Some(t) = tensors.first() {
                return Err(GgufError::OutOfBounds {
                    tensor: t.name.clone(),
                    start: t.offset,
                    end: t.offset.saturating_add(t.n_bytes),
                    data_len: 0,
                });
            }
            0
        }
    };
    for t in &tensors {
        let end = t.offset.checked_add(t.n_bytes);
        match end {
            Some(end) if end <= data_len => {}
            _ => {
                return Err(GgufError::OutOfBounds {
                    tensor: t.name.clone(),
                    start: t.offset,
                    end: end.unwrap_or(u64::MAX),
                    data_len,
                })
            }
        }
    }
    let mut order: Vec<usize> = (0..tensors.len())
        .filter(|&i| tensors[i].n_bytes > 0)
        .collect();
    order.sort_by_key(|&i| tensors[i].offset);
    for w in order.windows(2) {
        let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
        if a.offset + a.n_bytes > b.offset {
            return Err(GgufError::Overlap {
                first: a.name.clone(),
                second: b.name.clone(),
                at: b.offset,
            });
        }
    }

    Ok(GgufHeader {
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
        meta_index,
        tensor_index,
    })
}

impl GgufHeader {
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    fn require(&self, key: &str) -> Result<&MetaValue, GgufError> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey { key: key.into() })
    }

    /// A required non-negative integer of any integer type.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| key_type_error(key, "a non-negative integer", v))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| key_type_error(key, "a number", v))
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| key_type_error(key, "a string", v))
    }

    /// An optional key: `Ok(None)` when absent, an error when present with the wrong type.
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.get(key).map(|_| self.get_u64(key)).transpose()
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.get(key).map(|_| self.get_f64(key)).transpose()
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.get(key).map(|_| self.get_str(key)).transpose()
    }
}

enum Source {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Source {
    fn bytes(&self) -> &[u8] {
        match self {
            Source::Mmap(m) => m,
            Source::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file whose tensor data stays in the mmap (or in the owned buffer it was
/// parsed from).
pub struct GgufFile {
    name: String,
    path: Option<PathBuf>,
    header: GgufHeader,
    source: Source,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("name", &self.name)
            .field("tensors", &self.header.tensors.len())
            .field("metadata", &self.header.metadata.len())
            .finish()
    }
}

impl GgufFile {
    /// Map and parse a GGUF file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let name = path.display().to_string();
        if len < 24 {
            return Err(Error::Gguf {
                file: name,
                source: GgufError::TooSmall { len, need: 24 },
            });
        }
        // SAFETY: the map is read-only; kvedge never writes the file while it is mapped. As
        // with every mmap, another process truncating the file underneath us is outside
        // what the program can guard against (llama.cpp and candle share this caveat).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let header = parse(&mmap).map_err(|source| Error::Gguf {
            file: name.clone(),
            source,
        })?;
        Ok(Self {
            name,
            path: Some(path.to_path_buf()),
            header,
            source: Source::Mmap(mmap),
        })
    }

    /// Parse an in-memory GGUF image (tests, fuzzing, files produced in memory).
    pub fn from_bytes(name: impl Into<String>, bytes: Vec<u8>) -> Result<Self> {
        let name = name.into();
        let header = parse(&bytes).map_err(|source| Error::Gguf {
            file: name.clone(),
            source,
        })?;
        Ok(Self {
            name,
            path: None,
            header,
            source: Source::Owned(bytes),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    pub fn file_size(&self) -> u64 {
        self.source.bytes().len() as u64
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.header.metadata
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.header.get(key)
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.header
            .tensor(name)
            .ok_or_else(|| Error::MissingTensor {
                file: self.name.clone(),
                name: name.into(),
            })
    }

    /// The bytes of a tensor of this file, viewed in place. The range was validated at
    /// parse time.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.header.data_offset + info.offset) as usize;
        let bytes = self.source.bytes();
        bytes
            .get(start..start + info.n_bytes as usize)
            .unwrap_or(&[])
    }

    /// Wrap a metadata-level error with this file's name.
    pub fn err(&self, source: GgufError) -> Error {
        Error::Gguf {
            file: self.name.clone(),
            source,
        }
    }
}
