//! Reverse-mode symbolic differentiation: IR -> IR.
//!
//! [`differentiate`] takes a program whose output is the value to differentiate (a call's
//! reduction already written in; an output with indices is differentiated as the sum of its
//! elements) and returns the same program extended with an accumulated adjoint tensor for every
//! active tensor and differentiated input, and backward [`Pass`]es that fill them: one for the
//! output, then one per active tensor definition in reverse order. A recurrence's pass runs in
//! reverse row-major order, so the cells that read a cell have pushed their adjoints into it
//! before it pushes its own: this is the generic adjoint of a recurrence (for CTC, the
//! beta/posterior pass), with no loss-specific code.
//!
//! Within one definition, adjoints flow down the expression DAG in reverse topological order
//! (children have smaller ids than parents). An adjoint is a list of terms, each a value over a
//! space of indices (the definition's indices plus the indices of the reductions it sits in)
//! under guards (the conditions of the `if`s it sits in). Guards are kept apart from values so
//! that a partial derivative is only ever evaluated where the forward pass evaluated its
//! expression: an inf or NaN in an `if`'s dead branch never reaches a gradient. A table's
//! adjoint loses its guards when it is accumulated, so a table's pass is guarded by its cell's
//! adjoint being nonzero where some use of the table was guarded and some partial can be
//! non-finite (`Diff::risky`): a cell no taken branch reached pushes nothing, as an alias.
//!
//! The one rule table is [`Diff::push`]. Conventions at kinks: |x|' = 0 at 0 (sign), max/min
//! send the adjoint to the first arg-max, clamp passes the gradient on the closed interval
//! [lo, hi], stop_grad, comparisons, ints and bools carry none.

use crate::diag::{Error, ErrorKind, Result};
use crate::ir::{
    Bin, Contribution, Expr, ExprId, Func, IndexId, InputId, Pass, Program, Red, Tensor, TensorId,
    Ty, Un,
};
use std::collections::HashMap;

/// Terms of one node's adjoint over one space, under different guards, kept apart before they
/// are folded into one (see [`Diff::fold`]).
const FOLD_TERMS: usize = 4;

/// One term of an adjoint: `value` at every point of `space` where all `guards` hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Term {
    space: Vec<IndexId>,
    guards: Vec<ExprId>,
    value: ExprId,
}

/// Differentiates `p`'s output with respect to the given real inputs.
pub fn differentiate(p: &Program, wrt: &[InputId]) -> Result<Program> {
    for w in wrt {
        let inp = &p.inputs[w.ix()];
        if inp.ty != Ty::Real {
            return Err(Error::new(
                ErrorKind::NotDifferentiable,
                format!(
                    "input `{}` of `{}` is int: it is not differentiable",
                    inp.name, p.name
                ),
            ));
        }
    }
    let mut d = Diff::new(p.clone(), wrt);
    d.run();
    Ok(d.q)
}

struct Diff {
    q: Program,
    active: Vec<bool>,
    active_tensor: Vec<bool>,
    /// adjoint tensor of each forward tensor / input
    tensor_adj: HashMap<TensorId, TensorId>,
    input_adj: HashMap<InputId, TensorId>,
}

/// `t`'s space and guards, one more guard, and `value`.
fn guarded_by(t: &Term, value: ExprId, g: ExprId) -> Term {
    let mut guards = t.guards.clone();
    guards.push(g);
    Term {
        space: t.space.clone(),
        guards,
        value,
    }
}

impl Diff {
    fn new(q: Program, wrt: &[InputId]) -> Diff {
        let n_forward = q.tensors.len();
        let mut d = Diff {
            active: vec![],
            active_tensor: vec![false; n_forward],
            tensor_adj: HashMap::new(),
            input_adj: HashMap::new(),
            q,
        };
        // Activity: which tensors depend on a differentiated input (self-reads don't count).
        for k in 0..n_forward {
            let body = d.q.tensors[k].body;
            let is_real = d.q.tensors[k].ty == Ty::Real;
            let mut seen = HashMap::new();
            d.active_tensor[k] = is_real && d.depends(body, wrt, &mut seen);
        }
        let pool = &d.q.pool;
        let mut active = vec![false; pool.len()];
        for k in 0..pool.len() {
            let id = ExprId(k as u32);
            let real = pool.ty(id) == Ty::Real;
            active[k] = real
                && match pool.get(id) {
                    Expr::Input(i, _) => wrt.contains(i),
                    Expr::Tensor(t, _) => d.active_tensor[t.ix()],
                    Expr::StopGrad(_) => false,
                    e => {
                        let mut any = false;
                        e.for_each_child(|c| any |= active[c.ix()]);
                        any
                    }
                };
        }
        d.active = active;
        // Adjoint tensors: zero-filled, then accumulated.
        let zero = d.q.pool.real(0.0);
        for k in 0..n_forward {
            if d.active_tensor[k] {
                let t = &d.q.tensors[k];
                let adj = Tensor {
                    name: format!("{}_grad", t.name),
                    ty: Ty::Real,
                    indices: t.indices.clone(),
                    body: zero,
                    pad: None,
                    recurrent: false,
                    reverse: false,
                    accumulated: true,
                };
                d.q.tensors.push(adj);
                d.tensor_adj
                    .insert(TensorId(k as u32), TensorId((d.q.tensors.len() - 1) as u32));
            }
        }
        for w in wrt {
            let inp = &d.q.inputs[w.ix()];
            let adj = Tensor {
                name: format!("{}_grad", inp.name),
                ty: Ty::Real,
                indices: inp.dims.clone(),
                body: zero,
                pad: None,
                recurrent: false,
                reverse: false,
                accumulated: true,
            };
            d.q.tensors.push(adj);
            let id = TensorId((d.q.tensors.len() - 1) as u32);
            d.input_adj.insert(*w, id);
            d.q.grads.push((*w, id));
        }
        d
    }

    fn depends(&self, e: ExprId, wrt: &[InputId], seen: &mut HashMap<ExprId, bool>) -> bool {
        if let Some(v) = seen.get(&e) {
            return *v;
        }
        let pool = &self.q.pool;
        let v = match pool.get(e) {
            Expr::Input(i, _) => wrt.contains(i) && pool.ty(e) == Ty::Real,
            Expr::Tensor(t, _) => self.active_tensor.get(t.ix()).copied().unwrap_or(false),
            Expr::StopGrad(_) => false,
            other => {
                let mut any = false;
                other
                    .clone()
                    .for_each_child(|c| any = any || self.depends(c, wrt, seen));
                any
            }
        };
        seen.insert(e, v);
        v
    }

    fn run(&mut self) {
        let mut passes = Vec::new();
        // The output: seed 1 at every point of its index space.
        let out = self.q.output.clone();
        let one = self.q.pool.real(1.0);
        passes.push(self.pass(out.indices.clone(), false, out.body, one, vec![]));
        // Tensor definitions, last first: each seeded with its own adjoint at its own cell.
        let n_forward = self.active_tensor.len();
        for k in (0..n_forward).rev() {
            if !self.active_tensor[k] {
                continue;
            }
            let t = self.q.tensors[k].clone();
            let adj = self.tensor_adj[&TensorId(k as u32)];
            // (an adjoint has its tensor's indices)
            let seed = self.q.own_read(adj, Ty::Real);
            // A cell whose adjoint is exactly zero pushes nothing, as an alias under a dead
            // guard is never differentiated: when every contribution to it sat under a guard
            // that failed (`max(nrm[m], eps)` where eps wins, an `if`'s other branch), its
            // partials may be inf or NaN (sqrt' at 0), and 0 * inf must not reach an input.
            // Only where some contribution is guarded (or a recurrence's own ones may be) and
            // some partial can be non-finite: otherwise nothing changes.
            let guarded_uses = t.recurrent
                || passes.iter().any(|p: &Pass| {
                    p.contributions
                        .iter()
                        .any(|c| c.target == adj && !c.guards.is_empty())
                });
            let guards = if guarded_uses && self.risky(t.body) {
                let zero = self.real(0.0);
                vec![self.cmp(Bin::Ne, seed, zero)]
            } else {
                vec![]
            };
            // A recurrence's adjoint runs against its fill order.
            let mut pass = self.pass(
                t.indices.clone(),
                t.recurrent && !t.reverse,
                t.body,
                seed,
                guards,
            );
            if t.recurrent {
                self.share_tables(&t, &mut pass);
                self.reuse_value(&t, TensorId(k as u32), &mut pass);
            }
            passes.push(pass);
        }
        passes.retain(|p| !p.contributions.is_empty());
        self.q.passes = passes;
    }

    /// In a recurrence's own pass, the shares `exp(x_j - L)` of a `logsumexp` `L` of the
    /// previous cells (CTC's alpha) are read from tables `T_share{k}` over the recurrence's
    /// cells, `T_share{k}[cell] = exp(x_j - L)`, instead of being computed from a read-back of
    /// `L`: the forward fill has `L`'s exponentials and sum at hand, so the compiled fill stores
    /// `e_j / s` next to the recurrence's cell (the schedule fills them in its loop), and the
    /// backward pass is loads and products. The value is the same expression, so the
    /// interpreter's results do not change. Only for a `logsumexp` whose reads are at plain
    /// indices (`x[b, f - 1, u - 2]`): the fill computes it at every cell, before its branches.
    fn share_tables(&mut self, t: &crate::ir::Tensor, pass: &mut Pass) {
        let (mut conds, mut ls) = (Vec::new(), Vec::new());
        body_leaves(&self.q, t.body, &mut conds, &mut ls);
        let plain = |q: &Program, e: ExprId| {
            !q.pool.reaches(&[e], |_, x| match x {
                Expr::Tensor(_, args) | Expr::Input(_, args) => !args
                    .iter()
                    .all(|a| crate::ir::shifted_index(q, *a).is_some()),
                Expr::Reduce(..) => true,
                _ => false,
            })
        };
        let mut memo: HashMap<ExprId, ExprId> = HashMap::new();
        let roots: Vec<ExprId> = pass
            .contributions
            .iter()
            .flat_map(|c| std::iter::once(c.value).chain(c.guards.iter().copied()))
            .collect();
        for leaf in ls {
            let Expr::Binary(Bin::Add, x, y) = *self.q.pool.get(leaf) else {
                continue;
            };
            for l in [x, y] {
                let Expr::Call(Func::LogSumExp, args) = self.q.pool.get(l).clone() else {
                    continue;
                };
                if args.len() > 8 || !plain(&self.q, l) {
                    continue;
                }
                for a in &args {
                    let d = self.sub(*a, l);
                    let w = self.call(Func::Exp, vec![d]);
                    if memo.contains_key(&w) || !self.q.pool.reaches(&roots, |e, _| e == w) {
                        continue;
                    }
                    self.q.tensors.push(crate::ir::Tensor {
                        // numbered over the recurrence's shares, not the argument's
                        // place: a branch can hold two `logsumexp`s
                        name: format!("{}_share{}", t.name, memo.len()),
                        ty: Ty::Real,
                        indices: t.indices.clone(),
                        body: w,
                        pad: None,
                        recurrent: false,
                        reverse: false,
                        accumulated: false,
                    });
                    let id = TensorId((self.q.tensors.len() - 1) as u32);
                    let read = self.q.own_read(id, Ty::Real);
                    memo.insert(w, read);
                }
            }
        }
        if memo.is_empty() {
            return;
        }
        crate::opt::substitute_contributions(&mut self.q, &mut pass.contributions, &mut memo);
    }

    /// In a recurrence's own pass, a costly term `a` of a branch `a + b` of its body (CTC's
    /// `logsumexp` of the previous column plus the emission) is read back from the table as
    /// `T[cell] - b` rather than computed again: the pass only evaluates the derivative of `a`
    /// where the forward pass took that branch at that cell. When `b` is not finite the
    /// subtraction would not give `a` back, so `a` is computed then. Only when `a` occurs
    /// nowhere else in the body.
    fn reuse_value(&mut self, t: &crate::ir::Tensor, id: TensorId, pass: &mut Pass) {
        let costly = |q: &Program, e: ExprId| {
            let mut stack = vec![e];
            while let Some(x) = stack.pop() {
                match q.pool.get(x) {
                    Expr::Call(Func::LogSumExp, _) | Expr::Reduce(..) => return true,
                    Expr::Tensor(..) | Expr::Input(..) => {}
                    other => other.for_each_child(|c| stack.push(c)),
                }
            }
            false
        };
        let (mut conds, mut ls) = (Vec::new(), Vec::new());
        body_leaves(&self.q, t.body, &mut conds, &mut ls);
        let mut memo: HashMap<ExprId, ExprId> = HashMap::new();
        for (k, leaf) in ls.iter().enumerate() {
            let Expr::Binary(Bin::Add, x, y) = *self.q.pool.get(*leaf) else {
                continue;
            };
            let (a, b) = if costly(&self.q, x) && !costly(&self.q, y) {
                (x, y)
            } else if costly(&self.q, y) && !costly(&self.q, x) {
                (y, x)
            } else {
                continue;
            };
            let mut others: Vec<ExprId> = conds.clone();
            others.extend(
                ls.iter()
                    .enumerate()
                    .filter(|(j, _)| *j != k)
                    .map(|(_, e)| *e),
            );
            others.push(b);
            if self.q.pool.reaches(&others, |x, _| x == a) {
                continue;
            }
            let own = self.q.own_read(id, Ty::Real);
            let back = self.sub(own, b);
            let inf = self.real(f64::INFINITY);
            let ninf = self.real(f64::NEG_INFINITY);
            let above = self.cmp(Bin::Gt, b, ninf);
            let below = self.cmp(Bin::Lt, b, inf);
            let finite = self.and(above, below);
            let r = self.q.pool.add(Expr::Select(finite, back, a), Ty::Real);
            memo.insert(a, r);
        }
        if memo.is_empty() {
            return;
        }
        crate::opt::substitute_contributions(&mut self.q, &mut pass.contributions, &mut memo);
    }

    /// Whether some partial derivative below `root` (within one definition) can be inf or
    /// NaN, so that a zero adjoint times it is not zero: anything but sums, differences,
    /// negation, branches, selections (max, min, clamp, their reductions), means and products
    /// or quotients by finite constants.
    fn risky(&self, root: ExprId) -> bool {
        let pool = &self.q.pool;
        let finite_const = |x: ExprId| {
            matches!(pool.get(x), Expr::Real(b) if f64::from_bits(*b).is_finite())
                || matches!(pool.get(x), Expr::Int(_))
        };
        let mut seen = vec![false; pool.len()];
        let mut stack = vec![root];
        while let Some(e) = stack.pop() {
            if std::mem::replace(&mut seen[e.ix()], true) || !self.active[e.ix()] {
                continue;
            }
            let safe = match pool.get(e) {
                Expr::Input(..) | Expr::Tensor(..) => continue, // index arguments carry none
                Expr::Unary(Un::Neg, _) | Expr::Select(..) => true,
                Expr::Binary(Bin::Add | Bin::Sub, ..) => true,
                Expr::Binary(Bin::Mul, a, b) => finite_const(*a) || finite_const(*b),
                Expr::Binary(Bin::Div, _, b) => {
                    matches!(pool.get(*b), Expr::Real(v) if f64::from_bits(*v).is_finite() && f64::from_bits(*v) != 0.0)
                }
                Expr::Reduce(Red::Sum | Red::Mean | Red::Max | Red::Min, ..) => true,
                Expr::Call(Func::Max | Func::Min | Func::Clamp, _) => true,
                _ => false,
            };
            if !safe {
                return true;
            }
            pool.get(e).clone().for_each_child(|c| stack.push(c));
        }
        false
    }

    /// Backpropagates `seed` from `root` over the cells of `space`, under `guards`.
    fn pass(
        &mut self,
        space: Vec<IndexId>,
        reverse: bool,
        root: ExprId,
        seed: ExprId,
        guards: Vec<ExprId>,
    ) -> Pass {
        let mut contributions = Vec::new();
        if !self.active[root.ix()] {
            return Pass {
                space,
                reverse,
                contributions,
            };
        }
        let mut sorted = space.clone();
        sorted.sort();
        let mut adj: HashMap<ExprId, Vec<Term>> = HashMap::new();
        adj.insert(
            root,
            vec![Term {
                space: sorted,
                guards,
                value: seed,
            }],
        );
        // Reachable active nodes, parents before children (descending ids).
        let mut nodes = Vec::new();
        let mut seen = vec![false; self.q.pool.len()];
        let mut stack = vec![root];
        while let Some(e) = stack.pop() {
            if seen[e.ix()] || !self.active[e.ix()] {
                continue;
            }
            seen[e.ix()] = true;
            nodes.push(e);
            if matches!(self.q.pool.get(e), Expr::Input(..) | Expr::Tensor(..)) {
                continue; // index arguments carry no gradient
            }
            self.q.pool.get(e).clone().for_each_child(|c| stack.push(c));
        }
        nodes.sort_by(|a, b| b.cmp(a));
        for e in nodes {
            let Some(terms) = adj.remove(&e) else {
                continue;
            };
            for t in self.merge(terms) {
                match self.q.pool.get(e).clone() {
                    Expr::Input(i, args) => {
                        if let Some(target) = self.input_adj.get(&i).copied() {
                            contributions.push(self.contribution(&space, t, target, args));
                        }
                    }
                    Expr::Tensor(k, args) => {
                        if let Some(target) = self.tensor_adj.get(&k).copied() {
                            contributions.push(self.contribution(&space, t, target, args));
                        }
                    }
                    _ => {
                        for (child, term) in self.push(e, t) {
                            if self.active[child.ix()] {
                                adj.entry(child).or_default().push(term);
                            }
                        }
                    }
                }
            }
        }
        Pass {
            space,
            reverse,
            contributions,
        }
    }

    fn contribution(
        &self,
        space: &[IndexId],
        t: Term,
        target: TensorId,
        index: Vec<ExprId>,
    ) -> Contribution {
        let extra = t
            .space
            .iter()
            .copied()
            .filter(|i| !space.contains(i))
            .collect();
        Contribution {
            extra,
            guards: t.guards,
            target,
            index,
            value: t.value,
        }
    }

    /// Terms over the same space under the same guards add up into one. More than
    /// [`FOLD_TERMS`] terms over one space (under different guards) are folded into one.
    fn merge(&mut self, terms: Vec<Term>) -> Vec<Term> {
        let mut out: Vec<Term> = Vec::new();
        for t in terms {
            match out
                .iter_mut()
                .find(|o| o.space == t.space && o.guards == t.guards)
            {
                Some(o) => o.value = self.add(o.value, t.value),
                None => out.push(t),
            }
        }
        let mut spaces: Vec<Vec<IndexId>> = Vec::new();
        for t in &out {
            if !spaces.contains(&t.space) {
                spaces.push(t.space.clone());
            }
        }
        for sp in spaces {
            if out.iter().filter(|t| t.space == sp).count() > FOLD_TERMS {
                let (group, rest): (Vec<Term>, Vec<Term>) =
                    out.into_iter().partition(|t| t.space == sp);
                out = rest;
                out.push(self.fold(group));
            }
        }
        out
    }

    /// Terms over one space as one: guarded by the guards they all begin with and by the
    /// disjunction of the rest (so the node's partial derivatives are still evaluated only
    /// where the forward pass evaluated the node), each term's value selected by its own rest.
    /// Without this, a node used twice, once under a guard (`logsumexp(a, x) / sigmoid(a)`),
    /// doubles the guard combinations of every node below it.
    fn fold(&mut self, group: Vec<Term>) -> Term {
        let first = &group[0].guards;
        let common = (0..first.len())
            .take_while(|&k| group.iter().all(|t| t.guards.get(k) == Some(&first[k])))
            .count();
        let mut guards = first[..common].to_vec();
        let space = group[0].space.clone();
        let mut value = self.real(0.0);
        let mut any: Option<ExprId> = None;
        let mut always = false;
        for t in group {
            let rest = &t.guards[common..];
            let v = match rest.split_first() {
                None => {
                    always = true;
                    t.value
                }
                Some((g, more)) => {
                    let c = more.iter().fold(*g, |c, m| self.and(c, *m));
                    any = Some(match any {
                        Some(a) => self.q.pool.add(Expr::Binary(Bin::Or, a, c), Ty::Bool),
                        None => c,
                    });
                    let zero = self.real(0.0);
                    self.q.pool.add(Expr::Select(c, t.value, zero), Ty::Real)
                }
            };
            value = self.add(value, v);
        }
        if let (false, Some(a)) = (always, any) {
            guards.push(a);
        }
        Term {
            space,
            guards,
            value,
        }
    }

    // ---- expression builders with the obvious folds ----

    fn real(&mut self, v: f64) -> ExprId {
        self.q.pool.real(v)
    }
    fn is_real(&self, e: ExprId, v: f64) -> bool {
        matches!(self.q.pool.get(e), Expr::Real(b) if f64::from_bits(*b) == v)
    }
    fn bin(&mut self, op: Bin, a: ExprId, b: ExprId) -> ExprId {
        self.q.pool.add(Expr::Binary(op, a, b), Ty::Real)
    }
    fn add(&mut self, a: ExprId, b: ExprId) -> ExprId {
        if self.is_real(a, 0.0) {
            return b;
        }
        if self.is_real(b, 0.0) {
            return a;
        }
        self.bin(Bin::Add, a, b)
    }
    fn mul(&mut self, a: ExprId, b: ExprId) -> ExprId {
        if self.is_real(a, 1.0) {
            return b;
        }
        if self.is_real(b, 1.0) {
            return a;
        }
        self.bin(Bin::Mul, a, b)
    }
    fn div(&mut self, a: ExprId, b: ExprId) -> ExprId {
        self.bin(Bin::Div, a, b)
    }
    fn sub(&mut self, a: ExprId, b: ExprId) -> ExprId {
        self.bin(Bin::Sub, a, b)
    }
    fn neg(&mut self, a: ExprId) -> ExprId {
        if let Expr::Unary(Un::Neg, x) = self.q.pool.get(a) {
            return *x;
        }
        self.q.pool.add(Expr::Unary(Un::Neg, a), Ty::Real)
    }
    fn call(&mut self, f: Func, args: Vec<ExprId>) -> ExprId {
        self.q.pool.add(Expr::Call(f, args), Ty::Real)
    }
    fn cmp(&mut self, op: Bin, a: ExprId, b: ExprId) -> ExprId {
        self.q.pool.add(Expr::Binary(op, a, b), Ty::Bool)
    }
    fn and(&mut self, a: ExprId, b: ExprId) -> ExprId {
        self.q.pool.add(Expr::Binary(Bin::And, a, b), Ty::Bool)
    }
    fn not(&mut self, a: ExprId) -> ExprId {
        self.q.pool.add(Expr::Unary(Un::Not, a), Ty::Bool)
    }
    fn promote(&mut self, a: ExprId) -> ExprId {
        match self.q.pool.get(a) {
            Expr::Int(v) => {
                let v = *v as f64;
                self.real(v)
            }
            _ if self.q.pool.ty(a) == Ty::Real => a,
            _ => self.q.pool.add(Expr::Unary(Un::ToReal, a), Ty::Real),
        }
    }

    /// The rule table: the terms `e`'s adjoint term `t` sends to each of `e`'s children.
    fn push(&mut self, e: ExprId, t: Term) -> Vec<(ExprId, Term)> {
        let v = t.value;
        let with = |value: ExprId| Term {
            space: t.space.clone(),
            guards: t.guards.clone(),
            value,
        };
        let guarded = |g: ExprId| guarded_by(&t, v, g);
        match self.q.pool.get(e).clone() {
            Expr::Unary(Un::Neg, a) => {
                let n = self.neg(v);
                vec![(a, with(n))]
            }
            Expr::Binary(op, a, b) => match op {
                Bin::Add => vec![(a, with(v)), (b, with(v))],
                Bin::Sub => {
                    let n = self.neg(v);
                    vec![(a, with(v)), (b, with(n))]
                }
                Bin::Mul => {
                    let va = self.mul(v, b);
                    let vb = self.mul(v, a);
                    vec![(a, with(va)), (b, with(vb))]
                }
                Bin::Div => {
                    // d(a/b)/db = -(v / b) (a / b): the same two roundings as -(v (a / b)) / b,
                    // and `v / b` is d/da's, so a quotient costs one division, not two.
                    let va = self.div(v, b);
                    let q = self.mul(va, e);
                    let vb = self.neg(q);
                    vec![(a, with(va)), (b, with(vb))]
                }
                Bin::Rem => {
                    let q = self.div(a, b);
                    let f = self.call(Func::Floor, vec![q]);
                    let m = self.mul(v, f);
                    let vb = self.neg(m);
                    vec![(a, with(v)), (b, with(vb))]
                }
                Bin::Pow => self.pow_rule(e, a, b, &t),
                _ => vec![],
            },
            Expr::Call(f, args) => self.call_rule(e, f, &args, &t),
            Expr::Select(c, a, b) => {
                let nc = self.not(c);
                vec![(a, guarded(c)), (b, guarded(nc))]
            }
            Expr::Reduce(red, i, body) => {
                let mut space = t.space.clone();
                if !space.contains(&i) {
                    space.push(i);
                    space.sort();
                }
                let term = |value: ExprId, guards: Vec<ExprId>| Term {
                    space: space.clone(),
                    guards,
                    value,
                };
                match red {
                    Red::Sum => vec![(body, term(v, t.guards.clone()))],
                    Red::Mean => {
                        let n = self.q.pool.add(Expr::Extent(i), Ty::Int);
                        let n = self.promote(n);
                        let vv = self.div(v, n);
                        vec![(body, term(vv, t.guards.clone()))]
                    }
                    Red::LogSumExp => {
                        // A -inf term has weight 0, also when every term is -inf (where
                        // exp(-inf - -inf) would be NaN): unreachable CTC states stay at 0.
                        let d = self.sub(body, e);
                        let w = self.call(Func::Exp, vec![d]);
                        let vv = self.mul(v, w);
                        let ninf = self.real(f64::NEG_INFINITY);
                        let finite = self.cmp(Bin::Ne, body, ninf);
                        let mut g = t.guards.clone();
                        g.push(finite);
                        vec![(body, term(vv, g))]
                    }
                    Red::Max | Red::Min => {
                        // One-hot at the first index where the body attains the extremum.
                        let hit = self.cmp(Bin::Eq, body, e);
                        let ix = self.q.pool.add(Expr::Index(i), Ty::Int);
                        let n = self.q.pool.add(Expr::Extent(i), Ty::Int);
                        let sel = self.q.pool.add(Expr::Select(hit, ix, n), Ty::Int);
                        let first = self.q.pool.add(Expr::Reduce(Red::Min, i, sel), Ty::Int);
                        let at = self.cmp(Bin::Eq, ix, first);
                        let mut g = t.guards.clone();
                        g.push(at);
                        vec![(body, term(v, g))]
                    }
                }
            }
            _ => vec![],
        }
    }

    fn pow_rule(&mut self, e: ExprId, a: ExprId, b: ExprId, t: &Term) -> Vec<(ExprId, Term)> {
        let v = t.value;
        let with = |value: ExprId| Term {
            space: t.space.clone(),
            guards: t.guards.clone(),
            value,
        };
        let mut out = Vec::new();
        if self.q.pool.ty(b) == Ty::Int {
            // n a^(n-1), with a^1 and a^0 folded
            let da = match self.q.pool.get(b).clone() {
                Expr::Int(0) => None,
                Expr::Int(1) => Some(v),
                Expr::Int(2) => {
                    let two = self.real(2.0);
                    let ta = self.mul(two, a);
                    Some(self.mul(v, ta))
                }
                Expr::Int(_) => {
                    let one = self.q.pool.int(1);
                    let nm1 = self.q.pool.add(Expr::Binary(Bin::Sub, b, one), Ty::Int);
                    let pw = self.q.pool.add(Expr::Binary(Bin::Pow, a, nm1), Ty::Real);
                    let n = self.promote(b);
                    let np = self.mul(n, pw);
                    Some(self.mul(v, np))
                }
                _ => {
                    // a variable n (a parameter): where it is 0, a^0 = 1 has no gradient, even
                    // at a = 0 where 0 a^-1 would be NaN
                    let one = self.q.pool.int(1);
                    let nm1 = self.q.pool.add(Expr::Binary(Bin::Sub, b, one), Ty::Int);
                    let pw = self.q.pool.add(Expr::Binary(Bin::Pow, a, nm1), Ty::Real);
                    let n = self.promote(b);
                    let np = self.mul(n, pw);
                    let da = self.mul(v, np);
                    let zero = self.q.pool.int(0);
                    let nz = self.q.pool.add(Expr::Binary(Bin::Ne, b, zero), Ty::Bool);
                    out.push((a, guarded_by(t, da, nz)));
                    None
                }
            };
            if let Some(da) = da {
                out.push((a, with(da)));
            }
        } else {
            // (a constant exponent 0: a^0 = 1 has no gradient, even where a^-1 is inf)
            let zero_exp =
                matches!(self.q.pool.get(b), Expr::Real(bits) if f64::from_bits(*bits) == 0.0);
            if !zero_exp {
                let one = self.real(1.0);
                let bm1 = self.sub(b, one);
                let pw = self.bin(Bin::Pow, a, bm1);
                let bp = self.mul(b, pw);
                let da = self.mul(v, bp);
                if matches!(self.q.pool.get(b), Expr::Real(_)) {
                    out.push((a, with(da)));
                } else {
                    // (a variable exponent that is 0 here: no gradient, as for a constant 0)
                    let zero = self.real(0.0);
                    let nz = self.cmp(Bin::Ne, b, zero);
                    out.push((a, guarded_by(t, da, nz)));
                }
            }
            // d/db a^b = a^b log a; 0 where a == 0 (the limit from the right for b > 0).
            let zero = self.real(0.0);
            let nz = self.cmp(Bin::Ne, a, zero);
            let la = self.call(Func::Log, vec![a]);
            let el = self.mul(e, la);
            let db = self.mul(v, el);
            out.push((b, guarded_by(t, db, nz)));
        }
        out
    }

    /// `x` as `log y + r` (either order), `y` real.
    fn log_term(&self, x: ExprId) -> Option<(ExprId, ExprId)> {
        let pool = &self.q.pool;
        let Expr::Binary(Bin::Add, a, b) = pool.get(x) else {
            return None;
        };
        let log_of = |z: ExprId| match pool.get(z) {
            Expr::Call(Func::Log, y) if pool.ty(y[0]) == Ty::Real => Some(y[0]),
            _ => None,
        };
        match (log_of(*a), log_of(*b)) {
            (Some(y), _) => Some((y, *b)),
            (None, Some(y)) => Some((y, *a)),
            _ => None,
        }
    }

    fn call_rule(&mut self, e: ExprId, f: Func, args: &[ExprId], t: &Term) -> Vec<(ExprId, Term)> {
        let v = t.value;
        let with = |value: ExprId| Term {
            space: t.space.clone(),
            guards: t.guards.clone(),
            value,
        };
        let guarded = |value: ExprId, g: ExprId| guarded_by(t, value, g);
        let a = args.first().copied().unwrap_or(e);
        let one = self.real(1.0);
        let unary = |d: &mut Diff, partial: ExprId| -> Vec<(ExprId, Term)> {
            let m = d.mul(v, partial);
            vec![(a, with(m))]
        };
        match f {
            Func::Exp => unary(self, e),
            Func::Log => {
                let q = self.div(v, a);
                vec![(a, with(q))]
            }
            Func::Log1p => {
                let s = self.add(one, a);
                let q = self.div(v, s);
                vec![(a, with(q))]
            }
            Func::Expm1 => {
                let s = self.add(e, one);
                unary(self, s)
            }
            Func::Sqrt => {
                let half = self.real(0.5);
                let h = self.mul(v, half);
                let q = self.div(h, e);
                vec![(a, with(q))]
            }
            Func::Abs => {
                let s = self.call(Func::Sign, vec![a]);
                unary(self, s)
            }
            Func::Sigmoid => {
                let c = self.sub(one, e);
                let p = self.mul(e, c);
                unary(self, p)
            }
            Func::Softplus => {
                let s = self.call(Func::Sigmoid, vec![a]);
                unary(self, s)
            }
            Func::LogSigmoid => {
                let na = self.neg(a);
                let s = self.call(Func::Sigmoid, vec![na]);
                unary(self, s)
            }
            Func::Tanh => {
                let sq = self.mul(e, e);
                let c = self.sub(one, sq);
                unary(self, c)
            }
            Func::Sin => {
                let c = self.call(Func::Cos, vec![a]);
                unary(self, c)
            }
            Func::Cos => {
                let s = self.call(Func::Sin, vec![a]);
                let m = self.mul(v, s);
                let n = self.neg(m);
                vec![(a, with(n))]
            }
            Func::Atan => {
                let sq = self.mul(a, a);
                let s = self.add(one, sq);
                let q = self.div(v, s);
                vec![(a, with(q))]
            }
            Func::Acos => {
                let sq = self.mul(a, a);
                let c = self.sub(one, sq);
                let r = self.call(Func::Sqrt, vec![c]);
                let q = self.div(v, r);
                let n = self.neg(q);
                vec![(a, with(n))]
            }
            Func::Max | Func::Min => {
                // The first argument equal to the result takes the adjoint.
                let mut out = Vec::new();
                let mut earlier_missed: Option<ExprId> = None;
                for x in args {
                    let hit = self.cmp(Bin::Eq, *x, e);
                    let g = match earlier_missed {
                        Some(m) => self.and(m, hit),
                        None => hit,
                    };
                    out.push((*x, guarded(v, g)));
                    let miss = self.cmp(Bin::Ne, *x, e);
                    earlier_missed = Some(match earlier_missed {
                        Some(m) => self.and(m, miss),
                        None => miss,
                    });
                }
                out
            }
            Func::LogSumExp => {
                let ninf = self.real(f64::NEG_INFINITY);
                let mut out = Vec::new();
                for x in args {
                    let d = self.sub(*x, e);
                    let w = self.call(Func::Exp, vec![d]);
                    let m = self.mul(v, w);
                    let finite = self.cmp(Bin::Ne, *x, ninf);
                    if let Some((y, r)) = self.log_term(*x) {
                        // x = log y + r: y's share of v e^(x - L) is v e^(x - L) / y =
                        // v e^(r - L), which stays right at y = 0, where x is -inf and 1/y
                        // infinite (the weights of a mixture log(y s1 + w s2), opt's stable
                        // form of (y s1 + w s2)^g, at hard labels y = 0 or 1).
                        out.push((r, guarded(m, finite)));
                        let dr = self.sub(r, e);
                        let wr = self.call(Func::Exp, vec![dr]);
                        let my = self.mul(v, wr);
                        let some = self.cmp(Bin::Ne, e, ninf);
                        out.push((y, guarded(my, some)));
                        continue;
                    }
                    out.push((*x, guarded(m, finite)));
                }
                out
            }
            Func::Clamp => {
                let (x, lo, hi) = (args[0], args[1], args[2]);
                let ge = self.cmp(Bin::Ge, x, lo);
                let le = self.cmp(Bin::Le, x, hi);
                let inside = self.and(ge, le);
                // Crossed bounds (lo > hi) give hi whatever x is (as torch.clamp): then hi
                // takes the gradient, lo none.
                let below = self.cmp(Bin::Lt, x, lo);
                let ordered = self.cmp(Bin::Le, lo, hi);
                let below = self.and(below, ordered);
                let above = self.cmp(Bin::Gt, x, hi);
                let crossed = self.cmp(Bin::Gt, lo, hi);
                let above = self
                    .q
                    .pool
                    .add(Expr::Binary(Bin::Or, above, crossed), Ty::Bool);
                vec![
                    (x, guarded(v, inside)),
                    (lo, guarded(v, below)),
                    (hi, guarded(v, above)),
                ]
            }
            Func::Xlogy => {
                let (x, y) = (args[0], args[1]);
                let zero = self.real(0.0);
                let nz = self.cmp(Bin::Ne, x, zero);
                let ly = self.call(Func::Log, vec![y]);
                let dx = self.mul(v, ly);
                let vx = self.mul(v, x);
                let dy = self.div(vx, y);
                vec![(x, guarded(dx, nz)), (y, with(dy))]
            }
            Func::Sign | Func::Floor | Func::Ceil | Func::IsNan | Func::IsInf => vec![],
        }
    }
}

/// The leaves of a body's `if` tree, and the conditions on the way.
fn body_leaves(q: &Program, e: ExprId, conds: &mut Vec<ExprId>, out: &mut Vec<ExprId>) {
    match q.pool.get(e) {
        Expr::Select(c, a, b) => {
            conds.push(*c);
            body_leaves(q, *a, conds, out);
            body_leaves(q, *b, conds, out);
        }
        _ => out.push(e),
    }
}
