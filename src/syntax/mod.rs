//! Parsing: source text -> [`ast::File`], via the pest grammar in `grammar/loss.pest`.
//!
//! Owns the grammar, operator precedence (a Pratt parser) and syntax diagnostics. Knows nothing
//! of names or types; that is `check`'s job.

pub mod ast;

use crate::diag::{Diagnostic, Error, ErrorKind, Result, Span};
use ast::*;
use pest::iterators::{Pair, Pairs};
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser as _;
use std::sync::OnceLock;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/loss.pest"]
struct LossParser;

/// Deepest expression nesting accepted; deeper input is an error, not a stack overflow.
pub const MAX_NESTING: usize = 200;
/// Longest source accepted, in bytes.
pub const MAX_SOURCE_LEN: usize = 1 << 22;

/// Deepest expression tree accepted (operators and calls, not only brackets).
pub const MAX_DEPTH: usize = 256;

/// Reads at most `limit` + 1 bytes of a file: more is a `Limit` error naming `what` the file
/// is (a source, an array), so a device or a huge file is never read whole.
pub fn read_bounded(path: &std::path::Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let io = |e: std::io::Error| {
        Error::new(
            ErrorKind::Io,
            format!("cannot read `{}`: {e}", path.display()),
        )
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    f.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(Error::new(
            ErrorKind::Limit,
            format!(
                "`{}` is more than {limit} bytes, the limit for {what}",
                path.display()
            ),
        ));
    }
    Ok(bytes)
}

/// Reads a source file: at most [`MAX_SOURCE_LEN`] + 1 bytes are read (`/dev/zero` is a
/// `Limit` error, not an out-of-memory abort), and text that is not UTF-8 is a `Data` error
/// that quotes none of it.
pub fn read_source(path: &std::path::Path) -> Result<String> {
    let bytes = read_bounded(path, MAX_SOURCE_LEN as u64, "a source")?;
    String::from_utf8(bytes).map_err(|e| {
        Error::new(
            ErrorKind::Data,
            format!(
                "`{}` is not UTF-8 text (byte {})",
                path.display(),
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Parses one source file. `file` is the id the spans will carry.
///
/// Parsing recurses once per operator of a chain (`a ^ b ^ c`, `- - x`), so it runs on a thread
/// with a large stack; what comes back is at most [`MAX_DEPTH`] deep, which every later stage
/// can walk recursively.
pub fn parse(file: u32, text: &str) -> Result<File> {
    let owned = text.to_string();
    let worker = std::thread::Builder::new()
        .stack_size(512 << 20)
        .spawn(move || {
            let f = parse_here(file, &owned)?;
            check_depth(file, &f)?;
            Ok(f)
        });
    match worker {
        Ok(h) => h
            .join()
            .unwrap_or_else(|_| Err(Error::new(ErrorKind::Limit, "the parser ran out of stack"))),
        Err(_) => {
            let f = parse_here(file, text)?;
            check_depth(file, &f)?;
            Ok(f)
        }
    }
}

fn check_depth(file: u32, f: &File) -> Result<()> {
    fn block(b: &Block, d: usize) -> Option<Span> {
        b.lets
            .iter()
            .find_map(|l| expr(&l.value, d).or_else(|| l.pad.as_ref().and_then(|p| expr(p, d))))
            .or_else(|| expr(&b.result, d))
    }
    fn expr(e: &Expr, d: usize) -> Option<Span> {
        if d > MAX_DEPTH {
            return Some(e.span);
        }
        match &e.kind {
            ExprKind::Real(_) | ExprKind::Int(_) | ExprKind::Bool(_) | ExprKind::Name(_) => None,
            ExprKind::Access(_, a) | ExprKind::Call(_, a) => a.iter().find_map(|x| expr(x, d + 1)),
            ExprKind::Reduce(_, _, b) | ExprKind::Unary(_, b) => expr(b, d + 1),
            ExprKind::Binary(_, a, b) => expr(a, d + 1).or_else(|| expr(b, d + 1)),
            ExprKind::If(c, a, b) => expr(c, d + 1)
                .or_else(|| block(a, d + 1))
                .or_else(|| block(b, d + 1)),
        }
    }
    let _ = file;
    for item in &f.items {
        let found = match item {
            Item::Import(_) => None,
            Item::Fn(d) => block(&d.body, 0),
            Item::Loss(d) => d
                .params
                .iter()
                .find_map(|p| expr(&p.default, 0))
                .or_else(|| block(&d.body, 0)),
        };
        if let Some(span) = found {
            return Err(Error::from_diag(
                ErrorKind::Limit,
                Diagnostic::new(format!("expression nested more than {MAX_DEPTH} deep"))
                    .primary(
                        Span {
                            end: span.start + 1,
                            ..span
                        },
                        "too deep here",
                    )
                    .note("split it with `let` definitions"),
            ));
        }
    }
    Ok(())
}

fn parse_here(file: u32, text: &str) -> Result<File> {
    if text.len() > MAX_SOURCE_LEN {
        return Err(Error::new(
            ErrorKind::Limit,
            format!(
                "source is {} bytes; the limit is {MAX_SOURCE_LEN}",
                text.len()
            ),
        ));
    }
    check_nesting(file, text)?;
    check_chains(file, text)?;
    let mut pairs = LossParser::parse(Rule::file, text).map_err(|e| syntax_error(file, text, e))?;
    // Cannot fail: a successful parse of `file` yields exactly one pair.
    let root = pairs.next().expect("the file rule always yields one pair");
    let b = Builder { file };
    let mut items = Vec::new();
    for p in root.into_inner() {
        match p.as_rule() {
            Rule::import => items.push(Item::Import(b.import(p))),
            Rule::loss_def => items.push(Item::Loss(b.loss(p)?)),
            Rule::fn_def => items.push(Item::Fn(b.fn_def(p)?)),
            _ => {}
        }
    }
    Ok(File { items })
}

/// Pest recurses once per nesting level; bound the depth before parsing so that hostile input
/// (a million open parentheses) is an error instead of a stack overflow.
fn check_nesting(file: u32, text: &str) -> Result<()> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(Error::from_diag(
                        ErrorKind::Limit,
                        Diagnostic::new(format!("brackets nested more than {MAX_NESTING} deep"))
                            .primary(Span::new(file, i, i + 1), "too deep"),
                    ));
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The Pratt parser recurses once per prefix operator (`- - - x`) and per `^` of a chain
/// (right-associative), without brackets; four million of them overflow even the parser's
/// 512 MiB stack. Such a chain of n operators is at least n deep, so a chain longer than
/// [`MAX_DEPTH`] would be refused after parsing anyway: refuse it before.
fn check_chains(file: u32, text: &str) -> Result<()> {
    let bytes = text.as_bytes();
    // chain length at each bracket level; whether the last token ended an operand
    let mut chains: Vec<usize> = vec![0];
    let mut operand = false;
    let mut k = 0;
    while k < bytes.len() {
        let c = bytes[k];
        let next = bytes.get(k + 1).copied();
        match c {
            b'/' if next == Some(b'/') => {
                while k < bytes.len() && bytes[k] != b'\n' {
                    k += 1;
                }
                continue;
            }
            b'/' if next == Some(b'*') => {
                k += 2;
                while k < bytes.len() && !(bytes[k] == b'*' && bytes.get(k + 1) == Some(&b'/')) {
                    k += 1;
                }
                k += 2;
                continue;
            }
            b'(' | b'[' | b'{' => {
                chains.push(0);
                operand = false;
            }
            b')' | b']' | b'}' => {
                if chains.len() > 1 {
                    chains.pop();
                }
                operand = true;
            }
            b' ' | b'\t' | b'\r' | b'\n' => {}
            // A prefix operator, or `^`: the chain goes on.
            b'-' | b'!' | b'^' if (c == b'^' || !operand) && next != Some(b'=') => {
                let n = chains.last_mut().map(|n| {
                    *n += 1;
                    *n
                });
                if n.unwrap_or(0) > MAX_DEPTH {
                    return Err(Error::from_diag(
                        ErrorKind::Limit,
                        Diagnostic::new(format!(
                            "more than {MAX_DEPTH} prefix operators or `^` in a row"
                        ))
                        .primary(Span::new(file, k, k + 1), "too deep"),
                    ));
                }
                operand = false;
            }
            // Any other operator, separator or binary minus ends the chain.
            b'+' | b'-' | b'*' | b'/' | b'%' | b'<' | b'>' | b'=' | b'!' | b'&' | b'|' | b','
            | b';' | b':' => {
                if let Some(n) = chains.last_mut() {
                    *n = 0;
                }
                operand = false;
            }
            _ => operand = true,
        }
        k += 1;
    }
    Ok(())
}

fn rule_name(r: &Rule) -> Option<&'static str> {
    Some(match r {
        Rule::EOI => "end of input",
        Rule::import => "`import`",
        Rule::loss_def => "`loss`",
        Rule::fn_def => "`fn`",
        Rule::kw_loss => "`loss`",
        Rule::kw_fn => "`fn`",
        Rule::kw_let | Rule::let_stmt => "`let`",
        Rule::kw_else => "`else`",
        Rule::kw_pad | Rule::pad => "`pad`",
        Rule::ident => "a name",
        Rule::expr | Rule::primary | Rule::prefix => "an expression",
        Rule::infix
        | Rule::or
        | Rule::and
        | Rule::eq
        | Rule::ne
        | Rule::le
        | Rule::ge
        | Rule::lt
        | Rule::gt
        | Rule::add
        | Rule::sub
        | Rule::mul
        | Rule::div
        | Rule::rem
        | Rule::pow => "an operator",
        Rule::number => "an expression",
        Rule::int_lit => "a number",
        Rule::type_name => "a type (real, int or bool)",
        Rule::string => "a quoted path",
        Rule::block => "`{`",
        Rule::dims | Rule::let_indices | Rule::out_shape => "`[`",
        Rule::doc_line | Rule::docs => "`///`",
        Rule::input_decl | Rule::input_list => "an input",
        Rule::param_decl | Rule::param_list => "a parameter",
        Rule::tensor_index => "an index",
        _ => return None,
    })
}

fn syntax_error(file: u32, text: &str, e: pest::error::Error<Rule>) -> Error {
    let (start, end) = match e.location {
        pest::error::InputLocation::Pos(p) => (p, p),
        pest::error::InputLocation::Span((a, b)) => (a, b),
    };
    // Point at the offending token rather than at nothing.
    let end = if end > start {
        end
    } else {
        text[start..]
            .chars()
            .next()
            .map(|c| start + c.len_utf8())
            .unwrap_or(start)
    };
    let found = match text[start..].chars().next() {
        None => "end of input".to_string(),
        Some(_) => {
            let tok: String = text[start..]
                .chars()
                .take_while(|c| !c.is_whitespace())
                .take(12)
                .collect();
            format!("`{tok}`")
        }
    };
    let message = match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().filter_map(rule_name).collect();
            names.sort();
            names.dedup();
            // "a name or an expression" says nothing more than "an expression".
            if names.contains(&"an expression") {
                names.retain(|n| *n != "a name");
            }
            match names.len() {
                0 => format!("syntax error: unexpected {found}"),
                1 => format!("syntax error: expected {}, found {found}", names[0]),
                _ => {
                    let last = names.pop().unwrap_or_default();
                    format!(
                        "syntax error: expected {} or {last}, found {found}",
                        names.join(", ")
                    )
                }
            }
        }
        pest::error::ErrorVariant::CustomError { message } => format!("syntax error: {message}"),
    };
    Error::from_diag(
        ErrorKind::Syntax,
        Diagnostic::new(message).primary(Span::new(file, start, end), "here"),
    )
}

fn pratt() -> &'static PrattParser<Rule> {
    static P: OnceLock<PrattParser<Rule>> = OnceLock::new();
    P.get_or_init(|| {
        PrattParser::new()
            .op(Op::infix(Rule::or, Assoc::Left))
            .op(Op::infix(Rule::and, Assoc::Left))
            .op(Op::infix(Rule::eq, Assoc::Left)
                | Op::infix(Rule::ne, Assoc::Left)
                | Op::infix(Rule::lt, Assoc::Left)
                | Op::infix(Rule::le, Assoc::Left)
                | Op::infix(Rule::gt, Assoc::Left)
                | Op::infix(Rule::ge, Assoc::Left))
            .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
            .op(Op::infix(Rule::mul, Assoc::Left)
                | Op::infix(Rule::div, Assoc::Left)
                | Op::infix(Rule::rem, Assoc::Left))
            .op(Op::prefix(Rule::neg) | Op::prefix(Rule::not))
            .op(Op::infix(Rule::pow, Assoc::Right))
    })
}

/// Builds the AST from pest's pairs. Every `expect` in it restates the grammar (a pair of rule
/// `loss_def` always has a `docs`, a keyword and a name, ...): it cannot fail on any input that
/// parsed, which is the only input that reaches it.
struct Builder {
    file: u32,
}

impl Builder {
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        Span::new(self.file, s.start(), s.end())
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident {
            name: p.as_str().to_string(),
            span: self.span(&p),
        }
    }

    fn docs(&self, p: Pair<Rule>) -> String {
        let lines: Vec<&str> = p
            .into_inner()
            .map(|l| {
                let s = l.as_str().trim_start_matches("///");
                s.strip_prefix(' ').unwrap_or(s).trim_end()
            })
            .collect();
        lines.join("\n")
    }

    fn ty(&self, p: Pair<Rule>) -> Type {
        match p.as_str() {
            "int" => Type::Int,
            "bool" => Type::Bool,
            _ => Type::Real,
        }
    }

    fn int_value(&self, p: &Pair<Rule>) -> Result<i64> {
        p.as_str().parse::<i64>().map_err(|_| {
            Error::from_diag(
                ErrorKind::Syntax,
                Diagnostic::new("integer literal too large")
                    .primary(self.span(p), "does not fit in 64 bits"),
            )
        })
    }

    fn import(&self, p: Pair<Rule>) -> Import {
        let span = self.span(&p);
        let s = p
            .into_inner()
            .next()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default();
        Import {
            path: s.trim_matches('"').to_string(),
            span,
        }
    }

    fn loss(&self, p: Pair<Rule>) -> Result<LossDef> {
        let span = self.span(&p);
        let mut it = p.into_inner();
        let doc = self.docs(it.next().expect("docs"));
        let _kw = it.next();
        let name = self.ident(it.next().expect("loss name"));
        let mut inputs = Vec::new();
        let mut params = Vec::new();
        let mut output = Vec::new();
        let mut output_span = name.span;
        let mut body = None;
        for part in it {
            match part.as_rule() {
                Rule::input_list => {
                    for d in part.into_inner() {
                        inputs.push(self.input(d)?);
                    }
                }
                Rule::param_list => {
                    for d in part.into_inner() {
                        params.push(self.param(d)?);
                    }
                }
                Rule::out_shape => {
                    output_span = self.span(&part);
                    output = part.into_inner().map(|i| self.ident(i)).collect();
                }
                Rule::block => body = Some(self.block(part)?),
                _ => {}
            }
        }
        Ok(LossDef {
            doc,
            name,
            inputs,
            params,
            output,
            output_span,
            body: body.expect("loss body"),
            span,
        })
    }

    fn input(&self, p: Pair<Rule>) -> Result<InputDecl> {
        let span = self.span(&p);
        let mut it = p.into_inner();
        let name = self.ident(it.next().expect("input name"));
        let mut dims = Vec::new();
        let mut ty = None;
        for part in it {
            match part.as_rule() {
                Rule::dims => {
                    for d in part.into_inner() {
                        match d.as_rule() {
                            Rule::ident => dims.push(DimDecl::Index(self.ident(d))),
                            _ => dims.push(DimDecl::Fixed(self.int_value(&d)?, self.span(&d))),
                        }
                    }
                }
                Rule::type_name => ty = Some(self.ty(part)),
                _ => {}
            }
        }
        Ok(InputDecl {
            name,
            dims,
            ty,
            span,
        })
    }

    fn param(&self, p: Pair<Rule>) -> Result<ParamDecl> {
        let span = self.span(&p);
        let mut it = p.into_inner();
        let name = self.ident(it.next().expect("param name"));
        let mut ty = None;
        let mut default = None;
        for part in it {
            match part.as_rule() {
                Rule::type_name => ty = Some(self.ty(part)),
                Rule::expr => default = Some(self.expr(part)?),
                _ => {}
            }
        }
        Ok(ParamDecl {
            name,
            ty,
            default: default.expect("param default"),
            span,
        })
    }

    fn fn_def(&self, p: Pair<Rule>) -> Result<FnDef> {
        let span = self.span(&p);
        let mut it = p.into_inner();
        let doc = self.docs(it.next().expect("docs"));
        let _kw = it.next();
        let name = self.ident(it.next().expect("fn name"));
        let params = it
            .next()
            .expect("fn params")
            .into_inner()
            .map(|i| self.ident(i))
            .collect();
        let body_pair = it.next().expect("fn body");
        let body = match body_pair.as_rule() {
            Rule::block => self.block(body_pair)?,
            _ => {
                let e = self.expr(body_pair)?;
                Block {
                    span: e.span,
                    lets: vec![],
                    result: Box::new(e),
                }
            }
        };
        Ok(FnDef {
            doc,
            name,
            params,
            body,
            span,
        })
    }

    fn block(&self, p: Pair<Rule>) -> Result<Block> {
        let span = self.span(&p);
        let mut lets = Vec::new();
        let mut result = None;
        for part in p.into_inner() {
            match part.as_rule() {
                Rule::let_stmt => lets.push(self.let_stmt(part)?),
                Rule::expr => result = Some(self.expr(part)?),
                _ => {}
            }
        }
        Ok(Block {
            lets,
            result: Box::new(result.expect("block result")),
            span,
        })
    }

    fn let_stmt(&self, p: Pair<Rule>) -> Result<Let> {
        let span = self.span(&p);
        let mut it = p.into_inner();
        let _kw = it.next();
        let name = self.ident(it.next().expect("let name"));
        let mut indices = None;
        let mut pad = None;
        let mut value = None;
        for part in it {
            match part.as_rule() {
                Rule::let_indices => {
                    let mut v = Vec::new();
                    for ti in part.into_inner() {
                        let mut ti_it = ti.into_inner();
                        let iname = self.ident(ti_it.next().expect("index name"));
                        let extent = match ti_it.next() {
                            Some(e) => Some(self.expr(e)?),
                            None => None,
                        };
                        v.push(TensorIndex {
                            name: iname,
                            extent,
                        });
                    }
                    indices = Some(v);
                }
                Rule::pad => {
                    let e = part
                        .into_inner()
                        .find(|x| x.as_rule() == Rule::expr)
                        .expect("pad expr");
                    pad = Some(self.expr(e)?);
                }
                Rule::expr => value = Some(self.expr(part)?),
                _ => {}
            }
        }
        Ok(Let {
            name,
            indices,
            pad,
            value: value.expect("let value"),
            span,
        })
    }

    fn expr(&self, p: Pair<Rule>) -> Result<Expr> {
        self.pratt_expr(p.into_inner())
    }

    fn pratt_expr(&self, pairs: Pairs<Rule>) -> Result<Expr> {
        pratt()
            .map_primary(|p| self.primary(p))
            .map_prefix(|op, rhs| {
                let rhs = rhs?;
                let span = self.span(&op).to(rhs.span);
                let u = if op.as_rule() == Rule::neg {
                    UnOp::Neg
                } else {
                    UnOp::Not
                };
                Ok(Expr {
                    kind: ExprKind::Unary(u, Box::new(rhs)),
                    span,
                })
            })
            .map_infix(|lhs, op, rhs| {
                let (lhs, rhs) = (lhs?, rhs?);
                let b = match op.as_rule() {
                    Rule::or => BinOp::Or,
                    Rule::and => BinOp::And,
                    Rule::eq => BinOp::Eq,
                    Rule::ne => BinOp::Ne,
                    Rule::lt => BinOp::Lt,
                    Rule::le => BinOp::Le,
                    Rule::gt => BinOp::Gt,
                    Rule::ge => BinOp::Ge,
                    Rule::add => BinOp::Add,
                    Rule::sub => BinOp::Sub,
                    Rule::mul => BinOp::Mul,
                    Rule::div => BinOp::Div,
                    Rule::rem => BinOp::Rem,
                    _ => BinOp::Pow,
                };
                let span = lhs.span.to(rhs.span);
                Ok(Expr {
                    kind: ExprKind::Binary(b, Box::new(lhs), Box::new(rhs)),
                    span,
                })
            })
            .parse(pairs)
    }

    fn primary(&self, p: Pair<Rule>) -> Result<Expr> {
        let span = self.span(&p);
        let kind = match p.as_rule() {
            Rule::paren => {
                let inner = self.expr(p.into_inner().next().expect("paren expr"))?;
                // Keep the parenthesised span so carets cover the brackets.
                return Ok(Expr {
                    kind: inner.kind,
                    span,
                });
            }
            Rule::number => {
                let s = p.as_str();
                if s.contains(['.', 'e', 'E']) {
                    ExprKind::Real(s.parse::<f64>().unwrap_or(f64::INFINITY))
                } else {
                    ExprKind::Int(self.int_value(&p)?)
                }
            }
            Rule::bool_lit => ExprKind::Bool(p.as_str() == "true"),
            Rule::access => {
                let mut it = p.into_inner();
                let name = self.ident(it.next().expect("name"));
                match it.next() {
                    None => ExprKind::Name(name),
                    Some(args) => ExprKind::Access(
                        name,
                        args.into_inner()
                            .map(|a| self.expr(a))
                            .collect::<Result<_>>()?,
                    ),
                }
            }
            Rule::call => {
                let mut it = p.into_inner();
                let name = self.ident(it.next().expect("name"));
                ExprKind::Call(name, it.map(|a| self.expr(a)).collect::<Result<_>>()?)
            }
            Rule::reduce => {
                let mut it = p.into_inner().peekable();
                let op = self.ident(it.next().expect("reducer"));
                let mut idx = Vec::new();
                while let Some(x) = it.peek() {
                    if x.as_rule() != Rule::ident {
                        break;
                    }
                    idx.push(self.ident(it.next().expect("peeked")));
                }
                let body = self.expr(it.next().expect("reduce body"))?;
                ExprKind::Reduce(op, idx, Box::new(body))
            }
            Rule::if_expr => {
                let mut it = p.into_inner();
                let _kw = it.next();
                let cond = self.expr(it.next().expect("if cond"))?;
                let then = self.block(it.next().expect("then block"))?;
                let _else = it.next();
                let other = it.next().expect("else branch");
                let other = match other.as_rule() {
                    Rule::block => self.block(other)?,
                    _ => {
                        let e = self.primary(other)?;
                        Block {
                            span: e.span,
                            lets: vec![],
                            result: Box::new(e),
                        }
                    }
                };
                ExprKind::If(Box::new(cond), Box::new(then), Box::new(other))
            }
            r => unreachable!("primary rule {r:?}"),
        };
        Ok(Expr { kind, span })
    }
}
