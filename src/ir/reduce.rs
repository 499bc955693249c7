//! The call's reduction and weights, written into the program itself, so that the reduced
//! value is an ordinary output (and its gradient an ordinary gradient).

use super::*;

/// How a call reduces a loss's output (STDLIB.md's table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduction {
    None,
    Sum,
    Mean,
    WeightedMean,
    SumByNonzeroWeights,
}

impl Reduction {
    pub const ALL: &'static [(Reduction, &'static str)] = &[
        (Reduction::None, "none"),
        (Reduction::Sum, "sum"),
        (Reduction::Mean, "mean"),
        (Reduction::WeightedMean, "weighted_mean"),
        (Reduction::SumByNonzeroWeights, "sum_by_nonzero_weights"),
    ];
    pub fn name(self) -> &'static str {
        Reduction::ALL
            .iter()
            .find(|(r, _)| *r == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }
    pub fn from_name(s: &str) -> Option<Reduction> {
        Reduction::ALL
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(r, _)| *r)
    }
}

/// The name of the weights input a weighted program gains.
pub const WEIGHTS: &str = "#weights";

/// Returns `p` with its output replaced by the reduced, weighted output. With `weighted`, the
/// program gains a real input [`WEIGHTS`] over the output's indices (the caller broadcasts
/// the call's weights to the output's shape).
pub fn with_reduction(p: &Program, r: Reduction, weighted: bool) -> Program {
    reduce_with(p, r, weighted, None)
}

/// The name of the parameter [`with_reduction_rows`] adds.
pub const ROWS: &str = "#rows";

/// [`with_reduction`] for a program evaluated in row blocks along index `rows`: the mean
/// divides by an int parameter [`ROWS`] (default: the extent of `rows`) instead of that
/// extent, so each block's value and gradient are already scaled for the whole batch.
pub fn with_reduction_rows(p: &Program, r: Reduction, weighted: bool, rows: IndexId) -> Program {
    reduce_with(p, r, weighted, Some(rows))
}

fn reduce_with(p: &Program, r: Reduction, weighted: bool, rows: Option<IndexId>) -> Program {
    let mut q = p.clone();
    let rows_param = rows.map(|b| {
        let default = q.pool.add(Expr::Extent(b), Ty::Int);
        let id = ParamId(q.params.len() as u32);
        q.params.push(Param {
            name: ROWS.into(),
            ty: Ty::Int,
            default,
            default_src: q.index_label(b).to_uppercase(),
        });
        (b, q.pool.add(Expr::Param(id), Ty::Int))
    });
    let out_ix = q.output.indices.clone();
    let loss = q.output.body;
    let w = if weighted {
        let iid = InputId(q.inputs.len() as u32);
        q.inputs.push(Input {
            name: WEIGHTS.into(),
            ty: Ty::Real,
            dims: out_ix.clone(),
        });
        let args: Vec<ExprId> = out_ix
            .iter()
            .map(|i| q.pool.add(Expr::Index(*i), Ty::Int))
            .collect();
        Some(q.pool.add(Expr::Input(iid, args), Ty::Real))
    } else {
        None
    };
    let pool = &mut q.pool;
    let wl = match w {
        Some(w) => pool.add(Expr::Binary(Bin::Mul, w, loss), Ty::Real),
        None => loss,
    };
    if r == Reduction::None {
        q.output.body = wl;
        return q;
    }
    let sum_all = |pool: &mut ExprPool, e: ExprId, ty: Ty| {
        out_ix
            .iter()
            .rev()
            .fold(e, |acc, i| pool.add(Expr::Reduce(Red::Sum, *i, acc), ty))
    };
    // The number of output elements, as a real.
    let count = {
        let mut n = pool.int(1);
        for i in &out_ix {
            let x = match rows_param {
                Some((b, prm)) if b == *i => prm,
                _ => pool.add(Expr::Extent(*i), Ty::Int),
            };
            n = if matches!(pool.get(n), Expr::Int(1)) {
                x
            } else {
                pool.add(Expr::Binary(Bin::Mul, n, x), Ty::Int)
            };
        }
        n
    };
    let total = sum_all(pool, wl, Ty::Real);
    let zero = pool.real(0.0);
    // Σ w l / d, or 0 when d is 0.
    let guarded_div = |pool: &mut ExprPool, d: ExprId| {
        let d_is_zero = match pool.ty(d) {
            Ty::Int => {
                let z = pool.int(0);
                pool.add(Expr::Binary(Bin::Eq, d, z), Ty::Bool)
            }
            _ => pool.add(Expr::Binary(Bin::Eq, d, zero), Ty::Bool),
        };
        let d = if pool.ty(d) == Ty::Int {
            pool.add(Expr::Unary(Un::ToReal, d), Ty::Real)
        } else {
            d
        };
        let q = pool.add(Expr::Binary(Bin::Div, total, d), Ty::Real);
        pool.add(Expr::Select(d_is_zero, zero, q), Ty::Real)
    };
    q.output.body = match (r, w) {
        (Reduction::Sum, _) => total,
        // Σ w l / N as STDLIB.md writes it: NaN (0 / 0) over no elements, as torch's and
        // TensorFlow's means of nothing (only the weighted means say 0 for a zero divisor).
        (Reduction::Mean, _) => {
            let d = pool.add(Expr::Unary(Un::ToReal, count), Ty::Real);
            pool.add(Expr::Binary(Bin::Div, total, d), Ty::Real)
        }
        (Reduction::WeightedMean, None) | (Reduction::SumByNonzeroWeights, None) => {
            guarded_div(pool, count)
        }
        (Reduction::WeightedMean, Some(w)) => {
            let sw = sum_all(pool, w, Ty::Real);
            guarded_div(pool, sw)
        }
        (Reduction::SumByNonzeroWeights, Some(w)) => {
            let nz = pool.add(Expr::Binary(Bin::Ne, w, zero), Ty::Bool);
            let (one, z) = (pool.int(1), pool.int(0));
            let ind = pool.add(Expr::Select(nz, one, z), Ty::Int);
            let cnt = sum_all(pool, ind, Ty::Int);
            guarded_div(pool, cnt)
        }
        (Reduction::None, _) => unreachable!(),
    };
    q.output.indices = vec![];
    q
}
