//! `lossc bench`: random valid inputs of given sizes, compile time, and the median time of
//! one value+gradient call through the compiled kernel (caller-owned buffers, as a training
//! loop would call it).

use super::KernelArgs;
use crate::diag::{Error, ErrorKind, Result};
use crate::ir::{Extent, Program, Ty};
use crate::runtime::{time_it, DType, Library, Slice, View};
use std::collections::HashMap;
use std::time::Instant;

fn parse_dims(s: &str) -> Result<HashMap<String, usize>> {
    let mut m = HashMap::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            Error::new(
                ErrorKind::Data,
                format!("`{part}` in --dims is not NAME=SIZE"),
            )
        })?;
        let n: f64 = v
            .trim()
            .parse()
            .map_err(|_| Error::new(ErrorKind::Data, format!("`{v}` in --dims is not a size")))?;
        if n < 0.0 || n.fract() != 0.0 || n > 1e10 {
            return Err(Error::new(
                ErrorKind::Data,
                format!("`{v}` in --dims is not a size"),
            ));
        }
        m.insert(k.trim().to_string(), n as usize);
    }
    Ok(m)
}

/// The extent of every index an input binds: by name, `n` standing in for the first input's
/// first index, literal dimensions as declared.
fn extents(p: &Program, dims: &HashMap<String, usize>) -> Result<Vec<usize>> {
    let first = p.inputs.first().and_then(|i| i.dims.first()).copied();
    let mut out = vec![0usize; p.indices.len()];
    for inp in &p.inputs {
        for d in &inp.dims {
            let ix = &p.indices[d.ix()];
            out[d.ix()] = match ix.extent {
                Extent::Fixed(n) => n as usize,
                _ => match dims.get(&ix.name) {
                    Some(n) => *n,
                    None if Some(*d) == first && dims.contains_key("n") => dims["n"],
                    None => {
                        return Err(Error::new(
                            ErrorKind::Missing,
                            format!(
                                "no size for index `{}` of `{}`; give --dims {}=SIZE",
                                ix.name, p.name, ix.name
                            ),
                        ))
                    }
                },
            };
        }
    }
    Ok(out)
}

enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
}

/// Random valid data for one input, by what its name says it holds.
fn make_input(p: &Program, k: usize, ext: &[usize], rng: &mut fastrand::Rng, f32: bool) -> Data {
    let inp = &p.inputs[k];
    let shape: Vec<usize> = inp.dims.iter().map(|d| ext[d.ix()]).collect();
    let n: usize = shape.iter().product();
    let index_named = |name: &str| {
        p.indices
            .iter()
            .position(|i| i.name == name)
            .map(|i| ext[i])
    };
    if inp.ty == Ty::Int {
        let name = inp.name.as_str();
        let v: Vec<i64> = if name.contains("length") {
            // CTC: every label length s, every logit length t
            let dim = if name.contains("label") { "s" } else { "t" };
            vec![index_named(dim).unwrap_or(1) as i64; n]
        } else if let Some(k) = index_named("k") {
            // class ids that are not the blank (0)
            (0..n).map(|_| rng.i64(1..k.max(2) as i64)).collect()
        } else {
            let c = index_named("c").unwrap_or(2).max(1) as i64;
            (0..n).map(|_| rng.i64(0..c)).collect()
        };
        return Data::I64(v);
    }
    let name = inp.name.as_str();
    let v: Vec<f64> = if name.starts_with("boxes") && shape.last() == Some(&4) {
        (0..n / 4)
            .flat_map(|_| {
                let (x, y) = (rng.f64() * 10.0, rng.f64() * 10.0);
                let (w, h) = (0.5 + rng.f64() * 5.0, 0.5 + rng.f64() * 5.0);
                [x, y, x + w, y + h]
            })
            .collect()
    } else if name == "labels" && shape.len() >= 2 {
        // one-hot rows
        let c = *shape.last().unwrap_or(&1);
        let mut v = vec![0.0; n];
        for row in 0..n / c.max(1) {
            v[row * c + rng.usize(0..c.max(1))] = 1.0;
        }
        v
    } else if name == "labels" {
        (0..n).map(|_| rng.u8(0..2) as f64).collect()
    } else if name.contains("logit") || name.contains("pred") || name.contains("feature") {
        (0..n).map(|_| rng.f64() * 4.0 - 2.0).collect()
    } else {
        (0..n).map(|_| 0.05 + 0.9 * rng.f64()).collect()
    };
    if f32 {
        Data::F32(v.into_iter().map(|x| x as f32).collect())
    } else {
        Data::F64(v)
    }
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    lib: &Library,
    entry: &str,
    k: &KernelArgs,
    dims: &str,
    threads: usize,
    reps: usize,
    json: bool,
    bake: bool,
) -> Result<()> {
    if threads == 0 {
        return Err(Error::new(ErrorKind::Data, "--threads must be at least 1"));
    }
    let mut options = k.options()?.threads(threads);
    if !bake {
        // (compiled losses specialise parameters with constant defaults unless told not to)
        for q in &lib.loss(entry)?.params {
            options = options.vary(&q.name);
        }
    }
    let f32 = options.dtype == DType::F32;
    // A diagnostic: the CPU set to flush subnormal results and inputs to zero (FTZ, DAZ) for
    // this thread; the time saved is what subnormal products cost (a microcode assist each).
    #[cfg(target_arch = "x86_64")]
    if std::env::var_os("LOSSC_FTZ").is_some() {
        // SAFETY: only the MXCSR rounding-mode bits of this thread change.
        #[allow(deprecated)]
        unsafe {
            std::arch::x86_64::_mm_setcsr(std::arch::x86_64::_mm_getcsr() | 0x8040)
        };
    }
    let reduction = options.reduction;
    // Source text to machine code: parse and check the loss's file, then compile.
    let t0 = Instant::now();
    let p0 = lib.loss(entry)?;
    let fresh = Library::from_source(&format!("{}.loss", p0.name), &p0.source)
        .ok()
        .filter(|l| l.loss(entry).is_ok());
    let compiled = match &fresh {
        Some(l) => l.compile(entry, options.clone())?,
        None => lib.compile(entry, options.clone())?,
    };
    let compile_s = t0.elapsed().as_secs_f64();
    let p = compiled.program();
    let dims = parse_dims(dims)?;
    let ext = extents(p, &dims)?;
    // Refuse sizes whose inputs could not be allocated (a clear error, not an abort).
    for inp in &p.inputs {
        let n = inp
            .dims
            .iter()
            .try_fold(1usize, |a, d| a.checked_mul(ext[d.ix()]));
        if n.is_none_or(|n| n > crate::runtime::MAX_ELEMENTS) {
            return Err(Error::new(
                ErrorKind::Limit,
                format!(
                    "input `{}` would have more than {} elements; choose smaller --dims",
                    inp.name,
                    crate::runtime::MAX_ELEMENTS
                ),
            ));
        }
    }
    let mut rng = fastrand::Rng::with_seed(7);
    let datas: Vec<Data> = (0..p.inputs.len())
        .map(|i| make_input(p, i, &ext, &mut rng, f32))
        .collect();
    let shapes: Vec<Vec<usize>> = p
        .inputs
        .iter()
        .map(|i| i.dims.iter().map(|d| ext[d.ix()]).collect())
        .collect();
    let views: Vec<(&str, View)> = p
        .inputs
        .iter()
        .zip(&datas)
        .zip(&shapes)
        .map(|((i, d), s)| {
            let data = match d {
                Data::F32(v) => Slice::F32(v),
                Data::F64(v) => Slice::F64(v),
                Data::I64(v) => Slice::I64(v),
            };
            (i.name.as_str(), View::new(s, data))
        })
        .collect();
    let cells = compiled.value_len(&views, reduction)?;
    let grad_lens: Vec<usize> = options
        .grad
        .iter()
        .map(|g| {
            views
                .iter()
                .find(|(n, _)| n == g)
                .map(|(_, v)| v.shape.iter().product())
                .unwrap_or(0)
        })
        .collect();
    let times = if f32 {
        let mut value = vec![0f32; cells];
        let mut grads: Vec<Vec<f32>> = grad_lens.iter().map(|n| vec![0f32; *n]).collect();
        time_it(
            || {
                let mut gs: Vec<&mut [f32]> = grads.iter_mut().map(|g| g.as_mut_slice()).collect();
                compiled.call_into(&views, &[], reduction, None, &mut value, &mut gs)
            },
            3,
            reps.max(1),
        )?
    } else {
        let mut value = vec![0f64; cells];
        let mut grads: Vec<Vec<f64>> = grad_lens.iter().map(|n| vec![0f64; *n]).collect();
        time_it(
            || {
                let mut gs: Vec<&mut [f64]> = grads.iter_mut().map(|g| g.as_mut_slice()).collect();
                compiled.call_into(&views, &[], reduction, None, &mut value, &mut gs)
            },
            3,
            reps.max(1),
        )?
    };
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let sizes: serde_json::Map<String, serde_json::Value> = p
        .indices
        .iter()
        .enumerate()
        .filter(|(i, ix)| ext[*i] > 0 && !ix.name.starts_with('#'))
        .map(|(i, ix)| (ix.name.clone(), serde_json::json!(ext[i])))
        .collect();
    if json {
        let j = serde_json::json!({
            "loss": entry,
            "dims": sizes,
            "dtype": options.dtype.name(),
            "grad": options.grad,
            "reduction": reduction.name(),
            "threads": threads,
            "baked_params": bake,
            "reps": times.len(),
            "median_s": median,
            "min_s": sorted[0],
            "compile_s": compile_s,
        });
        println!("{j}");
    } else {
        println!(
            "{entry} {} {}: compile {:.3} ms, median {:.3} ms (min {:.3} ms) over {} calls",
            serde_json::Value::Object(sizes),
            options.dtype.name(),
            compile_s * 1e3,
            median * 1e3,
            sorted[0] * 1e3,
            times.len()
        );
    }
    Ok(())
}
