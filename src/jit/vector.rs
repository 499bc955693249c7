//! SIMD for innermost loops: when every node of a loop body that depends on the loop's index
//! can be computed lane-wise (unit-stride loads along the last dimension, arithmetic,
//! comparisons as lane masks, `if` as a bit select of two safe sides, the inline math of
//! `math.rs`), the loop runs 4 (f32) or 2 (f64) cells per step and the scalar code handles
//! the remaining cells. Nodes that do not depend on the index are computed once as scalars
//! and splatted. Sums accumulate in f64 lanes and are combined in a fixed order.

use super::{internal, Carried, Elem, Gen};
use crate::diag::Result;
use crate::ir::{Bin, Expr, ExprId, Func, IndexId, Red, Ty, Un};
use crate::schedule::{contribution_roots, Run};
use cranelift_codegen::entity::EntityRef;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::BlockArg;
use cranelift_codegen::ir::{
    types, Block, ConstantData, Endianness, Function, Inst, InstBuilder, MemFlagsData, StackSlot,
    StackSlotData, StackSlotKind, Type, Value,
};
use cranelift_frontend::Variable;
use std::collections::{HashMap, HashSet};

/// The row checks and margins of a fill's trusted steps (see [`Gen::trusted_reads`]).
struct Trusted {
    /// the reads' indices (other than along the loop) not in range by construction, with
    /// their dimensions
    checks: Vec<(ExprId, IndexId)>,
    /// the steps' first cell is at least this
    lo: i64,
    /// and their last cell at most the row's end minus this
    hi: i64,
}

/// What the innermost level of a nest does, for the vector path.
pub(super) enum VecWork<'w> {
    /// store `body` in every cell of a real table over `dims`
    Fill {
        slot: usize,
        body: ExprId,
        dims: &'w [IndexId],
        /// tables filled at the same cells after it: (slot, body)
        also: &'w [(usize, ExprId)],
    },
    /// a group's runs of contributions
    Runs(&'w [Run]),
    /// nothing but the carried reductions (an in-place reduction's loop)
    Nothing,
}

impl<'a, 'b> Gen<'a, 'b> {
    fn vtype(&self) -> Type {
        if self.f32 {
            types::F32X4
        } else {
            types::F64X2
        }
    }
    fn mtype(&self) -> Type {
        if self.f32 {
            types::I32X4
        } else {
            types::I64X2
        }
    }
    fn splat_v(&mut self, s: Value) -> Value {
        let t = self.vtype();
        self.b.ins().splat(t, s)
    }
    fn splat_m(&mut self, s: Value) -> Value {
        let t = self.mtype();
        self.b.ins().splat(t, s)
    }
    fn load_v(&mut self, flags: MemFlagsData, a: Value, off: i32) -> Value {
        let t = self.vtype();
        self.b.ins().load(t, flags, a, off)
    }
    fn lanes(&self) -> i64 {
        if self.f32 {
            4
        } else {
            2
        }
    }

    /// Every node the work and the carried bodies evaluate that depends on `ix` can be
    /// computed lane-wise, and everything is safe to compute on all lanes: `Some(false)`. A
    /// table's fill whose body may fail (a range check, a read past a row's end) runs
    /// speculatively: `Some(true)`, a vector step that would fail is redone cell by cell by the
    /// scalar code, which fails (or not) exactly where the language says. `None`: scalar.
    /// A fill reads its own table only in other rows (so its cells along `ix` may be computed
    /// in any order, even in a backward recurrence).
    pub(super) fn can_vectorize(
        &self,
        w: &VecWork,
        accs: &[Carried],
        ix: IndexId,
        reverse: bool,
    ) -> Option<bool> {
        let p = self.p;
        let last_is = |dims: &[IndexId]| dims.last() == Some(&ix);
        let mut roots: Vec<ExprId> = accs.iter().map(|c| c.body).collect();
        let mut own: Option<usize> = None;
        match w {
            VecWork::Nothing => {}
            VecWork::Fill {
                body,
                dims,
                slot,
                also,
            } => {
                if !last_is(dims) || p.pool.ty(*body) != Ty::Real {
                    return None;
                }
                roots.extend(also.iter().map(|(_, e)| *e));
                own = slot
                    .checked_sub(p.inputs.len())
                    .filter(|t| *t < p.tensors.len());
                roots.push(*body);
            }
            VecWork::Runs(runs) => {
                for r in runs.iter() {
                    let tn = &p.tensors[r.target.ix()];
                    let contiguous = unit_stride(p, &r.index, &tn.indices, ix);
                    // strided targets are accumulated (or stored) lane by lane
                    let strided = plain(p, &r.index, &tn.indices, ix);
                    if !(contiguous || strided) || !r.index.iter().all(|a| self.an.errorfree(*a)) {
                        return None;
                    }
                    for t in &r.terms {
                        for e in contribution_roots(t) {
                            if !r.index.contains(&e) {
                                roots.push(e);
                            }
                        }
                    }
                }
            }
        }
        if reverse && own.is_none() {
            return None;
        }
        let speculative = !roots.iter().all(|r| self.an.errorfree(*r));
        if speculative && (own.is_none() || !accs.is_empty()) {
            if std::env::var_os("LOSSC_DEBUG_VEC").is_some() {
                eprintln!("unsafe roots");
            }
            return None;
        }
        // A max/min is compared for equality with its body recomputed elsewhere (the gradient's
        // first arg-max: `i == min(i: if x[i] == max(i: x[i]) { i } else { I })`), by scalar
        // code; the vector forms of exp, log, pow, ... round differently from the scalar ones, so
        // such a body stays scalar, or no cell would equal the maximum.
        let extremes: Vec<ExprId> = accs
            .iter()
            .filter(|c| matches!(c.red, Red::Max | Red::Min))
            .map(|c| c.body)
            .collect();
        if !extremes.is_empty() {
            let inexact =
                super::reach_sparse(p, &extremes)
                    .into_iter()
                    .any(|e| match p.pool.get(e) {
                        Expr::Call(f, _) => !matches!(
                            f,
                            Func::Abs
                                | Func::Sign
                                | Func::Sqrt
                                | Func::Floor
                                | Func::Ceil
                                | Func::Min
                                | Func::Max
                                | Func::Clamp
                                | Func::IsNan
                                | Func::IsInf
                        ),
                        Expr::Binary(Bin::Pow, ..) => true,
                        _ => false,
                    });
            if inexact {
                return None;
            }
        }
        // (sparse, in pool order: a stage reaches a small part of what may be a large pool)
        let reach = super::reach_sparse(p, &roots);
        // The int reads that only index gathers (`logits[b, t, ext[b, u]]`): loaded lane by
        // lane by the gather, never as lanes of their own.
        let mut gather_only: HashMap<ExprId, bool> = HashMap::new();
        for &e in &reach {
            let g = gather_index(p, e, ix);
            p.pool.get(e).for_each_child(|c| {
                if g == Some(c) {
                    gather_only.entry(c).or_insert(true);
                } else {
                    gather_only.insert(c, false);
                }
            });
        }
        for &e in &reach {
            if gather_only.get(&e) == Some(&true) {
                continue;
            }
            // the table being filled, read in its own row: a dependence between lanes
            if let (Expr::Tensor(t, args), Some(own)) = (p.pool.get(e), own) {
                let tn = &p.tensors[t.ix()];
                if t.ix() == own
                    && args[..args.len() - 1]
                        .iter()
                        .zip(&tn.indices)
                        .all(|(a, d)| crate::ir::shifted_index(p, *a) == Some((*d, 0)))
                {
                    return None;
                }
            }
            if !p.pool.free(e).contains(&ix) {
                continue;
            }
            if !self.lane_wise(e, ix) {
                if std::env::var_os("LOSSC_DEBUG_VEC").is_some() {
                    eprintln!("not lane-wise: {:?}", p.pool.get(e));
                }
                return None;
            }
        }
        Some(speculative)
    }

    /// One node (that depends on `ix`) has a lane-wise form.
    fn lane_wise(&self, e: ExprId, ix: IndexId) -> bool {
        let p = self.p;
        let ty = p.pool.ty(e);
        match p.pool.get(e) {
            // a load's index, or the int lanes `k, k + 1, ...`
            Expr::Index(i) => *i == ix,
            Expr::Input(i, args) => {
                let inp = &p.inputs[i.ix()];
                inp.ty == Ty::Real
                    && (plain(p, args, &inp.dims, ix)
                        || shifted(p, args, &inp.dims, ix)
                        || gather_index(p, e, ix).is_some())
            }
            Expr::Tensor(t, args) => {
                let tn = &p.tensors[t.ix()];
                // (a recurrence read here is finished, or read in other rows: see above)
                matches!(tn.ty, Ty::Real | Ty::Bool)
                    && !tn.accumulated
                    && (plain(p, args, &tn.indices, ix)
                        || shifted(p, args, &tn.indices, ix)
                        || (tn.ty == Ty::Real && gather_index(p, e, ix).is_some()))
            }
            Expr::Unary(Un::Neg, a) => p.pool.ty(*a) == Ty::Real,
            Expr::Unary(Un::Not, a) => p.pool.ty(*a) == Ty::Bool,
            Expr::Unary(..) => false,
            Expr::Binary(op, a, b) => {
                let (ta, tb) = (p.pool.ty(*a), p.pool.ty(*b));
                match op {
                    // int lanes: the index plus or minus a small constant
                    Bin::Add | Bin::Sub if ty == Ty::Int => {
                        matches!(p.pool.get(*b), Expr::Int(c) if c.abs() <= INT_LANE_SHIFT)
                            && p.pool.free(*a).contains(&ix)
                    }
                    Bin::Add | Bin::Sub | Bin::Mul | Bin::Div => ty == Ty::Real && ta == tb,
                    Bin::Eq | Bin::Ne | Bin::Lt | Bin::Le | Bin::Gt | Bin::Ge => {
                        ta == tb && ta != Ty::Bool
                    }
                    Bin::And | Bin::Or => true,
                    Bin::Pow => {
                        ta == Ty::Real
                            && (tb == Ty::Real
                                || matches!(p.pool.get(*b), Expr::Int(k) if (0..=4).contains(k)))
                    }
                    Bin::Rem => false,
                }
            }
            Expr::Select(_, a, _) => p.pool.ty(*a) == Ty::Real,
            // a clamped row index (see `row_shift`), int lanes if used as a value
            Expr::Call(Func::Clamp, _) if ty == Ty::Int => row_shift(p, e, ix).is_some(),
            Expr::Call(f, args) => {
                ty != Ty::Int
                    && args.iter().all(|a| p.pool.ty(*a) == Ty::Real)
                    && !matches!(f, Func::Floor | Func::Ceil)
            }
            Expr::StopGrad(_) => ty == Ty::Real,
            _ => false,
        }
    }

    /// A vector value of node `e` (lanes are the cells `idx[ix] + 0..lanes`).
    pub(super) fn emit_v(&mut self, e: ExprId, ix: IndexId) -> Result<Value> {
        if !self.p.pool.free(e).contains(&ix) {
            if let Some(v) = self.lookup_key((4, e)) {
                return Ok(v);
            }
            let s = self.emit(e)?;
            let v = match self.p.pool.ty(e) {
                Ty::Real => self.splat_v(s),
                Ty::Bool => {
                    // all-ones or zero lanes
                    let w = if self.f32 { types::I32 } else { types::I64 };
                    let x = self.b.ins().uextend(w, s);
                    let m = self.b.ins().ineg(x);
                    self.splat_m(m)
                }
                Ty::Int => return Err(internal("int value in a vector loop")),
            };
            self.remember_key((4, e), v);
            return Ok(v);
        }
        if let Some(v) = self.lookup_key((3, e)) {
            return Ok(v);
        }
        let v = self.emit_v_uncached(e, ix)?;
        self.remember_key((3, e), v);
        Ok(v)
    }

    fn emit_v_uncached(&mut self, e: ExprId, ix: IndexId) -> Result<Value> {
        let p = self.p;
        if gather_index(p, e, ix).is_some() {
            return self.vgather(e, ix);
        }
        Ok(match p.pool.get(e).clone() {
            Expr::Input(i, args) => {
                let dims = p.inputs[i.ix()].dims.clone();
                if shifted(p, &args, &dims, ix) {
                    self.vload_row(i.ix(), Elem::Real, &dims, &args, None, true)?
                } else {
                    self.vload_any(i.ix(), Elem::of(p.inputs[i.ix()].ty), &dims, &args, ix)?
                }
            }
            Expr::Tensor(t, args) => {
                let tn = &p.tensors[t.ix()];
                let dims = tn.indices.clone();
                let slot = p.inputs.len() + t.ix();
                if shifted(p, &args, &dims, ix) {
                    let readonly = !self.written[t.ix()];
                    let elem = Elem::of(tn.ty);
                    self.vload_row(slot, elem, &dims, &args, tn.pad, readonly)?
                } else {
                    self.vload_any(slot, Elem::of(tn.ty), &dims, &args, ix)?
                }
            }
            Expr::Index(_) => {
                // int lanes k, k + 1, ...: i32 lanes for f32 (the loop's extent is below 2^30)
                let k = self.idx[ix.ix()].ok_or_else(|| internal("vector index not bound"))?;
                let it = self.mtype();
                let k = if self.f32 {
                    self.b.ins().ireduce(types::I32, k)
                } else {
                    k
                };
                let kv = self.b.ins().splat(it, k);
                let iota: Vec<u8> = if self.f32 {
                    (0..4i32).flat_map(|x| x.to_le_bytes()).collect()
                } else {
                    (0..2i64).flat_map(|x| x.to_le_bytes()).collect()
                };
                let c = self.b.func.dfg.constants.insert(ConstantData::from(iota));
                let iota = self.b.ins().vconst(it, c);
                self.b.ins().iadd(kv, iota)
            }
            Expr::Call(Func::Clamp, a) if p.pool.ty(e) == Ty::Int => {
                let x = self.int_lanes(a[0], ix)?;
                let lo = self.int_lanes(a[1], ix)?;
                let hi = self.int_lanes(a[2], ix)?;
                let x = self.b.ins().smax(x, lo);
                self.b.ins().smin(x, hi)
            }
            Expr::Binary(op, a, b) if p.pool.ty(a) == Ty::Int => {
                let x = self.int_lanes(a, ix)?;
                let y = self.int_lanes(b, ix)?;
                let ins = self.b.ins();
                match op {
                    Bin::Add => ins.iadd(x, y),
                    Bin::Sub => ins.isub(x, y),
                    Bin::Eq => ins.icmp(IntCC::Equal, x, y),
                    Bin::Ne => ins.icmp(IntCC::NotEqual, x, y),
                    Bin::Lt => ins.icmp(IntCC::SignedLessThan, x, y),
                    Bin::Le => ins.icmp(IntCC::SignedLessThanOrEqual, x, y),
                    Bin::Gt => ins.icmp(IntCC::SignedGreaterThan, x, y),
                    Bin::Ge => ins.icmp(IntCC::SignedGreaterThanOrEqual, x, y),
                    _ => return Err(internal("vector int op")),
                }
            }
            Expr::Unary(Un::Neg, a) => {
                let x = self.emit_v(a, ix)?;
                self.fneg(x)
            }
            Expr::Unary(Un::Not, a) => {
                let x = self.emit_v(a, ix)?;
                self.b.ins().bnot(x)
            }
            Expr::StopGrad(a) => self.emit_v(a, ix)?,
            Expr::Binary(op @ (Bin::And | Bin::Or), a, b) => {
                return self.vlogic(op == Bin::And, a, b, ix)
            }
            Expr::Binary(op, a, b) => {
                if op == Bin::Pow && p.pool.ty(b) == Ty::Real {
                    let x = self.emit_v(a, ix)?;
                    let y = self.emit_v(b, ix)?;
                    return self.vpow(x, y);
                }
                if op == Bin::Pow {
                    let x = self.emit_v(a, ix)?;
                    let k = match p.pool.get(b) {
                        Expr::Int(k) => *k,
                        _ => return Err(internal("vector power")),
                    };
                    let mut r = self.rc(x, 1.0);
                    for i in 0..k {
                        r = if i == 0 { x } else { self.b.ins().fmul(r, x) };
                    }
                    return Ok(r);
                }
                let x = self.emit_v(a, ix)?;
                let y = self.emit_v(b, ix)?;
                let ins = self.b.ins();
                match op {
                    Bin::Add => ins.fadd(x, y),
                    Bin::Sub => ins.fsub(x, y),
                    Bin::Mul => ins.fmul(x, y),
                    Bin::Div => ins.fdiv(x, y),
                    Bin::And => ins.band(x, y),
                    Bin::Or => ins.bor(x, y),
                    Bin::Eq => ins.fcmp(FloatCC::Equal, x, y),
                    Bin::Ne => ins.fcmp(FloatCC::NotEqual, x, y),
                    Bin::Lt => ins.fcmp(FloatCC::LessThan, x, y),
                    Bin::Le => ins.fcmp(FloatCC::LessThanOrEqual, x, y),
                    Bin::Gt => ins.fcmp(FloatCC::GreaterThan, x, y),
                    Bin::Ge => ins.fcmp(FloatCC::GreaterThanOrEqual, x, y),
                    Bin::Rem | Bin::Pow => return Err(internal("vector op")),
                }
            }
            Expr::Select(c, a, b) => {
                if let Some(v) = self.known(c) {
                    return self.emit_v(if v { a } else { b }, ix);
                }
                if self.lazy && !p.pool.free(c).contains(&ix) {
                    // the same side for every lane: a branch
                    let cv = self.emit(c)?;
                    return self.vbranch(cv, a, b, ix);
                }
                let m = self.emit_v(c, ix)?;
                if self.lazy {
                    // an expensive side only when a lane takes it
                    let (mut ba, mut bb) = (16, 16);
                    let (heavy_a, heavy_b) = (!self.cheap(a, &mut ba), !self.cheap(b, &mut bb));
                    if heavy_a || heavy_b {
                        let x = if heavy_a {
                            let any = self.b.ins().vany_true(m);
                            self.vlazy(any, true, a, ix)?
                        } else {
                            self.emit_v(a, ix)?
                        };
                        let y = if heavy_b && finite_test(p, c) {
                            // The gradient's recomputation where a value is not finite (a
                            // recurrence's `T[cell] - b` for `b = ±inf`): rare, so a step
                            // needing it runs cell by cell (the speculative step's error exit
                            // redoes it with the scalar code) instead of holding vector code
                            // for it.
                            let all = self.b.ins().vall_true(m);
                            let go = self.b.create_block();
                            let redo = self.b.create_block();
                            self.b.ins().brif(all, go, &[], redo, &[]);
                            self.b.switch_to_block(redo);
                            let z = self.b.ins().iconst(types::I64, 0);
                            self.fail(super::ERR_RANGE, c, 0, z);
                            self.b.switch_to_block(go);
                            let z = self.real_const(0.0);
                            self.splat_v(z)
                        } else if heavy_b {
                            let all = self.b.ins().vall_true(m);
                            self.vlazy(all, false, b, ix)?
                        } else {
                            self.emit_v(b, ix)?
                        };
                        return Ok(self.sel(m, x, y));
                    }
                }
                let mut budget = 12;
                if self.cheap(a, &mut budget) && self.cheap(b, &mut budget) {
                    let x = self.emit_v(a, ix)?;
                    let y = self.emit_v(b, ix)?;
                    return Ok(self.sel(m, x, y));
                }
                let x = self.emit_v(a, ix)?;
                let y = self.emit_v(b, ix)?;
                self.sel(m, x, y)
            }
            Expr::Call(f, args) => {
                if let Some(v) = self.lse_share(e, Some(ix))? {
                    return Ok(v);
                }
                let mut v = Vec::with_capacity(args.len());
                for a in &args {
                    v.push(self.emit_v(*a, ix)?);
                }
                let r = self.real_call(f, &v, &args)?;
                if f == Func::LogSumExp {
                    self.remember_lse_parts(e, true);
                }
                r
            }
            _ => return Err(internal("no vector form")),
        })
    }

    /// `a && b` (`and`) or `a || b` as lane masks. When the chain of `&&` (or `||`) has parts
    /// that are the same for every lane and some of them are not cheap, the uniform parts that
    /// only parts which cannot fail precede are tested first, cheapest first, with scalar
    /// branches: a gradient's `f == T && u == 2 L && ...` is false on all rows but one, and then
    /// nothing else is computed. Every part the language evaluates is evaluated (on all lanes):
    /// one that may fail makes the vector step speculative, and where it fails the scalar redo
    /// keeps the language's order.
    fn vlogic(&mut self, and: bool, a: ExprId, b: ExprId, ix: IndexId) -> Result<Value> {
        let p = self.p;
        let op = if and { Bin::And } else { Bin::Or };
        let mut parts = Vec::new();
        flatten(p, op, a, &mut parts);
        flatten(p, op, b, &mut parts);
        let w = if self.f32 { types::I32 } else { types::I64 };
        let combine = |g: &mut Self, x: Value, y: Value| {
            if and {
                g.b.ins().band(x, y)
            } else {
                g.b.ins().bor(x, y)
            }
        };
        // a part decided where the loop runs (a copy of it for some conditions' values) stops
        // the chain there; the parts before it are still evaluated, for their errors
        if let Some(k) = parts.iter().position(|x| self.known(*x) == Some(!and)) {
            for x in &parts[..k] {
                if !self.an.errorfree(*x) {
                    self.emit_v(*x, ix)?;
                }
            }
            let m = self.b.ins().iconst(w, if and { 0 } else { -1 });
            return Ok(self.splat_m(m));
        }
        let n = parts.len();
        parts.retain(|x| self.known(*x) != Some(and));
        if parts.is_empty() {
            let m = self.b.ins().iconst(w, if and { -1 } else { 0 });
            return Ok(self.splat_m(m));
        }
        // A uniform part tested first skips every other part when it decides, so only one that
        // nothing written before it can fail is moved (else skipping would drop an error the
        // language raises: `lab[i - 1] > 0 || f == 0`); the rest stay lane-wise, in order.
        let mut uniform = Vec::new();
        let mut lanes = Vec::new();
        let mut clean = true;
        for e in &parts {
            if clean && !p.pool.free(*e).contains(&ix) {
                uniform.push(*e);
            } else {
                lanes.push(*e);
            }
            clean &= self.an.errorfree(*e);
        }
        // worth branching when there is scalar work to skip (and a step may branch)
        let uniform_cheap = !self.lazy
            || uniform.iter().all(|e| {
                let mut budget = 8;
                self.cheap(*e, &mut budget)
            });
        if uniform_cheap || lanes.is_empty() || uniform.is_empty() {
            if parts.len() == n {
                let x = self.emit_v(a, ix)?;
                let y = self.emit_v(b, ix)?;
                return Ok(combine(self, x, y));
            }
            let mut acc = self.emit_v(parts[0], ix)?;
            for x in &parts[1..] {
                let y = self.emit_v(*x, ix)?;
                acc = combine(self, acc, y);
            }
            return Ok(acc);
        }
        // cheap uniform parts first (stable: otherwise in the written order)
        uniform.sort_by_key(|e| {
            let mut budget = 8;
            !self.cheap(*e, &mut budget)
        });
        let mt = self.mtype();
        let join = self.b.create_block();
        self.b.append_block_param(join, mt);
        // the lanes when a uniform part decides: all false for `&&`, all true for `||`
        let decided = self.b.ins().iconst(w, if and { 0 } else { -1 });
        let decided = self.splat_m(decided);
        // (a scope of its own: the blocks below do not dominate what follows the join)
        self.push();
        let r = (|| -> Result<()> {
            for u in &uniform {
                if self.known(*u) == Some(and) {
                    continue;
                }
                let s = self.emit(*u)?;
                let next = self.b.create_block();
                let args = [BlockArg::Value(decided)];
                if and {
                    self.b.ins().brif(s, next, &[], join, &args);
                } else {
                    self.b.ins().brif(s, join, &args, next, &[]);
                }
                self.b.switch_to_block(next);
            }
            let mut acc: Option<Value> = None;
            for l in &lanes {
                let y = self.emit_v(*l, ix)?;
                acc = Some(match acc {
                    Some(x) => combine(self, x, y),
                    None => y,
                });
            }
            let acc = acc.ok_or_else(|| internal("no lane-wise part"))?;
            self.b.ins().jump(join, &[BlockArg::Value(acc)]);
            Ok(())
        })();
        self.pop();
        r?;
        self.b.switch_to_block(join);
        Ok(self.b.block_params(join)[0])
    }

    /// `e`'s vector value where `flag == when` (else lanes of zeros, for a select to drop).
    fn vlazy(&mut self, flag: Value, when: bool, e: ExprId, ix: IndexId) -> Result<Value> {
        let vt = self.vtype();
        let run = self.b.create_block();
        let join = self.b.create_block();
        self.b.append_block_param(join, vt);
        let z = self.real_const(0.0);
        let dummy = self.splat_v(z);
        if when {
            self.b
                .ins()
                .brif(flag, run, &[], join, &[BlockArg::Value(dummy)]);
        } else {
            self.b
                .ins()
                .brif(flag, join, &[BlockArg::Value(dummy)], run, &[]);
        }
        self.arm(run, join, &mut |g: &mut Self| g.emit_v(e, ix))?;
        self.b.switch_to_block(join);
        Ok(self.b.block_params(join)[0])
    }

    /// A branch's block `blk`: `f`'s value in a scope of its own (the block dominates
    /// nothing after the join), passed to `join`.
    fn arm(
        &mut self,
        blk: Block,
        join: Block,
        f: &mut dyn FnMut(&mut Self) -> Result<Value>,
    ) -> Result<()> {
        self.b.switch_to_block(blk);
        self.push();
        let v = f(self);
        self.pop();
        self.b.ins().jump(join, &[BlockArg::Value(v?)]);
        Ok(())
    }

    /// `if c { a } else { b }` with a scalar `c`: only the side taken is computed.
    fn vbranch(&mut self, c: Value, a: ExprId, b: ExprId, ix: IndexId) -> Result<Value> {
        let vt = self.vtype();
        let (ta, tb) = (self.b.create_block(), self.b.create_block());
        let join = self.b.create_block();
        self.b.append_block_param(join, vt);
        self.b.ins().brif(c, ta, &[], tb, &[]);
        for (blk, e) in [(ta, a), (tb, b)] {
            self.arm(blk, join, &mut |g: &mut Self| g.emit_v(e, ix))?;
        }
        self.b.switch_to_block(join);
        Ok(self.b.block_params(join)[0])
    }

    /// Int lanes of `e`: its vector form, or a uniform value saturated to the lanes' width (a
    /// comparison with a lane, at most `2^30 + 2^20`, keeps its result).
    fn int_lanes(&mut self, e: ExprId, ix: IndexId) -> Result<Value> {
        if self.p.pool.free(e).contains(&ix) {
            return self.emit_v(e, ix);
        }
        let s = self.emit(e)?;
        let s = if self.f32 {
            let hi = self.b.ins().iconst(types::I64, i32::MAX as i64);
            let lo = self.b.ins().iconst(types::I64, i32::MIN as i64);
            let s = self.b.ins().smin(s, hi);
            let s = self.b.ins().smax(s, lo);
            self.b.ins().ireduce(types::I32, s)
        } else {
            s
        };
        Ok(self.splat_m(s))
    }

    /// A vector read `t[.., ix + c]` along a row of a table (`c` may be 0): one load when the
    /// row and the lanes' cells are inside the table; a padded table's reads outside it give
    /// the pad (lane by lane, on a slower path), an unpadded one's fail the range check.
    /// Bool tables give lane masks.
    fn vload_row(
        &mut self,
        slot: usize,
        elem: Elem,
        dims: &[IndexId],
        args: &[ExprId],
        pad: Option<ExprId>,
        readonly: bool,
    ) -> Result<Value> {
        let p = self.p;
        let last = args.len() - 1;
        let mut row = self.b.ins().iconst(types::I64, 0);
        let mut row_in: Option<Value> = None;
        for (k, (a, d)) in args[..last].iter().zip(dims).enumerate() {
            let v = self.emit(*a)?;
            let n = self.ext_at(d.ix());
            if !crate::schedule::in_range(p, *a, *d) {
                let bad = self.b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, v, n);
                if pad.is_some() && crate::interp::is_offset(p, *a) {
                    let ok = self.b.ins().bxor_imm_s(bad, 1);
                    row_in = Some(match row_in {
                        Some(x) => self.b.ins().band(x, ok),
                        None => ok,
                    });
                } else {
                    self.check(bad, super::ERR_RANGE, args[k], k, v);
                }
            }
            let m = self.b.ins().imul(row, n);
            row = self.b.ins().iadd(m, v);
        }
        // the lanes' first cell; the whole span is inside when first <= n - lanes (unsigned)
        let ix = dims[last];
        let (shift, clamped) = row_shift(p, args[last], ix).ok_or_else(|| internal("row read"))?;
        let first = match p.pool.get(args[last]) {
            Expr::Call(Func::Clamp, a) => self.emit(a[0])?,
            _ => self.emit(args[last])?,
        };
        let n = self.ext_at(ix.ix());
        let span_in = if shift == 0 {
            None // (the vector loop's cells are the row's)
        } else {
            let lanes = self.lanes();
            let room = self.b.ins().iadd_imm_s(n, -lanes);
            let bad = self.b.ins().icmp(IntCC::UnsignedGreaterThan, first, room);
            if pad.is_some() || clamped {
                Some(self.b.ins().bxor_imm_s(bad, 1))
            } else {
                self.check(bad, super::ERR_RANGE, args[last], last, first);
                None
            }
        };
        let m = self.b.ins().imul(row, n);
        // (the slow path's lane by lane offsets)
        let off = self.b.ins().iadd(m, first);
        // (not `aligned`: the lanes' cells start anywhere in a row)
        let mut flags = MemFlagsData::new().with_notrap();
        if readonly {
            flags = flags.with_readonly();
        }
        let inside = match (row_in, span_in) {
            (Some(a), Some(b)) => Some(self.b.ins().band(a, b)),
            (a, b) => a.or(b),
        };
        let inside = inside.filter(|_| !self.unchecked);
        let Some(inside) = inside else {
            return self.vload_cells(slot, elem, m, first, flags);
        };
        let fill = match (pad, span_in) {
            // only the row may be outside: then every lane is the pad
            (Some(pad), None) => Outside::PadRow(pad),
            (Some(pad), Some(_)) => Outside::Pad(pad),
            (None, _) => Outside::Clamp,
        };
        let fast = self.b.create_block();
        let lanewise = self.b.create_block();
        let join = self.b.create_block();
        let vt = if elem == Elem::Bool {
            self.mtype()
        } else {
            self.vtype()
        };
        self.b.append_block_param(join, vt);
        self.b.ins().brif(inside, fast, &[], lanewise, &[]);
        self.arm(fast, join, &mut |g: &mut Self| {
            g.vload_cells(slot, elem, m, first, flags)
        })?;
        self.arm(lanewise, join, &mut |g: &mut Self| {
            g.lanes_or_pad(slot, elem, dims, fill, row_in, first, n, off)
        })?;
        self.b.switch_to_block(join);
        Ok(self.b.block_params(join)[0])
    }

    /// [`Gen::vload_row`]'s slow path: each lane's cell, or outside the row the pad (or the
    /// row's nearest cell, for a clamped read).
    #[allow(clippy::too_many_arguments)]
    fn lanes_or_pad(
        &mut self,
        slot: usize,
        elem: Elem,
        dims: &[IndexId],
        outside: Outside,
        row_in: Option<Value>,
        first: Value,
        n: Value,
        off: Value,
    ) -> Result<Value> {
        let pad = match outside {
            Outside::Pad(pad) => pad,
            Outside::PadRow(pad) => {
                let pad_s = self.emit(pad)?;
                return Ok(if elem == Elem::Bool {
                    let w = self.mtype().lane_type();
                    let x = self.b.ins().uextend(w, pad_s);
                    let m = self.b.ins().ineg(x);
                    self.splat_m(m)
                } else {
                    self.splat_v(pad_s)
                });
            }
            Outside::Clamp => {
                // (a clamped read has no pad and its row is checked: cells first + j clamped)
                let ty = self.elem_type(elem);
                let zero = self.b.ins().iconst(types::I64, 0);
                let top = self.b.ins().iadd_imm_s(n, -1);
                let row = self.b.ins().isub(off, first);
                let mut lanes_v = Vec::new();
                for j in 0..self.lanes() {
                    let c = self.b.ins().iadd_imm_s(first, j);
                    let c = self.b.ins().smax(c, zero);
                    let c = self.b.ins().smin(c, top);
                    let o = self.b.ins().iadd(row, c);
                    let a = self.addr(slot, elem, o);
                    lanes_v.push(self.b.ins().load(ty, MemFlagsData::trusted(), a, 0));
                }
                return Ok(self.assemble_lanes(elem, &lanes_v));
            }
        };
        // Lane by lane: a cell outside gives the pad (cell 0 is read instead, when the table
        // has one, and dropped).
        let pad_v = self.emit(pad)?;
        let cells = self.row_count(dims);
        let nonempty = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, cells, 0);
        let row_ok = match row_in {
            Some(r) => self.b.ins().band(r, nonempty),
            None => nonempty,
        };
        let ty = self.elem_type(elem);
        let zero = self.b.ins().iconst(types::I64, 0);
        let mut lanes_v = Vec::new();
        for j in 0..self.lanes() {
            let c = self.b.ins().iadd_imm_s(first, j);
            let lane_bad = self.b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, c, n);
            let lane_ok = self.b.ins().bxor_imm_s(lane_bad, 1);
            let ok = self.b.ins().band(row_ok, lane_ok);
            let o = self.b.ins().iadd_imm_s(off, j);
            let o = self.b.ins().select(ok, o, zero);
            let a = self.addr(slot, elem, o);
            let x = self.b.ins().load(ty, MemFlagsData::trusted(), a, 0);
            lanes_v.push(self.b.ins().select(ok, x, pad_v));
        }
        Ok(self.assemble_lanes(elem, &lanes_v))
    }

    /// The lanes' consecutive cells from cell `first` of the row starting at cell `row`: one
    /// vector load of reals, or a bool table's bytes as lane masks.
    fn vload_cells(
        &mut self,
        slot: usize,
        elem: Elem,
        row: Value,
        first: Value,
        flags: MemFlagsData,
    ) -> Result<Value> {
        let a = self.addr_in_row(slot, elem, row, first);
        match elem {
            Elem::Real => Ok(self.load_v(flags, a, 0)),
            Elem::Bool => {
                // the lanes' bytes in one load, widened to lanes of 0 or 1, negated to masks
                let le = MemFlagsData::new().with_endianness(Endianness::Little);
                let (w, widen) = if self.f32 {
                    (types::I32, 2)
                } else {
                    (types::I16, 3)
                };
                let x = self.b.ins().load(w, flags, a, 0);
                let x = if w == types::I32 {
                    x
                } else {
                    self.b.ins().uextend(types::I32, x)
                };
                let v = self.b.ins().scalar_to_vector(types::I32X4, x);
                let mut v = self.b.ins().bitcast(types::I8X16, le, v);
                for _ in 0..widen {
                    v = self.b.ins().uwiden_low(v);
                }
                Ok(self.b.ins().ineg(v))
            }
            Elem::Int => Err(internal("int table in a vector loop")),
        }
    }

    /// A vector of scalar lanes: reals as they are, bools (0 or 1 bytes) as lane masks.
    fn assemble_lanes(&mut self, elem: Elem, lanes: &[Value]) -> Value {
        if elem == Elem::Bool {
            let it = self.mtype();
            let lt = it.lane_type();
            let z = self.b.ins().iconst(lt, 0);
            let mut v = self.b.ins().splat(it, z);
            for (j, x) in lanes.iter().enumerate() {
                let w = self.b.ins().uextend(lt, *x);
                let m = self.b.ins().ineg(w);
                v = self.b.ins().insertlane(v, m, j as u8);
            }
            v
        } else {
            let z = self.real_const(0.0);
            let mut v = self.splat_v(z);
            for (j, x) in lanes.iter().enumerate() {
                v = self.b.ins().insertlane(v, *x, j as u8);
            }
            v
        }
    }

    /// Vector values of the nodes that at least two of `lists` reach (and that depend on the
    /// loop index and hold no loop), computed before any of them.
    fn vshared(&mut self, lists: &[Vec<ExprId>], ix: IndexId) -> Result<()> {
        if lists.len() < 2 {
            return Ok(());
        }
        let count = self.an.reach_counts(lists);
        for (k, c) in count.iter().enumerate() {
            let e = ExprId(k as u32);
            if *c >= 2
                && self.p.pool.free(e).contains(&ix)
                && self.an.flat(e)
                && !self.p.pool.get(e).is_leaf()
                && self.p.pool.ty(e) != Ty::Int
                && !matches!(self.p.pool.get(e), Expr::Index(_))
            {
                self.emit_v(e, ix)?;
            }
        }
        Ok(())
    }

    /// x^y lane-wise as e^(y log|x|), with pow's special cases: x^0 = 1 and 1^y = 1 (even
    /// for NaN), a negative base only to an integer power (odd powers negative), else NaN.
    /// `x ^ y` lane-wise as `exp(y log|x|)`, with C's `pow` rules for the sign and the
    /// special values: a negative sign bit (`-0` and `-inf` included) and an odd integer `y`
    /// negate the result; a finite negative `x` with a non-integer `y` is NaN; `y = 0`,
    /// `x = 1` and `x = -1` with `y = ±inf` give 1.
    fn vpow(&mut self, x: Value, y: Value) -> Result<Value> {
        let ax = self.fabs(x);
        let l = self.math(Func::Log, ax)?;
        let t = self.b.ins().fmul(y, l);
        let r = self.math(Func::Exp, t)?;
        let fy = self.b.ins().floor(y);
        let isint = self.b.ins().fcmp(FloatCC::Equal, fy, y);
        let half_c = self.rc(y, 0.5);
        let half = self.b.ins().fmul(y, half_c);
        let fh = self.b.ins().floor(half);
        let odd_h = self.b.ins().fcmp(FloatCC::NotEqual, fh, half);
        let odd = self.b.ins().band(isint, odd_h);
        let le = MemFlagsData::new().with_endianness(Endianness::Little);
        let it = self.mtype();
        let xi = self.b.ins().bitcast(it, le, x);
        let z0 = self.b.ins().iconst(it.lane_type(), 0);
        let z0 = self.splat_m(z0);
        let sign = self.b.ins().icmp(IntCC::SignedLessThan, xi, z0);
        let flip = self.b.ins().band(sign, odd);
        let nr = self.fneg(r);
        let r = self.sel(flip, nr, r);
        let zero = self.rc(x, 0.0);
        let ninf = self.rc(x, f64::NEG_INFINITY);
        let neg = self.b.ins().fcmp(FloatCC::LessThan, x, zero);
        let finite = self.b.ins().fcmp(FloatCC::GreaterThan, x, ninf);
        let bad = self.b.ins().band(neg, finite);
        let notint = self.b.ins().bnot(isint);
        let bad = self.b.ins().band(bad, notint);
        let nan = self.rc(x, f64::NAN);
        let r = self.sel(bad, nan, r);
        let one = self.rc(x, 1.0);
        let inf = self.rc(x, f64::INFINITY);
        let y0 = self.b.ins().fcmp(FloatCC::Equal, y, zero);
        let x1 = self.b.ins().fcmp(FloatCC::Equal, x, one);
        let ay = self.fabs(y);
        let yinf = self.b.ins().fcmp(FloatCC::Equal, ay, inf);
        let ax1 = self.b.ins().fcmp(FloatCC::Equal, ax, one);
        let m1inf = self.b.ins().band(yinf, ax1);
        let trivial = self.b.ins().bor(y0, x1);
        let trivial = self.b.ins().bor(trivial, m1inf);
        Ok(self.sel(trivial, one, r))
    }

    /// The row-major offset of a read whose last index is the vector loop's (its base cell).
    fn voffset(&mut self, dims: &[IndexId], args: &[ExprId]) -> Result<Value> {
        self.offset_with(dims, args, None)
    }

    /// The row-major offset of `args`, with the loop index `sub.0` read as the cell `sub.1`
    /// (one lane's cell) when given.
    fn offset_with(
        &mut self,
        dims: &[IndexId],
        args: &[ExprId],
        sub: Option<(IndexId, Value)>,
    ) -> Result<Value> {
        let mut off = self.b.ins().iconst(types::I64, 0);
        for (a, d) in args.iter().zip(dims) {
            let x = match sub {
                Some((ix, k)) if matches!(self.p.pool.get(*a), Expr::Index(i) if *i == ix) => k,
                _ => self.checked_arg(*a, *d)?,
            };
            let ext_v = self.ext_at(d.ix());
            let m = self.b.ins().imul(off, ext_v);
            off = self.b.ins().iadd(m, x);
        }
        Ok(off)
    }

    /// A vector run's target row (its indices other than the loop's, which are in range)
    /// outside its table takes nothing, as in the scalar code ([`Gen::target_offset`]: its
    /// guards left the term unwritten there, or the forward pass read a pad): branches past
    /// the write when it is, returning the block to continue in (the write's values in a
    /// scope of their own, popped there). `m_grad[i - 1, j]` at `i = 0` under zero weights
    /// was a range error the interpreter does not raise.
    fn skip_outside_row(&mut self, dims: &[IndexId], args: &[ExprId]) -> Result<Option<Block>> {
        let mut outside: Option<Value> = None;
        for (a, d) in args.iter().zip(dims) {
            if crate::schedule::in_range(self.p, *a, *d) {
                continue;
            }
            let v = self.emit(*a)?;
            let n = self.ext_at(d.ix());
            let bad = self.b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, v, n);
            outside = Some(match outside {
                Some(o) => self.b.ins().bor(o, bad),
                None => bad,
            });
        }
        let Some(outside) = outside else {
            return Ok(None);
        };
        let write = self.b.create_block();
        let done = self.b.create_block();
        self.b.ins().brif(outside, done, &[], write, &[]);
        self.b.switch_to_block(write);
        self.push();
        Ok(Some(done))
    }

    /// An index argument's value, range-checked unless it is in range by construction.
    /// (Vector loops take reads that are safe; a scatter's one cell, which its guards may have
    /// left unwritten outside the table, goes through [`Gen::accumulate_one`] instead.)
    fn checked_arg(&mut self, a: ExprId, d: IndexId) -> Result<Value> {
        let v = self.emit(a)?;
        if !crate::schedule::in_range(self.p, a, d) {
            let n = self.ext_at(d.ix());
            let bad = self.b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, v, n);
            self.check(bad, super::ERR_RANGE, a, 0, v);
        }
        Ok(v)
    }

    /// `s` added into the one cell `index` of a run that has the same cell for every lane. A
    /// cell outside the table takes nothing, as in the scalar code ([`Gen::target_offset`]):
    /// the index is a forward read's, which there either read the pad (no gradient flows into
    /// a pad: `r_grad[i - 1]` for `r[i - 1]` at `i = 0`, even with a nonzero adjoint) or failed
    /// its own range check before the backward pass ran.
    fn accumulate_one(
        &mut self,
        slot: usize,
        dims: &[IndexId],
        index: &[ExprId],
        s: Value,
    ) -> Result<()> {
        let mut off = self.b.ins().iconst(types::I64, 0);
        let mut checks = Vec::new();
        for (a, d) in index.iter().zip(dims) {
            let v = self.emit(*a)?;
            let n = self.ext_at(d.ix());
            if !crate::schedule::in_range(self.p, *a, *d) {
                let bad = self.b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, v, n);
                checks.push(bad);
            }
            let m = self.b.ins().imul(off, n);
            off = self.b.ins().iadd(m, v);
        }
        if checks.is_empty() {
            self.accumulate(slot, off, s);
            return Ok(());
        }
        let mut outside: Option<Value> = None;
        for bad in checks {
            outside = Some(match outside {
                Some(o) => self.b.ins().bor(o, bad),
                None => bad,
            });
        }
        let write = self.b.create_block();
        let done = self.b.create_block();
        let outside = outside.ok_or_else(|| internal("no range check"))?;
        self.b.ins().brif(outside, done, &[], write, &[]);
        self.b.switch_to_block(write);
        self.accumulate(slot, off, s);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
        Ok(())
    }

    /// The address of a unit-stride read or write along the loop's index: its row's
    /// address (out of the loop) plus the cell's (see [`Gen::addr_in_row`]).
    fn vaddr(&mut self, slot: usize, dims: &[IndexId], args: &[ExprId]) -> Result<Value> {
        let (Some((a, outer_args)), Some((d, outer))) = (args.split_last(), dims.split_last())
        else {
            let off = self.voffset(dims, args)?;
            return Ok(self.addr(slot, Elem::Real, off));
        };
        let row = self.offset_with(outer, outer_args, None)?;
        let ext_v = self.ext_at(d.ix());
        let row = self.b.ins().imul(row, ext_v);
        let cell = self.checked_arg(*a, *d)?;
        Ok(self.addr_in_row(slot, Elem::Real, row, cell))
    }

    fn vload(
        &mut self,
        slot: usize,
        dims: &[IndexId],
        args: &[ExprId],
        readonly: bool,
    ) -> Result<Value> {
        let a = self.vaddr(slot, dims, args)?;
        let mut flags = MemFlagsData::new().with_notrap();
        if readonly {
            flags = flags.with_readonly();
        }
        Ok(self.load_v(flags, a, 0))
    }

    /// A vector read of a table of `elem`s (reals, or bools as lane masks): one load when
    /// consecutive cells are consecutive in memory, else one scalar load per lane (strided
    /// reads such as `boxes[n, 2]`, or a bool table `b[p, c]` read along `p`), each at its
    /// element's size.
    fn vload_any(
        &mut self,
        slot: usize,
        elem: Elem,
        dims: &[IndexId],
        args: &[ExprId],
        ix: IndexId,
    ) -> Result<Value> {
        if unit_stride(self.p, args, dims, ix) {
            if elem == Elem::Real {
                return self.vload(slot, dims, args, true);
            }
            // (the bytes of a bool table's row, as `vload_row` reads them)
            let (Some((a, outer_args)), Some((d, outer))) = (args.split_last(), dims.split_last())
            else {
                return Err(internal("a unit-stride read without dimensions"));
            };
            let row = self.offset_with(outer, outer_args, None)?;
            let ext = self.ext_at(d.ix());
            let row = self.b.ins().imul(row, ext);
            let cell = self.checked_arg(*a, *d)?;
            let flags = MemFlagsData::new().with_notrap().with_readonly();
            return self.vload_cells(slot, elem, row, cell, flags);
        }
        let base = self.idx[ix.ix()].ok_or_else(|| internal("vector index not bound"))?;
        if elem == Elem::Real {
            if let Some(v) = self.vcolumn(slot, dims, args, ix, base)? {
                return Ok(v);
            }
        }
        let flags = MemFlagsData::trusted().with_readonly();
        let ty = self.elem_type(elem);
        let mut lanes = Vec::new();
        for lane in 0..self.lanes() {
            let k = self.b.ins().iadd_imm_s(base, lane);
            let off = self.offset_with(dims, args, Some((ix, k)))?;
            let addr = self.addr(slot, elem, off);
            lanes.push(self.b.ins().load(ty, flags, addr, 0));
        }
        Ok(self.assemble_lanes(elem, &lanes))
    }

    /// A gather `x[.., g[.., ix]]` (see [`gather_index`]): for each lane, its id read from
    /// `g`, range-checked against `x`'s last dimension as the scalar read checks it (a
    /// failing check sends a speculative step to the scalar code), and the cell it names in
    /// `x`'s row, whose address is computed once.
    fn vgather(&mut self, e: ExprId, ix: IndexId) -> Result<Value> {
        let p = self.p;
        let (slot, dims, args) = match p.pool.get(e) {
            Expr::Input(i, a) => (i.ix(), &p.inputs[i.ix()].dims, a),
            Expr::Tensor(t, a) => (p.inputs.len() + t.ix(), &p.tensors[t.ix()].indices, a),
            _ => return Err(internal("not a gather")),
        };
        let (Some((id, outer)), Some((last, outer_dims))) = (args.split_last(), dims.split_last())
        else {
            return Err(internal("gather of nothing"));
        };
        let (gslot, gdims, gargs) = match p.pool.get(*id) {
            Expr::Input(i, a) => (i.ix(), &p.inputs[i.ix()].dims, a),
            Expr::Tensor(t, a) => (p.inputs.len() + t.ix(), &p.tensors[t.ix()].indices, a),
            _ => return Err(internal("gather without ids")),
        };
        let row = self.offset_with(outer_dims, outer, None)?;
        let n = self.ext_at(last.ix());
        let row = self.b.ins().imul(row, n);
        let base = self.idx[ix.ix()].ok_or_else(|| internal("vector index not bound"))?;
        let flags = MemFlagsData::trusted().with_readonly();
        let mut lanes = Vec::new();
        for lane in 0..self.lanes() {
            let k = self.b.ins().iadd_imm_s(base, lane);
            let goff = self.offset_with(gdims, gargs, Some((ix, k)))?;
            let ga = self.addr(gslot, Elem::Int, goff);
            let v = self
                .b
                .ins()
                .load(types::I64, MemFlagsData::trusted(), ga, 0);
            let bad = self.b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, v, n);
            self.check(bad, super::ERR_RANGE, e, outer.len(), v);
            let a = self.addr_in_row(slot, Elem::Real, row, v);
            lanes.push(self.b.ins().load(self.rt, flags, a, 0));
        }
        Ok(self.assemble_lanes(Elem::Real, &lanes))
    }

    /// A column `c` of a table of short rows, `boxes[n, c]` over a literal `[n, 4]` (f32) or
    /// `[n, 2]`/`[n, 4]` (f64) with the loop over `n`: the rows of the vector step are loaded
    /// whole and transposed with unpack shuffles, once for all the columns (kept by table and
    /// step), instead of one scalar load per lane and column.
    fn vcolumn(
        &mut self,
        slot: usize,
        dims: &[IndexId],
        args: &[ExprId],
        ix: IndexId,
        base: Value,
    ) -> Result<Option<Value>> {
        let Some((width, col)) = self.column_of(dims, args, ix) else {
            return Ok(None);
        };
        if let Some(cols) = self.vcols.get(&(slot, base)) {
            return Ok(Some(cols[col]));
        }
        // rows base.. of `width` reals each, contiguous
        let off = self.b.ins().imul_imm_s(base, width);
        let a = self.addr(slot, Elem::Real, off);
        let flags = MemFlagsData::trusted().with_readonly();
        let loads = (width as usize * self.lanes() as usize) / if self.f32 { 4 } else { 2 };
        let r: Vec<Value> = (0..loads)
            .map(|k| self.load_v(flags, a, 16 * k as i32))
            .collect();
        let cols = self.regroup(&r, false);
        let v = cols[col];
        self.vcols.insert((slot, base), cols);
        Ok(Some(v))
    }

    /// `(width, c)` when `args` is `[n, c]` (a literal `c`) over dims `[n, w]` with the loop
    /// over `n` and `w` a literal width whose rows a vector step transposes (see
    /// [`Gen::vcolumn`]).
    fn column_of(&self, dims: &[IndexId], args: &[ExprId], ix: IndexId) -> Option<(i64, usize)> {
        let p = self.p;
        let ([d0, d1], [a0, a1]) = (dims, args) else {
            return None;
        };
        let crate::ir::Extent::Fixed(width) = p.indices[d1.ix()].extent else {
            return None;
        };
        let col = match p.pool.get(*a1) {
            Expr::Int(c) if (0..width).contains(c) => *c as usize,
            _ => return None,
        };
        let ok_shape = if self.f32 {
            width == 4
        } else {
            width == 2 || width == 4
        };
        (*d0 == ix && matches!(p.pool.get(*a0), Expr::Index(i) if *i == ix) && ok_shape)
            .then_some((width, col))
    }

    /// The unpack shuffles between the vectors loaded from a vector step's rows (memory
    /// order) and its column vectors ([`Gen::vcolumn`]): rows to columns, or back with
    /// `to_rows`. f32 rows of 4 and f64 rows of 2 are square transposes (their own inverse);
    /// f64 rows of 4 are two vectors per row.
    fn regroup(&mut self, v: &[Value], to_rows: bool) -> Vec<Value> {
        // byte masks (lanes of `a` then `b`)
        const LO32: [u8; 16] = [0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23];
        const HI32: [u8; 16] = [8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31];
        const LO64: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23];
        const HI64: [u8; 16] = [8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31];
        let (v, pairs): (Vec<Value>, [(usize, usize); 2]) = if self.f32 && to_rows {
            // the same transpose with columns 0, 2 and 1, 3 paired first: Cranelift computes
            // a store's operands in order, so each pair of columns is finished before the
            // next, and boxes' x1, x2 (and y1, y2) share their terms
            let t = [
                self.shuffle(v[0], v[2], LO32),
                self.shuffle(v[1], v[3], LO32),
                self.shuffle(v[0], v[2], HI32),
                self.shuffle(v[1], v[3], HI32),
            ];
            let mut out = Vec::new();
            for (a, b) in [(0, 1), (2, 3)] {
                out.push(self.shuffle(t[a], t[b], LO32));
                out.push(self.shuffle(t[a], t[b], HI32));
            }
            return out;
        } else if self.f32 {
            let t = vec![
                self.shuffle(v[0], v[1], LO32),
                self.shuffle(v[2], v[3], LO32),
                self.shuffle(v[0], v[1], HI32),
                self.shuffle(v[2], v[3], HI32),
            ];
            (t, [(0, 1), (2, 3)])
        } else if v.len() == 2 {
            (v.to_vec(), [(0, 1), (0, 1)])
        } else if to_rows {
            // columns 0,1 give the rows' first halves, 2,3 their second
            let (a, b) = (
                [
                    self.shuffle(v[0], v[1], LO64),
                    self.shuffle(v[2], v[3], LO64),
                ],
                [
                    self.shuffle(v[0], v[1], HI64),
                    self.shuffle(v[2], v[3], HI64),
                ],
            );
            return vec![a[0], a[1], b[0], b[1]];
        } else {
            // rows are v[0], v[1] and v[2], v[3]
            (vec![v[0], v[2], v[1], v[3]], [(0, 1), (2, 3)])
        };
        let mut out = Vec::new();
        for (a, b) in pairs.iter().take(if v.len() == 2 { 1 } else { 2 }) {
            out.push(self.shuffle(v[*a], v[*b], LO64));
            out.push(self.shuffle(v[*a], v[*b], HI64));
        }
        out
    }

    /// Lanes of `a` and `b` picked by a byte mask (as Cranelift's `shuffle` on bytes).
    fn shuffle(&mut self, a: Value, b: Value, mask: [u8; 16]) -> Value {
        let le = MemFlagsData::new().with_endianness(Endianness::Little);
        let ab = self.b.ins().bitcast(types::I8X16, le, a);
        let bb = self.b.ins().bitcast(types::I8X16, le, b);
        let imm = self
            .b
            .func
            .dfg
            .immediates
            .push(ConstantData::from(mask.to_vec()));
        let s = self.b.ins().shuffle(ab, bb, imm);
        let t = self.vtype();
        self.b.ins().bitcast(t, le, s)
    }

    fn vstore(&mut self, a: Value, v: Value) {
        let flags = MemFlagsData::new().with_notrap();
        self.b.ins().store(flags, v, a, 0);
    }

    /// One vector step of the work at the current base cell.
    fn vwork(&mut self, w: &VecWork, carried: &[Carried], ix: IndexId) -> Result<()> {
        match w {
            VecWork::Nothing => {}
            VecWork::Fill {
                slot,
                body,
                dims,
                also,
            } => {
                for l in also
                    .iter()
                    .filter_map(|(_, e)| self.p.pool.lse_share(*e).map(|s| s.1))
                {
                    // Pinned here, before the body's branches: Cranelift places pure code at
                    // its first use and would compute it again after them for the shares.
                    let v = self.emit_v(l, ix)?;
                    self.anchor_store(v);
                }
                let v = self.emit_v(*body, ix)?;
                let a = self.row_major_addr(*slot, Elem::Real, dims)?;
                self.vstore(a, v);
                for (w, e) in also.iter() {
                    let v = self.emit_v(*e, ix)?;
                    let a = self.row_major_addr(*w, Elem::Real, dims)?;
                    self.vstore(a, v);
                }
            }
            VecWork::Runs(runs) => {
                // Nodes two terms (or a term and a carried body) share: computed once, first.
                let mut lists: Vec<Vec<ExprId>> = runs
                    .iter()
                    .flat_map(|r| r.terms.iter().map(contribution_roots))
                    .collect();
                lists.extend(carried.iter().map(|c| vec![c.body]));
                self.vshared(&lists, ix)?;
                // direct column runs of short-row tables, stored together once all are known
                let mut pending: Vec<(usize, Vec<Option<Value>>)> = Vec::new();
                for (k, r) in runs.iter().enumerate() {
                    let r = &self.prune(r);
                    let mut acc: Option<Value> = None;
                    for t in &r.terms {
                        let mut mask: Option<Value> = None;
                        for g in &t.guards {
                            let m = self.emit_v(*g, ix)?;
                            mask = Some(match mask {
                                Some(a) => self.b.ins().band(a, m),
                                None => m,
                            });
                        }
                        let negated = acc.and_then(|_| super::later_negation(self.p, t.value));
                        let v = self.emit_v(negated.unwrap_or(t.value), ix)?;
                        let v = match mask {
                            Some(m) => {
                                let z = self.rc(v, 0.0);
                                self.sel(m, v, z)
                            }
                            None => v,
                        };
                        acc = Some(match (acc, negated) {
                            (Some(a), Some(_)) => self.b.ins().fsub(a, v),
                            (Some(a), None) => self.b.ins().fadd(a, v),
                            (None, _) => v,
                        });
                    }
                    let v = match acc {
                        Some(v) => v,
                        // (every term pruned: a direct write still stores its zeros)
                        None if r.direct => {
                            let z = self.real_const(0.0);
                            self.splat_v(z)
                        }
                        None => continue,
                    };
                    let dims = self.p.tensors[r.target.ix()].indices.clone();
                    let slot = self.p.inputs.len() + r.target.ix();
                    if let Some(Some(vars)) = self.vcells.get(k).cloned() {
                        // one cell for every lane, summed in registers over the loop
                        let parts = self.widen_lanes(v);
                        for (var, part) in vars.iter().zip(parts) {
                            let a = self.b.use_var(*var);
                            let s = self.b.ins().fadd(a, part);
                            self.b.def_var(*var, s);
                        }
                        continue;
                    }
                    if r.index.iter().all(|a| !self.p.pool.free(*a).contains(&ix)) {
                        // one cell for every lane: add the lanes (in order), then the cell
                        let mut s = self.b.ins().extractlane(v, 0);
                        for lane in 1..self.lanes() {
                            let x = self.b.ins().extractlane(v, lane as u8);
                            s = self.b.ins().fadd(s, x);
                        }
                        self.accumulate_one(slot, &dims, &r.index, s)?;
                        continue;
                    }
                    if let (true, Some((w, col))) = (r.direct, self.column_of(&dims, &r.index, ix))
                    {
                        let at = match pending.iter().position(|(s, _)| *s == slot) {
                            Some(at) => at,
                            None => {
                                pending.push((slot, vec![None; w as usize]));
                                pending.len() - 1
                            }
                        };
                        pending[at].1[col] = Some(v);
                        if pending[at].1.iter().all(|c| c.is_some()) {
                            let (slot, cols) = pending.remove(at);
                            let cols: Vec<Value> = cols.into_iter().flatten().collect();
                            let rows = self.regroup(&cols, true);
                            let base = self.idx[ix.ix()]
                                .ok_or_else(|| internal("vector index not bound"))?;
                            let off = self.b.ins().imul_imm_s(base, w);
                            let a = self.addr(slot, Elem::Real, off);
                            for (k, row) in rows.into_iter().enumerate() {
                                let flags = MemFlagsData::new().with_notrap();
                                self.b.ins().store(flags, row, a, 16 * k as i32);
                            }
                        }
                        continue;
                    }
                    let skip = self.skip_outside_row(&dims, &r.index)?;
                    if !unit_stride(self.p, &r.index, &dims, ix) {
                        // lane by lane: cell k + lane of the loop index
                        let base =
                            self.idx[ix.ix()].ok_or_else(|| internal("vector index not bound"))?;
                        for lane in 0..self.lanes() {
                            let k = self.b.ins().iadd_imm_s(base, lane);
                            let off = self.offset_with(&dims, &r.index, Some((ix, k)))?;
                            let x = self.b.ins().extractlane(v, lane as u8);
                            if r.direct {
                                self.store(slot, Elem::Real, off, x);
                            } else {
                                self.accumulate(slot, off, x);
                            }
                        }
                    } else {
                        let a = self.vaddr(slot, &dims, &r.index)?;
                        if r.direct {
                            self.vstore(a, v);
                        } else {
                            let flags = MemFlagsData::new().with_notrap();
                            let old = self.load_v(flags, a, 0);
                            let s = self.b.ins().fadd(old, v);
                            self.vstore(a, s);
                        }
                    }
                    if let Some(done) = skip {
                        self.pop();
                        self.b.ins().jump(done, &[]);
                        self.b.switch_to_block(done);
                    }
                }
                // (the schedule makes a table's direct columns complete within one group)
                if !pending.is_empty() {
                    return Err(internal("incomplete direct columns"));
                }
            }
        }
        Ok(())
    }

    /// The vector loop over the cells `0..n & !(lanes-1)` of `ix`, accumulating the carried
    /// reductions in vector accumulators, which are folded into `accs`' scalar variables
    /// (pairwise, lane order) before the scalar loop runs the remaining cells. Returns the
    /// first cell left for the scalar loop.
    pub(super) fn vector_loop(
        &mut self,
        w: &VecWork,
        accs: &[Carried],
        ix: IndexId,
    ) -> Result<Value> {
        let lanes = self.lanes();
        let n = self.ext_at(ix.ix());
        // n - (n & (lanes-1)), not n & -lanes: Cranelift rematerializes an and-with-constant
        // in every block that uses it, so the loop would recompute its bound each step.
        let copies = self.copies(w, accs, ix);
        let step = copies * lanes;
        // Inside an outer loop (rows of a few dozen cells: CTC's 30 classes), the cells past
        // the interleaved steps run one vector step at a time before the scalar remainder,
        // which would otherwise take up to 15 cells (15 scalar exps) per row; a loop of its
        // own (a whole 1-D loss) leaves at most 15 cells of millions and keeps its code small.
        let single = copies > 1
            && self
                .idx
                .iter()
                .enumerate()
                .any(|(i, v)| i != ix.ix() && v.is_some());
        // (int lanes are i32 for f32: no vector steps over 2^30 cells)
        let big = if self.f32 && self.int_lanes_used(w, accs, ix) {
            Some(
                self.b
                    .ins()
                    .icmp_imm_s(IntCC::SignedGreaterThan, n, 1 << 30),
            )
        } else {
            None
        };
        let bound = |g: &mut Self, step: i64| {
            let tail = g.b.ins().band_imm_s(n, step - 1);
            let m = g.b.ins().isub(n, tail);
            match big {
                Some(big) => {
                    let zero = g.b.ins().iconst(types::I64, 0);
                    g.b.ins().select(big, zero, m)
                }
                None => m,
            }
        };
        let main_n = bound(self, step);
        let single_n = if single { bound(self, lanes) } else { main_n };
        // Sums in f64 lanes (two F64X2 per F32X4), max/min in the real lanes.
        let mut vaccs: Vec<Vec<Variable>> = Vec::new();
        for c in accs {
            let mut vs = Vec::new();
            match c.red {
                Red::Sum | Red::Mean => {
                    let halves = if self.f32 { 2 } else { 1 };
                    for _ in 0..halves {
                        let z = self.b.ins().f64const(0.0);
                        let z = self.b.ins().splat(types::F64X2, z);
                        let var = self.b.declare_var(types::F64X2);
                        self.b.def_var(var, z);
                        vs.push(var);
                    }
                }
                _ => {
                    let init = self.b.use_var(c.var);
                    let v = self.splat_v(init);
                    let var = self.b.declare_var(self.vtype());
                    self.b.def_var(var, v);
                    vs.push(var);
                    // lanes that saw a NaN (the compare+select below drops them)
                    let ity = self.vtype().as_int();
                    let z = self.b.ins().iconst(ity.lane_type(), 0);
                    let z = self.b.ins().splat(ity, z);
                    let nan = self.b.declare_var(ity);
                    self.b.def_var(nan, z);
                    vs.push(nan);
                }
            }
            vaccs.push(vs);
        }
        // Runs into one cell whatever the loop index: f64 vector accumulators.
        let cells: Vec<Option<Vec<Variable>>> = match w {
            VecWork::Runs(runs) => runs
                .iter()
                .map(|r| {
                    let one = r
                        .index
                        .iter()
                        .all(|a| !self.p.pool.free(*a).contains(&ix) && self.an.safe(*a));
                    one.then(|| {
                        (0..if self.f32 { 2 } else { 1 })
                            .map(|_| {
                                let z = self.b.ins().f64const(0.0);
                                let z = self.b.ins().splat(types::F64X2, z);
                                let var = self.b.declare_var(types::F64X2);
                                self.b.def_var(var, z);
                                var
                            })
                            .collect()
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        let saved_cells = std::mem::replace(&mut self.vcells, cells.clone());
        let var = self.b.declare_var(types::I64);
        let zero = self.b.ins().iconst(types::I64, 0);
        self.b.def_var(var, zero);
        let body = self.b.create_block();
        let exit = self.b.create_block();
        let flush = self.b.create_block();
        let nonempty = self
            .b
            .ins()
            .icmp_imm_s(IntCC::SignedGreaterThan, single_n, 0);
        // (where the interleaved loop leaves: the single steps, if any)
        let after = single.then(|| self.b.create_block());
        if let Some(after) = after {
            let head = self.b.create_block();
            self.b.ins().brif(nonempty, head, &[], exit, &[]);
            self.b.switch_to_block(head);
            let run = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, main_n, 0);
            self.b.ins().brif(run, body, &[], after, &[]);
        } else {
            self.b.ins().brif(nonempty, body, &[], exit, &[]);
        }
        self.b.switch_to_block(body);
        let k = self.b.use_var(var);
        self.vsteps(w, accs, &vaccs, ix, k, copies, body)?;
        let k = self.b.use_var(var);
        let next = self.b.ins().iadd_imm_s(k, step);
        self.b.def_var(var, next);
        let more = self.b.ins().icmp(IntCC::SignedLessThan, next, main_n);
        self.b
            .ins()
            .brif(more, body, &[], after.unwrap_or(flush), &[]);
        if let Some(after) = after {
            // k is 0 (no interleaved step ran) or main_n
            self.b.switch_to_block(after);
            let k = self.b.use_var(var);
            let more = self.b.ins().icmp(IntCC::SignedLessThan, k, single_n);
            let ones = self.b.create_block();
            self.b.ins().brif(more, ones, &[], flush, &[]);
            self.b.switch_to_block(ones);
            let k = self.b.use_var(var);
            self.vstep(w, accs, &vaccs, ix, k)?;
            let k = self.b.use_var(var);
            let next = self.b.ins().iadd_imm_s(k, lanes);
            self.b.def_var(var, next);
            let more = self.b.ins().icmp(IntCC::SignedLessThan, next, single_n);
            self.b.ins().brif(more, ones, &[], flush, &[]);
        }
        // After a loop that ran: the one-cell sums go to memory, lanes in order.
        self.b.switch_to_block(flush);
        self.vcells = saved_cells;
        // (a scope of its own: the flush block does not dominate the scalar remainder, so an
        // index loaded here must not be remembered for it)
        self.push();
        if let VecWork::Runs(runs) = w {
            for (r, vars) in runs.iter().zip(&cells) {
                let Some(vars) = vars else { continue };
                let mut acc: Option<Value> = None;
                for var in vars {
                    let v = self.b.use_var(*var);
                    for l in 0..2u8 {
                        let x = self.b.ins().extractlane(v, l);
                        acc = Some(match acc {
                            Some(a) => self.b.ins().fadd(a, x),
                            None => x,
                        });
                    }
                }
                let Some(s) = acc else { continue };
                let s = if self.f32 {
                    self.b.ins().fdemote(types::F32, s)
                } else {
                    s
                };
                let dims = self.p.tensors[r.target.ix()].indices.clone();
                let slot = self.p.inputs.len() + r.target.ix();
                if let Err(e) = self.accumulate_one(slot, &dims, &r.index, s) {
                    self.pop();
                    return Err(e);
                }
            }
        }
        self.pop();
        self.b.ins().jump(exit, &[]);
        self.b.switch_to_block(exit);
        // Fold the lanes into the scalar accumulators, in lane order.
        for (c, vs) in accs.iter().zip(&vaccs) {
            let mut lanes_v: Vec<Value> = Vec::new();
            let nan = match c.red {
                Red::Sum | Red::Mean => None,
                _ => {
                    let m = self.b.use_var(vs[1]);
                    Some(self.b.ins().vany_true(m))
                }
            };
            let parts = if nan.is_some() { &vs[..1] } else { &vs[..] };
            for var in parts {
                let v = self.b.use_var(*var);
                let ty = self.b.func.dfg.value_type(v);
                for l in 0..ty.lane_count() {
                    lanes_v.push(self.b.ins().extractlane(v, l as u8));
                }
            }
            let mut acc = lanes_v[0];
            for x in &lanes_v[1..] {
                acc = match c.red {
                    Red::Sum | Red::Mean => self.b.ins().fadd(acc, *x),
                    Red::Max => self.b.ins().fmax(acc, *x),
                    _ => self.b.ins().fmin(acc, *x),
                };
            }
            if let Some(any) = nan {
                let q = self.real_const(f64::NAN);
                acc = self.b.ins().select(any, q, acc);
            }
            let old = self.b.use_var(c.var);
            let s = match c.red {
                Red::Sum | Red::Mean => self.b.ins().fadd(old, acc),
                Red::Max => self.b.ins().fmax(old, acc),
                _ => self.b.ins().fmin(old, acc),
            };
            self.b.def_var(c.var, s);
        }
        Ok(single_n)
    }

    /// The whole loop over `ix` of a speculative fill (see [`Gen::can_vectorize`]): vector
    /// steps while a step fits in the row; a step whose checks fail, and the last, partial
    /// one, run cell by cell with the scalar code `slow` emits (once, for both).
    pub(super) fn speculative_loop(
        &mut self,
        w: &VecWork,
        ix: IndexId,
        slow: &mut dyn FnMut(&mut Self) -> Result<()>,
    ) -> Result<()> {
        let lanes = self.lanes();
        let n = self.ext_at(ix.ix());
        // (int lanes are i32 for f32: no vector steps in rows over 2^30 cells)
        let vec_n = if self.f32 && self.int_lanes_used(w, &[], ix) {
            let big = self
                .b
                .ins()
                .icmp_imm_s(IntCC::SignedGreaterThan, n, 1 << 30);
            let zero = self.b.ins().iconst(types::I64, 0);
            self.b.ins().select(big, zero, n)
        } else {
            n
        };
        let k_var = self.b.declare_var(types::I64);
        let zero = self.b.ins().iconst(types::I64, 0);
        self.b.def_var(k_var, zero);
        let head = self.b.create_block();
        let vbody = self.b.create_block();
        let redo = self.b.create_block();
        let cells = self.b.create_block();
        let one = self.b.create_block();
        let next = self.b.create_block();
        let exit = self.b.create_block();
        for _ in 0..4 {
            self.b.append_block_param(redo, types::I64);
        }
        // Where every read is inside its table for the whole row and the step's cells (see
        // `trusted_reads`), steps of `copies` vector steps with no checks, interleaved.
        // (two copies: 3% faster than one on CTC's gradient, four no better than two)
        let copies = self.copies(w, &[], ix).min(2);
        let trust = if copies > 1 {
            self.trusted_reads(&work_roots(w, &[]), ix)
        } else {
            None
        };
        if std::env::var_os("LOSSC_DEBUG_SCHED").is_some() {
            eprintln!(
                "speculative fill: trusted steps {}, {copies} copies",
                match &trust {
                    Some(t) => format!(
                        "with {} row checks, from {}, to n - {}",
                        t.checks.len(),
                        t.lo,
                        t.hi
                    ),
                    None => "none".into(),
                }
            );
        }
        let seg = match trust {
            Some(Trusted { checks, lo, hi }) => {
                let mut ok = self.b.ins().iconst(types::I8, 1);
                for (a, d) in checks {
                    let v = self.emit(a)?;
                    let n = self.ext_at(d.ix());
                    let inside = self.b.ins().icmp(IntCC::UnsignedLessThan, v, n);
                    ok = self.b.ins().band(ok, inside);
                }
                let end = self.b.ins().iadd_imm_s(vec_n, -hi - copies * lanes);
                Some((ok, lo, end))
            }
            _ => None,
        };
        let nonempty = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, n, 0);
        self.b.ins().brif(nonempty, head, &[], exit, &[]);
        self.b.switch_to_block(head);
        let k = self.b.use_var(k_var);
        let end = self.b.ins().iadd_imm_s(k, lanes);
        let fits = self.b.ins().icmp(IntCC::SignedLessThanOrEqual, end, vec_n);
        if let Some((ok, lo, last)) = seg {
            // (k from `lo` to `last`: the segment's steps start there)
            let from = self
                .b
                .ins()
                .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, k, lo);
            let to = self.b.ins().icmp(IntCC::SignedLessThanOrEqual, k, last);
            let go = self.b.ins().band(from, to);
            let go = self.b.ins().band(go, ok);
            let sbody = self.b.create_block();
            let single = self.b.create_block();
            self.b.ins().brif(go, sbody, &[], single, &[]);
            self.b.switch_to_block(single);
            self.b.ins().brif(fits, vbody, &[], cells, &[]);
            self.b.switch_to_block(sbody);
            let saved = (
                std::mem::replace(&mut self.unchecked, true),
                std::mem::replace(&mut self.lazy, false),
            );
            let k = self.b.use_var(k_var);
            let r = self.vsteps(w, &[], &[], ix, k, copies, sbody);
            (self.unchecked, self.lazy) = saved;
            r?;
            let k = self.b.use_var(k_var);
            let k1 = self.b.ins().iadd_imm_s(k, copies * lanes);
            self.b.def_var(k_var, k1);
            let more = self.b.ins().icmp(IntCC::SignedLessThan, k1, n);
            self.b.ins().brif(more, head, &[], exit, &[]);
        } else {
            self.b.ins().brif(fits, vbody, &[], cells, &[]);
        }
        // A vector step; its failed checks go to `redo` (the error exit's parameters), and
        // its selects may branch (the step has several blocks anyway).
        self.b.switch_to_block(vbody);
        let saved_err = std::mem::replace(&mut self.err, redo);
        let saved_lazy = std::mem::replace(&mut self.lazy, true);
        let k = self.b.use_var(k_var);
        let r = self.vstep(w, &[], &[], ix, k);
        self.err = saved_err;
        self.lazy = saved_lazy;
        r?;
        self.b.ins().jump(next, &[]);
        self.b.switch_to_block(redo);
        self.b.ins().jump(cells, &[]);
        // cells k .. min(k + lanes, n), scalar
        self.b.switch_to_block(cells);
        let cell = self.b.declare_var(types::I64);
        let k = self.b.use_var(k_var);
        self.b.def_var(cell, k);
        self.b.ins().jump(one, &[]);
        self.b.switch_to_block(one);
        let c = self.b.use_var(cell);
        self.in_cell(ix, c, slow)?;
        let c = self.b.use_var(cell);
        let c1 = self.b.ins().iadd_imm_s(c, 1);
        self.b.def_var(cell, c1);
        let k = self.b.use_var(k_var);
        let end = self.b.ins().iadd_imm_s(k, lanes);
        let end = self.b.ins().smin(end, n);
        let more = self.b.ins().icmp(IntCC::SignedLessThan, c1, end);
        self.b.ins().brif(more, one, &[], next, &[]);
        self.b.switch_to_block(next);
        let k = self.b.use_var(k_var);
        let k1 = self.b.ins().iadd_imm_s(k, lanes);
        self.b.def_var(k_var, k1);
        let more = self.b.ins().icmp(IntCC::SignedLessThan, k1, n);
        self.b.ins().brif(more, head, &[], exit, &[]);
        self.b.switch_to_block(exit);
        Ok(())
    }

    /// `copies` vector steps at cells `k`, `k + lanes`, ... in block `body`: independent
    /// steps, their instructions merged so that the dependency chains run side by side (see
    /// `interleave`).
    #[allow(clippy::too_many_arguments)]
    fn vsteps(
        &mut self,
        w: &VecWork,
        accs: &[Carried],
        vaccs: &[Vec<Variable>],
        ix: IndexId,
        k: Value,
        copies: i64,
        body: Block,
    ) -> Result<()> {
        if copies == 1 {
            return self.vstep(w, accs, vaccs, ix, k);
        }
        let lanes = self.lanes();
        let saved_anchor = std::mem::replace(&mut self.anchor, true);
        let mut marks = vec![self.b.func.layout.last_inst(body)];
        let mut r = Ok(());
        for c in 0..copies {
            r = r.and_then(|_| {
                let kc = if c == 0 {
                    k
                } else {
                    self.b.ins().iadd_imm_s(k, c * lanes)
                };
                self.vstep(w, accs, vaccs, ix, kc)
            });
            marks.push(self.b.func.layout.last_inst(body));
        }
        self.anchor = saved_anchor;
        r?;
        if self.b.current_block() == Some(body) {
            interleave(self.b.func, body, &marks, &self.anchors);
        }
        Ok(())
    }

    /// One vector step at base cell `k`: the work, then the carried reductions.
    fn vstep(
        &mut self,
        w: &VecWork,
        accs: &[Carried],
        vaccs: &[Vec<Variable>],
        ix: IndexId,
        k: Value,
    ) -> Result<()> {
        self.in_cell(ix, k, &mut |g: &mut Self| {
            g.vwork(w, accs, ix)?;
            for (c, vs) in accs.iter().zip(vaccs) {
                let v = g.emit_v(c.body, ix)?;
                let v = match c.shift {
                    Some(m) => {
                        let mv = g.splat_v(m);
                        let d = g.b.ins().fsub(v, mv);
                        g.exp_nonpos(d)?
                    }
                    None => v,
                };
                match c.red {
                    Red::Sum | Red::Mean => {
                        let parts = g.widen_lanes(v);
                        for (var, part) in vs.iter().zip(parts) {
                            let a = g.b.use_var(*var);
                            let s = g.b.ins().fadd(a, part);
                            g.b.def_var(*var, s);
                        }
                    }
                    red => {
                        // `v > a ? v : a` (max) or `v < a ? v : a` (min): one maxps/minps on
                        // x86, where fmax/fmin take about eight instructions for their NaN
                        // and signed-zero rules; NaNs are tracked apart.
                        let a = g.b.use_var(vs[0]);
                        let take = if red == Red::Max {
                            g.b.ins().fcmp(FloatCC::LessThan, a, v)
                        } else {
                            g.b.ins().fcmp(FloatCC::LessThan, v, a)
                        };
                        let s = g.sel(take, v, a);
                        g.b.def_var(vs[0], s);
                        let un = g.b.ins().fcmp(FloatCC::Unordered, v, v);
                        let nan = g.b.use_var(vs[1]);
                        let nan = g.b.ins().bor(nan, un);
                        g.b.def_var(vs[1], nan);
                    }
                }
            }
            Ok(())
        })
    }

    /// The work computes int lanes (an int node that depends on `ix`, other than an index
    /// alone).
    fn int_lanes_used(&self, w: &VecWork, accs: &[Carried], ix: IndexId) -> bool {
        let roots = work_roots(w, accs);
        let p = self.p;
        p.pool.reaches(&roots, |e, x| {
            matches!(x, Expr::Binary(..))
                && p.pool.ty(e) != Ty::Real
                && p.pool.free(e).contains(&ix)
                && matches!(x, Expr::Binary(_, a, _) if p.pool.ty(*a) == Ty::Int)
        })
    }

    /// How many vector steps an iteration runs, interleaved (1, 2, 4 or 8): more where a step's
    /// dependency chain leaves the CPU waiting. Measured (f32, value + gradient, one thread,
    /// alternating binaries): focal loss 10^6 8.1 -> 6.5 ms with two steps, 4.7 ms with four
    /// (and the pins inside exp and log1p); sigmoid cross-entropy 7.7 -> 4.0 ms with two (four:
    /// no better); softmax CE 256x1000 0.80 -> 0.57 ms with four on its short steps (the max
    /// and sum loops, the exponentials, the exp / sum gradient); MSE 10^6 0.47 -> 0.42 ms;
    /// GIoU's gradient (no inline math, divisions in chains) 6.30 -> 5.28 ms with four, for
    /// 2.5 -> 4.4 ms of compile time; DIoU's value (divisions side by side) 2.66 -> 2.78 ms
    /// with four, so it keeps one. The estimate: inline functions weigh 1-2 and ~40
    /// instructions, other nodes ~2. Session 15, once loads were placed on demand (see
    /// [`on_demand`]): twice the copies everywhere, GIoU 10^6 4.61 -> 4.30 ms, focal 2.59 ->
    /// 2.25 ms, sigmoid CE 2.11 -> 1.92 ms, softmax CE 4096x1000 6.95 -> 6.77 ms (CTC the
    /// same), for focal's compile 2.9 -> 4.6 ms and CTC's 18 -> 20 ms. Kept: 8 only within
    /// `MAX_INTERLEAVED` (GIoU's short step), since compare.py, with JAX beside it, read
    /// focal's compile at 9.8-10.8 ms with 8 copies (the limit is 10 ms).
    fn copies(&self, w: &VecWork, accs: &[Carried], ix: IndexId) -> i64 {
        if let Some(n) = std::env::var("LOSSC_INTERLEAVE")
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
        {
            // (a power of two: the loop's bound is n rounded down with a mask)
            return if n >= 8 {
                8
            } else if n >= 4 {
                4
            } else if n >= 2 {
                2
            } else {
                1
            };
        }
        let roots = work_roots(w, accs);
        let mut weight = accs.iter().filter(|c| c.shift.is_some()).count();
        let mut size = 40 * weight as i64;
        let (mut divisions, mut invariant_divisions) = (0, 0);
        let mut seen = HashSet::new();
        let mut stack = roots;
        while let Some(e) = stack.pop() {
            if !seen.insert(e) {
                continue;
            }
            let node = self.p.pool.get(e);
            let w = math_weight(self.p, node);
            weight += w;
            if matches!(node, Expr::Binary(Bin::Div, _, _)) && self.p.pool.ty(e) == Ty::Real {
                // (a division by a loop-invariant value, a mean's `1 / N`, is made once)
                if self.p.pool.free(e).contains(&ix) {
                    divisions += 1;
                } else {
                    invariant_divisions += 1;
                }
            }
            // rough instructions per step: ~40 per inline function, a few per other node
            size += 40 * w as i64 + 2;
            node.for_each_child(|c| stack.push(c));
        }
        let chained = division_depth(self.p, &work_roots(w, accs)) >= 2;
        if std::env::var_os("LOSSC_DEBUG_SCHED").is_some() {
            eprintln!(
                "vector step: math weight {weight}, size ~{size}, divisions {divisions} \
                 (+{invariant_divisions} loop-invariant), \
                 chained {chained}"
            );
        }
        // (short steps with one exp or a division gain most from four copies: softmax's
        // exponentials and its gradient's exp / sum; bigger steps of divisions alone gain
        // only when the divisions are chained, GIoU's gradient)
        // (steps with only loop-invariant divisions gain from copies while short: the
        // softmax gradient's `lse_exp * (a / s)` (+9% and +38% with one copy for softmax and
        // sparse softmax CE), not huber's longer step (8 copies: 11% slower than one, spills))
        let copies = match (weight, size < 200) {
            (0, _) if divisions > 0 && size < 100 => 8,
            (0, _) if invariant_divisions > 0 && size < 40 => 8,
            (0, _) if chained && size < 200 => 8,
            (0, _) if size <= 10 => 8,
            (0, _) => 1,
            (_, true) => 8,
            (1..=4, false) => 4,
            _ => 8,
        };
        // (big steps, copied, cost compile time faster than they gain: register allocation
        // grows worse than linearly with the block)
        let mut copies = copies;
        while copies > 1 && copies * size > MAX_INTERLEAVED {
            copies /= 2;
        }
        copies
    }

    /// The stack slot interleaved steps store their math results to (made at the first).
    pub(super) fn anchor_slot(&mut self) -> StackSlot {
        if let Some(s) = self.anchor_slot {
            return s;
        }
        let s = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            16 * super::ANCHORS as u32,
            4,
        ));
        self.anchor_slot = Some(s);
        s
    }

    /// The lanes of a real vector as F64X2 parts (f32: low and high halves promoted).
    fn widen_lanes(&mut self, v: Value) -> Vec<Value> {
        if !self.f32 {
            return vec![v];
        }
        let lo = self.b.ins().fvpromote_low(v);
        let le = MemFlagsData::new().with_endianness(Endianness::Little);
        let bytes = self.b.ins().bitcast(types::I8X16, le, v);
        let mask: Vec<u8> = (8..16).chain(8..16).collect();
        let imm = self.b.func.dfg.immediates.push(ConstantData::from(mask));
        let hi_bytes = self.b.ins().shuffle(bytes, bytes, imm);
        let hi = self.b.ins().bitcast(types::F32X4, le, hi_bytes);
        let hi = self.b.ins().fvpromote_low(hi);
        vec![lo, hi]
    }

    /// The loop over `ix` that `f` emits, in copies for the values of conditions the same for
    /// every cell of the loop (see [`Gen::switch_conditions`]), at most `budget` copies: in
    /// each, [`Gen::known`] decides them, so selects and `&&` chains they decide cost nothing
    /// per step. A row's uniform tests otherwise ran at every vector step (CTC's gradient:
    /// `f == T` for the final cells, `f <= T - 1` for the transitions, scalar branches and
    /// spilled flags in a step that has no math), and a fill computed its body on rows where
    /// the recurrence is `-inf` anyway.
    pub(super) fn unswitched(
        &mut self,
        roots: &[ExprId],
        ix: IndexId,
        budget: usize,
        f: &mut dyn FnMut(&mut Self) -> Result<()>,
    ) -> Result<()> {
        let c = if budget >= 2 {
            let cands = self.switch_conditions(roots, ix);
            let step = self.step_cost(roots, ix);
            cands
                .into_iter()
                .find(|c| self.worth_switching(roots, ix, *c, step))
        } else {
            None
        };
        let Some(c) = c else {
            return f(self);
        };
        if std::env::var_os("LOSSC_DEBUG_SCHED").is_some() {
            eprintln!("unswitch on {:?}", self.p.pool.get(c));
        }
        let cv = self.emit(c)?;
        let (yes, no, join) = (
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
        );
        self.b.ins().brif(cv, yes, &[], no, &[]);
        for (blk, v) in [(yes, true), (no, false)] {
            self.b.switch_to_block(blk);
            // (a scope of its own: values made under the assumption stay in its copy)
            self.push();
            self.assumed.insert(c, v);
            let r = self.unswitched(roots, ix, budget / 2, f);
            self.assumed.remove(&c);
            self.pop();
            r?;
            self.b.ins().jump(join, &[]);
        }
        self.b.switch_to_block(join);
        Ok(())
    }

    /// Whether copies of the loop for the values of condition `c` are worth their compile
    /// time: in a step without inline math, the uniform tests and their branches are most of
    /// its cost (CTC's gradient); in one with math, only when a copy saves at least a quarter
    /// of the step's work (see [`Gen::step_cost`]; `step` is its cost with nothing more
    /// assumed). CTC's `alpha` copied for `f == 0` and `f > T` ran 4% fewer instructions (2%
    /// of the kernel's) for 3700 more CLIF instructions: the shares filled with it still need
    /// its logsumexp.
    fn worth_switching(
        &mut self,
        roots: &[ExprId],
        ix: IndexId,
        c: ExprId,
        step: (usize, usize),
    ) -> bool {
        let (base, math) = step;
        if math == 0 {
            return true;
        }
        let mut least = base;
        for v in [true, false] {
            self.assumed.insert(c, v);
            least = least.min(self.step_cost(roots, ix).0);
            self.assumed.remove(&c);
        }
        if std::env::var_os("LOSSC_DEBUG_SCHED").is_some() {
            eprintln!(
                "switch on {:?}: step cost {base}, at least {least}",
                self.p.pool.get(c)
            );
        }
        4 * (base - least) >= base
    }

    /// The rough work of a step of a loop over `ix` computing `roots`, given the conditions
    /// known or assumed, and how many inline math functions it calls: the nodes that depend
    /// on `ix` in the arms and chain parts not decided, a math function counting as 20, a
    /// division 8, a read 2, anything else 1.
    fn step_cost(&self, roots: &[ExprId], ix: IndexId) -> (usize, usize) {
        let p = self.p;
        let mut seen = HashSet::new();
        let mut stack: Vec<ExprId> = roots.to_vec();
        let (mut cost, mut math) = (0, 0);
        while let Some(e) = stack.pop() {
            if !p.pool.free(e).contains(&ix) || !seen.insert(e) {
                continue;
            }
            let node = p.pool.get(e);
            let w = math_weight(p, node);
            math += w;
            cost += match node {
                _ if w > 0 => 20 * w,
                Expr::Binary(Bin::Div, ..) => 8,
                Expr::Tensor(..) | Expr::Input(..) => 2,
                _ => 1,
            };
            match node {
                Expr::Select(c, a, b) => match self.known(*c) {
                    Some(v) => stack.push(if v { *a } else { *b }),
                    None => stack.extend([*c, *a, *b]),
                },
                Expr::Binary(op @ (Bin::And | Bin::Or), ..) => {
                    let and = *op == Bin::And;
                    let mut parts = Vec::new();
                    flatten(p, *op, e, &mut parts);
                    if parts.iter().all(|x| self.known(*x) != Some(!and)) {
                        stack.extend(parts.into_iter().filter(|x| self.known(*x).is_none()));
                    }
                }
                other => other.for_each_child(|c| stack.push(c)),
            }
        }
        (cost, math)
    }

    /// Conditions free of `ix` that decide a select or a part of an `&&` / `||` chain in the
    /// part of `roots` that depends on `ix`, not decided yet, safe to evaluate before the loop
    /// and free of reductions; in the order first met.
    fn switch_conditions(&self, roots: &[ExprId], ix: IndexId) -> Vec<ExprId> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for r in roots {
            self.switch_walk(*r, ix, &mut seen, &mut out);
        }
        out
    }

    /// The reads of `roots` along `ix` are all at `ix + c` (or that clamped) along their rows,
    /// every node that depends on `ix` can be computed on any lane without an error other than
    /// such a read's, and what does not depend on `ix` is [`Gen::ready`]: then a step whose
    /// cells `k + c` are inside the row, in a row whose reads' other indices are inside their
    /// tables, needs no check and no slow path (it is "trusted"). Returns those other indices
    /// with their dimensions (to test once per row) and how far steps must keep from the
    /// row's start and end (`-min c`, `max c`, at least 0).
    fn trusted_reads(&self, roots: &[ExprId], ix: IndexId) -> Option<Trusted> {
        let p = self.p;
        let mut checks = Vec::new();
        let (mut lo, mut hi) = (0i64, 0i64);
        let mut seen = HashSet::new();
        let mut stack = roots.to_vec();
        while let Some(e) = stack.pop() {
            if !seen.insert(e) {
                continue;
            }
            if !p.pool.free(e).contains(&ix) {
                if !self.ready(e) {
                    return None;
                }
                continue;
            }
            let node = p.pool.get(e);
            match node {
                Expr::Input(_, args) | Expr::Tensor(_, args) => {
                    let dims = match node {
                        Expr::Input(i, _) => &p.inputs[i.ix()].dims,
                        Expr::Tensor(t, _) => {
                            if p.tensors[t.ix()].accumulated {
                                return None;
                            }
                            &p.tensors[t.ix()].indices
                        }
                        _ => unreachable!(),
                    };
                    if gather_index(p, e, ix).is_some() {
                        return None;
                    }
                    let (last, outer) = args.split_last()?;
                    if dims.last() != Some(&ix) {
                        return None;
                    }
                    let c = match row_shift(p, *last, ix) {
                        Some((c, _)) => c,
                        None if matches!(p.pool.get(*last), Expr::Index(i) if *i == ix) => 0,
                        None => return None,
                    };
                    lo = lo.max(-c);
                    hi = hi.max(c);
                    for (a, d) in outer.iter().zip(dims) {
                        if p.pool.free(*a).contains(&ix) || !self.ready(*a) {
                            return None;
                        }
                        if !crate::schedule::in_range(p, *a, *d) && !checks.contains(&(*a, *d)) {
                            checks.push((*a, *d));
                        }
                    }
                }
                Expr::Reduce(..) => return None,
                Expr::Binary(Bin::Div | Bin::Rem, ..) if p.pool.ty(e) == Ty::Int => return None,
                other => other.for_each_child(|c| stack.push(c)),
            }
        }
        Some(Trusted { checks, lo, hi })
    }

    /// `x` can be evaluated ahead of the loop without raising an error the loop would not:
    /// safe, or its unsafe parts (checked reads) already emitted out here (CTC's
    /// `logit_length[logit_lengths[b]]`, read once per batch row, see
    /// `Analysis::hoistable`).
    fn ready(&self, x: ExprId) -> bool {
        let p = self.p;
        if self.an.safe(x) || self.lookup(x).is_some() {
            return true;
        }
        match p.pool.get(x) {
            Expr::Input(..) | Expr::Tensor(..) | Expr::Reduce(..) => false,
            Expr::Binary(Bin::Div | Bin::Rem, ..) if p.pool.ty(x) == Ty::Int => false,
            other => {
                let mut all = true;
                other.for_each_child(|c| all = all && self.ready(c));
                all
            }
        }
    }

    fn switch_walk(
        &self,
        e: ExprId,
        ix: IndexId,
        seen: &mut HashSet<ExprId>,
        out: &mut Vec<ExprId>,
    ) {
        let p = self.p;
        let uniform = |e: ExprId| !p.pool.free(e).contains(&ix);
        if uniform(e) || !seen.insert(e) {
            return;
        }
        let mut take = |x: ExprId, out: &mut Vec<ExprId>| {
            if uniform(x) {
                let ok = p.pool.ty(x) == Ty::Bool
                    && self.ready(x)
                    && self.an.flat(x)
                    && !matches!(p.pool.get(x), Expr::Bool(_))
                    && p.pool.free(x).iter().all(|i| self.idx[i.ix()].is_some());
                if ok && !out.contains(&x) {
                    out.push(x);
                }
            } else {
                self.switch_walk(x, ix, seen, out);
            }
        };
        match p.pool.get(e) {
            Expr::Select(c, a, b) => match self.known(*c) {
                Some(v) => take(if v { *a } else { *b }, out),
                None => {
                    take(*c, out);
                    for x in [*a, *b] {
                        if !uniform(x) {
                            take(x, out);
                        }
                    }
                }
            },
            Expr::Binary(op @ (Bin::And | Bin::Or), ..) => {
                let and = *op == Bin::And;
                let mut parts = Vec::new();
                flatten(p, *op, e, &mut parts);
                if parts.iter().any(|x| self.known(*x) == Some(!and)) {
                    return;
                }
                for x in parts {
                    if self.known(x).is_none() {
                        take(x, out);
                    }
                }
            }
            other => {
                let mut kids = Vec::new();
                other.for_each_child(|c| kids.push(c));
                for x in kids {
                    if !uniform(x) {
                        take(x, out);
                    }
                }
            }
        }
    }
}

/// How many inline math functions a node is (a sigmoid or softplus two, a power by a
/// non-constant two).
fn math_weight(p: &crate::ir::Program, node: &Expr) -> usize {
    match node {
        Expr::Call(f, _) => match f {
            Func::Exp | Func::Log | Func::Log1p | Func::Expm1 | Func::Xlogy => 1,
            Func::Sin | Func::Cos | Func::Atan | Func::Acos => 1,
            Func::Sigmoid | Func::Softplus | Func::LogSigmoid | Func::Tanh => 2,
            Func::LogSumExp => 2,
            _ => 0,
        },
        Expr::Binary(Bin::Pow, _, b) => match p.pool.get(*b) {
            // (small constant powers are multiplications)
            Expr::Real(_) | Expr::Int(_) => 0,
            _ => 2,
        },
        _ => 0,
    }
}

/// The parts of a chain of `op` (`&&` or `||`), left to right.
fn flatten(p: &crate::ir::Program, op: Bin, e: ExprId, out: &mut Vec<ExprId>) {
    match p.pool.get(e) {
        Expr::Binary(o, a, b) if *o == op => {
            flatten(p, op, *a, out);
            flatten(p, op, *b, out);
        }
        _ => out.push(e),
    }
}

/// `e` as a gather along `ix`, `x[.., g[.., ix]]`: a real read whose last index is an int
/// read of `g` at plain indices with `ix` last (one id per lane), its other indices free of
/// `ix`. Returns the id read.
fn gather_index(p: &crate::ir::Program, e: ExprId, ix: IndexId) -> Option<ExprId> {
    let args = match p.pool.get(e) {
        Expr::Input(_, a) | Expr::Tensor(_, a) if p.pool.ty(e) == Ty::Real => a,
        _ => return None,
    };
    let (id, outer) = args.split_last()?;
    if outer.iter().any(|a| p.pool.free(*a).contains(&ix)) || p.pool.ty(*id) != Ty::Int {
        return None;
    }
    let (gdims, gargs) = match p.pool.get(*id) {
        Expr::Input(i, a) => (&p.inputs[i.ix()].dims, a),
        Expr::Tensor(t, a) if !p.tensors[t.ix()].accumulated => (&p.tensors[t.ix()].indices, a),
        _ => return None,
    };
    plain(p, gargs, gdims, ix).then_some(*id)
}

fn plain(p: &crate::ir::Program, args: &[ExprId], dims: &[IndexId], ix: IndexId) -> bool {
    args.iter().zip(dims).all(|(a, d)| match p.pool.get(*a) {
        Expr::Index(i) if *i == ix => crate::schedule::same_range(p, *d, ix),
        _ => !p.pool.free(*a).contains(&ix),
    })
}

/// `x > -inf && x < inf`: the condition the gradient puts on a recurrence's read-back value.
fn finite_test(p: &crate::ir::Program, c: ExprId) -> bool {
    let Expr::Binary(Bin::And, lo, hi) = p.pool.get(c) else {
        return false;
    };
    let real =
        |e: ExprId, v: f64| matches!(p.pool.get(e), Expr::Real(b) if f64::from_bits(*b) == v);
    match (p.pool.get(*lo), p.pool.get(*hi)) {
        (Expr::Binary(Bin::Gt, x, a), Expr::Binary(Bin::Lt, y, b)) => {
            x == y && real(*a, f64::NEG_INFINITY) && real(*b, f64::INFINITY)
        }
        _ => false,
    }
}

/// What a row read gives outside its row.
#[derive(Clone, Copy)]
enum Outside {
    /// the table's pad
    Pad(ExprId),
    /// the table's pad, in every lane (the row is outside; the lanes are inside a row)
    PadRow(ExprId),
    /// the row's nearest cell
    Clamp,
}

/// The most real divisions by a non-constant on one path through the expressions under
/// `roots`: a step with divisions in a chain (GIoU's gradient: `(a / d) / d`) waits on their
/// latency, which independent copies of the step hide.
fn division_depth(p: &crate::ir::Program, roots: &[ExprId]) -> usize {
    fn depth(p: &crate::ir::Program, e: ExprId, memo: &mut HashMap<ExprId, usize>) -> usize {
        if let Some(d) = memo.get(&e) {
            return *d;
        }
        let node = p.pool.get(e);
        let mut d = 0;
        node.for_each_child(|c| d = d.max(depth(p, c, memo)));
        if let Expr::Binary(Bin::Div, _, b) = node {
            if p.pool.ty(e) == Ty::Real && !matches!(p.pool.get(*b), Expr::Real(_) | Expr::Int(_)) {
                d += 1;
            }
        }
        memo.insert(e, d);
        d
    }
    let mut memo = HashMap::new();
    roots
        .iter()
        .map(|r| depth(p, *r, &mut memo))
        .max()
        .unwrap_or(0)
}

/// The nodes a vector step evaluates: the work's and the carried reductions' bodies.
pub(super) fn work_roots(w: &VecWork, accs: &[Carried]) -> Vec<ExprId> {
    let mut roots: Vec<ExprId> = accs.iter().map(|c| c.body).collect();
    match w {
        VecWork::Nothing => {}
        VecWork::Fill { body, also, .. } => {
            roots.push(*body);
            roots.extend(also.iter().map(|(_, e)| *e));
        }
        VecWork::Runs(runs) => {
            for r in runs.iter() {
                for t in &r.terms {
                    roots.extend(contribution_roots(t));
                }
            }
        }
    }
    roots
}

/// How far int lanes may shift the loop index (`u + 2`): with the vector loop's extent below
/// `2^30`, every lane value fits an i32.
const INT_LANE_SHIFT: i64 = 1 << 20;

/// The last argument is the loop index plus or minus a constant, along the last dimension
/// (the loop's own), and no other argument depends on it: the lanes' cells are consecutive,
/// some of them possibly outside the row.
fn shifted(p: &crate::ir::Program, args: &[ExprId], dims: &[IndexId], ix: IndexId) -> bool {
    let (Some(last), Some(dlast)) = (args.last(), dims.last()) else {
        return false;
    };
    matches!(row_shift(p, *last, ix), Some((c, _)) if c.abs() <= INT_LANE_SHIFT)
        && *dlast == ix
        && args[..args.len() - 1]
            .iter()
            .all(|a| !p.pool.free(*a).contains(&ix))
}

/// `ix + c` (`(c, false)`), or that clamped into `ix`'s extent, `clamp(ix + c, 0, IX - 1)`
/// (`(c, true)`: the optimizer's guarded reads of pulled adjoints).
fn row_shift(p: &crate::ir::Program, a: ExprId, ix: IndexId) -> Option<(i64, bool)> {
    if let Expr::Call(Func::Clamp, args) = p.pool.get(a) {
        let [x, lo, hi] = args.as_slice() else {
            return None;
        };
        let top = matches!(p.pool.get(*hi), Expr::Binary(Bin::Sub, e, one)
            if matches!(p.pool.get(*e), Expr::Extent(i) if *i == ix)
                && matches!(p.pool.get(*one), Expr::Int(1)));
        return match (crate::ir::shifted_index(p, *x), p.pool.get(*lo)) {
            (Some((i, c)), Expr::Int(0)) if i == ix && top => Some((c, true)),
            _ => None,
        };
    }
    match crate::ir::shifted_index(p, a) {
        Some((i, c)) if i == ix => Some((c, false)),
        _ => None,
    }
}

/// The last argument is the loop index itself, along the last dimension, and no other
/// argument depends on it: consecutive cells are consecutive in memory.
fn unit_stride(p: &crate::ir::Program, args: &[ExprId], dims: &[IndexId], ix: IndexId) -> bool {
    let (Some(last), Some(dlast)) = (args.last(), dims.last()) else {
        return false;
    };
    matches!(p.pool.get(*last), Expr::Index(i) if *i == ix)
        && crate::schedule::same_range(p, *dlast, ix)
        && args[..args.len() - 1]
            .iter()
            .all(|a| !p.pool.free(*a).contains(&ix))
}

/// The most (roughly estimated) instructions an interleaved loop body may hold.
const MAX_INTERLEAVED: i64 = 2000;

/// Merges the instructions of independent copies of a vector step (copy `c` is the
/// instructions after `marks[c]` up to `marks[c + 1]`; a `None` mark is the block's start) so
/// that the copies alternate. Cranelift places pure instructions at their first use by a
/// side-effecting one, so what it keeps of this order is the order of the loads, the stores and
/// the anchors (stack stores of math results) of the copies: with them alternating, each copy's
/// long chain (exp, log1p, divisions) runs beside the others' instead of after them. A copy's
/// memory writes (and loads that may see them) stay after all of the earlier copies'; anything
/// else it does not depend on may go earlier. Leaves the block as it is if the copies cannot be
/// merged.
fn interleave(func: &mut Function, block: Block, marks: &[Option<Inst>], anchors: &HashSet<Inst>) {
    let insts: Vec<Inst> = func.layout.block_insts(block).collect();
    let mut cuts = Vec::with_capacity(marks.len());
    for m in marks {
        cuts.push(match m {
            Some(i) => match insts.iter().position(|x| x == i) {
                Some(p) => p + 1,
                None => return,
            },
            None => 0,
        });
    }
    if cuts.windows(2).any(|w| w[1] <= w[0]) || cuts.last() != Some(&insts.len()) {
        return;
    }
    let copies: Vec<&[Inst]> = cuts.windows(2).map(|w| &insts[w[0]..w[1]]).collect();
    let dfg = &func.dfg;
    // (by value number: sets of values, cheaper than hashing)
    let mut defined = vec![false; dfg.num_values()];
    for i in copies.iter().flat_map(|c| c.iter()) {
        for v in dfg.inst_results(*i) {
            defined[v.index()] = true;
        }
    }
    let is_mem = |i: Inst| {
        if anchors.contains(&i) {
            return false;
        }
        let op = dfg.insts[i].opcode();
        let readonly = dfg.insts[i]
            .memflags()
            .is_some_and(|f| dfg.mem_flags[f].readonly());
        op.is_call() || op.can_store() || (op.can_load() && !readonly)
    };
    let mem: Vec<usize> = copies
        .iter()
        .map(|c| c.iter().filter(|i| is_mem(**i)).count())
        .collect();
    let mut placed = vec![false; dfg.num_values()];
    let mut order: Vec<Inst> = Vec::with_capacity(insts.len());
    let mut at = vec![0usize; copies.len()];
    let mut mem_done = vec![0usize; copies.len()];
    let total: usize = copies.iter().map(|c| c.len()).sum();
    while order.len() < total {
        let mut moved = false;
        for c in 0..copies.len() {
            let Some(&i) = copies[c].get(at[c]) else {
                continue;
            };
            let ready = dfg
                .inst_values(i)
                .all(|v| !defined[v.index()] || placed[v.index()]);
            let mem_ok = !is_mem(i) || (0..c).all(|e| mem_done[e] == mem[e]);
            if ready && mem_ok {
                if is_mem(i) {
                    mem_done[c] += 1;
                }
                for v in dfg.inst_results(i) {
                    placed[v.index()] = true;
                }
                order.push(i);
                at[c] += 1;
                moved = true;
            }
        }
        if !moved {
            return;
        }
    }
    let order = on_demand(dfg, &order, &defined, anchors);
    for c in &copies {
        for i in c.iter() {
            func.layout.remove_inst(*i);
        }
    }
    for i in order {
        func.layout.append_inst(i, block);
    }
}

/// `order` (a valid order of a block's instructions) with the pure ones, readonly loads
/// included, moved to just before their first use by an instruction with effects (a store,
/// an anchor, a call), the rest after. Cranelift does this to pure instructions itself, but not
/// to loads: left where the merge put them, the copies' loads (which are ready first) would
/// all run at the block's start, and with 4 copies of a step over 8 vectors (GIoU's boxes)
/// that is 32 values live at once and most of them spilled.
fn on_demand(
    dfg: &cranelift_codegen::ir::DataFlowGraph,
    order: &[Inst],
    defined: &[bool],
    anchors: &HashSet<Inst>,
) -> Vec<Inst> {
    let lazy = |i: Inst| {
        if anchors.contains(&i) || dfg.inst_results(i).len() != 1 {
            return false;
        }
        let op = dfg.insts[i].opcode();
        if op.can_load() {
            return dfg.insts[i]
                .memflags()
                .is_some_and(|f| dfg.mem_flags[f].readonly())
                && !op.can_store()
                && !op.is_call();
        }
        !(op.can_store()
            || op.is_call()
            || op.is_branch()
            || op.is_terminator()
            || op.other_side_effects()
            || op.can_trap())
    };
    let mut done: HashSet<Inst> = HashSet::with_capacity(order.len());
    let mut out = Vec::with_capacity(order.len());
    // (explicit stack: dependency chains can be long)
    let emit = |root: Inst, out: &mut Vec<Inst>, done: &mut HashSet<Inst>| {
        let mut stack = vec![(root, false)];
        while let Some((i, expanded)) = stack.pop() {
            if done.contains(&i) {
                continue;
            }
            if expanded {
                done.insert(i);
                out.push(i);
                continue;
            }
            stack.push((i, true));
            for v in dfg.inst_values(i) {
                if !defined[v.index()] {
                    continue;
                }
                if let cranelift_codegen::ir::ValueDef::Result(d, _) = dfg.value_def(v) {
                    if !done.contains(&d) {
                        stack.push((d, false));
                    }
                }
            }
        }
    };
    for &i in order {
        if !lazy(i) {
            emit(i, &mut out, &mut done);
        }
    }
    for &i in order {
        emit(i, &mut out, &mut done);
    }
    out
}
