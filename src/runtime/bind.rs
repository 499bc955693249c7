//! Binding a call to a loss: inputs by name, shapes to extents (folding leading dimensions
//! into the first index), parameter values (given or default), weights broadcast to the
//! output's shape, the reduction written into the program; then running a backend.

use super::array::{Array, DType, Data};
use super::Backend;
use crate::diag::{Error, ErrorKind, Result};
use crate::interp::{self, InputData, Value};
use crate::ir::{self, Extent, Program, Reduction, Ty};

/// A parameter's value in a call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamValue {
    Real(f64),
    Int(i64),
    Bool(bool),
}

impl From<f64> for ParamValue {
    fn from(v: f64) -> ParamValue {
        ParamValue::Real(v)
    }
}
impl From<i64> for ParamValue {
    fn from(v: i64) -> ParamValue {
        ParamValue::Int(v)
    }
}
impl From<bool> for ParamValue {
    fn from(v: bool) -> ParamValue {
        ParamValue::Bool(v)
    }
}

/// One call of a loss: its arrays, parameters, reduction, weights and precision.
#[derive(Clone, Debug)]
pub struct Call {
    pub inputs: Vec<(String, Array)>,
    pub params: Vec<(String, ParamValue)>,
    pub reduction: Reduction,
    pub weights: Option<Array>,
    pub dtype: DType,
    /// inputs to differentiate; their gradients come back in `Output::grads`
    pub grad: Vec<String>,
    /// the JIT by default; the interpreter (the reference) on request
    pub backend: Backend,
}

impl Default for Call {
    fn default() -> Call {
        Call {
            inputs: vec![],
            params: vec![],
            reduction: Reduction::None,
            weights: None,
            dtype: DType::F64,
            grad: vec![],
            backend: Backend::Jit,
        }
    }
}

impl Call {
    pub fn new() -> Call {
        Call::default()
    }
    pub fn input(mut self, name: &str, a: Array) -> Call {
        self.inputs.push((name.to_string(), a));
        self
    }
    pub fn param(mut self, name: &str, v: impl Into<ParamValue>) -> Call {
        self.params.push((name.to_string(), v.into()));
        self
    }
    pub fn reduction(mut self, r: Reduction) -> Call {
        self.reduction = r;
        self
    }
    pub fn weights(mut self, w: Array) -> Call {
        self.weights = Some(w);
        self
    }
    pub fn dtype(mut self, d: DType) -> Call {
        self.dtype = d;
        self
    }
    /// Also differentiate with respect to this input.
    pub fn grad(mut self, input: &str) -> Call {
        self.grad.push(input.to_string());
        self
    }
    /// The evaluator (the JIT unless told otherwise).
    pub fn backend(mut self, b: Backend) -> Call {
        self.backend = b;
        self
    }
}

/// What a call returns: the (reduced) value, and gradients when asked for.
#[derive(Clone, Debug)]
pub struct Output {
    pub value: Array,
    pub grads: Vec<(String, Array)>,
}

fn did_you_mean<'a>(name: &str, cands: impl Iterator<Item = &'a str>) -> String {
    crate::diag::closest(name, cands, 2)
        .map(|c| format!("; did you mean `{c}`?"))
        .unwrap_or_default()
}

/// Checks that every input named for differentiation exists and can have a gradient.
pub fn validate_grad(p: &Program, grad: &[String]) -> Result<()> {
    for g in grad {
        let Some(i) = p.input(g) else {
            let names: Vec<&str> = p.inputs.iter().map(|i| i.name.as_str()).collect();
            return Err(Error::new(
                ErrorKind::Unknown,
                format!(
                    "unknown input `{g}` for `{}`{}",
                    p.name,
                    did_you_mean(g, names.iter().copied())
                ),
            ));
        };
        if p.inputs[i.ix()].ty != Ty::Real {
            return Err(Error::new(
                ErrorKind::NotDifferentiable,
                format!(
                    "input `{g}` of `{}` is int: it is not differentiable",
                    p.name
                ),
            ));
        }
    }
    Ok(())
}

/// The error for a value of an int input that is not a whole number (both backends).
pub(crate) fn not_whole(input: &str, x: f64) -> Error {
    Error::new(
        ErrorKind::Type,
        format!("input `{input}` is declared int (wrong dtype), but holds {x}, which is not a whole number (out of the range of ids, indices and lengths)"),
    )
}

/// The shape of a loss's output for given extents, with folded leading dimensions restored.
pub(crate) fn output_shape(
    p: &Program,
    extents: &[i64],
    lead: &[Option<Vec<usize>>],
) -> Vec<usize> {
    let mut shape = Vec::new();
    for ix in &p.output.indices {
        match &lead[ix.ix()] {
            Some(l) => shape.extend(l),
            None => shape.push(extents[ix.ix()] as usize),
        }
    }
    shape
}

/// The number of cells of a shape, or a `Limit` error when it is past `interp::MAX_TABLE`
/// (or overflows): checked before anything of that size is allocated.
pub(crate) fn cells(shape: &[usize], what: &str) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(*d))
        .filter(|n| *n as u64 <= interp::MAX_TABLE)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Limit,
                format!(
                    "{what} of shape {shape:?} is too large (the limit is {} elements)",
                    interp::MAX_TABLE
                ),
            )
        })
}

/// Broadcasts weights (NumPy rules) to the output's shape, flattened row-major.
pub(crate) fn broadcast(w: &Array, shape: &[usize]) -> Result<Vec<f64>> {
    w.validate("weights")?;
    let n = cells(shape, "the output")?;
    let wv = w.to_f64();
    let bad = || {
        Error::new(
            ErrorKind::Shape,
            format!(
                "weights of shape {:?} do not broadcast to the output's shape {:?}",
                w.shape, shape
            ),
        )
    };
    if w.shape.len() > shape.len() {
        // Tolerate extra leading 1s.
        let extra = w.shape.len() - shape.len();
        if w.shape[..extra].iter().any(|d| *d != 1) {
            return Err(bad());
        }
    }
    let ws: Vec<usize> = w
        .shape
        .iter()
        .rev()
        .take(shape.len())
        .rev()
        .copied()
        .collect();
    let off = shape.len() - ws.len();
    for (k, d) in ws.iter().enumerate() {
        if *d != 1 && *d != shape[off + k] {
            return Err(bad());
        }
    }
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..n {
        let mut o = 0;
        for (k, d) in ws.iter().enumerate() {
            let i = if *d == 1 { 0 } else { idx[off + k] };
            o = o * d + i;
        }
        out.push(wv[o]);
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    Ok(out)
}

pub(crate) fn param_value(p: &Program, k: usize, v: ParamValue) -> Result<Value> {
    let prm = &p.params[k];
    let bad = |what: String| {
        Error::new(
            ErrorKind::Type,
            format!(
                "parameter `{}` of `{}` is {}, but was given {what}",
                prm.name, p.name, prm.ty
            ),
        )
    };
    Ok(match (prm.ty, v) {
        (Ty::Real, ParamValue::Real(x)) => Value::Real(x),
        (Ty::Real, ParamValue::Int(x)) => Value::Real(x as f64),
        (Ty::Int, ParamValue::Int(x)) => Value::Int(x),
        (Ty::Int, ParamValue::Real(x)) if x.fract() == 0.0 && x.abs() < 9e15 => {
            Value::Int(x as i64)
        }
        (Ty::Bool, ParamValue::Bool(b)) => Value::Bool(b),
        (_, ParamValue::Real(x)) => return Err(bad(format!("the real {x}"))),
        (_, ParamValue::Int(x)) => return Err(bad(format!("the int {x}"))),
        (_, ParamValue::Bool(b)) => return Err(bad(format!("the bool {b}"))),
    })
}

/// Evaluates a loss on a call (values only; gradient requests are validated).
/// Names first: unknown or repeated inputs, unknown parameters.
pub(crate) fn check_names(p: &Program, inputs: &[&str], params: &[&str]) -> Result<()> {
    let input_names: Vec<&str> = p.inputs.iter().map(|i| i.name.as_str()).collect();
    for (k, name) in inputs.iter().enumerate() {
        if p.input(name).is_none() || *name == ir::WEIGHTS {
            return Err(Error::new(
                ErrorKind::Unknown,
                format!(
                    "unknown input `{name}` for `{}`{}; its inputs are {}",
                    p.name,
                    did_you_mean(name, input_names.iter().copied()),
                    input_names.join(", ")
                ),
            ));
        }
        if inputs[..k].contains(name) {
            return Err(Error::new(
                ErrorKind::Data,
                format!("input `{name}` is given twice"),
            ));
        }
    }
    for name in params {
        if p.param(name).is_none() {
            let names: Vec<&str> = p.params.iter().map(|x| x.name.as_str()).collect();
            let list = if names.is_empty() {
                "it has none".to_string()
            } else {
                format!("its parameters are {}", names.join(", "))
            };
            return Err(Error::new(
                ErrorKind::Unknown,
                format!(
                    "unknown parameter `{name}` for `{}`{}; {list}",
                    p.name,
                    did_you_mean(name, names.iter().copied())
                ),
            ));
        }
    }
    Ok(())
}

/// A reduction applies to a loss: a scalar output takes none, sum or mean.
pub(crate) fn check_reduction(p: &Program, r: Reduction) -> Result<()> {
    if p.output.indices.is_empty()
        && !matches!(r, Reduction::None | Reduction::Sum | Reduction::Mean)
    {
        return Err(Error::new(
            ErrorKind::Reduction,
            format!(
                "reduction `{}` does not apply to `{}`, whose output is a scalar; use none, sum or mean",
                r.name(),
                p.name
            ),
        ));
    }
    Ok(())
}

/// Input shapes bound to a loss: the extent of every index an input binds (-1 for the
/// others) and the leading dimensions folded into each first index.
pub(crate) struct Shapes {
    pub extents: Vec<i64>,
    pub lead: Vec<Option<Vec<usize>>>,
}

/// Binds input shapes to a loss's declared dimensions (folding leading dimensions into the
/// first index), or says which input disagrees.
pub(crate) fn bind_shapes(p: &Program, shapes: &[(&str, &[usize])]) -> Result<Shapes> {
    // Shapes -> extents.
    let mut extents = vec![-1i64; p.indices.len()];
    let mut lead: Vec<Option<Vec<usize>>> = vec![None; p.indices.len()];
    let mut bound_by: Vec<Option<String>> = vec![None; p.indices.len()];
    for inp in &p.inputs {
        let Some((_, arr_shape)) = shapes.iter().find(|(n, _)| *n == inp.name) else {
            let decl: Vec<String> = inp.dims.iter().map(|d| p.index_label(*d)).collect();
            return Err(Error::new(
                ErrorKind::Missing,
                format!(
                    "missing input `{}[{}]` for `{}`",
                    inp.name,
                    decl.join(", "),
                    p.name
                ),
            ));
        };
        let rank = inp.dims.len();
        let decl = || {
            let d: Vec<String> = inp.dims.iter().map(|d| p.index_label(*d)).collect();
            format!("[{}]", d.join(", "))
        };
        // A rank-0 array given for a one-index input is one element of it: the index has
        // extent 1 and no folded dimensions, so an output over it is rank 0 (elementwise
        // losses take any shape, a scalar too).
        let scalar_for_one = rank == 1 && arr_shape.is_empty();
        if (arr_shape.len() < rank && !scalar_for_one)
            || (rank == 0
                && !arr_shape.is_empty()
                && arr_shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d)) != Some(1))
        {
            return Err(Error::new(
                ErrorKind::Shape,
                format!(
                    "input `{}` has shape {:?}, but `{}` declares it {}",
                    inp.name,
                    arr_shape,
                    p.name,
                    decl()
                ),
            ));
        }
        // Fold leading dimensions into the first index.
        let mut shape: Vec<usize> = Vec::new();
        if rank > 0 {
            let l = if scalar_for_one {
                shape.push(1);
                vec![]
            } else {
                let extra = arr_shape.len() - rank;
                let first = cells(&arr_shape[..=extra], &format!("input `{}`", inp.name))?;
                shape.push(first);
                shape.extend(&arr_shape[extra + 1..]);
                arr_shape[..=extra].to_vec()
            };
            let ix = inp.dims[0].ix();
            let by = (extents[ix] >= 0).then(|| bound_by[ix].clone().unwrap_or_default());
            agree_lead(p, &mut lead[ix], l, inp.dims[0], &inp.name, arr_shape, by)?;
        }
        for (k, d) in inp.dims.iter().enumerate() {
            // No index is longer than the largest table (a `[0, 2^63]` shape holds no data
            // but would make an extent that no longer fits an i64).
            if shape[k] as u64 > interp::MAX_TABLE {
                return Err(Error::new(
                    ErrorKind::Limit,
                    format!(
                        "input `{}` has shape {:?}; dimension {k} is past the limit of {} elements",
                        inp.name,
                        arr_shape,
                        interp::MAX_TABLE
                    ),
                ));
            }
            let got = shape[k] as i64;
            let ix = d.ix();
            if k > 0 {
                // An index bound past an input's first dimension takes no folded dimensions, so
                // an input that would fold into it must not (`w[d, c]` as [2, 1, 3] against
                // `features[n, d]`'s d = 2).
                let by = bound_by[ix].clone().unwrap_or_default();
                agree_lead(
                    p,
                    &mut lead[ix],
                    vec![shape[k]],
                    *d,
                    &inp.name,
                    arr_shape,
                    Some(by),
                )?;
            }
            if let Extent::Fixed(n) = p.indices[ix].extent {
                if got != n {
                    return Err(Error::new(
                        ErrorKind::Shape,
                        format!(
                            "shape mismatch: input `{}` has shape {:?}, but dimension {k} of {} must be {n}",
                            inp.name,
                            arr_shape,
                            decl()
                        ),
                    ));
                }
            }
            if extents[ix] >= 0 && extents[ix] != got {
                return Err(Error::new(
                    ErrorKind::Shape,
                    format!(
                        "shape mismatch: index `{}` is {} in `{}` but {got} in `{}` (shape {:?})",
                        p.index_label(*d),
                        extents[ix],
                        bound_by[ix].clone().unwrap_or_default(),
                        inp.name,
                        arr_shape
                    ),
                ));
            }
            extents[ix] = got;
            bound_by[ix] = Some(inp.name.clone());
        }
    }
    Ok(Shapes { extents, lead })
}

/// Records `l` as the leading shape that folds into index `d`, or checks it against the one
/// recorded (when `bound_by`, the input that bound it, is given).
fn agree_lead(
    p: &Program,
    lead: &mut Option<Vec<usize>>,
    l: Vec<usize>,
    d: ir::IndexId,
    name: &str,
    arr_shape: &[usize],
    bound_by: Option<String>,
) -> Result<()> {
    match (&*lead, bound_by) {
        (None, _) => *lead = Some(l),
        (Some(prev), Some(by)) if *prev != l => {
            return Err(Error::new(
                ErrorKind::Shape,
                format!(
                    "shape mismatch: input `{name}` has shape {arr_shape:?}, which disagrees with `{by}` along `{}` ({l:?} against {prev:?})",
                    p.index_label(d),
                ),
            ))
        }
        _ => {}
    }
    Ok(())
}

/// Parameter values (given, or their defaults, which may read the inputs) and computed
/// extents, into `env` (whose inputs and input-bound extents are set).
pub(crate) fn bind_params(
    p: &Program,
    given: &[(String, ParamValue)],
    skip: &[crate::ir::ParamId],
    env: &mut interp::Env,
) -> Result<()> {
    let f32 = env.f32;
    env.params.clear();
    // Parameters: given, or their defaults (which may read the inputs); `skip`ped ones (the
    // kernel computes their defaults) get a placeholder of their type.
    for k in 0..p.params.len() {
        let given = given.iter().find(|(n, _)| *n == p.params[k].name);
        if given.is_none() && skip.iter().any(|id| id.ix() == k) {
            env.params.push(match p.params[k].ty {
                Ty::Int => Value::Int(0),
                Ty::Bool => Value::Bool(false),
                _ => Value::Real(f64::NAN),
            });
            continue;
        }
        let v = match given {
            Some((_, v)) => param_value(p, k, *v)?,
            None => interp::eval_scalar(p, env, p.params[k].default)?,
        };
        let v = match v {
            Value::Real(x) if f32 => Value::Real(x as f32 as f64),
            v => v,
        };
        env.params.push(v);
    }
    // Computed extents, in order.
    for (k, ix) in p.indices.iter().enumerate() {
        match &ix.extent {
            Extent::Computed(e) => {
                let v = interp::eval_extent(p, env, *e)
                    .map_err(|err| {
                        Error::new(
                            err.kind,
                            format!("the extent of index `{}`: {}", ix.name, err.message()),
                        )
                    })?
                    .as_f64() as i64;
                if v < 0 {
                    return Err(Error::new(
                        ErrorKind::Range,
                        format!(
                            "the extent of index `{}` comes out as {v}, which is out of range",
                            ix.name
                        ),
                    ));
                }
                env.extents[k] = v;
            }
            Extent::Fixed(n) => env.extents[k] = *n,
            Extent::Input { .. } => {}
        }
    }

    Ok(())
}

/// A call's inputs in a compiled loss's element types: real inputs in the call's precision
/// (converted once), int inputs as `i64`, checked as [`evaluate`] checks them.
pub(crate) enum Typed {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
}

impl Typed {
    fn slice(&self) -> super::Slice<'_> {
        match self {
            Typed::F32(v) => super::Slice::F32(v),
            Typed::F64(v) => super::Slice::F64(v),
            Typed::I64(v) => super::Slice::I64(v),
        }
    }
}

/// An int input's data given as reals: whole numbers an `i64` holds exactly, or an error.
fn whole(name: &str, v: &[f64]) -> Result<Vec<i64>> {
    let mut out = Vec::with_capacity(v.len());
    for x in v {
        if x.fract() != 0.0 || !x.is_finite() {
            return Err(not_whole(name, *x));
        }
        // (a whole number this large is no valid id or length: out of range, as
        // 2^62 given as an integer is)
        if x.abs() > 9e15 {
            return Err(Error::new(
                ErrorKind::Range,
                format!("index out of range: input `{name}` holds {x}, past the whole numbers an int input takes exactly (|x| <= 9e15)"),
            ));
        }
        out.push(*x as i64);
    }
    Ok(out)
}

/// The checks [`evaluate`] makes before it converts anything (names, gradient inputs, the
/// arrays' shapes against their data and the limits, the shapes against the loss).
pub(crate) fn precheck(p: &Program, call: &Call) -> Result<Shapes> {
    let input_names: Vec<&str> = call.inputs.iter().map(|(n, _)| n.as_str()).collect();
    let param_names: Vec<&str> = call.params.iter().map(|(n, _)| n.as_str()).collect();
    check_names(p, &input_names, &param_names)?;
    validate_grad(p, &call.grad)?;
    for (name, arr) in &call.inputs {
        arr.validate(&format!("input `{name}`"))?;
    }
    let shapes: Vec<(&str, &[usize])> = call
        .inputs
        .iter()
        .map(|(n, a)| (n.as_str(), a.shape.as_slice()))
        .collect();
    bind_shapes(p, &shapes)
}

/// Runs a call on a loss compiled for its precision and gradient inputs: the same blocked
/// kernel [`super::CompiledLoss::call_into`] runs, on the arrays converted once (after
/// [`precheck`]).
pub(crate) fn evaluate_compiled(
    p: &Program,
    c: &super::CompiledLoss,
    call: &Call,
) -> Result<Output> {
    let f32 = call.dtype == DType::F32;
    let mut typed: Vec<(&str, &[usize], Typed)> = Vec::with_capacity(call.inputs.len());
    for (name, arr) in &call.inputs {
        let int = p.input(name).map(|i| p.inputs[i.ix()].ty == Ty::Int) == Some(true);
        let t = match (&arr.data, int) {
            (Data::Int(v), true) => Typed::I64(v.clone()),
            (Data::Real(v), true) => Typed::I64(whole(name, v)?),
            (Data::Real(v), false) if f32 => Typed::F32(v.iter().map(|x| *x as f32).collect()),
            (Data::Real(v), false) => Typed::F64(v.clone()),
            (Data::Int(v), false) if f32 => Typed::F32(v.iter().map(|x| *x as f32).collect()),
            (Data::Int(v), false) => Typed::F64(v.iter().map(|x| *x as f64).collect()),
        };
        typed.push((name.as_str(), arr.shape.as_slice(), t));
    }
    let views: Vec<(&str, super::View)> = typed
        .iter()
        .map(|(n, s, t)| (*n, super::View::new(s, t.slice())))
        .collect();
    let params: Vec<(&str, ParamValue)> =
        call.params.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let wdata = call.weights.as_ref().map(|w| match &w.data {
        Data::Real(v) => v.clone(),
        Data::Int(v) => v.iter().map(|x| *x as f64).collect(),
    });
    let weights = match (&call.weights, &wdata) {
        (Some(w), Some(d)) => Some(super::View::new(&w.shape, super::Slice::F64(d))),
        _ => None,
    };
    c.call(&views, &params, call.reduction, weights)
}

pub fn evaluate(p: &Program, call: &Call) -> Result<Output> {
    let Shapes { extents, lead } = precheck(p, call)?;
    let mut datas: Vec<(Vec<f64>, Vec<i64>)> = Vec::new();
    for inp in &p.inputs {
        let Some((_, arr)) = call.inputs.iter().find(|(n, _)| *n == inp.name) else {
            continue;
        };
        // Data, converted to the declared type and the call's precision.
        let data = match (inp.ty, &arr.data) {
            (Ty::Int, Data::Int(v)) => (vec![], v.clone()),
            (Ty::Int, Data::Real(v)) => {
                let mut out = Vec::with_capacity(v.len());
                for x in v {
                    if x.fract() != 0.0 || !x.is_finite() {
                        return Err(not_whole(&inp.name, *x));
                    }
                    // (a whole number this large is no valid id or length: out of range, as
                    // 2^62 given as an integer is)
                    if x.abs() > 9e15 {
                        return Err(Error::new(
                            ErrorKind::Range,
                            format!("index out of range: input `{}` holds {x}, past the whole numbers an int input takes exactly (|x| <= 9e15)", inp.name),
                        ));
                    }
                    out.push(*x as i64);
                }
                (vec![], out)
            }
            (_, d) => {
                let v = match d {
                    Data::Real(v) => v.clone(),
                    Data::Int(v) => v.iter().map(|x| *x as f64).collect(),
                };
                let v = if call.dtype == DType::F32 {
                    v.into_iter().map(|x| x as f32 as f64).collect()
                } else {
                    v
                };
                (v, vec![])
            }
        };
        datas.push(data);
    }
    let mut inputs: Vec<InputData> = p
        .inputs
        .iter()
        .zip(&datas)
        .map(|(i, d)| {
            if i.ty == Ty::Int {
                InputData::Int(&d.1)
            } else {
                InputData::Real(&d.0)
            }
        })
        .collect();

    let f32 = call.dtype == DType::F32;
    let mut env = interp::Env {
        f32,
        extents: extents.clone(),
        inputs: inputs.clone(),
        params: vec![],
    };
    bind_params(p, &call.params, &[], &mut env)?;
    // (both backends evaluate the program a compiled loss runs: see `compiled::specialised`)
    let specialised = super::compiled::specialised(p, &call.params);
    let p = &specialised;

    // Reduction and weights.
    let out_shape = output_shape(p, &env.extents, &lead);
    cells(&out_shape, "the output")?;
    check_reduction(p, call.reduction)?;
    let wdata = match &call.weights {
        Some(w) => Some(broadcast(w, &out_shape)?),
        None => None,
    };
    let q = crate::opt::simplify(&ir::with_reduction(p, call.reduction, wdata.is_some()));
    let wdata = wdata.map(|w| {
        if f32 {
            w.into_iter().map(|x| x as f32 as f64).collect()
        } else {
            w
        }
    });
    if let Some(w) = &wdata {
        inputs.push(InputData::Real(w));
    }
    env.inputs = inputs;

    let wrt: Vec<ir::InputId> = call.grad.iter().filter_map(|g| p.input(g)).collect();
    let q = if wrt.is_empty() {
        q
    } else {
        crate::opt::simplify(&crate::grad::differentiate(&q, &wrt)?)
    };
    let q = crate::opt::merge_bounds(&crate::opt::precise_logsumexp(&q));
    let (values, grads) = match call.backend {
        Backend::Interp => interp::run_with_grads(&q, &env)?,
        Backend::Jit => super::native::run_with_grads(&q, &env)?,
    };
    let shape = if call.reduction == Reduction::None {
        out_shape
    } else {
        vec![]
    };
    let grads = wrt
        .iter()
        .zip(grads)
        .map(|(w, g)| {
            let name = p.inputs[w.ix()].name.clone();
            let shape = call
                .inputs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, a)| a.shape.clone())
                .unwrap_or_default();
            (name, Array::real(shape, g))
        })
        .collect();
    Ok(Output {
        value: Array::real(shape, values),
        grads,
    })
}
