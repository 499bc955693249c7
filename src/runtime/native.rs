//! Running a program through the JIT: compiling it (once per program and precision, cached),
//! laying out its buffers, calling the kernel, and turning a kernel fault into the
//! interpreter's error message. `run_kernel` is the one place a kernel is called (here and
//! for compiled losses): it checks the extents, parameters and buffers against the program.

use crate::diag::{Error, ErrorKind, Result};
use crate::interp::{self, Env, InputData, Value};
use crate::ir::{Expr, Extent, IndexId, Program, Red, Ty};
use crate::jit::{self, Elem, Fault, Kernel};
use std::collections::HashMap;
use std::marker::PhantomData;
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

/// A buffer handed to a kernel for one call: borrowed from a slice (inputs read-only, tables
/// and the output writable), so its pointer is valid for `bytes` bytes while the slot lives,
/// and no two writable slots overlap (the borrows say so).
pub(crate) struct Slot<'a> {
    ptr: *mut u8,
    bytes: usize,
    /// the element type and whether its reals are f32 (`None`: scratch, any element type)
    kind: Option<(Elem, bool)>,
    writable: bool,
    _borrow: PhantomData<&'a mut [u8]>,
}

/// The element types a slot may hold (private: what `Slot` builds from).
pub(crate) trait Cell: Copy {
    const KIND: (Elem, bool);
}
impl Cell for f32 {
    const KIND: (Elem, bool) = (Elem::Real, true);
}
impl Cell for f64 {
    const KIND: (Elem, bool) = (Elem::Real, false);
}
impl Cell for i64 {
    const KIND: (Elem, bool) = (Elem::Int, false);
}
impl Cell for u8 {
    const KIND: (Elem, bool) = (Elem::Bool, false);
}

impl<'a> Slot<'a> {
    /// An input's data, which the kernel only reads.
    pub(crate) fn read<T: Cell>(v: &'a [T]) -> Slot<'a> {
        Slot {
            ptr: v.as_ptr() as *mut u8,
            bytes: std::mem::size_of_val(v),
            kind: Some(T::KIND),
            writable: false,
            _borrow: PhantomData,
        }
    }
    /// A table or the output, which the kernel writes.
    pub(crate) fn write<T: Cell>(v: &'a mut [T]) -> Slot<'a> {
        Slot {
            ptr: v.as_mut_ptr() as *mut u8,
            bytes: std::mem::size_of_val(v),
            kind: Some(T::KIND),
            writable: true,
            _borrow: PhantomData,
        }
    }
    /// A caller's real buffer (the byte length is taken from the type's real size, so a type
    /// that claimed another precision could still not make the kernel write past it).
    pub(crate) fn real<R: super::Real>(v: &'a mut [R]) -> Slot<'a> {
        Slot {
            ptr: v.as_mut_ptr() as *mut u8,
            bytes: std::mem::size_of_val(v),
            kind: Some((Elem::Real, R::F32)),
            writable: true,
            _borrow: PhantomData,
        }
    }
    /// Scratch space for a table of any element type (8-byte aligned).
    pub(crate) fn scratch(v: &'a mut [u64]) -> Slot<'a> {
        Slot {
            ptr: v.as_mut_ptr() as *mut u8,
            bytes: std::mem::size_of_val(v),
            kind: None,
            writable: true,
            _borrow: PhantomData,
        }
    }
}

fn contract(msg: String) -> Error {
    Error::new(ErrorKind::Shape, msg)
}

/// Checks a call's extents and parameter values against `p` (see [`run_kernel`]).
pub(crate) fn check_args(p: &Program, f32: bool, extents: &[i64], params: &[Value]) -> Result<()> {
    // Extents: one per index, none negative, literal ones as declared and computed ones as
    // computed (the kernel leaves out the checks of reads that these relations prove).
    if extents.len() != p.indices.len() {
        return Err(contract(format!(
            "{} extents given, `{}` has {} indices",
            extents.len(),
            p.name,
            p.indices.len()
        )));
    }
    if params.len() != p.params.len() {
        return Err(contract(format!(
            "{} parameter values given, `{}` has {} parameters",
            params.len(),
            p.name,
            p.params.len()
        )));
    }
    for (q, v) in p.params.iter().zip(params) {
        let ok = matches!(
            (q.ty, v),
            (Ty::Real, Value::Real(_)) | (Ty::Int, Value::Int(_)) | (Ty::Bool, Value::Bool(_))
        );
        if !ok {
            return Err(Error::new(
                ErrorKind::Type,
                format!("parameter `{}` is {}, but was given {v:?}", q.name, q.ty),
            ));
        }
    }
    let mut env: Option<Env> = None;
    for (i, (ix, n)) in p.indices.iter().zip(extents).enumerate() {
        if *n < 0 {
            return Err(contract(format!(
                "the extent of index `{}` is {n}, out of range",
                p.index_label(IndexId(i as u32))
            )));
        }
        let want = match ix.extent {
            Extent::Fixed(m) => m,
            Extent::Computed(e) => {
                if p.pool.reaches(&[e], |_, x| matches!(x, Expr::Input(..))) {
                    return Err(internal(format!("the extent of `{}` reads data", ix.name)));
                }
                let env = env.get_or_insert_with(|| Env {
                    f32,
                    extents: extents.to_vec(),
                    inputs: vec![],
                    params: params.to_vec(),
                });
                interp::eval_scalar(p, env, e)?.as_f64() as i64
            }
            Extent::Input { .. } => *n,
        };
        if *n != want {
            return Err(contract(format!(
                "the extent of index `{}` is {n}, but `{}` makes it {want}",
                p.index_label(IndexId(i as u32)),
                p.name
            )));
        }
    }
    Ok(())
}

/// Runs `k`, the kernel compiled from `p`, on `slots`: the one place [`Kernel::run`]'s
/// contract is established. Every extent, parameter and buffer is checked against `p` first
/// (an `Error`, never a kernel call, when one does not fit); a kernel fault comes back as the
/// inner `Err`.
pub(crate) fn run_kernel(
    k: &Kernel,
    p: &Program,
    slots: &[Slot],
    extents: &[i64],
    params: &[Value],
) -> Result<std::result::Result<(), Fault>> {
    check_args(p, k.f32, extents, params)?;
    // Buffers: one per slot, of its element type in the kernel's precision, as long as its
    // index space under these extents (scratch at least as long); tables and output writable.
    let elems = jit::slots(p);
    if slots.len() != elems.len() {
        return Err(contract(format!(
            "{} buffers given, `{}` has {} slots",
            slots.len(),
            p.name,
            elems.len()
        )));
    }
    let ni = p.inputs.len();
    for (j, (s, e)) in slots.iter().zip(&elems).enumerate() {
        let (what, dims) = if j < ni {
            (format!("input `{}`", p.inputs[j].name), &p.inputs[j].dims)
        } else if j - ni < p.tensors.len() {
            let t = &p.tensors[j - ni];
            (format!("table `{}`", t.name), &t.indices)
        } else {
            ("the output".to_string(), &p.output.indices)
        };
        let cells = interp::table_size(p, extents, dims)?;
        let need = cells * e.size(k.f32);
        let kind_ok = match s.kind {
            None => j >= ni,
            Some((el, f32)) => el == *e && (el != Elem::Real || f32 == k.f32),
        };
        if !kind_ok || (j >= ni && !s.writable) {
            return Err(contract(format!(
                "the buffer for {what} has the wrong element type (`{}` needs {:?}{})",
                p.name,
                e,
                if *e == Elem::Real {
                    if k.f32 {
                        " in f32"
                    } else {
                        " in f64"
                    }
                } else {
                    ""
                }
            )));
        }
        let fits = if s.kind.is_none() {
            s.bytes >= need
        } else {
            s.bytes == need
        };
        if !fits {
            let size = e.size(k.f32);
            return Err(contract(format!(
                "the buffer for {what} holds {} elements, its extents make {cells}",
                s.bytes / size
            )));
        }
    }
    let ptrs: Vec<*mut u8> = slots.iter().map(|s| s.ptr).collect();
    let bits = param_bits(params);
    // SAFETY: `k` was compiled from `p` (both callers keep them together). Checked above:
    // one pointer per slot of `p` (inputs, tensors, output), each borrowed for this call and
    // valid for the cells its index space has under `extents`, with the element type
    // `jit::slots` gives in the kernel's precision (the kernel writes only tables and the
    // output, which are writable and do not overlap); one extent per index, literal and
    // computed ones as `p` defines them; one parameter per parameter, of its type.
    Ok(unsafe { k.run(&ptrs, extents, &bits) })
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

/// Inputs at most this large are run again through the interpreter when a kernel faults,
/// for its message (which says at which cell); larger ones get the kernel's own.
const RERUN_ELEMENTS: usize = 1 << 22;

/// Runs a program (as `interp::run_with_grads` does) through its compiled kernel. Every
/// extent, parameter and input is checked against the program first (an `Error` when one
/// does not fit).
pub fn run_with_grads(p: &Program, env: &Env) -> Result<(Vec<f64>, Vec<Vec<f64>>)> {
    let k = kernel(p, env.f32)?;
    let f32 = env.f32;
    if env.inputs.len() != p.inputs.len() {
        return Err(contract(format!(
            "{} inputs given, `{}` has {}",
            env.inputs.len(),
            p.name,
            p.inputs.len()
        )));
    }
    // Inputs in the kernel's element types (reals in its precision).
    let ins: Vec<Owned> = p
        .inputs
        .iter()
        .zip(&env.inputs)
        .map(|(inp, d)| match d {
            InputData::Real(d) if f32 && inp.ty == Ty::Real => {
                Owned::F32(d.iter().map(|x| *x as f32).collect())
            }
            InputData::Real(d) => Owned::F64(d.to_vec()),
            InputData::Int(d) => Owned::I64(d.to_vec()),
        })
        .collect();
    // (checked before the tables are allocated by these extents)
    check_args(p, f32, &env.extents, &env.params)?;
    interp::check_memory(p, &env.extents, &|ty| cell_bytes(ty, f32), 0)?;
    let mut tables: Vec<Owned> = Vec::with_capacity(p.tensors.len() + 1);
    for t in &p.tensors {
        let n = interp::table_size(p, &env.extents, &t.indices)?;
        tables.push(Owned::zeros(Elem::of(t.ty), f32, n)?);
    }
    let n = interp::table_size(p, &env.extents, &p.output.indices)?;
    tables.push(Owned::zeros(Elem::of(p.output_ty()), f32, n)?);
    let r = {
        let mut slots: Vec<Slot> = ins.iter().map(Owned::read).collect();
        slots.extend(tables.iter_mut().map(Owned::write));
        run_kernel(&k, p, &slots, &env.extents, &env.params)?
    };
    if let Err(f) = r {
        return Err(fault_in(p, env, f));
    }
    let out = tables.last().map(|b| b.to_f64()).unwrap_or_default();
    let grads = p
        .grads
        .iter()
        .map(|(_, t)| tables[t.ix()].to_f64())
        .collect();
    Ok((out, grads))
}

/// The error for a kernel fault on `env`: the interpreter's own when it finds one (it names
/// the cell: "(at n = 2)"), computed only on this error path; else the fault's wording.
pub(crate) fn fault_in(p: &Program, env: &Env, f: Fault) -> Error {
    let size: usize = env
        .inputs
        .iter()
        .map(|d| match d {
            InputData::Real(v) => v.len(),
            InputData::Int(v) => v.len(),
        })
        .sum();
    if size <= RERUN_ELEMENTS {
        if let Err(e) = interp::run_with_grads(p, env) {
            return e;
        }
    }
    fault_error(p, &env.extents, f)
}

/// A buffer of one slot, owned.
enum Owned {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    U8(Vec<u8>),
}

impl Owned {
    fn zeros(elem: Elem, f32: bool, n: usize) -> Result<Owned> {
        Ok(match elem {
            Elem::Real if f32 => Owned::F32(interp::try_filled(n, 0.0)?),
            Elem::Real => Owned::F64(interp::try_filled(n, 0.0)?),
            Elem::Int => Owned::I64(interp::try_filled(n, 0)?),
            Elem::Bool => Owned::U8(interp::try_filled(n, 0)?),
        })
    }
    fn read(&self) -> Slot<'_> {
        match self {
            Owned::F32(v) => Slot::read(v),
            Owned::F64(v) => Slot::read(v),
            Owned::I64(v) => Slot::read(v),
            Owned::U8(v) => Slot::read(v),
        }
    }
    fn write(&mut self) -> Slot<'_> {
        match self {
            Owned::F32(v) => Slot::write(v),
            Owned::F64(v) => Slot::write(v),
            Owned::I64(v) => Slot::write(v),
            Owned::U8(v) => Slot::write(v),
        }
    }
    fn to_f64(&self) -> Vec<f64> {
        match self {
            Owned::F32(v) => v.iter().map(|x| *x as f64).collect(),
            Owned::F64(v) => v.clone(),
            Owned::I64(v) => v.iter().map(|x| *x as f64).collect(),
            Owned::U8(v) => v.iter().map(|x| *x as f64).collect(),
        }
    }
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
