//! The round trip of printed gradients: `lossc grad` prints a loss's gradient as a loss of its
//! own (`cli::grad_source`, the path the command takes); that source must parse, check and
//! evaluate (interpreter) to the numbers the interpreter gives for the original program's
//! gradient. Shared by `tests/grad.rs` (stdlib and hand-written losses) and usable on
//! generated programs: it takes a source text and a call.
#![allow(dead_code)]

use lossc::runtime::{Array, Backend, Call, DType, Data, Library, Reduction};

/// Round-trips every gradient of `src`'s last loss for `call`: the inputs named in
/// `call.grad`, or every real input when it names none. `Ok(n)`: `n` gradients compared (a
/// target whose original call fails, a range error say, is skipped: the printed gradient
/// need not evaluate what fails). `Err`: what went wrong, the printed source included.
pub fn round_trip(src: &str, call: &Call) -> Result<usize, String> {
    let lib = Library::from_source("roundtrip.loss", src)
        .map_err(|e| format!("the source does not check: {}\n{src}", e.message()))?;
    let name = lib
        .losses()
        .last()
        .ok_or_else(|| "no loss in the source".to_string())?
        .name
        .clone();
    round_trip_loss(&lib, &name, call)
}

/// [`round_trip`] for loss `name` of `lib`.
pub fn round_trip_loss(lib: &Library, name: &str, call: &Call) -> Result<usize, String> {
    let p = lib.loss(name).map_err(|e| e.message())?;
    let targets: Vec<String> = if call.grad.is_empty() {
        p.inputs
            .iter()
            .filter(|i| i.ty == lossc::ir::Ty::Real)
            .map(|i| i.name.clone())
            .collect()
    } else {
        call.grad.clone()
    };
    let mut failures = Vec::new();
    let mut compared = 0;
    for wrt in &targets {
        match one(lib, name, call, wrt) {
            Ok(true) => compared += 1,
            Ok(false) => {}
            Err(e) => failures.push(format!("{name} d/d{wrt}: {e}")),
        }
    }
    if failures.is_empty() {
        Ok(compared)
    } else {
        Err(failures.join("\n"))
    }
}

/// One target: `Ok(false)` when the original call fails (nothing to compare).
fn one(lib: &Library, name: &str, call: &Call, wrt: &str) -> Result<bool, String> {
    let mut c = call.clone();
    c.grad = vec![wrt.to_string()];
    c.backend = Backend::Interp;
    let Ok(out) = lib.call(name, &c) else {
        return Ok(false);
    };
    let want = out
        .grads
        .iter()
        .find(|(n, _)| n == wrt)
        .ok_or("no gradient returned")?
        .1
        .to_f64();
    // The printed program takes the weights as an input of the output's shape.
    let weights = match &call.weights {
        None => None,
        Some(w) => {
            let shape = output_shape(lib, name, &c)?;
            Some(broadcast(w, &shape).ok_or("weights do not broadcast")?)
        }
    };
    let src = lossc::cli::grad_source(
        lib,
        name,
        wrt,
        call.reduction.name(),
        weights.is_some(),
        Some(&call.params),
    )
    .map_err(|e| format!("not printed: {}", e.message()))?;
    let printed = Library::from_source("grad.loss", &src)
        .map_err(|e| format!("printed source does not check: {}\n{src}", e.message()))?;
    let entry = printed.losses()[0].name.clone();
    let p = lib.loss(name).map_err(|e| e.message())?;
    let mut g = Call::new();
    g.dtype = call.dtype;
    g.backend = Backend::Interp;
    g.params = call.params.clone();
    for inp in &printed.losses()[0].inputs {
        if p.inputs.iter().any(|i| i.name == inp.name) {
            let (_, a) = call
                .inputs
                .iter()
                .find(|(n, _)| *n == inp.name)
                .ok_or_else(|| format!("no input `{}` in the call", inp.name))?;
            g.inputs.push((inp.name.clone(), a.clone()));
        } else {
            // (the one input the printer adds: the weights)
            let w = weights
                .clone()
                .ok_or_else(|| format!("printed input `{}` is not the loss's\n{src}", inp.name))?;
            g.inputs.push((inp.name.clone(), w));
        }
    }
    let got = printed
        .call(&entry, &g)
        .map_err(|e| format!("printed gradient fails: {}\n{src}", e.message()))?
        .value
        .to_f64();
    if got.len() != want.len() {
        return Err(format!(
            "printed gradient has {} elements, the gradient {}\n{src}",
            got.len(),
            want.len()
        ));
    }
    let tol = match call.dtype {
        DType::F64 => 1e-9,
        DType::F32 => 1e-4,
    };
    for (k, (a, b)) in got.iter().zip(&want).enumerate() {
        let same = a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol * (1.0 + b.abs());
        if !same {
            return Err(format!(
                "[{k}]: printed gives {a:e}, the derived gradient {b:e}\n{src}"
            ));
        }
    }
    Ok(true)
}

/// The shape of loss `name`'s unreduced output for `call`: the unweighted call's, or, when
/// that call fails (a zero weight makes the weighted call skip the body, so the unweighted
/// one may fail where the weighted one does not), each output index's extent read off an
/// input it indexes.
fn output_shape(lib: &Library, name: &str, call: &Call) -> Result<Vec<usize>, String> {
    let mut plain = call.clone();
    plain.grad.clear();
    plain.weights = None;
    plain.reduction = Reduction::None;
    let err = match lib.call(name, &plain) {
        Ok(out) => return Ok(out.value.shape),
        Err(e) => e.message(),
    };
    let p = lib.loss(name).map_err(|e| e.message())?;
    p.output
        .indices
        .iter()
        .map(|ix| {
            p.inputs.iter().find_map(|inp| {
                let d = inp.dims.iter().position(|x| x == ix)?;
                let (_, a) = call.inputs.iter().find(|(n, _)| *n == inp.name)?;
                (a.shape.len() == inp.dims.len()).then(|| a.shape[d])
            })
        })
        .collect::<Option<Vec<usize>>>()
        .ok_or(err)
}

/// `w` broadcast (NumPy rules) to `shape`.
fn broadcast(w: &Array, shape: &[usize]) -> Option<Array> {
    let Data::Real(v) = &w.data else {
        return None;
    };
    if w.shape.len() > shape.len() {
        return None;
    }
    let lead = shape.len() - w.shape.len();
    for (k, d) in w.shape.iter().enumerate() {
        if *d != 1 && *d != shape[lead + k] {
            return None;
        }
    }
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n);
    for flat in 0..n {
        // the cell's coordinates, last fastest, mapped to w's (size-1 dimensions repeat)
        let (mut rest, mut off, mut stride) = (flat, 0, 1);
        for k in (0..shape.len()).rev() {
            let x = rest % shape[k];
            rest /= shape[k];
            if k >= lead {
                let d = w.shape[k - lead];
                off += if d == 1 { 0 } else { x * stride };
                stride *= d;
            }
        }
        out.push(v[off]);
    }
    Some(Array::real(shape.to_vec(), out))
}
