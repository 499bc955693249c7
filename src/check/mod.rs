//! Checking and lowering: AST -> typed IR ([`ir::Module`]).
//!
//! Owns name resolution (locals, inputs, parameters, tensors, indices, extents, helper
//! functions, built-ins), types (real / int / bool, with explicit int->real promotion), index
//! discipline (free indices of every definition, reductions, bare indices in the right
//! dimension), and recurrence order. Helper functions are inlined here. Everything that depends
//! on the arrays a loss is called with (extents, data-dependent indices) is checked later, at
//! bind and run time.

use crate::diag::{Diagnostic, Error, ErrorKind, Result, Sources, Span};
use crate::ir::{
    self, Bin, Expr, ExprId, Extent, Func, IndexId, InputId, ParamId, Red, TensorId, Ty, Un,
};
use crate::syntax::ast::{self, BinOp, Block, ExprKind, Ident, Item, UnOp};
use std::collections::HashMap;

/// Checks a compilation unit (a file and everything it imports) and lowers every loss in it.
/// All files share one namespace of losses and helper functions.
pub fn check(files: &[&ast::File], sources: &Sources) -> Result<ir::Module> {
    let mut diags = Vec::new();
    let mut fns: HashMap<&str, &ast::FnDef> = HashMap::new();
    let mut losses: Vec<&ast::LossDef> = Vec::new();
    let mut seen: HashMap<String, Span> = HashMap::new();
    for f in files {
        for item in &f.items {
            let (name, span) = match item {
                Item::Import(_) => continue,
                Item::Fn(d) => (&d.name, d.name.span),
                Item::Loss(d) => (&d.name, d.name.span),
            };
            if let Some(prev) = seen.get(&name.name) {
                diags.push(
                    Diagnostic::new(format!("`{}` is defined twice", name.name))
                        .primary(span, "defined again here")
                        .secondary(*prev, "first defined here"),
                );
                continue;
            }
            if let Item::Fn(d) = item {
                if is_builtin(&d.name.name) {
                    diags.push(
                        Diagnostic::new(format!("`{}` is a built-in function", d.name.name))
                            .primary(span, "choose another name"),
                    );
                    continue;
                }
            }
            seen.insert(name.name.clone(), span);
            match item {
                Item::Fn(d) => {
                    fns.insert(&d.name.name, d);
                }
                Item::Loss(d) => losses.push(d),
                Item::Import(_) => {}
            }
        }
    }
    let mut module = ir::Module::default();
    let mut limit = false;
    for l in losses {
        let mut lower = Lower::new(&fns, sources);
        match lower.loss(l) {
            Ok(mut p) => {
                separate_bound_indices(&mut p);
                module.losses.push(p)
            }
            Err(d) => {
                limit |= lower.limit;
                diags.push(d)
            }
        }
    }
    if diags.is_empty() {
        Ok(module)
    } else {
        Err(Error {
            kind: if limit {
                ErrorKind::Limit
            } else {
                ErrorKind::Check
            },
            diagnostics: diags,
            pre_rendered: false,
        })
    }
}

/// A reduction over an index that is also free around it gets an index of its own, of the
/// same extent. An alias holding a reduction, `let s = sum(c: x[n, c]);`, used where `c` is in
/// use, `x[n, c] * s`, puts a bound `c` inside an expression over the free `c`: the value is
/// right either way, but every later stage may then take a reduction's index as bound only
/// there (the gradient merged the two `c` and lost the sum over the outer one).
fn separate_bound_indices(p: &mut ir::Program) {
    type Memo = HashMap<(ExprId, Vec<IndexId>), ExprId>;
    fn walk(p: &mut ir::Program, e: ExprId, ctx: &[IndexId], memo: &mut Memo) -> ExprId {
        let key = (e, ctx.to_vec());
        if let Some(r) = memo.get(&key) {
            return *r;
        }
        let ty = p.pool.ty(e);
        let node = p.pool.get(e).clone();
        let rebuilt = match node {
            Expr::Reduce(r, i, body) => {
                let (i, body) = if ctx.contains(&i) {
                    let base = p.indices[i.ix()].name.clone();
                    let name = (2..)
                        .map(|k| format!("{base}{k}"))
                        .find(|n| p.indices.iter().all(|x| &x.name != n))
                        .unwrap_or_default();
                    let extent = p.pool.add(Expr::Extent(i), Ty::Int);
                    p.indices.push(ir::Index {
                        name,
                        extent: Extent::Computed(extent),
                    });
                    let j = IndexId(p.indices.len() as u32 - 1);
                    let jv = p.pool.add(Expr::Index(j), Ty::Int);
                    let map = HashMap::from([(i, jv)]);
                    (j, ir::subst_indices(p, body, &map, &mut HashMap::new()))
                } else {
                    (i, body)
                };
                let mut inner = ctx.to_vec();
                inner.push(i);
                inner.sort();
                Expr::Reduce(r, i, walk(p, body, &inner, memo))
            }
            other => other.map_children(|c| walk(p, c, ctx, memo)),
        };
        let r = p.pool.add(rebuilt, ty);
        memo.insert(key, r);
        r
    }
    let mut memo = Memo::new();
    for k in 0..p.tensors.len() {
        let mut ctx = p.tensors[k].indices.clone();
        ctx.sort();
        let b = p.tensors[k].body;
        p.tensors[k].body = walk(p, b, &ctx, &mut memo);
    }
    let mut ctx = p.output.indices.clone();
    ctx.sort();
    let b = p.output.body;
    p.output.body = walk(p, b, &ctx, &mut memo);
}

fn is_builtin(name: &str) -> bool {
    Func::from_name(name).is_some()
        || Red::from_name(name).is_some()
        || matches!(name, "real" | "int" | "stop_grad" | "pow")
}

/// Deepest expression DAG accepted after inlining (every later stage walks it recursively).
pub const MAX_IR_DEPTH: usize = 1000;
/// Deepest chain of helper-function calls.
pub const MAX_INLINE_DEPTH: usize = 64;
/// Most expression nodes lowered inside helper calls for one loss: the work inlining does,
/// which a few bytes of source can make exponential (each helper calling the one below twice)
/// even where hash-consing keeps the DAG small.
pub const MAX_INLINED_NODES: usize = 100_000;

const CONSTANTS: &[&str] = &["pi", "inf", "nan"];

type DResult<T> = std::result::Result<T, Diagnostic>;

#[derive(Clone, Copy, Debug)]
enum Binding {
    Input(InputId),
    Param(ParamId),
    Tensor(TensorId),
    Index(IndexId),
}

/// The tensor whose body is being lowered (for recurrences).
struct Current {
    id: TensorId,
    indices: Vec<IndexId>,
    recurrent: bool,
    /// reads itself at later cells only: filled in reverse order
    reverse: Option<bool>,
}

struct Lower<'a> {
    fns: &'a HashMap<&'a str, &'a ast::FnDef>,
    sources: &'a Sources,
    prog: ir::Program,
    names: HashMap<String, (Binding, Span)>,
    /// `let` aliases and helper-function parameters, innermost last
    scopes: Vec<HashMap<String, ExprId>>,
    /// helper functions being inlined (to reject recursion); inside one, loss names are hidden
    fn_stack: Vec<String>,
    /// indices of the definition being lowered, and indices bound by enclosing reductions
    active: Vec<IndexId>,
    current: Option<Current>,
    /// expression nodes lowered inside helper calls so far ([`MAX_INLINED_NODES`])
    inlined: usize,
    /// the error returned is a limit's
    limit: bool,
}

fn suggest<'n>(name: &str, candidates: impl Iterator<Item = &'n str>) -> Option<String> {
    crate::diag::closest(name, candidates, 2).map(|c| format!("did you mean `{c}`?"))
}

impl<'a> Lower<'a> {
    fn new(fns: &'a HashMap<&'a str, &'a ast::FnDef>, sources: &'a Sources) -> Lower<'a> {
        Lower {
            fns,
            sources,
            prog: ir::Program {
                name: String::new(),
                doc: String::new(),
                inputs: vec![],
                params: vec![],
                indices: vec![],
                tensors: vec![],
                output: ir::Output {
                    indices: vec![],
                    body: ExprId(0),
                },
                pool: ir::ExprPool::default(),
                spans: HashMap::new(),
                source: String::new(),
                passes: vec![],
                grads: vec![],
            },
            names: HashMap::new(),
            scopes: vec![HashMap::new()],
            fn_stack: vec![],
            active: vec![],
            current: None,
            inlined: 0,
            limit: false,
        }
    }

    fn add(&mut self, e: Expr, ty: Ty) -> ExprId {
        self.prog.pool.add(e, ty)
    }
    fn ty(&self, e: ExprId) -> Ty {
        self.prog.pool.ty(e)
    }

    fn define(&mut self, id: &Ident, b: Binding) -> DResult<()> {
        if let Some((_, prev)) = self.names.get(&id.name) {
            return Err(Diagnostic::new(format!("`{}` is already defined", id.name))
                .primary(id.span, "defined again here")
                .secondary(*prev, "first defined here"));
        }
        if CONSTANTS.contains(&id.name.as_str()) {
            return Err(
                Diagnostic::new(format!("`{}` is a built-in constant", id.name))
                    .primary(id.span, "choose another name"),
            );
        }
        self.names.insert(id.name.clone(), (b, id.span));
        Ok(())
    }

    fn new_index(&mut self, name: String, extent: Extent) -> IndexId {
        self.prog.indices.push(ir::Index { name, extent });
        IndexId((self.prog.indices.len() - 1) as u32)
    }

    fn index_name(&self, i: IndexId) -> String {
        self.prog.index_label(i)
    }

    fn loss(&mut self, d: &ast::LossDef) -> DResult<ir::Program> {
        self.prog.name = d.name.name.clone();
        self.prog.doc = d.doc.clone();
        self.prog.source = self.sources.slice(d.span).to_string();

        // Inputs: each dimension is an index; a name seen before is the same index.
        for inp in &d.inputs {
            let iid = InputId(self.prog.inputs.len() as u32);
            let ty = match inp.ty {
                None | Some(ast::Type::Real) => Ty::Real,
                Some(ast::Type::Int) => Ty::Int,
                Some(ast::Type::Bool) => {
                    return Err(Diagnostic::new("inputs are `real` or `int`")
                        .primary(inp.span, "declared `bool`"))
                }
            };
            let mut dims = Vec::new();
            for (k, dim) in inp.dims.iter().enumerate() {
                let ix = match dim {
                    ast::DimDecl::Index(id) => match self.names.get(&id.name) {
                        Some((Binding::Index(ix), _)) => *ix,
                        Some(_) => {
                            return Err(Diagnostic::new(format!("`{}` is not an index", id.name))
                                .primary(id.span, "already names something else"))
                        }
                        None => {
                            let ix = self
                                .new_index(id.name.clone(), Extent::Input { input: iid, dim: k });
                            self.define(id, Binding::Index(ix))?;
                            ix
                        }
                    },
                    ast::DimDecl::Fixed(n, span) => {
                        if *n <= 0 {
                            return Err(Diagnostic::new("a fixed extent must be positive")
                                .primary(*span, "here"));
                        }
                        let name = format!("#{}", self.prog.indices.len());
                        self.new_index(name, Extent::Fixed(*n))
                    }
                };
                if dims.contains(&ix) {
                    return Err(Diagnostic::new(format!(
                        "index `{}` appears twice in `{}`",
                        self.index_name(ix),
                        inp.name.name
                    ))
                    .primary(inp.span, "use a different index for each dimension"));
                }
                dims.push(ix);
            }
            self.define(&inp.name, Binding::Input(iid))?;
            self.prog.inputs.push(ir::Input {
                name: inp.name.name.clone(),
                ty,
                dims,
            });
        }

        // Parameters, in order; a default may use the inputs and earlier parameters.
        for p in &d.params {
            let e = self.expr(&p.default)?;
            self.closed(e, p.default.span, "a parameter's default")?;
            let ty = match (p.ty, self.ty(e)) {
                (None, t) => t,
                (Some(ast::Type::Real), Ty::Int | Ty::Real) => Ty::Real,
                (Some(ast::Type::Int), Ty::Int) => Ty::Int,
                (Some(ast::Type::Bool), Ty::Bool) => Ty::Bool,
                (Some(want), got) => {
                    return Err(Diagnostic::new(format!(
                        "parameter `{}` is declared {want} but its default is {got}",
                        p.name.name
                    ))
                    .primary(p.default.span, format!("this is {got}")))
                }
            };
            let e = if ty == Ty::Real { self.promote(e) } else { e };
            let pid = ParamId(self.prog.params.len() as u32);
            self.define(&p.name, Binding::Param(pid))?;
            self.prog.params.push(ir::Param {
                name: p.name.name.clone(),
                ty,
                default: e,
                default_src: self.sources.slice(p.default.span).to_string(),
            });
        }

        // Body: definitions, then the output expression.
        for l in &d.body.lets {
            self.top_let(l)?;
        }
        let mut out_ix = Vec::new();
        for o in &d.output {
            let ix = self.lookup_index(o)?;
            if out_ix.contains(&ix) {
                return Err(Diagnostic::new(format!(
                    "index `{}` appears twice in the output",
                    o.name
                ))
                .primary(o.span, "repeated"));
            }
            out_ix.push(ix);
        }
        self.active = out_ix.clone();
        let body = self.expr(&d.body.result)?;
        self.active.clear();
        match self.ty(body) {
            Ty::Bool => {
                return Err(Diagnostic::new("a loss yields a number, not a bool")
                    .primary(d.body.result.span, "this is bool"))
            }
            Ty::Int => {}
            Ty::Real => {}
        }
        let body = self.promote(body);
        self.free_within(
            body,
            &out_ix,
            d.body.result.span,
            "the loss's output",
            d.output_span,
        )?;
        self.prog.output = ir::Output {
            indices: out_ix,
            body,
        };
        // Children precede parents in the pool, so one forward pass gives every node's depth.
        let pool = &self.prog.pool;
        let mut depth = vec![0usize; pool.len()];
        for k in 0..pool.len() {
            let mut dk = 0;
            pool.get(ExprId(k as u32))
                .for_each_child(|c| dk = dk.max(depth[c.ix()]));
            depth[k] = dk + 1;
            if depth[k] > MAX_IR_DEPTH {
                return Err(Diagnostic::new(format!(
                    "`{}` is nested more than {MAX_IR_DEPTH} deep once its aliases and helpers are expanded",
                    d.name.name
                ))
                .primary(d.name.span, "too deep")
                .note("materialise intermediate values with tensor definitions (`let t[i] = ...`)"));
            }
        }
        Ok(std::mem::replace(
            &mut self.prog,
            Lower::new(self.fns, self.sources).prog,
        ))
    }

    fn lookup_index(&self, id: &Ident) -> DResult<IndexId> {
        match self.names.get(&id.name) {
            Some((Binding::Index(ix), _)) => Ok(*ix),
            Some(_) => Err(Diagnostic::new(format!("`{}` is not an index", id.name))
                .primary(id.span, "expected an index name")),
            None => {
                let idx_names = self
                    .names
                    .iter()
                    .filter(|(_, (b, _))| matches!(b, Binding::Index(_)));
                let mut d = Diagnostic::new(format!("unknown index `{}`", id.name))
                    .primary(id.span, "not an index");
                if let Some(s) = suggest(&id.name, idx_names.map(|(n, _)| n.as_str())) {
                    d = d.note(s);
                }
                Err(d)
            }
        }
    }

    /// Requires an expression to have no free indices.
    fn closed(&self, e: ExprId, span: Span, what: &str) -> DResult<()> {
        if let Some(i) = self.prog.pool.free(e).first() {
            let n = self.index_name(*i);
            return Err(
                Diagnostic::new(format!("{what} cannot depend on index `{n}`"))
                    .primary(span, format!("uses `{n}`"))
                    .note(format!("reduce over it, e.g. `mean({n}: ...)`")),
            );
        }
        Ok(())
    }

    fn free_within(
        &self,
        e: ExprId,
        allowed: &[IndexId],
        span: Span,
        what: &str,
        decl: Span,
    ) -> DResult<()> {
        if let Some(i) = self.prog.pool.free(e).iter().find(|i| !allowed.contains(i)) {
            let n = self.index_name(*i);
            let names: Vec<String> = allowed.iter().map(|i| self.index_name(*i)).collect();
            return Err(Diagnostic::new(format!(
                "index `{n}` is free in {what}, which is indexed by [{}]",
                names.join(", ")
            ))
            .primary(span, format!("depends on `{n}`"))
            .secondary(decl, "declared here")
            .note(format!(
                "reduce over it (e.g. `sum({n}: ...)`) or add it to the indices"
            )));
        }
        Ok(())
    }

    fn top_let(&mut self, l: &ast::Let) -> DResult<()> {
        let Some(tix) = &l.indices else {
            if let Some(p) = &l.pad {
                return Err(
                    Diagnostic::new("only tensor definitions take a pad").primary(
                        p.span,
                        "give the definition indices, e.g. `let t[i] pad 0 = ...`",
                    ),
                );
            }
            return self.alias(l);
        };
        // Tensor definition: its indices, new ones with their extents.
        let mut indices = Vec::new();
        for ti in tix {
            let ix = match &ti.extent {
                None => match self.names.get(&ti.name.name) {
                    Some((Binding::Index(ix), _)) => *ix,
                    _ => {
                        return Err(Diagnostic::new(format!("unknown index `{}`", ti.name.name))
                            .primary(ti.name.span, "not an index of this loss")
                            .note(format!(
                                "a new index needs an extent, e.g. `{}: 2 * N + 1`",
                                ti.name.name
                            )))
                    }
                },
                Some(ext) => {
                    let e = self.expr(ext)?;
                    self.closed(e, ext.span, "an extent")?;
                    if self.ty(e) != Ty::Int {
                        return Err(Diagnostic::new("an extent must be an int")
                            .primary(ext.span, format!("this is {}", self.ty(e))));
                    }
                    if let Some(bad) = self.find_load(e) {
                        return Err(Diagnostic::new(
                            "an extent may use only extents, int parameters and constants",
                        )
                        .primary(ext.span, format!("reads `{bad}`")));
                    }
                    let ix = self.new_index(ti.name.name.clone(), Extent::Computed(e));
                    self.define(&ti.name, Binding::Index(ix))?;
                    ix
                }
            };
            if indices.contains(&ix) {
                return Err(
                    Diagnostic::new(format!("index `{}` appears twice", ti.name.name))
                        .primary(ti.name.span, "repeated"),
                );
            }
            indices.push(ix);
        }
        let tid = TensorId(self.prog.tensors.len() as u32);
        self.prog.tensors.push(ir::Tensor {
            name: l.name.name.clone(),
            ty: Ty::Real,
            indices: indices.clone(),
            body: ExprId(0),
            pad: None,
            recurrent: false,
            reverse: false,
            accumulated: false,
        });
        self.define(&l.name, Binding::Tensor(tid))?;
        self.current = Some(Current {
            id: tid,
            indices: indices.clone(),
            recurrent: false,
            reverse: None,
        });
        self.active = indices.clone();
        let body = self.expr(&l.value);
        self.active.clear();
        let (recurrent, reverse) = self
            .current
            .take()
            .map(|c| (c.recurrent, c.reverse.unwrap_or(false)))
            .unwrap_or((false, false));
        let mut body = body?;
        if recurrent {
            if self.ty(body) == Ty::Bool {
                return Err(
                    Diagnostic::new("a recurrence computes a number, not a bool")
                        .primary(l.value.span, "this is bool"),
                );
            }
            body = self.promote(body);
        }
        let decl = l.name.span;
        self.free_within(
            body,
            &indices,
            l.value.span,
            &format!("the definition of `{}`", l.name.name),
            decl,
        )?;
        let mut pad = None;
        if let Some(p) = &l.pad {
            let mut pe = self.expr(p)?;
            self.closed(pe, p.span, "a pad")?;
            let (bt, pt) = (self.ty(body), self.ty(pe));
            if bt != pt {
                if bt == Ty::Bool || pt == Ty::Bool {
                    return Err(Diagnostic::new(format!(
                        "the pad is {pt} but `{}` is {bt}",
                        l.name.name
                    ))
                    .primary(p.span, "type differs from the definition"));
                }
                body = self.promote(body);
                pe = self.promote(pe);
            }
            pad = Some(pe);
        } else if recurrent {
            return Err(Diagnostic::new(format!(
                "the recurrence `{}` needs a pad value",
                l.name.name
            ))
            .primary(l.name.span, "reads itself at earlier indices")
            .note(format!(
                "say what reads before the start give, e.g. `let {}[...] pad 0 = ...`",
                l.name.name
            )));
        }
        let t = &mut self.prog.tensors[tid.ix()];
        t.ty = self.prog.pool.ty(body);
        t.body = body;
        t.pad = pad;
        t.recurrent = recurrent;
        t.reverse = reverse;
        Ok(())
    }

    fn find_load(&self, e: ExprId) -> Option<String> {
        match self.prog.pool.get(e) {
            Expr::Input(i, _) => Some(self.prog.inputs[i.ix()].name.clone()),
            Expr::Tensor(t, _) => Some(self.prog.tensors[t.ix()].name.clone()),
            other => {
                let mut found = None;
                other.for_each_child(|c| {
                    if found.is_none() {
                        found = self.find_load(c);
                    }
                });
                found
            }
        }
    }

    fn alias(&mut self, l: &ast::Let) -> DResult<()> {
        if self.scopes.iter().any(|s| s.contains_key(&l.name.name))
            || (self.fn_stack.is_empty() && self.names.contains_key(&l.name.name))
        {
            return Err(
                Diagnostic::new(format!("`{}` is already defined", l.name.name))
                    .primary(l.name.span, "defined again here"),
            );
        }
        let e = self.expr(&l.value)?;
        self.scopes
            .last_mut()
            // Cannot fail: the checker starts with one scope and pops only what it pushed.
            .expect("a scope")
            .insert(l.name.name.clone(), e);
        Ok(())
    }

    fn block(&mut self, b: &Block) -> DResult<ExprId> {
        self.scopes.push(HashMap::new());
        let r = (|| {
            for l in &b.lets {
                if l.indices.is_some() {
                    return Err(Diagnostic::new(
                        "tensor definitions belong at the top of a loss body",
                    )
                    .primary(l.name.span, "defined inside a nested block"));
                }
                if let Some(p) = &l.pad {
                    return Err(Diagnostic::new("only tensor definitions take a pad")
                        .primary(p.span, "here"));
                }
                self.alias(l)?;
            }
            self.expr(&b.result)
        })();
        self.scopes.pop();
        r
    }

    fn promote(&mut self, e: ExprId) -> ExprId {
        match self.prog.pool.get(e) {
            _ if self.ty(e) == Ty::Real => e,
            Expr::Int(v) => {
                let v = *v as f64;
                self.prog.pool.real(v)
            }
            _ => self.add(Expr::Unary(Un::ToReal, e), Ty::Real),
        }
    }

    fn numeric(&self, e: ExprId, span: Span, what: &str) -> DResult<()> {
        if self.ty(e) == Ty::Bool {
            return Err(
                Diagnostic::new(format!("{what} needs a number, not a bool"))
                    .primary(span, "this is bool"),
            );
        }
        Ok(())
    }

    fn boolean(&self, e: ExprId, span: Span, what: &str) -> DResult<()> {
        let t = self.ty(e);
        if t != Ty::Bool {
            return Err(Diagnostic::new(format!("{what} needs a bool, not {t}"))
                .primary(span, format!("this is {t}"))
                .note("compare it, e.g. `x != 0`"));
        }
        Ok(())
    }

    /// Brings two numeric operands to a common type.
    fn unify(&mut self, a: ExprId, b: ExprId) -> (ExprId, ExprId, Ty) {
        if self.ty(a) == Ty::Int && self.ty(b) == Ty::Int {
            (a, b, Ty::Int)
        } else {
            let (a, b) = (self.promote(a), self.promote(b));
            (a, b, Ty::Real)
        }
    }

    fn expr(&mut self, e: &ast::Expr) -> DResult<ExprId> {
        if let Some(outer) = self.fn_stack.first() {
            self.inlined += 1;
            if self.inlined > MAX_INLINED_NODES {
                self.limit = true;
                return Err(Diagnostic::new(format!(
                    "inlining `{outer}` makes more than {MAX_INLINED_NODES} expression nodes"
                ))
                .primary(e.span, "here")
                .note("each helper call is expanded in place; a helper calling another several times, level after level, grows exponentially: compute shared parts once with `let`"));
            }
        }
        match &e.kind {
            ExprKind::Real(v) => Ok(self.prog.pool.real(*v)),
            ExprKind::Int(v) => Ok(self.prog.pool.int(*v)),
            ExprKind::Bool(v) => Ok(self.add(Expr::Bool(*v), Ty::Bool)),
            ExprKind::Name(id) => self.name(id),
            ExprKind::Access(id, args) => self.access(id, args, e.span),
            ExprKind::Call(id, args) => self.call(id, args, e.span),
            ExprKind::Reduce(op, idx, body) => self.reduce(op, idx, body, e.span),
            ExprKind::Unary(op, a) => {
                // Fold negative literals so that `t - 1` and `t + -1` look alike to later checks.
                if let (UnOp::Neg, ExprKind::Int(v)) = (op, &a.kind) {
                    return Ok(self.prog.pool.int(v.wrapping_neg()));
                }
                if let (UnOp::Neg, ExprKind::Real(v)) = (op, &a.kind) {
                    return Ok(self.prog.pool.real(-v));
                }
                let x = self.expr(a)?;
                match op {
                    UnOp::Neg => {
                        self.numeric(x, a.span, "`-`")?;
                        let t = self.ty(x);
                        Ok(self.add(Expr::Unary(Un::Neg, x), t))
                    }
                    UnOp::Not => {
                        self.boolean(x, a.span, "`!`")?;
                        Ok(self.add(Expr::Unary(Un::Not, x), Ty::Bool))
                    }
                }
            }
            ExprKind::Binary(op, a, b) => self.binary(*op, a, b, e.span),
            ExprKind::If(c, a, b) => {
                let ce = self.expr(c)?;
                self.boolean(ce, c.span, "`if`")?;
                let ae = self.block(a)?;
                let be = self.block(b)?;
                let (ae, be, ty) = match (self.ty(ae), self.ty(be)) {
                    (Ty::Bool, Ty::Bool) => (ae, be, Ty::Bool),
                    (Ty::Bool, t) | (t, Ty::Bool) => {
                        return Err(Diagnostic::new("the branches of `if` differ in type")
                            .primary(a.result.span, format!("this is {}", self.ty(ae)))
                            .primary(b.result.span, format!("this is {}", self.ty(be)))
                            .note(format!("one branch is bool, the other {t}")))
                    }
                    _ => self.unify(ae, be),
                };
                Ok(self.add(Expr::Select(ce, ae, be), ty))
            }
        }
    }

    fn name(&mut self, id: &Ident) -> DResult<ExprId> {
        for s in self.scopes.iter().rev() {
            if let Some(e) = s.get(&id.name) {
                return Ok(*e);
            }
        }
        if self.fn_stack.is_empty() {
            if let Some((b, _)) = self.names.get(&id.name).copied() {
                return match b {
                    Binding::Input(i) => {
                        let inp = &self.prog.inputs[i.ix()];
                        if !inp.dims.is_empty() {
                            let dims: Vec<String> =
                                inp.dims.iter().map(|d| self.index_name(*d)).collect();
                            return Err(Diagnostic::new(format!(
                                "input `{}` needs its indices",
                                id.name
                            ))
                            .primary(
                                id.span,
                                format!("write `{}[{}]`", id.name, dims.join(", ")),
                            ));
                        }
                        let ty = inp.ty;
                        Ok(self.add(Expr::Input(i, vec![]), ty))
                    }
                    Binding::Param(p) => {
                        let ty = self.prog.params[p.ix()].ty;
                        Ok(self.add(Expr::Param(p), ty))
                    }
                    Binding::Tensor(t) => {
                        let tn = &self.prog.tensors[t.ix()];
                        let dims: Vec<String> =
                            tn.indices.iter().map(|d| self.index_name(*d)).collect();
                        Err(Diagnostic::new(format!("`{}` needs its indices", id.name))
                            .primary(id.span, format!("write `{}[{}]`", id.name, dims.join(", "))))
                    }
                    Binding::Index(i) => Ok(self.add(Expr::Index(i), Ty::Int)),
                };
            }
            // `C` is the extent of index `c`.
            if id
                .name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                let lower = id.name.to_ascii_lowercase();
                if let Some((Binding::Index(i), _)) = self.names.get(&lower) {
                    let i = *i;
                    return Ok(self.add(Expr::Extent(i), Ty::Int));
                }
            }
        }
        match id.name.as_str() {
            "pi" => return Ok(self.prog.pool.real(std::f64::consts::PI)),
            "inf" => return Ok(self.prog.pool.real(f64::INFINITY)),
            "nan" => return Ok(self.prog.pool.real(f64::NAN)),
            _ => {}
        }
        let mut cands: Vec<&str> = self
            .scopes
            .iter()
            .flat_map(|s| s.keys().map(|k| k.as_str()))
            .collect();
        if self.fn_stack.is_empty() {
            cands.extend(self.names.keys().map(|k| k.as_str()));
        }
        cands.extend(CONSTANTS);
        let mut d =
            Diagnostic::new(format!("unknown name `{}`", id.name)).primary(id.span, "not defined");
        if let Some(s) = suggest(&id.name, cands.into_iter()) {
            d = d.note(s);
        } else if !self.fn_stack.is_empty() {
            d = d.note("a helper function sees only its own parameters");
        }
        Err(d)
    }

    fn index_args(
        &mut self,
        args: &[ast::Expr],
        dims: &[IndexId],
        what: &str,
    ) -> DResult<Vec<ExprId>> {
        let mut out = Vec::new();
        for (a, d) in args.iter().zip(dims) {
            let e = self.expr(a)?;
            let t = self.ty(e);
            if t != Ty::Int {
                return Err(Diagnostic::new(format!(
                    "an index into `{what}` must be an int, not {t}"
                ))
                .primary(a.span, format!("this is {t}")));
            }
            if let Expr::Index(j) = self.prog.pool.get(e) {
                if self.same_range(*j) != self.same_range(*d) {
                    let (jn, dn) = (self.index_name(*j), self.index_name(*d));
                    return Err(Diagnostic::new(format!(
                        "index mismatch: `{jn}` used for dimension `{dn}` of `{what}`"
                    ))
                    .primary(a.span, format!("`{what}` has `{dn}` here"))
                    .note(format!(
                        "the extents of `{jn}` and `{dn}` may differ; write `{what}[.., {dn}, ..]`"
                    )));
                }
            }
            if let (Expr::Int(v), Extent::Fixed(n)) =
                (self.prog.pool.get(e), &self.prog.indices[d.ix()].extent)
            {
                if *v < 0 || v >= n {
                    return Err(
                        Diagnostic::new(format!("index {v} is out of range for `{what}`"))
                            .primary(a.span, format!("this dimension has extent {n}")),
                    );
                }
            }
            // Data-dependent indices keep their source, for run-time range errors.
            if !matches!(self.prog.pool.get(e), Expr::Index(_) | Expr::Int(_)) {
                self.prog.spans.entry(e).or_insert(a.span);
            }
            out.push(e);
        }
        Ok(out)
    }

    /// What an index ranges over, up to renaming: `t2: T` ranges like `t`, and every index of
    /// extent 4 (`boxes[n, 4]`, `j: 4`) like every other. Such indices may stand in each
    /// other's dimensions.
    fn same_range(&self, i: IndexId) -> (Option<IndexId>, i64) {
        match self.prog.range_of(i) {
            Ok(k) => (Some(k), 0),
            Err(n) => (None, n),
        }
    }

    fn access(&mut self, id: &Ident, args: &[ast::Expr], span: Span) -> DResult<ExprId> {
        let is_alias = self.scopes.iter().any(|s| s.contains_key(&id.name));
        let binding = if is_alias || !self.fn_stack.is_empty() {
            None
        } else {
            self.names.get(&id.name).copied()
        };
        match binding {
            Some((Binding::Input(i), _)) => {
                let dims = self.prog.inputs[i.ix()].dims.clone();
                if dims.len() != args.len() {
                    return Err(self.arity(id, &dims, args.len(), span));
                }
                let a = self.index_args(args, &dims, &id.name)?;
                let ty = self.prog.inputs[i.ix()].ty;
                let e = self.add(Expr::Input(i, a), ty);
                self.prog.spans.entry(e).or_insert(span);
                Ok(e)
            }
            Some((Binding::Tensor(t), _)) => {
                let dims = self.prog.tensors[t.ix()].indices.clone();
                if dims.len() != args.len() {
                    return Err(self.arity(id, &dims, args.len(), span));
                }
                let is_self = self.current.as_ref().map(|c| c.id == t).unwrap_or(false);
                let a = if is_self {
                    let mut a = Vec::new();
                    for x in args {
                        a.push(self.expr(x)?);
                    }
                    self.check_recurrence(id, &a, span)?;
                    a
                } else {
                    self.index_args(args, &dims, &id.name)?
                };
                // The body's type is not known while it is being lowered: a recurrence reads
                // the type its non-recursive part gives, taken as real (checked at the end).
                let ty = if is_self {
                    Ty::Real
                } else {
                    self.prog.tensors[t.ix()].ty
                };
                let e = self.add(Expr::Tensor(t, a), ty);
                self.prog.spans.entry(e).or_insert(span);
                Ok(e)
            }
            Some((Binding::Index(_), _)) | Some((Binding::Param(_), _)) => {
                Err(Diagnostic::new(format!("`{}` cannot be indexed", id.name))
                    .primary(id.span, "not a tensor"))
            }
            None if is_alias => Err(Diagnostic::new(format!("`{}` cannot be indexed", id.name))
                .primary(span, "a `let` without indices is used by its name alone")
                .note(format!(
                    "write `{}`, or define it with indices: `let {}[i] = ...`",
                    id.name, id.name
                ))),
            None => {
                let mut d = Diagnostic::new(format!("unknown name `{}`", id.name))
                    .primary(id.span, "not defined");
                if let Some(s) = suggest(&id.name, self.names.keys().map(|k| k.as_str())) {
                    d = d.note(s);
                }
                Err(d)
            }
        }
    }

    fn arity(&self, id: &Ident, dims: &[IndexId], got: usize, span: Span) -> Diagnostic {
        let names: Vec<String> = dims.iter().map(|d| self.index_name(*d)).collect();
        Diagnostic::new(format!(
            "shape mismatch: `{}` has {} {} but is indexed with {got}",
            id.name,
            dims.len(),
            if dims.len() == 1 {
                "dimension"
            } else {
                "dimensions"
            }
        ))
        .primary(span, format!("`{}` is [{}]", id.name, names.join(", ")))
    }

    /// A recurrence reads itself only at `own_index - constant` offsets that are earlier in
    /// row-major order, so that evaluating the table in order never reads an unfilled cell.
    fn check_recurrence(&mut self, id: &Ident, args: &[ExprId], span: Span) -> DResult<()> {
        let own = self
            .current
            .as_ref()
            .map(|c| c.indices.clone())
            .unwrap_or_default();
        let mut offsets = Vec::new();
        for (a, ix) in args.iter().zip(&own) {
            let off = match self.prog.pool.get(*a) {
                Expr::Index(j) if j == ix => Some(0),
                Expr::Binary(Bin::Sub, x, c) | Expr::Binary(Bin::Add, x, c) => {
                    let sign = if matches!(self.prog.pool.get(*a), Expr::Binary(Bin::Sub, ..)) {
                        -1
                    } else {
                        1
                    };
                    match (self.prog.pool.get(*x), self.prog.pool.get(*c)) {
                        (Expr::Index(j), Expr::Int(v)) if j == ix => Some(sign * v),
                        _ => None,
                    }
                }
                _ => None,
            };
            match off {
                Some(o) => offsets.push(o),
                None => {
                    let n = self.index_name(*ix);
                    return Err(Diagnostic::new(format!(
                        "`{}` reads itself at an index that is not a constant offset of `{n}`",
                        id.name
                    ))
                    .primary(span, "recursive read")
                    .note(format!(
                        "a recurrence reads itself as `{}[.., {n} - 1, ..]`",
                        id.name
                    )));
                }
            }
        }
        let later = match offsets.iter().find(|o| **o != 0) {
            Some(o) => *o > 0,
            None => {
                return Err(Diagnostic::new(format!(
                    "the recurrence `{}` reads ahead of itself",
                    id.name
                ))
                .primary(span, "this is the cell being computed")
                .note("a recurrence reads other cells of itself, e.g. `t[i - 1]`"))
            }
        };
        let Some(c) = self.current.as_mut() else {
            return Ok(());
        };
        match c.reverse {
            Some(r) if r != later => {
                let own_names: Vec<String> = own.iter().map(|i| self.index_name(*i)).collect();
                Err(Diagnostic::new(format!("the recurrence `{}` reads ahead of itself", id.name))
                    .primary(span, "this cell is not computed yet")
                    .note(format!(
                        "cells are computed in order of [{}], last index fastest (or all in reverse, when every read is at a later cell); reads must all be earlier, or all later",
                        own_names.join(", ")
                    )))
            }
            _ => {
                c.recurrent = true;
                c.reverse = Some(later);
                Ok(())
            }
        }
    }

    fn reduce(
        &mut self,
        op: &Ident,
        idx: &[Ident],
        body: &ast::Expr,
        span: Span,
    ) -> DResult<ExprId> {
        let Some(red) = Red::from_name(&op.name) else {
            return Err(Diagnostic::new(format!("`{}` is not a reduction", op.name))
                .primary(op.span, "expected sum, mean, max, min or logsumexp"));
        };
        if !self.fn_stack.is_empty() {
            return Err(
                Diagnostic::new("helper functions cannot reduce over indices")
                    .primary(span, "move the reduction into the loss"),
            );
        }
        let mut ixs = Vec::new();
        for i in idx {
            let ix = self.lookup_index(i)?;
            if self.active.contains(&ix) || ixs.contains(&ix) {
                return Err(
                    Diagnostic::new(format!("index `{}` is already in use here", i.name))
                        .primary(i.span, "bound by an enclosing definition or reduction")
                        .note("reduce over an index the surrounding expression does not use"),
                );
            }
            ixs.push(ix);
        }
        let saved = self.active.len();
        self.active.extend(&ixs);
        let b = self.expr(body);
        self.active.truncate(saved);
        let mut b = b?;
        self.numeric(b, body.span, &format!("`{}`", op.name))?;
        let ty = match red {
            Red::Mean | Red::LogSumExp => {
                b = self.promote(b);
                Ty::Real
            }
            _ => self.ty(b),
        };
        for ix in ixs.iter().rev() {
            b = self.add(Expr::Reduce(red, *ix, b), ty);
        }
        Ok(b)
    }

    fn call(&mut self, id: &Ident, args: &[ast::Expr], span: Span) -> DResult<ExprId> {
        if let Some(f) = self.fns.get(id.name.as_str()).copied() {
            return self.inline(f, args, span);
        }
        let mut a = Vec::new();
        for x in args {
            a.push(self.expr(x)?);
        }
        let want = |n: usize| -> DResult<()> {
            if a.len() != n {
                return Err(Diagnostic::new(format!(
                    "`{}` takes {n} argument{}, got {}",
                    id.name,
                    if n == 1 { "" } else { "s" },
                    a.len()
                ))
                .primary(span, "wrong number of arguments"));
            }
            Ok(())
        };
        for (x, e) in a.iter().zip(args) {
            if id.name != "real" {
                self.numeric(*x, e.span, &format!("`{}`", id.name))?;
            }
        }
        match id.name.as_str() {
            "real" => {
                want(1)?;
                return Ok(self.promote(a[0]));
            }
            "int" => {
                want(1)?;
                return Ok(if self.ty(a[0]) == Ty::Int {
                    a[0]
                } else {
                    self.add(Expr::Unary(Un::ToInt, a[0]), Ty::Int)
                });
            }
            "stop_grad" => {
                want(1)?;
                let t = self.ty(a[0]);
                return Ok(self.add(Expr::StopGrad(a[0]), t));
            }
            "pow" => {
                want(2)?;
                return self.pow(a[0], a[1], span);
            }
            "sum" | "mean" => {
                return Err(
                    Diagnostic::new(format!("`{}` reduces over an index", id.name))
                        .primary(span, format!("write `{}(i: ...)`", id.name)),
                )
            }
            _ => {}
        }
        let Some(f) = Func::from_name(&id.name) else {
            let mut cands: Vec<&str> = Func::ALL.iter().map(|(_, n)| *n).collect();
            cands.extend(self.fns.keys());
            cands.extend(["real", "int", "stop_grad", "pow"]);
            let mut d = Diagnostic::new(format!("unknown function `{}`", id.name))
                .primary(id.span, "not defined");
            if let Some(s) = suggest(&id.name, cands.into_iter()) {
                d = d.note(s);
            }
            return Err(d);
        };
        let (args, ty) = match f {
            Func::Min | Func::Max => {
                if a.len() < 2 {
                    return Err(
                        Diagnostic::new(format!("`{}` takes two or more values", id.name)).primary(
                            span,
                            format!("or reduce over an index: `{}(i: ...)`", id.name),
                        ),
                    );
                }
                if a.iter().all(|x| self.ty(*x) == Ty::Int) {
                    (a, Ty::Int)
                } else {
                    (a.into_iter().map(|x| self.promote(x)).collect(), Ty::Real)
                }
            }
            Func::LogSumExp => {
                if a.is_empty() {
                    return Err(Diagnostic::new("`logsumexp` takes one or more values")
                        .primary(span, "no arguments"));
                }
                (a.into_iter().map(|x| self.promote(x)).collect(), Ty::Real)
            }
            Func::Clamp => {
                want(3)?;
                if a.iter().all(|x| self.ty(*x) == Ty::Int) {
                    (a, Ty::Int)
                } else {
                    (a.into_iter().map(|x| self.promote(x)).collect(), Ty::Real)
                }
            }
            Func::Xlogy => {
                want(2)?;
                (a.into_iter().map(|x| self.promote(x)).collect(), Ty::Real)
            }
            Func::Abs | Func::Sign | Func::Floor | Func::Ceil => {
                want(1)?;
                let t = self.ty(a[0]);
                if t == Ty::Int && matches!(f, Func::Floor | Func::Ceil) {
                    return Ok(a[0]);
                }
                (a, t)
            }
            Func::IsNan | Func::IsInf => {
                want(1)?;
                (vec![self.promote(a[0])], Ty::Bool)
            }
            _ => {
                want(1)?;
                (vec![self.promote(a[0])], Ty::Real)
            }
        };
        Ok(self.add(Expr::Call(f, args), ty))
    }

    fn pow(&mut self, a: ExprId, b: ExprId, span: Span) -> DResult<ExprId> {
        let (a, b, ty) = if self.ty(b) == Ty::Int {
            (a, b, self.ty(a))
        } else {
            let (a, b) = (self.promote(a), self.promote(b));
            (a, b, Ty::Real)
        };
        let e = self.add(Expr::Binary(Bin::Pow, a, b), ty);
        self.prog.spans.entry(e).or_insert(span);
        Ok(e)
    }

    fn inline(&mut self, f: &ast::FnDef, args: &[ast::Expr], span: Span) -> DResult<ExprId> {
        if self.fn_stack.contains(&f.name.name) {
            return Err(Diagnostic::new(format!("`{}` calls itself", f.name.name))
                .primary(span, "recursive call")
                .secondary(f.name.span, "defined here")
                .note("helper functions are inlined and cannot recurse; use a recurrence (`let t[i] pad 0 = ...`)"));
        }
        if self.fn_stack.len() >= MAX_INLINE_DEPTH {
            return Err(Diagnostic::new(format!(
                "helper functions nested more than {MAX_INLINE_DEPTH} deep"
            ))
            .primary(span, "too deep"));
        }
        if f.params.len() != args.len() {
            return Err(Diagnostic::new(format!(
                "`{}` takes {} argument{}, got {}",
                f.name.name,
                f.params.len(),
                if f.params.len() == 1 { "" } else { "s" },
                args.len()
            ))
            .primary(span, "wrong number of arguments")
            .secondary(f.name.span, "defined here"));
        }
        let mut scope = HashMap::new();
        for (p, a) in f.params.iter().zip(args) {
            let e = self.expr(a)?;
            if scope.insert(p.name.clone(), e).is_some() {
                return Err(
                    Diagnostic::new(format!("parameter `{}` appears twice", p.name))
                        .primary(p.span, "repeated"),
                );
            }
        }
        // A helper sees only its parameters: swap the caller's aliases out.
        let saved = std::mem::replace(&mut self.scopes, vec![scope]);
        self.fn_stack.push(f.name.name.clone());
        let r = self.block(&f.body);
        self.fn_stack.pop();
        self.scopes = saved;
        r
    }

    fn binary(&mut self, op: BinOp, a: &ast::Expr, b: &ast::Expr, span: Span) -> DResult<ExprId> {
        let x = self.expr(a)?;
        let y = self.expr(b)?;
        let sym = op.symbol();
        if op.is_logical() {
            self.boolean(x, a.span, &format!("`{sym}`"))?;
            self.boolean(y, b.span, &format!("`{sym}`"))?;
            let o = if op == BinOp::And { Bin::And } else { Bin::Or };
            return Ok(self.add(Expr::Binary(o, x, y), Ty::Bool));
        }
        if op.is_comparison() {
            let (tx, ty) = (self.ty(x), self.ty(y));
            let (x, y) = if tx == Ty::Bool || ty == Ty::Bool {
                if tx != ty || !matches!(op, BinOp::Eq | BinOp::Ne) {
                    return Err(Diagnostic::new(format!(
                        "cannot compare {tx} with {ty} using `{sym}`"
                    ))
                    .primary(span, "mismatched comparison"));
                }
                (x, y)
            } else {
                let (x, y, _) = self.unify(x, y);
                (x, y)
            };
            let o = match op {
                BinOp::Eq => Bin::Eq,
                BinOp::Ne => Bin::Ne,
                BinOp::Lt => Bin::Lt,
                BinOp::Le => Bin::Le,
                BinOp::Gt => Bin::Gt,
                _ => Bin::Ge,
            };
            return Ok(self.add(Expr::Binary(o, x, y), Ty::Bool));
        }
        self.numeric(x, a.span, &format!("`{sym}`"))?;
        self.numeric(y, b.span, &format!("`{sym}`"))?;
        if op == BinOp::Pow {
            return self.pow(x, y, span);
        }
        let (x, y, ty) = self.unify(x, y);
        let o = match op {
            BinOp::Add => Bin::Add,
            BinOp::Sub => Bin::Sub,
            BinOp::Mul => Bin::Mul,
            BinOp::Div => Bin::Div,
            _ => Bin::Rem,
        };
        let e = self.add(Expr::Binary(o, x, y), ty);
        if matches!(o, Bin::Div | Bin::Rem) && ty == Ty::Int {
            self.prog.spans.entry(e).or_insert(span);
        }
        Ok(e)
    }
}
