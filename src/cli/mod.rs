//! The `lossc` command line: list, show, check, parse, ir, run, eval.
//!
//! Exit codes: 0 success; 1 reference cases failed (`run --check`); 2 bad input of any kind
//! (a source error, a malformed case or array, an unknown name, a case `run` could not run:
//! every case runs and each error is reported), with a message, never a panic.

mod bench;

use crate::cases;
use crate::diag::{Error, ErrorKind, Result};
use crate::ir::{self, Reduction};
use crate::runtime::{Array, Backend, Call, DType, Library, ParamValue};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(
    name = "lossc",
    version,
    about = "A small language for loss functions, and its compiler"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the standard library's losses with their one-line docs
    List,
    /// Show a loss: signature, parameters with defaults, doc and source
    Show {
        /// a standard-library loss, or FILE.loss[:ENTRY]
        name: String,
    },
    /// Check .loss files and report every error with file, line and column
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a .loss file's parse tree
    Parse { file: PathBuf },
    /// Print a loss's typed IR
    Ir {
        /// a standard-library loss, or FILE.loss[:ENTRY]
        name: String,
        /// after the simplifier (constant folding, identities, stable rewrites)
        #[arg(long)]
        simplified: bool,
    },
    /// Print the derived gradient of a loss as a loss of its own, in the language's syntax
    Grad {
        /// a standard-library loss, or FILE.loss[:ENTRY]
        name: String,
        /// the input to differentiate
        #[arg(long)]
        wrt: String,
        /// the call's reduction, part of what is differentiated (none: the sum of the outputs)
        #[arg(long, default_value = "none")]
        reduction: String,
        /// the call has weights: the gradient takes a `weights` input of the output's shape
        #[arg(long)]
        weighted: bool,
    },
    /// An interactive session: try losses on numbers, define new ones, look at gradients
    Repl,
    /// Run reference cases (files or directories of .json)
    Run {
        /// compare with each case's expectation; print one line per case and a closing tally
        #[arg(long)]
        check: bool,
        /// evaluator: jit (native code) or interp (the reference interpreter)
        #[arg(long, default_value = "jit")]
        backend: String,
        #[arg(required = true)]
        cases: Vec<PathBuf>,
    },
    /// Print the Cranelift IR generated for a loss (value and gradients, one kernel)
    Clif {
        #[command(flatten)]
        k: KernelArgs,
    },
    /// Print the machine code generated for a loss
    Asm {
        #[command(flatten)]
        k: KernelArgs,
    },
    /// Time a loss's compiled value+gradient on random valid inputs; one JSON object with --json
    Bench {
        #[command(flatten)]
        k: KernelArgs,
        /// sizes by index name, e.g. n=1000000 or n=4096,c=1000 (`n` also names the first
        /// index of a loss whose indices are named otherwise)
        #[arg(long, default_value = "n=1000000")]
        dims: String,
        /// worker threads (separable losses run in fixed row blocks; same results for any count)
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// timed calls after warm-up
        #[arg(long, default_value_t = 20)]
        reps: usize,
        /// print one JSON object
        #[arg(long)]
        json: bool,
        /// keep parameters per call instead of baking their defaults into the code
        #[arg(long)]
        no_bake: bool,
    },
    /// Evaluate a loss on arrays (.npy files or literals such as [1,0,1])
    Eval {
        /// a standard-library loss, or FILE.loss[:ENTRY]
        name: String,
        #[command(flatten)]
        args: EvalArgs,
    },
}

/// Which kernel: a loss, the inputs to differentiate, the reduction and the precision.
#[derive(clap::Args, Debug)]
struct KernelArgs {
    /// a standard-library loss, or FILE.loss[:ENTRY]
    name: String,
    /// differentiate with respect to this input (repeatable)
    #[arg(long = "grad", short = 'g', value_name = "INPUT")]
    grad: Vec<String>,
    /// none, sum, mean, weighted_mean or sum_by_nonzero_weights
    #[arg(long, default_value = "mean")]
    reduction: String,
    #[arg(long, default_value = "f32")]
    dtype: String,
}

impl KernelArgs {
    fn options(&self) -> Result<crate::runtime::Options> {
        let dtype = DType::parse(&self.dtype)?;
        let reduction = Reduction::from_name(&self.reduction).ok_or_else(|| {
            Error::new(
                ErrorKind::Reduction,
                format!(
                    "unknown reduction `{}`; use none, sum, mean, weighted_mean or sum_by_nonzero_weights",
                    self.reduction
                ),
            )
        })?;
        let mut o = crate::runtime::Options::new()
            .dtype(dtype)
            .reduction(reduction);
        for g in &self.grad {
            o = o.grad(g);
        }
        Ok(o)
    }
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err((e, lib)) => {
            eprint!("{}", render(&e, lib.as_ref()));
            2
        }
    }
}

fn render(e: &Error, lib: Option<&Library>) -> String {
    match lib {
        Some(l) if !e.pre_rendered => e.render(l.sources()),
        _ => {
            if e.pre_rendered {
                format!("{}\n", e.message())
            } else {
                format!("error: {e}\n")
            }
        }
    }
}

type CliResult = std::result::Result<i32, (Error, Option<Library>)>;

fn plain<T>(r: Result<T>) -> std::result::Result<T, (Error, Option<Library>)> {
    r.map_err(|e| (e, None))
}

/// Resolves a loss name: a standard-library loss, or FILE.loss[:ENTRY].
fn resolve(name: &str) -> Result<(Library, String)> {
    let (file, entry) = match name.rsplit_once(':') {
        Some((f, e)) if f.ends_with(".loss") => (Some(f), Some(e.to_string())),
        _ if name.ends_with(".loss") => (Some(name), None),
        _ => (None, None),
    };
    match file {
        None => Ok((Library::with_stdlib()?, name.to_string())),
        Some(f) => {
            let lib = Library::from_file(Path::new(f))?;
            let entry = match entry {
                Some(e) => e,
                None => match lib.losses() {
                    [one] => one.name.clone(),
                    [] => {
                        return Err(Error::new(
                            ErrorKind::Unknown,
                            format!("`{f}` defines no loss"),
                        ))
                    }
                    many => {
                        let names: Vec<&str> = many.iter().map(|l| l.name.as_str()).collect();
                        return Err(Error::new(
                            ErrorKind::Unknown,
                            format!(
                                "`{f}` defines several losses ({}); write {f}:NAME",
                                names.join(", ")
                            ),
                        ));
                    }
                },
            };
            Ok((lib, entry))
        }
    }
}

fn backend(s: &str) -> Result<Backend> {
    Backend::from_name(s).ok_or_else(|| {
        Error::new(
            ErrorKind::Unknown,
            format!("unknown backend `{s}`; use jit or interp"),
        )
    })
}

fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Repl => Ok(crate::repl::main()),
        Command::List => {
            let lib = plain(Library::with_stdlib())?;
            let width = lib.losses().iter().map(|l| l.name.len()).max().unwrap_or(0);
            let mut losses: Vec<_> = lib.losses().iter().collect();
            losses.sort_by(|a, b| a.name.cmp(&b.name));
            for l in losses {
                println!("{:width$}  {}", l.name, l.summary());
            }
            Ok(0)
        }
        Command::Show { name } => {
            let (lib, entry) = plain(resolve(&name))?;
            let p = match lib.loss(&entry) {
                Ok(p) => p,
                Err(e) => return Err((e, Some(lib))),
            };
            print!("{}", show_text(p));
            Ok(0)
        }
        Command::Check { files } => {
            let mut bad = 0;
            for f in &files {
                match Library::from_file(f) {
                    Ok(lib) => {
                        let names: Vec<&str> =
                            lib.losses().iter().map(|l| l.name.as_str()).collect();
                        println!(
                            "{}: ok ({} loss{}: {})",
                            f.display(),
                            names.len(),
                            if names.len() == 1 { "" } else { "es" },
                            names.join(", ")
                        );
                    }
                    Err(e) => {
                        bad += 1;
                        eprint!("{}", render(&e, None));
                    }
                }
            }
            Ok(if bad > 0 { 2 } else { 0 })
        }
        Command::Parse { file } => {
            let text = plain(crate::syntax::read_source(&file))?;
            let mut sources = crate::diag::Sources::new();
            let id = sources.add(file.display().to_string(), text.clone());
            match crate::syntax::parse(id, &text) {
                Ok(ast) => {
                    print!("{ast}");
                    Ok(0)
                }
                Err(e) => {
                    eprint!("{}", e.render(&sources));
                    Ok(2)
                }
            }
        }
        Command::Ir { name, simplified } => {
            let (lib, entry) = plain(resolve(&name))?;
            match lib.loss(&entry) {
                Ok(p) => {
                    let p = if simplified {
                        crate::opt::simplify(p)
                    } else {
                        p.clone()
                    };
                    print!("{}", ir::print_program(&p));
                    Ok(0)
                }
                Err(e) => Err((e, Some(lib))),
            }
        }
        Command::Grad {
            name,
            wrt,
            reduction,
            weighted,
        } => {
            let (lib, entry) = plain(resolve(&name))?;
            match grad_source(&lib, &entry, &wrt, &reduction, weighted, None) {
                Ok(text) => {
                    print!("{text}");
                    Ok(0)
                }
                Err(e) => Err((e, Some(lib))),
            }
        }
        Command::Run {
            check,
            backend: b,
            cases: paths,
        } => {
            let b = plain(backend(&b))?;
            let lib = plain(Library::with_stdlib())?;
            let files = plain(cases::collect(&paths))?;
            let (mut passed, mut failed, mut value_only) = (0, 0, 0);
            // (without --check: every case runs; each error is reported on stderr)
            let mut errors = 0;
            for f in &files {
                let case = match cases::load(f) {
                    Ok(c) => c,
                    Err(e) => {
                        if check {
                            failed += 1;
                            println!("FAIL {}: {}", f.display(), e);
                        } else {
                            errors += 1;
                            eprint!("{}", render(&e, None));
                        }
                        continue;
                    }
                };
                if !check {
                    match case.run(&lib, b) {
                        Ok(out) => {
                            let mut j = cases::output_json(&out);
                            j["name"] = serde_json::json!(case.name);
                            println!("{j}");
                        }
                        Err(e) => {
                            errors += 1;
                            eprint!("{}", render(&e.context(&case.name), Some(&lib)));
                        }
                    }
                    continue;
                }
                match case.check(&lib, b) {
                    cases::Verdict::Pass(note) => {
                        passed += 1;
                        if note.is_empty() {
                            println!("PASS {}", case.name);
                        } else {
                            value_only += 1;
                            println!("PASS {} ({note})", case.name);
                        }
                    }
                    cases::Verdict::Fail(m) => {
                        failed += 1;
                        println!("FAIL {}: {m}", case.name);
                    }
                }
            }
            if check {
                if value_only > 0 {
                    println!("note: {value_only} case(s) passed on their values; their gradients were not checked");
                }
                println!("{passed} passed, {failed} failed");
                return Ok(if failed > 0 { 1 } else { 0 });
            }
            if errors > 0 {
                eprintln!("{errors} of {} case(s) failed to run", files.len());
            }
            Ok(if errors > 0 { 2 } else { 0 })
        }
        Command::Clif { k } => kernel_text(&k, false),
        Command::Asm { k } => kernel_text(&k, true),
        Command::Bench {
            k,
            dims,
            threads,
            reps,
            json,
            no_bake,
        } => {
            let (lib, entry) = plain(resolve(&k.name))?;
            match crate::cli::bench::run(&lib, &entry, &k, &dims, threads, reps, json, !no_bake) {
                Ok(()) => Ok(0),
                Err(e) => Err((e, Some(lib))),
            }
        }
        Command::Eval { name, args } => {
            let (lib, entry) = plain(resolve(&name))?;
            let r = eval(&lib, &entry, &args);
            match r {
                Ok(()) => Ok(0),
                Err(e) => Err((e, Some(lib))),
            }
        }
    }
}

/// What `lossc show` prints: signature, parameters with defaults, doc, source.
pub fn show_text(p: &crate::ir::Program) -> String {
    let mut out = format!("{}\n\n", p.signature());
    if !p.params.is_empty() {
        out += "parameters:\n";
        for prm in &p.params {
            out += &format!("  {}: {} = {}\n", prm.name, prm.ty, prm.default_src);
        }
        out += "\n";
    }
    if !p.doc.is_empty() {
        out += &format!("{}\n\n", p.doc);
    }
    out += &format!("source:\n{}\n", p.source.trim_end());
    out
}

/// The gradient of `entry` with respect to `wrt`, as loss-language source.
pub fn grad_source(
    lib: &Library,
    entry: &str,
    wrt: &str,
    reduction: &str,
    weighted: bool,
    specialise: Option<&[(String, crate::runtime::ParamValue)]>,
) -> Result<String> {
    // (specialised: the gradient of the program a call with these parameters runs, their
    // values and the constant defaults folded in; else the general one, parameters kept)
    let specialised;
    let p = match specialise {
        Some(params) => {
            specialised = crate::runtime::specialised(lib.loss(entry)?, params);
            &specialised
        }
        None => lib.loss(entry)?,
    };
    let r = Reduction::from_name(reduction).ok_or_else(|| {
        Error::new(
            ErrorKind::Reduction,
            format!("unknown reduction `{reduction}`"),
        )
    })?;
    crate::runtime::validate_grad(p, &[wrt.to_string()])?;
    let input = p
        .input(wrt)
        .ok_or_else(|| Error::new(ErrorKind::Unknown, format!("unknown input `{wrt}`")))?;
    let q = crate::opt::simplify(&ir::with_reduction(p, r, weighted));
    let g = crate::opt::simplify(&crate::grad::differentiate(&q, &[input])?);
    let target = g.grads[0].1;
    let doc = format!(
        "The gradient of `{entry}` (reduction {}) with respect to `{wrt}`, derived by lossc.",
        r.name()
    );
    Ok(ir::to_source(
        &g,
        &format!("{entry}_grad_{wrt}"),
        Some(target),
        &doc,
    ))
}

/// Reads NAME=VALUE.
fn split_kv<'a>(s: &'a str, what: &str) -> Result<(&'a str, &'a str)> {
    s.split_once('=')
        .map(|(k, v)| (k.trim(), v.trim()))
        .ok_or_else(|| Error::new(ErrorKind::Data, format!("{what} `{s}` is not NAME=VALUE")))
}

/// An array from `FILE.npy` or a literal.
fn read_array(v: &str, what: &str) -> Result<Array> {
    if v.starts_with('[') || v.parse::<f64>().is_ok() || matches!(v, "inf" | "-inf" | "nan") {
        return Array::parse_literal(v, what);
    }
    Array::from_npy_file(std::path::Path::new(v), what)
}

/// A parameter value from text: true/false, an int, a real, inf/-inf/nan.
pub fn parse_param(k: &str, v: &str) -> Result<ParamValue> {
    Ok(match v {
        "true" => ParamValue::Bool(true),
        "false" => ParamValue::Bool(false),
        "inf" => ParamValue::Real(f64::INFINITY),
        "-inf" => ParamValue::Real(f64::NEG_INFINITY),
        "nan" => ParamValue::Real(f64::NAN),
        _ => match v.parse::<i64>() {
            Ok(i) => ParamValue::Int(i),
            Err(_) => ParamValue::Real(v.parse::<f64>().map_err(|_| {
                Error::new(
                    ErrorKind::Type,
                    format!("parameter `{k}`: `{v}` is not a number or a bool"),
                )
            })?),
        },
    })
}

#[derive(clap::Args, Debug)]
struct EvalArgs {
    /// NAME=FILE.npy or NAME=[1,2,3]
    #[arg(long = "input", short = 'i', value_name = "NAME=ARRAY")]
    inputs: Vec<String>,
    /// K=V, e.g. gamma=1.5, normalize=false
    #[arg(long = "param", short = 'p', value_name = "K=V")]
    params: Vec<String>,
    /// none, sum, mean, weighted_mean or sum_by_nonzero_weights
    #[arg(long, default_value = "none")]
    reduction: String,
    /// FILE.npy or a literal, broadcast to the output's shape
    #[arg(long)]
    weights: Option<String>,
    #[arg(long, default_value = "f64")]
    dtype: String,
    /// evaluator: jit (native code) or interp (the reference interpreter)
    #[arg(long, default_value = "jit")]
    backend: String,
    /// differentiate with respect to this input (repeatable); prints the gradient
    #[arg(long = "grad", short = 'g', value_name = "INPUT")]
    grad: Vec<String>,
    /// write value.npy (and INPUT_grad.npy for each --grad) here
    #[arg(long)]
    out: Option<PathBuf>,
}

fn kernel_text(k: &KernelArgs, asm: bool) -> CliResult {
    let (lib, entry) = plain(resolve(&k.name))?;
    let r = k
        .options()
        .and_then(|o| lib.compile(&entry, o))
        .and_then(|c| c.kernel());
    match r {
        Ok(kernel) => {
            let text = if asm { kernel.asm() } else { Ok(kernel.clif()) };
            match text {
                Ok(t) => {
                    print!("{t}");
                    Ok(0)
                }
                Err(e) => Err((e, Some(lib))),
            }
        }
        Err(e) => Err((e, Some(lib))),
    }
}

fn write_npy(dir: &Path, file: &str, a: &Array, dtype: DType) -> Result<()> {
    let path = dir.join(file);
    let bytes = a.to_npy(dtype)?;
    std::fs::write(&path, bytes).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot write `{}`: {e}", path.display()),
        )
    })?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn eval(lib: &Library, entry: &str, a: &EvalArgs) -> Result<()> {
    let mut call = Call::new();
    call.backend = backend(&a.backend)?;
    call.dtype = DType::parse(&a.dtype)?;
    call.reduction = Reduction::from_name(&a.reduction).ok_or_else(|| {
        Error::new(
            ErrorKind::Reduction,
            format!(
                "unknown reduction `{}`; use none, sum, mean, weighted_mean or sum_by_nonzero_weights",
                a.reduction
            ),
        )
    })?;
    for i in &a.inputs {
        let (k, v) = split_kv(i, "--input")?;
        call.inputs
            .push((k.to_string(), read_array(v, &format!("input `{k}`"))?));
    }
    for p in &a.params {
        let (k, v) = split_kv(p, "--param")?;
        call.params.push((k.to_string(), parse_param(k, v)?));
    }
    if let Some(w) = &a.weights {
        call.weights = Some(read_array(w, "weights")?);
    }
    call.grad = a.grad.clone();
    let result = lib.call(entry, &call)?;
    println!("{} {:?} =", entry, result.value.shape);
    println!("{}", result.value.display_as(call.dtype));
    for (name, g) in &result.grads {
        println!("d/d{name} {:?} =", g.shape);
        println!("{}", g.display_as(call.dtype));
    }
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("cannot create `{}`: {e}", dir.display()),
            )
        })?;
        write_npy(dir, "value.npy", &result.value, call.dtype)?;
        for (name, g) in &result.grads {
            write_npy(dir, &format!("{name}_grad.npy"), g, call.dtype)?;
        }
    }
    Ok(())
}
