//! Reference cases (`../shared/CASES.md`): loading a case file, running it on a backend, and
//! comparing the result with the expected values, gradients or error.

use crate::diag::{Error, ErrorKind, Result};
use crate::ir::Reduction;
use crate::runtime::{fmt_real, Array, Backend, Call, DType, Library, Output, ParamValue};
use serde_json::{json, Map, Value as Json};
use std::path::{Path, PathBuf};

/// A case file, parsed as far as is needed to know what it expects.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub path: PathBuf,
    json: Json,
}

/// How a case ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// matched; the text notes anything not checked
    Pass(String),
    Fail(String),
}

/// The loss a case names (a standard-library name, or its file's entry).
pub fn loss_name(case: &Case) -> Result<String> {
    Ok(loss_library(case)?.1)
}

/// The library holding a case's loss (the standard library, or the file it names) and the
/// loss's name in it.
pub fn loss_library(case: &Case) -> Result<(Library, String)> {
    let stdlib = Library::with_stdlib()?;
    let mut own = None;
    let (lib, name) = case.library(&stdlib, &mut own)?;
    Ok((lib.clone(), name))
}

/// Longest case file read, in bytes.
pub const MAX_CASE_BYTES: u64 = 1 << 30;

/// Reads a case file. Malformed JSON is a `Data` error.
pub fn load(path: &Path) -> Result<Case> {
    use std::io::Read;
    let io = |e: std::io::Error| {
        Error::new(
            ErrorKind::Io,
            format!("cannot read `{}`: {e}", path.display()),
        )
    };
    // A JSON object first (checked on the first bytes: `/dev/zero` or a big binary file is
    // refused at once), then at most `MAX_CASE_BYTES`.
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    (&mut f).take(4096).read_to_end(&mut bytes).map_err(io)?;
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if bytes.len() == 4096 && first != Some(&b'{') {
        return Err(Error::new(
            ErrorKind::Data,
            format!("`{}` is not a case file (a JSON object)", path.display()),
        ));
    }
    f.take(MAX_CASE_BYTES).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > MAX_CASE_BYTES {
        return Err(Error::new(
            ErrorKind::Limit,
            format!(
                "`{}` is more than {MAX_CASE_BYTES} bytes, the limit for a case file",
                path.display()
            ),
        ));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::new(
            ErrorKind::Data,
            format!(
                "`{}` is not UTF-8 text (byte {})",
                path.display(),
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    parse(&text, path)
}

/// Parses a case from its JSON text.
pub fn parse(text: &str, path: &Path) -> Result<Case> {
    let json: Json = serde_json::from_str(text).map_err(|e| {
        Error::new(
            ErrorKind::Data,
            format!("`{}` is not valid JSON: {e}", path.display()),
        )
    })?;
    if !json.is_object() {
        return Err(Error::new(
            ErrorKind::Data,
            format!("`{}`: a case is a JSON object", path.display()),
        ));
    }
    let name = json
        .get("name")
        .and_then(Json::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    Ok(Case {
        name,
        path: path.to_path_buf(),
        json,
    })
}

/// Every `.json` file under the given files and directories, sorted within each directory.
pub fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut stack = vec![p.clone()];
            let mut found = Vec::new();
            while let Some(d) = stack.pop() {
                let rd = std::fs::read_dir(&d).map_err(|e| {
                    Error::new(ErrorKind::Io, format!("cannot read `{}`: {e}", d.display()))
                })?;
                for e in rd.flatten() {
                    let path = e.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if path.extension().map(|x| x == "json").unwrap_or(false) {
                        found.push(path);
                    }
                }
            }
            found.sort();
            out.extend(found);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(Error::new(
                ErrorKind::Io,
                format!("no such case file or directory: `{}`", p.display()),
            ));
        }
    }
    Ok(out)
}

fn field<'a>(j: &'a Json, key: &str) -> Option<&'a Json> {
    j.get(key).filter(|v| !v.is_null())
}

/// `{"shape": [...], "data": [...]}` -> Array.
pub fn array_from_json(j: &Json, what: &str) -> Result<Array> {
    let bad = |m: &str| Error::new(ErrorKind::Data, format!("{what}: {m}"));
    let obj = j
        .as_object()
        .ok_or_else(|| bad("expected {\"shape\": [...], \"data\": [...]}"))?;
    let shape_j = obj
        .get("shape")
        .and_then(Json::as_array)
        .ok_or_else(|| bad("missing \"shape\" list"))?;
    let mut shape = Vec::new();
    for d in shape_j {
        let d = d
            .as_u64()
            .ok_or_else(|| bad("a shape holds non-negative integers"))?;
        shape.push(usize::try_from(d).map_err(|_| bad("dimension too large"))?);
    }
    let data = obj.get("data").ok_or_else(|| bad("missing \"data\""))?;
    // Data may be flat or nested; flatten it.
    let flat = Array::from_nested_json(&flatten_json(data), what)?;
    let arr = Array {
        shape,
        data: flat.data,
    };
    arr.validate(what)?;
    Ok(arr)
}

fn flatten_json(j: &Json) -> Json {
    fn go(j: &Json, out: &mut Vec<Json>) {
        match j {
            Json::Array(v) => v.iter().for_each(|x| go(x, out)),
            other => out.push(other.clone()),
        }
    }
    let mut out = Vec::new();
    go(j, &mut out);
    Json::Array(out)
}

fn param_from_json(name: &str, j: &Json) -> Result<ParamValue> {
    Ok(match j {
        Json::Bool(b) => ParamValue::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => ParamValue::Int(i),
            None => ParamValue::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => match s.as_str() {
            "inf" => ParamValue::Real(f64::INFINITY),
            "-inf" => ParamValue::Real(f64::NEG_INFINITY),
            "nan" => ParamValue::Real(f64::NAN),
            _ => {
                return Err(Error::new(
                    ErrorKind::Data,
                    format!("parameter `{name}`: `{s}` is not a value"),
                ))
            }
        },
        _ => {
            return Err(Error::new(
                ErrorKind::Data,
                format!("parameter `{name}`: `{j}` is not a value"),
            ))
        }
    })
}

impl Case {
    /// The error substring this case expects, if it is an error case.
    pub fn expected_error(&self) -> Option<String> {
        field(&self.json, "expect")
            .and_then(|e| e.get("error"))
            .and_then(Json::as_str)
            .map(str::to_string)
    }

    /// The library holding the case's loss: the standard library, or the `.loss` file it names.
    fn library<'a>(
        &self,
        stdlib: &'a Library,
        own: &'a mut Option<Library>,
    ) -> Result<(&'a Library, String)> {
        let loss = field(&self.json, "loss")
            .and_then(Json::as_str)
            .ok_or_else(|| Error::new(ErrorKind::Data, "the case has no \"loss\""))?;
        if loss.ends_with(".loss") {
            let base = self.path.parent().unwrap_or(Path::new("."));
            let lib = Library::from_file(&base.join(loss))?;
            let entry = match field(&self.json, "entry").and_then(Json::as_str) {
                Some(e) => e.to_string(),
                None => match lib.losses() {
                    [one] => one.name.clone(),
                    _ => {
                        return Err(Error::new(
                            ErrorKind::Data,
                            format!("`{loss}` holds several losses; name one with \"entry\""),
                        ))
                    }
                },
            };
            Ok((&*own.insert(lib), entry))
        } else {
            Ok((stdlib, loss.to_string()))
        }
    }

    /// Builds the call the case describes.
    pub fn call(&self, backend: Backend) -> Result<Call> {
        let j = &self.json;
        let mut call = Call::new();
        call.backend = backend;
        if let Some(d) = field(j, "dtype") {
            call.dtype = match d.as_str() {
                Some(s) => DType::parse(s)?,
                None => DType::parse(&d.to_string())?,
            };
        }
        if let Some(inputs) = field(j, "inputs") {
            let obj = inputs
                .as_object()
                .ok_or_else(|| Error::new(ErrorKind::Data, "\"inputs\" is an object"))?;
            for (k, v) in obj {
                // (null: not given, as a null "weights" or "dtype" is)
                if v.is_null() {
                    continue;
                }
                call.inputs
                    .push((k.clone(), array_from_json(v, &format!("input `{k}`"))?));
            }
        }
        if let Some(params) = field(j, "params") {
            let obj = params
                .as_object()
                .ok_or_else(|| Error::new(ErrorKind::Data, "\"params\" is an object"))?;
            for (k, v) in obj {
                // (null: the default)
                if v.is_null() {
                    continue;
                }
                call.params.push((k.clone(), param_from_json(k, v)?));
            }
        }
        if let Some(r) = field(j, "reduction") {
            let s = r.as_str().unwrap_or("");
            call.reduction = Reduction::from_name(s).ok_or_else(|| {
                Error::new(
                    ErrorKind::Reduction,
                    format!("unknown reduction `{s}`; use none, sum, mean, weighted_mean or sum_by_nonzero_weights"),
                )
            })?;
        }
        if let Some(w) = field(j, "weights") {
            call.weights = Some(array_from_json(w, "weights")?);
        }
        if let Some(g) = field(j, "grad") {
            let list = g
                .as_array()
                .ok_or_else(|| Error::new(ErrorKind::Data, "\"grad\" is a list of input names"))?;
            for x in list {
                let s = x.as_str().ok_or_else(|| {
                    Error::new(ErrorKind::Data, "\"grad\" is a list of input names")
                })?;
                call.grad.push(s.to_string());
            }
        }
        Ok(call)
    }

    /// Runs the case and returns the result.
    pub fn run(&self, stdlib: &Library, backend: Backend) -> Result<Output> {
        let mut own = None;
        let (lib, entry) = self.library(stdlib, &mut own)?;
        // A parameter the loss does not have is unknown, whatever its value (which might not
        // even be a number).
        if let Some(params) = field(&self.json, "params").and_then(Json::as_object) {
            let p = lib.loss(&entry)?;
            for k in params.keys() {
                crate::runtime::check_names(p, &[], &[k.as_str()])?;
            }
        }
        let call = self.call(backend)?;
        lib.call(&entry, &call)
    }

    /// Runs the case and compares with what it expects.
    pub fn check(&self, stdlib: &Library, backend: Backend) -> Verdict {
        let result = self.run(stdlib, backend);
        if let Some(want) = self.expected_error() {
            return match result {
                Err(e) => {
                    let msg = e.to_string().replace('\n', " ");
                    if msg.to_lowercase().contains(&want.to_lowercase()) {
                        Verdict::Pass(String::new())
                    } else {
                        Verdict::Fail(format!("expected an error mentioning `{want}`, got: {msg}"))
                    }
                }
                Ok(_) => Verdict::Fail(format!(
                    "expected an error mentioning `{want}`, but the call succeeded"
                )),
            };
        }
        let out = match result {
            Ok(o) => o,
            Err(e) => return Verdict::Fail(format!("error: {}", e.to_string().replace('\n', " "))),
        };
        match self.compare(&out) {
            Ok(note) => Verdict::Pass(note),
            Err(m) => Verdict::Fail(m),
        }
    }

    fn compare(&self, out: &Output) -> std::result::Result<String, String> {
        let expect = field(&self.json, "expect").ok_or("the case has no \"expect\"")?;
        let rtol = expect.get("rtol").and_then(Json::as_f64).unwrap_or(1e-7);
        let atol = expect.get("atol").and_then(Json::as_f64).unwrap_or(0.0);
        if let Some(v) = field(expect, "value") {
            let want = array_from_json(v, "expect.value").map_err(|e| e.to_string())?;
            compare_arrays("value", &out.value, &want, rtol, atol)?;
        }
        let mut unchecked = Vec::new();
        if let Some(g) = field(expect, "grad").and_then(Json::as_object) {
            for (k, v) in g {
                let want =
                    array_from_json(v, &format!("expect.grad.{k}")).map_err(|e| e.to_string())?;
                match out.grads.iter().find(|(n, _)| n == k) {
                    Some((_, got)) => compare_arrays(&format!("grad {k}"), got, &want, rtol, atol)?,
                    None => unchecked.push(k.clone()),
                }
            }
        }
        Ok(if unchecked.is_empty() {
            String::new()
        } else {
            format!(
                "value only; gradient of {} not derived yet",
                unchecked.join(", ")
            )
        })
    }
}

fn compare_arrays(
    what: &str,
    got: &Array,
    want: &Array,
    rtol: f64,
    atol: f64,
) -> std::result::Result<(), String> {
    if got.shape != want.shape {
        return Err(format!(
            "{what}: shape {:?}, want {:?}",
            got.shape, want.shape
        ));
    }
    let (g, w) = (got.to_f64(), want.to_f64());
    for (k, (a, b)) in g.iter().zip(&w).enumerate() {
        let ok = if b.is_nan() {
            a.is_nan()
        } else if b.is_infinite() {
            a == b
        } else {
            (a - b).abs() <= atol + rtol * b.abs()
        };
        if !ok {
            return Err(format!(
                "{what}[{k}]: got {}, want {} (|diff| {:.3e} > atol {atol:e} + rtol {rtol:e}·|want|)",
                fmt_real(*a),
                fmt_real(*b),
                (a - b).abs()
            ));
        }
    }
    Ok(())
}

/// An output as the case format's JSON: `{"value": {...}, "grad": {...}}`.
pub fn output_json(out: &Output) -> Json {
    let arr = |a: &Array| {
        let data: Vec<Json> = a
            .to_f64()
            .into_iter()
            .map(|x| {
                if x.is_finite() {
                    json!(x)
                } else {
                    json!(fmt_real(x))
                }
            })
            .collect();
        json!({"shape": a.shape, "data": data})
    };
    let mut grads = Map::new();
    for (k, g) in &out.grads {
        grads.insert(k.clone(), arr(g));
    }
    json!({"value": arr(&out.value), "grad": grads})
}
