//! Compiled losses: the fast path for Rust programs.
//!
//! [`Library::compile`](super::Library::compile) turns a loss (with the inputs to
//! differentiate and a precision) into a [`CompiledLoss`]: value and gradients in one native
//! kernel. [`CompiledLoss::call_into`] binds borrowed, typed input slices and writes the value
//! and the gradients into caller-owned buffers (training loops: nothing is copied when the
//! inputs have the loss's precision, and scratch tables are reused between calls);
//! [`CompiledLoss::call`] returns an [`Output`] like the interpreter's path.
//! A compiled loss is `Send + Sync`; one reduction's kernel is compiled up front, the others
//! on first use.

use super::array::{Array, DType};
use super::bind::{self, Output, ParamValue, Shapes};
use super::native;
use crate::diag::{Error, ErrorKind, Result};
use crate::interp::{self, Env, InputData};
use crate::ir::{self, Expr, InputId, Program, Reduction, Ty};
use crate::jit::{self, Elem, Kernel};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How to compile a loss.
#[derive(Clone, Debug)]
pub struct Options {
    pub dtype: DType,
    /// inputs to differentiate
    pub grad: Vec<String>,
    /// the reduction compiled up front (others compile on first use)
    pub reduction: Reduction,
    /// compile the weighted variant up front
    pub weighted: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            dtype: DType::F32,
            grad: vec![],
            reduction: Reduction::Mean,
            weighted: false,
        }
    }
}

impl Options {
    pub fn new() -> Options {
        Options::default()
    }
    pub fn dtype(mut self, d: DType) -> Options {
        self.dtype = d;
        self
    }
    pub fn grad(mut self, input: &str) -> Options {
        self.grad.push(input.to_string());
        self
    }
    pub fn reduction(mut self, r: Reduction) -> Options {
        self.reduction = r;
        self
    }
    pub fn weighted(mut self, w: bool) -> Options {
        self.weighted = w;
        self
    }
}

/// Borrowed input data of any element type the host may hold.
#[derive(Clone, Copy, Debug)]
pub enum Slice<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    I64(&'a [i64]),
    I32(&'a [i32]),
}

impl Slice<'_> {
    fn len(&self) -> usize {
        match self {
            Slice::F32(v) => v.len(),
            Slice::F64(v) => v.len(),
            Slice::I64(v) => v.len(),
            Slice::I32(v) => v.len(),
        }
    }
    fn to_f64(self) -> Vec<f64> {
        match self {
            Slice::F32(v) => v.iter().map(|x| *x as f64).collect(),
            Slice::F64(v) => v.to_vec(),
            Slice::I64(v) => v.iter().map(|x| *x as f64).collect(),
            Slice::I32(v) => v.iter().map(|x| *x as f64).collect(),
        }
    }
}

/// A borrowed array: a shape and row-major data.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub shape: &'a [usize],
    pub data: Slice<'a>,
}

impl<'a> View<'a> {
    pub fn new(shape: &'a [usize], data: Slice<'a>) -> View<'a> {
        View { shape, data }
    }
    pub fn f32(shape: &'a [usize], data: &'a [f32]) -> View<'a> {
        View::new(shape, Slice::F32(data))
    }
    pub fn f64(shape: &'a [usize], data: &'a [f64]) -> View<'a> {
        View::new(shape, Slice::F64(data))
    }
    pub fn i64(shape: &'a [usize], data: &'a [i64]) -> View<'a> {
        View::new(shape, Slice::I64(data))
    }
}

/// f32 or f64: the element type of a compiled loss's outputs.
pub trait Real: Copy + Default + Send + Sync + 'static {
    const F32: bool;
    fn to_f64(self) -> f64;
}
impl Real for f32 {
    const F32: bool = true;
    fn to_f64(self) -> f64 {
        self as f64
    }
}
impl Real for f64 {
    const F32: bool = false;
    fn to_f64(self) -> f64 {
        self
    }
}

/// One reduction's program and kernel.
struct Variant {
    program: Program,
    kernel: Arc<Kernel>,
}

/// A loss compiled to native code (see the module doc).
pub struct CompiledLoss {
    base: Program,
    options: Options,
    wrt: Vec<InputId>,
    /// parameter defaults or computed extents read input data (then it is converted for them)
    defaults_read_inputs: bool,
    variants: Mutex<HashMap<(Reduction, bool), Arc<Variant>>>,
    /// scratch tables, reused between calls
    scratch: Mutex<Vec<Vec<u64>>>,
    compile_s: f64,
}

impl std::fmt::Debug for CompiledLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CompiledLoss({}, {:?})", self.base.name, self.options)
    }
}

fn variant(
    base: &Program,
    wrt: &[InputId],
    r: Reduction,
    weighted: bool,
    f32: bool,
) -> Result<Variant> {
    let q = crate::opt::simplify(&ir::with_reduction(base, r, weighted));
    let q = if wrt.is_empty() {
        q
    } else {
        crate::opt::simplify(&crate::grad::differentiate(&q, wrt)?)
    };
    let kernel = native::kernel(&q, f32)?;
    Ok(Variant { program: q, kernel })
}

impl CompiledLoss {
    pub(crate) fn new(p: &Program, options: Options) -> Result<CompiledLoss> {
        let t0 = Instant::now();
        bind::validate_grad(p, &options.grad)?;
        bind::check_reduction(p, options.reduction)?;
        let wrt: Vec<InputId> = options.grad.iter().filter_map(|g| p.input(g)).collect();
        let v = variant(
            p,
            &wrt,
            options.reduction,
            options.weighted,
            options.dtype == DType::F32,
        )?;
        let mut roots: Vec<ir::ExprId> = p.params.iter().map(|q| q.default).collect();
        roots.extend(p.indices.iter().filter_map(|i| match i.extent {
            ir::Extent::Computed(e) => Some(e),
            _ => None,
        }));
        let defaults_read_inputs = reads_inputs(p, &roots);
        let mut variants = HashMap::new();
        variants.insert((options.reduction, options.weighted), Arc::new(v));
        Ok(CompiledLoss {
            base: p.clone(),
            wrt,
            defaults_read_inputs,
            variants: Mutex::new(variants),
            scratch: Mutex::new(Vec::new()),
            compile_s: t0.elapsed().as_secs_f64(),
            options,
        })
    }

    /// Seconds it took to compile the first kernel (IR to callable machine code).
    pub fn compile_seconds(&self) -> f64 {
        self.compile_s
    }

    /// The loss as checked (before reductions and differentiation).
    pub fn program(&self) -> &Program {
        &self.base
    }

    /// The kernel of the reduction compiled up front (for printing its code).
    pub fn kernel(&self) -> Result<Arc<Kernel>> {
        Ok(self
            .variant(self.options.reduction, self.options.weighted)?
            .kernel
            .clone())
    }

    fn variant(&self, r: Reduction, weighted: bool) -> Result<Arc<Variant>> {
        if let Some(v) = self
            .variants
            .lock()
            .ok()
            .and_then(|m| m.get(&(r, weighted)).cloned())
        {
            return Ok(v);
        }
        bind::check_reduction(&self.base, r)?;
        let v = Arc::new(variant(
            &self.base,
            &self.wrt,
            r,
            weighted,
            self.options.dtype == DType::F32,
        )?);
        if let Ok(mut m) = self.variants.lock() {
            m.insert((r, weighted), v.clone());
        }
        Ok(v)
    }

    /// The number of cells of the value for these input shapes and reduction.
    pub fn value_len(&self, inputs: &[(&str, View)], reduction: Reduction) -> Result<usize> {
        let shapes: Vec<(&str, &[usize])> = inputs.iter().map(|(n, v)| (*n, v.shape)).collect();
        let Shapes { extents, lead } = bind::bind_shapes(&self.base, &shapes)?;
        if reduction != Reduction::None {
            return Ok(1);
        }
        Ok(bind::output_shape(&self.base, &extents, &lead)
            .iter()
            .product())
    }

    /// Evaluates the loss; returns the value and the gradients of the compiled inputs.
    pub fn call(
        &self,
        inputs: &[(&str, View)],
        params: &[(&str, ParamValue)],
        reduction: Reduction,
        weights: Option<View>,
    ) -> Result<Output> {
        let shapes: Vec<(&str, &[usize])> = inputs.iter().map(|(n, v)| (*n, v.shape)).collect();
        let Shapes { extents, lead } = bind::bind_shapes(&self.base, &shapes)?;
        let out_shape = if reduction == Reduction::None {
            bind::output_shape(&self.base, &extents, &lead)
        } else {
            vec![]
        };
        let n: usize = out_shape.iter().product();
        let mut value = vec![0f64; n];
        let mut grads: Vec<Vec<f64>> = Vec::new();
        for w in &self.wrt {
            let name = &self.base.inputs[w.ix()].name;
            let len = inputs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.data.len())
                .unwrap_or(0);
            grads.push(vec![0f64; len]);
        }
        if self.options.dtype == DType::F32 {
            let mut v32 = vec![0f32; n];
            let mut g32: Vec<Vec<f32>> = grads.iter().map(|g| vec![0f32; g.len()]).collect();
            {
                let mut gs: Vec<&mut [f32]> = g32.iter_mut().map(|g| g.as_mut_slice()).collect();
                self.call_into(inputs, params, reduction, weights, &mut v32, &mut gs)?;
            }
            value = v32.iter().map(|x| *x as f64).collect();
            grads = g32
                .iter()
                .map(|g| g.iter().map(|x| *x as f64).collect())
                .collect();
        } else {
            let mut gs: Vec<&mut [f64]> = grads.iter_mut().map(|g| g.as_mut_slice()).collect();
            self.call_into(inputs, params, reduction, weights, &mut value, &mut gs)?;
        }
        let grads = self
            .wrt
            .iter()
            .zip(grads)
            .map(|(w, g)| {
                let name = self.base.inputs[w.ix()].name.clone();
                let shape = inputs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.shape.to_vec())
                    .unwrap_or_default();
                (name, Array::real(shape, g))
            })
            .collect();
        Ok(Output {
            value: Array::real(out_shape, value),
            grads,
        })
    }

    /// Evaluates the loss into caller-owned buffers: `value` (one cell when reduced, else the
    /// output's cells) and one gradient buffer per compiled gradient input, each as long as
    /// that input. `R` is the loss's precision.
    pub fn call_into<R: Real>(
        &self,
        inputs: &[(&str, View)],
        params: &[(&str, ParamValue)],
        reduction: Reduction,
        weights: Option<View>,
        value: &mut [R],
        grads: &mut [&mut [R]],
    ) -> Result<()> {
        let f32 = self.options.dtype == DType::F32;
        if R::F32 != f32 {
            return Err(Error::new(
                ErrorKind::Type,
                format!(
                    "`{}` was compiled for {}, but the output buffers are {}",
                    self.base.name,
                    self.options.dtype.name(),
                    if R::F32 { "f32" } else { "f64" }
                ),
            ));
        }
        let p = &self.base;
        let names: Vec<&str> = inputs.iter().map(|(n, _)| *n).collect();
        let pnames: Vec<&str> = params.iter().map(|(n, _)| *n).collect();
        bind::check_names(p, &names, &pnames)?;
        for (name, v) in inputs {
            let n: usize = v.shape.iter().product();
            if n != v.data.len() {
                return Err(Error::new(
                    ErrorKind::Shape,
                    format!(
                        "input `{name}` has shape {:?} ({n} elements) but holds {}",
                        v.shape,
                        v.data.len()
                    ),
                ));
            }
        }
        let shapes: Vec<(&str, &[usize])> = inputs.iter().map(|(n, v)| (*n, v.shape)).collect();
        let Shapes { extents, lead } = bind::bind_shapes(p, &shapes)?;
        let view = |k: usize| -> Option<&View> {
            inputs
                .iter()
                .find(|(n, _)| *n == p.inputs[k].name)
                .map(|(_, v)| v)
        };

        // Parameters and computed extents (defaults see f64 copies of the inputs if they read any).
        let copies: Vec<(Vec<f64>, Vec<i64>)> = if self.defaults_read_inputs {
            (0..p.inputs.len())
                .map(|k| {
                    let d = view(k).map(|v| v.data.to_f64()).unwrap_or_default();
                    if p.inputs[k].ty == Ty::Int {
                        (vec![], d.iter().map(|x| *x as i64).collect())
                    } else {
                        (d, vec![])
                    }
                })
                .collect()
        } else {
            vec![(vec![], vec![]); p.inputs.len()]
        };
        let mut env = Env {
            f32,
            extents: extents.clone(),
            inputs: p
                .inputs
                .iter()
                .zip(&copies)
                .map(|(i, c)| {
                    if i.ty == Ty::Int {
                        InputData::Int(&c.1)
                    } else {
                        InputData::Real(&c.0)
                    }
                })
                .collect(),
            params: vec![],
        };
        let given: Vec<(String, ParamValue)> =
            params.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        bind::bind_params(p, &given, &mut env)?;

        let var = self.variant(reduction, weights.is_some())?;
        let q = &var.program;

        // Input buffers: borrowed when the element type matches, converted otherwise.
        let mut owned: Vec<Vec<u64>> = Vec::new();
        let mut ptrs: Vec<*mut u8> = Vec::with_capacity(q.inputs.len() + q.tensors.len() + 1);
        let mut holders: Vec<usize> = Vec::new(); // input k -> index in `owned` (usize::MAX: borrowed)
        for (k, inp) in p.inputs.iter().enumerate() {
            let Some(v) = view(k) else {
                return Err(Error::new(
                    ErrorKind::Missing,
                    format!("missing input `{}`", inp.name),
                ));
            };
            let (ptr, hold) = match (inp.ty, v.data) {
                (Ty::Real, Slice::F32(d)) if f32 => (d.as_ptr() as *mut u8, None),
                (Ty::Real, Slice::F64(d)) if !f32 => (d.as_ptr() as *mut u8, None),
                (Ty::Int, Slice::I64(d)) => (d.as_ptr() as *mut u8, None),
                (Ty::Real, d) => {
                    let x = d.to_f64();
                    let buf = if f32 {
                        pack_f32(&x.iter().map(|v| *v as f32).collect::<Vec<_>>())
                    } else {
                        x.iter().map(|v| v.to_bits()).collect()
                    };
                    (std::ptr::null_mut(), Some(buf))
                }
                (_, d) => {
                    let x = d.to_f64();
                    let mut out = Vec::with_capacity(x.len());
                    for v in x {
                        if v.fract() != 0.0 || !v.is_finite() {
                            return Err(Error::new(
                                ErrorKind::Type,
                                format!(
                                    "input `{}` is declared int (wrong dtype), but holds {v}",
                                    inp.name
                                ),
                            ));
                        }
                        out.push(v as i64 as u64);
                    }
                    (std::ptr::null_mut(), Some(out))
                }
            };
            match hold {
                Some(b) => {
                    holders.push(owned.len());
                    owned.push(b);
                }
                None => holders.push(usize::MAX),
            }
            ptrs.push(ptr);
        }
        // Weights: the last input of the weighted program, broadcast to the output's shape.
        if let Some(w) = weights {
            let out_shape = bind::output_shape(p, &extents, &lead);
            let arr = Array::real(w.shape.to_vec(), w.data.to_f64());
            let wv = bind::broadcast(&arr, &out_shape)?;
            let buf = if f32 {
                pack_f32(&wv.iter().map(|v| *v as f32).collect::<Vec<_>>())
            } else {
                wv.iter().map(|v| v.to_bits()).collect()
            };
            holders.push(owned.len());
            owned.push(buf);
            ptrs.push(std::ptr::null_mut());
        }
        for (k, h) in holders.iter().enumerate() {
            if *h != usize::MAX {
                ptrs[k] = owned[*h].as_mut_ptr() as *mut u8;
            }
        }

        // Gradients go straight into the caller's buffers.
        if grads.len() != q.grads.len() {
            return Err(Error::new(
                ErrorKind::Shape,
                format!(
                    "{} gradient buffers given, `{}` was compiled with {}",
                    grads.len(),
                    p.name,
                    q.grads.len()
                ),
            ));
        }
        let slots = jit::slots(q);
        let mut scratch = self
            .scratch
            .try_lock()
            .ok()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        let mut used = 0usize;
        for (t, tn) in q.tensors.iter().enumerate() {
            let cells = interp::table_size(q, &env.extents, &tn.indices)?;
            if let Some(g) = q.grads.iter().position(|(_, tt)| tt.ix() == t) {
                if grads[g].len() != cells {
                    let name = &q.inputs[q.grads[g].0.ix()].name;
                    return Err(Error::new(
                        ErrorKind::Shape,
                        format!(
                            "the gradient buffer for `{name}` holds {}, it needs {cells}",
                            grads[g].len()
                        ),
                    ));
                }
                ptrs.push(grads[g].as_mut_ptr() as *mut u8);
                continue;
            }
            let bytes = cells * slots[q.inputs.len() + t].size(f32);
            let words = bytes.div_ceil(8).max(1);
            if scratch.len() <= used {
                scratch.push(Vec::new());
            }
            if scratch[used].len() < words {
                scratch[used].resize(words, 0);
            }
            ptrs.push(scratch[used].as_mut_ptr() as *mut u8);
            used += 1;
        }
        let cells = interp::table_size(q, &env.extents, &q.output.indices)?;
        if value.len() != cells || q.output_ty() != Ty::Real {
            return Err(Error::new(
                ErrorKind::Shape,
                format!(
                    "the value buffer holds {}, the output has {cells} cells",
                    value.len()
                ),
            ));
        }
        ptrs.push(value.as_mut_ptr() as *mut u8);

        let prm = native::param_bits(&env.params);
        // SAFETY: one pointer per slot of `q` (inputs incl. weights, tensors, output), each
        // valid for the cells its index space has under `env.extents` (checked above against
        // the shapes, gradient and value buffers; scratch sized here), with the element type
        // `jit::slots` gives in the kernel's precision.
        let r = unsafe { var.kernel.run(&ptrs, &env.extents, &prm) };
        if let Ok(mut s) = self.scratch.try_lock() {
            if s.is_empty() {
                *s = scratch;
            }
        }
        r.map_err(|f| native::fault_error(q, &env.extents, f))
    }
}

fn pack_f32(v: &[f32]) -> Vec<u64> {
    let mut out = vec![0u64; v.len().div_ceil(2)];
    for (k, x) in v.iter().enumerate() {
        let bits = x.to_bits() as u64;
        out[k / 2] |= bits << (32 * (k % 2));
    }
    out
}

fn reads_inputs(p: &Program, roots: &[ir::ExprId]) -> bool {
    let mut stack = roots.to_vec();
    let mut seen = std::collections::HashSet::new();
    while let Some(e) = stack.pop() {
        if !seen.insert(e) {
            continue;
        }
        if matches!(p.pool.get(e), Expr::Input(..)) {
            return true;
        }
        p.pool.get(e).for_each_child(|c| stack.push(c));
    }
    false
}

/// Compile-time and run-time of one call, for `lossc bench`.
pub fn time_it<F: FnMut() -> Result<()>>(mut f: F, warmup: usize, reps: usize) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        f()?;
        t.push(t0.elapsed().as_secs_f64());
    }
    Ok(t)
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<CompiledLoss>();
    let _ = Elem::Real;
}
