//! Running a program through the JIT: compiling it (once per program and precision, cached),
//! laying out its buffers, calling the kernel, and turning a kernel fault into the
//! interpreter's error message.

use crate::diag::{Error, ErrorKind, Result};
use crate::interp::{self, Env, InputData, Value};
use crate::ir::{Expr, Program, Red};
use crate::jit::{self, Elem, Fault, Kernel};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Compiled kernels by program fingerprint and precision.
type Cache = Mutex<HashMap<(String, bool), Arc<Kernel>>>;
static CACHE: OnceLock<Cache> = OnceLock::new();
/// Kernels kept before the cache starts over.
const CACHE_SIZE: usize = 256;

/// Forgets every cached kernel (to time compilation from scratch).
pub fn clear_cache() {
    if let Some(c) = CACHE.get() {
        if let Ok(mut c) = c.lock() {
            c.clear();
        }
    }
}

/// The kernel for a program, compiled on first use.
pub fn kernel(p: &Program, f32: bool) -> Result<Arc<Kernel>> {
    let key = (p.fingerprint(), f32);
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(k) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(k);
    }
    let s = crate::schedule::schedule(p);
    let k = Arc::new(jit::compile(p, &s, f32)?);
    if let Ok(mut c) = cache.lock() {
        if c.len() >= CACHE_SIZE {
            c.clear();
        }
        c.insert(key, k.clone());
    }
    Ok(k)
}

/// A buffer of one slot, owned.
enum Buf {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    U8(Vec<u8>),
}

impl Buf {
    fn zeros(elem: Elem, f32: bool, n: usize) -> Result<Buf> {
        Ok(match elem {
            Elem::Real if f32 => Buf::F32(interp::try_filled(n, 0.0)?),
            Elem::Real => Buf::F64(interp::try_filled(n, 0.0)?),
            Elem::Int => Buf::I64(interp::try_filled(n, 0)?),
            Elem::Bool => Buf::U8(interp::try_filled(n, 0)?),
        })
    }
    fn ptr(&mut self) -> *mut u8 {
        match self {
            Buf::F32(v) => v.as_mut_ptr() as *mut u8,
            Buf::F64(v) => v.as_mut_ptr() as *mut u8,
            Buf::I64(v) => v.as_mut_ptr() as *mut u8,
            Buf::U8(v) => v.as_mut_ptr(),
        }
    }
    fn to_f64(&self) -> Vec<f64> {
        match self {
            Buf::F32(v) => v.iter().map(|x| *x as f64).collect(),
            Buf::F64(v) => v.clone(),
            Buf::I64(v) => v.iter().map(|x| *x as f64).collect(),
            Buf::U8(v) => v.iter().map(|x| *x as f64).collect(),
        }
    }
}

/// Bytes of a kernel's table cell of type `ty`.
pub fn cell_bytes(ty: crate::ir::Ty, f32: bool) -> u64 {
    match Elem::of(ty) {
        Elem::Real if f32 => 4,
        Elem::Real | Elem::Int => 8,
        Elem::Bool => 1,
    }
}

/// Parameter values as the kernel reads them.
pub fn param_bits(params: &[Value]) -> Vec<u64> {
    params
        .iter()
        .map(|v| match v {
            Value::Real(x) => x.to_bits(),
            Value::Int(x) => *x as u64,
            Value::Bool(b) => *b as u64,
        })
        .collect()
}

/// Runs a program (as `interp::run_with_grads` does) through its compiled kernel.
pub fn run_with_grads(p: &Program, env: &Env) -> Result<(Vec<f64>, Vec<Vec<f64>>)> {
    let k = kernel(p, env.f32)?;
    let f32 = env.f32;
    let slots = jit::slots(p);
    interp::check_memory(p, &env.extents, &|ty| cell_bytes(ty, f32), 0)?;
    let mut bufs: Vec<Buf> = Vec::with_capacity(slots.len());
    for (i, inp) in p.inputs.iter().enumerate() {
        let n = interp::table_size(p, &env.extents, &inp.dims)?;
        let b = match env.inputs.get(i) {
            Some(InputData::Real(d)) if f32 => Buf::F32(d.iter().map(|x| *x as f32).collect()),
            Some(InputData::Real(d)) => Buf::F64(d.to_vec()),
            Some(InputData::Int(d)) => Buf::I64(d.to_vec()),
            None => return Err(internal(format!("no data for input `{}`", inp.name))),
        };
        let len = match &b {
            Buf::F32(v) => v.len(),
            Buf::F64(v) => v.len(),
            Buf::I64(v) => v.len(),
            Buf::U8(v) => v.len(),
        };
        // The kernel reads exactly the cells the extents describe.
        if len != n {
            return Err(internal(format!(
                "input `{}` holds {len} elements, its extents say {n}",
                inp.name
            )));
        }
        bufs.push(b);
    }
    for t in &p.tensors {
        let n = interp::table_size(p, &env.extents, &t.indices)?;
        bufs.push(Buf::zeros(Elem::of(t.ty), f32, n)?);
    }
    let n = interp::table_size(p, &env.extents, &p.output.indices)?;
    bufs.push(Buf::zeros(Elem::of(p.output_ty()), f32, n)?);
    debug_assert_eq!(bufs.len(), slots.len());
    let ptrs: Vec<*mut u8> = bufs.iter_mut().map(|b| b.ptr()).collect();
    let params = param_bits(&env.params);
    // SAFETY: one buffer per slot, each sized from the same extents the kernel uses, with
    // the element type `jit::slots` gives (reals in the kernel's precision).
    let r = unsafe { k.run(&ptrs, &env.extents, &params) };
    if let Err(f) = r {
        return Err(fault_error(p, &env.extents, f));
    }
    let out = bufs.last().map(|b| b.to_f64()).unwrap_or_default();
    let grads = p
        .grads
        .iter()
        .map(|(_, t)| bufs[p.inputs.len() + t.ix()].to_f64())
        .collect();
    Ok((out, grads))
}

fn internal(msg: String) -> Error {
    Error::new(ErrorKind::Check, format!("internal (jit): {msg}"))
}

/// The error a kernel fault stands for, worded as the interpreter words it.
pub fn fault_error(p: &Program, extents: &[i64], f: Fault) -> Error {
    let node = f.node;
    if node.ix() >= p.pool.len() {
        return internal(format!("fault {f:?}"));
    }
    match f.code {
        jit::ERR_RANGE => {
            let (what, dims) = match p.pool.get(node) {
                Expr::Input(i, _) => (
                    format!("`{}`", p.inputs[i.ix()].name),
                    p.inputs[i.ix()].dims.clone(),
                ),
                Expr::Tensor(t, _) => (
                    format!("`{}`", p.tensors[t.ix()].name),
                    p.tensors[t.ix()].indices.clone(),
                ),
                _ => return internal(format!("fault {f:?}")),
            };
            let Some(d) = dims.get(f.dim) else {
                return internal(format!("fault {f:?}"));
            };
            let ext = extents.get(d.ix()).copied().unwrap_or(0);
            interp::range_error(p, node, &what, f.dim, *d, f.value, ext, "")
        }
        jit::ERR_DIV_ZERO => {
            let mut d = crate::diag::Diagnostic::new("integer division by zero is out of range");
            if let Some(span) = p.spans.get(&node) {
                d = d.primary(*span, "this division");
            }
            Error::from_diag(ErrorKind::Range, d)
        }
        jit::ERR_NEG_POW => Error::new(
            ErrorKind::Range,
            format!("negative int exponent {} is out of range", f.value),
        ),
        jit::ERR_EMPTY => {
            let (red, ix) = match p.pool.get(node) {
                Expr::Reduce(r, i, _) => (*r, *i),
                _ => (Red::Max, crate::ir::IndexId(0)),
            };
            Error::new(
                ErrorKind::Range,
                format!(
                    "{} over index `{}`, whose extent is 0 (out of range)",
                    red.name(),
                    p.index_label(ix)
                ),
            )
        }
        _ => internal(format!("fault {f:?}")),
    }
}
