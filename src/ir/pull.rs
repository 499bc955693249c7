//! Pull form of a backward pass's contribution: `target[index] += value` at every cell of the
//! pass, rewritten as an expression over the target's own indices that sums what each target
//! cell receives. A target index `s + k` of a context index `s` becomes a shifted read
//! (`s = d - k`, in range of `s`), a data-dependent one an equality condition, and context
//! indices no target index determines are summed. The printer ([`super::to_source`]) shows
//! gradients this way; the optimizer turns recurrences' adjoints into backward recurrences
//! with it (their passes scatter to shifted cells, which pull form makes gathers).

use super::*;

/// `e` with the indices of `map` replaced by the expressions they map to (a reduction's own
/// index is bound inside it and is not replaced there).
pub(crate) fn subst_indices(
    q: &mut Program,
    e: ExprId,
    map: &HashMap<IndexId, ExprId>,
    memo: &mut HashMap<ExprId, ExprId>,
) -> ExprId {
    if map.is_empty() || !q.pool.free(e).iter().any(|i| map.contains_key(i)) {
        return e;
    }
    if let Some(r) = memo.get(&e) {
        return *r;
    }
    let ty = q.pool.ty(e);
    let node = q.pool.get(e).clone();
    let mut sub = |q: &mut Program, x: ExprId| subst_indices(q, x, map, memo);
    let rebuilt = match node {
        Expr::Index(i) => {
            let r = map[&i];
            memo.insert(e, r);
            return r;
        }
        Expr::Reduce(red, i, body) => {
            let mut inner = map.clone();
            inner.remove(&i);
            let mut m2 = HashMap::new();
            let b = subst_indices(q, body, &inner, &mut m2);
            Expr::Reduce(red, i, b)
        }
        Expr::Input(i, a) => Expr::Input(i, a.iter().map(|x| sub(q, *x)).collect()),
        Expr::Tensor(t, a) => Expr::Tensor(t, a.iter().map(|x| sub(q, *x)).collect()),
        Expr::Call(f, a) => Expr::Call(f, a.iter().map(|x| sub(q, *x)).collect()),
        Expr::Unary(op, a) => Expr::Unary(op, sub(q, a)),
        Expr::Binary(op, a, b) => {
            let a = sub(q, a);
            Expr::Binary(op, a, sub(q, b))
        }
        Expr::Select(c, a, b) => {
            let c = sub(q, c);
            let a = sub(q, a);
            Expr::Select(c, a, sub(q, b))
        }
        Expr::StopGrad(a) => Expr::StopGrad(sub(q, a)),
        other => other,
    };
    let r = q.pool.add(rebuilt, ty);
    memo.insert(e, r);
    r
}

/// An index `s` plus or minus integers (`s`, `s + 2`, `(s + 1) - 1`): `(s, the sum)`.
pub(crate) fn shifted_index(q: &Program, a: ExprId) -> Option<(IndexId, i64)> {
    match q.pool.get(a) {
        Expr::Index(s) => Some((*s, 0)),
        Expr::Binary(op @ (Bin::Add | Bin::Sub), x, k) => {
            let Expr::Int(v) = q.pool.get(*k) else {
                return None;
            };
            let (s, c) = shifted_index(q, *x)?;
            let c = if *op == Bin::Add {
                c.checked_add(*v)?
            } else {
                c.checked_sub(*v)?
            };
            Some((s, c))
        }
        _ => None,
    }
}

/// The pull form of contribution `c` of `pass`: an expression over the target's indices.
/// Context indices left to sum over that are also target indices are renamed apart by
/// `rename` (which makes a fresh index like the one given); `None` if it declines.
pub(crate) fn pull_contribution(
    q: &mut Program,
    pass: &Pass,
    c: &Contribution,
    rename: &mut dyn FnMut(&mut Program, IndexId) -> Option<IndexId>,
) -> Option<ExprId> {
    let dims = q.tensors[c.target.ix()].indices.clone();
    let mut ctx: Vec<IndexId> = pass.space.clone();
    ctx.extend(c.extra.iter().copied());
    let mut map: HashMap<IndexId, ExprId> = HashMap::new();
    let mut conds: Vec<ExprId> = Vec::new();
    let mut eqs: Vec<(ExprId, IndexId)> = Vec::new();
    for (a, d) in c.index.iter().zip(&dims) {
        match shifted_index(q, *a) {
            Some((s, off)) if ctx.contains(&s) && !map.contains_key(&s) => {
                // target d = s + off  =>  s = d - off, which must be a cell of s
                let dv = q.pool.add(Expr::Index(*d), Ty::Int);
                let val = if off == 0 {
                    dv
                } else {
                    let k = q.pool.int(off.abs());
                    let op = if off > 0 { Bin::Sub } else { Bin::Add };
                    q.pool.add(Expr::Binary(op, dv, k), Ty::Int)
                };
                if off != 0 || q.indices[s.ix()].extent != q.indices[d.ix()].extent && s != *d {
                    let zero = q.pool.int(0);
                    let lo = q.pool.add(Expr::Binary(Bin::Ge, val, zero), Ty::Bool);
                    let ext = q.pool.add(Expr::Extent(s), Ty::Int);
                    let hi = q.pool.add(Expr::Binary(Bin::Lt, val, ext), Ty::Bool);
                    conds.push(lo);
                    conds.push(hi);
                }
                map.insert(s, val);
            }
            _ => eqs.push((*a, *d)),
        }
    }
    // Summed context indices must not be target indices: rename them apart.
    let summed: Vec<IndexId> = ctx
        .iter()
        .copied()
        .filter(|s| !map.contains_key(s))
        .collect();
    let mut renamed: HashMap<IndexId, ExprId> = HashMap::new();
    let mut summed_final = Vec::new();
    for s in summed {
        if dims.contains(&s) {
            let f = rename(q, s)?;
            renamed.insert(s, q.pool.add(Expr::Index(f), Ty::Int));
            summed_final.push(f);
        } else {
            summed_final.push(s);
        }
    }
    let mut full = map.clone();
    full.extend(renamed.iter().map(|(k, v)| (*k, *v)));
    let mut memo = HashMap::new();
    // The cell's bounds (which cannot fail), its guards, then the target's data-dependent
    // indices, in the order the scatter evaluates them: an index is read only where the
    // guards hold (`y[if m[i - 1, j] == .. { .. }]` under `m[i, j] == p`, a read that is out
    // of range at i = 0, where the guard fails).
    let mut all = conds;
    for g in &c.guards {
        all.push(subst_indices(q, *g, &full, &mut memo));
    }
    for (a, d) in eqs {
        let a2 = subst_indices(q, a, &full, &mut memo);
        let dv = q.pool.add(Expr::Index(d), Ty::Int);
        all.push(q.pool.add(Expr::Binary(Bin::Eq, a2, dv), Ty::Bool));
    }
    let value = subst_indices(q, c.value, &full, &mut memo);
    let mut body = value;
    if let Some(cond) = all
        .into_iter()
        .reduce(|a, b| q.pool.add(Expr::Binary(Bin::And, a, b), Ty::Bool))
    {
        let zero = q.pool.real(0.0);
        body = q.pool.add(Expr::Select(cond, value, zero), Ty::Real);
    }
    for s in summed_final.iter().rev() {
        body = q.pool.add(Expr::Reduce(Red::Sum, *s, body), Ty::Real);
    }
    Some(body)
}
