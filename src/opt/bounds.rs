//! Merged index bounds: in a chain of `&&` (or `||`), the tests that bound one index by
//! values that do not depend on it, `u + 2 < U && !(u + 2 > 2 * L) && !(u + 2 > 2 * f + 1)`,
//! become one test against the tightest bound, `u <= min(U - 3, 2 * L - 2, 2 * f - 1)`. The
//! bound is the same for a whole row of `u`, so a vector loop computes it once and compares
//! its lanes once (CTC's gradient has three such chains per cell, each three comparisons and
//! their combination in int lanes). Only pure int arithmetic of indices, extents, literals and
//! reads at plain indices is merged: none of it can fail, so evaluating a merged test where
//! the chain would have stopped earlier raises nothing, and the chain's truth is unchanged
//! (the merged test holds exactly when all its parts do).

use crate::ir::{Bin, Expr, ExprId, Func, IndexId, Program, Ty, Un};
use std::collections::HashMap;

/// The program with its index bounds merged (see the module doc), and its closed reductions
/// over copies of an index made over the index itself (see `canonical_reduction`): every
/// body, pad, output and backward-pass guard.
pub fn merge_bounds(p: &Program) -> Program {
    let mut q = p.clone();
    let mut memo = HashMap::new();
    let canon = super::reduction_names(&q);
    for k in 0..q.tensors.len() {
        let b = q.tensors[k].body;
        q.tensors[k].body = walk(&mut q, b, &mut memo, &canon);
    }
    let ob = q.output.body;
    q.output.body = walk(&mut q, ob, &mut memo, &canon);
    let mut passes = std::mem::take(&mut q.passes);
    for pass in &mut passes {
        for c in &mut pass.contributions {
            c.value = walk(&mut q, c.value, &mut memo, &canon);
            c.guards = c
                .guards
                .iter()
                .map(|g| walk(&mut q, *g, &mut memo, &canon))
                .collect();
        }
    }
    q.passes = passes;
    // (rebuilt loads keep their spans, for run-time messages)
    let spans: Vec<_> = p.spans.iter().map(|(k, v)| (*k, *v)).collect();
    for (old, span) in spans {
        if let Some(new) = memo.get(&old) {
            q.spans.entry(*new).or_insert(span);
        }
    }
    q
}

fn walk(
    q: &mut Program,
    e: ExprId,
    memo: &mut HashMap<ExprId, ExprId>,
    canon: &HashMap<IndexId, IndexId>,
) -> ExprId {
    super::rebuild(q, e, memo, &mut |q, id| match q.pool.get(id) {
        Expr::Binary(Bin::And, ..) => merge(q, id, true).unwrap_or(id),
        Expr::Binary(Bin::Or, ..) => merge(q, id, false).unwrap_or(id),
        Expr::Reduce(..) => super::canonical_reduction(q, id, canon),
        _ => id,
    })
}

/// The parts of a chain, in evaluation order: `a && b` (`!(a || b)` is `!a && !b`, lazily
/// alike); for `||`, `a || b` and `!(a && b)`.
fn parts(q: &mut Program, e: ExprId, and: bool, out: &mut Vec<ExprId>) {
    let (join, meet) = if and {
        (Bin::And, Bin::Or)
    } else {
        (Bin::Or, Bin::And)
    };
    match q.pool.get(e).clone() {
        Expr::Binary(op, a, b) if op == join => {
            parts(q, a, and, out);
            parts(q, b, and, out);
        }
        Expr::Unary(Un::Not, x) => match q.pool.get(x).clone() {
            Expr::Binary(op, a, b) if op == meet => {
                let na = q.pool.add(Expr::Unary(Un::Not, a), Ty::Bool);
                let nb = q.pool.add(Expr::Unary(Un::Not, b), Ty::Bool);
                parts(q, na, and, out);
                parts(q, nb, and, out);
            }
            _ => out.push(e),
        },
        _ => out.push(e),
    }
}

/// A part read as a bound on an index: `i <= bound` (`upper`) or `i >= bound`, when `holds`
/// is the truth the chain needs of the part (true in `&&`, false in `||`).
struct Bound {
    index: IndexId,
    upper: bool,
    bound: ExprId,
}

fn bound_of(q: &mut Program, part: ExprId, holds: bool) -> Option<Bound> {
    let (holds, test) = match q.pool.get(part) {
        Expr::Unary(Un::Not, x) => (!holds, *x),
        _ => (holds, part),
    };
    let Expr::Binary(op, a, b) = q.pool.get(test).clone() else {
        return None;
    };
    if q.pool.ty(a) != Ty::Int || q.pool.ty(b) != Ty::Int {
        return None;
    }
    // the comparison as it must come out: a OP b
    let op = match (op, holds) {
        (Bin::Lt | Bin::Le | Bin::Gt | Bin::Ge, true) => op,
        (Bin::Lt, false) => Bin::Ge,
        (Bin::Le, false) => Bin::Gt,
        (Bin::Gt, false) => Bin::Le,
        (Bin::Ge, false) => Bin::Lt,
        _ => return None,
    };
    // the index on the left: i + c OP b (or b OP i + c, turned around)
    let (x, other, op) = match (index_plus(q, a), index_plus(q, b)) {
        (Some(x), None) => (x, b, op),
        (None, Some(x)) => (
            x,
            a,
            match op {
                Bin::Lt => Bin::Gt,
                Bin::Le => Bin::Ge,
                Bin::Gt => Bin::Lt,
                _ => Bin::Le,
            },
        ),
        _ => return None,
    };
    let (index, c) = x;
    if q.pool.free(other).contains(&index) || !pure_int(q, other) {
        return None;
    }
    // i + c < b: i <= b - c - 1; i + c <= b: i <= b - c; > and >= alike from below
    let (upper, shift) = match op {
        Bin::Lt => (true, c.checked_add(1)?),
        Bin::Le => (true, c),
        Bin::Gt => (false, c.checked_sub(1)?),
        _ => (false, c),
    };
    let bound = minus(q, other, shift)?;
    Some(Bound {
        index,
        upper,
        bound,
    })
}

/// `e` as index `i` plus a constant.
fn index_plus(q: &Program, e: ExprId) -> Option<(IndexId, i64)> {
    match q.pool.get(e) {
        Expr::Index(i) => Some((*i, 0)),
        Expr::Binary(op @ (Bin::Add | Bin::Sub), a, b) => {
            let (i, c) = index_plus(q, *a)?;
            let Expr::Int(k) = q.pool.get(*b) else {
                return None;
            };
            if *op == Bin::Add {
                c.checked_add(*k).map(|c| (i, c))
            } else {
                c.checked_sub(*k).map(|c| (i, c))
            }
        }
        _ => None,
    }
}

/// Int arithmetic that cannot fail: literals, indices, extents, sums, differences, products,
/// minima and maxima, and reads at plain indices.
fn pure_int(q: &Program, e: ExprId) -> bool {
    if q.pool.ty(e) != Ty::Int {
        return false;
    }
    match q.pool.get(e) {
        Expr::Int(_) | Expr::Index(_) | Expr::Extent(_) => true,
        Expr::Binary(Bin::Add | Bin::Sub | Bin::Mul, a, b) => pure_int(q, *a) && pure_int(q, *b),
        Expr::Unary(Un::Neg, a) => pure_int(q, *a),
        Expr::Call(Func::Min | Func::Max, a) => a.iter().all(|x| pure_int(q, *x)),
        Expr::Input(_, a) | Expr::Tensor(_, a) => {
            a.iter().all(|x| matches!(q.pool.get(*x), Expr::Index(_)))
        }
        _ => false,
    }
}

/// Whether evaluating `e` can raise nothing: no reads but at plain indices, no int division.
fn cannot_fail(q: &Program, e: ExprId) -> bool {
    match q.pool.get(e) {
        Expr::Input(_, a) | Expr::Tensor(_, a) => {
            a.iter().all(|x| matches!(q.pool.get(*x), Expr::Index(_)))
        }
        Expr::Binary(Bin::Div | Bin::Rem, a, _) if q.pool.ty(*a) == Ty::Int => false,
        Expr::Reduce(..) => false,
        _ => {
            let mut ok = true;
            q.pool.get(e).for_each_child(|c| ok &= cannot_fail(q, c));
            ok
        }
    }
}

/// `e - k`, with a literal or a trailing constant folded.
fn minus(q: &mut Program, e: ExprId, k: i64) -> Option<ExprId> {
    if k == 0 {
        return Some(e);
    }
    match q.pool.get(e).clone() {
        Expr::Int(v) => Some(q.pool.int(v.checked_sub(k)?)),
        Expr::Binary(Bin::Add, a, b) if matches!(q.pool.get(b), Expr::Int(_)) => {
            let Expr::Int(c) = q.pool.get(b).clone() else {
                return None;
            };
            let c = c.checked_sub(k)?;
            Some(plus(q, a, c))
        }
        Expr::Binary(Bin::Sub, a, b) if matches!(q.pool.get(b), Expr::Int(_)) => {
            let Expr::Int(c) = q.pool.get(b).clone() else {
                return None;
            };
            let c = c.checked_add(k)?;
            Some(plus(q, a, c.checked_neg()?))
        }
        _ => Some(plus(q, e, k.checked_neg()?)),
    }
}

fn plus(q: &mut Program, e: ExprId, c: i64) -> ExprId {
    if c == 0 {
        return e;
    }
    let (op, k) = if c > 0 { (Bin::Add, c) } else { (Bin::Sub, -c) };
    let k = q.pool.int(k);
    q.pool.add(Expr::Binary(op, e, k), Ty::Int)
}

/// The chain at `e` with the bounds on each index that two or more parts put merged, or None
/// when nothing merges.
fn merge(q: &mut Program, e: ExprId, and: bool) -> Option<ExprId> {
    let mut ps = Vec::new();
    parts(q, e, and, &mut ps);
    if ps.len() < 2 {
        return None;
    }
    let bounds: Vec<Option<Bound>> = ps.iter().map(|p| bound_of(q, *p, and)).collect();
    // (index, upper) -> the parts' positions
    let mut groups: Vec<((IndexId, bool), Vec<usize>)> = Vec::new();
    for (k, b) in bounds.iter().enumerate() {
        let Some(b) = b else { continue };
        let key = (b.index, b.upper);
        match groups.iter_mut().find(|(g, _)| *g == key) {
            Some((_, v)) => v.push(k),
            None => groups.push((key, vec![k])),
        }
    }
    // Two or more bounds, and nothing between them that could fail: the merged test stands
    // where the first stood and may stop the chain before parts that the original evaluated.
    groups.retain(|(_, v)| {
        v.len() >= 2 && (v[0] + 1..v[v.len() - 1]).all(|k| v.contains(&k) || cannot_fail(q, ps[k]))
    });
    if groups.is_empty() {
        return None;
    }
    // each group's merged test stands where its first part stood
    let mut merged: HashMap<usize, ExprId> = HashMap::new();
    let mut dropped = vec![false; ps.len()];
    for ((index, upper), members) in &groups {
        let mut list: Vec<ExprId> = Vec::new();
        for k in members {
            let b = bounds[*k].as_ref().expect("grouped");
            // (a bound that is itself a merged min or max contributes its arguments)
            match q.pool.get(b.bound).clone() {
                Expr::Call(Func::Min, a) if *upper => list.extend(a),
                Expr::Call(Func::Max, a) if !*upper => list.extend(a),
                _ => list.push(b.bound),
            }
            dropped[*k] = true;
        }
        list.dedup();
        let f = if *upper { Func::Min } else { Func::Max };
        let bound = if list.len() == 1 {
            list[0]
        } else {
            q.pool.add(Expr::Call(f, list), Ty::Int)
        };
        let i = q.pool.add(Expr::Index(*index), Ty::Int);
        // in `&&` the merged part must hold; in `||` it is the negation of what must hold
        let op = match (*upper, and) {
            (true, true) => Bin::Le,
            (false, true) => Bin::Ge,
            (true, false) => Bin::Gt,
            (false, false) => Bin::Lt,
        };
        let test = q.pool.add(Expr::Binary(op, i, bound), Ty::Bool);
        merged.insert(members[0], test);
    }
    let join = if and { Bin::And } else { Bin::Or };
    let mut out: Option<ExprId> = None;
    for (k, p) in ps.iter().enumerate() {
        let part = match merged.get(&k) {
            Some(t) => *t,
            None if dropped[k] => continue,
            None => *p,
        };
        out = Some(match out {
            Some(a) => q.pool.add(Expr::Binary(join, a, part), Ty::Bool),
            None => part,
        });
    }
    out
}
