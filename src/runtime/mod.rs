//! The host side: loading losses (the embedded standard library, source text, files with their
//! imports), binding a call's arrays and parameters to a loss (shapes, extents, folding of
//! leading dimensions, parameter values, weights), and running it.
//!
//! This is the API Rust programs use; the CLI and the reference-case runner are built on it.

mod array;
mod bind;
mod compiled;
pub mod native;

pub use crate::ir::Reduction;
pub use array::{fmt_real, fmt_real32, Array, DType, Data, MAX_ELEMENTS};
pub(crate) use bind::check_names;
pub use bind::{validate_grad, Call, Output, ParamValue};
pub use compiled::{specialised, time_it, CompiledLoss, Options, Real, Slice, View};

use crate::diag::{Error, ErrorKind, Result, Sources};
use crate::ir::{Module, Program};
use crate::syntax::ast;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

include!(concat!(env!("OUT_DIR"), "/stdlib.rs"));

/// Which evaluator runs a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The reference interpreter.
    Interp,
    /// Native code from the Cranelift JIT.
    Jit,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Interp => "interp",
            Backend::Jit => "jit",
        }
    }
    pub fn from_name(s: &str) -> Option<Backend> {
        match s {
            "interp" => Some(Backend::Interp),
            "jit" => Some(Backend::Jit),
            _ => None,
        }
    }
}

/// A set of checked losses and the sources they came from.
#[derive(Clone, Debug)]
pub struct Library {
    sources: Sources,
    module: Module,
    /// the compiled losses [`Library::call`] runs on the JIT, by loss, precision and
    /// gradient inputs (parameters, reductions and weights are variants inside each); clones
    /// of a library share them
    compiled: Arc<Mutex<HashMap<CompiledKey, Arc<CompiledLoss>>>>,
}

/// A loss's name, its precision (f32?) and the inputs it differentiates.
type CompiledKey = (String, bool, Vec<String>);

/// Compiled losses a library keeps for [`Library::call`] (then they are compiled again).
const MAX_CALL_COMPILED: usize = 64;

/// The most files one compilation unit may import, directly or not.
const MAX_IMPORTS: usize = 256;

enum Origin {
    Stdlib,
    Dir(PathBuf),
}

impl Library {
    /// The standard library (see STDLIB.md), embedded in the binary.
    ///
    /// With the environment variable `LOSSC_STDLIB_DIR` set, the files are read from that
    /// directory instead (for working on the standard library without rebuilding).
    pub fn with_stdlib() -> Result<Library> {
        // Every file is a root; their imports of each other resolve to the same names.
        let roots: Vec<(String, String, Option<PathBuf>)> = stdlib_files()?
            .into_iter()
            .map(|(name, text)| (format!("stdlib/{name}"), text, None))
            .collect();
        Library::from_sources(&roots)
    }

    /// Losses from source text. `import "x.loss"` resolves against the standard library's files.
    pub fn from_source(name: &str, text: &str) -> Result<Library> {
        Library::from_sources(&[(name.to_string(), text.to_string(), None)])
    }

    /// Losses from several named sources that see each other's definitions (the REPL's
    /// session). Each source's imports resolve in its directory (when it has one), then
    /// against the standard library; diagnostics point into each source by its own name.
    pub fn from_sources(roots: &[(String, String, Option<PathBuf>)]) -> Result<Library> {
        let mut sources = Sources::new();
        let mut files: Vec<ast::File> = Vec::new();
        // A file's key: its canonical path where it has one (so that `a.loss` named on the
        // command line and `import "a.loss"` from beside it are one file), else its name.
        let root_key = |name: &str, dir: &Option<PathBuf>| match dir {
            Some(_) => Path::new(name)
                .canonicalize()
                .map(|c| c.display().to_string())
                .unwrap_or_else(|_| name.to_string()),
            None => name.to_string(),
        };
        let mut seen: Vec<String> = roots.iter().map(|r| root_key(&r.0, &r.2)).collect();
        // Every file parsed so far: its key, how to name it in a cycle, and who imported it.
        let mut nodes: Vec<(String, String, Option<usize>)> = Vec::new();
        let mut queue: std::collections::VecDeque<Pending> = roots
            .iter()
            .zip(&seen)
            .map(|((n, t, d), key)| Pending {
                key: key.clone(),
                label: Path::new(n)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_else(|| n.clone()),
                name: n.clone(),
                text: t.clone(),
                origin: match d {
                    Some(d) => Origin::Dir(d.clone()),
                    None => Origin::Stdlib,
                },
                parent: None,
            })
            .collect();
        // Parse every file once, breadth first; parse errors render against the sources so far.
        while let Some(f) = queue.pop_front() {
            let me = nodes.len();
            nodes.push((f.key, f.label, f.parent));
            let id = sources.add(f.name, f.text);
            let file = crate::syntax::parse(id, sources.text(id))
                .map_err(|e| e.rendered_with(&sources))?;
            for item in &file.items {
                let ast::Item::Import(imp) = item else {
                    continue;
                };
                let at = |e: Error, sources: &Sources| {
                    Error::from_diag(
                        e.kind,
                        crate::diag::Diagnostic::new(e.message())
                            .primary(imp.span, "imported here"),
                    )
                    .rendered_with(sources)
                };
                let (key, next) =
                    resolve_import(&imp.path, &f.origin).map_err(|e| at(e, &sources))?;
                if seen.contains(&key) {
                    // Seen before: a file imported twice (fine), or one of the files importing
                    // this one (a cycle, whose definitions would meet themselves).
                    let mut chain = vec![imp.path.clone()];
                    let mut k = Some(me);
                    while let Some(n) = k {
                        chain.push(nodes[n].1.clone());
                        if nodes[n].0 == key {
                            chain.reverse();
                            let msg = format!("import cycle: {}", chain.join(" -> "));
                            return Err(at(Error::new(ErrorKind::Check, msg), &sources));
                        }
                        k = nodes[n].2;
                    }
                    continue;
                }
                if seen.len() >= MAX_IMPORTS {
                    return Err(Error::new(
                        ErrorKind::Limit,
                        format!("more than {MAX_IMPORTS} imported files"),
                    ));
                }
                seen.push(key.clone());
                queue.push_back(Pending {
                    name: key.clone(),
                    key,
                    label: imp.path.clone(),
                    text: next.0,
                    origin: next.1,
                    parent: Some(me),
                });
            }
            files.push(file);
        }
        let refs: Vec<&ast::File> = files.iter().collect();
        let module = crate::check::check(&refs, &sources).map_err(|e| e.rendered_with(&sources))?;
        Ok(Library {
            sources,
            module,
            compiled: Arc::default(),
        })
    }

    /// Losses from a file. Imports resolve relative to the file, then against the standard library.
    pub fn from_file(path: &Path) -> Result<Library> {
        let text = crate::syntax::read_source(path)?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Library::from_sources(&[(path.display().to_string(), text, Some(dir))])
    }

    /// The sources diagnostics point into (for [`Error::render`]).
    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    /// Every loss, in file order.
    pub fn losses(&self) -> &[Program] {
        &self.module.losses
    }

    /// One loss by name, or an `unknown loss` error with a suggestion.
    pub fn loss(&self, name: &str) -> Result<&Program> {
        self.module.get(name).ok_or_else(|| {
            let mut e = Error::new(ErrorKind::Unknown, format!("unknown loss `{name}`"));
            let names = self.module.losses.iter().map(|l| l.name.as_str());
            if let Some(n) = crate::diag::closest(name, names, 3) {
                e = e.with_note(format!("did you mean `{n}`?"));
            }
            e.with_note("`lossc list` shows the standard library")
        })
    }

    /// Compiles a loss (value and the gradients `options` asks for) to a native kernel.
    pub fn compile(&self, name: &str, options: Options) -> Result<CompiledLoss> {
        CompiledLoss::new(self.loss(name)?, options)
    }

    /// Evaluates a loss on a call's arrays. On the JIT the loss is compiled once per
    /// precision and gradient inputs and kept (see [`CompiledLoss`]: parameter values,
    /// reductions and weights get variants of their own), so a repeated call runs the same
    /// kernel as [`CompiledLoss::call_into`]; its arrays are converted to the precision on
    /// each call.
    pub fn call(&self, name: &str, call: &Call) -> Result<Output> {
        let p = self.loss(name)?;
        if call.backend == Backend::Interp {
            return bind::evaluate(p, call);
        }
        // (the checks that need no compiling first, so errors come in the interpreter's order)
        bind::precheck(p, call)?;
        let key: CompiledKey = (
            name.to_string(),
            call.dtype == DType::F32,
            call.grad.clone(),
        );
        let cached = self.compiled.lock().ok().and_then(|m| m.get(&key).cloned());
        let c = match cached {
            Some(c) => c,
            None => {
                let options = Options {
                    dtype: call.dtype,
                    grad: call.grad.clone(),
                    reduction: call.reduction,
                    weighted: call.weights.is_some(),
                    ..Options::default()
                };
                let c = Arc::new(CompiledLoss::new(p, options)?);
                if let Ok(mut m) = self.compiled.lock() {
                    if m.len() >= MAX_CALL_COMPILED {
                        m.clear();
                    }
                    m.insert(key, c.clone());
                }
                c
            }
        };
        bind::evaluate_compiled(p, &c, call)
    }
}

/// The standard library's files: embedded, or read from `$LOSSC_STDLIB_DIR` when it is set.
fn stdlib_files() -> Result<Vec<(String, String)>> {
    let Ok(dir) = std::env::var("LOSSC_STDLIB_DIR") else {
        return Ok(STDLIB_FILES
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect());
    };
    let rd = std::fs::read_dir(&dir)
        .map_err(|e| Error::new(ErrorKind::Io, format!("LOSSC_STDLIB_DIR `{dir}`: {e}")))?;
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".loss") {
            let text = crate::syntax::read_source(&e.path())?;
            out.push((name, text));
        }
    }
    out.sort();
    Ok(out)
}

/// A file waiting to be parsed (see [`Library::from_sources`]).
struct Pending {
    name: String,
    key: String,
    label: String,
    text: String,
    origin: Origin,
    parent: Option<usize>,
}

/// Finds an imported file: a `.loss` file under the importing file's folder (a relative path
/// without `..`, and no symbolic link out of the folder), then in the standard library.
/// Anything else is refused before it is read, so no other file's contents reach a message.
fn resolve_import(path: &str, origin: &Origin) -> Result<(String, (String, Origin))> {
    use std::path::Component;
    let refused = |why: &str| {
        Error::new(
            ErrorKind::Io,
            format!(
                "cannot import `{path}`: {why}; an import names a `.loss` file under the importing file's folder or in the standard library"
            ),
        )
    };
    if !path.ends_with(".loss") {
        return Err(refused("not a `.loss` file"));
    }
    let rel = Path::new(path);
    if !rel
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(refused("not a relative path inside the folder"));
    }
    if let Origin::Dir(dir) = origin {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir.as_path()
        };
        let candidate = dir.join(rel);
        if candidate.is_file() {
            let io = |e: std::io::Error| {
                Error::new(
                    ErrorKind::Io,
                    format!("cannot read `{}`: {e}", candidate.display()),
                )
            };
            let canon = candidate.canonicalize().map_err(io)?;
            let canon_dir = dir.canonicalize().map_err(io)?;
            if !canon.starts_with(&canon_dir) {
                return Err(refused("it links outside the folder"));
            }
            let text = crate::syntax::read_source(&canon)?;
            let next_dir = canon.parent().map(Path::to_path_buf).unwrap_or_default();
            return Ok((canon.display().to_string(), (text, Origin::Dir(next_dir))));
        }
    }
    let base = path.rsplit('/').next().unwrap_or(path);
    if let Some((n, text)) = stdlib_files()?.iter().find(|(n, _)| *n == base) {
        return Ok((format!("stdlib/{n}"), (text.to_string(), Origin::Stdlib)));
    }
    Err(Error::new(
        ErrorKind::Unknown,
        format!("cannot find the imported file `{path}` (unknown file)"),
    ))
}

impl Error {
    /// Pre-renders diagnostics (with their source excerpts) into the messages, for errors that
    /// outlive the sources they point into.
    fn rendered_with(self, sources: &Sources) -> Error {
        if self.pre_rendered {
            return self;
        }
        let text = self.render(sources);
        let mut e = Error::new(self.kind, text.trim_end().to_string());
        e.pre_rendered = true;
        e
    }
}
