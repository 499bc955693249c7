//! The reference interpreter: evaluates a bound IR program on arrays, in f64 or f32.
//!
//! It is the oracle every compiled backend is held to, so it favours clarity over speed:
//! tensor definitions are evaluated cell by cell in row-major order (which is what makes
//! recurrences well-defined), expressions by walking the DAG, `if`/`&&`/`||` lazily.
//! In f32 mode every real operation is computed in f64 and rounded to f32, so elementary
//! operations are exactly f32's and functions are correctly rounded to within one f32 ulp;
//! reduction accumulators stay in f64 and are rounded once.
//! Every data-dependent index is range-checked; an out-of-range read is an error (or the
//! tensor's pad value, when it declares one), never an out-of-bounds access.

use crate::diag::{Diagnostic, Error, ErrorKind, Result};
use crate::ir::{
    arith, Bin, Contribution, Expr, ExprId, Func, IndexId, Pass, Program, Red, Ty, Un,
};
use std::collections::HashMap;

/// A scalar value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Real(f64),
    Int(i64),
    Bool(bool),
}

impl Value {
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Real(v) => v,
            Value::Int(v) => v as f64,
            Value::Bool(b) => b as i64 as f64,
        }
    }
    fn int(self) -> i64 {
        match self {
            Value::Int(v) => v,
            Value::Real(v) => v as i64,
            Value::Bool(b) => b as i64,
        }
    }
    fn bool(self) -> bool {
        match self {
            Value::Bool(b) => b,
            Value::Int(v) => v != 0,
            Value::Real(v) => v != 0.0,
        }
    }
}

/// One input's data, row-major, already folded to the declared rank.
#[derive(Clone, Copy, Debug)]
pub enum InputData<'a> {
    Real(&'a [f64]),
    Int(&'a [i64]),
}

/// Everything a program needs to run: extents of every index, input data, parameter values.
#[derive(Clone, Debug)]
pub struct Env<'a> {
    pub f32: bool,
    pub extents: Vec<i64>,
    pub inputs: Vec<InputData<'a>>,
    pub params: Vec<Value>,
}

/// Largest table (tensor definition or output) the interpreter allocates, in elements.
pub const MAX_TABLE: u64 = 1 << 30;

/// Most bytes the tables one call allocates may take together (tensor definitions with the
/// gradients' adjoints, and the output), in either backend: 10^9 cells are legal for one
/// table (below `MAX_TABLE`) but take 16 GB in the interpreter, 8 GB in an f64 kernel.
pub const MAX_MEMORY: u64 = 1 << 32;

/// Checks, before anything is allocated, that the tables of `p` at these extents, at
/// `cell_bytes(ty)` bytes a cell, and `extra` bytes besides fit in [`MAX_MEMORY`]
/// (overflow-checked).
pub fn check_memory(
    p: &Program,
    extents: &[i64],
    cell_bytes: &dyn Fn(Ty) -> u64,
    extra: u64,
) -> Result<()> {
    let mut total = Some(extra);
    let tables = p
        .tensors
        .iter()
        .map(|t| (&t.indices, t.ty))
        .chain(std::iter::once((&p.output.indices, p.output_ty())));
    for (ix, ty) in tables {
        let n = table_size(p, extents, ix)? as u64;
        total = total.and_then(|t| t.checked_add(n.checked_mul(cell_bytes(ty))?));
    }
    match total {
        Some(t) if t <= MAX_MEMORY => Ok(()),
        _ => Err(Error::new(
            ErrorKind::Limit,
            format!(
                "the tables of `{}` would take {} bytes at these sizes; the limit is {MAX_MEMORY}",
                p.name,
                total.map_or("more than 2^64".to_string(), |t| t.to_string())
            ),
        )),
    }
}

/// `n` copies of `v`, or a `Limit` error when the allocator refuses them (instead of an
/// abort).
pub fn try_filled<T: Clone>(n: usize, v: T) -> Result<Vec<T>> {
    let mut out = Vec::new();
    out.try_reserve_exact(n).map_err(|_| {
        Error::new(
            ErrorKind::Limit,
            format!(
                "cannot allocate a table of {n} cells ({} bytes)",
                n.saturating_mul(std::mem::size_of::<T>())
            ),
        )
    })?;
    out.resize(n, v);
    Ok(out)
}

/// Evaluates a closed expression (a parameter default or an extent).
pub fn eval_scalar(p: &Program, env: &Env, e: ExprId) -> Result<Value> {
    let mut m = Machine::new(p, env);
    m.eval(e)
}

/// Evaluates a computed extent: as [`eval_scalar`], except that an int operation that
/// overflows is a `Limit` error instead of wrapping (`I * I * I` with `I = 2^22` would wrap
/// to an extent of 0).
pub fn eval_extent(p: &Program, env: &Env, e: ExprId) -> Result<Value> {
    let mut m = Machine::new(p, env);
    m.checked = true;
    m.eval(e)
}

/// Runs a program: evaluates its tensor definitions in order, then its output over the
/// output's indices, row-major. Returns the output's values as f64 (rounded to f32 in f32 mode).
pub fn run(p: &Program, env: &Env) -> Result<Vec<f64>> {
    Ok(run_with_grads(p, env)?.0)
}

/// Runs a program and its backward passes; returns the output's values and, for each entry
/// of `p.grads`, the gradient's values (row-major over the input's dimensions).
pub fn run_with_grads(p: &Program, env: &Env) -> Result<(Vec<f64>, Vec<Vec<f64>>)> {
    let cell = std::mem::size_of::<Value>() as u64;
    check_memory(p, &env.extents, &|_| cell, 0)?;
    let mut m = Machine::new(p, env);
    for (k, t) in p.tensors.iter().enumerate() {
        m.fill(Some(k), &t.indices, t.body, t.reverse)?;
    }
    let out = m.fill(None, &p.output.indices, p.output.body, false)?;
    for pass in &p.passes {
        m.run_pass(pass)?;
    }
    let mut grads = Vec::new();
    for (_, t) in &p.grads {
        let data = m.tensors[t.ix()].take().unwrap_or_default();
        grads.push(data.into_iter().map(|v| m.round(v.as_f64())).collect());
    }
    Ok((out.into_iter().map(|v| v.as_f64()).collect(), grads))
}

/// The nodes worth caching per cell: shared by two or more parents, and not leaves.
fn shared_nodes(p: &Program) -> Vec<bool> {
    let mut uses = vec![0u32; p.pool.len()];
    for k in 0..p.pool.len() {
        p.pool
            .get(ExprId(k as u32))
            .for_each_child(|c| uses[c.ix()] = uses[c.ix()].saturating_add(1));
    }
    (0..p.pool.len())
        .map(|k| uses[k] >= 2 && !p.pool.get(ExprId(k as u32)).is_leaf())
        .collect()
}

/// Number of cells of an index space, or a limit error.
pub fn table_size(p: &Program, extents: &[i64], indices: &[IndexId]) -> Result<usize> {
    let mut n: u64 = 1;
    for i in indices {
        let e = extents.get(i.ix()).copied().unwrap_or(0).max(0) as u64;
        n = n.saturating_mul(e);
    }
    if n > MAX_TABLE {
        let names: Vec<String> = indices.iter().map(|i| p.index_label(*i)).collect();
        return Err(Error::new(
            ErrorKind::Limit,
            format!(
                "a table over [{}] would have {n} elements; the limit is {MAX_TABLE}",
                names.join(", ")
            ),
        ));
    }
    Ok(n as usize)
}

struct Machine<'a> {
    p: &'a Program,
    env: &'a Env<'a>,
    tensors: Vec<Option<Vec<Value>>>,
    /// current value of every index
    at: Vec<i64>,
    /// reductions already computed, by node and the values of their free indices
    memo: HashMap<(ExprId, Vec<i64>), Value>,
    /// nodes with several parents (not leaves): evaluated once per cell, through `cache`;
    /// without it a DAG of shared aliases (`let a2 = a1 * a1; ...`) takes exponential time
    shared: Vec<bool>,
    /// values of shared nodes in the current cell, by node and the values of its free indices
    cache: HashMap<(ExprId, Vec<i64>), Value>,
    /// the indices being iterated, outermost first (for messages)
    live: Vec<IndexId>,
    /// int overflow is an error (computed extents), not wrapping
    checked: bool,
}

/// The error for a read at `v` along dimension `dim` (index `dim_index`, extent `ext`) of
/// `what`, by node `e`; `at` says where ("(at n = 2)") when known.
#[allow(clippy::too_many_arguments)]
pub fn range_error(
    p: &Program,
    e: ExprId,
    what: &str,
    dim: usize,
    dim_index: IndexId,
    v: i64,
    ext: i64,
    at: &str,
) -> Error {
    let dn = p.index_label(dim_index);
    let msg = format!(
        "index out of range: {what} read at {v} along `{dn}` (dimension {dim}), whose valid range is 0..{ext}{at}"
    );
    let mut d = Diagnostic::new(msg);
    // Point at the index that is out of range when its source is known, else at the read.
    let arg_span = match p.pool.get(e) {
        Expr::Input(_, args) | Expr::Tensor(_, args) => args.get(dim).and_then(|a| p.spans.get(a)),
        _ => None,
    };
    match (arg_span, p.spans.get(&e)) {
        // (a shared node keeps its first span, which may be another occurrence)
        (Some(a), Some(r))
            if a != r && a.file == r.file && a.start >= r.start && a.end <= r.end =>
        {
            d = d
                .primary(*a, format!("this index is {v}"))
                .secondary(*r, "in this read");
        }
        (_, Some(r)) => d = d.primary(*r, format!("this read (index {v})")),
        (Some(a), None) => d = d.primary(*a, format!("this index is {v}")),
        (None, None) => {}
    }
    Error::from_diag(ErrorKind::Range, d)
}

/// `i`, `i + 2`, `t - 1`, `(u + 1) - 2`: a constant offset of an index.
pub fn is_offset(p: &Program, e: ExprId) -> bool {
    crate::ir::shifted_index(p, e).is_some()
}

fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if b > a {
        b
    } else {
        a
    }
}

fn nan_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if b < a {
        b
    } else {
        a
    }
}

/// log(sum(exp(v))) without overflow; -inf for no values.
pub fn logsumexp(v: &[f64]) -> f64 {
    let m = v.iter().copied().fold(f64::NEG_INFINITY, nan_max);
    if m.is_nan() || m.is_infinite() {
        return m;
    }
    let s: f64 = v.iter().map(|x| (x - m).exp()).sum();
    m + s.ln()
}

pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

pub fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

impl<'a> Machine<'a> {
    fn new(p: &'a Program, env: &'a Env<'a>) -> Machine<'a> {
        Machine {
            p,
            env,
            tensors: vec![None; p.tensors.len()],
            at: vec![0; p.indices.len()],
            memo: HashMap::new(),
            shared: shared_nodes(p),
            cache: HashMap::new(),
            live: vec![],
            checked: false,
        }
    }

    /// An int result: `wrapped` (two's complement), or in checked mode a `Limit` error where
    /// the exact result (`exact`) does not fit.
    fn int_result(&self, exact: Option<i64>, wrapped: i64) -> Result<Value> {
        match exact {
            None if self.checked => Err(Error::new(
                ErrorKind::Limit,
                "an int extent overflows 64 bits (it would be more than 2^63 - 1)",
            )),
            _ => Ok(Value::Int(wrapped)),
        }
    }

    fn round(&self, v: f64) -> f64 {
        if self.env.f32 {
            v as f32 as f64
        } else {
            v
        }
    }

    /// Runs one backward pass: every contribution at every cell (in reverse order for a
    /// recurrence's adjoint). Adjoints accumulate in f64.
    fn run_pass(&mut self, pass: &Pass) -> Result<()> {
        let n = table_size(self.p, &self.env.extents, &pass.space)?;
        let ext: Vec<i64> = pass
            .space
            .iter()
            .map(|i| self.env.extents[i.ix()])
            .collect();
        for step in 0..n {
            let mut flat = if pass.reverse { n - 1 - step } else { step };
            for k in (0..ext.len()).rev() {
                let e = ext[k].max(1) as usize;
                self.at[pass.space[k].ix()] = (flat % e) as i64;
                flat /= e;
            }
            for c in &pass.contributions {
                self.contribute(c, 0)?;
            }
        }
        Ok(())
    }

    fn contribute(&mut self, c: &Contribution, k: usize) -> Result<()> {
        if let Some(i) = c.extra.get(k) {
            let saved = self.at[i.ix()];
            self.live.push(*i);
            for v in 0..self.env.extents[i.ix()].max(0) {
                self.at[i.ix()] = v;
                self.contribute(c, k + 1)?;
            }
            self.live.pop();
            self.at[i.ix()] = saved;
            return Ok(());
        }
        // Tables change between contributions (adjoints accumulate): start a new cell.
        self.new_cell();
        for g in &c.guards {
            if !self.eval(*g)?.bool() {
                return Ok(());
            }
        }
        let dims = self.p.tensors[c.target.ix()].indices.clone();
        let mut off: i64 = 0;
        for (a, d) in c.index.iter().zip(&dims) {
            let v = self.eval(*a)?.int();
            let e = self.env.extents[d.ix()];
            // Out of range only where the forward pass read a pad, which has no gradient.
            if v < 0 || v >= e {
                return Ok(());
            }
            off = off * e + v;
        }
        let v = self.eval(c.value)?.as_f64();
        if let Some(t) = self.tensors[c.target.ix()].as_mut() {
            if let Some(cell) = t.get_mut(off as usize) {
                *cell = Value::Real(cell.as_f64() + v);
            }
        }
        Ok(())
    }

    fn r(&self, v: f64) -> Value {
        Value::Real(if self.env.f32 { v as f32 as f64 } else { v })
    }

    /// Fills a table over `indices` in row-major order. With `slot`, the table is the tensor
    /// definition `slot`, visible to its own body while it fills (recurrences).
    fn fill(
        &mut self,
        slot: Option<usize>,
        indices: &[IndexId],
        body: ExprId,
        reverse: bool,
    ) -> Result<Vec<Value>> {
        let n = table_size(self.p, &self.env.extents, indices)?;
        let ext: Vec<i64> = indices.iter().map(|i| self.env.extents[i.ix()]).collect();
        let mut out = try_filled(n, Value::Real(0.0))?;
        if let Some(k) = slot {
            self.tensors[k] = Some(out);
            out = Vec::new();
        }
        self.live = indices.to_vec();
        for step in 0..n {
            let flat = if reverse { n - 1 - step } else { step };
            let mut rest = flat;
            for k in (0..ext.len()).rev() {
                let e = ext[k].max(1) as usize;
                self.at[indices[k].ix()] = (rest % e) as i64;
                rest /= e;
            }
            self.new_cell();
            let v = self.eval(body)?;
            match slot {
                Some(k) => {
                    if let Some(t) = self.tensors[k].as_mut() {
                        t[flat] = v;
                    }
                }
                None => out[flat] = v,
            }
        }
        Ok(out)
    }

    fn where_(&self) -> String {
        // The values of the indices in play, for messages: "at n = 2, c = 0".
        let parts: Vec<String> = self
            .live
            .iter()
            .filter(|i| !self.p.indices[i.ix()].name.starts_with('#'))
            .map(|i| format!("{} = {}", self.p.indices[i.ix()].name, self.at[i.ix()]))
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!(" (at {})", parts.join(", "))
        }
    }

    fn range_error(
        &self,
        e: ExprId,
        what: &str,
        dim: usize,
        dim_index: IndexId,
        v: i64,
        ext: i64,
    ) -> Error {
        range_error(self.p, e, what, dim, dim_index, v, ext, &self.where_())
    }

    /// The row-major offset of a load, or the out-of-range dimension.
    fn offset(
        &mut self,
        e: ExprId,
        dims: &[IndexId],
        args: &[ExprId],
    ) -> Result<std::result::Result<usize, (usize, i64)>> {
        let mut off: i64 = 0;
        for (k, (a, d)) in args.iter().zip(dims).enumerate() {
            let v = self.eval(*a)?.int();
            let ext = self.env.extents[d.ix()];
            if v < 0 || v >= ext {
                let _ = e;
                return Ok(Err((k, v)));
            }
            off = off * ext + v;
        }
        Ok(Ok(off as usize))
    }

    /// Forgets the shared values of the previous cell. `clear` costs the map's capacity, which
    /// a reduction over a large index can have grown: a large map is dropped instead.
    fn new_cell(&mut self) {
        if self.cache.capacity() > 1024 {
            self.cache = HashMap::new();
        } else {
            self.cache.clear();
        }
    }

    fn eval(&mut self, e: ExprId) -> Result<Value> {
        if !self.shared.get(e.ix()).copied().unwrap_or(false) {
            return self.eval_node(e);
        }
        let free = self.p.pool.free(e);
        let key = (e, free.iter().map(|f| self.at[f.ix()]).collect::<Vec<_>>());
        if let Some(v) = self.cache.get(&key) {
            return Ok(*v);
        }
        let v = self.eval_node(e)?;
        self.cache.insert(key, v);
        Ok(v)
    }

    fn eval_node(&mut self, e: ExprId) -> Result<Value> {
        let p = self.p;
        Ok(match p.pool.get(e) {
            Expr::Real(b) => self.r(f64::from_bits(*b)),
            Expr::Int(v) => Value::Int(*v),
            Expr::Bool(v) => Value::Bool(*v),
            Expr::Index(i) => Value::Int(self.at[i.ix()]),
            Expr::Extent(i) => Value::Int(self.env.extents[i.ix()]),
            Expr::Param(q) => self.env.params[q.ix()],
            Expr::Input(i, args) => {
                let dims = &p.inputs[i.ix()].dims;
                match self.offset(e, dims, args)? {
                    Ok(off) => match self.env.inputs[i.ix()] {
                        InputData::Real(d) => Value::Real(d[off]),
                        InputData::Int(d) => Value::Int(d[off]),
                    },
                    Err((k, v)) => {
                        let what = format!("`{}`", p.inputs[i.ix()].name);
                        return Err(self.range_error(
                            e,
                            &what,
                            k,
                            dims[k],
                            v,
                            self.env.extents[dims[k].ix()],
                        ));
                    }
                }
            }
            Expr::Tensor(t, args) => {
                let tn = &p.tensors[t.ix()];
                match self.offset(e, &tn.indices, args)? {
                    Ok(off) => match &self.tensors[t.ix()] {
                        Some(d) => d[off],
                        None => {
                            return Err(Error::new(
                                ErrorKind::Check,
                                format!("internal: `{}` read before it is computed", tn.name),
                            ))
                        }
                    },
                    // The pad answers reads at constant offsets of indices (`t - 1`); a
                    // data-dependent index (a length, a class id) is always range-checked.
                    Err((k, v)) => match tn.pad {
                        Some(pad) if is_offset(p, args[k]) => self.eval(pad)?,
                        _ => {
                            let what = format!("`{}`", tn.name);
                            let d = tn.indices[k];
                            return Err(self.range_error(
                                e,
                                &what,
                                k,
                                d,
                                v,
                                self.env.extents[d.ix()],
                            ));
                        }
                    },
                }
            }
            Expr::Unary(op, a) => {
                let x = self.eval(*a)?;
                match (op, x) {
                    (Un::Neg, Value::Real(v)) => Value::Real(-v),
                    (Un::Neg, Value::Int(v)) => {
                        self.int_result(v.checked_neg(), v.wrapping_neg())?
                    }
                    (Un::Not, v) => Value::Bool(!v.bool()),
                    (Un::ToReal, v) => self.r(v.as_f64()),
                    (Un::ToInt, v) => Value::Int(v.as_f64() as i64),
                    (_, v) => v,
                }
            }
            Expr::Binary(op, a, b) => self.binary(e, *op, *a, *b)?,
            Expr::Call(f, args) => {
                let f = *f;
                let mut v = Vec::with_capacity(args.len());
                for a in args {
                    v.push(self.eval(*a)?);
                }
                if self.checked && f == Func::Abs && v.first() == Some(&Value::Int(i64::MIN)) {
                    return self.int_result(None, i64::MIN);
                }
                self.call(f, &v, p.pool.ty(e))
            }
            Expr::Select(c, a, b) => {
                if self.eval(*c)?.bool() {
                    self.eval(*a)?
                } else {
                    self.eval(*b)?
                }
            }
            Expr::Reduce(red, i, body) => {
                let free = p.pool.free(e);
                let key = (e, free.iter().map(|f| self.at[f.ix()]).collect::<Vec<_>>());
                if let Some(v) = self.memo.get(&key) {
                    return Ok(*v);
                }
                let v = self.reduce(*red, *i, *body, p.pool.ty(e))?;
                self.memo.insert(key, v);
                v
            }
            Expr::StopGrad(a) => self.eval(*a)?,
        })
    }

    fn reduce(&mut self, red: Red, i: IndexId, body: ExprId, ty: Ty) -> Result<Value> {
        let n = self.env.extents[i.ix()].max(0);
        let saved = self.at[i.ix()];
        let mut vals = Vec::with_capacity(n as usize);
        self.live.push(i);
        for k in 0..n {
            self.at[i.ix()] = k;
            vals.push(self.eval(body)?);
        }
        self.live.pop();
        self.at[i.ix()] = saved;
        let reals = || vals.iter().map(|v| v.as_f64());
        Ok(match (red, ty) {
            (Red::Sum, Ty::Int) => {
                Value::Int(vals.iter().fold(0i64, |s, v| s.wrapping_add(v.int())))
            }
            (Red::Max, Ty::Int) | (Red::Min, Ty::Int) => {
                let it = vals.iter().map(|v| v.int());
                let r = if red == Red::Max { it.max() } else { it.min() };
                match r {
                    Some(v) => Value::Int(v),
                    None => {
                        return Err(Error::new(
                            ErrorKind::Range,
                            format!(
                                "{} over index `{}`, whose extent is 0 (out of range)",
                                red.name(),
                                self.p.index_label(i)
                            ),
                        ))
                    }
                }
            }
            // (an empty sum is +0.0; Iterator::sum starts from -0.0)
            (Red::Sum, _) => self.r(reals().fold(0.0, |a, b| a + b)),
            (Red::Mean, _) => self.r(reals().fold(0.0, |a, b| a + b) / n as f64),
            (Red::Max, _) => self.r(reals().fold(f64::NEG_INFINITY, nan_max)),
            (Red::Min, _) => self.r(reals().fold(f64::INFINITY, nan_min)),
            (Red::LogSumExp, _) => self.r(logsumexp(&reals().collect::<Vec<_>>())),
        })
    }

    /// (`And`/`Or` return before the match below, so their arms there are unreachable.)
    fn binary(&mut self, e: ExprId, op: Bin, a: ExprId, b: ExprId) -> Result<Value> {
        let x = self.eval(a)?;
        match op {
            Bin::And if !x.bool() => return Ok(Value::Bool(false)),
            Bin::Or if x.bool() => return Ok(Value::Bool(true)),
            Bin::And | Bin::Or => return Ok(Value::Bool(self.eval(b)?.bool())),
            _ => {}
        }
        let y = self.eval(b)?;
        Ok(match (x, y) {
            (Value::Int(u), Value::Int(v)) => match op {
                Bin::Add => self.int_result(u.checked_add(v), u.wrapping_add(v))?,
                Bin::Sub => self.int_result(u.checked_sub(v), u.wrapping_sub(v))?,
                Bin::Mul => self.int_result(u.checked_mul(v), u.wrapping_mul(v))?,
                Bin::Div | Bin::Rem => {
                    if v == 0 {
                        let mut d = Diagnostic::new(format!(
                            "integer division by zero is out of range{}",
                            self.where_()
                        ));
                        if let Some(span) = self.p.spans.get(&e) {
                            d = d.primary(*span, "this division");
                        }
                        return Err(Error::from_diag(ErrorKind::Range, d));
                    }
                    if op == Bin::Div {
                        let q = arith::floor_div(u, v);
                        self.int_result(u.checked_div(v).map(|_| q), q)?
                    } else {
                        Value::Int(arith::floor_mod(u, v))
                    }
                }
                Bin::Pow => {
                    if v < 0 {
                        return Err(Error::new(
                            ErrorKind::Range,
                            format!("negative int exponent {v} is out of range"),
                        ));
                    }
                    self.int_result(arith::checked_ipow(u, v), arith::ipow(u, v))?
                }
                Bin::Eq => Value::Bool(u == v),
                Bin::Ne => Value::Bool(u != v),
                Bin::Lt => Value::Bool(u < v),
                Bin::Le => Value::Bool(u <= v),
                Bin::Gt => Value::Bool(u > v),
                Bin::Ge => Value::Bool(u >= v),
                Bin::And | Bin::Or => unreachable!(),
            },
            (Value::Bool(u), Value::Bool(v)) => Value::Bool(match op {
                Bin::Eq => u == v,
                _ => u != v,
            }),
            (Value::Real(u), Value::Int(v)) if op == Bin::Pow => self.r(arith::powi(u, v)),
            _ => {
                let (u, v) = (x.as_f64(), y.as_f64());
                match op {
                    Bin::Add => self.r(u + v),
                    Bin::Sub => self.r(u - v),
                    Bin::Mul => self.r(u * v),
                    Bin::Div => self.r(u / v),
                    Bin::Rem => self.r(u - v * (u / v).floor()),
                    Bin::Pow => self.r(u.powf(v)),
                    Bin::Eq => Value::Bool(u == v),
                    Bin::Ne => Value::Bool(u != v),
                    Bin::Lt => Value::Bool(u < v),
                    Bin::Le => Value::Bool(u <= v),
                    Bin::Gt => Value::Bool(u > v),
                    Bin::Ge => Value::Bool(u >= v),
                    Bin::And | Bin::Or => unreachable!(),
                }
            }
        })
    }

    fn call(&self, f: Func, v: &[Value], ty: Ty) -> Value {
        if ty == Ty::Int {
            let a: Vec<i64> = v.iter().map(|x| x.int()).collect();
            return Value::Int(match f {
                Func::Min => a.iter().copied().min().unwrap_or(0),
                Func::Max => a.iter().copied().max().unwrap_or(0),
                Func::Clamp => a[0].max(a[1]).min(a[2]),
                Func::Abs => a[0].wrapping_abs(),
                Func::Sign => a[0].signum(),
                _ => a[0],
            });
        }
        let x = v.first().map(|x| x.as_f64()).unwrap_or(0.0);
        let y = || v.get(1).map(|x| x.as_f64()).unwrap_or(0.0);
        match f {
            Func::IsNan => return Value::Bool(x.is_nan()),
            Func::IsInf => return Value::Bool(x.is_infinite()),
            _ => {}
        }
        self.r(match f {
            Func::Exp => x.exp(),
            Func::Log => x.ln(),
            Func::Log1p => x.ln_1p(),
            Func::Expm1 => x.exp_m1(),
            Func::Sqrt => x.sqrt(),
            Func::Abs => x.abs(),
            Func::Sign => {
                if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    x
                }
            }
            Func::Sigmoid => sigmoid(x),
            Func::Softplus => softplus(x),
            Func::LogSigmoid => -softplus(-x),
            Func::Tanh => x.tanh(),
            Func::Sin => x.sin(),
            Func::Cos => x.cos(),
            Func::Atan => x.atan(),
            Func::Acos => x.acos(),
            Func::Floor => x.floor(),
            Func::Ceil => x.ceil(),
            Func::Min => v.iter().map(|a| a.as_f64()).fold(f64::INFINITY, nan_min),
            Func::Max => v
                .iter()
                .map(|a| a.as_f64())
                .fold(f64::NEG_INFINITY, nan_max),
            Func::LogSumExp => logsumexp(&v.iter().map(|a| a.as_f64()).collect::<Vec<_>>()),
            Func::Clamp => nan_min(nan_max(x, y()), v[2].as_f64()),
            Func::Xlogy => {
                let y = y();
                if x == 0.0 && !y.is_nan() {
                    0.0
                } else {
                    x * y.ln()
                }
            }
            Func::IsNan | Func::IsInf => unreachable!(),
        })
    }
}
