//! Arrays as the host sees them: a shape and row-major data, real or int; `.npy` reading and
//! writing; NumPy-style printing.

use crate::diag::{Error, ErrorKind, Result};
use std::fmt::Write as _;

/// Row-major data. Reals are held in f64 whatever the call's dtype (f32 data converts exactly).
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    Real(Vec<f64>),
    Int(Vec<i64>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Data,
}

/// The element type an `.npy` file is written with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }
    pub fn from_name(s: &str) -> Option<DType> {
        match s {
            "f32" | "float32" => Some(DType::F32),
            "f64" | "float64" => Some(DType::F64),
            _ => None,
        }
    }

    /// [`DType::from_name`], or the error every front end gives for another name.
    pub fn parse(s: &str) -> Result<DType> {
        DType::from_name(s).ok_or_else(|| {
            Error::new(
                ErrorKind::Type,
                format!("unknown dtype `{s}`: use f32 or f64"),
            )
        })
    }
}

/// Largest array accepted from a file or literal, in elements.
pub const MAX_ELEMENTS: usize = 1 << 30;

impl Array {
    pub fn real(shape: Vec<usize>, data: Vec<f64>) -> Array {
        Array {
            shape,
            data: Data::Real(data),
        }
    }
    pub fn int(shape: Vec<usize>, data: Vec<i64>) -> Array {
        Array {
            shape,
            data: Data::Int(data),
        }
    }
    pub fn scalar(v: f64) -> Array {
        Array::real(vec![], vec![v])
    }
    pub fn len(&self) -> usize {
        match &self.data {
            Data::Real(v) => v.len(),
            Data::Int(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The values as f64.
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            Data::Real(v) => v.clone(),
            Data::Int(v) => v.iter().map(|x| *x as f64).collect(),
        }
    }

    /// Checks that the shape and the data agree.
    pub fn validate(&self, what: &str) -> Result<()> {
        let n = self.shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d));
        match n {
            Some(n) if n <= MAX_ELEMENTS => {
                if n != self.len() {
                    return Err(Error::new(
                        ErrorKind::Shape,
                        format!(
                            "{what}: shape {:?} has {n} elements but {} values were given",
                            self.shape,
                            self.len()
                        ),
                    ));
                }
                Ok(())
            }
            _ => Err(Error::new(
                ErrorKind::Limit,
                format!(
                    "{what}: shape {:?} is too large (the limit is {MAX_ELEMENTS} elements)",
                    self.shape
                ),
            )),
        }
    }

    /// Reads an `.npy` file (see [`Array::from_npy`]), never more of it than the limits allow.
    pub fn from_npy_file(path: &std::path::Path, what: &str) -> Result<Array> {
        use std::io::Read;
        let io = |e: std::io::Error| {
            Error::new(
                ErrorKind::Io,
                format!("{what}: cannot read `{}`: {e}", path.display()),
            )
        };
        // The magic first, so that a device or a big file that is not `.npy` is refused after
        // 6 bytes; then at most `MAX_MEMORY` bytes.
        let mut f = std::fs::File::open(path).map_err(io)?;
        let mut bytes = Vec::new();
        (&mut f).take(6).read_to_end(&mut bytes).map_err(io)?;
        if bytes != b"\x93NUMPY" {
            return Array::from_npy(&bytes, what);
        }
        let limit = crate::interp::MAX_MEMORY;
        f.take(limit).read_to_end(&mut bytes).map_err(io)?;
        if bytes.len() as u64 >= limit {
            return Err(Error::new(
                ErrorKind::Limit,
                format!(
                    "{what}: `{}` is more than {limit} bytes, the limit for an array file",
                    path.display()
                ),
            ));
        }
        Array::from_npy(&bytes, what)
    }

    /// Reads an `.npy` file's bytes (f32, f64, and signed or unsigned integers; C or Fortran order).
    pub fn from_npy(bytes: &[u8], what: &str) -> Result<Array> {
        let bad = |m: String| {
            Error::new(
                ErrorKind::Data,
                format!("{what}: not a valid .npy file: {m}"),
            )
        };
        // npyz's header parser takes exponential time on deeply nested brackets (found by
        // fuzzing: 200 bytes of `[[[[...` hung it); a real header nests two deep.
        // npyz allocates the header length the file declares before reading it (found by
        // fuzzing: a 100-byte file declaring a 4 GiB header); it must fit in the file.
        let header = npy_header(bytes).ok_or_else(|| {
            bad("the header length it declares runs past the end of the file".into())
        })?;
        let mut depth = 0usize;
        for c in header.iter() {
            match c {
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            if depth > 4 {
                return Err(bad("the header nests brackets too deep".into()));
            }
        }
        // npyz evaluates the shape as a Python expression (`1+++2`) and multiplies it out
        // unchecked (found by fuzzing: an overflow panic in debug builds): a real header's
        // shape is a tuple of integers, whose product must fit.
        npy_shape_fits(header).map_err(bad)?;
        let npy = npyz::NpyFile::new(bytes).map_err(|e| bad(e.to_string()))?;
        let shape: Vec<usize> = npy.shape().iter().map(|d| *d as usize).collect();
        let fortran = npy.order() == npyz::Order::Fortran;
        let dtype = npy.dtype();
        let ts = match &dtype {
            npyz::DType::Plain(ts) => ts.clone(),
            other => {
                return Err(Error::new(
                    ErrorKind::Type,
                    format!("{what}: unsupported .npy dtype {}", other.descr()),
                ))
            }
        };
        let n = shape
            .iter()
            .try_fold(1usize, |a, d| a.checked_mul(*d))
            .filter(|n| *n <= MAX_ELEMENTS);
        let Some(n) = n else {
            return Err(Error::new(
                ErrorKind::Limit,
                format!("{what}: shape {shape:?} is too large"),
            ));
        };
        // Refuse before allocating when the file is shorter than its header claims.
        let item = ts.num_bytes().unwrap_or(0);
        if n.saturating_mul(item) > bytes.len() {
            return Err(bad(format!(
                "the header promises {n} elements of {item} bytes, the file is {} bytes",
                bytes.len()
            )));
        }
        let descr = ts.to_string();
        let kind = descr.get(1..).unwrap_or("");
        let data = match kind {
            "f8" => Data::Real(read_npy(npy, what, |x: f64| x)?),
            "f4" => Data::Real(read_npy(npy, what, |x: f32| f64::from(x))?),
            "i8" => Data::Int(read_npy(npy, what, |x: i64| x)?),
            "i4" => Data::Int(read_npy(npy, what, |x: i32| i64::from(x))?),
            "i2" => Data::Int(read_npy(npy, what, |x: i16| i64::from(x))?),
            "i1" => Data::Int(read_npy(npy, what, |x: i8| i64::from(x))?),
            "u1" => Data::Int(read_npy(npy, what, |x: u8| i64::from(x))?),
            "u2" => Data::Int(read_npy(npy, what, |x: u16| i64::from(x))?),
            "u4" => Data::Int(read_npy(npy, what, |x: u32| i64::from(x))?),
            _ => {
                return Err(Error::new(
                    ErrorKind::Type,
                    format!("{what}: dtype `{descr}` is not supported; use float32, float64 or an integer type"),
                ))
            }
        };
        let mut a = Array { shape, data };
        if a.len() != n {
            return Err(bad(format!("expected {n} elements, read {}", a.len())));
        }
        if fortran && a.shape.len() > 1 {
            a = a.fortran_to_c();
        }
        Ok(a)
    }

    fn fortran_to_c(self) -> Array {
        let shape = self.shape.clone();
        let n = self.len();
        let perm = |src_index: usize| -> usize {
            // Fortran offset -> multi-index -> C offset
            let mut rem = src_index;
            let mut idx = vec![0usize; shape.len()];
            for (k, d) in shape.iter().enumerate() {
                idx[k] = rem % d.max(&1);
                rem /= d.max(&1);
            }
            idx.iter().zip(&shape).fold(0, |acc, (i, d)| acc * d + i)
        };
        let reorder = |len: usize| {
            let mut order = vec![0usize; len];
            for (k, o) in order.iter_mut().enumerate() {
                *o = perm(k);
            }
            order
        };
        match self.data {
            Data::Real(v) => Array::real(shape.clone(), scatter(v, &reorder(n))),
            Data::Int(v) => Array::int(shape.clone(), scatter(v, &reorder(n))),
        }
    }

    /// The `.npy` bytes of this array: reals as the given dtype, ints as int64.
    pub fn to_npy(&self, dtype: DType) -> Result<Vec<u8>> {
        let shape: Vec<u64> = self.shape.iter().map(|d| *d as u64).collect();
        match (&self.data, dtype) {
            (Data::Real(v), DType::F64) => write_npy(&shape, v.iter().copied()),
            (Data::Real(v), DType::F32) => write_npy(&shape, v.iter().map(|x| *x as f32)),
            (Data::Int(v), _) => write_npy(&shape, v.iter().copied()),
        }
    }

    /// Parses a literal such as `[1, 0, 1]`, `[[0.5, 1], [2, 3]]` or `3.5` (JSON syntax; `inf`,
    /// `-inf` and `nan` allowed as bare words or strings).
    pub fn parse_literal(text: &str, what: &str) -> Result<Array> {
        let cleaned = bare_specials(text);
        let v: serde_json::Value = serde_json::from_str(&cleaned).map_err(|e| {
            Error::new(
                ErrorKind::Data,
                format!("{what}: `{text}` is not an array literal: {e}"),
            )
        })?;
        Array::from_nested_json(&v, what)
    }

    /// An array from nested JSON lists of numbers.
    pub fn from_nested_json(v: &serde_json::Value, what: &str) -> Result<Array> {
        let mut shape = Vec::new();
        let mut cur = v;
        while let serde_json::Value::Array(items) = cur {
            shape.push(items.len());
            match items.first() {
                Some(x) => cur = x,
                None => break,
            }
        }
        let mut flat = Vec::new();
        flatten(v, 0, &shape, &mut flat, what)?;
        let all_int = flat.iter().all(|x| matches!(x, Num::Int(_)));
        Ok(if all_int {
            Array::int(
                shape,
                flat.into_iter()
                    .map(|x| if let Num::Int(i) = x { i } else { 0 })
                    .collect(),
            )
        } else {
            Array::real(shape, flat.into_iter().map(|x| x.f64()).collect())
        })
    }

    /// NumPy-like text: `[0.1, 0.2, ..., 0.9]`, long arrays elided, nested by rows.
    pub fn display(&self) -> String {
        self.display_as(DType::F64)
    }

    /// As [`Array::display`], with reals printed as the shortest text of their `dtype` value
    /// (an f32 result prints as `0.1`, not `0.10000000149011612`).
    pub fn display_as(&self, dtype: DType) -> String {
        // Elements are formatted as they are printed, so a 10^7-element array formats the
        // few dozen it shows, not all of them.
        let fmt = |i: usize| match &self.data {
            Data::Real(v) if dtype == DType::F32 => fmt_real32(v[i]),
            Data::Real(v) => fmt_real(v[i]),
            Data::Int(v) => v[i].to_string(),
        };
        let len = self.len();
        if self.shape.is_empty() {
            return if len > 0 { fmt(0) } else { String::new() };
        }
        // (as NumPy prints any empty array; a `[10^18, 0]` shape must not make 10^18 rows)
        let cells = self.shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d));
        if len == 0 || cells != Some(len) {
            return "[]".into();
        }
        let mut out = String::new();
        nest(&mut out, &self.shape, 0, len > 1000, &fmt, 0);
        out
    }
}

/// Prints the rows of `shape` whose first element is `base`, eliding all but the first and
/// last few of each dimension when `elide`.
fn nest(
    out: &mut String,
    shape: &[usize],
    base: usize,
    elide: bool,
    fmt: &dyn Fn(usize) -> String,
    depth: usize,
) {
    const EDGE: usize = 3;
    let n = shape[0];
    let inner: usize = shape[1..].iter().product();
    out.push('[');
    let show: Vec<usize> = if n > 2 * EDGE + 1 && elide {
        (0..EDGE).chain(n - EDGE..n).collect()
    } else {
        (0..n).collect()
    };
    for (k, i) in show.iter().enumerate() {
        if k > 0 {
            if shape.len() > 1 {
                let _ = write!(out, ",\n{}", " ".repeat(depth + 1));
            } else {
                out.push_str(", ");
            }
        }
        if k == EDGE && show.len() == 2 * EDGE && n > 2 * EDGE {
            out.push_str("...");
            if shape.len() > 1 {
                let _ = write!(out, ",\n{}", " ".repeat(depth + 1));
            } else {
                out.push_str(", ");
            }
        }
        if shape.len() == 1 {
            out.push_str(&fmt(base + *i));
        } else {
            nest(out, &shape[1..], base + i * inner, elide, fmt, depth + 1);
        }
    }
    out.push(']');
}

/// The header text of an `.npy` file (as far as the bytes go): after the magic, the version and
/// the header length (2 bytes in version 1, 4 after). None when the file has the magic but the
/// header length runs past its end.
fn npy_header(bytes: &[u8]) -> Option<&[u8]> {
    let (start, len): (usize, Option<usize>) = match bytes.get(6) {
        Some(1) => (
            10,
            bytes
                .get(8..10)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize),
        ),
        Some(_) => (
            12,
            bytes
                .get(8..12)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize),
        ),
        None => (0, None),
    };
    let end = start.saturating_add(len.unwrap_or(0));
    if len.is_some() && end > bytes.len() && bytes.starts_with(b"\x93NUMPY") {
        return None;
    }
    let end = end.min(bytes.len());
    Some(bytes.get(start.min(end)..end).unwrap_or(&[]))
}

/// The header's `'shape'` is a tuple of plain integers whose product fits in 64 bits (checked
/// only when the key is there: without it npyz reports the header).
fn npy_shape_fits(header: &[u8]) -> std::result::Result<(), String> {
    let Some(at) = header
        .windows(7)
        .position(|w| w == b"'shape'" || w == b"\"shape\"")
    else {
        return Ok(());
    };
    let rest = &header[at + 7..];
    let open = rest.iter().position(|c| *c == b'(');
    let close = rest.iter().position(|c| *c == b')');
    let (Some(open), Some(close)) = (open, close) else {
        return Err("the shape is not a tuple of integers".into());
    };
    if close < open || rest[..open].iter().any(|c| !matches!(c, b' ' | b':')) {
        return Err("the shape is not a tuple of integers".into());
    }
    let inner = &rest[open + 1..close];
    if inner
        .iter()
        .any(|c| !(c.is_ascii_digit() || matches!(c, b' ' | b',' | b'L')))
    {
        return Err("the shape is not a tuple of integers".into());
    }
    let mut product: u64 = 1;
    for part in inner.split(|c| *c == b',') {
        let digits: Vec<u8> = part.iter().copied().filter(u8::is_ascii_digit).collect();
        if digits.is_empty() {
            continue;
        }
        let d = std::str::from_utf8(&digits)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or("a dimension of the shape does not fit in 64 bits")?;
        product = product
            .checked_mul(d)
            .ok_or("the shape's element count does not fit in 64 bits")?;
    }
    Ok(())
}

/// The elements of an `.npy` file of element type `T`, converted.
fn read_npy<T: npyz::Deserialize, U>(
    npy: npyz::NpyFile<&[u8]>,
    what: &str,
    f: impl Fn(T) -> U,
) -> Result<Vec<U>> {
    let v = npy.into_vec::<T>().map_err(|e| {
        Error::new(
            ErrorKind::Data,
            format!("{what}: not a valid .npy file: {e}"),
        )
    })?;
    Ok(v.into_iter().map(f).collect())
}

/// `.npy` bytes for a row-major array of the given shape.
fn write_npy<T: npyz::AutoSerialize>(
    shape: &[u64],
    values: impl IntoIterator<Item = T>,
) -> Result<Vec<u8>> {
    use npyz::WriterBuilder;
    let io = |e: std::io::Error| Error::new(ErrorKind::Io, format!("writing .npy: {e}"));
    let mut buf = Vec::new();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(&mut buf)
        .begin_nd()
        .map_err(io)?;
    w.extend(values).map_err(io)?;
    w.finish().map_err(io)?;
    Ok(buf)
}

/// `out[order[k]] = v[k]`.
fn scatter<T: Copy + Default>(v: Vec<T>, order: &[usize]) -> Vec<T> {
    let mut out = vec![T::default(); v.len()];
    for (x, o) in v.into_iter().zip(order) {
        out[*o] = x;
    }
    out
}

/// Shortest text that reads back as the same f32.
pub fn fmt_real32(x: f64) -> String {
    let f = x as f32;
    if f.is_finite() {
        format!("{f:?}")
    } else {
        fmt_real(x)
    }
}

/// Shortest text that reads back as the same f64 (`inf`, `-inf` and `nan` by name).
pub fn fmt_real(x: f64) -> String {
    crate::ir::real_literal(x)
}

enum Num {
    Int(i64),
    Real(f64),
}

impl Num {
    fn f64(&self) -> f64 {
        match self {
            Num::Int(i) => *i as f64,
            Num::Real(r) => *r,
        }
    }
}

fn flatten(
    v: &serde_json::Value,
    depth: usize,
    shape: &[usize],
    out: &mut Vec<Num>,
    what: &str,
) -> Result<()> {
    let ragged = || {
        Error::new(
            ErrorKind::Shape,
            format!("{what}: ragged array literal (rows of different lengths)"),
        )
    };
    match v {
        serde_json::Value::Array(items) => {
            if depth >= shape.len() || items.len() != shape[depth] {
                return Err(ragged());
            }
            for x in items {
                flatten(x, depth + 1, shape, out, what)?;
            }
            Ok(())
        }
        _ if depth != shape.len() => Err(ragged()),
        _ => {
            out.push(json_number(v).ok_or_else(|| {
                Error::new(ErrorKind::Data, format!("{what}: `{v}` is not a number"))
            })?);
            Ok(())
        }
    }
}

fn json_number(v: &serde_json::Value) -> Option<Num> {
    match v {
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Some(Num::Int(i)),
            None => n.as_f64().map(Num::Real),
        },
        serde_json::Value::String(s) => match s.as_str() {
            "inf" | "+inf" | "Infinity" => Some(Num::Real(f64::INFINITY)),
            "-inf" | "-Infinity" => Some(Num::Real(f64::NEG_INFINITY)),
            "nan" | "NaN" => Some(Num::Real(f64::NAN)),
            _ => None,
        },
        serde_json::Value::Bool(b) => Some(Num::Int(*b as i64)),
        _ => None,
    }
}

/// Quotes bare `inf`, `-inf` and `nan` so that JSON accepts them.
fn bare_specials(text: &str) -> String {
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if matches!(word.as_str(), "inf" | "nan" | "Infinity" | "NaN") {
            let _ = write!(out, "\"{word}\"");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphabetic() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out.replace("-\"inf\"", "\"-inf\"")
        .replace("-\"Infinity\"", "\"-inf\"")
}
