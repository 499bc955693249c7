//! Scheduling: a checked (and possibly differentiated) IR program -> the loop nests a compiled
//! backend emits, in order.
//!
//! [`schedule`] owns the decisions about *where* work happens, not how it is emitted:
//! - tensor definitions are filled in definition order (reverse row-major for backward
//!   recurrences), then the output, then the backward passes, as the interpreter does;
//! - an accumulated tensor that exactly one group of contributions writes once per cell, at its
//!   own indices, is *written directly* (no zero fill, no read-modify-write);
//! - contributions of a pass that loop over the same extra indices share one loop nest, and
//!   consecutive contributions to the same cell are summed in a register first;
//! - a scalar output whose reductions run over the same indices as the first backward pass (the
//!   mean of a pointwise loss and its gradient) is *fused* with it: the reductions are
//!   accumulated in that pass's loops ("carried") and the output is computed after it, so value
//!   and gradient take one pass over the data.
//!
//! Loop-invariant reductions are hoisted by the emitter (see [`Analysis::hoistable`]), which
//! needs the facts computed here: which nodes are safe to evaluate speculatively and which
//! nodes an expression reaches.

use crate::ir::{Bin, Contribution, Expr, ExprId, IndexId, Program, TensorId, Ty};

/// One unit of work, in execution order.
#[derive(Clone, Debug)]
pub enum Stage {
    /// Set every cell of an accumulated tensor to zero.
    Zero(TensorId),
    /// Fill a tensor (`Some`) or the output (`None`) cell by cell, row-major (reverse row-major
    /// when `reverse`).
    Fill {
        tensor: Option<TensorId>,
        indices: Vec<IndexId>,
        body: ExprId,
        reverse: bool,
        /// tables filled in the same loop, cell by cell after the tensor's (see [`shares`])
        also: Vec<(TensorId, ExprId)>,
    },
    /// A backward pass over `space`; at each cell, each group runs its contributions.
    Scatter {
        space: Vec<IndexId>,
        reverse: bool,
        groups: Vec<Group>,
    },
}

/// Contributions that loop over the same extra indices.
#[derive(Clone, Debug)]
pub struct Group {
    pub extra: Vec<IndexId>,
    /// runs of consecutive contributions to the same cell (summed in a register, stored once)
    pub runs: Vec<Run>,
    /// for each loop of `extra`: reductions over that loop's index accumulated while it runs
    pub carried: Vec<Vec<ExprId>>,
}

#[derive(Clone, Debug)]
pub struct Run {
    pub target: TensorId,
    pub index: Vec<ExprId>,
    /// store instead of accumulate: this run is the only writer and visits each cell once
    pub direct: bool,
    pub terms: Vec<Contribution>,
}

#[derive(Clone, Debug)]
pub struct Schedule {
    pub stages: Vec<Stage>,
}

/// Facts about a program's expression DAG.
pub struct Analysis<'a> {
    p: &'a Program,
    safe: Vec<bool>,
    /// like `safe`, but reads of tables being filled count (they cannot fail, though their
    /// values may still change)
    errorfree: Vec<bool>,
    /// the node's subtree has no reduction
    flat: Vec<bool>,
    /// the node has two or more distinct parents in the pool
    multi: Vec<bool>,
}

impl<'a> Analysis<'a> {
    pub fn new(p: &'a Program) -> Analysis<'a> {
        // Children have smaller ids than parents, so one forward sweep computes `safe`.
        let n = p.pool.len();
        let mut safe = vec![true; n];
        let mut errorfree = vec![true; n];
        let mut flat = vec![true; n];
        let mut parents = vec![0u8; n];
        for k in 0..n {
            let e = ExprId(k as u32);
            let mut ef = match p.pool.get(e) {
                Expr::Tensor(t, args) => {
                    let tn = &p.tensors[t.ix()];
                    args.iter()
                        .zip(&tn.indices)
                        .all(|(a, d)| in_range(p, *a, *d))
                }
                _ => true,
            };
            let mut ok = match p.pool.get(e) {
                Expr::Input(i, args) => {
                    let dims = &p.inputs[i.ix()].dims;
                    args.iter().zip(dims).all(|(a, d)| in_range(p, *a, *d))
                }
                Expr::Tensor(t, args) => {
                    let tn = &p.tensors[t.ix()];
                    // A recurrence's own cells may not be filled yet; adjoints are being summed.
                    !tn.recurrent
                        && !tn.accumulated
                        && args
                            .iter()
                            .zip(&tn.indices)
                            .all(|(a, d)| in_range(p, *a, *d))
                }
                Expr::Binary(Bin::Div | Bin::Rem, _, b) if p.pool.ty(e) == Ty::Int => {
                    matches!(p.pool.get(*b), Expr::Int(v) if *v != 0)
                }
                Expr::Binary(Bin::Pow, _, b) if p.pool.ty(*b) == Ty::Int => {
                    p.pool.ty(e) == Ty::Real || matches!(p.pool.get(*b), Expr::Int(v) if *v >= 0)
                }
                // an int max or min over an empty range is an error
                Expr::Reduce(r, _, _) => {
                    p.pool.ty(e) != Ty::Int
                        || !matches!(r, crate::ir::Red::Max | crate::ir::Red::Min)
                }
                _ => true,
            };
            let mut f = !matches!(p.pool.get(e), Expr::Reduce(..));
            // (for a tensor read, `ok` already covers the other conditions of `ef`)
            if !matches!(p.pool.get(e), Expr::Tensor(..)) {
                ef = ok;
            }
            let mut kids: Vec<ExprId> = Vec::new();
            p.pool.get(e).for_each_child(|c| {
                ok &= safe[c.ix()];
                ef &= errorfree[c.ix()];
                f &= flat[c.ix()];
                if !kids.contains(&c) {
                    kids.push(c);
                }
            });
            for c in kids {
                parents[c.ix()] = parents[c.ix()].saturating_add(1);
            }
            safe[k] = ok;
            errorfree[k] = ef;
            flat[k] = f;
        }
        Analysis {
            p,
            safe,
            errorfree,
            flat,
            multi: parents.iter().map(|c| *c >= 2).collect(),
        }
    }

    /// The node has two or more parents (anywhere in the program).
    pub fn multi(&self, e: ExprId) -> bool {
        self.multi[e.ix()]
    }

    /// The node cannot raise an error wherever it is evaluated (its value may depend on
    /// when, for tables being filled or summed).
    pub fn errorfree(&self, e: ExprId) -> bool {
        self.errorfree[e.ix()]
    }

    /// The node's subtree holds no reduction (it costs no loop).
    pub fn flat(&self, e: ExprId) -> bool {
        self.flat[e.ix()]
    }

    /// The node can be evaluated where the program would not evaluate it without raising an
    /// error the program would not raise (no data-dependent loads, no int division by a
    /// variable, no reads of tables being filled).
    pub fn safe(&self, e: ExprId) -> bool {
        self.safe[e.ix()]
    }

    /// Every node reachable from `roots` (including them).
    pub fn reach(&self, roots: &[ExprId]) -> Vec<bool> {
        let mut seen = vec![false; self.p.pool.len()];
        let mut stack: Vec<ExprId> = roots.to_vec();
        while let Some(e) = stack.pop() {
            if std::mem::replace(&mut seen[e.ix()], true) {
                continue;
            }
            self.p.pool.get(e).for_each_child(|c| stack.push(c));
        }
        seen
    }

    /// For every node, how many of `lists` reach it.
    pub fn reach_counts(&self, lists: &[Vec<ExprId>]) -> Vec<u32> {
        let mut count = vec![0u32; self.p.pool.len()];
        for l in lists {
            for (k, s) in self.reach(l).iter().enumerate() {
                count[k] += *s as u32;
            }
        }
        count
    }

    /// Reductions worth computing once at a loop level where the indices `bound` are bound
    /// (`new` just became bound), found from `roots`, in an order where every reduction comes
    /// after the reductions in its body: those whose free indices are all bound and include
    /// `new` (or, with `new` = None, have none), and that are evaluated unconditionally (or
    /// behind guards, if safe: see [`When`]) or are safe and would otherwise be recomputed
    /// inside a deeper loop. `deeper` lists the further
    /// loops `roots` are evaluated inside (which may run zero times, so only safe reductions
    /// move out of them; an int max/min over one of those loops' indices is not empty there).
    pub fn hoistable(
        &self,
        roots: &[(ExprId, When)],
        bound: &[IndexId],
        new: Option<IndexId>,
        deeper: &[IndexId],
    ) -> Vec<ExprId> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let inside = deeper.to_vec();
        for (r, when) in roots {
            self.walk(
                *r,
                if deeper.is_empty() {
                    *when
                } else {
                    When::Maybe
                },
                &inside,
                bound,
                new,
                &mut seen,
                &mut out,
            );
        }
        // Checked reads every cell of the deeper loops evaluates, that do not depend on them
        // (CTC's `logit_length[logit_lengths[b]]` in every cell of `alpha_grad[b, f, u]`): read
        // once out here, where the loops are sure to run (so the read fails exactly when the
        // first cell would have).
        if !deeper.is_empty() && deeper.iter().all(|i| self.nonempty(*i)) {
            let mut seen = std::collections::HashSet::new();
            for (r, when) in roots {
                if *when == When::Always {
                    self.must_reads(*r, bound, new, &mut seen, &mut out);
                }
            }
        }
        out
    }

    /// Whether index `i` has at least one value whatever the inputs (see [`nonempty`]).
    pub fn nonempty(&self, i: IndexId) -> bool {
        nonempty(self.p, i)
    }

    /// Reads at checked cells (a data-dependent index) evaluated whenever `e` is, whose
    /// indices are all `bound` and include `new`; in evaluation order.
    fn must_reads(
        &self,
        e: ExprId,
        bound: &[IndexId],
        new: Option<IndexId>,
        seen: &mut std::collections::HashSet<ExprId>,
        out: &mut Vec<ExprId>,
    ) {
        let pool = &self.p.pool;
        if pool.get(e).is_leaf() || !seen.insert(e) {
            return;
        }
        if let Some(n) = new {
            if !pool.free(e).contains(&n) {
                return;
            }
        }
        let inb = &|i: IndexId| bound.contains(&i);
        match pool.get(e) {
            Expr::Select(c, a, b) => {
                self.must_reads(*c, bound, new, seen, out);
                match self.known(*c, inb) {
                    Some(true) => self.must_reads(*a, bound, new, seen, out),
                    Some(false) => self.must_reads(*b, bound, new, seen, out),
                    None => {}
                }
            }
            Expr::Binary(op @ (Bin::And | Bin::Or), a, b) => {
                self.must_reads(*a, bound, new, seen, out);
                if self.known(*a, inb) == Some(*op == Bin::And) {
                    self.must_reads(*b, bound, new, seen, out);
                }
            }
            // (a reduction's body may run zero times)
            Expr::Reduce(..) => {}
            node @ (Expr::Input(_, args) | Expr::Tensor(_, args)) => {
                for a in args {
                    self.must_reads(*a, bound, new, seen, out);
                }
                let dims = match node {
                    Expr::Input(i, _) => &self.p.inputs[i.ix()].dims,
                    Expr::Tensor(t, _) => &self.p.tensors[t.ix()].indices,
                    _ => unreachable!(),
                };
                // (an adjoint may be the table the stage accumulates; a recurrence, the one it
                // fills: neither is read ahead of the cells)
                let settled = match node {
                    Expr::Tensor(t, _) => {
                        let tn = &self.p.tensors[t.ix()];
                        !tn.accumulated && !tn.recurrent
                    }
                    _ => true,
                };
                let checked = settled
                    && args
                        .iter()
                        .zip(dims)
                        .any(|(a, d)| !in_range(self.p, *a, *d));
                let closed = pool.free(e).iter().all(|f| bound.contains(f));
                if checked && closed && !out.contains(&e) {
                    out.push(e);
                }
            }
            other => {
                let mut kids = Vec::new();
                other.for_each_child(|c| kids.push(c));
                for c in kids {
                    self.must_reads(c, bound, new, seen, out);
                }
            }
        }
    }

    /// The value of a condition wherever the indices for which `bound` holds are bound (inside
    /// loops over them), when that alone decides it: inside a loop over `n`, `N == 0` is false (the mean's guard against an empty batch).
    /// A chain is decided by a later part only when the parts before it cannot fail (they run
    /// first and their errors are the language's: `lab[i - 1] > 0 || true` is not known).
    pub fn known(&self, e: ExprId, bound: &dyn Fn(IndexId) -> bool) -> Option<bool> {
        self.known_given(e, bound, &|_| None)
    }

    /// [`Analysis::known`] where `assumed` gives the value of some conditions (a copy of a
    /// loop made for them, see `jit::Gen::unswitched`).
    pub fn known_given(
        &self,
        e: ExprId,
        bound: &dyn Fn(IndexId) -> bool,
        assumed: &dyn Fn(ExprId) -> Option<bool>,
    ) -> Option<bool> {
        if let Some(v) = assumed(e) {
            return Some(v);
        }
        let pool = &self.p.pool;
        let extent = |x: ExprId| matches!(pool.get(x), Expr::Extent(i) if bound(*i));
        // `#rows` (a row block's mean divides by the whole call's rows) is at least the block's
        // extent of the index its default names.
        let nonempty = |x: ExprId| match pool.get(x) {
            Expr::Param(k) => {
                let prm = &self.p.params[k.ix()];
                prm.name == crate::ir::ROWS && extent(prm.default)
            }
            _ => extent(x),
        };
        let zero = |x: ExprId| matches!(pool.get(x), Expr::Int(0));
        match pool.get(e) {
            Expr::Bool(v) => Some(*v),
            Expr::Unary(crate::ir::Un::Not, x) => self.known_given(*x, bound, assumed).map(|v| !v),
            Expr::Binary(op @ (Bin::Eq | Bin::Ne | Bin::Gt | Bin::Le), a, b)
                if nonempty(*a) && zero(*b) =>
            {
                Some(matches!(op, Bin::Ne | Bin::Gt))
            }
            Expr::Binary(op @ (Bin::Eq | Bin::Ne | Bin::Lt | Bin::Ge), a, b)
                if zero(*a) && nonempty(*b) =>
            {
                Some(matches!(op, Bin::Ne | Bin::Lt))
            }
            Expr::Binary(Bin::And, a, b) => match (
                self.known_given(*a, bound, assumed),
                self.known_given(*b, bound, assumed),
            ) {
                // a decided right side decides only if the left, which runs first, cannot fail
                (Some(false), _) => Some(false),
                (_, Some(false)) if self.errorfree(*a) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Expr::Binary(Bin::Or, a, b) => match (
                self.known_given(*a, bound, assumed),
                self.known_given(*b, bound, assumed),
            ) {
                (Some(true), _) => Some(true),
                (_, Some(true)) if self.errorfree(*a) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn walk(
        &self,
        e: ExprId,
        when: When,
        inside: &[IndexId],
        bound: &[IndexId],
        new: Option<IndexId>,
        seen: &mut std::collections::HashSet<(ExprId, When, Vec<IndexId>)>,
        out: &mut Vec<ExprId>,
    ) {
        let pool = &self.p.pool;
        if pool.get(e).is_leaf() || !seen.insert((e, when, inside.to_vec())) {
            return;
        }
        let inb = &|i: IndexId| bound.contains(&i);
        // Nothing below a node that does not depend on `new` can qualify at this level,
        // except at the top level, where everything closed does.
        if let Some(n) = new {
            if !pool.free(e).contains(&n) {
                return;
            }
        }
        match pool.get(e) {
            Expr::Select(c, a, b) if self.known(*c, inb).is_some() => {
                self.walk(*c, when, inside, bound, new, seen, out);
                let (taken, other) = if self.known(*c, inb) == Some(true) {
                    (a, b)
                } else {
                    (b, a)
                };
                self.walk(*taken, when, inside, bound, new, seen, out);
                self.walk(*other, When::Maybe, inside, bound, new, seen, out);
            }
            Expr::Select(c, a, b) => {
                self.walk(*c, when, inside, bound, new, seen, out);
                self.walk(*a, When::Maybe, inside, bound, new, seen, out);
                self.walk(*b, When::Maybe, inside, bound, new, seen, out);
            }
            Expr::Binary(op @ (Bin::And | Bin::Or), a, b) => {
                self.walk(*a, when, inside, bound, new, seen, out);
                // `a && b` evaluates `b` whenever `a` is known true here (`||`: known false).
                let always = self.known(*a, inb) == Some(*op == Bin::And);
                let w = if always { when } else { When::Maybe };
                self.walk(*b, w, inside, bound, new, seen, out);
            }
            Expr::Reduce(red, i, body) => {
                let mut within = inside.to_vec();
                within.push(*i);
                self.walk(*body, When::Maybe, &within, bound, new, seen, out);
                let free = pool.free(e);
                let closed = free.iter().all(|f| bound.contains(f));
                // An int max/min is unsafe only over an empty range; inside a loop over its
                // index the range is not empty wherever the node would be evaluated.
                let nonempty = matches!(red, crate::ir::Red::Max | crate::ir::Red::Min)
                    && inside.contains(i)
                    && self.safe(*body);
                let ok = if inside.is_empty() {
                    match when {
                        When::Always => true,
                        // behind a term's guards: worth computing early, but only if it
                        // cannot fail where the guards would have skipped it
                        When::Guarded => self.safe(e),
                        When::Maybe => false,
                    }
                } else {
                    self.safe(e) || nonempty
                };
                if closed && ok && !out.contains(&e) {
                    out.push(e);
                }
            }
            other => {
                let mut kids = Vec::new();
                other.for_each_child(|c| kids.push(c));
                for c in kids {
                    self.walk(c, when, inside, bound, new, seen, out);
                }
            }
        }
    }
}

/// `a` is always a valid index into a dimension `d`: it is `d` itself, or a constant inside
/// a literal dimension (`boxes[n, 2]` of `boxes[n, 4]`).
pub fn in_range(p: &Program, a: ExprId, d: IndexId) -> bool {
    match p.pool.get(a) {
        Expr::Index(i) => {
            *i == d
                || match (p.range_of(*i), p.range_of(d)) {
                    (Ok(a), Ok(b)) => a == b,
                    (Err(n), Err(m)) => n <= m,
                    _ => false,
                }
        }
        Expr::Int(k) => {
            matches!(p.indices[d.ix()].extent, crate::ir::Extent::Fixed(n) if *k >= 0 && *k < n)
        }
        // `clamp(x, k, D - 1)` with `k >= 0` and `D` at least 1 (a gradient's read of the
        // next row, `T_share[b, clamp(f + 1, 0, F - 1), u]`)
        Expr::Call(crate::ir::Func::Clamp, args) => {
            let lo = matches!(p.pool.get(args[1]), Expr::Int(k) if *k >= 0);
            let hi = match p.pool.get(args[2]) {
                Expr::Binary(Bin::Sub, n, one) => {
                    matches!(p.pool.get(*n), Expr::Extent(i) if *i == d)
                        && matches!(p.pool.get(*one), Expr::Int(1))
                }
                _ => false,
            };
            lo && hi && nonempty(p, d)
        }
        _ => false,
    }
}

/// Whether indices `a` and `b` run over the same range (one renamed from the other, or both
/// following `extent(k)` to one index).
pub fn same_range(p: &Program, a: IndexId, b: IndexId) -> bool {
    a == b || matches!((p.range_of(a), p.range_of(b)), (Ok(x), Ok(y)) if x == y)
}

/// Whether index `i` has at least one value whatever the inputs (`u: 2 * S + 1`).
pub fn nonempty(p: &Program, i: IndexId) -> bool {
    fn least(p: &Program, e: ExprId) -> Option<i64> {
        match p.pool.get(e) {
            Expr::Int(k) => Some(*k),
            Expr::Extent(_) => Some(0),
            Expr::Binary(Bin::Add, a, b) => least(p, *a)?.checked_add(least(p, *b)?),
            Expr::Binary(Bin::Mul, a, b) => {
                let (x, y) = (least(p, *a)?, least(p, *b)?);
                (x >= 0 && y >= 0).then(|| x.checked_mul(y)).flatten()
            }
            _ => None,
        }
    }
    match p.indices[i.ix()].extent {
        crate::ir::Extent::Fixed(n) => n > 0,
        crate::ir::Extent::Computed(e) => least(p, e).is_some_and(|n| n > 0),
        crate::ir::Extent::Input { .. } => false,
    }
}

/// The roots of a contribution: its guards, target index and value.
pub fn contribution_roots(c: &Contribution) -> Vec<ExprId> {
    contribution_hoist_roots(c)
        .into_iter()
        .map(|r| r.0)
        .collect()
}

/// How surely a root is evaluated where it appears, for [`Analysis::hoistable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum When {
    /// every time
    Always,
    /// when the guards before it hold (usually): hoisted only if it cannot fail
    Guarded,
    /// on some paths only (a branch of an `if`): not hoisted to the top of its level
    Maybe,
}

/// [`contribution_roots`] with how surely each is evaluated: guards in order (each only when
/// the ones before it hold), then the index and value when all of them hold.
pub fn contribution_hoist_roots(c: &Contribution) -> Vec<(ExprId, When)> {
    let mut when = When::Always;
    let mut v = Vec::new();
    for g in &c.guards {
        v.push((*g, when));
        when = When::Guarded;
    }
    v.extend(c.index.iter().map(|e| (*e, when)));
    v.push((c.value, when));
    v
}

/// Schedules a program (see the module doc).
pub fn schedule(p: &Program) -> Schedule {
    let a = Analysis::new(p);
    let mut passes: Vec<Stage> = p
        .passes
        .iter()
        .map(|pass| {
            let mut groups: Vec<Group> = Vec::new();
            for c in &pass.contributions {
                let same_group = groups.last().is_some_and(|g| g.extra == c.extra);
                if !same_group {
                    groups.push(Group {
                        extra: c.extra.clone(),
                        runs: vec![],
                        carried: vec![vec![]; c.extra.len()],
                    });
                }
                // Cannot fail: a group was pushed above when the list was empty.
                let g = groups.last_mut().expect("pushed above");
                match g.runs.last_mut() {
                    Some(r) if r.target == c.target && r.index == c.index => {
                        r.terms.push(c.clone())
                    }
                    _ => g.runs.push(Run {
                        target: c.target,
                        index: c.index.clone(),
                        direct: false,
                        terms: vec![c.clone()],
                    }),
                }
            }
            Stage::Scatter {
                space: pass.space.clone(),
                reverse: pass.reverse,
                groups,
            }
        })
        .collect();

    // Direct writes: the first stage writing a tensor has only one run writing it, at its own
    // indices, over loops that are exactly those indices: it stores every cell once (zero
    // where its guards fail), which replaces the zero fill; later stages add to it. (Adjoints
    // are read only by their own tensor's pass, after every stage that writes them.)
    let mut first: Vec<Option<usize>> = vec![None; p.tensors.len()];
    let mut runs_in_first = vec![0usize; p.tensors.len()];
    for (k, s) in passes.iter().enumerate() {
        if let Stage::Scatter { groups, .. } = s {
            for g in groups {
                for r in &g.runs {
                    let t = r.target.ix();
                    if first[t].is_none() {
                        first[t] = Some(k);
                    }
                    if first[t] == Some(k) {
                        runs_in_first[t] += 1;
                    }
                }
            }
        }
    }
    let mut direct = vec![false; p.tensors.len()];
    for (k, s) in passes.iter_mut().enumerate() {
        if let Stage::Scatter { space, groups, .. } = s {
            for g in groups.iter_mut() {
                let mut loops: Vec<IndexId> = space.clone();
                loops.extend(&g.extra);
                for r in g.runs.iter_mut() {
                    let dims = &p.tensors[r.target.ix()].indices;
                    let own = r.index.len() == dims.len()
                        && r.index
                            .iter()
                            .zip(dims)
                            .all(|(e, d)| matches!(p.pool.get(*e), Expr::Index(i) if i == d));
                    let mut sorted_loops = loops.clone();
                    sorted_loops.sort();
                    let mut sorted_dims = dims.clone();
                    sorted_dims.sort();
                    let once =
                        sorted_loops == sorted_dims && sorted_dims.windows(2).all(|w| w[0] != w[1]);
                    let t = r.target.ix();
                    if first[t] == Some(k) && runs_in_first[t] == 1 && own && once {
                        r.direct = true;
                        direct[r.target.ix()] = true;
                    }
                }
                // The columns of a table of short rows, `g[n, 0] ... g[n, 3]` over a loop over
                // `n` (box gradients), one run each: together they store every cell once.
                for t in 0..p.tensors.len() {
                    if first[t] != Some(k) || direct[t] {
                        continue;
                    }
                    let dims = &p.tensors[t].indices;
                    let [d0, d1] = dims[..] else { continue };
                    let crate::ir::Extent::Fixed(w) = p.indices[d1.ix()].extent else {
                        continue;
                    };
                    let mut cols: Vec<i64> = Vec::new();
                    let mut all = loops == [d0];
                    for r in g.runs.iter().filter(|r| r.target.ix() == t) {
                        match (
                            r.index.first().map(|e| p.pool.get(*e)),
                            r.index.get(1).map(|e| p.pool.get(*e)),
                        ) {
                            (Some(Expr::Index(i)), Some(Expr::Int(c)))
                                if *i == d0 && r.index.len() == 2 =>
                            {
                                cols.push(*c)
                            }
                            _ => all = false,
                        }
                    }
                    cols.sort();
                    let complete = cols.iter().copied().eq(0..w);
                    if all && complete && runs_in_first[t] == cols.len() {
                        for r in g.runs.iter_mut().filter(|r| r.target.ix() == t) {
                            r.direct = true;
                        }
                        direct[t] = true;
                    }
                }
            }
        }
    }

    let mut stages = Vec::new();
    let share = shares(&a);
    for (k, t) in p.tensors.iter().enumerate() {
        let id = TensorId(k as u32);
        if t.accumulated {
            if !direct[k] {
                stages.push(Stage::Zero(id));
            }
        } else if share[k].is_none() {
            let also = (0..p.tensors.len())
                .filter(|w| share[*w] == Some(id))
                .map(|w| (TensorId(w as u32), p.tensors[w].body))
                .collect();
            stages.push(Stage::Fill {
                tensor: Some(id),
                indices: t.indices.clone(),
                body: t.body,
                reverse: t.reverse,
                also,
            });
        }
    }
    let output = Stage::Fill {
        tensor: None,
        indices: p.output.indices.clone(),
        body: p.output.body,
        reverse: false,
        also: Vec::new(),
    };

    // Fusion of a scalar output with the first pass.
    let mut fused = false;
    if p.output.indices.is_empty() {
        if let Some(Stage::Scatter { space, groups, .. }) = passes.first_mut() {
            if space.is_empty() {
                fused = carry(&a, p.output.body, groups);
            }
        }
    }
    if fused {
        let first = passes.remove(0);
        stages.push(first);
        stages.push(output);
    } else {
        stages.push(output);
    }
    stages.extend(passes);
    Schedule { stages }
}

/// For each tensor, the recurrence whose fill also fills it: a table `w` over a recurrence's
/// indices whose body is `exp(x - L)`, `L` a `logsumexp` in the recurrence's body that cannot
/// fail and `x` one of its arguments (the gradient's shares, `grad::share_tables`). Its body
/// reads nothing the recurrence's does not, all filled before the recurrence's cell, so it can
/// be filled in that loop, where the compiled `L`'s exponentials and sum are at hand.
fn shares(a: &Analysis) -> Vec<Option<TensorId>> {
    let p = a.p;
    let mut out = vec![None; p.tensors.len()];
    for (k, w) in p.tensors.iter().enumerate() {
        if w.recurrent || w.accumulated || w.ty != Ty::Real {
            continue;
        }
        let Some((_, l, _)) = p.pool.lse_share(w.body) else {
            continue;
        };
        // (reads at the recurrence's shifted cells are its pad where they fall outside)
        let may_fail = p.pool.reaches(&[l], |_, e| match e {
            Expr::Tensor(t, args) => {
                let tn = &p.tensors[t.ix()];
                let shifted = |a: &ExprId, d: &IndexId| {
                    crate::ir::shifted_index(p, *a).is_some_and(|(i, _)| i == *d)
                        || in_range(p, *a, *d)
                };
                let ok = if tn.pad.is_some() {
                    args.iter().zip(&tn.indices).all(|(a, d)| shifted(a, d))
                } else {
                    args.iter()
                        .zip(&tn.indices)
                        .all(|(a, d)| in_range(p, *a, *d))
                };
                !ok
            }
            Expr::Input(i, args) => !args
                .iter()
                .zip(&p.inputs[i.ix()].dims)
                .all(|(a, d)| in_range(p, *a, *d)),
            Expr::Binary(Bin::Div | Bin::Rem, _, _) | Expr::Reduce(..) => true,
            _ => false,
        });
        if may_fail {
            continue;
        }
        out[k] = p.tensors.iter().enumerate().find_map(|(r, t)| {
            (t.recurrent && !t.reverse && r < k && t.indices == w.indices)
                .then_some(())
                .filter(|_| p.pool.reaches(&[t.body], |e, _| e == l))
                .map(|_| TensorId(r as u32))
        });
    }
    out
}

/// Assigns the output's reductions to the loops of the groups that can carry them; true when
/// at least one was assigned.
fn carry(a: &Analysis, root: ExprId, groups: &mut [Group]) -> bool {
    let p = a.p;
    let mut any = false;
    let mut taken: Vec<ExprId> = Vec::new();
    for g in groups.iter_mut() {
        let roots: Vec<ExprId> = g
            .runs
            .iter()
            .flat_map(|r| r.terms.iter().flat_map(contribution_roots))
            .collect();
        let used = a.reach(&roots);
        let mut parents = vec![root];
        let mut bound: Vec<IndexId> = Vec::new();
        for (level, ix) in g.extra.iter().enumerate() {
            let mut found = Vec::new();
            for r in &parents {
                top_reductions(p, *r, &mut found);
            }
            let picked: Vec<ExprId> = found
                .into_iter()
                .filter(|r| {
                    let Expr::Reduce(red, i, _) = p.pool.get(*r) else {
                        return false;
                    };
                    *i == *ix
                        && a.safe(*r)
                        && p.pool.ty(*r) == Ty::Real
                        && *red != crate::ir::Red::LogSumExp
                        && p.pool.free(*r).iter().all(|f| bound.contains(f))
                        && !used[r.ix()]
                        && !taken.contains(r)
                })
                .collect();
            if picked.is_empty() {
                break;
            }
            taken.extend(&picked);
            any = true;
            parents = picked
                .iter()
                .map(|r| match p.pool.get(*r) {
                    Expr::Reduce(_, _, body) => *body,
                    _ => *r,
                })
                .collect();
            g.carried[level] = picked;
            bound.push(*ix);
        }
    }
    any
}

/// The reductions reachable from `e` without entering another reduction's body.
fn top_reductions(p: &Program, e: ExprId, out: &mut Vec<ExprId>) {
    let mut stack = vec![e];
    let mut seen = std::collections::HashSet::new();
    while let Some(x) = stack.pop() {
        if !seen.insert(x) {
            continue;
        }
        match p.pool.get(x) {
            Expr::Reduce(..) => {
                if !out.contains(&x) {
                    out.push(x)
                }
            }
            other => other.for_each_child(|c| stack.push(c)),
        }
    }
}
