//! The abstract syntax tree: what the parser produces, with a span on every node.

use crate::diag::Span;
use std::fmt;

#[derive(Clone, Debug)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug)]
pub enum Item {
    Import(Import),
    Loss(LossDef),
    Fn(FnDef),
}

#[derive(Clone, Debug)]
pub struct Import {
    pub path: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    Real,
    Int,
    Bool,
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Type::Real => "real",
            Type::Int => "int",
            Type::Bool => "bool",
        })
    }
}

#[derive(Clone, Debug)]
pub enum DimDecl {
    /// A named index: its extent comes from the array.
    Index(Ident),
    /// A fixed extent, e.g. the 4 of `boxes[n, 4]`.
    Fixed(i64, Span),
}

#[derive(Clone, Debug)]
pub struct InputDecl {
    pub name: Ident,
    pub dims: Vec<DimDecl>,
    pub ty: Option<Type>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct ParamDecl {
    pub name: Ident,
    pub ty: Option<Type>,
    pub default: Expr,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct LossDef {
    pub doc: String,
    pub name: Ident,
    pub inputs: Vec<InputDecl>,
    pub params: Vec<ParamDecl>,
    pub output: Vec<Ident>,
    pub output_span: Span,
    pub body: Block,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct FnDef {
    pub doc: String,
    pub name: Ident,
    pub params: Vec<Ident>,
    pub body: Block,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Block {
    pub lets: Vec<Let>,
    pub result: Box<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Let {
    pub name: Ident,
    /// `None` for an alias (`let x = ...`), `Some` for a tensor definition (`let t[n] = ...`).
    pub indices: Option<Vec<TensorIndex>>,
    pub pad: Option<Expr>,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct TensorIndex {
    pub name: Ident,
    /// A new index's extent (`u: 2 * S + 1`); `None` reuses an index of the loss.
    pub extent: Option<Expr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Pow,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::Pow => "^",
        }
    }
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
        )
    }
    pub fn is_logical(self) -> bool {
        matches!(self, BinOp::Or | BinOp::And)
    }
}

#[derive(Clone, Debug)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum ExprKind {
    Real(f64),
    Int(i64),
    Bool(bool),
    /// A bare name: a local, an input, a parameter, a scalar tensor, an index, an extent, a constant.
    Name(Ident),
    /// `x[e, ...]`
    Access(Ident, Vec<Expr>),
    /// `f(e, ...)`
    Call(Ident, Vec<Expr>),
    /// `sum(i, j: e)`
    Reduce(Ident, Vec<Ident>, Box<Expr>),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `if c { ... } else { ... }`; the branches may hold `let` aliases of their own.
    If(Box<Expr>, Box<Block>, Box<Block>),
}

// ---- S-expression printing, used by `lossc parse` and the parse-tree snapshots ----

impl fmt::Display for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for item in &self.items {
            match item {
                Item::Import(i) => writeln!(f, "(import {:?})", i.path)?,
                Item::Fn(d) => {
                    let ps: Vec<_> = d.params.iter().map(|p| p.name.as_str()).collect();
                    writeln!(f, "(fn {} ({})", d.name.name, ps.join(" "))?;
                    write_block(f, &d.body, 1)?;
                    writeln!(f, ")")?;
                }
                Item::Loss(d) => {
                    write!(f, "(loss {}", d.name.name)?;
                    if !d.doc.is_empty() {
                        write!(f, " (doc {:?})", d.doc)?;
                    }
                    writeln!(f)?;
                    for i in &d.inputs {
                        let dims: Vec<String> = i
                            .dims
                            .iter()
                            .map(|d| match d {
                                DimDecl::Index(id) => id.name.clone(),
                                DimDecl::Fixed(n, _) => n.to_string(),
                            })
                            .collect();
                        let ty = i.ty.map(|t| format!(" {t}")).unwrap_or_default();
                        writeln!(f, "  (input {} [{}]{ty})", i.name.name, dims.join(" "))?;
                    }
                    for p in &d.params {
                        let ty = p.ty.map(|t| format!(" {t}")).unwrap_or_default();
                        writeln!(f, "  (param {}{ty} {})", p.name.name, p.default)?;
                    }
                    let outs: Vec<_> = d.output.iter().map(|o| o.name.as_str()).collect();
                    writeln!(f, "  (output [{}])", outs.join(" "))?;
                    write_block(f, &d.body, 1)?;
                    writeln!(f, ")")?;
                }
            }
        }
        Ok(())
    }
}

fn write_block(f: &mut fmt::Formatter<'_>, b: &Block, depth: usize) -> fmt::Result {
    let pad = "  ".repeat(depth);
    for l in &b.lets {
        write!(f, "{pad}(let {}", l.name.name)?;
        if let Some(ix) = &l.indices {
            let parts: Vec<String> = ix
                .iter()
                .map(|t| match &t.extent {
                    Some(e) => format!("({} {})", t.name.name, e),
                    None => t.name.name.clone(),
                })
                .collect();
            write!(f, " [{}]", parts.join(" "))?;
        }
        if let Some(p) = &l.pad {
            write!(f, " (pad {p})")?;
        }
        writeln!(f, " {})", l.value)?;
    }
    writeln!(f, "{pad}{}", b.result)
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lets.is_empty() {
            return write!(f, "{}", self.result);
        }
        write!(f, "(block")?;
        for l in &self.lets {
            write!(f, " (let {} {})", l.name.name, l.value)?;
        }
        write!(f, " {})", self.result)
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprKind::Real(v) => write!(f, "{v:?}"),
            ExprKind::Int(v) => write!(f, "{v}"),
            ExprKind::Bool(v) => write!(f, "{v}"),
            ExprKind::Name(id) => write!(f, "{}", id.name),
            ExprKind::Access(id, args) => {
                write!(f, "{}[", id.name)?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        write!(f, " ")?;
                    }
                    write!(f, "{a}")?;
                }
                write!(f, "]")
            }
            ExprKind::Call(id, args) => {
                write!(f, "({}", id.name)?;
                for a in args {
                    write!(f, " {a}")?;
                }
                write!(f, ")")
            }
            ExprKind::Reduce(op, ix, body) => {
                let names: Vec<_> = ix.iter().map(|i| i.name.as_str()).collect();
                write!(f, "({} [{}] {})", op.name, names.join(" "), body)
            }
            ExprKind::Unary(UnOp::Neg, e) => write!(f, "(neg {e})"),
            ExprKind::Unary(UnOp::Not, e) => write!(f, "(not {e})"),
            ExprKind::Binary(op, a, b) => write!(f, "({} {a} {b})", op.symbol()),
            ExprKind::If(c, a, b) => write!(f, "(if {c} {a} {b})"),
        }
    }
}
