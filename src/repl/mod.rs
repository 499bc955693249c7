//! `lossc repl`: an interactive session over the runtime API.
//!
//! Owns the session (definitions typed so far, array bindings, dtype and backend), the small
//! command language around calls (`name(k = v, ...)`, `let x = [...]`, `:commands`), and the
//! terminal front end (rustyline: history, Ctrl-R, multi-line input decided by the lexer in
//! `lexer.rs`, highlighting, completion). With standard input not a terminal it reads a script
//! and prints results only. Nothing typed can end the session but `:quit` or end of input.

pub mod lexer;

use crate::diag::{Error, ErrorKind, Result};
use crate::ir::{self, Func, Program, Reduction};
use crate::runtime::{Array, Backend, Call, DType, Library, ParamValue};
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Read, Write};

/// The session's state.
pub struct Session {
    stdlib: Library,
    /// definitions typed or loaded, by the names they define, in order, with the directory
    /// their imports resolve in (for `:load`ed files)
    defs: Vec<(Vec<String>, String, Option<std::path::PathBuf>)>,
    user: Option<Library>,
    vars: BTreeMap<String, Array>,
    dtype: DType,
    backend: Backend,
    inputs_seen: usize,
    /// how many inputs ended in an error (a script's exit code says whether any did)
    pub errors: usize,
}

const HELP: &str = "\
Type a loss call, a definition, a binding or a command.
  focal_loss(labels = [1, 0], logits = [0.5, -0.5], gamma = 1.5)   per-element output
  ... reduction = mean, grad = logits, weights = w, dtype = f32      reduced value and gradient
  let y = [1, 0, 1]        let x = load(\"logits.npy\")      y        (bindings; a name prints it)
  loss my_loss(...) -> [...] { ... }   fn helper(a) = ...;          (defined at once; may span lines)
Commands:
  :help                 this text
  :list                 the losses you can call
  :show NAME            signature, parameters, doc and source
  :load FILE.loss       define the losses of a file
  :grad NAME INPUT      the derived gradient, as a loss
  :ir NAME              the typed IR
  :clif NAME            the generated Cranelift code (value kernel)
  :time CALL            median time per call
  :dtype f32|f64        precision of calls (now: {dtype})
  :backend jit|interp   evaluator (now: {backend})
  :quit                 leave (also Ctrl-D)";

impl Session {
    pub fn new() -> Result<Session> {
        Ok(Session {
            stdlib: Library::with_stdlib()?,
            defs: vec![],
            user: None,
            vars: BTreeMap::new(),
            dtype: DType::F64,
            backend: Backend::Jit,
            inputs_seen: 0,
            errors: 0,
        })
    }

    /// The library holding a loss, user definitions first.
    fn lib_of(&self, name: &str) -> Option<&Library> {
        if let Some(u) = &self.user {
            if u.losses().iter().any(|l| l.name == name) {
                return Some(u);
            }
        }
        self.stdlib
            .losses()
            .iter()
            .any(|l| l.name == name)
            .then_some(&self.stdlib)
    }

    fn loss(&self, name: &str) -> Result<(&Library, &Program)> {
        match self.lib_of(name) {
            Some(l) => Ok((l, l.loss(name)?)),
            None => Err(self
                .stdlib
                .loss(name)
                .err()
                .unwrap_or_else(|| Error::new(ErrorKind::Unknown, "unknown loss"))),
        }
    }

    /// Every name completion may offer.
    pub fn words(&self) -> Vec<String> {
        let mut w: Vec<String> = self
            .stdlib
            .losses()
            .iter()
            .map(|l| l.name.clone())
            .collect();
        if let Some(u) = &self.user {
            w.extend(u.losses().iter().map(|l| l.name.clone()));
        }
        w.extend(Func::ALL.iter().map(|(_, n)| n.to_string()));
        w.extend(
            ["sum", "mean", "real", "int", "stop_grad", "pow", "load"]
                .iter()
                .map(|s| s.to_string()),
        );
        w.extend(lexer::KEYWORDS.iter().map(|s| s.to_string()));
        w.extend(COMMANDS.iter().map(|s| s.to_string()));
        w.extend(self.vars.keys().cloned());
        w.sort();
        w.dedup();
        w
    }

    /// Argument names of a loss: its inputs and parameters, and the call options.
    pub fn arg_names(&self, loss: &str) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok((_, p)) = self.loss(loss) {
            out.extend(p.inputs.iter().map(|i| i.name.clone()));
            out.extend(p.params.iter().map(|x| x.name.clone()));
        }
        out.extend(
            ["reduction", "grad", "weights", "dtype"]
                .iter()
                .map(|s| s.to_string()),
        );
        out
    }

    pub fn is_known(&self, word: &str) -> bool {
        self.lib_of(word).is_some()
            || Func::from_name(word).is_some()
            || matches!(word, "sum" | "mean")
    }

    /// Handles one complete input; returns the text to print, or `None` to quit.
    pub fn handle(&mut self, input: &str) -> Option<String> {
        let text = input.trim();
        if text.is_empty()
            || text.starts_with("//") && !text.starts_with("///") && !text.contains('\n')
        {
            return Some(String::new());
        }
        let r = if let Some(cmd) = text.strip_prefix(':') {
            match self.command(cmd) {
                Ok(Some(s)) => Ok(s),
                Ok(None) => return None,
                Err(e) => Err(e),
            }
        } else if starts_definition(text) {
            self.define(text)
        } else if let Some(rest) = text.strip_prefix("let ") {
            self.bind(rest)
        } else {
            self.expression(text)
        };
        Some(match r {
            Ok(s) => s,
            Err(e) => {
                self.errors += 1;
                let msg = if e.pre_rendered {
                    e.message()
                } else {
                    format!("error: {e}")
                };
                format!("{}\n", msg.trim_end())
            }
        })
    }

    fn define(&mut self, text: &str) -> Result<String> {
        self.define_in(text, None)
    }

    fn define_in(&mut self, text: &str, dir: Option<std::path::PathBuf>) -> Result<String> {
        self.inputs_seen += 1;
        let name = format!("<input {}>", self.inputs_seen);
        // What does it define? Parse it alone first, for errors that point into it.
        let mut sources = crate::diag::Sources::new();
        let id = sources.add(name.clone(), text);
        let ast = crate::syntax::parse(id, text).map_err(|e| pre_render(e, &sources))?;
        let names: Vec<String> = ast
            .items
            .iter()
            .filter_map(|i| match i {
                crate::syntax::ast::Item::Loss(l) => Some(l.name.name.clone()),
                crate::syntax::ast::Item::Fn(f) => Some(f.name.name.clone()),
                crate::syntax::ast::Item::Import(_) => None,
            })
            .collect();
        // A redefinition replaces the old one.
        let mut defs: Vec<(Vec<String>, String, Option<std::path::PathBuf>)> = self
            .defs
            .iter()
            .filter(|(n, _, _)| !n.iter().any(|x| names.contains(x)))
            .cloned()
            .collect();
        defs.push((names.clone(), text.to_string(), dir));
        let sources: Vec<(String, String, Option<std::path::PathBuf>)> = defs
            .iter()
            .enumerate()
            .map(|(k, (_, t, d))| {
                let n = if k + 1 == defs.len() {
                    name.clone()
                } else {
                    format!("<definition {}>", k + 1)
                };
                (n, t.clone(), d.clone())
            })
            .collect();
        let lib = Library::from_sources(&sources)?;
        self.defs = defs;
        self.user = Some(lib);
        let losses: Vec<String> = names
            .iter()
            .filter(|n| self.user.as_ref().and_then(|u| u.loss(n).ok()).is_some())
            .cloned()
            .collect();
        let mut out = String::new();
        for n in &names {
            if losses.contains(n) {
                let sig = self
                    .user
                    .as_ref()
                    .and_then(|u| u.loss(n).ok())
                    .map(|p| p.signature())
                    .unwrap_or_default();
                out += &format!("defined {sig}\n");
            } else {
                out += &format!("defined fn {n}\n");
            }
        }
        Ok(out)
    }

    fn bind(&mut self, rest: &str) -> Result<String> {
        let (name, value) = rest
            .split_once('=')
            .ok_or_else(|| Error::new(ErrorKind::Syntax, "expected `let NAME = VALUE`"))?;
        let name = name.trim();
        if !is_ident(name) {
            return Err(Error::new(
                ErrorKind::Syntax,
                format!("`{name}` is not a name"),
            ));
        }
        let v = self.array_value(value.trim(), name)?;
        let out = format!("{name} {:?} = {}\n", v.shape, v.display());
        self.vars.insert(name.to_string(), v);
        Ok(out)
    }

    /// An array from a literal, a number, a bound name or `load("file.npy")`.
    fn array_value(&self, v: &str, what: &str) -> Result<Array> {
        if let Some(a) = self.vars.get(v) {
            return Ok(a.clone());
        }
        if let Some(inner) = v.strip_prefix("load(").and_then(|x| x.strip_suffix(')')) {
            let path = inner.trim().trim_matches('"');
            return Array::from_npy_file(std::path::Path::new(path), what);
        }
        if is_ident(v) {
            return Err(Error::new(
                ErrorKind::Unknown,
                format!("unknown name `{v}`; bind it with `let {v} = [...]`"),
            ));
        }
        Array::parse_literal(v, what)
    }

    fn expression(&mut self, text: &str) -> Result<String> {
        if is_ident(text) {
            return match self.vars.get(text) {
                Some(a) => Ok(format!("{text} {:?} = {}\n", a.shape, a.display())),
                None if self.lib_of(text).is_some() => {
                    Ok(crate::cli::show_text(self.loss(text)?.1))
                }
                None => Err(Error::new(
                    ErrorKind::Unknown,
                    format!("unknown name `{text}`"),
                )),
            };
        }
        let (name, call) = self.parse_call(text)?;
        let (lib, _) = self.loss(&name)?;
        // Run-time errors (a bad class id) point into the loss's source.
        let out = lib
            .call(&name, &call)
            .map_err(|e| pre_render(e, lib.sources()))?;
        let d = call.dtype;
        let mut s = format!(
            "{name} {:?} =\n{}\n",
            out.value.shape,
            out.value.display_as(d)
        );
        for (g, a) in &out.grads {
            s += &format!("d/d{g} {:?} =\n{}\n", a.shape, a.display_as(d));
        }
        Ok(s)
    }

    /// `name(k = v, ...)` -> a call.
    fn parse_call(&self, text: &str) -> Result<(String, Call)> {
        let bad = || {
            Error::new(
                ErrorKind::Syntax,
                format!(
                    "expected a call such as `focal_loss(labels = y, logits = x)`, got `{text}`"
                ),
            )
        };
        let open = text.find('(').ok_or_else(bad)?;
        let name = text[..open].trim();
        if !is_ident(name) || !text.ends_with(')') {
            return Err(bad());
        }
        let (_, p) = self.loss(name)?;
        let inner = &text[open + 1..text.len() - 1];
        let mut call = Call::new();
        call.dtype = self.dtype;
        call.backend = self.backend;
        for arg in split_top_level(inner) {
            let arg = arg.trim();
            if arg.is_empty() {
                continue;
            }
            let (k, v) = arg.split_once('=').ok_or_else(|| {
                Error::new(
                    ErrorKind::Syntax,
                    format!("`{arg}`: arguments are named, e.g. `logits = [0.5, -1]`"),
                )
            })?;
            let (k, v) = (k.trim(), v.trim());
            match k {
                "reduction" => {
                    call.reduction = Reduction::from_name(v).ok_or_else(|| {
                        Error::new(ErrorKind::Reduction, format!("unknown reduction `{v}`; use none, sum, mean, weighted_mean or sum_by_nonzero_weights"))
                    })?
                }
                "grad" => {
                    for g in v.trim_matches(|c| c == '[' || c == ']').split(',') {
                        call.grad.push(g.trim().to_string());
                    }
                }
                "dtype" => {
                    call.dtype = DType::parse(v)?
                }
                "weights" => call.weights = Some(self.array_value(v, "weights")?),
                _ if p.input(k).is_some() => call.inputs.push((k.to_string(), self.array_value(v, &format!("input `{k}`"))?)),
                _ => {
                    let value = match self.vars.get(v) {
                        Some(a) if a.shape.is_empty() => a.to_f64()[0].to_string(),
                        _ => v.to_string(),
                    };
                    call.params.push((k.to_string(), parse_param(k, &value)?));
                }
            }
        }
        Ok((name.to_string(), call))
    }

    fn command(&mut self, cmd: &str) -> Result<Option<String>> {
        let (name, arg) = match cmd.split_once(char::is_whitespace) {
            Some((n, a)) => (n, a.trim()),
            None => (cmd.trim(), ""),
        };
        let need = |what: &str| -> Result<()> {
            if arg.is_empty() {
                return Err(Error::new(
                    ErrorKind::Syntax,
                    format!("`:{name}` needs {what}"),
                ));
            }
            Ok(())
        };
        Ok(Some(match name {
            "quit" | "q" | "exit" => return Ok(None),
            "help" | "h" => {
                let b = self.backend.name();
                format!(
                    "{}\n",
                    HELP.replace("{dtype}", self.dtype.name())
                        .replace("{backend}", b)
                )
            }
            "list" => {
                let mut rows: Vec<(String, String)> = self
                    .stdlib
                    .losses()
                    .iter()
                    .map(|l| (l.name.clone(), l.summary().to_string()))
                    .collect();
                if let Some(u) = &self.user {
                    rows.extend(
                        u.losses()
                            .iter()
                            .map(|l| (l.name.clone(), format!("(yours) {}", l.summary()))),
                    );
                }
                rows.sort();
                let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
                rows.iter().map(|(n, s)| format!("{n:w$}  {s}\n")).collect()
            }
            "show" => {
                need("a loss name")?;
                crate::cli::show_text(self.loss(arg)?.1)
            }
            "load" => {
                need("a .loss file")?;
                let text = crate::syntax::read_source(std::path::Path::new(arg))?;
                let dir = std::path::Path::new(arg).parent().map(|p| p.to_path_buf());
                self.define_in(&text, dir)?
            }
            "grad" => {
                let mut it = arg.split_whitespace();
                let (Some(loss), Some(input)) = (it.next(), it.next()) else {
                    return Err(Error::new(
                        ErrorKind::Syntax,
                        "`:grad` needs a loss and an input: `:grad focal_loss logits`",
                    ));
                };
                let (lib, _) = self.loss(loss)?;
                crate::cli::grad_source(lib, loss, input, "none", false, None)?
            }
            "ir" => {
                need("a loss name")?;
                ir::print_program(self.loss(arg)?.1)
            }
            "clif" => {
                need("a loss name")?;
                // The value kernel (reduction none) in the session's precision.
                let (lib, p) = self.loss(arg)?;
                let name = p.name.clone();
                let opts = crate::runtime::Options::new()
                    .dtype(self.dtype)
                    .reduction(crate::runtime::Reduction::None);
                lib.compile(&name, opts)?.kernel()?.clif()
            }
            "time" => {
                need("a call")?;
                self.time(arg)?
            }
            "dtype" => match DType::from_name(arg) {
                Some(d) => {
                    self.dtype = d;
                    format!("dtype {}\n", d.name())
                }
                None => {
                    return Err(Error::new(
                        ErrorKind::Type,
                        format!("`:dtype` takes f32 or f64, not `{arg}`"),
                    ))
                }
            },
            "backend" => match arg {
                "interp" => {
                    self.backend = Backend::Interp;
                    "backend interp\n".to_string()
                }
                "jit" => {
                    self.backend = Backend::Jit;
                    "backend jit\n".to_string()
                }
                _ => {
                    return Err(Error::new(
                        ErrorKind::Unknown,
                        format!("unknown backend `{arg}`; use jit or interp"),
                    ))
                }
            },
            _ => {
                let hint = crate::diag::closest(name, COMMANDS.iter().map(|c| &c[1..]), 2)
                    .map(|c| format!("; did you mean `:{c}`?"))
                    .unwrap_or_default();
                return Err(Error::new(
                    ErrorKind::Unknown,
                    format!("unknown command `:{name}`{hint} (`:help` lists them)"),
                ));
            }
        }))
    }

    fn time(&self, text: &str) -> Result<String> {
        let (name, call) = self.parse_call(text)?;
        let (lib, _) = self.loss(&name)?;
        lib.call(&name, &call)?;
        let mut times = Vec::new();
        let start = std::time::Instant::now();
        while times.len() < 5 || (start.elapsed().as_secs_f64() < 0.3 && times.len() < 10_000) {
            let t = std::time::Instant::now();
            lib.call(&name, &call)?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let median = times[times.len() / 2];
        Ok(format!(
            "{name}: median {} per call over {} calls\n",
            fmt_seconds(median),
            times.len()
        ))
    }
}

const COMMANDS: &[&str] = &[
    ":help", ":list", ":show", ":load", ":grad", ":ir", ":clif", ":time", ":dtype", ":backend",
    ":quit",
];

fn fmt_seconds(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{s:.3} s")
    }
}

fn pre_render(e: Error, sources: &crate::diag::Sources) -> Error {
    if e.pre_rendered {
        return e;
    }
    let mut out = Error::new(e.kind, e.render(sources).trim_end().to_string());
    out.pre_rendered = true;
    out
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn starts_definition(text: &str) -> bool {
    let first = text
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '/')
        .next()
        .unwrap_or("");
    text.starts_with("///") || matches!(first, "loss" | "fn" | "import")
}

/// Splits at commas outside brackets.
fn split_top_level(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i64;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

fn parse_param(k: &str, v: &str) -> Result<ParamValue> {
    crate::cli::parse_param(k, v)
}

/// Whether the text so far is a complete input (its brackets balance).
pub fn complete_input(text: &str) -> bool {
    // Doc comments belong to the definition that follows them.
    let only_docs = text.lines().any(|l| l.trim_start().starts_with("///"))
        && text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with("///"));
    !only_docs && lexer::open_brackets(text) <= 0
}

/// Runs the REPL on standard input; returns the exit code.
pub fn main() -> i32 {
    let mut session = match Session::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if std::io::stdin().is_terminal() {
        interactive(session)
    } else {
        script(&mut session)
    }
}

/// Reads a script line by line; prints results only.
fn script(session: &mut Session) -> i32 {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut out = std::io::stdout().lock();
    let mut buf = String::new();
    let limit = crate::syntax::MAX_SOURCE_LEN;
    let mut bytes = Vec::new();
    for number in 1.. {
        // One line, at most the source limit long (`/dev/zero` piped in is an error, not an
        // out-of-memory abort); a line that is not UTF-8 is an error naming it, and the
        // script goes on.
        bytes.clear();
        match (&mut input)
            .take(limit as u64 + 1)
            .read_until(b'\n', &mut bytes)
        {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                let _ = writeln!(out, "error: cannot read line {number}: {e}");
                return 2;
            }
        }
        if bytes.len() > limit {
            let _ = writeln!(out, "error: line {number} is longer than {limit} bytes");
            return 2;
        }
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        let Ok(line) = std::str::from_utf8(&bytes) else {
            session.errors += 1;
            if writeln!(out, "error: line {number} is not UTF-8 text (skipped)").is_err() {
                return 2;
            }
            continue;
        };
        if buf.len() + line.len() > limit {
            let _ = writeln!(
                out,
                "error: an input longer than {limit} bytes (at line {number})"
            );
            return 2;
        }
        buf.push_str(line);
        buf.push('\n');
        if !complete_input(&buf) {
            continue;
        }
        let input = std::mem::take(&mut buf);
        match session.handle(&input) {
            Some(text) => {
                if out.write_all(text.as_bytes()).is_err() {
                    return 0;
                }
            }
            None => return if session.errors > 0 { 2 } else { 0 },
        }
    }
    if !buf.trim().is_empty() {
        let _ = writeln!(out, "error: the input ended inside an unclosed bracket");
        return 2;
    }
    // A script whose inputs failed says so, for pipelines.
    if session.errors > 0 {
        2
    } else {
        0
    }
}

mod editor;
use editor::interactive;
