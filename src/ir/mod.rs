//! The typed IR every stage after `check` shares.
//!
//! A [`Program`] is one loss: its inputs (each dimension an index), parameters with default
//! expressions, tensor definitions over index spaces (materialised, possibly recurrent), and the
//! output expression over the output's indices. Expressions are scalar and live in one
//! hash-consed [`ExprPool`] per program, so equal subexpressions are one node (a DAG): later
//! stages (differentiation, simplification, scheduling) rely on that for sharing.
//!
//! Invariants (established by `check`, relied on everywhere after):
//! - every node has a type ([`Ty`]); int->real promotion is explicit (`Un::ToReal`);
//! - a tensor body's free indices are among the tensor's indices; the output's among the
//!   output's; parameter defaults and extents have none;
//! - a recurrent tensor reads itself only at constant offsets of its own indices that are all
//!   lexicographically earlier (filled in row-major order) or all later (`reverse`: filled in
//!   reverse order), and has a pad;
//! - `Select`, `And` and `Or` are lazy: only the taken side is evaluated (and differentiated).

pub mod arith;
mod print;
mod pull;
mod reduce;
mod source;

use std::collections::HashMap;

pub use print::{print_program, real_literal};
pub(crate) use pull::{pull_contribution, shifted_index, subst_indices};
pub use reduce::{with_reduction, with_reduction_rows, Reduction, ROWS, WEIGHTS};
pub use source::to_source;

macro_rules! id_type {
    ($name:ident) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u32);
        impl $name {
            pub fn ix(self) -> usize {
                self.0 as usize
            }
        }
    };
}
id_type!(ExprId);
id_type!(IndexId);
id_type!(InputId);
id_type!(ParamId);
id_type!(TensorId);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ty {
    Real,
    Int,
    Bool,
}

impl std::fmt::Display for Ty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ty::Real => "real",
            Ty::Int => "int",
            Ty::Bool => "bool",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Un {
    Neg,
    Not,
    /// int or bool -> real
    ToReal,
    /// real -> int, truncating toward zero (saturating; NaN -> 0)
    ToInt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bin {
    Add,
    Sub,
    Mul,
    /// real division, or floor division on ints
    Div,
    /// floor modulo (the sign of the divisor), on ints and reals
    Rem,
    Pow,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// lazy: the right side is evaluated only when the left is true
    And,
    /// lazy: the right side is evaluated only when the left is false
    Or,
}

impl Bin {
    pub fn symbol(self) -> &'static str {
        match self {
            Bin::Or => "||",
            Bin::And => "&&",
            Bin::Eq => "==",
            Bin::Ne => "!=",
            Bin::Lt => "<",
            Bin::Le => "<=",
            Bin::Gt => ">",
            Bin::Ge => ">=",
            Bin::Add => "+",
            Bin::Sub => "-",
            Bin::Mul => "*",
            Bin::Div => "/",
            Bin::Rem => "%",
            Bin::Pow => "^",
        }
    }
}

/// Built-in scalar functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Func {
    Exp,
    Log,
    Log1p,
    Expm1,
    Sqrt,
    Abs,
    Sign,
    Sigmoid,
    Softplus,
    LogSigmoid,
    Tanh,
    Sin,
    Cos,
    Atan,
    Acos,
    Floor,
    Ceil,
    /// variadic
    Min,
    /// variadic
    Max,
    /// variadic, log(sum(exp(args))) computed stably
    LogSumExp,
    Clamp,
    Xlogy,
    IsNan,
    IsInf,
}

impl Func {
    pub const ALL: &'static [(Func, &'static str)] = &[
        (Func::Exp, "exp"),
        (Func::Log, "log"),
        (Func::Log1p, "log1p"),
        (Func::Expm1, "expm1"),
        (Func::Sqrt, "sqrt"),
        (Func::Abs, "abs"),
        (Func::Sign, "sign"),
        (Func::Sigmoid, "sigmoid"),
        (Func::Softplus, "softplus"),
        (Func::LogSigmoid, "log_sigmoid"),
        (Func::Tanh, "tanh"),
        (Func::Sin, "sin"),
        (Func::Cos, "cos"),
        (Func::Atan, "atan"),
        (Func::Acos, "acos"),
        (Func::Floor, "floor"),
        (Func::Ceil, "ceil"),
        (Func::Min, "min"),
        (Func::Max, "max"),
        (Func::LogSumExp, "logsumexp"),
        (Func::Clamp, "clamp"),
        (Func::Xlogy, "xlogy"),
        (Func::IsNan, "isnan"),
        (Func::IsInf, "isinf"),
    ];
    pub fn name(self) -> &'static str {
        Func::ALL
            .iter()
            .find(|(f, _)| *f == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }
    pub fn from_name(name: &str) -> Option<Func> {
        Func::ALL.iter().find(|(_, n)| *n == name).map(|(f, _)| *f)
    }
}

/// Reductions over one index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Red {
    Sum,
    Mean,
    Max,
    Min,
    LogSumExp,
}

impl Red {
    pub fn name(self) -> &'static str {
        match self {
            Red::Sum => "sum",
            Red::Mean => "mean",
            Red::Max => "max",
            Red::Min => "min",
            Red::LogSumExp => "logsumexp",
        }
    }
    pub fn from_name(name: &str) -> Option<Red> {
        Some(match name {
            "sum" => Red::Sum,
            "mean" => Red::Mean,
            "max" => Red::Max,
            "min" => Red::Min,
            "logsumexp" => Red::LogSumExp,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Expr {
    /// f64 bits, so the node can be hashed
    Real(u64),
    Int(i64),
    Bool(bool),
    /// the current value of an index
    Index(IndexId),
    /// an index's extent (upper-case `C` for index `c`)
    Extent(IndexId),
    Param(ParamId),
    Input(InputId, Vec<ExprId>),
    Tensor(TensorId, Vec<ExprId>),
    Unary(Un, ExprId),
    Binary(Bin, ExprId, ExprId),
    Call(Func, Vec<ExprId>),
    /// lazy `if c { a } else { b }`
    Select(ExprId, ExprId, ExprId),
    Reduce(Red, IndexId, ExprId),
    StopGrad(ExprId),
}

/// Hash-consed expression nodes with their types and free indices.
#[derive(Clone, Debug, Default)]
pub struct ExprPool {
    nodes: Vec<Expr>,
    types: Vec<Ty>,
    free: Vec<Vec<IndexId>>,
    map: HashMap<Expr, ExprId>,
}

impl ExprPool {
    /// `e` as `exp(x - L)` with `L = logsumexp(.., x, ..)`, the share of one of a logsumexp's
    /// arguments: `(x, L, x's position)`.
    pub fn lse_share(&self, e: ExprId) -> Option<(ExprId, ExprId, usize)> {
        let Expr::Call(Func::Exp, args) = self.get(e) else {
            return None;
        };
        let Some(Expr::Binary(Bin::Sub, x, l)) = args.first().map(|d| self.get(*d)) else {
            return None;
        };
        let Expr::Call(Func::LogSumExp, largs) = self.get(*l) else {
            return None;
        };
        Some((*x, *l, largs.iter().position(|a| a == x)?))
    }

    /// The node equal to `e`, if there is one.
    pub fn find(&self, e: &Expr) -> Option<ExprId> {
        self.map.get(e).copied()
    }

    /// Adds a node (or returns the equal one already there). `ty` is the node's type, which the
    /// caller (the checker) has determined.
    pub fn add(&mut self, e: Expr, ty: Ty) -> ExprId {
        if let Some(&id) = self.map.get(&e) {
            return id;
        }
        let free = self.compute_free(&e);
        let id = ExprId(self.nodes.len() as u32);
        self.nodes.push(e.clone());
        self.types.push(ty);
        self.free.push(free);
        self.map.insert(e, id);
        id
    }
    /// Takes `id` out of the hash-consing map, so that adding its expression again makes a new
    /// node: for nodes whose meaning changed (reads of a renumbered table), which must not be
    /// found again for the expression in its new meaning (and type).
    pub fn forget(&mut self, id: ExprId) {
        let e = &self.nodes[id.ix()];
        if self.map.get(e) == Some(&id) {
            self.map.remove(e);
        }
    }
    fn compute_free(&self, e: &Expr) -> Vec<IndexId> {
        let mut out: Vec<IndexId> = match e {
            Expr::Index(i) => vec![*i],
            Expr::Reduce(_, i, body) => self.free[body.ix()]
                .iter()
                .copied()
                .filter(|x| x != i)
                .collect(),
            _ => {
                let mut v = Vec::new();
                e.for_each_child(|c| v.extend_from_slice(&self.free[c.ix()]));
                v
            }
        };
        out.sort();
        out.dedup();
        out
    }
    pub fn get(&self, id: ExprId) -> &Expr {
        &self.nodes[id.ix()]
    }
    pub fn ty(&self, id: ExprId) -> Ty {
        self.types[id.ix()]
    }
    /// The indices an expression depends on and does not reduce over, sorted.
    /// Whether a node reachable from `roots` (they included) satisfies `f`.
    pub fn reaches(&self, roots: &[ExprId], f: impl Fn(ExprId, &Expr) -> bool) -> bool {
        let mut stack = roots.to_vec();
        let mut seen = std::collections::HashSet::new();
        while let Some(e) = stack.pop() {
            if !seen.insert(e) {
                continue;
            }
            if f(e, self.get(e)) {
                return true;
            }
            self.get(e).for_each_child(|c| stack.push(c));
        }
        false
    }

    pub fn free(&self, id: ExprId) -> &[IndexId] {
        &self.free[id.ix()]
    }
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
    pub fn real(&mut self, v: f64) -> ExprId {
        self.add(Expr::Real(v.to_bits()), Ty::Real)
    }
    pub fn int(&mut self, v: i64) -> ExprId {
        self.add(Expr::Int(v), Ty::Int)
    }
}

impl Expr {
    /// Constants, indices, extents and parameters: nodes with no children.
    pub fn is_leaf(&self) -> bool {
        matches!(
            self,
            Expr::Real(_)
                | Expr::Int(_)
                | Expr::Bool(_)
                | Expr::Index(_)
                | Expr::Extent(_)
                | Expr::Param(_)
        )
    }

    pub fn for_each_child(&self, mut f: impl FnMut(ExprId)) {
        match self {
            Expr::Real(_)
            | Expr::Int(_)
            | Expr::Bool(_)
            | Expr::Index(_)
            | Expr::Extent(_)
            | Expr::Param(_) => {}
            Expr::Input(_, a) | Expr::Tensor(_, a) | Expr::Call(_, a) => {
                a.iter().for_each(|x| f(*x))
            }
            Expr::Unary(_, a) | Expr::Reduce(_, _, a) | Expr::StopGrad(a) => f(*a),
            Expr::Binary(_, a, b) => {
                f(*a);
                f(*b)
            }
            Expr::Select(c, a, b) => {
                f(*c);
                f(*a);
                f(*b)
            }
        }
    }

    /// The node with each child replaced by `f` of it (in the order of `for_each_child`).
    pub fn map_children(self, mut f: impl FnMut(ExprId) -> ExprId) -> Expr {
        match self {
            Expr::Input(i, a) => Expr::Input(i, a.into_iter().map(&mut f).collect()),
            Expr::Tensor(t, a) => Expr::Tensor(t, a.into_iter().map(&mut f).collect()),
            Expr::Call(c, a) => Expr::Call(c, a.into_iter().map(&mut f).collect()),
            Expr::Unary(op, a) => Expr::Unary(op, f(a)),
            Expr::Reduce(r, i, a) => Expr::Reduce(r, i, f(a)),
            Expr::StopGrad(a) => Expr::StopGrad(f(a)),
            Expr::Binary(op, a, b) => {
                let a = f(a);
                Expr::Binary(op, a, f(b))
            }
            Expr::Select(c, a, b) => {
                let c = f(c);
                let a = f(a);
                Expr::Select(c, a, f(b))
            }
            leaf => leaf,
        }
    }
}

/// Where an index's extent comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Extent {
    /// dimension `dim` of input `input` (after folding leading dimensions into the first)
    Input { input: InputId, dim: usize },
    /// a literal extent in a declaration (`boxes[n, 4]`)
    Fixed(i64),
    /// computed from other extents and int parameters (`u: 2 * S + 1`)
    Computed(ExprId),
}

#[derive(Clone, Debug)]
pub struct Index {
    pub name: String,
    pub extent: Extent,
}

#[derive(Clone, Debug)]
pub struct Input {
    pub name: String,
    pub ty: Ty,
    pub dims: Vec<IndexId>,
}

#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub ty: Ty,
    pub default: ExprId,
    /// the default as written, for `lossc show`
    pub default_src: String,
}

#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub ty: Ty,
    pub indices: Vec<IndexId>,
    pub body: ExprId,
    /// the value of reads outside the table (recurrences only)
    pub pad: Option<ExprId>,
    pub recurrent: bool,
    /// a recurrence that reads later cells: filled in reverse row-major order
    pub reverse: bool,
    /// an adjoint: starts at zero (its body), then accumulates contributions from passes
    pub accumulated: bool,
}

/// A backward pass: for every cell of `space` (in reverse row-major order when `reverse`, which
/// is how a recurrence's adjoint runs), every contribution adds its value into an accumulated
/// tensor. This is how gradients scatter: a gather `x[n, labels[n]]` gives a contribution whose
/// target index is `labels[n]`, and repeated ids accumulate.
#[derive(Clone, Debug)]
pub struct Pass {
    pub space: Vec<IndexId>,
    pub reverse: bool,
    pub contributions: Vec<Contribution>,
}

/// `target[index...] += value` for every point of the pass's cell times `extra` indices where
/// every guard holds. Guards are evaluated first and lazily (they are the conditions of the
/// `if`s the value sits under), so a value is only computed where the forward pass computed it.
#[derive(Clone, Debug)]
pub struct Contribution {
    pub extra: Vec<IndexId>,
    pub guards: Vec<ExprId>,
    pub target: TensorId,
    pub index: Vec<ExprId>,
    pub value: ExprId,
}

#[derive(Clone, Debug)]
pub struct Output {
    pub indices: Vec<IndexId>,
    pub body: ExprId,
}

/// One loss, checked and typed.
#[derive(Clone, Debug)]
pub struct Program {
    pub name: String,
    pub doc: String,
    pub inputs: Vec<Input>,
    pub params: Vec<Param>,
    pub indices: Vec<Index>,
    pub tensors: Vec<Tensor>,
    pub output: Output,
    pub pool: ExprPool,
    /// a source span for nodes that can fail at run time (loads, divisions), for messages
    pub spans: HashMap<ExprId, crate::diag::Span>,
    /// the loss's source text, for `lossc show`
    pub source: String,
    /// backward passes, run after the output (empty unless differentiated)
    pub passes: Vec<Pass>,
    /// for each differentiated input, the accumulated tensor holding its gradient
    pub grads: Vec<(InputId, TensorId)>,
}

impl Program {
    /// What index `i` ranges over, up to renaming: `Ok(k)` following `t2: extent(t)` chains
    /// (how a nested reduction's index is renamed apart) to the index they start from, or
    /// `Err(n)` for a literal extent `n` (`boxes[n, 4]`, `j: 4`). Indices with the same answer
    /// (`Err`: of at most the other's extent) may stand in each other's dimensions.
    pub fn range_of(&self, i: IndexId) -> std::result::Result<IndexId, i64> {
        let mut cur = i;
        for _ in 0..self.indices.len() {
            match &self.indices[cur.ix()].extent {
                Extent::Fixed(n) => return Err(*n),
                Extent::Computed(e) => match self.pool.get(*e) {
                    Expr::Extent(k) if *k != cur => cur = *k,
                    Expr::Int(n) => return Err(*n),
                    _ => break,
                },
                Extent::Input { .. } => break,
            }
        }
        Ok(cur)
    }

    /// Whether `args` read table `t` at its own cell (`t[i, j]` for `t[i, j]`): the
    /// read-only test of what [`Program::own_read`] builds.
    pub fn is_own_cell(&self, t: TensorId, args: &[ExprId]) -> bool {
        let dims = &self.tensors[t.ix()].indices;
        args.len() == dims.len()
            && args
                .iter()
                .zip(dims)
                .all(|(a, i)| matches!(self.pool.get(*a), Expr::Index(j) if j == i))
    }

    /// A read of table `t` at its own indices (`t[i, j]` for `t[i, j]`), typed `ty`.
    pub fn own_read(&mut self, t: TensorId, ty: Ty) -> ExprId {
        let args: Vec<ExprId> = self.tensors[t.ix()]
            .indices
            .clone()
            .into_iter()
            .map(|i| self.pool.add(Expr::Index(i), Ty::Int))
            .collect();
        self.pool.add(Expr::Tensor(t, args), ty)
    }

    pub fn input(&self, name: &str) -> Option<InputId> {
        self.inputs
            .iter()
            .position(|i| i.name == name)
            .map(|i| InputId(i as u32))
    }
    pub fn param(&self, name: &str) -> Option<ParamId> {
        self.params
            .iter()
            .position(|p| p.name == name)
            .map(|i| ParamId(i as u32))
    }
    /// The output's type.
    pub fn output_ty(&self) -> Ty {
        self.pool.ty(self.output.body)
    }
    /// The signature line, e.g. `focal_loss(labels[i], logits[i]; alpha = 0.25, gamma = 2.0) -> [i]`.
    pub fn signature(&self) -> String {
        let inputs: Vec<String> = self
            .inputs
            .iter()
            .map(|i| {
                let dims: Vec<String> = i.dims.iter().map(|d| self.index_label(*d)).collect();
                let ty = if i.ty == Ty::Real {
                    String::new()
                } else {
                    format!(": {}", i.ty)
                };
                if dims.is_empty() {
                    format!("{}{ty}", i.name)
                } else {
                    format!("{}[{}]{ty}", i.name, dims.join(", "))
                }
            })
            .collect();
        let params: Vec<String> = self
            .params
            .iter()
            .map(|p| format!("{} = {}", p.name, p.default_src))
            .collect();
        let out: Vec<String> = self
            .output
            .indices
            .iter()
            .map(|d| self.index_label(*d))
            .collect();
        let mut s = format!("{}({}", self.name, inputs.join(", "));
        if !params.is_empty() {
            s += &format!("; {}", params.join(", "));
        }
        s += &format!(") -> [{}]", out.join(", "));
        s
    }
    /// An index's name, or its literal extent for anonymous fixed dimensions.
    pub fn index_label(&self, i: IndexId) -> String {
        let ix = &self.indices[i.ix()];
        match ix.extent {
            Extent::Fixed(n) if ix.name.starts_with('#') => n.to_string(),
            _ => ix.name.clone(),
        }
    }
    /// Everything that determines the code compiled for this program (not its name, docs
    /// or spans), as a string: equal fingerprints compile to the same kernel.
    pub fn fingerprint(&self) -> String {
        let params: Vec<(&String, Ty, ExprId)> = self
            .params
            .iter()
            .map(|p| (&p.name, p.ty, p.default))
            .collect();
        format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            self.pool.nodes,
            self.pool.types,
            self.inputs,
            params,
            self.indices,
            self.tensors,
            self.output,
            self.passes,
            self.grads
        )
    }

    /// The first line of the doc comment.
    pub fn summary(&self) -> &str {
        self.doc.lines().next().unwrap_or("")
    }
}

/// All the losses of a compilation unit.
#[derive(Clone, Debug, Default)]
pub struct Module {
    pub losses: Vec<Program>,
}

impl Module {
    pub fn get(&self, name: &str) -> Option<&Program> {
        self.losses.iter().find(|l| l.name == name)
    }
}
