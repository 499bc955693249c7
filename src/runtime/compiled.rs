//! Compiled losses: the fast path for Rust programs.
//!
//! [`Library::compile`](super::Library::compile) turns a loss (with the inputs to
//! differentiate and a precision) into a [`CompiledLoss`]: value and gradients in one native
//! kernel. [`CompiledLoss::call_into`] binds borrowed, typed input slices and writes the value
//! and the gradients into caller-owned buffers (training loops: nothing is copied when the
//! inputs have the loss's precision, and scratch tables are reused between calls);
//! [`CompiledLoss::call`] returns an [`Output`] like the interpreter's path.
//! A compiled loss is `Send + Sync`; one reduction's kernel is compiled up front, the others
//! on first use. Parameters with constant defaults are specialised (baked in at their
//! defaults; another value in a call gets a variant of its own) unless [`Options::vary`]
//! names them.

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
    /// worker threads; results are bitwise the same for any number
    pub threads: usize,
    /// parameters fixed at compile time (folded into the code; a call may not change them)
    pub bake: Vec<(String, ParamValue)>,
    /// parameters a call may change without compiling again (kernel arguments; the others
    /// with constant defaults are specialised, see [`CompiledLoss`])
    pub vary: Vec<String>,
}

/// Most worker threads a compiled loss starts (`Options::threads`): more cannot help on any
/// machine it will meet, and thousands take a minute to spawn.
pub const MAX_THREADS: usize = 1024;

impl Default for Options {
    fn default() -> Options {
        Options {
            dtype: DType::F32,
            grad: vec![],
            reduction: Reduction::Mean,
            weighted: false,
            threads: 1,
            bake: vec![],
            vary: vec![],
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
    /// Fixes a parameter's value in the compiled code.
    pub fn bake(mut self, name: &str, v: impl Into<ParamValue>) -> Options {
        self.bake.push((name.to_string(), v.into()));
        self
    }
    /// Keeps a parameter an argument of the kernel (not specialised to each value).
    pub fn vary(mut self, name: &str) -> Options {
        self.vary.push(name.to_string());
        self
    }
    pub fn threads(mut self, n: usize) -> Options {
        self.threads = n.max(1);
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

impl<'a> Slice<'a> {
    /// Elements `a..b`.
    fn sub(self, a: usize, b: usize) -> Slice<'a> {
        match self {
            Slice::F32(v) => Slice::F32(&v[a..b]),
            Slice::F64(v) => Slice::F64(&v[a..b]),
            Slice::I64(v) => Slice::I64(&v[a..b]),
            Slice::I32(v) => Slice::I32(&v[a..b]),
        }
    }
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
///
/// Sealed: the kernel writes reals of the precision it was compiled for into buffers of this
/// type, so only `f32` and `f64` may implement it. A type of one's own does not compile:
///
/// ```compile_fail,E0277
/// #[derive(Clone, Copy, Default)]
/// struct Half(u8);
/// impl lossc::runtime::Real for Half {
///     const F32: bool = true;
///     fn to_f64(self) -> f64 { self.0 as f64 }
///     fn from_f64(v: f64) -> Half { Half(v as u8) }
/// }
/// ```
pub trait Real: sealed::Sealed + Copy + Default + Send + Sync + 'static {
    const F32: bool;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

mod sealed {
    /// In a private module: nothing outside this crate can name it, so nothing outside can
    /// implement [`Real`](super::Real).
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

impl Real for f32 {
    const F32: bool = true;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
}
impl Real for f64 {
    const F32: bool = false;
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> f64 {
        v
    }
}

/// One reduction's program and kernel.
struct Variant {
    program: Program,
    kernel: Arc<Kernel>,
}

/// One specialisation of a compiled loss: the loss with some parameters baked into the code,
/// and its kernels.
struct Spec {
    base: Program,
    options: Options,
    wrt: Vec<InputId>,
    /// parameter defaults or computed extents read input data (then it is converted for them)
    defaults_read_inputs: bool,
    /// parameters whose defaults read the inputs (not baked, not in an extent): computed by
    /// the kernel of an `inline` variant when a call leaves them all at their defaults
    inlined: Vec<ir::ParamId>,
    /// defaults other than the `inlined` ones, or computed extents, read input data (the
    /// copies a call of an `inline` variant still needs)
    others_read_inputs: bool,
    /// the index along which the loss is separable (rows evaluated in independent blocks)
    batch: Option<ir::IndexId>,
    /// worker threads for the blocks (none: the calling thread)
    pool: Option<Arc<rayon::ThreadPool>>,
    /// by reduction, weights, and whether the `inlined` defaults are computed in the kernel
    variants: Mutex<HashMap<(Reduction, bool, bool), Arc<Variant>>>,
    /// scratch tables, reused between calls
    scratch: Mutex<Vec<Vec<u64>>>,
    compile_s: f64,
}

/// A loss compiled to native code (see the module doc).
///
/// Parameters are specialised: each one whose default is a constant is baked into the code
/// at that value (folded, as `lossc bench` does), unless [`Options::vary`] names it; a call
/// that gives another value runs a variant compiled for that value on first use (up to
/// [`MAX_SPECS`] are kept). Parameters a training loop changes every call belong in
/// `vary`: they stay arguments of one kernel.
pub struct CompiledLoss {
    /// the loss as checked
    original: Program,
    options: Options,
    /// the specialised parameters and their defaults
    special: Vec<(ir::ParamId, interp::Value)>,
    /// the specialisation at the defaults
    main: Spec,
    /// the others, by the specialised parameters' values
    others: Mutex<HashMap<Vec<u64>, Arc<Spec>>>,
    pool: Option<Arc<rayon::ThreadPool>>,
}

/// Specialisations kept besides the one at the defaults (then they are compiled again).
pub const MAX_SPECS: usize = 16;

impl std::fmt::Debug for CompiledLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CompiledLoss({}, {:?})",
            self.original.name, self.options
        )
    }
}

fn param_of(v: interp::Value) -> ParamValue {
    match v {
        interp::Value::Real(x) => ParamValue::Real(x),
        interp::Value::Int(x) => ParamValue::Int(x),
        interp::Value::Bool(b) => ParamValue::Bool(b),
    }
}

impl CompiledLoss {
    pub(crate) fn new(p: &Program, options: Options) -> Result<CompiledLoss> {
        for name in &options.vary {
            if p.param(name).is_none() {
                return Err(Error::new(
                    ErrorKind::Unknown,
                    format!("unknown parameter `{name}` for `{}` (to vary)", p.name),
                ));
            }
        }
        // Constant defaults (no data, no other parameter) of the parameters not baked or
        // varied: specialised.
        let special = constant_defaults(p, |name| {
            options.bake.iter().any(|(n, _)| n == name) || options.vary.iter().any(|n| n == name)
        });
        if options.threads > MAX_THREADS {
            return Err(Error::new(
                ErrorKind::Limit,
                format!(
                    "{} worker threads asked for; the limit is {MAX_THREADS}",
                    options.threads
                ),
            ));
        }
        let pool = if options.threads > 1 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(options.threads)
                .build()
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Io,
                        format!("cannot start {} worker threads: {e}", options.threads),
                    )
                })?;
            Some(Arc::new(pool))
        } else {
            None
        };
        let mut o = options.clone();
        for (id, v) in &special {
            o = o.bake(&p.params[id.ix()].name, param_of(*v));
        }
        let main = Spec::new(p, o, pool.clone())?;
        Ok(CompiledLoss {
            original: p.clone(),
            options,
            special,
            main,
            others: Mutex::new(HashMap::new()),
            pool,
        })
    }

    /// The specialisation for a call's parameters: `None` for the one at the defaults.
    fn spec(&self, params: &[(&str, ParamValue)]) -> Result<Option<Arc<Spec>>> {
        let p = &self.original;
        let mut key = Vec::with_capacity(self.special.len());
        let mut differs = false;
        let mut bake = Vec::new();
        for (id, default) in &self.special {
            let name = &p.params[id.ix()].name;
            let v = match params.iter().find(|(n, _)| n == name) {
                Some((_, v)) => bind::param_value(p, id.ix(), *v)?,
                None => *default,
            };
            let bits = native::param_bits(&[v])[0];
            differs |= bits != native::param_bits(&[*default])[0];
            key.push(bits);
            bake.push((name.clone(), param_of(v)));
        }
        if !differs {
            return Ok(None);
        }
        if let Some(s) = self.others.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(Some(s));
        }
        let mut o = self.options.clone();
        o.bake.extend(bake);
        let s = Arc::new(Spec::new(p, o, self.pool.clone())?);
        if let Ok(mut m) = self.others.lock() {
            if m.len() >= MAX_SPECS {
                m.clear();
            }
            m.insert(key, s.clone());
        }
        Ok(Some(s))
    }

    /// Seconds it took to compile the first kernel (IR to callable machine code).
    pub fn compile_seconds(&self) -> f64 {
        self.main.compile_s
    }

    /// The loss as checked (before reductions and differentiation), its specialised and
    /// baked parameters folded.
    pub fn program(&self) -> &Program {
        &self.main.base
    }

    /// The kernel of the reduction compiled up front (for printing its code).
    pub fn kernel(&self) -> Result<Arc<Kernel>> {
        self.main.kernel()
    }

    /// The number of cells of the value for these input shapes and reduction.
    pub fn value_len(&self, inputs: &[(&str, View)], reduction: Reduction) -> Result<usize> {
        self.main.value_len(inputs, reduction)
    }

    /// Evaluates the loss; returns the value and the gradients of the compiled inputs.
    pub fn call(
        &self,
        inputs: &[(&str, View)],
        params: &[(&str, ParamValue)],
        reduction: Reduction,
        weights: Option<View>,
    ) -> Result<Output> {
        match self.spec(params)? {
            Some(s) => s.call(inputs, params, reduction, weights),
            None => self.main.call(inputs, params, reduction, weights),
        }
    }

    /// Evaluates the loss into caller-owned buffers: `value` (one cell when reduced, else the
    /// output's cells) and one gradient buffer per compiled gradient input, each as long as
    /// that input. `R` is the loss's precision. A buffer of another length or precision is
    /// an error.
    pub fn call_into<R: Real>(
        &self,
        inputs: &[(&str, View)],
        params: &[(&str, ParamValue)],
        reduction: Reduction,
        weights: Option<View>,
        value: &mut [R],
        grads: &mut [&mut [R]],
    ) -> Result<()> {
        match self.spec(params)? {
            Some(s) => s.call_into(inputs, params, reduction, weights, value, grads),
            None => self
                .main
                .call_into(inputs, params, reduction, weights, value, grads),
        }
    }
}

#[allow(clippy::too_many_arguments)]
/// The parameters whose defaults are constants (they read no data, extent, index or other
/// parameter), with their values, leaving out those `skip` names: what a compiled loss
/// specialises when a call does not give them.
pub(crate) fn constant_defaults(
    p: &Program,
    skip: impl Fn(&str) -> bool,
) -> Vec<(ir::ParamId, interp::Value)> {
    let env = Env {
        f32: false,
        extents: vec![0; p.indices.len()],
        inputs: vec![],
        params: vec![],
    };
    let mut special = Vec::new();
    for (k, q) in p.params.iter().enumerate() {
        if skip(&q.name) {
            continue;
        }
        let reads = p.pool.reaches(&[q.default], |_, x| {
            matches!(
                x,
                Expr::Input(..)
                    | Expr::Extent(_)
                    | Expr::Index(_)
                    | Expr::Reduce(..)
                    | Expr::Param(_)
            )
        });
        if reads {
            continue;
        }
        if let Ok(v) = interp::eval_scalar(p, &env, q.default) {
            special.push((ir::ParamId(k as u32), v));
        }
    }
    special
}

/// `p` specialised as a call runs it: the parameters the call gives (`params`) and those with
/// constant defaults baked in and folded (see [`CompiledLoss`]), so the interpreter, as the
/// oracle, evaluates the very program the kernel computes (folding a `gamma == 0` branch
/// changes which adjoints are guarded, and so where a NaN in a zero-weighted row may go).
/// A value of the wrong type is left to the call's own checks.
pub fn specialised(p: &Program, params: &[(String, ParamValue)]) -> Program {
    let mut consts: Vec<(ir::ParamId, crate::opt::Const)> = Vec::new();
    let mut add = |id: ir::ParamId, v: interp::Value| {
        consts.push((
            id,
            match v {
                interp::Value::Real(x) => crate::opt::Const::Real(x),
                interp::Value::Int(x) => crate::opt::Const::Int(x),
                interp::Value::Bool(b) => crate::opt::Const::Bool(b),
            },
        ))
    };
    for (name, v) in params {
        if let Some(id) = p.param(name) {
            if let Ok(x) = bind::param_value(p, id.ix(), *v) {
                add(id, x);
            }
        }
    }
    for (id, v) in constant_defaults(p, |name| params.iter().any(|(n, _)| n == name)) {
        add(id, v);
    }
    crate::opt::simplify_baked(p, &consts)
}

fn variant(
    base: &Program,
    wrt: &[InputId],
    r: Reduction,
    weighted: bool,
    f32: bool,
    batch: Option<ir::IndexId>,
    inline: &[ir::ParamId],
) -> Result<Variant> {
    let inlined;
    let base = if inline.is_empty() {
        base
    } else {
        inlined = crate::opt::inline_defaults(base, inline);
        &inlined
    };
    let reduced = match batch {
        Some(b) => ir::with_reduction_rows(base, r, weighted, b),
        None => ir::with_reduction(base, r, weighted),
    };
    let q = crate::opt::simplify(&reduced);
    let q = if wrt.is_empty() {
        q
    } else {
        crate::opt::simplify(&crate::grad::differentiate(&q, wrt)?)
    };
    let q = crate::opt::merge_bounds(&crate::opt::precise_logsumexp(&q));
    let kernel = native::kernel(&q, f32)?;
    Ok(Variant { program: q, kernel })
}

impl Spec {
    fn new(p: &Program, options: Options, pool: Option<Arc<rayon::ThreadPool>>) -> Result<Spec> {
        let t0 = Instant::now();
        bind::validate_grad(p, &options.grad)?;
        let mut consts = Vec::new();
        for (name, v) in &options.bake {
            let Some(id) = p.param(name) else {
                return Err(Error::new(
                    ErrorKind::Unknown,
                    format!("unknown parameter `{name}` for `{}` (to bake)", p.name),
                ));
            };
            let c = match bind::param_value(p, id.ix(), *v)? {
                interp::Value::Real(x) => crate::opt::Const::Real(x),
                interp::Value::Int(x) => crate::opt::Const::Int(x),
                interp::Value::Bool(b) => crate::opt::Const::Bool(b),
            };
            consts.push((id, c));
        }
        let baked = crate::opt::simplify_baked(p, &consts);
        let p = &baked;
        bind::check_reduction(p, options.reduction)?;
        let wrt: Vec<InputId> = options.grad.iter().filter_map(|g| p.input(g)).collect();
        let mut roots: Vec<ir::ExprId> = p.params.iter().map(|q| q.default).collect();
        roots.extend(p.indices.iter().filter_map(|i| match i.extent {
            ir::Extent::Computed(e) => Some(e),
            _ => None,
        }));
        let defaults_read_inputs = p.pool.reaches(&roots, |_, e| matches!(e, Expr::Input(..)));
        let extent_roots: Vec<ir::ExprId> = roots[p.params.len()..].to_vec();
        let inlined: Vec<ir::ParamId> = (0..p.params.len())
            .map(|k| ir::ParamId(k as u32))
            .filter(|id| {
                let k = id.ix();
                !options.bake.iter().any(|(n, _)| *n == p.params[k].name)
                    && p.pool
                        .reaches(&[p.params[k].default], |_, e| matches!(e, Expr::Input(..)))
                    && !p
                        .pool
                        .reaches(&extent_roots, |_, e| matches!(e, Expr::Param(q) if q == id))
            })
            .collect();
        let others: Vec<ir::ExprId> = (0..p.params.len())
            .filter(|k| !inlined.iter().any(|id| id.ix() == *k))
            .map(|k| p.params[k].default)
            .chain(extent_roots.iter().copied())
            .collect();
        let others_read_inputs = p.pool.reaches(&others, |_, e| matches!(e, Expr::Input(..)));
        let batch = if defaults_read_inputs {
            None
        } else {
            batch_index(p)
        };
        let v = variant(
            p,
            &wrt,
            options.reduction,
            options.weighted,
            options.dtype == DType::F32,
            batch,
            &inlined,
        )?;
        let mut variants = HashMap::new();
        variants.insert(
            (options.reduction, options.weighted, !inlined.is_empty()),
            Arc::new(v),
        );
        Ok(Spec {
            base: p.clone(),
            wrt,
            defaults_read_inputs,
            inlined,
            others_read_inputs,
            batch,
            pool,
            variants: Mutex::new(variants),
            scratch: Mutex::new(Vec::new()),
            compile_s: t0.elapsed().as_secs_f64(),
            options,
        })
    }

    fn kernel(&self) -> Result<Arc<Kernel>> {
        Ok(self
            .variant(self.options.reduction, self.options.weighted, true)?
            .kernel
            .clone())
    }

    fn variant(&self, r: Reduction, weighted: bool, inline: bool) -> Result<Arc<Variant>> {
        let inline = inline && !self.inlined.is_empty();
        if let Some(v) = self
            .variants
            .lock()
            .ok()
            .and_then(|m| m.get(&(r, weighted, inline)).cloned())
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
            self.batch,
            if inline { &self.inlined } else { &[] },
        )?);
        if let Ok(mut m) = self.variants.lock() {
            m.insert((r, weighted, inline), v.clone());
        }
        Ok(v)
    }

    /// Whether a call with these parameters leaves every `inlined` one at its default (then
    /// the kernel computes them).
    fn inline(&self, params: &[(&str, ParamValue)]) -> bool {
        !self.inlined.is_empty()
            && !self.inlined.iter().any(|id| {
                params
                    .iter()
                    .any(|(n, _)| *n == self.base.params[id.ix()].name)
            })
    }

    fn value_len(&self, inputs: &[(&str, View)], reduction: Reduction) -> Result<usize> {
        check_views(inputs)?;
        let (extents, lead, _) = self.bind_env(inputs, &[])?;
        if reduction != Reduction::None {
            return Ok(1);
        }
        bind::cells(
            &bind::output_shape(&self.base, &extents, &lead),
            "the output",
        )
    }

    fn call(
        &self,
        inputs: &[(&str, View)],
        params: &[(&str, ParamValue)],
        reduction: Reduction,
        weights: Option<View>,
    ) -> Result<Output> {
        check_views(inputs)?;
        let (extents, lead, _) = self.bind_env(inputs, params)?;
        let out_shape = if reduction == Reduction::None {
            bind::output_shape(&self.base, &extents, &lead)
        } else {
            vec![]
        };
        let n = bind::cells(&out_shape, "the output")?;
        let lens: Vec<usize> = self
            .wrt
            .iter()
            .map(|w| {
                let name = &self.base.inputs[w.ix()].name;
                inputs
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.data.len())
                    .unwrap_or(0)
            })
            .collect();
        // (the value and gradients this call returns, before they are allocated; the
        // kernel's own tables are checked in `call_into`)
        let cells = lens
            .iter()
            .fold(n as u64, |a, l| a.saturating_add(*l as u64));
        if cells.saturating_mul(8) > interp::MAX_MEMORY {
            return Err(Error::new(
                ErrorKind::Limit,
                format!(
                    "the value and gradients of this call would take {} bytes; the limit is {}",
                    cells.saturating_mul(8),
                    interp::MAX_MEMORY
                ),
            ));
        }
        // (buffers of the loss's precision only: f64 ones are written once, at the end, for f32)
        let (value, grads): (Vec<f64>, Vec<Vec<f64>>) = if self.options.dtype == DType::F32 {
            let mut v32 = vec![0f32; n];
            let mut g32: Vec<Vec<f32>> = lens.iter().map(|l| vec![0f32; *l]).collect();
            {
                let mut gs: Vec<&mut [f32]> = g32.iter_mut().map(|g| g.as_mut_slice()).collect();
                self.call_into(inputs, params, reduction, weights, &mut v32, &mut gs)?;
            }
            (
                v32.iter().map(|x| *x as f64).collect(),
                g32.iter()
                    .map(|g| g.iter().map(|x| *x as f64).collect())
                    .collect(),
            )
        } else {
            let mut value = vec![0f64; n];
            let mut grads: Vec<Vec<f64>> = lens.iter().map(|l| vec![0f64; *l]).collect();
            let mut gs: Vec<&mut [f64]> = grads.iter_mut().map(|g| g.as_mut_slice()).collect();
            self.call_into(inputs, params, reduction, weights, &mut value, &mut gs)?;
            (value, grads)
        };
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

    fn call_into<R: Real>(
        &self,
        inputs: &[(&str, View)],
        params: &[(&str, ParamValue)],
        reduction: Reduction,
        weights: Option<View>,
        value: &mut [R],
        grads: &mut [&mut [R]],
    ) -> Result<()> {
        check_views(inputs)?;
        if let Some(plan) = self.blocks(inputs, reduction, weights.is_some(), R::F32)? {
            return self.call_blocks(&plan, inputs, params, reduction, value, grads);
        }
        self.call_single(inputs, params, reduction, weights, value, grads, None)
    }

    /// How to split a call into row blocks, when the loss is separable along its batch index
    /// and the call is big enough: a fixed block size (so results do not depend on the number
    /// of threads).
    fn blocks(
        &self,
        inputs: &[(&str, View)],
        reduction: Reduction,
        weighted: bool,
        f32: bool,
    ) -> Result<Option<Blocks>> {
        let Some(b0) = self.batch else {
            return Ok(None);
        };
        let f32_ok = f32 == (self.options.dtype == DType::F32);
        if weighted
            || !f32_ok
            || !matches!(
                reduction,
                Reduction::None | Reduction::Sum | Reduction::Mean
            )
        {
            return Ok(None);
        }
        let p = &self.base;
        let shapes: Vec<(&str, &[usize])> = inputs.iter().map(|(n, v)| (*n, v.shape)).collect();
        let Shapes { extents, .. } = bind::bind_shapes(p, &shapes)?;
        let rows = extents[b0.ix()].max(0) as usize;
        let mut row_len = vec![0usize; p.inputs.len()];
        let mut widest = 1usize;
        for (k, inp) in p.inputs.iter().enumerate() {
            if inp.dims.first() == Some(&b0) && rows > 0 {
                let len = inputs
                    .iter()
                    .find(|(n, _)| *n == inp.name)
                    .map(|(_, v)| v.data.len())
                    .unwrap_or(0);
                row_len[k] = len / rows;
                widest = widest.max(row_len[k]);
            }
        }
        let per_block = (BLOCK_ELEMS / widest).max(1);
        if rows <= per_block {
            return Ok(None);
        }
        Ok(Some(Blocks {
            rows,
            per_block,
            row_len,
        }))
    }

    /// Runs the blocks (on the pool when there is one) and combines their values and the
    /// gradients of inputs without the batch index, in block order.
    fn call_blocks<R: Real>(
        &self,
        plan: &Blocks,
        inputs: &[(&str, View)],
        params: &[(&str, ParamValue)],
        reduction: Reduction,
        value: &mut [R],
        grads: &mut [&mut [R]],
    ) -> Result<()> {
        let p = &self.base;
        let nblocks = plan.rows.div_ceil(plan.per_block);
        let out_row = if reduction == Reduction::None {
            value.len() / plan.rows.max(1)
        } else {
            0
        };
        if grads.len() != self.wrt.len() {
            return Err(Error::new(
                ErrorKind::Shape,
                format!(
                    "{} gradient buffers given, `{}` was compiled with {}",
                    grads.len(),
                    p.name,
                    self.wrt.len()
                ),
            ));
        }
        // Per block: its value cells (a slice of the caller's for `none`) and gradient
        // buffers (slices of the caller's for batch inputs, its own for the others).
        struct Block<'v, R> {
            k: usize,
            value: Option<&'v mut [R]>,
            grads: Vec<Option<&'v mut [R]>>,
        }
        let mut blocks: Vec<Block<R>> = (0..nblocks)
            .map(|k| Block {
                k,
                value: None,
                grads: Vec::new(),
            })
            .collect();
        if reduction == Reduction::None {
            if value.len() != plan.rows * out_row {
                return Err(Error::new(
                    ErrorKind::Shape,
                    format!(
                        "the value buffer holds {}, the output has {} cells",
                        value.len(),
                        plan.rows * out_row
                    ),
                ));
            }
            for (b, s) in blocks
                .iter_mut()
                .zip(value.chunks_mut((plan.per_block * out_row).max(1)))
            {
                b.value = Some(s);
            }
        }
        for (g, w) in grads.iter_mut().zip(&self.wrt) {
            let rl = plan.row_len[w.ix()];
            if rl > 0 {
                if g.len() != plan.rows * rl {
                    return Err(Error::new(
                        ErrorKind::Shape,
                        format!(
                            "the gradient buffer for `{}` holds {}, it needs {}",
                            p.inputs[w.ix()].name,
                            g.len(),
                            plan.rows * rl
                        ),
                    ));
                }
                for (b, s) in blocks.iter_mut().zip(g.chunks_mut(plan.per_block * rl)) {
                    b.grads.push(Some(s));
                }
            } else {
                // (summed over the blocks into the caller's buffer, which must fit exactly)
                let len = inputs
                    .iter()
                    .find(|(n, _)| *n == p.inputs[w.ix()].name)
                    .map(|(_, v)| v.data.len())
                    .unwrap_or(0);
                if g.len() != len {
                    return Err(Error::new(
                        ErrorKind::Shape,
                        format!(
                            "the gradient buffer for `{}` holds {}, it needs {len}",
                            p.inputs[w.ix()].name,
                            g.len(),
                        ),
                    ));
                }
                for b in blocks.iter_mut() {
                    b.grads.push(None);
                }
            }
        }
        let total_rows = plan.rows as i64;
        let run = |b: &mut Block<R>| -> Result<(f64, Vec<Vec<R>>)> {
            let lo = b.k * plan.per_block;
            let hi = (lo + plan.per_block).min(plan.rows);
            let mut shapes: Vec<Vec<usize>> = Vec::with_capacity(inputs.len());
            let mut views: Vec<(&str, View)> = Vec::with_capacity(inputs.len());
            for (name, v) in inputs {
                let k = p.input(name).map(|i| i.ix());
                match k {
                    Some(k) if plan.row_len[k] > 0 => {
                        let rl = plan.row_len[k];
                        let rank = p.inputs[k].dims.len();
                        let mut s = vec![hi - lo];
                        s.extend(&v.shape[v.shape.len() + 1 - rank..]);
                        shapes.push(s);
                        views.push((name, View::new(&[], v.data.sub(lo * rl, hi * rl))));
                    }
                    _ => {
                        shapes.push(v.shape.to_vec());
                        views.push((name, *v));
                    }
                }
            }
            for (view, s) in views.iter_mut().zip(&shapes) {
                view.1.shape = s;
            }
            let mut own: Vec<Vec<R>> = Vec::new();
            for (j, w) in self.wrt.iter().enumerate() {
                if b.grads[j].is_none() {
                    let len = inputs
                        .iter()
                        .find(|(n, _)| *n == p.inputs[w.ix()].name)
                        .map(|(_, v)| v.data.len())
                        .unwrap_or(0);
                    own.push(vec![R::default(); len]);
                }
            }
            let mut one = [R::default(); 1];
            {
                let mut own_it = own.iter_mut();
                let mut gs: Vec<&mut [R]> = Vec::new();
                for g in b.grads.iter_mut() {
                    match g {
                        Some(s) => gs.push(s),
                        None => match own_it.next() {
                            Some(o) => gs.push(o.as_mut_slice()),
                            None => {
                                return Err(Error::new(
                                    ErrorKind::Check,
                                    "internal: gradient blocks",
                                ))
                            }
                        },
                    }
                }
                let v: &mut [R] = match b.value.as_mut() {
                    Some(s) => s,
                    None => &mut one,
                };
                self.call_single(
                    &views,
                    params,
                    reduction,
                    None,
                    v,
                    &mut gs,
                    Some(total_rows),
                )?;
            }
            Ok((one[0].to_f64(), own))
        };
        let results: Vec<Result<(f64, Vec<Vec<R>>)>> = match &self.pool {
            Some(pool) => {
                use rayon::prelude::*;
                pool.install(|| blocks.par_iter_mut().map(run).collect())
            }
            None => blocks.iter_mut().map(run).collect(),
        };
        let mut total = 0f64;
        let mut first = true;
        for r in results {
            let (v, own) = r?;
            total += v;
            // Gradients of inputs without the batch index: summed in block order.
            let mut own_it = own.into_iter();
            for (g, w) in grads.iter_mut().zip(&self.wrt) {
                if plan.row_len[w.ix()] == 0 {
                    if let Some(o) = own_it.next() {
                        for (a, b) in g.iter_mut().zip(o) {
                            *a = if first {
                                b
                            } else {
                                R::from_f64(a.to_f64() + b.to_f64())
                            };
                        }
                    }
                }
            }
            first = false;
        }
        if reduction != Reduction::None {
            if value.len() != 1 {
                return Err(Error::new(
                    ErrorKind::Shape,
                    format!(
                        "the value buffer holds {}, the output has 1 cell",
                        value.len()
                    ),
                ));
            }
            value[0] = R::from_f64(total);
        }
        Ok(())
    }

    /// Binds the views' shapes and the parameters: every index's extent (computed ones
    /// included), the leading dimensions folded into each index, and the parameter values.
    #[allow(clippy::type_complexity)]
    fn bind_env(
        &self,
        inputs: &[(&str, View)],
        params: &[(&str, ParamValue)],
    ) -> Result<(Vec<i64>, Vec<Option<Vec<usize>>>, Vec<interp::Value>)> {
        let p = &self.base;
        let f32 = self.options.dtype == DType::F32;
        let shapes: Vec<(&str, &[usize])> = inputs.iter().map(|(n, v)| (*n, v.shape)).collect();
        let Shapes { extents, lead } = bind::bind_shapes(p, &shapes)?;
        let view = |k: usize| -> Option<&View> {
            inputs
                .iter()
                .find(|(n, _)| *n == p.inputs[k].name)
                .map(|(_, v)| v)
        };

        // Parameters and computed extents (defaults see f64 copies of the inputs if they read
        // any; not those the kernel computes).
        let inline = self.inline(params);
        let skip: &[ir::ParamId] = if inline { &self.inlined } else { &[] };
        let need_copies = if inline {
            self.others_read_inputs
        } else {
            self.defaults_read_inputs
        };
        let copies: Vec<(Vec<f64>, Vec<i64>)> = if need_copies {
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
        bind::bind_params(p, &given, skip, &mut env)?;
        Ok((env.extents, lead, env.params))
    }

    /// One kernel call on the whole of `inputs` (`rows`: the batch's row count when these
    /// inputs are one block of it).
    #[allow(clippy::too_many_arguments)]
    fn call_single<R: Real>(
        &self,
        inputs: &[(&str, View)],
        params: &[(&str, ParamValue)],
        reduction: Reduction,
        weights: Option<View>,
        value: &mut [R],
        grads: &mut [&mut [R]],
        rows: Option<i64>,
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
        for (name, v) in params {
            if let Some((_, b)) = self.options.bake.iter().find(|(n, _)| n == name) {
                let k = p.param(name).map(|i| i.ix()).unwrap_or(0);
                // (by bits: a NaN baked is the NaN given, as the specialisations are keyed)
                let (v, b) = (bind::param_value(p, k, *v)?, bind::param_value(p, k, *b)?);
                if native::param_bits(&[v]) != native::param_bits(&[b]) {
                    return Err(Error::new(
                        ErrorKind::Type,
                        format!(
                            "parameter `{name}` is baked into this compiled `{}` as {b:?}; compile again to change it",
                            p.name
                        ),
                    ));
                }
            }
        }
        check_views(inputs)?;
        let (extents, lead, prm) = self.bind_env(inputs, params)?;
        let view = |k: usize| -> Option<&View> {
            inputs
                .iter()
                .find(|(n, _)| *n == p.inputs[k].name)
                .map(|(_, v)| v)
        };
        let mut env = Env {
            f32,
            extents,
            inputs: vec![],
            params: prm,
        };

        let var = self.variant(reduction, weights.is_some(), self.inline(params))?;
        let q = &var.program;
        if let Some(b0) = self.batch {
            // the `#rows` parameter: the whole batch's row count
            env.params
                .push(interp::Value::Int(rows.unwrap_or(env.extents[b0.ix()])));
        }
        if env.params.len() != q.params.len() {
            return Err(Error::new(ErrorKind::Check, "internal: parameter count"));
        }

        // Input buffers: borrowed when the element type matches, converted otherwise.
        let mut ins: Vec<In> = Vec::with_capacity(p.inputs.len() + 1);
        for (k, inp) in p.inputs.iter().enumerate() {
            let Some(v) = view(k) else {
                return Err(Error::new(
                    ErrorKind::Missing,
                    format!("missing input `{}`", inp.name),
                ));
            };
            ins.push(match (inp.ty, v.data) {
                (Ty::Real, Slice::F32(d)) if f32 => In::F32(d),
                (Ty::Real, Slice::F64(d)) if !f32 => In::F64(d),
                (Ty::Int, Slice::I64(d)) => In::I64(d),
                (Ty::Real, d) => {
                    let x = d.to_f64();
                    if f32 {
                        In::OwnF32(x.iter().map(|v| *v as f32).collect())
                    } else {
                        In::OwnF64(x)
                    }
                }
                (_, d) => {
                    let x = d.to_f64();
                    let mut out = Vec::with_capacity(x.len());
                    for v in x {
                        if v.fract() != 0.0 || !v.is_finite() {
                            return Err(bind::not_whole(&inp.name, v));
                        }
                        out.push(v as i64);
                    }
                    In::OwnI64(out)
                }
            });
        }
        // Weights: the last input of the weighted program, broadcast to the output's shape.
        if let Some(w) = weights {
            let out_shape = bind::output_shape(p, &env.extents, &lead);
            let arr = Array::real(w.shape.to_vec(), w.data.to_f64());
            let wv = bind::broadcast(&arr, &out_shape)?;
            ins.push(if f32 {
                In::OwnF32(wv.iter().map(|v| *v as f32).collect())
            } else {
                In::OwnF64(wv)
            });
        }

        // Gradients go straight into the caller's buffers; other tables into scratch.
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
        interp::check_memory(q, &env.extents, &|ty| native::cell_bytes(ty, f32), 0)?;
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

        let r = {
            let mut bufs: Vec<native::Slot> = ins.iter().map(In::slot).collect();
            let mut gs: Vec<Option<&mut [R]>> = grads.iter_mut().map(|g| Some(&mut **g)).collect();
            let mut free = scratch.iter_mut();
            for t in 0..q.tensors.len() {
                let g = q.grads.iter().position(|(_, tt)| tt.ix() == t);
                match g.and_then(|g| gs[g].take()) {
                    Some(g) => bufs.push(native::Slot::real(g)),
                    None => match free.next() {
                        Some(s) => bufs.push(native::Slot::scratch(s)),
                        None => return Err(Error::new(ErrorKind::Check, "internal: scratch")),
                    },
                }
            }
            bufs.push(native::Slot::real(value));
            native::run_kernel(&var.kernel, q, &bufs, &env.extents, &env.params)?
        };
        if let Ok(mut s) = self.scratch.try_lock() {
            if s.is_empty() {
                *s = scratch;
            }
        }
        r.map_err(|f| {
            // (the error path only: f64 copies of the inputs, for the interpreter's message)
            let copies: Vec<InputCopy> = ins.iter().map(In::copy).collect();
            let env = Env {
                f32,
                extents: env.extents.clone(),
                inputs: copies.iter().map(InputCopy::data).collect(),
                params: env.params.clone(),
            };
            native::fault_in(q, &env, f)
        })
    }
}

/// A kernel's input: the caller's slice, or a converted copy.
enum In<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    I64(&'a [i64]),
    OwnF32(Vec<f32>),
    OwnF64(Vec<f64>),
    OwnI64(Vec<i64>),
}

/// An input as the interpreter reads it.
enum InputCopy {
    Real(Vec<f64>),
    Int(Vec<i64>),
}

impl InputCopy {
    fn data(&self) -> InputData<'_> {
        match self {
            InputCopy::Real(v) => InputData::Real(v),
            InputCopy::Int(v) => InputData::Int(v),
        }
    }
}

impl In<'_> {
    fn slot(&self) -> native::Slot<'_> {
        match self {
            In::F32(v) => native::Slot::read(v),
            In::F64(v) => native::Slot::read(v),
            In::I64(v) => native::Slot::read(v),
            In::OwnF32(v) => native::Slot::read(v),
            In::OwnF64(v) => native::Slot::read(v),
            In::OwnI64(v) => native::Slot::read(v),
        }
    }
    fn copy(&self) -> InputCopy {
        let f = |v: &[f32]| v.iter().map(|x| *x as f64).collect();
        match self {
            In::F32(v) => InputCopy::Real(f(v)),
            In::OwnF32(v) => InputCopy::Real(f(v)),
            In::F64(v) => InputCopy::Real(v.to_vec()),
            In::OwnF64(v) => InputCopy::Real(v.clone()),
            In::I64(v) => InputCopy::Int(v.to_vec()),
            In::OwnI64(v) => InputCopy::Int(v.clone()),
        }
    }
}

/// Elements per block when a call is split into row blocks (fixed: results must not depend
/// on the number of threads).
const BLOCK_ELEMS: usize = 1 << 16;

/// A call split into blocks of `per_block` rows; `row_len[k]`: elements per row of input
/// `k` (0 for inputs without the batch index).
struct Blocks {
    rows: usize,
    per_block: usize,
    row_len: Vec<usize>,
}

/// The index a loss is separable along: the output's first index, when every read of an
/// input or tensor along it is at that index itself, nothing reduces over it, nothing uses
/// its extent, and every input that has it has it first. Then rows can be evaluated in
/// independent blocks (the mean divides by the `#rows` parameter).
fn batch_index(p: &Program) -> Option<ir::IndexId> {
    let b0 = *p.output.indices.first()?;
    if p.output.indices[1..].contains(&b0) {
        return None;
    }
    if !matches!(p.indices[b0.ix()].extent, ir::Extent::Input { .. }) {
        return None;
    }
    for inp in &p.inputs {
        if inp.dims.iter().skip(1).any(|d| *d == b0) {
            return None;
        }
    }
    for t in &p.tensors {
        if t.indices.iter().skip(1).any(|d| *d == b0) {
            return None;
        }
    }
    let along = |args: &[ir::ExprId], dims: &[ir::IndexId]| {
        args.iter()
            .zip(dims)
            .all(|(a, d)| *d != b0 || matches!(p.pool.get(*a), Expr::Index(i) if *i == b0))
    };
    for k in 0..p.pool.len() {
        let e = ir::ExprId(k as u32);
        let ok = match p.pool.get(e) {
            Expr::Extent(i) => *i != b0,
            Expr::Reduce(_, i, _) => *i != b0,
            Expr::Input(i, args) => along(args, &p.inputs[i.ix()].dims),
            Expr::Tensor(t, args) => along(args, &p.tensors[t.ix()].indices),
            _ => true,
        };
        if !ok {
            return None;
        }
    }
    Some(b0)
}

/// Every view's shape describes exactly its data (the product checked for overflow).
fn check_views(inputs: &[(&str, View)]) -> Result<()> {
    for (name, v) in inputs {
        let n = v.shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d));
        if n != Some(v.data.len()) {
            return Err(Error::new(
                ErrorKind::Shape,
                format!(
                    "input `{name}` has shape {:?} but holds {} elements",
                    v.shape,
                    v.data.len()
                ),
            ));
        }
    }
    Ok(())
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
