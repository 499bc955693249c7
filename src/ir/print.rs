//! Prints a program as text close to the language's own syntax (for `lossc ir` and snapshots).
//! Subexpressions used more than once are named `%N` and printed once.

use super::*;
use std::fmt::Write;

/// Formats a real constant so that it reads back as the same real.
pub fn real_literal(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else {
        format!("{v:?}")
    }
}

struct Printer<'a> {
    p: &'a Program,
    uses: Vec<u32>,
    named: HashMap<ExprId, usize>,
    lines: Vec<String>,
}

impl<'a> Printer<'a> {
    fn is_leaf(&self, id: ExprId) -> bool {
        self.p.pool.get(id).is_leaf()
    }

    fn count(&mut self, id: ExprId, seen: &mut Vec<bool>) {
        self.uses[id.ix()] += 1;
        if seen[id.ix()] {
            return;
        }
        seen[id.ix()] = true;
        let e = self.p.pool.get(id).clone();
        e.for_each_child(|c| self.count(c, seen));
    }

    fn index_name(&self, i: IndexId) -> String {
        self.p.index_label(i)
    }

    fn extent_name(&self, i: IndexId) -> String {
        let ix = &self.p.indices[i.ix()];
        match ix.extent {
            Extent::Fixed(n) => n.to_string(),
            _ => ix.name.to_uppercase(),
        }
    }

    /// The text of a node; shared non-leaf nodes become `%N`, defined on a line of their own.
    fn expr(&mut self, id: ExprId) -> String {
        if let Some(n) = self.named.get(&id) {
            return format!("%{n}");
        }
        let text = self.expr_inner(id);
        if self.uses[id.ix()] > 1 && !self.is_leaf(id) {
            let n = self.named.len();
            self.named.insert(id, n);
            self.lines.push(format!("  %{n} = {text}"));
            return format!("%{n}");
        }
        text
    }

    fn args(&mut self, a: &[ExprId]) -> String {
        a.iter()
            .map(|x| self.expr(*x))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn expr_inner(&mut self, id: ExprId) -> String {
        match self.p.pool.get(id).clone() {
            Expr::Real(b) => real_literal(f64::from_bits(b)),
            Expr::Int(v) => v.to_string(),
            Expr::Bool(v) => v.to_string(),
            Expr::Index(i) => self.index_name(i),
            Expr::Extent(i) => self.extent_name(i),
            Expr::Param(p) => self.p.params[p.ix()].name.clone(),
            Expr::Input(i, a) => format!("{}[{}]", self.p.inputs[i.ix()].name, self.args(&a)),
            Expr::Tensor(t, a) => format!("{}[{}]", self.p.tensors[t.ix()].name, self.args(&a)),
            Expr::Unary(Un::Neg, a) => format!("-{}", self.expr(a)),
            Expr::Unary(Un::Not, a) => format!("!{}", self.expr(a)),
            Expr::Unary(Un::ToReal, a) => format!("real({})", self.expr(a)),
            Expr::Unary(Un::ToInt, a) => format!("int({})", self.expr(a)),
            Expr::Binary(op, a, b) => {
                format!("({} {} {})", self.expr(a), op.symbol(), self.expr(b))
            }
            Expr::Call(f, a) => format!("{}({})", f.name(), self.args(&a)),
            Expr::Select(c, a, b) => {
                format!(
                    "if {} {{ {} }} else {{ {} }}",
                    self.expr(c),
                    self.expr(a),
                    self.expr(b)
                )
            }
            Expr::Reduce(r, i, body) => {
                format!("{}({}: {})", r.name(), self.index_name(i), self.expr(body))
            }
            Expr::StopGrad(a) => format!("stop_grad({})", self.expr(a)),
        }
    }
}

/// The whole program as text.
pub fn print_program(p: &Program) -> String {
    let mut pr = Printer {
        p,
        uses: vec![0; p.pool.len()],
        named: HashMap::new(),
        lines: vec![],
    };
    let mut roots: Vec<ExprId> = p.params.iter().map(|x| x.default).collect();
    for ix in &p.indices {
        if let Extent::Computed(e) = ix.extent {
            roots.push(e);
        }
    }
    for t in &p.tensors {
        roots.push(t.body);
        roots.extend(t.pad);
    }
    roots.push(p.output.body);
    let mut seen = vec![false; p.pool.len()];
    for r in &roots {
        pr.count(*r, &mut seen);
    }

    let mut out = String::new();
    let _ = writeln!(out, "loss {}", p.signature());
    for (k, ix) in p.indices.iter().enumerate() {
        let from = match &ix.extent {
            Extent::Input { input, dim } => format!("{}.dim{dim}", p.inputs[input.ix()].name),
            Extent::Fixed(n) => n.to_string(),
            Extent::Computed(e) => {
                let s = pr.expr(*e);
                out.extend(pr.lines.drain(..).map(|l| l + "\n"));
                s
            }
        };
        let _ = writeln!(
            out,
            "index {} in 0..{from}",
            pr.index_name(IndexId(k as u32))
        );
    }
    for prm in &p.params {
        let s = pr.expr(prm.default);
        out.extend(pr.lines.drain(..).map(|l| l + "\n"));
        let _ = writeln!(out, "param {}: {} = {s}", prm.name, prm.ty);
    }
    for t in &p.tensors {
        let idx: Vec<String> = t.indices.iter().map(|i| pr.index_name(*i)).collect();
        let pad = t
            .pad
            .map(|x| format!(" pad {}", pr.expr(x)))
            .unwrap_or_default();
        let body = pr.expr(t.body);
        out.extend(pr.lines.drain(..).map(|l| l + "\n"));
        let kind = match (t.recurrent, t.reverse, t.accumulated) {
            (_, _, true) => "accumulated",
            (true, true, _) => "reverse recurrence",
            (true, false, _) => "recurrence",
            _ => "tensor",
        };
        let _ = writeln!(
            out,
            "{kind} {}[{}]: {}{pad} = {body}",
            t.name,
            idx.join(", "),
            t.ty
        );
    }
    let idx: Vec<String> = p.output.indices.iter().map(|i| pr.index_name(*i)).collect();
    let body = pr.expr(p.output.body);
    out.extend(pr.lines.drain(..).map(|l| l + "\n"));
    let _ = writeln!(
        out,
        "output[{}]: {} = {body}",
        idx.join(", "),
        p.output_ty()
    );
    out
}
