//! Prints a program as loss-language source that parses, checks and evaluates to the same
//! numbers. Backward passes (scatter-adds) are turned into definitions in pull form: each
//! accumulated tensor becomes a sum, over the cells that contribute to it, of their
//! contributions; a data-dependent target index becomes an equality condition, a constant
//! offset (a recurrence reading its neighbours) a shifted read, so the adjoint of a recurrence
//! prints as a backward recurrence.

use super::*;
use std::collections::{BTreeSet, HashSet};
use std::fmt::Write;

/// The source of a loss named `name` whose output is `output` (an accumulated tensor of `p`, or
/// `None` for `p`'s own output).
pub fn to_source(p: &Program, name: &str, output: Option<TensorId>, doc: &str) -> String {
    let mut q = p.clone();
    let mut s = Src::new(&mut q);
    s.pull_passes();
    s.print(name, output, doc)
}

struct Src<'a> {
    q: &'a mut Program,
    /// printable names of indices
    index_names: Vec<String>,
    used_names: HashSet<String>,
    /// alias definitions, in order, and the alias each shared node became
    lines: Vec<String>,
    alias: HashMap<(ExprId, Vec<IndexId>), String>,
    uses: HashMap<ExprId, u32>,
    /// accumulated tensors, their pull-form bodies
    pulled: HashMap<TensorId, ExprId>,
    /// computed indices not declared yet: aliases can't mention them
    undeclared: HashSet<IndexId>,
    /// indices made to rename a sum apart from its target's indices
    fresh_indices: Vec<IndexId>,
    /// print without aliases (parameter defaults sit in the signature, before any `let`)
    inline: bool,
    /// the table whose body is printed, and which nodes read it: an alias comes before the
    /// definition, so a recurrence's read of itself can't be one
    current: Option<TensorId>,
    reads_current: HashMap<ExprId, bool>,
}

const KEYWORDS: [&str; 12] = [
    "loss", "fn", "let", "pad", "if", "else", "import", "true", "false", "pi", "inf", "nan",
];

/// `base`, or `base2`, `base3`, ... if taken or a keyword; the name is then taken.
fn fresh_name(used: &mut HashSet<String>, base: &str) -> String {
    let mut n = base.to_string();
    let mut k = 2;
    while used.contains(&n) || KEYWORDS.contains(&n.as_str()) {
        n = format!("{base}{k}");
        k += 1;
    }
    used.insert(n.clone());
    n
}

/// A printable index name from `base`: lowercase, and its extent's name (`N` for `n`, how
/// the source names it) free too, since a name bound to an input, a parameter or a table
/// shadows the extent. Both names are then taken.
fn fresh_index_name(used: &mut HashSet<String>, base: &str) -> String {
    let mut base: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect::<String>()
        .to_ascii_lowercase();
    if !base.starts_with(|c: char| c.is_ascii_lowercase()) {
        base = format!("d{base}");
    }
    let mut k = 1;
    loop {
        let n = if k == 1 {
            base.clone()
        } else {
            format!("{base}{k}")
        };
        let upper = n.to_ascii_uppercase();
        if !used.contains(&n) && !used.contains(&upper) && !KEYWORDS.contains(&n.as_str()) {
            used.insert(n.clone());
            used.insert(upper);
            return n;
        }
        k += 1;
    }
}

fn ident_ok(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

impl<'a> Src<'a> {
    fn new(q: &'a mut Program) -> Src<'a> {
        let mut used: HashSet<String> = HashSet::new();
        for i in &q.inputs {
            used.insert(i.name.clone());
        }
        for p in &q.params {
            used.insert(p.name.clone());
        }
        for t in &q.tensors {
            used.insert(t.name.clone());
        }
        // Names the passes give their tables (`t_grad`, `r_share0`) can be a name the source
        // already gives a table, or another table's (two `logsumexp`s in one recurrence
        // branch): the first keeps it, the later ones are renamed apart (`used` holds every
        // name, so no fresh one takes a later table's).
        let mut taken: HashSet<String> = q.inputs.iter().map(|i| i.name.clone()).collect();
        taken.extend(q.params.iter().map(|p| p.name.clone()));
        for k in 0..q.tensors.len() {
            let n = q.tensors[k].name.clone();
            if taken.contains(&n) || !ident_ok(&n) || KEYWORDS.contains(&n.as_str()) {
                let base = if ident_ok(&n) { n.as_str() } else { "t" };
                q.tensors[k].name = fresh_name(&mut used, base);
            }
            taken.insert(q.tensors[k].name.clone());
        }
        let mut s = Src {
            q,
            index_names: vec![],
            used_names: used,
            lines: vec![],
            alias: HashMap::new(),
            uses: HashMap::new(),
            pulled: HashMap::new(),
            undeclared: HashSet::new(),
            fresh_indices: vec![],
            inline: false,
            current: None,
            reads_current: HashMap::new(),
        };
        s.name_indices();
        // `#weights` is not an identifier.
        for k in 0..s.q.inputs.len() {
            if !ident_ok(&s.q.inputs[k].name) {
                let base = s.q.inputs[k].name.trim_start_matches('#').to_string();
                let n = s.fresh(&base);
                s.q.inputs[k].name = n;
            }
        }
        s
    }

    fn fresh(&mut self, base: &str) -> String {
        fresh_name(&mut self.used_names, base)
    }

    fn name_indices(&mut self) {
        self.index_names.clear();
        let mut names = Vec::new();
        for k in 0..self.q.indices.len() {
            let n = self.q.indices[k].name.clone();
            let n = if ident_ok(&n) && !names.contains(&n) {
                fresh_index_name(&mut self.used_names, &n)
            } else {
                fresh_index_name(&mut self.used_names, "d")
            };
            names.push(n);
        }
        self.index_names = names;
    }

    // ---- passes -> pull-form definitions ----

    fn pull_passes(&mut self) {
        let passes = std::mem::take(&mut self.q.passes);
        let mut sums: HashMap<TensorId, ExprId> = HashMap::new();
        for pass in &passes {
            for c in &pass.contributions {
                let term = self.pull(pass, c);
                let e = match sums.get(&c.target) {
                    Some(prev) => self
                        .q
                        .pool
                        .add(Expr::Binary(Bin::Add, *prev, term), Ty::Real),
                    None => term,
                };
                sums.insert(c.target, e);
            }
        }
        self.pulled = sums;
    }

    fn pull(&mut self, pass: &Pass, c: &Contribution) -> ExprId {
        // Summed indices that are also the target's are renamed apart with fresh printable
        // indices (split borrows: the closure names them while `q` is rebuilt).
        let Src {
            q,
            index_names,
            used_names,
            fresh_indices,
            ..
        } = self;
        let mut rename = |q: &mut Program, like: IndexId| {
            let e = q.pool.add(Expr::Extent(like), Ty::Int);
            q.indices.push(Index {
                name: format!("{}_", q.indices[like.ix()].name),
                extent: Extent::Computed(e),
            });
            let base = format!("{}2", index_names[like.ix()]);
            let n = fresh_index_name(used_names, &base);
            index_names.push(n);
            let id = IndexId((q.indices.len() - 1) as u32);
            fresh_indices.push(id);
            Some(id)
        };
        pull::pull_contribution(q, pass, c, &mut rename)
            .expect("renaming always succeeds, so every contribution pulls")
    }

    // ---- printing ----

    fn count(&mut self, e: ExprId, seen: &mut HashSet<ExprId>) {
        *self.uses.entry(e).or_insert(0) += 1;
        if !seen.insert(e) {
            return;
        }
        let node = self.q.pool.get(e).clone();
        node.for_each_child(|c| self.count(c, seen));
    }

    fn is_leaf(&self, e: ExprId) -> bool {
        self.q.pool.get(e).is_leaf()
    }

    /// An expression's text where the indices in `bound` are in use (so reducing over them
    /// would be rejected: such reductions become aliases, which the checker lowers unbound).
    fn expr(&mut self, e: ExprId, bound: &BTreeSet<IndexId>) -> String {
        let shared = !self.inline
            && self.uses.get(&e).copied().unwrap_or(0) > 1
            && !self.is_leaf(e)
            && !self.mentions_undeclared(e)
            && !self.mentions_current(e);
        let conflict = matches!(self.q.pool.get(e), Expr::Reduce(_, i, _) if bound.contains(i));
        if shared || conflict {
            let key = (e, vec![]);
            if let Some(n) = self.alias.get(&key) {
                return n.clone();
            }
            let text = self.inner(e, &BTreeSet::new());
            let n = self.fresh("v");
            self.lines.push(format!("    let {n} = {text};"));
            self.alias.insert(key, n.clone());
            return n;
        }
        self.inner(e, bound)
    }

    fn mentions_current(&mut self, e: ExprId) -> bool {
        let Some(t) = self.current else {
            return false;
        };
        if let Some(v) = self.reads_current.get(&e) {
            return *v;
        }
        let node = self.q.pool.get(e).clone();
        let mut found = matches!(node, Expr::Tensor(k, _) if k == t);
        node.for_each_child(|c| found = self.mentions_current(c) || found);
        self.reads_current.insert(e, found);
        found
    }

    fn mentions_undeclared(&self, e: ExprId) -> bool {
        if self.undeclared.is_empty() {
            return false;
        }
        match self.q.pool.get(e) {
            Expr::Index(i) | Expr::Extent(i) => self.undeclared.contains(i),
            Expr::Reduce(_, i, _) if self.undeclared.contains(i) => true,
            other => {
                let mut found = false;
                other.for_each_child(|c| found = found || self.mentions_undeclared(c));
                found
            }
        }
    }

    fn args(&mut self, a: &[ExprId], bound: &BTreeSet<IndexId>) -> String {
        a.iter()
            .map(|x| self.expr(*x, bound))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A read's index arguments. A bare index in a dimension whose range is not its own (the
    /// simplifier folds `a[m + 0]` to `a[m]`, range-checked all the same) prints as `m + 0`,
    /// a computed index, since the checker takes a bare index only in its own dimension.
    fn index_args(&mut self, a: &[ExprId], dims: &[IndexId], bound: &BTreeSet<IndexId>) -> String {
        a.iter()
            .zip(dims)
            .map(|(x, d)| match self.q.pool.get(*x) {
                Expr::Index(j) if self.q.range_of(*j) != self.q.range_of(*d) => {
                    format!("({} + 0)", self.index_names[j.ix()])
                }
                _ => self.expr(*x, bound),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn extent_text(&self, i: IndexId) -> String {
        match self.q.indices[i.ix()].extent {
            Extent::Fixed(n) => n.to_string(),
            _ => self.index_names[i.ix()].to_uppercase(),
        }
    }

    fn inner(&mut self, e: ExprId, bound: &BTreeSet<IndexId>) -> String {
        match self.q.pool.get(e).clone() {
            Expr::Real(b) => {
                let v = f64::from_bits(b);
                let t = super::print::real_literal(v);
                if v < 0.0 || (v == 0.0 && v.is_sign_negative()) {
                    format!("({t})")
                } else {
                    t
                }
            }
            Expr::Int(v) => {
                if v < 0 {
                    format!("({v})")
                } else {
                    v.to_string()
                }
            }
            Expr::Bool(v) => v.to_string(),
            Expr::Index(i) => self.index_names[i.ix()].clone(),
            Expr::Extent(i) => self.extent_text(i),
            Expr::Param(p) => self.q.params[p.ix()].name.clone(),
            Expr::Input(i, a) => {
                let n = self.q.inputs[i.ix()].name.clone();
                if a.is_empty() {
                    n
                } else {
                    let dims = self.q.inputs[i.ix()].dims.clone();
                    format!("{n}[{}]", self.index_args(&a, &dims, bound))
                }
            }
            // (a table without indices, a scalar input's gradient, prints as an alias)
            Expr::Tensor(t, a) if a.is_empty() => self.q.tensors[t.ix()].name.clone(),
            Expr::Tensor(t, a) => {
                let n = self.q.tensors[t.ix()].name.clone();
                let dims = self.q.tensors[t.ix()].indices.clone();
                format!("{n}[{}]", self.index_args(&a, &dims, bound))
            }
            Expr::Unary(Un::Neg, a) => format!("-({})", self.expr(a, bound)),
            Expr::Unary(Un::Not, a) => format!("!({})", self.expr(a, bound)),
            Expr::Unary(Un::ToReal, a) => format!("real({})", self.expr(a, bound)),
            Expr::Unary(Un::ToInt, a) => format!("int({})", self.expr(a, bound)),
            Expr::Binary(op, a, b) => {
                let (x, y) = (self.expr(a, bound), self.expr(b, bound));
                format!("({x} {} {y})", op.symbol())
            }
            Expr::Call(f, a) => format!("{}({})", f.name(), self.args(&a, bound)),
            Expr::Select(c, a, b) => {
                let (c, a, b) = (
                    self.expr(c, bound),
                    self.expr(a, bound),
                    self.expr(b, bound),
                );
                format!("if {c} {{ {a} }} else {{ {b} }}")
            }
            Expr::Reduce(r, i, body) => {
                let mut inner = bound.clone();
                inner.insert(i);
                let b = self.expr(body, &inner);
                format!("{}({}: {b})", r.name(), self.index_names[i.ix()])
            }
            Expr::StopGrad(a) => format!("stop_grad({})", self.expr(a, bound)),
        }
    }

    fn print(&mut self, name: &str, output: Option<TensorId>, doc: &str) -> String {
        // Use counts over everything that will be printed.
        let mut roots: Vec<ExprId> = self.q.params.iter().map(|p| p.default).collect();
        let order = self.definition_order(output);
        for t in &order {
            roots.push(self.body_of(*t));
            roots.extend(self.q.tensors[t.ix()].pad);
        }
        if output.is_none() {
            roots.push(self.q.output.body);
        }
        let mut seen = HashSet::new();
        for r in roots {
            self.count(r, &mut seen);
        }

        let mut out = String::new();
        for line in doc.lines() {
            let _ = writeln!(out, "/// {line}");
        }
        let inputs: Vec<String> = self
            .q
            .inputs
            .clone()
            .iter()
            .map(|i| {
                let dims: Vec<String> = i
                    .dims
                    .iter()
                    .map(|d| match self.q.indices[d.ix()].extent {
                        Extent::Fixed(n) if self.q.indices[d.ix()].name.starts_with('#') => {
                            n.to_string()
                        }
                        _ => self.index_names[d.ix()].clone(),
                    })
                    .collect();
                let ty = if i.ty == Ty::Int { ": int" } else { "" };
                if dims.is_empty() {
                    format!("{}{ty}", i.name)
                } else {
                    format!("{}[{}]{ty}", i.name, dims.join(", "))
                }
            })
            .collect();
        let mut params = Vec::new();
        self.inline = true;
        for k in 0..self.q.params.len() {
            let d = self.q.params[k].default;
            let text = self.expr(d, &BTreeSet::new());
            let ty = self.q.params[k].ty;
            params.push(format!("{}: {ty} = {text}", self.q.params[k].name));
        }
        self.inline = false;
        let out_ix: Vec<IndexId> = match output {
            Some(t) => self.q.tensors[t.ix()].indices.clone(),
            None => self.q.output.indices.clone(),
        };
        // Fixed anonymous dimensions of the output need names of their own.
        let mut body_lines = Vec::new();
        let mut declared: HashSet<IndexId> = HashSet::new();
        for inp in self.q.inputs.clone() {
            // Anonymous fixed dimensions (`boxes[n, 4]`) get a named index where first used.
            declared.extend(
                inp.dims
                    .iter()
                    .copied()
                    .filter(|d| !self.q.indices[d.ix()].name.starts_with('#')),
            );
        }
        let params_lines = std::mem::take(&mut self.lines);
        // An index only reductions bind (the checker's own index for a reduction whose index is
        // free around it) is declared first, by a table over it that only names its range.
        for k in 0..self.q.indices.len() {
            let id = IndexId(k as u32);
            let Extent::Computed(e) = self.q.indices[k].extent.clone() else {
                continue;
            };
            if declared.contains(&id)
                || self.fresh_indices.contains(&id)
                || self.q.tensors.iter().any(|t| t.indices.contains(&id))
            {
                continue;
            }
            let x = self.expr(e, &BTreeSet::new());
            let n = self.index_names[k].clone();
            let decl = self.fresh(&format!("{n}_range"));
            body_lines.append(&mut self.lines);
            body_lines.push(format!("    let {decl}[{n}: {x}] = 0;"));
            declared.insert(id);
        }
        self.undeclared = (0..self.q.indices.len())
            .filter(|k| !declared.contains(&IndexId(*k as u32)))
            .map(|k| IndexId(k as u32))
            .collect();
        let mut fresh_declared = false;
        for t in order {
            let tn = self.q.tensors[t.ix()].clone();
            if tn.accumulated && !fresh_declared {
                // A new index is declared by a definition over it; these only name the range.
                fresh_declared = true;
                for f in self.fresh_indices.clone() {
                    let Extent::Computed(e) = self.q.indices[f.ix()].extent.clone() else {
                        continue;
                    };
                    let x = self.expr(e, &BTreeSet::new());
                    let n = self.index_names[f.ix()].clone();
                    let decl = self.fresh(&format!("{n}_range"));
                    body_lines.append(&mut self.lines);
                    body_lines.push(format!("    let {decl}[{n}: {x}] = 0;"));
                    declared.insert(f);
                }
            }
            let idx: Vec<String> = tn
                .indices
                .iter()
                .map(|i| {
                    if declared.insert(*i) {
                        match self.q.indices[i.ix()].extent.clone() {
                            Extent::Computed(e) => {
                                let x = self.expr(e, &BTreeSet::new());
                                format!("{}: {x}", self.index_names[i.ix()])
                            }
                            Extent::Fixed(n) => format!("{}: {n}", self.index_names[i.ix()]),
                            Extent::Input { .. } => self.index_names[i.ix()].clone(),
                        }
                    } else {
                        self.index_names[i.ix()].clone()
                    }
                })
                .collect();
            let pad = tn
                .pad
                .map(|p| format!(" pad {}", self.expr(p, &BTreeSet::new())));
            let pulled_recurrent = tn.accumulated
                && self
                    .pulled
                    .get(&t)
                    .map(|b| self.reads(*b, t))
                    .unwrap_or(false);
            let pad = pad.unwrap_or_else(|| {
                if pulled_recurrent {
                    " pad 0.0".into()
                } else {
                    String::new()
                }
            });
            let body = self.body_of(t);
            let bound: BTreeSet<IndexId> = tn.indices.iter().copied().collect();
            self.current = Some(t);
            self.reads_current.clear();
            let text = self.expr(body, &bound);
            self.current = None;
            body_lines.append(&mut self.lines);
            if idx.is_empty() {
                body_lines.push(format!("    let {} = {text};", tn.name));
            } else {
                body_lines.push(format!(
                    "    let {}[{}]{pad} = {text};",
                    tn.name,
                    idx.join(", ")
                ));
            }
            for i in &tn.indices {
                self.undeclared.remove(i);
            }
        }
        let result = match output {
            Some(t) if out_ix.is_empty() => self.q.tensors[t.ix()].name.clone(),
            Some(t) => {
                let idx: Vec<String> = out_ix
                    .iter()
                    .map(|i| self.index_names[i.ix()].clone())
                    .collect();
                format!("{}[{}]", self.q.tensors[t.ix()].name, idx.join(", "))
            }
            None => {
                let bound: BTreeSet<IndexId> = out_ix.iter().copied().collect();
                let b = self.q.output.body;
                self.expr(b, &bound)
            }
        };
        body_lines.append(&mut self.lines);
        let out_names: Vec<String> = out_ix
            .iter()
            .map(|i| self.index_names[i.ix()].clone())
            .collect();
        let mut sig = format!("loss {name}({}", inputs.join(", "));
        if !params.is_empty() {
            sig += &format!("; {}", params.join(", "));
        }
        let _ = writeln!(out, "{sig}) -> [{}] {{", out_names.join(", "));
        for l in params_lines {
            // Aliases used by parameter defaults go first in the body (they are closed).
            let _ = writeln!(out, "{l}");
        }
        for l in body_lines {
            let _ = writeln!(out, "{l}");
        }
        let _ = writeln!(out, "    {result}\n}}");
        out
    }

    fn reads(&self, e: ExprId, t: TensorId) -> bool {
        // Each node once: walking the DAG as a tree takes exponential time on shared aliases.
        let mut seen = vec![false; self.q.pool.len()];
        let mut stack = vec![e];
        while let Some(x) = stack.pop() {
            if std::mem::replace(&mut seen[x.ix()], true) {
                continue;
            }
            match self.q.pool.get(x) {
                Expr::Tensor(k, _) if *k == t => return true,
                other => other.for_each_child(|c| stack.push(c)),
            }
        }
        false
    }

    fn body_of(&mut self, t: TensorId) -> ExprId {
        if self.q.tensors[t.ix()].accumulated {
            match self.pulled.get(&t) {
                Some(b) => *b,
                None => self.q.pool.real(0.0),
            }
        } else {
            self.q.tensors[t.ix()].body
        }
    }

    /// Forward tensors in order, then adjoints in the order their passes complete them:
    /// later tensors' adjoints first, inputs' last. Only what `output` needs is kept.
    fn definition_order(&mut self, output: Option<TensorId>) -> Vec<TensorId> {
        let n = self.q.tensors.len();
        let forward: Vec<TensorId> = (0..n)
            .filter(|k| !self.q.tensors[*k].accumulated)
            .map(|k| TensorId(k as u32))
            .collect();
        let adj: Vec<TensorId> = (0..n)
            .filter(|k| self.q.tensors[*k].accumulated)
            .map(|k| TensorId(k as u32))
            .collect();
        let inputs_adj: Vec<TensorId> = self.q.grads.iter().map(|(_, t)| *t).collect();
        let mut tensor_adj: Vec<TensorId> = adj
            .iter()
            .copied()
            .filter(|t| !inputs_adj.contains(t))
            .collect();
        tensor_adj.reverse();
        let mut order: Vec<TensorId> = forward;
        order.extend(tensor_adj);
        order.extend(inputs_adj);
        // Keep only the definitions reachable from what is printed.
        let mut need: HashSet<TensorId> = HashSet::new();
        let mut stack: Vec<ExprId> = match output {
            Some(t) => {
                need.insert(t);
                vec![self.body_of(t)]
            }
            None => vec![self.q.output.body],
        };
        let mut seen = HashSet::new();
        while let Some(e) = stack.pop() {
            if !seen.insert(e) {
                continue;
            }
            if let Expr::Tensor(t, _) = self.q.pool.get(e).clone() {
                if need.insert(t) {
                    stack.push(self.body_of(t));
                    if let Some(p) = self.q.tensors[t.ix()].pad {
                        stack.push(p);
                    }
                }
            }
            self.q.pool.get(e).clone().for_each_child(|c| stack.push(c));
        }
        // Extents of computed indices can't read tensors, so they add nothing here.
        order.into_iter().filter(|t| need.contains(t)).collect()
    }
}
