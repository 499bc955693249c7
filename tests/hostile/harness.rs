//! What the fuzz targets in `fuzz/` do with one input, shared with `tests/hostile.rs` (which
//! replays the kept crashers through the same code). Each function returns `Err` with a
//! description when lossc misbehaves in a way that is not a panic (the backends disagree, a
//! round trip changes values); a panic or an abort is a finding by itself.
#![allow(dead_code)]

use lossc::diag::Sources;
use lossc::runtime::{Array, Backend, Call, DType, Data, Library, Options, Reduction};
use std::path::Path;
use std::sync::OnceLock;

/// The largest dimension a case or `.npy` input may have for the harness to run it: a tiny
/// file can claim a `[0, 10^9]` shape whose index spaces are legal but take minutes to fill.
/// (lossc's own limits, `MAX_ELEMENTS` and `MAX_TABLE`, are tested in `tests/hostile.rs`.)
pub const HARNESS_MAX_DIM: usize = 1 << 12;

pub fn stdlib() -> &'static Library {
    static LIB: OnceLock<Library> = OnceLock::new();
    LIB.get_or_init(|| Library::with_stdlib().expect("the standard library checks"))
}

/// Source text -> parse, check; for what checks, every loss's gradient source (parsed and
/// checked again) and compiled kernel.
pub fn front_end(text: &str) {
    let mut sources = Sources::new();
    let id = sources.add("fuzz.loss", text);
    let file = match lossc::syntax::parse(id, sources.text(id)) {
        Ok(f) => f,
        Err(e) => {
            let _ = e.render(&sources);
            return;
        }
    };
    if let Err(e) = lossc::check::check(&[&file], &sources) {
        let _ = e.render(&sources);
        return;
    }
    let Ok(lib) = Library::from_source("fuzz.loss", text) else {
        return;
    };
    for p in lib.losses() {
        let _ = lossc::ir::print_program(p);
        let reals: Vec<String> = p
            .inputs
            .iter()
            .filter(|i| i.ty == lossc::ir::Ty::Real)
            .map(|i| i.name.clone())
            .collect();
        let red = if p.output.indices.is_empty() {
            Reduction::Sum
        } else {
            Reduction::Mean
        };
        let mut opts = Options::new().dtype(DType::F64).reduction(red);
        for r in &reals {
            opts = opts.grad(r);
        }
        if let Ok(c) = lib.compile(&p.name, opts) {
            let _ = c.kernel();
        }
        if let Some(r) = reals.first() {
            // The printed gradient is source again: it parses and checks, or fails cleanly.
            if let Ok(text) = lossc::cli::grad_source(&lib, &p.name, r, red.name(), false, None) {
                let _ = Library::from_source("grad.loss", &text);
            }
        }
    }
}

/// Relative agreement of finite values; a non-finite value only agrees with a non-finite one.
/// (NaN against ±inf is tolerated: the backends may reach an overflowed intermediate in a
/// different order, e.g. `-inf / inf` against `-inf`; see docs/RELIABILITY.md.)
pub fn close(a: f64, b: f64, rtol: f64) -> bool {
    if !a.is_finite() || !b.is_finite() {
        return !a.is_finite() && !b.is_finite();
    }
    (a - b).abs() <= rtol * (1e-6 + a.abs().max(b.abs()))
}

/// Runs a call on the interpreter and the JIT: both succeed with values within `rtol` (when
/// `rtol` is given), or both fail with the same kind of error. In f32, a cell that cancels to
/// near zero may also differ by 4 f32 ulps of its array's largest finite magnitude (the JIT
/// computes in f32 where the interpreter rounds f64 results).
pub fn compare_backends(
    lib: &Library,
    entry: &str,
    call: &Call,
    rtol: Option<f64>,
) -> Result<(), String> {
    let mut ci = call.clone();
    ci.backend = Backend::Interp;
    let mut cj = call.clone();
    cj.backend = Backend::Jit;
    match (lib.call(entry, &ci), lib.call(entry, &cj)) {
        (Ok(a), Ok(b)) => {
            if a.value.shape != b.value.shape {
                return Err(format!("shapes {:?} vs {:?}", a.value.shape, b.value.shape));
            }
            let Some(rtol) = rtol else {
                return Ok(());
            };
            let xs: Vec<Vec<f64>> = std::iter::once(&a.value)
                .chain(a.grads.iter().map(|g| &g.1))
                .map(|x| x.to_f64())
                .collect();
            let ys: Vec<Vec<f64>> = std::iter::once(&b.value)
                .chain(b.grads.iter().map(|g| &g.1))
                .map(|x| x.to_f64())
                .collect();
            // In f32 a cell that sums terms in another order may differ by a few roundings of
            // its terms, however small the sum: a gradient's `1/3 + 1/3 + 1/3 - (1/3 + 1/3 +
            // 1/3)` is 0 or 2^-24. The terms are adjoints the whole call shares (the value and
            // every gradient come from them), so the floor is relative to the largest output
            // of the call, not only of the cell's own array.
            let scale = xs
                .iter()
                .chain(&ys)
                .flatten()
                .filter(|v| v.is_finite())
                .fold(0.0f64, |m, v| m.max(v.abs()));
            let floor = if call.dtype == DType::F32 {
                4.0 * f32::EPSILON as f64 * scale
            } else {
                0.0
            };
            let mut k = 0;
            for (x, y) in xs.into_iter().zip(ys) {
                for (u, v) in x.into_iter().zip(y) {
                    // (NaN differences are never within the floor)
                    let within_floor = (u - v).abs() <= floor;
                    if !close(u, v, rtol) && !within_floor {
                        return Err(format!("cell {k}: interp {u} jit {v}"));
                    }
                    k += 1;
                }
            }
            Ok(())
        }
        (Err(a), Err(b)) if a.kind == b.kind => Ok(()),
        (Err(a), Err(b)) => Err(format!("errors differ:\n{}\n{}", a.message(), b.message())),
        (Ok(_), Err(b)) => Err(format!("only the jit fails: {}", b.message())),
        (Err(a), Ok(_)) => Err(format!("only the interpreter fails: {}", a.message())),
    }
}

fn too_big(a: &Array) -> bool {
    a.shape.iter().any(|d| *d > HARNESS_MAX_DIM)
}

/// Reference-case JSON -> load, build the call, run it on both backends (the standard
/// library's losses; a case naming a `.loss` file gets an Io error: the directory does not
/// exist, so nothing is read from disk).
pub fn case_json(text: &str) -> Result<(), String> {
    let Ok(case) = lossc::cases::parse(text, Path::new("/nonexistent/fuzz.json")) else {
        return Ok(());
    };
    let _ = case.expected_error();
    let Ok(call) = case.call(Backend::Interp) else {
        return Ok(());
    };
    if call.inputs.iter().any(|(_, a)| too_big(a)) || call.weights.as_ref().is_some_and(too_big) {
        return Ok(());
    }
    let (a, b) = (
        case.run(stdlib(), Backend::Interp),
        case.run(stdlib(), Backend::Jit),
    );
    let _ = case.check(stdlib(), Backend::Interp);
    match (a, b) {
        (Ok(a), Ok(b)) if a.value.shape == b.value.shape => {
            let _ = lossc::cases::output_json(&a);
            Ok(())
        }
        (Ok(a), Ok(b)) => Err(format!("shapes {:?} vs {:?}", a.value.shape, b.value.shape)),
        (Err(x), Err(y)) if x.kind == y.kind => Ok(()),
        (Err(x), Err(y)) => Err(format!("errors differ:\n{}\n{}", x.message(), y.message())),
        (Ok(_), Err(y)) => Err(format!("only the jit fails: {}", y.message())),
        (Err(x), Ok(_)) => Err(format!("only the interpreter fails: {}", x.message())),
    }
}

fn own_lib() -> &'static Library {
    static LIB: OnceLock<Library> = OnceLock::new();
    LIB.get_or_init(|| {
        Library::from_source(
            "npy.loss",
            "loss g(x[i]) -> [i] { if x[i] > 0.0 { log(x[i]) } else { x[i] * 2.0 } }",
        )
        .expect("checks")
    })
}

/// `.npy` bytes -> read, print, write back and read again; then run a loss on the array
/// (as reals, and when it holds ints, as class ids into 3 classes) on both backends.
pub fn npy(data: &[u8]) -> Result<(), String> {
    let Ok(a) = Array::from_npy(data, "input `x`") else {
        return Ok(());
    };
    a.validate("x")
        .map_err(|e| format!("from_npy gave an inconsistent array: {}", e.message()))?;
    let _ = a.display();
    let _ = a.display_as(DType::F32);
    let bytes = a.to_npy(DType::F64).map_err(|e| e.message())?;
    let b = Array::from_npy(&bytes, "again")
        .map_err(|e| format!("cannot read back: {}", e.message()))?;
    let same = a.shape == b.shape
        && a.to_f64()
            .iter()
            .zip(b.to_f64())
            .all(|(x, y)| *x == y || (x.is_nan() && y.is_nan()));
    if !same {
        return Err("the round trip through .npy changed the array".into());
    }
    if too_big(&a) || a.len() > HARNESS_MAX_DIM {
        return Ok(());
    }
    let x = Array::real(a.shape.clone(), a.to_f64());
    compare_backends(
        own_lib(),
        "g",
        &Call::new().backend(Backend::Interp).input("x", x).grad("x"),
        Some(1e-9),
    )?;
    if let Data::Int(labels) = &a.data {
        let n = labels.len();
        let call = Call::new()
            .backend(Backend::Interp)
            .input("labels", Array::int(vec![n], labels.clone()))
            .input("logits", Array::real(vec![n, 3], vec![0.5; n * 3]))
            .grad("logits");
        compare_backends(stdlib(), "sparse_softmax_cross_entropy", &call, Some(1e-9))?;
    }
    Ok(())
}
