//! The simplifier: IR -> IR, value for value (or more accurately).
//!
//! [`simplify`] rebuilds every expression of a program bottom-up through one rewrite function,
//! [`Opt::rewrite`], in three groups, each tested on its own:
//! - constant folding (numbers only; never across NaN-producing cases),
//! - algebraic identities (`x + 0`, `x * 1`, `--x`, `x ^ 1`, `x + -y`, ...), and
//! - numerically stable rewrites: `log(sigmoid(x))` -> `log_sigmoid(x)` (= -softplus(-x)),
//!   `log(1 - sigmoid(x))` -> `log_sigmoid(-x)`, `1 - sigmoid(x)` -> `sigmoid(-x)`,
//!   `log(1 + x)` -> `log1p(x)`, `exp(x) - 1` -> `expm1(x)`, `log(exp(x))` -> `x`,
//!   `log(sum(c: exp(x)))` -> `logsumexp(c: x)`, `log(exp(x) / sum(c: exp(x)))` ->
//!   `x - logsumexp(c: x)`, and `q ^ g` -> `exp(g * log q)` where `log q` has a stable form
//!   (q a product of sigmoids and exps, or a mix `y σ(a) + w σ(b)` of two with non-negative
//!   weights — focal loss's 1 - p_t), which keeps focal loss's gradient finite where p_t
//!   rounds to 1.
//!
//! Common subexpressions are shared by construction (the pool hash-conses).

use crate::ir::{Bin, Expr, ExprId, Extent, Func, IndexId, Program, Red, TensorId, Ty, Un};
use std::collections::HashMap;

mod bounds;
pub use bounds::merge_bounds;

/// Simplifies every expression of `p` (definitions, output, parameters, extents, passes).
pub fn simplify(p: &Program) -> Program {
    simplify_baked(p, &[])
}

/// A constant value for a parameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Const {
    Real(f64),
    Int(i64),
    Bool(bool),
}

/// [`simplify`] with some parameters replaced by constants first ("baked"), so that what
/// depends on them folds away (`gamma == 0.0` branches, `x ^ 2` powers).
pub fn simplify_baked(p: &Program, bake: &[(crate::ir::ParamId, Const)]) -> Program {
    let mut q = p.clone();
    let mut o = Opt {
        memo: HashMap::new(),
    };
    for (id, v) in bake {
        let ty = q.params[id.ix()].ty;
        let node = q.pool.add(Expr::Param(*id), ty);
        let c = match (ty, v) {
            (Ty::Real, Const::Real(x)) => q.pool.real(*x),
            (Ty::Real, Const::Int(x)) => q.pool.real(*x as f64),
            (Ty::Int, Const::Int(x)) => q.pool.int(*x),
            (Ty::Bool, Const::Bool(b)) => q.pool.add(Expr::Bool(*b), Ty::Bool),
            _ => continue,
        };
        o.memo.insert(node, c);
    }
    substituted(p, q, o)
}

/// The program with parameters `ids` replaced by their default expressions, simplified (a
/// default that reads the inputs, `beta = stop_grad(1 - mean(i: labels[i]))`, is then
/// computed by the kernel, once, instead of by the interpreter before each call). Their
/// entries stay in `params` (a caller still passes a value; it is not read).
pub fn inline_defaults(p: &Program, ids: &[crate::ir::ParamId]) -> Program {
    let mut q = p.clone();
    let mut o = Opt {
        memo: HashMap::new(),
    };
    // (in order: a default may name an earlier parameter)
    for id in ids {
        let ty = q.params[id.ix()].ty;
        let node = q.pool.add(Expr::Param(*id), ty);
        let d = q.params[id.ix()].default;
        let e = o.expr(&mut q, d);
        o.memo.insert(node, e);
    }
    substituted(p, q, o)
}

/// `q` (a copy of `p`) with every expression rewritten by `o` (which knows the substitutions).
fn substituted(p: &Program, mut q: Program, mut o: Opt) -> Program {
    for k in 0..q.params.len() {
        let d = q.params[k].default;
        q.params[k].default = o.expr(&mut q, d);
    }
    for k in 0..q.indices.len() {
        if let Extent::Computed(e) = q.indices[k].extent {
            let e2 = o.expr(&mut q, e);
            q.indices[k].extent = Extent::Computed(e2);
        }
    }
    for k in 0..q.tensors.len() {
        let b = q.tensors[k].body;
        q.tensors[k].body = o.expr(&mut q, b);
        if let Some(pad) = q.tensors[k].pad {
            q.tensors[k].pad = Some(o.expr(&mut q, pad));
        }
    }
    let ob = q.output.body;
    q.output.body = o.expr(&mut q, ob);
    let mut passes = std::mem::take(&mut q.passes);
    for pass in &mut passes {
        for c in &mut pass.contributions {
            c.value = o.expr(&mut q, c.value);
            c.guards = c.guards.iter().map(|g| o.expr(&mut q, *g)).collect();
            c.index = c.index.iter().map(|g| o.expr(&mut q, *g)).collect();
        }
    }
    q.passes = passes;
    reuse_tables(&mut q);
    reuse_exponentials(&mut q);
    pull_recurrence_adjoints(&mut q);
    // Keep the spans of rebuilt loads for run-time messages.
    let mut spans: Vec<(ExprId, crate::diag::Span)> =
        p.spans.iter().map(|(k, v)| (*k, *v)).collect();
    spans.sort_by_key(|(k, _)| *k); // (deterministic: the earliest node's span wins)
    for (old, span) in spans {
        if let Some(new) = o.memo.get(&old) {
            q.spans.entry(*new).or_insert(span);
        }
    }
    q
}

/// Backward passes read tables the forward pass filled instead of recomputing them: a node
/// equal to a table's body (one that holds a reduction, over exactly the table's indices) is
/// replaced by a read of the table at its own indices. The derivative of `logsumexp(c: x)` is
/// `exp(x - logsumexp(c: x))`, so without this softmax cross-entropy's gradient would compute
/// every row's logsumexp a second time.
fn reuse_tables(q: &mut Program) {
    let mut reads = Vec::new();
    for (k, t) in q.tensors.iter().enumerate() {
        if t.recurrent || t.accumulated || t.pad.is_some() {
            continue;
        }
        let mut free = q.pool.free(t.body).to_vec();
        free.sort();
        let mut dims = t.indices.clone();
        dims.sort();
        dims.dedup();
        if free != dims
            || dims.len() != t.indices.len()
            || !q
                .pool
                .reaches(&[t.body], |_, x| matches!(x, Expr::Reduce(..)))
        {
            continue;
        }
        reads.push((t.body, TensorId(k as u32), t.ty));
    }
    if reads.is_empty() {
        return;
    }
    let mut memo: HashMap<ExprId, ExprId> = HashMap::new();
    for (body, t, ty) in reads {
        let read = q.own_read(t, ty);
        memo.entry(body).or_insert(read);
    }
    substitute_passes(q, &mut memo);
}

/// Softmax gradients reuse their logsumexp's exponentials. The derivative of
/// `lse[n] = logsumexp(c: x)` is `exp(x - lse[n])`: computed as such, a softmax cross-entropy
/// takes two exponentials per element (one in the logsumexp, one in the gradient). When a pass
/// holds that node and nothing but the output and the passes reads `lse`, the table is split into
///
/// ```text
/// lse_max[n] = max(c: x)
/// lse_exp[n, c] = exp(x - lse_max[n])
/// lse_sum[n] = if lse_max[n] < inf { sum(c: lse_exp[n, c]) } else { 1.0 }
/// lse[n] = if |lse_max[n]| < inf { lse_max[n] + log(lse_sum[n]) } else { lse_max[n] }
/// ```
///
/// (the logsumexp as both backends computed it) and the passes read
/// `lse_exp[n, c] / lse_sum[n]`: one exponential per element. This equals `exp(x - lse[n])` in
/// every special case (a `+inf` maximum: 0 for finite `x`, NaN for `x = +inf`; a `-inf` or NaN
/// maximum: NaN) and is within a rounding or two of it elsewhere. The table costs the memory of
/// the logits (per row block in compiled calls), so a body holding a reduction is left alone.
fn reuse_exponentials(q: &mut Program) {
    if q.passes.is_empty() {
        return;
    }
    // (the tables a split adds come right after the maximum, and are visited and passed over)
    let mut k = 0;
    while k < q.tensors.len() {
        k += 1;
        let k = k - 1;
        // (anew each time: a split renumbers the tables, so the passes' nodes change)
        let roots: Vec<ExprId> = q
            .passes
            .iter()
            .flat_map(|p| p.contributions.iter())
            .flat_map(|c| c.guards.iter().copied().chain([c.value]))
            .collect();
        let t = &q.tensors[k];
        if t.recurrent || t.accumulated || t.pad.is_some() || t.ty != Ty::Real {
            continue;
        }
        let Expr::Reduce(Red::LogSumExp, c, b) = q.pool.get(t.body).clone() else {
            continue;
        };
        let mut dims = t.indices.clone();
        dims.sort();
        dims.dedup();
        let mut body_free = q.pool.free(b).to_vec();
        body_free.retain(|i| *i != c);
        if dims.len() != t.indices.len() || t.indices.contains(&c) || body_free != dims {
            continue;
        }
        // A body that reduces (a fused linear cross-entropy's `sum(d: x[n, d] * w[d, c])`) is
        // left alone: its exponentials' table would be the `[n, c]` product it avoids.
        if q.pool.reaches(&[b], |_, x| matches!(x, Expr::Reduce(..))) {
            continue;
        }
        let (name, indices) = (t.name.clone(), t.indices.clone());
        let tid = TensorId(k as u32);
        // (other tables may read it: CTC's `emit[b, t, u] = logits[..] - lse[b, t]`; the new
        // tables are filled before them)
        let own = q.own_read(tid, Ty::Real);
        let diff = q.pool.add(Expr::Binary(Bin::Sub, b, own), Ty::Real);
        let grad = q.pool.add(Expr::Call(Func::Exp, vec![diff]), Ty::Real);
        if !q.pool.reaches(&roots, |e, _| e == grad) {
            continue;
        }
        // The slot becomes the maximum (filled first); the others follow every table.
        let real = |q: &mut Program, v: f64| q.pool.real(v);
        q.tensors[k].body = q.pool.add(Expr::Reduce(Red::Max, c, b), Ty::Real);
        q.tensors[k].name = fresh_name(q, &format!("{name}_max"));
        let add = |q: &mut Program, suffix: &str, ix: Vec<crate::ir::IndexId>, body| {
            let name = if suffix.is_empty() {
                name.clone()
            } else {
                fresh_name(q, &format!("{name}{suffix}"))
            };
            q.tensors.push(crate::ir::Tensor {
                name,
                ty: Ty::Real,
                indices: ix,
                body,
                pad: None,
                recurrent: false,
                reverse: false,
                accumulated: false,
            });
            let id = TensorId(q.tensors.len() as u32 - 1);
            (id, q.own_read(id, Ty::Real))
        };
        let mut exp_ix = indices.clone();
        exp_ix.push(c);
        let (_, e_read) = add(q, "_exp", exp_ix, grad);
        let inf = real(q, f64::INFINITY);
        let below = q.pool.add(Expr::Binary(Bin::Lt, own, inf), Ty::Bool);
        let sum = q.pool.add(Expr::Reduce(Red::Sum, c, e_read), Ty::Real);
        let one = real(q, 1.0);
        let s_body = q.pool.add(Expr::Select(below, sum, one), Ty::Real);
        let (_, s_read) = add(q, "_sum", indices.clone(), s_body);
        let abs = q.pool.add(Expr::Call(Func::Abs, vec![own]), Ty::Real);
        let finite = q.pool.add(Expr::Binary(Bin::Lt, abs, inf), Ty::Bool);
        let log = q.pool.add(Expr::Call(Func::Log, vec![s_read]), Ty::Real);
        let lse = q.pool.add(Expr::Binary(Bin::Add, own, log), Ty::Real);
        let l_body = q.pool.add(Expr::Select(finite, lse, own), Ty::Real);
        let (l_id, _) = add(q, "", indices, l_body);
        // The passes read exp / sum; they and the output read `lse` from its new table.
        let ratio = q.pool.add(Expr::Binary(Bin::Div, e_read, s_read), Ty::Real);
        let mut memo: HashMap<ExprId, ExprId> = HashMap::from([(grad, ratio)]);
        substitute_passes(q, &mut memo);
        // The adjoint's `a[n] * (e / s[n])` as `e * (a[n] / s[n])`: one division per row
        // instead of one per cell (a cell's division is the gradient pass's slowest
        // instruction); two roundings either way, so the same error bound.
        let row = q.tensors[l_id.ix()].indices.clone();
        let mut memo: HashMap<ExprId, ExprId> = HashMap::new();
        for k in 0..q.pool.len() {
            let id = ExprId(k as u32);
            let Expr::Binary(Bin::Mul, x, y) = q.pool.get(id).clone() else {
                continue;
            };
            let a = match (x == ratio, y == ratio) {
                (true, false) => y,
                (false, true) => x,
                _ => continue,
            };
            if q.pool.ty(a) != Ty::Real || !q.pool.free(a).iter().all(|i| row.contains(i)) {
                continue;
            }
            let w = q.pool.add(Expr::Binary(Bin::Div, a, s_read), Ty::Real);
            let r = q.pool.add(Expr::Binary(Bin::Mul, e_read, w), Ty::Real);
            memo.insert(id, r);
        }
        if !memo.is_empty() {
            substitute_passes(q, &mut memo);
        }
        let mut memo: HashMap<ExprId, ExprId> = HashMap::new();
        for e in 0..q.pool.len() {
            let id = ExprId(e as u32);
            if let Expr::Tensor(u, args) = q.pool.get(id).clone() {
                if u == tid {
                    let r = q.pool.add(Expr::Tensor(l_id, args), Ty::Real);
                    memo.insert(id, r);
                }
            }
        }
        let ob = q.output.body;
        q.output.body = substitute(q, ob, &mut memo);
        substitute_passes(q, &mut memo);
        let added = q.tensors.len() - 3;
        for j in (0..added).filter(|j| *j != k) {
            let b = q.tensors[j].body;
            q.tensors[j].body = substitute(q, b, &mut memo);
            if let Some(p) = q.tensors[j].pad {
                q.tensors[j].pad = Some(substitute(q, p, &mut memo));
            }
        }
        // the maximum, then the exponentials, their sum and the logsumexp, then the rest
        let order: Vec<TensorId> = (0..=k)
            .chain(added..added + 3)
            .chain(k + 1..added)
            .map(|j| TensorId(j as u32))
            .collect();
        reorder_tensors(q, &order);
    }
}

/// The adjoint of a recurrence becomes a backward recurrence. A recurrence's pass scatters
/// into neighbouring cells (`alpha_grad[b, f - 1, u - 2] += ...`): read-modify-writes of three
/// cells per cell, each behind its own guards, in a loop that cannot run lane-wise. Pulled
/// (see [`crate::ir::pull_contribution`]), the adjoint is a table like any other whose cell
/// sums what it receives, reading its own later cells (`alpha_grad[b, f + 1, u + 2]`): it is
/// filled once per cell, in reverse order, with no accumulation. An accumulated tensor is
/// pulled when every contribution to it maps every index of its pass to one of the target's
/// (no sum left over, so no cell costs more than in the scatter), at least one of them shifted,
/// and its values read no other adjoint that is still accumulated; the terms are summed in the
/// order the scatter added them, so the results are the scatter's bit for bit. Gradients of
/// inputs stay accumulated (callers receive them as they are).
fn pull_recurrence_adjoints(q: &mut Program) {
    use crate::ir::{shifted_index, IndexId};
    let mut pulled: Vec<TensorId> = Vec::new();
    loop {
        let mut progress = false;
        for k in 0..q.tensors.len() {
            let tid = TensorId(k as u32);
            let tn = &q.tensors[k];
            if !tn.accumulated || tn.ty != Ty::Real || q.grads.iter().any(|g| g.1 == tid) {
                continue;
            }
            // (pass, contribution) pairs that write it, in the order they run
            let writers: Vec<(usize, usize)> = q
                .passes
                .iter()
                .enumerate()
                .flat_map(|(pi, p)| {
                    p.contributions
                        .iter()
                        .enumerate()
                        .filter(move |(_, c)| c.target == tid)
                        .map(move |(ci, _)| (pi, ci))
                })
                .collect();
            if writers.is_empty() {
                continue;
            }
            let mut shifted = false;
            let mut terms: Vec<(usize, Vec<i64>, ExprId)> = Vec::new();
            let mut ok = true;
            let mut q2 = q.clone();
            for (pi, ci) in &writers {
                let pass = q.passes[*pi].clone();
                let c = &pass.contributions[*ci];
                let mut offs: HashMap<IndexId, i64> = HashMap::new();
                for a in &c.index {
                    if let Some((s, off)) = shifted_index(q, *a) {
                        offs.entry(s).or_insert(off);
                    }
                }
                shifted |= offs.values().any(|o| *o != 0);
                let Some(term) = crate::ir::pull_contribution(&mut q2, &pass, c, &mut |_, _| None)
                else {
                    ok = false;
                    break;
                };
                if matches!(q2.pool.get(term), Expr::Reduce(..)) {
                    ok = false; // a sum over cells: the scatter is cheaper
                    break;
                }
                let term = clamp_shifted_reads(&mut q2, term);
                // The scatter reaches a target cell from the source cell `target - offset`:
                // sort by source cell in the pass's order (a larger offset is an earlier
                // source, so first in a forward pass and last in a reverse one).
                let mut key: Vec<i64> = pass
                    .space
                    .iter()
                    .map(|s| {
                        let o = offs.get(s).copied().unwrap_or(0);
                        if pass.reverse {
                            o
                        } else {
                            -o
                        }
                    })
                    .collect();
                key.extend(c.extra.iter().map(|s| -offs.get(s).copied().unwrap_or(0)));
                terms.push((*pi, key, term));
            }
            if !ok || !shifted {
                continue;
            }
            // Reads of other adjoints must be of finished (pulled) tables; reads of itself must
            // all be at later cells, or all at earlier ones.
            let dims = q2.tensors[k].indices.clone();
            let dir: std::cell::Cell<Option<bool>> = std::cell::Cell::new(None);
            let roots: Vec<ExprId> = terms.iter().map(|t| t.2).collect();
            let bad = q2.pool.reaches(&roots, |_, x| match x {
                Expr::Tensor(u, args) if *u == tid => {
                    let mut first = 0;
                    for (a, d) in args.iter().zip(&dims) {
                        match shifted_index(&q2, *a) {
                            Some((s, o)) if s == *d => {
                                if first == 0 {
                                    first = o;
                                }
                            }
                            _ => return true,
                        }
                    }
                    let later = first > 0;
                    let d = dir.get().unwrap_or(later);
                    dir.set(Some(d));
                    first == 0 || d != later
                }
                Expr::Tensor(u, _) => q2.tensors[u.ix()].accumulated && !pulled.contains(u),
                _ => false,
            });
            if bad {
                continue;
            }
            // the scatter's order: passes in order, then source cells in the pass's order
            terms.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            let body = terms
                .iter()
                .map(|t| t.2)
                .reduce(|a, b| q2.pool.add(Expr::Binary(Bin::Add, a, b), Ty::Real))
                .expect("at least one writer");
            *q = q2;
            // The substituted guards hold range tests the loop decides (`(f + 1) - 1 >= 0`):
            // simplified again, those fold (spans follow the rebuilt reads).
            let mut o = Opt {
                memo: HashMap::new(),
            };
            let body = o.expr(q, body);
            for (old, new) in o.memo {
                if let Some(span) = q.spans.get(&old).copied() {
                    q.spans.entry(new).or_insert(span);
                }
            }
            let zero = q.pool.real(0.0);
            let dir = dir.get();
            let t = &mut q.tensors[k];
            t.body = body;
            t.accumulated = false;
            t.recurrent = dir.is_some();
            t.reverse = dir == Some(true);
            t.pad = dir.map(|_| zero);
            for p in &mut q.passes {
                p.contributions.retain(|c| c.target != tid);
            }
            pulled.push(tid);
            progress = true;
        }
        if !progress {
            break;
        }
    }
    if pulled.is_empty() {
        return;
    }
    q.passes.retain(|p| !p.contributions.is_empty());
    // Tables fill in definition order: the pulled ones after every other, in pull order.
    let mut order: Vec<TensorId> = (0..q.tensors.len() as u32)
        .map(TensorId)
        .filter(|t| !pulled.contains(t))
        .collect();
    order.extend(pulled);
    reorder_tensors(q, &order);
}

/// A pulled term reads unpadded tables at shifted cells (`skip[b, u + 2]`) only where its
/// range conditions hold (the source cell `u + 2` exists), so only at cells inside them: the
/// reads' shifted indices are clamped into the table (`skip[b, clamp(u + 2, 0, U - 1)]`),
/// which changes no value the term uses and lets a vector step read the lanes past a row's
/// end without failing (so without redoing the step cell by cell). An out-of-range read the
/// scatter would have made was made first by the forward pass, at the same cell.
fn clamp_shifted_reads(q: &mut Program, term: ExprId) -> ExprId {
    use crate::ir::shifted_index;
    let mut memo: HashMap<ExprId, ExprId> = HashMap::new();
    let mut stack = vec![term];
    let mut seen = std::collections::HashSet::new();
    while let Some(e) = stack.pop() {
        if !seen.insert(e) {
            continue;
        }
        let node = q.pool.get(e).clone();
        node.for_each_child(|c| stack.push(c));
        let (args, dims, padded) = match &node {
            Expr::Tensor(t, args) => {
                let tn = &q.tensors[t.ix()];
                // (the adjoint being pulled reads itself: it becomes a padded recurrence)
                (
                    args.clone(),
                    tn.indices.clone(),
                    tn.pad.is_some() || tn.accumulated,
                )
            }
            Expr::Input(i, args) => (args.clone(), q.inputs[i.ix()].dims.clone(), false),
            _ => continue,
        };
        if padded {
            continue;
        }
        let mut changed = false;
        let mut new_args = Vec::with_capacity(args.len());
        for (a, d) in args.iter().zip(&dims) {
            match shifted_index(q, *a) {
                Some((_, c)) if c != 0 => {
                    let zero = q.pool.int(0);
                    let ext = q.pool.add(Expr::Extent(*d), Ty::Int);
                    let one = q.pool.int(1);
                    let hi = q.pool.add(Expr::Binary(Bin::Sub, ext, one), Ty::Int);
                    new_args.push(
                        q.pool
                            .add(Expr::Call(Func::Clamp, vec![*a, zero, hi]), Ty::Int),
                    );
                    changed = true;
                }
                _ => new_args.push(*a),
            }
        }
        if changed {
            let ty = q.pool.ty(e);
            let rebuilt = match node {
                Expr::Tensor(t, _) => Expr::Tensor(t, new_args),
                Expr::Input(i, _) => Expr::Input(i, new_args),
                _ => continue,
            };
            let r = q.pool.add(rebuilt, ty);
            memo.insert(e, r);
        }
    }
    substitute(q, term, &mut memo)
}

/// `e` with every table read's tensor renumbered by `new_id` (children first); `memo` maps
/// each original node visited to its renamed form (unchanged nodes included).
fn rename_reads(
    q: &mut Program,
    e: ExprId,
    new_id: &[TensorId],
    memo: &mut HashMap<ExprId, ExprId>,
) -> ExprId {
    if let Some(r) = memo.get(&e) {
        return *r;
    }
    let ty = q.pool.ty(e);
    let node = q.pool.get(e).clone();
    let mut ren = |x: ExprId| rename_reads(q, x, new_id, memo);
    let rebuilt = match node {
        Expr::Input(i, a) => Expr::Input(i, a.iter().map(|x| ren(*x)).collect()),
        Expr::Tensor(t, a) => Expr::Tensor(new_id[t.ix()], a.iter().map(|x| ren(*x)).collect()),
        Expr::Call(f, a) => Expr::Call(f, a.iter().map(|x| ren(*x)).collect()),
        Expr::Unary(op, a) => Expr::Unary(op, ren(a)),
        Expr::Binary(op, a, b) => Expr::Binary(op, ren(a), ren(b)),
        Expr::Select(c, a, b) => Expr::Select(ren(c), ren(a), ren(b)),
        Expr::Reduce(r, i, b) => Expr::Reduce(r, i, ren(b)),
        Expr::StopGrad(a) => Expr::StopGrad(ren(a)),
        leaf => leaf,
    };
    let r = q.pool.add(rebuilt, ty);
    memo.insert(e, r);
    r
}

/// The nodes the program holds (reachable from its bodies, pads, output, extents, parameter
/// defaults and passes), by node number.
fn live_nodes(q: &Program) -> Vec<bool> {
    let mut live = vec![false; q.pool.len()];
    let mut stack: Vec<ExprId> = Vec::new();
    for t in &q.tensors {
        stack.push(t.body);
        stack.extend(t.pad);
    }
    stack.push(q.output.body);
    for i in &q.indices {
        if let Extent::Computed(e) = i.extent {
            stack.push(e);
        }
    }
    stack.extend(q.params.iter().map(|p| p.default));
    for pass in &q.passes {
        for c in &pass.contributions {
            stack.push(c.value);
            stack.extend(&c.guards);
            stack.extend(&c.index);
        }
    }
    while let Some(e) = stack.pop() {
        if live[e.ix()] {
            continue;
        }
        live[e.ix()] = true;
        q.pool.get(e).for_each_child(|c| stack.push(c));
    }
    live
}

/// Renumbers the tensors of `q` so that `order[k]` becomes tensor `k`.
fn reorder_tensors(q: &mut Program, order: &[TensorId]) {
    let mut new_id = vec![TensorId(0); order.len()];
    for (k, t) in order.iter().enumerate() {
        new_id[t.ix()] = TensorId(k as u32);
    }
    // The nodes holding a read of a table whose number changes mean something else now: out
    // of the hash-consing map first, or adding the renamed read `t'[..]` could find an old
    // read of another table `t'` (of another type) and return it.
    let n = q.pool.len();
    let mut stale = vec![false; n];
    for e in 0..n {
        let id = ExprId(e as u32);
        let node = q.pool.get(id);
        let mut s = matches!(node, Expr::Tensor(t, _) if new_id[t.ix()] != *t);
        node.for_each_child(|c| s |= stale[c.ix()]);
        stale[e] = s;
    }
    for (e, s) in stale.iter().enumerate() {
        if *s {
            q.pool.forget(ExprId(e as u32));
        }
    }
    // Every read the program holds renamed, its arguments too (a read's index may be another
    // table's read: CTC's `alpha[b, logit_length[logit_lengths[b]], ..]`), each node once.
    // Only reads the program holds: the pool also keeps the stale reads of earlier
    // renumberings, which name tables by their old numbers; renamed, one would enter the map
    // as a read of the table now holding its number, with the old table's type, and be found
    // for the true read of that table (a bool table read typed real: the JIT then splatted
    // its byte as a float, a Cranelift panic).
    let live = live_nodes(q);
    let mut memo: HashMap<ExprId, ExprId> = HashMap::new();
    for (e, _) in live.iter().enumerate().filter(|(_, l)| **l) {
        let id = ExprId(e as u32);
        if matches!(q.pool.get(id), Expr::Tensor(..)) {
            rename_reads(q, id, &new_id, &mut memo);
        }
    }
    let old = std::mem::take(&mut q.tensors);
    q.tensors = order.iter().map(|t| old[t.ix()].clone()).collect();
    for k in 0..q.tensors.len() {
        let b = q.tensors[k].body;
        q.tensors[k].body = substitute(q, b, &mut memo);
        if let Some(p) = q.tensors[k].pad {
            q.tensors[k].pad = Some(substitute(q, p, &mut memo));
        }
    }
    let ob = q.output.body;
    q.output.body = substitute(q, ob, &mut memo);
    for k in 0..q.indices.len() {
        if let Extent::Computed(e) = q.indices[k].extent {
            q.indices[k].extent = Extent::Computed(substitute(q, e, &mut memo));
        }
    }
    for k in 0..q.params.len() {
        let d = q.params[k].default;
        q.params[k].default = substitute(q, d, &mut memo);
    }
    let mut passes = std::mem::take(&mut q.passes);
    for pass in &mut passes {
        for c in &mut pass.contributions {
            c.value = substitute(q, c.value, &mut memo);
            c.guards = c
                .guards
                .iter()
                .map(|g| substitute(q, *g, &mut memo))
                .collect();
            c.index = c
                .index
                .iter()
                .map(|g| substitute(q, *g, &mut memo))
                .collect();
            c.target = new_id[c.target.ix()];
        }
    }
    q.passes = passes;
    for g in &mut q.grads {
        g.1 = new_id[g.1.ix()];
    }
    let spans: Vec<(ExprId, crate::diag::Span)> = q.spans.iter().map(|(k, v)| (*k, *v)).collect();
    for (e, span) in spans {
        if let Some(n) = memo.get(&e) {
            q.spans.entry(*n).or_insert(span);
        }
    }
}

/// `base`, or `base2`, `base3`, ... if a table, input or parameter has that name.
fn fresh_name(q: &Program, base: &str) -> String {
    let taken = |n: &str| {
        q.tensors.iter().any(|t| t.name == n)
            || q.inputs.iter().any(|i| i.name == n)
            || q.params.iter().any(|p| p.name == n)
    };
    let mut name = base.to_string();
    let mut k = 2;
    while taken(&name) {
        name = format!("{base}{k}");
        k += 1;
    }
    name
}

/// [`substitute`] in every contribution's value and guards.
fn substitute_passes(q: &mut Program, memo: &mut HashMap<ExprId, ExprId>) {
    let mut passes = std::mem::take(&mut q.passes);
    for pass in &mut passes {
        substitute_contributions(q, &mut pass.contributions, memo);
    }
    q.passes = passes;
}

/// [`substitute`] in the values and guards of `cs`.
pub(crate) fn substitute_contributions(
    q: &mut Program,
    cs: &mut [crate::ir::Contribution],
    memo: &mut HashMap<ExprId, ExprId>,
) {
    for c in cs {
        c.value = substitute(q, c.value, memo);
        c.guards = c.guards.iter().map(|g| substitute(q, *g, memo)).collect();
    }
}

/// `e` with the nodes of `memo` replaced (and its parents rebuilt).
pub(crate) fn substitute(q: &mut Program, e: ExprId, memo: &mut HashMap<ExprId, ExprId>) -> ExprId {
    rebuild(q, e, memo, &mut |_, x| x)
}

/// `e` rebuilt bottom-up with `post` applied to each rebuilt node, the nodes of `memo` (and
/// those already done, which it records) replaced.
pub(crate) fn rebuild(
    q: &mut Program,
    e: ExprId,
    memo: &mut HashMap<ExprId, ExprId>,
    post: &mut dyn FnMut(&mut Program, ExprId) -> ExprId,
) -> ExprId {
    if let Some(r) = memo.get(&e) {
        return *r;
    }
    let ty = q.pool.ty(e);
    let node = q.pool.get(e).clone();
    let mut sub = |x: ExprId| rebuild(q, x, memo, post);
    let rebuilt = match node {
        Expr::Input(i, a) => Expr::Input(i, a.iter().map(|x| sub(*x)).collect()),
        Expr::Tensor(t, a) => Expr::Tensor(t, a.iter().map(|x| sub(*x)).collect()),
        Expr::Call(f, a) => Expr::Call(f, a.iter().map(|x| sub(*x)).collect()),
        Expr::Unary(op, a) => Expr::Unary(op, sub(a)),
        Expr::Binary(op, a, b) => Expr::Binary(op, sub(a), sub(b)),
        Expr::Select(c, a, b) => Expr::Select(sub(c), sub(a), sub(b)),
        Expr::Reduce(r, i, b) => Expr::Reduce(r, i, sub(b)),
        Expr::StopGrad(a) => Expr::StopGrad(sub(a)),
        leaf => leaf,
    };
    let r = q.pool.add(rebuilt, ty);
    let r = post(q, r);
    memo.insert(e, r);
    r
}

struct Opt {
    memo: HashMap<ExprId, ExprId>,
}

/// For closed reductions over copies of one index (an index of another's range, which
/// differentiation makes to keep a reduction's index apart from the loops it is read in):
/// the copy they can all run over, so that reductions equal but for the name of their index
/// become one node, computed once (RMSE's output reads `max(i: |e|)`, its gradient
/// `max(i2: |e|)`: two passes over the data, and its `mean(i: z * z)` two more). The copy must
/// be no loop index of a stage that evaluates reductions, nor the index of a reduction that is
/// not closed, so that renaming never puts a reduction over an index inside a loop over it.
pub(crate) fn reduction_names(q: &Program) -> HashMap<IndexId, IndexId> {
    let has_reduce = |roots: &[ExprId]| q.pool.reaches(roots, |_, x| matches!(x, Expr::Reduce(..)));
    let mut taken: std::collections::HashSet<IndexId> = std::collections::HashSet::new();
    for t in &q.tensors {
        if has_reduce(&[t.body]) {
            taken.extend(t.indices.iter().copied());
        }
    }
    if has_reduce(&[q.output.body]) {
        taken.extend(q.output.indices.iter().copied());
    }
    for pass in &q.passes {
        for c in &pass.contributions {
            let mut roots = c.guards.clone();
            roots.push(c.value);
            roots.extend(c.index.iter().copied());
            if has_reduce(&roots) {
                taken.extend(pass.space.iter().copied());
                taken.extend(c.extra.iter().copied());
            }
        }
    }
    // indices of closed reductions, and of the others (which may enclose loops of their own);
    // a closed reduction enclosing one over the same range keeps its index to itself (RMSE's
    // `mean(i: (e / max(i2: |e|))²)`: renaming `i2` to `i` would nest `i` in `i`)
    let mut closed: Vec<IndexId> = Vec::new();
    for k in 0..q.pool.len() {
        let e = ExprId(k as u32);
        if let Expr::Reduce(_, i, body) = q.pool.get(e) {
            let range = q.range_of(*i);
            let encloses = q.pool.reaches(
                &[*body],
                |_, x| matches!(x, Expr::Reduce(_, j, _) if q.range_of(*j) == range),
            );
            if q.pool.free(e).is_empty() && !encloses {
                closed.push(*i);
            } else {
                taken.insert(*i);
            }
        }
    }
    let mut canon: HashMap<IndexId, IndexId> = HashMap::new();
    let mut used: Vec<IndexId> = closed.clone();
    used.sort();
    used.dedup();
    for i in &used {
        let Ok(root) = q.range_of(*i) else { continue };
        let c = used
            .iter()
            .copied()
            .find(|k| !taken.contains(k) && q.range_of(*k) == Ok(root));
        if let Some(c) = c {
            if c != *i {
                canon.insert(*i, c);
            }
        }
    }
    canon
}

/// Closed reduction `e` over the copy [`reduction_names`] chose for its index, if it can be
/// (its body binds no reduction over that copy).
pub(crate) fn canonical_reduction(
    q: &mut Program,
    e: ExprId,
    canon: &HashMap<IndexId, IndexId>,
) -> ExprId {
    let Expr::Reduce(r, i, body) = q.pool.get(e).clone() else {
        return e;
    };
    let Some(c) = canon.get(&i).copied() else {
        return e;
    };
    if !q.pool.free(e).is_empty()
        || q.pool.free(body).contains(&c)
        || q.pool.reaches(
            &[body],
            |_, x| matches!(x, Expr::Reduce(_, j, _) if *j == c),
        )
    {
        return e;
    }
    let ix = q.pool.add(Expr::Index(c), Ty::Int);
    let map = HashMap::from([(i, ix)]);
    let b = crate::ir::subst_indices(q, body, &map, &mut HashMap::new());
    let ty = q.pool.ty(e);
    q.pool.add(Expr::Reduce(r, c, b), ty)
}

fn real_of(q: &Program, e: ExprId) -> Option<f64> {
    match q.pool.get(e) {
        Expr::Real(b) => Some(f64::from_bits(*b)),
        _ => None,
    }
}

/// `x == max(p, q)` (or `min`) with `x` one of the two arguments, as the comparison of the
/// arguments it amounts to: `p == max(p, q)` is `p >= q`, `q == max(p, q)` is `q >= p`, and
/// `<=` for `min`. The same truth value for every input: a tie keeps `p`, which equals `q`
/// then (±0 included), and a NaN makes both false. A gradient's "did this argument win" test
/// then no longer needs the maximum itself, which need not stay live until then.
fn winner_test(q: &mut Program, x: ExprId, m: ExprId) -> Option<ExprId> {
    let (f, args) = match q.pool.get(m) {
        Expr::Call(f @ (Func::Max | Func::Min), args) if args.len() == 2 => (*f, args.clone()),
        _ => return None,
    };
    if q.pool.ty(x) != Ty::Real || q.pool.ty(m) != Ty::Real {
        return None;
    }
    let (p, r) = (args[0], args[1]);
    let (l, o) = if x == p {
        (p, r)
    } else if x == r {
        (r, p)
    } else {
        return None;
    };
    let op = if f == Func::Max { Bin::Ge } else { Bin::Le };
    Some(q.pool.add(Expr::Binary(op, l, o), Ty::Bool))
}

/// Whether `c` is ±2^k (normal, a mantissa of zero bits).
fn is_pow2(c: f64) -> bool {
    c.is_normal() && c.to_bits() & ((1u64 << 52) - 1) == 0
}

fn int_of(q: &Program, e: ExprId) -> Option<i64> {
    match q.pool.get(e) {
        Expr::Int(v) => Some(*v),
        _ => None,
    }
}

/// The least value of an index shifted by constants (`u + 2`, `(f + 1) - 1`): an index runs
/// from 0 up.
fn least(q: &Program, e: ExprId) -> Option<i64> {
    match q.pool.get(e) {
        Expr::Index(_) => Some(0),
        Expr::Binary(Bin::Add, a, b) => least(q, *a)?.checked_add(int_of(q, *b)?),
        Expr::Binary(Bin::Sub, a, b) => least(q, *a)?.checked_sub(int_of(q, *b)?),
        _ => None,
    }
}

/// A comparison of a shifted index with a number that the index's least value decides
/// (`u + 2 >= 0`, `f + 1 == 0`): the gradient's range guards of pulled recurrences hold many.
fn decided_by_least(q: &Program, op: Bin, a: ExprId, b: ExprId) -> Option<bool> {
    let (op, lo, k) = match (least(q, a), int_of(q, b), int_of(q, a), least(q, b)) {
        (Some(lo), Some(k), _, _) => (op, lo, k),
        // k op x  as  x op' k
        (_, _, Some(k), Some(lo)) => (
            match op {
                Bin::Lt => Bin::Gt,
                Bin::Le => Bin::Ge,
                Bin::Gt => Bin::Lt,
                Bin::Ge => Bin::Le,
                o => o,
            },
            lo,
            k,
        ),
        _ => return None,
    };
    // x >= lo: only comparisons every such x answers alike
    match op {
        Bin::Ge if lo >= k => Some(true),
        Bin::Gt if lo > k => Some(true),
        Bin::Lt if lo >= k => Some(false),
        Bin::Le if lo > k => Some(false),
        Bin::Eq if lo > k => Some(false),
        Bin::Ne if lo > k => Some(true),
        _ => None,
    }
}

impl Opt {
    /// Rebuilds `e` with simplified children, then rewrites it.
    fn expr(&mut self, q: &mut Program, e: ExprId) -> ExprId {
        if let Some(r) = self.memo.get(&e) {
            return *r;
        }
        let ty = q.pool.ty(e);
        let node = q.pool.get(e).clone();
        let rebuilt = match node {
            Expr::Input(i, a) => {
                let a = a.iter().map(|x| self.expr(q, *x)).collect();
                Expr::Input(i, a)
            }
            Expr::Tensor(t, a) => {
                let a = a.iter().map(|x| self.expr(q, *x)).collect();
                Expr::Tensor(t, a)
            }
            Expr::Call(f, a) => {
                let a = a.iter().map(|x| self.expr(q, *x)).collect();
                Expr::Call(f, a)
            }
            Expr::Unary(op, a) => Expr::Unary(op, self.expr(q, a)),
            Expr::Binary(op, a, b) => Expr::Binary(op, self.expr(q, a), self.expr(q, b)),
            Expr::Select(c, a, b) => {
                Expr::Select(self.expr(q, c), self.expr(q, a), self.expr(q, b))
            }
            Expr::Reduce(r, i, b) => Expr::Reduce(r, i, self.expr(q, b)),
            Expr::StopGrad(a) => Expr::StopGrad(self.expr(q, a)),
            leaf => leaf,
        };
        let id = q.pool.add(rebuilt, ty);
        let r = self.rewrite(q, id);
        self.memo.insert(e, r);
        r
    }

    fn real(&self, q: &mut Program, v: f64) -> ExprId {
        q.pool.real(v)
    }
    fn add_node(&mut self, q: &mut Program, e: Expr, ty: Ty) -> ExprId {
        let id = q.pool.add(e, ty);
        self.rewrite(q, id)
    }
    fn call(&mut self, q: &mut Program, f: Func, args: Vec<ExprId>) -> ExprId {
        self.add_node(q, Expr::Call(f, args), Ty::Real)
    }
    fn bin(&mut self, q: &mut Program, op: Bin, a: ExprId, b: ExprId) -> ExprId {
        self.add_node(q, Expr::Binary(op, a, b), Ty::Real)
    }
    fn neg(&mut self, q: &mut Program, a: ExprId) -> ExprId {
        let ty = q.pool.ty(a);
        self.add_node(q, Expr::Unary(Un::Neg, a), ty)
    }

    /// One rewrite step at the root of an already simplified expression.
    fn rewrite(&mut self, q: &mut Program, e: ExprId) -> ExprId {
        let ty = q.pool.ty(e);
        if let Some(f) = self.fold(q, e) {
            return f;
        }
        match q.pool.get(e).clone() {
            Expr::Unary(Un::Neg, a) => {
                if let Expr::Unary(Un::Neg, x) = q.pool.get(a) {
                    return *x;
                }
                e
            }
            Expr::Binary(op @ (Bin::Add | Bin::Sub), a, b) if ty == Ty::Int => {
                self.int_offset(q, e, op, a, b)
            }
            Expr::Binary(op, a, b) if ty == Ty::Real => self.binary(q, e, op, a, b),
            Expr::Binary(Bin::Eq, a, b) => winner_test(q, a, b)
                .or_else(|| winner_test(q, b, a))
                .unwrap_or(e),
            Expr::Call(f, args) => self.call_rule(q, e, f, &args),
            _ => e,
        }
    }

    fn fold(&mut self, q: &mut Program, e: ExprId) -> Option<ExprId> {
        match q.pool.get(e).clone() {
            // A function of a constant (`log(2.0)`): computed here in f64, as the interpreter
            // computes it before rounding to the program's precision, so the same bits, and
            // not once per element (a vector step calls libm for it). Finite results only.
            Expr::Call(f, args) if args.len() == 1 && q.pool.ty(e) == Ty::Real => {
                let x = real_of(q, args[0])?;
                let v = match f {
                    Func::Exp => x.exp(),
                    Func::Log => x.ln(),
                    Func::Log1p => x.ln_1p(),
                    Func::Expm1 => x.exp_m1(),
                    Func::Sqrt => x.sqrt(),
                    Func::Tanh => x.tanh(),
                    Func::Sin => x.sin(),
                    Func::Cos => x.cos(),
                    Func::Atan => x.atan(),
                    Func::Acos => x.acos(),
                    Func::Abs => x.abs(),
                    _ => return None,
                };
                v.is_finite().then(|| self.real(q, v))
            }
            Expr::Unary(Un::Neg, a) => {
                if let Some(v) = real_of(q, a) {
                    return Some(self.real(q, -v));
                }
                int_of(q, a)
                    .and_then(i64::checked_neg)
                    .map(|v| q.pool.int(v))
            }
            Expr::Unary(Un::ToReal, a) => int_of(q, a).map(|v| q.pool.real(v as f64)),
            Expr::Unary(Un::Not, a) => match q.pool.get(a) {
                Expr::Bool(v) => {
                    let v = !*v;
                    Some(q.pool.add(Expr::Bool(v), Ty::Bool))
                }
                _ => None,
            },
            // A constant left side decides `&&` and `||` (the right side is never evaluated,
            // or is the value).
            Expr::Binary(op @ (Bin::And | Bin::Or), a, b) => match (op, q.pool.get(a)) {
                (Bin::And, Expr::Bool(true)) | (Bin::Or, Expr::Bool(false)) => Some(b),
                (Bin::And, Expr::Bool(false)) | (Bin::Or, Expr::Bool(true)) => Some(a),
                // `a && true` is `a` (and `a` is evaluated either way)
                _ => match (op, q.pool.get(b)) {
                    (Bin::And, Expr::Bool(true)) | (Bin::Or, Expr::Bool(false)) => Some(a),
                    _ => None,
                },
            },
            Expr::Binary(op, a, b) => {
                let cmp = |o: std::cmp::Ordering| -> Option<bool> {
                    use std::cmp::Ordering::*;
                    Some(match op {
                        Bin::Eq => o == Equal,
                        Bin::Ne => o != Equal,
                        Bin::Lt => o == Less,
                        Bin::Le => o != Greater,
                        Bin::Gt => o == Greater,
                        Bin::Ge => o != Less,
                        _ => return None,
                    })
                };
                if let (Some(x), Some(y)) = (real_of(q, a), real_of(q, b)) {
                    // comparisons of numbers (NaN compares unordered: only != holds)
                    if let Some(o) = x.partial_cmp(&y) {
                        if let Some(v) = cmp(o) {
                            return Some(q.pool.add(Expr::Bool(v), Ty::Bool));
                        }
                    } else if matches!(
                        op,
                        Bin::Eq | Bin::Ne | Bin::Lt | Bin::Le | Bin::Gt | Bin::Ge
                    ) {
                        let v = op == Bin::Ne;
                        return Some(q.pool.add(Expr::Bool(v), Ty::Bool));
                    }
                }
                if let (Some(x), Some(y)) = (int_of(q, a), int_of(q, b)) {
                    if let Some(v) = cmp(x.cmp(&y)) {
                        return Some(q.pool.add(Expr::Bool(v), Ty::Bool));
                    }
                }
                if let Some(v) = decided_by_least(q, op, a, b) {
                    return Some(q.pool.add(Expr::Bool(v), Ty::Bool));
                }
                if let (Some(x), Some(y)) = (real_of(q, a), real_of(q, b)) {
                    let v = match op {
                        Bin::Add => x + y,
                        Bin::Sub => x - y,
                        Bin::Mul => x * y,
                        Bin::Div => x / y,
                        _ => return None,
                    };
                    return Some(self.real(q, v));
                }
                if let (Some(x), Some(y)) = (int_of(q, a), int_of(q, b)) {
                    // (only where exact: an overflow is left to run time, where data wraps
                    // (`crate::ir::arith`) and an extent is a Limit error, so folding cannot
                    // turn `I * I * I` into a silent 0; a zero divisor or a negative exponent
                    // is left to fail at run time too)
                    let v = match op {
                        Bin::Add => x.checked_add(y)?,
                        Bin::Sub => x.checked_sub(y)?,
                        Bin::Mul => x.checked_mul(y)?,
                        Bin::Div if y != 0 && x.checked_div(y).is_some() => {
                            crate::ir::arith::floor_div(x, y)
                        }
                        Bin::Rem if y != 0 && x.checked_rem(y).is_some() => {
                            crate::ir::arith::floor_mod(x, y)
                        }
                        Bin::Pow if y >= 0 => crate::ir::arith::checked_ipow(x, y)?,
                        _ => return None,
                    };
                    return Some(q.pool.int(v));
                }
                None
            }
            Expr::Select(c, a, b) => match q.pool.get(c) {
                Expr::Bool(true) => Some(a),
                Expr::Bool(false) => Some(b),
                _ if a == b => Some(a),
                _ => {
                    // if c { a } else { if c { _ } else { b } } -> if c { a } else { b }, and the
                    // mirror image: the inner test is decided by the outer one.
                    let ty = q.pool.ty(e);
                    if let Expr::Select(c2, _, b2) = q.pool.get(b).clone() {
                        if c2 == c {
                            return Some(q.pool.add(Expr::Select(c, a, b2), ty));
                        }
                    }
                    if let Expr::Select(c2, a2, _) = q.pool.get(a).clone() {
                        if c2 == c {
                            return Some(q.pool.add(Expr::Select(c, a2, b), ty));
                        }
                    }
                    None
                }
            },
            _ => None,
        }
    }

    /// `(x + c1) - c2` -> `x + (c1 - c2)`, `x + 0` -> `x` (ints wrap: the same value): a
    /// gradient's reads at `(f + 1) - 1` become reads at `f`, which need no range check.
    fn int_offset(&mut self, q: &mut Program, e: ExprId, op: Bin, a: ExprId, b: ExprId) -> ExprId {
        let Expr::Int(c2) = *q.pool.get(b) else {
            return e;
        };
        let c2 = if op == Bin::Add {
            c2
        } else {
            c2.wrapping_neg()
        };
        let (x, c) = match q.pool.get(a).clone() {
            Expr::Binary(o @ (Bin::Add | Bin::Sub), x, k) => match *q.pool.get(k) {
                Expr::Int(c1) if o == Bin::Add => (x, c1.wrapping_add(c2)),
                Expr::Int(c1) => (x, c2.wrapping_sub(c1)),
                _ => (a, c2),
            },
            _ => (a, c2),
        };
        if c == 0 {
            return x;
        }
        if x == a {
            return e;
        }
        let (o, k) = if c > 0 || c == i64::MIN {
            (Bin::Add, c)
        } else {
            (Bin::Sub, -c)
        };
        let k = q.pool.int(k);
        self.add_node(q, Expr::Binary(o, x, k), Ty::Int)
    }

    /// [`Self::binary_rules`], then `y x` where `x y` is an older node: the same value (real
    /// `+` and `*` commute bit for bit), computed once (the product rule writes both orders:
    /// focal loss's `s(x) s(-x)` and `s(-x) s(x)`).
    fn binary(&mut self, q: &mut Program, e: ExprId, op: Bin, a: ExprId, b: ExprId) -> ExprId {
        let r = self.binary_rules(q, e, op, a, b);
        if r == e && matches!(op, Bin::Add | Bin::Mul) {
            if let Some(f) = q.pool.find(&Expr::Binary(op, b, a)) {
                if f < e {
                    return f;
                }
            }
        }
        r
    }

    fn binary_rules(
        &mut self,
        q: &mut Program,
        e: ExprId,
        op: Bin,
        a: ExprId,
        b: ExprId,
    ) -> ExprId {
        let (ra, rb) = (real_of(q, a), real_of(q, b));
        match op {
            Bin::Add => {
                // Only -0 is the additive identity bit for bit (-0 + 0 is +0).
                let neg_zero = |r: Option<f64>| r.is_some_and(|v| v == 0.0 && v.is_sign_negative());
                if neg_zero(ra) {
                    return b;
                }
                if neg_zero(rb) {
                    return a;
                }
                // x + -y -> x - y ; -x + y -> y - x
                if let Expr::Unary(Un::Neg, y) = q.pool.get(b).clone() {
                    return self.bin(q, Bin::Sub, a, y);
                }
                if let Expr::Unary(Un::Neg, x) = q.pool.get(a).clone() {
                    return self.bin(q, Bin::Sub, b, x);
                }
                // 1 + x (or x + 1) stays for log1p below; nothing else here.
                e
            }
            Bin::Sub => {
                // x - +0 is x and -0 - x is -x bit for bit (not x - -0, nor +0 - x at x = +0).
                if rb.is_some_and(|v| v == 0.0 && v.is_sign_positive()) {
                    return a;
                }
                if ra.is_some_and(|v| v == 0.0 && v.is_sign_negative()) {
                    return self.neg(q, b);
                }
                if let Expr::Unary(Un::Neg, y) = q.pool.get(b).clone() {
                    return self.bin(q, Bin::Add, a, y);
                }
                // 1 - sigmoid(x) -> sigmoid(-x)
                if ra == Some(1.0) {
                    if let Expr::Call(Func::Sigmoid, args) = q.pool.get(b).clone() {
                        let n = self.neg(q, args[0]);
                        return self.call(q, Func::Sigmoid, vec![n]);
                    }
                }
                // exp(x) - 1 -> expm1(x)
                if rb == Some(1.0) {
                    if let Expr::Call(Func::Exp, args) = q.pool.get(a).clone() {
                        return self.call(q, Func::Expm1, args);
                    }
                }
                e
            }
            Bin::Mul => {
                if ra == Some(1.0) {
                    return b;
                }
                // (-x) y -> -(x y), x (-y) -> -(x y): the same bits, and the negation can then
                // go into a sum (`a + -(x y)` -> `a - x y`)
                if let Expr::Unary(Un::Neg, x) = q.pool.get(a).clone() {
                    let m = self.bin(q, Bin::Mul, x, b);
                    return self.neg(q, m);
                }
                if let Expr::Unary(Un::Neg, y) = q.pool.get(b).clone() {
                    let m = self.bin(q, Bin::Mul, a, y);
                    return self.neg(q, m);
                }
                if rb == Some(1.0) {
                    return a;
                }
                if ra == Some(-1.0) {
                    return self.neg(q, b);
                }
                if rb == Some(-1.0) {
                    return self.neg(q, a);
                }
                e
            }
            Bin::Div => {
                if rb == Some(1.0) {
                    return a;
                }
                // x / 2^k -> x * 2^-k: both are the exact x 2^-k rounded once (the same bits
                // for every x, subnormals, infinities and NaN included), and a multiplication
                // is a fifth of a division's latency. Only where 2^-k is a normal f32 too.
                if let Some(c) = rb {
                    let r = 1.0 / c;
                    if is_pow2(c) && (f32::MIN_POSITIVE as f64..=f32::MAX as f64).contains(&r.abs())
                    {
                        let rc = self.real(q, r);
                        return self.bin(q, Bin::Mul, a, rc);
                    }
                }
                e
            }
            Bin::Pow => {
                if int_of(q, b) == Some(1) || rb == Some(1.0) {
                    return a;
                }
                // x ^ 0 is 1 for every x, NaN and inf included (as pow defines it)
                if int_of(q, b) == Some(0) || rb == Some(0.0) {
                    return if q.pool.ty(e) == Ty::Int {
                        q.pool.int(1)
                    } else {
                        self.real(q, 1.0)
                    };
                }
                if rb == Some(2.0) {
                    return self.bin(q, Bin::Mul, a, a);
                }
                // q ^ g -> exp(g * log q) where log q is stable: for a variable g, and for a
                // constant one that is no whole number >= 0 (baked parameters: focal's
                // gamma = 0.5 at sigmoid(-200) = 0 took 0.5 q^-0.5 * 0 = NaN as a plain
                // power; whole powers keep pow, whose derivative is finite at q = 0).
                let fractional = rb.is_none_or(|r| r.fract() != 0.0 || r < 0.0);
                if q.pool.ty(b) == Ty::Real && fractional {
                    if let Some((log_q, valid)) = self.stable_log(q, a) {
                        let gl = self.bin(q, Bin::Mul, b, log_q);
                        let ex = self.call(q, Func::Exp, vec![gl]);
                        // g = 0 gives 1 even where log q is -inf (0 * -inf would be NaN).
                        let zero = self.real(q, 0.0);
                        let one = self.real(q, 1.0);
                        let g0 = q.pool.add(Expr::Binary(Bin::Eq, b, zero), Ty::Bool);
                        let safe = q.pool.add(Expr::Select(g0, one, ex), Ty::Real);
                        return match valid {
                            Some(v) => q.pool.add(Expr::Select(v, safe, e), Ty::Real),
                            None => safe,
                        };
                    }
                }
                e
            }
            _ => e,
        }
    }

    /// A stable expression for `log q`, and the condition under which it is valid (None:
    /// always).
    fn stable_log(&mut self, q: &mut Program, e: ExprId) -> Option<(ExprId, Option<ExprId>)> {
        match q.pool.get(e).clone() {
            Expr::Call(Func::Sigmoid, a) => Some((self.call(q, Func::LogSigmoid, a), None)),
            Expr::Call(Func::Exp, a) => Some((a[0], None)),
            Expr::Binary(Bin::Mul, a, b) => {
                let (la, va) = self.stable_log(q, a)?;
                let (lb, vb) = self.stable_log(q, b)?;
                let sum = self.bin(q, Bin::Add, la, lb);
                Some((sum, self.both(q, va, vb)))
            }
            Expr::Binary(Bin::Add, a, b) => {
                // y s1 + w s2 with stable log s1, log s2 and y, w >= 0
                let (y, s1) = self.weighted(q, a)?;
                let (w, s2) = self.weighted(q, b)?;
                let (l1, v1) = self.stable_log(q, s1)?;
                let (l2, v2) = self.stable_log(q, s2)?;
                let zero = self.real(q, 0.0);
                let y_ok = q.pool.add(Expr::Binary(Bin::Ge, y, zero), Ty::Bool);
                let w_ok = q.pool.add(Expr::Binary(Bin::Ge, w, zero), Ty::Bool);
                let ly = self.call(q, Func::Log, vec![y]);
                let lw = self.call(q, Func::Log, vec![w]);
                let t1 = self.bin(q, Bin::Add, ly, l1);
                let t2 = self.bin(q, Bin::Add, lw, l2);
                let lse = self.call(q, Func::LogSumExp, vec![t1, t2]);
                let v = self.both(q, Some(y_ok), Some(w_ok));
                let v = self.both(q, v, v1);
                let v = self.both(q, v, v2);
                Some((lse, v))
            }
            _ => None,
        }
    }

    fn weighted(&self, q: &Program, e: ExprId) -> Option<(ExprId, ExprId)> {
        match q.pool.get(e) {
            Expr::Binary(Bin::Mul, a, b) if q.pool.ty(*a) == Ty::Real => Some((*a, *b)),
            _ => None,
        }
    }

    fn both(&mut self, q: &mut Program, a: Option<ExprId>, b: Option<ExprId>) -> Option<ExprId> {
        match (a, b) {
            (Some(x), Some(y)) => Some(q.pool.add(Expr::Binary(Bin::And, x, y), Ty::Bool)),
            (x, None) => x,
            (None, y) => y,
        }
    }

    fn call_rule(&mut self, q: &mut Program, e: ExprId, f: Func, args: &[ExprId]) -> ExprId {
        if f != Func::Log {
            return e;
        }
        let a = args[0];
        match q.pool.get(a).clone() {
            Expr::Call(Func::Sigmoid, x) => self.call(q, Func::LogSigmoid, x),
            Expr::Call(Func::Exp, x) => x[0],
            Expr::Binary(Bin::Add, x, y) => {
                if real_of(q, x) == Some(1.0) {
                    return self.call(q, Func::Log1p, vec![y]);
                }
                if real_of(q, y) == Some(1.0) {
                    return self.call(q, Func::Log1p, vec![x]);
                }
                e
            }
            Expr::Reduce(Red::Sum, i, body) => {
                if let Expr::Call(Func::Exp, x) = q.pool.get(body).clone() {
                    return self.add_node(q, Expr::Reduce(Red::LogSumExp, i, x[0]), Ty::Real);
                }
                e
            }
            Expr::Binary(Bin::Div, num, den) => {
                // log softmax: log(exp(x) / sum(c: exp(x))) -> x - logsumexp(c: x)
                if let (Expr::Call(Func::Exp, x), Expr::Reduce(Red::Sum, i, body)) =
                    (q.pool.get(num).clone(), q.pool.get(den).clone())
                {
                    // (the sum's index is the numerator's own, or one of its free indices
                    // renamed apart by the checker: `let e = exp(x[n, c]); log(e / sum(c: e))`)
                    let same = body == num
                        || q.pool.free(num).to_vec().into_iter().any(|j| {
                            let to = q.pool.add(Expr::Index(i), Ty::Int);
                            let map = HashMap::from([(j, to)]);
                            crate::ir::subst_indices(q, num, &map, &mut HashMap::new()) == body
                        });
                    if let (true, Expr::Call(Func::Exp, y)) = (same, q.pool.get(body).clone()) {
                        let lse = self.add_node(q, Expr::Reduce(Red::LogSumExp, i, y[0]), Ty::Real);
                        return self.bin(q, Bin::Sub, x[0], lse);
                    }
                }
                e
            }
            _ => e,
        }
    }
}

/// Differences with a logsumexp, accurate in f32: `lse[n] - y` is computed as
/// `(lse_max[n] - y) + lse_lo[n]`, where `lse = lse_max + lse_lo` is split into the row's maximum
/// and `log Σ exp(x - max)` (0 where the maximum is not finite; `log_of_sum`: log1p of the
/// terms other than the maximum's where their sum is small). Rounding `lse` to f32 first
/// loses ulp(|max|) before the subtraction: with logits near 1000 a cross-entropy of 0.69 came
/// out 3e-5 off (4e-5 relative); the split form is as accurate as the libraries' `x - max`
/// first. `y - lse[n]` likewise. `lse` itself is unchanged (`lse_max + lse_lo`, both backends).
/// Run on a finished program (after differentiation: the derivatives are those of `lse`).
pub fn precise_logsumexp(p: &Program) -> Program {
    let mut q = p.clone();
    // (lse, its maximum, its log-sum) for every logsumexp that some difference reads
    let mut split: HashMap<TensorId, (TensorId, TensorId)> = HashMap::new();
    // the new tables of each split logsumexp, to be filled just before it
    let mut before: HashMap<TensorId, Vec<TensorId>> = HashMap::new();
    let original = q.tensors.len();
    // Tables read directly by a subtraction, over the pool as it grows: the nodes are
    // scanned once each (a scan per table made 10^4 definitions quadratic).
    let mut subtracted_set: std::collections::HashSet<TensorId> = Default::default();
    let mut scanned = 0usize;
    let mut subtracted = |q: &Program, t: TensorId| {
        for e in scanned..q.pool.len() {
            if let Expr::Binary(Bin::Sub, a, b) = q.pool.get(ExprId(e as u32)) {
                for x in [*a, *b] {
                    if let Expr::Tensor(u, _) = q.pool.get(x) {
                        subtracted_set.insert(*u);
                    }
                }
            }
        }
        scanned = q.pool.len();
        subtracted_set.contains(&t)
    };
    for k in 0..q.tensors.len() {
        let tid = TensorId(k as u32);
        let t = &q.tensors[k];
        if t.recurrent || t.accumulated || t.pad.is_some() || t.ty != Ty::Real {
            continue;
        }
        if !subtracted(&q, tid) {
            continue;
        }
        let indices = t.indices.clone();
        let inf = q.pool.real(f64::INFINITY);
        let zero = q.pool.real(0.0);
        let body = q.tensors[k].body;
        // the maximum's read and the sum's (log taken below), or a new pair of tables
        let (m_read, log_s) = match q.pool.get(body).clone() {
            // split by `reuse_exponentials`: if |m| < inf { m + log(s) } else { m }
            Expr::Select(c, on, off) => {
                let Expr::Binary(Bin::Add, m, l) = q.pool.get(on).clone() else {
                    continue;
                };
                let Expr::Call(Func::Log, _) = q.pool.get(l) else {
                    continue;
                };
                let abs = q.pool.add(Expr::Call(Func::Abs, vec![m]), Ty::Real);
                let finite = q.pool.add(Expr::Binary(Bin::Lt, abs, inf), Ty::Bool);
                // (the maximum read at this table's own cell, from a table over the same indices)
                let own_max = match q.pool.get(m).clone() {
                    Expr::Tensor(u, _) => {
                        q.tensors[u.ix()].indices == indices && q.own_read(u, Ty::Real) == m
                    }
                    _ => false,
                };
                if c != finite || off != m || !own_max {
                    continue;
                }
                // s = sum(c: e[n, c]), e = exp(x - max)
                let Expr::Call(Func::Log, la) = q.pool.get(l).clone() else {
                    continue;
                };
                let s_read = la[0];
                let Expr::Tensor(s_id, _) = q.pool.get(s_read).clone() else {
                    continue;
                };
                let Expr::Select(_, sum, _) = q.pool.get(q.tensors[s_id.ix()].body).clone() else {
                    continue;
                };
                let Expr::Reduce(Red::Sum, c, e_read) = q.pool.get(sum).clone() else {
                    continue;
                };
                (m, log_of_sum(&mut q, s_read, c, e_read))
            }
            Expr::Reduce(Red::LogSumExp, c, b) => {
                let mut dims = indices.clone();
                dims.sort();
                dims.dedup();
                let mut free = q.pool.free(b).to_vec();
                free.retain(|i| *i != c);
                if dims.len() != indices.len() || indices.contains(&c) || free != dims {
                    continue;
                }
                let name = q.tensors[k].name.clone();
                let max = q.pool.add(Expr::Reduce(Red::Max, c, b), Ty::Real);
                let m_id = push_table(&mut q, &format!("{name}_max"), indices.clone(), max);
                before.entry(tid).or_default().push(m_id);
                let m = q.own_read(m_id, Ty::Real);
                let d = q.pool.add(Expr::Binary(Bin::Sub, b, m), Ty::Real);
                let e = q.pool.add(Expr::Call(Func::Exp, vec![d]), Ty::Real);
                let sum = q.pool.add(Expr::Reduce(Red::Sum, c, e), Ty::Real);
                let below = q.pool.add(Expr::Binary(Bin::Lt, m, inf), Ty::Bool);
                let one = q.pool.real(1.0);
                let s_body = q.pool.add(Expr::Select(below, sum, one), Ty::Real);
                let s_id = push_table(&mut q, &format!("{name}_sum"), indices.clone(), s_body);
                before.entry(tid).or_default().push(s_id);
                let s = q.own_read(s_id, Ty::Real);
                (m, log_of_sum(&mut q, s, c, e))
            }
            _ => continue,
        };
        let Expr::Tensor(m_id, _) = q.pool.get(m_read).clone() else {
            continue;
        };
        let abs = q.pool.add(Expr::Call(Func::Abs, vec![m_read]), Ty::Real);
        let finite = q.pool.add(Expr::Binary(Bin::Lt, abs, inf), Ty::Bool);
        let lo = q.pool.add(Expr::Select(finite, log_s, zero), Ty::Real);
        let name = q.tensors[k].name.clone();
        let lo_id = push_table(&mut q, &format!("{name}_lo"), indices, lo);
        before.entry(tid).or_default().push(lo_id);
        let lo_read = q.own_read(lo_id, Ty::Real);
        // (m + 0 is m where m is not finite: the same value as before, bit for bit)
        q.tensors[k].body = q
            .pool
            .add(Expr::Binary(Bin::Add, m_read, lo_read), Ty::Real);
        split.insert(tid, (m_id, lo_id));
    }
    if split.is_empty() {
        return q;
    }
    let mut memo: HashMap<ExprId, ExprId> = HashMap::new();
    for e in 0..q.pool.len() {
        let id = ExprId(e as u32);
        if let Expr::Binary(Bin::Sub, a, b) = q.pool.get(id).clone() {
            if q.pool.ty(id) == Ty::Real {
                if let Some(r) = precise_sub(&mut q, &split, a, b) {
                    memo.insert(id, r);
                }
            }
        }
    }
    let skip: Vec<TensorId> = split.keys().copied().collect();
    for k in 0..q.tensors.len() {
        if skip.contains(&TensorId(k as u32)) {
            continue;
        }
        let b = q.tensors[k].body;
        q.tensors[k].body = substitute(&mut q, b, &mut memo);
    }
    let ob = q.output.body;
    q.output.body = substitute(&mut q, ob, &mut memo);
    substitute_passes(&mut q, &mut memo);
    // tables are filled in order: the new ones go just before the logsumexp they make up
    let mut order = Vec::with_capacity(q.tensors.len());
    for k in 0..original {
        let t = TensorId(k as u32);
        order.extend(before.get(&t).into_iter().flatten().copied());
        order.push(t);
    }
    reorder_tensors(&mut q, &order);
    q
}

/// `a - b` (reals) with a logsumexp read on either side split into maximum and log-sum; `None`
/// when neither side is one.
fn precise_sub(
    q: &mut Program,
    split: &HashMap<TensorId, (TensorId, TensorId)>,
    a: ExprId,
    b: ExprId,
) -> Option<ExprId> {
    let parts = |q: &mut Program, x: ExprId| -> Option<(ExprId, ExprId)> {
        let Expr::Tensor(t, args) = q.pool.get(x).clone() else {
            return None;
        };
        let (m, lo) = split.get(&t)?;
        let span = q.spans.get(&x).copied();
        let m = q.pool.add(Expr::Tensor(*m, args.clone()), Ty::Real);
        let lo = q.pool.add(Expr::Tensor(*lo, args), Ty::Real);
        if let Some(s) = span {
            q.spans.entry(m).or_insert(s);
            q.spans.entry(lo).or_insert(s);
        }
        Some((m, lo))
    };
    if let Some((m, lo)) = parts(q, a) {
        // (max - b) + lo, with b split in turn
        let d = precise_sub(q, split, m, b)
            .unwrap_or_else(|| q.pool.add(Expr::Binary(Bin::Sub, m, b), Ty::Real));
        return Some(q.pool.add(Expr::Binary(Bin::Add, d, lo), Ty::Real));
    }
    let (m, lo) = parts(q, b)?;
    let d = q.pool.add(Expr::Binary(Bin::Sub, a, m), Ty::Real);
    Some(q.pool.add(Expr::Binary(Bin::Sub, d, lo), Ty::Real))
}

/// `log(s)` for `s = sum(c: e)`, the `e = exp(x - max)` of a row: one term is the maximum's
/// exact 1, and where `s < 2` it is the only term equal to 1 (a tie, or a term rounded up to 1,
/// would make `s >= 2`), so `log(s)` is `log1p` of the sum of the terms other than 1, which
/// keeps the relative accuracy of a tiny sum (`log(s)` rounds it away in `s`: `lse - x_max` of
/// a confident prediction is that log). The second sum runs only for such rows; elsewhere
/// `log(s) >= log 2` has no cancellation to fear.
fn log_of_sum(q: &mut Program, s: ExprId, c: crate::ir::IndexId, e: ExprId) -> ExprId {
    let one = q.pool.real(1.0);
    let two = q.pool.real(2.0);
    let zero = q.pool.real(0.0);
    let is_one = q.pool.add(Expr::Binary(Bin::Eq, e, one), Ty::Bool);
    let term = q.pool.add(Expr::Select(is_one, zero, e), Ty::Real);
    let rest = q.pool.add(Expr::Reduce(Red::Sum, c, term), Ty::Real);
    let near = q.pool.add(Expr::Call(Func::Log1p, vec![rest]), Ty::Real);
    let far = q.pool.add(Expr::Call(Func::Log, vec![s]), Ty::Real);
    let small = q.pool.add(Expr::Binary(Bin::Lt, s, two), Ty::Bool);
    q.pool.add(Expr::Select(small, near, far), Ty::Real)
}

/// A new plain table of reals.
fn push_table(
    q: &mut Program,
    base: &str,
    indices: Vec<crate::ir::IndexId>,
    body: ExprId,
) -> TensorId {
    let name = fresh_name(q, base);
    q.tensors.push(crate::ir::Tensor {
        name,
        ty: Ty::Real,
        indices,
        body,
        pad: None,
        recurrent: false,
        reverse: false,
        accumulated: false,
    });
    TensorId(q.tensors.len() as u32 - 1)
}
