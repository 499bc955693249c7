//! The JIT held against the interpreter: every reference case (values and gradients, f32 and
//! f64, also at randomly perturbed points), generated programs, errors from the compiled
//! path, the host API (`compile`, `call`, `call_into`), and the printed code.

use lossc::cases;
use lossc::runtime::{
    Array, Backend, Call, DType, Data, Library, Options, ParamValue, Reduction, View,
};
use std::path::PathBuf;

#[path = "gen/mod.rs"]
mod gen;
#[path = "hostile/harness.rs"]
mod harness;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn case_files() -> Vec<PathBuf> {
    cases::collect(&[PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/cases"
    ))])
    .unwrap()
}

/// Relative agreement, NaN = NaN and inf = inf of the same sign.
fn close(a: f64, b: f64, rtol: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= rtol * (1e-6 + a.abs().max(b.abs()))
}

fn compare(
    name: &str,
    lib: &Library,
    entry: &str,
    call: &Call,
    rtol: f64,
    failures: &mut Vec<String>,
) {
    let mut ci = call.clone();
    ci.backend = Backend::Interp;
    let mut cj = call.clone();
    cj.backend = Backend::Jit;
    let (a, b) = (lib.call(entry, &ci), lib.call(entry, &cj));
    match (a, b) {
        (Ok(a), Ok(b)) => {
            let pairs = std::iter::once((&a.value, &b.value, "value".to_string())).chain(
                a.grads
                    .iter()
                    .zip(&b.grads)
                    .map(|((n, x), (_, y))| (x, y, format!("grad {n}"))),
            );
            for (x, y, what) in pairs {
                if x.shape != y.shape {
                    failures.push(format!(
                        "{name}: {what} shapes {:?} vs {:?}",
                        x.shape, y.shape
                    ));
                    continue;
                }
                // In f32 (rtol above 1e-9), a cell that cancels to near zero (softmax - y) may
                // differ by a few f32 ulps of the terms that cancelled: allow 4 ulps of the
                // array's largest finite magnitude, and at least 1e-8 (the reference cases'
                // f32 tolerance is 1e-6).
                let (xs, ys) = (x.to_f64(), y.to_f64());
                let scale = xs
                    .iter()
                    .chain(&ys)
                    .filter(|v| v.is_finite())
                    .fold(0.0f64, |m, v| m.max(v.abs()));
                let floor = if rtol > 1e-9 {
                    (4.0 * f32::EPSILON as f64 * scale).max(1e-8)
                } else {
                    0.0
                };
                for (k, (u, v)) in xs.iter().zip(ys).enumerate() {
                    // (NaN differences are never within the floor)
                    let within_floor = (u - v).abs() <= floor;
                    if !close(*u, v, rtol) && !within_floor {
                        failures.push(format!("{name}: {what}[{k}] interp {u} jit {v}"));
                        break;
                    }
                }
            }
        }
        (Err(a), Err(b)) => {
            if a.kind != b.kind {
                failures.push(format!(
                    "{name}: errors differ: {} / {}",
                    a.message(),
                    b.message()
                ));
            }
        }
        (Ok(_), Err(b)) => failures.push(format!("{name}: only the jit fails: {}", b.message())),
        (Err(a), Ok(_)) => failures.push(format!(
            "{name}: only the interpreter fails: {}",
            a.message()
        )),
    }
}

#[test]
fn jit_matches_the_interpreter_on_every_case_in_f32_and_f64() {
    let mut failures = Vec::new();
    let mut rng = Rng(0x2545f4914f6cdd1d);
    let mut n = 0;
    for f in case_files() {
        let case = cases::load(&f).unwrap();
        let (lib, entry) = cases::loss_library(&case).unwrap();
        let Ok(call) = case.call(Backend::Jit) else {
            continue;
        };
        for dtype in [DType::F64, DType::F32] {
            let mut c = call.clone();
            c.dtype = dtype;
            // f64 kernels call the same libm as the interpreter; f32 kernels compute in f32
            // where the interpreter rounds f64 results, so they differ by a few ulps.
            let rtol = if dtype == DType::F64 { 1e-12 } else { 2e-4 };
            compare(&case.name, &lib, &entry, &c, rtol, &mut failures);
            n += 1;
        }
        // A perturbed point (real inputs only; labels and boxes keep their structure mostly).
        if case.expected_error().is_none() {
            let mut c = call.clone();
            for (_, a) in c.inputs.iter_mut() {
                if let Data::Real(v) = &mut a.data {
                    for x in v.iter_mut() {
                        *x *= 1.0 + 0.01 * (rng.next() - 0.5);
                    }
                }
            }
            let rtol = if c.dtype == DType::F64 { 1e-12 } else { 2e-4 };
            compare(
                &format!("{} (perturbed)", case.name),
                &lib,
                &entry,
                &c,
                rtol,
                &mut failures,
            );
            n += 1;
        }
    }
    assert!(n > 600, "only {n} comparisons");
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn generated_programs_agree() {
    // Small programs exercising selects, lazy &&, int arithmetic, gathers, recurrences,
    // reductions hoisted out of loops and carried by fused passes.
    let sources = [
        "loss g(x[i], y[i]) -> [] { mean(i: if x[i] > y[i] && y[i] != 0.0 { x[i] / y[i] } else { x[i] * y[i] }) }",
        "loss g(x[i], y[i]) -> [i] { let yy[j: I] = y[j]; x[i] - logsumexp(j: yy[j]) + max(j: x[j]) }",
        "loss g(x[i], y[i]) -> [] { let yy[j: I] = y[j]; sum(i: x[i] * sum(j: yy[j] * x[j])) }",
        "loss g(x[i], y[i]) -> [i] { let c[t: I] pad (0.0) = c[t - 1] + x[t]; c[i] * y[i] }",
        "loss g(x[i], y[i]) -> [i] { let k = (i * 7 + 3) % I; x[k] ^ 2 + abs(y[i]) ^ 1.5 + sign(x[i]) }",
        "loss g(x[i], y[i]) -> [] { logsumexp(i: x[i]) - mean(i: y[i] * log_sigmoid(x[i])) + sum(i: softplus(y[i])) }",
        "loss g(x[i], y[i]) -> [i] { clamp(x[i], -0.5, 0.5) + min(x[i], y[i], 0.1) + xlogy(abs(x[i]), abs(y[i])) }",
        "loss g(x[i], y[i]) -> [i] { tanh(x[i]) + sin(y[i]) * cos(x[i]) + atan(x[i] * y[i]) + acos(clamp(y[i], -1.0, 1.0)) + expm1(x[i]) + log1p(abs(y[i])) }",
    ];
    let mut failures = Vec::new();
    let mut rng = Rng(7);
    for src in sources {
        let lib = Library::from_source("g.loss", src)
            .unwrap_or_else(|e| panic!("{src}: {}", e.message()));
        for n in [1usize, 2, 5, 17] {
            let x: Vec<f64> = (0..n).map(|_| rng.next() * 4.0 - 2.0).collect();
            let y: Vec<f64> = (0..n).map(|_| rng.next() * 4.0 - 2.0).collect();
            for (r, dtype) in [
                (Reduction::None, DType::F64),
                (Reduction::Mean, DType::F64),
                (Reduction::Sum, DType::F32),
            ] {
                if r == Reduction::None && lib.losses()[0].output.indices.is_empty() {
                    continue;
                }
                let mut call = Call::new()
                    .backend(Backend::Interp)
                    .input("x", Array::real(vec![n], x.clone()))
                    .input("y", Array::real(vec![n], y.clone()))
                    .reduction(r)
                    .dtype(dtype)
                    .grad("x")
                    .grad("y");
                call.backend = Backend::Jit;
                let rtol = if dtype == DType::F64 { 1e-12 } else { 2e-4 };
                compare(
                    &format!("{src} n={n} {r:?} {dtype:?}"),
                    &lib,
                    "g",
                    &call,
                    rtol,
                    &mut failures,
                );
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A bool table read across its rows (reduced over an index that is not its last, or read
/// transposed) in a vector loop: its cells were loaded as reals, 4 or 8 bytes apart, from a
/// table of bytes (found by `generated_programs_from_seeds_agree`; issue 24, defect 1).
#[test]
fn bool_tables_read_across_their_rows() {
    let srcs = [
        "loss g(x[p, c]) -> [c] { let big[p, c] = x[p, c] > 0.3; sum(p: if big[p, c] { 1.0 } else { 0.0 }) }",
        "loss g(x[p, c]) -> [p] { let big[c, p] = x[p, c] > 0.3; sum(c: if big[c, p] { x[p, c] } else { 0.0 }) }",
        "loss g(x[p, c]) -> [p, c] { let big[c, p] = x[p, c] > 0.3; if big[c, p] { x[p, c] } else { -x[p, c] } }",
        "loss g(x[p, c]) -> [c] { let big[p, c] = x[p, c] > 0.3; let t[p, c] = if big[p, c] { x[p, c] } else { 0.5 }; mean(p: t[p, c] * t[p, c]) }",
    ];
    let mut failures = Vec::new();
    let mut rng = Rng(11);
    for src in srcs {
        let lib = Library::from_source("g.loss", src).unwrap();
        for (np, nc) in [(3, 2), (5, 4), (9, 8), (8, 9)] {
            let x: Vec<f64> = (0..np * nc).map(|_| rng.next()).collect();
            for dtype in [DType::F64, DType::F32] {
                let call = Call::new()
                    .input("x", Array::real(vec![np, nc], x.clone()))
                    .dtype(dtype)
                    .grad("x");
                let name = format!("{src} {np}x{nc} {dtype:?}");
                compare(&name, &lib, "g", &call, 1e-6, &mut failures);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A bool table defined after a logsumexp table that the optimizer splits twice (its
/// exponentials for the gradient, then its maximum and log-sum for the differences): the
/// second renumbering renamed a stale read of the first, so the bool table's reads became a
/// node typed real, and Cranelift panicked on the JIT's float splat of a byte (issue 24,
/// defect 2; found by `generated_programs_from_seeds_agree`).
#[test]
fn bool_table_after_a_split_logsumexp() {
    let src = "loss g(target[n]: int, logits[n, c]) -> [] {
        let lse[n] = logsumexp(c: logits[n, c]);
        let keep[n] = target[n] != -100;
        let row[n] = if keep[n] { lse[n] - sum(c: logits[n, c]) } else { 0.0 };
        sum(n: row[n])
    }";
    let lib = Library::from_source("g.loss", src).unwrap();
    let mut failures = Vec::new();
    let mut rng = Rng(5);
    for (n, c) in [(2, 3), (5, 8)] {
        let logits: Vec<f64> = (0..n * c).map(|_| rng.next() * 4.0 - 2.0).collect();
        let target: Vec<i64> = (0..n as i64)
            .map(|k| if k % 2 == 1 { -100 } else { k })
            .collect();
        for dtype in [DType::F64, DType::F32] {
            let call = Call::new()
                .input("target", Array::int(vec![n], target.clone()))
                .input("logits", Array::real(vec![n, c], logits.clone()))
                .dtype(dtype)
                .grad("logits");
            let rtol = if dtype == DType::F64 { 1e-12 } else { 2e-4 };
            compare(
                &format!("{n}x{c} {dtype:?}"),
                &lib,
                "g",
                &call,
                rtol,
                &mut failures,
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A vector loop's scatter into a row outside its table (`m_grad[i - 1, j]` at `i = 0`,
/// its guards false: zero weights skip the body) takes nothing, as the scalar code and the
/// interpreter do; it was a range error only the JIT raised (found by
/// `generated_programs_from_seeds_agree`, seed 5458 before the fix).
#[test]
fn vector_scatter_rows_outside_the_table_take_nothing() {
    let src = "loss g(x[i], m[i, j]) -> [i, j] {
        let r[i] pad 1.0 = r[i - 1] + x[i];
        r[i] + m[i - 1, j]
    }";
    let lib = Library::from_source("g.loss", src).unwrap();
    let mut failures = Vec::new();
    for (n, nj) in [(1, 2), (3, 8)] {
        for dtype in [DType::F64, DType::F32] {
            for w in [0.0, 1.0] {
                let call = Call::new()
                    .input("x", Array::real(vec![n], vec![0.5; n]))
                    .input("m", Array::real(vec![n, nj], vec![0.25; n * nj]))
                    .reduction(Reduction::WeightedMean)
                    .weights(Array::scalar(w))
                    .dtype(dtype)
                    .grad("x")
                    .grad("m");
                let name = format!("{n}x{nj} {dtype:?} weight {w}");
                compare(&name, &lib, "g", &call, 1e-6, &mut failures);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `&&` and `||` evaluate left to right and stop at the first part that decides (LANGUAGE.md),
/// so a part before the deciding one is evaluated and its range error raised, on both
/// backends: the JIT's vector chains skipped it when a later part was known true on the
/// whole loop (`... || !(0.0 > 0.3)`) or was a uniform part tested first (found by
/// `generated_programs_from_seeds_agree`, seeds 2090 and 4907 before the fix).
#[test]
fn a_chain_raises_the_errors_of_parts_before_the_deciding_one() {
    let bodies = [
        "if m[i - 1, j] > 0.3 || !(0.0 > 0.3) { 1.0 } else { 2.0 }",
        "if isnan(y[i] - m[i - 1, j]) || -0.75 != 0.25 { x[i] } else { m[i, j] }",
        "if !(m[i - 1, j] > 0.3 && 0.0 > 0.3) { 1.0 } else { m[i, j] }",
        "if m[i - 1, j] > 0.3 || sum(k: z[k] * z[k]) > -100.0 { 1.0 } else { m[i, j] }",
        "if m[i - 1, j] > 0.3 && sum(k: z[k] * z[k]) < -100.0 { 1.0 } else { m[i, j] }",
        "if m[i, j] > 9.0 || m[i - 1, j] > 0.3 || y[i] > -9.0 { 1.0 } else { m[i, j] }",
    ];
    let mut failures = Vec::new();
    for body in bodies {
        let src = format!(
            "loss g(x[i], y[i], m[i, j], z[k]) -> [i, j] {{ let t[i, j] = {body}; t[i, j] * m[i, j] }}"
        );
        let lib = Library::from_source("g.loss", &src).unwrap();
        for (n, nj) in [(1, 2), (2, 8), (3, 17)] {
            for dtype in [DType::F64, DType::F32] {
                let call = Call::new()
                    .input("x", Array::real(vec![n], vec![0.5; n]))
                    .input("y", Array::real(vec![n], vec![0.25; n]))
                    .input("m", Array::real(vec![n, nj], vec![0.125; n * nj]))
                    .input("z", Array::real(vec![3], vec![0.5; 3]))
                    .dtype(dtype);
                let name = format!("{body} {n}x{nj} {dtype:?}");
                let mut ci = call.clone();
                ci.backend = Backend::Interp;
                if lib.call("g", &ci).is_ok() {
                    failures.push(format!("{name}: the interpreter raises nothing"));
                }
                compare(&name, &lib, "g", &call, 1e-6, &mut failures);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A read of a recurrence's pad from a later stage (`r[i - 1]` at `i = 0`, in a loop over `j`
/// that the vector code runs) passes no gradient into the pad: its adjoint's one cell per row,
/// `r_grad[i - 1]`, is outside the table and takes nothing, as in the scalar code. The JIT
/// raised a range error there (an unmapped `fault Fault{..}`) whenever the adjoint was
/// nonzero (found by `generated_programs_from_seeds_agree`, seed 2655 before the fix).
#[test]
fn a_pad_read_across_a_vector_loop_takes_no_gradient() {
    let src = "loss g(y[i], m[i, j]) -> [i, j] {
        let r[i] pad 0.0 = r[i - 1] - y[i];
        r[i - 1] + r[i] * m[i, j]
    }";
    let lib = Library::from_source("g.loss", src).unwrap();
    let mut failures = Vec::new();
    for (n, nj) in [(1, 3), (4, 3), (3, 8), (2, 17)] {
        for dtype in [DType::F64, DType::F32] {
            for red in [Reduction::Mean, Reduction::Sum] {
                let call = Call::new()
                    .input("y", Array::real(vec![n], vec![-1.5; n]))
                    .input("m", Array::real(vec![n, nj], vec![0.75; n * nj]))
                    .reduction(red)
                    .dtype(dtype)
                    .grad("y")
                    .grad("m");
                let name = format!("{n}x{nj} {dtype:?} {red:?}");
                compare(&name, &lib, "g", &call, 1e-6, &mut failures);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// In f32 a gradient that sums terms of size 1/3 to exactly 0 may come out as 2^-24 on one
/// backend and 0 on the other (the order of the additions differs): rounding noise, which
/// `compare_backends` allows relative to the largest output of the call (here `d/dm`'s 1.0),
/// where it allowed only the cell's own array's (all 0) before (found by
/// `generated_programs_from_seeds_agree`, seed 3199).
#[test]
fn f32_cancellation_to_zero_is_within_the_comparison_floor() {
    let src = "loss g(x[i], y[i], m[i, j]) -> [j] {
        let t1[i] = mean(j: m[i, j]);
        let k2[j] = (J - 1 + 2) % J;
        let t3 = logsumexp(i: (x[i] - (y[i] - m[j % I, J - 1])));
        t3 + (if mean(i: t1[j % I]) <= real(k2[j]) { max(i: (t1[j % I] - t1[i])) } else { (y[I - 1] - x[j % I]) })
    }";
    let lib = Library::from_source("g.loss", src).unwrap();
    let call = Call::new()
        .input("x", Array::real(vec![1], vec![1.3125]))
        .input("y", Array::real(vec![1], vec![1.125]))
        .input("m", Array::real(vec![1, 3], vec![2.6875, 0.625, -0.0]))
        .reduction(Reduction::Mean)
        .dtype(DType::F32)
        .grad("x")
        .grad("y")
        .grad("m");
    harness::compare_backends(&lib, "g", &call, Some(1e-4)).unwrap();
}

/// The seeds `generated_programs_from_seeds_agree` runs: `LOSSC_GEN_SEEDS=A..B` (or one seed)
/// for more, or to replay a failure.
fn gen_seeds() -> std::ops::Range<u64> {
    gen::seeds(0..GEN_SEEDS)
}

/// How many generated programs CI runs (see `tests/gen/mod.rs` for what they hold).
const GEN_SEEDS: u64 = 1500;

#[test]
fn generated_programs_from_seeds_agree() {
    let seeds = gen_seeds();
    let total = seeds.end - seeds.start;
    let mut failures = Vec::new();
    let mut rejected = Vec::new();
    for seed in seeds {
        let case = gen::case(seed);
        let lib = match Library::from_source("gen.loss", &case.source) {
            Ok(l) => l,
            Err(e) => {
                rejected.push(format!("seed {seed}:\n{}{}", case.source, e.message()));
                continue;
            }
        };
        let rtol = if case.call.dtype == DType::F64 {
            1e-6
        } else {
            1e-2
        };
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            harness::compare_backends(&lib, "g", &case.call, Some(rtol))
        }));
        let what = match run {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(_) => "panicked".to_string(),
        };
        let inputs: Vec<String> = case
            .call
            .inputs
            .iter()
            .map(|(n, a)| format!("{n}={:?}", a.to_f64()))
            .collect();
        failures.push(format!(
            "seed {seed} ({:?}, {}, {} x {}, params {:?}, weights {:?}):\n{}{}\n{what}",
            case.call.dtype,
            case.call.reduction.name(),
            case.call.inputs[2].1.shape[0],
            case.call.inputs[2].1.shape[1],
            case.call.params,
            case.call.weights.as_ref().map(|w| w.to_f64()),
            case.source,
            inputs.join(" ")
        ));
    }
    // The generator aims at well-typed programs: nearly all of them check.
    assert!(
        rejected.len() as u64 * 20 <= total,
        "{} of {total} generated programs do not check:\n{}",
        rejected.len(),
        rejected.join("\n")
    );
    assert!(
        failures.is_empty(),
        "{} of {total} generated programs disagree (LOSSC_GEN_SEEDS=N replays one):\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn compiled_losses_call_into_caller_buffers_and_report_bad_ids() {
    let lib = Library::with_stdlib().unwrap();
    let sce = lib
        .compile(
            "sparse_softmax_cross_entropy",
            Options::new().dtype(DType::F32).grad("logits"),
        )
        .unwrap();
    let logits: Vec<f32> = vec![1.0, 2.0, 3.0, 0.5, -1.0, 0.0];
    let labels: Vec<i64> = vec![2, 0];
    let shape_l = [2usize, 3];
    let shape_y = [2usize];
    let inputs = [
        ("labels", View::i64(&shape_y, &labels)),
        ("logits", View::f32(&shape_l, &logits)),
    ];
    let mut value = [0f32; 1];
    let mut g = vec![0f32; 6];
    sce.call_into(
        &inputs,
        &[],
        Reduction::Mean,
        None,
        &mut value,
        &mut [&mut g],
    )
    .unwrap();
    // Against the interpreter.
    let want = lib
        .call(
            "sparse_softmax_cross_entropy",
            &Call::new()
                .backend(Backend::Interp)
                .input("labels", Array::int(vec![2], labels.clone()))
                .input(
                    "logits",
                    Array::real(vec![2, 3], logits.iter().map(|x| *x as f64).collect()),
                )
                .reduction(Reduction::Mean)
                .grad("logits"),
        )
        .unwrap();
    assert!(close(value[0] as f64, want.value.to_f64()[0], 1e-6));
    for (a, b) in g.iter().zip(want.grads[0].1.to_f64()) {
        assert!(close(*a as f64, b, 1e-5), "{a} vs {b}");
    }
    // A class id out of range is an error naming the input, not a read.
    let bad: Vec<i64> = vec![2, 3];
    let inputs = [
        ("labels", View::i64(&shape_y, &bad)),
        ("logits", View::f32(&shape_l, &logits)),
    ];
    let e = sce
        .call_into(
            &inputs,
            &[],
            Reduction::Mean,
            None,
            &mut value,
            &mut [&mut g],
        )
        .unwrap_err();
    assert_eq!(e.kind, lossc::diag::ErrorKind::Range);
    assert!(
        e.message().contains("`logits` read at 3"),
        "{}",
        e.message()
    );
    // A shape of 10^12 elements over a few numbers, or one whose size overflows, is an error.
    let huge = [1_000_000usize, 1_000_000];
    let inputs_huge = [
        ("labels", View::i64(&shape_y, &labels)),
        ("logits", View::f32(&huge, &logits)),
    ];
    let e = sce
        .call(&inputs_huge, &[], Reduction::Mean, None)
        .unwrap_err();
    assert_eq!(e.kind, lossc::diag::ErrorKind::Shape, "{}", e.message());
    let overflow = [usize::MAX, 3];
    let inputs_over = [
        ("labels", View::i64(&shape_y, &labels)),
        ("logits", View::f32(&overflow, &logits)),
    ];
    assert!(sce.call(&inputs_over, &[], Reduction::Mean, None).is_err());
    // Wrong buffer sizes and precisions are errors too.
    let inputs = [
        ("labels", View::i64(&shape_y, &labels)),
        ("logits", View::f32(&shape_l, &logits)),
    ];
    let mut short = vec![0f32; 5];
    assert!(sce
        .call_into(
            &inputs,
            &[],
            Reduction::Mean,
            None,
            &mut value,
            &mut [&mut short]
        )
        .is_err());
    let mut v64 = [0f64; 1];
    let mut g64 = vec![0f64; 6];
    assert!(sce
        .call_into(
            &inputs,
            &[],
            Reduction::Mean,
            None,
            &mut v64,
            &mut [&mut g64]
        )
        .is_err());
    // Other reductions compile on first use; `call` returns arrays.
    let out = sce
        .call(
            &inputs,
            &[("label_smoothing", ParamValue::Real(0.1))],
            Reduction::None,
            None,
        )
        .unwrap();
    assert_eq!(out.value.shape, vec![2]);
    assert_eq!(out.grads[0].1.shape, vec![2, 3]);

    // CTC: a label length past the padding is an error from the compiled path.
    let ctc = lib
        .compile("ctc_loss", Options::new().dtype(DType::F64).grad("logits"))
        .unwrap();
    let (b, t, k, s) = (1usize, 4usize, 3usize, 2usize);
    let logits = vec![0.1f64; b * t * k];
    let labels = vec![1i64, 2];
    let shapes = ([b, s], [b, t, k], [b]);
    let too_long = vec![5i64];
    let ok_len = vec![4i64];
    let inputs = [
        ("labels", View::i64(&shapes.0, &labels)),
        ("logits", View::f64(&shapes.1, &logits)),
        ("label_lengths", View::i64(&shapes.2, &too_long)),
        ("logit_lengths", View::i64(&shapes.2, &ok_len)),
    ];
    let e = ctc.call(&inputs, &[], Reduction::Mean, None).unwrap_err();
    assert_eq!(e.kind, lossc::diag::ErrorKind::Range, "{}", e.message());
}

/// With `weighted_mean` and all-zero weights the loss is 0 and its body is never evaluated, so
/// a bad class id is no error, on either backend (fuzz finding 4: the JIT computed a guarded
/// term's gather before its guard).
#[test]
fn zero_weights_skip_the_body_on_both_backends() {
    let lib = Library::with_stdlib().unwrap();
    let logits = vec![1.0f64, 2.0, 3.0, 0.5, -1.0, 0.0];
    let bad = vec![2i64, 3];
    let zero = vec![0.0f64; 2];
    let want = lib
        .call(
            "sparse_softmax_cross_entropy",
            &Call::new()
                .backend(Backend::Interp)
                .input("labels", Array::int(vec![2], bad.clone()))
                .input("logits", Array::real(vec![2, 3], logits.clone()))
                .weights(Array::real(vec![2], zero.clone()))
                .reduction(Reduction::WeightedMean)
                .grad("logits"),
        )
        .unwrap();
    assert_eq!(want.value.to_f64(), vec![0.0]);
    assert_eq!(want.grads[0].1.to_f64(), vec![0.0; 6]);
    for dtype in [DType::F32, DType::F64] {
        let c = lib
            .compile(
                "sparse_softmax_cross_entropy",
                Options::new().dtype(dtype).grad("logits"),
            )
            .unwrap();
        let l32: Vec<f32> = logits.iter().map(|x| *x as f32).collect();
        let z32 = vec![0f32; 2];
        let (lv, wv) = if dtype == DType::F32 {
            (View::f32(&[2, 3], &l32), View::f32(&[2], &z32))
        } else {
            (View::f64(&[2, 3], &logits), View::f64(&[2], &zero))
        };
        let inputs = [("labels", View::i64(&[2], &bad)), ("logits", lv)];
        let out = c
            .call(&inputs, &[], Reduction::WeightedMean, Some(wv))
            .unwrap();
        assert_eq!(out.value.to_f64(), vec![0.0], "{dtype:?}");
        assert_eq!(out.grads[0].1.to_f64(), vec![0.0; 6], "{dtype:?}");
        // with a nonzero weight the bad id is read, and is an error
        let one = [1.0f64, 0.0];
        let one32 = [1.0f32, 0.0];
        let wv = if dtype == DType::F32 {
            View::f32(&[2], &one32)
        } else {
            View::f64(&[2], &one)
        };
        let e = c
            .call(&inputs, &[], Reduction::WeightedMean, Some(wv))
            .unwrap_err();
        assert_eq!(e.kind, lossc::diag::ErrorKind::Range, "{}", e.message());
    }
}

/// The same with a reduction over gathered rows behind the weight-sum guard: the JIT used to
/// compute it at the top of the loop body, before the guard, and report the bad id.
#[test]
fn zero_weights_skip_a_gathered_reduction() {
    let src = "loss g(x[n], t[k, c], lab[n]: int) -> [n] { x[n] * x[n] * sum(c: t[lab[n], c]) }";
    let lib = Library::from_source("g.loss", src).unwrap();
    let x = vec![1.0f64, -2.0, 0.5];
    let t = vec![1.0f64, 2.0, 3.0, 4.0];
    let lab = vec![0i64, 1, 7];
    for (w, ok) in [([0.0f64; 3], true), ([0.0, 0.0, 1.0], false)] {
        let want = lib.call(
            "g",
            &Call::new()
                .backend(Backend::Interp)
                .input("x", Array::real(vec![3], x.clone()))
                .input("t", Array::real(vec![2, 2], t.clone()))
                .input("lab", Array::int(vec![3], lab.clone()))
                .weights(Array::real(vec![3], w.to_vec()))
                .reduction(Reduction::WeightedMean)
                .grad("x"),
        );
        assert_eq!(want.is_ok(), ok);
        let c = lib
            .compile("g", Options::new().dtype(DType::F64).grad("x"))
            .unwrap();
        let inputs = [
            ("x", View::f64(&[3], &x)),
            ("t", View::f64(&[2, 2], &t)),
            ("lab", View::i64(&[3], &lab)),
        ];
        let got = c.call(
            &inputs,
            &[],
            Reduction::WeightedMean,
            Some(View::f64(&[3], &w)),
        );
        match (want, got) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.value.to_f64(), b.value.to_f64());
                assert_eq!(a.grads[0].1.to_f64(), b.grads[0].1.to_f64());
            }
            (Err(a), Err(b)) => assert_eq!(a.kind, b.kind),
            (a, b) => panic!("interpreter {:?}, JIT {:?}", a.is_ok(), b.is_ok()),
        }
    }
}

/// Every pair `(x, y)` of `vals`, as the two input columns.
fn all_pairs(vals: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let xs = vals
        .iter()
        .flat_map(|x| vals.iter().map(move |_| *x))
        .collect();
    let ys = vals.iter().flat_map(|_| vals.iter().copied()).collect();
    (xs, ys)
}

/// The values of `name` on `call` from the interpreter and from the JIT.
fn interp_and_jit(lib: &Library, name: &str, call: &Call) -> (Vec<f64>, Vec<f64>) {
    let want = lib.call(name, call).unwrap().value.to_f64();
    let mut jit = call.clone();
    jit.backend = Backend::Jit;
    (want, lib.call(name, &jit).unwrap().value.to_f64())
}

/// `x ^ y` in the vector loop follows C's `pow` on special values as the interpreter (and the
/// scalar code) do: signed zeros, infinities, NaN, negative bases (fuzz finding 14: the vector
/// form gave NaN for `(-inf) ^ -1.8125`, which is +0).
#[test]
fn vector_pow_follows_c_on_special_values() {
    let lib = Library::from_source("p.loss", "loss p(x[i], y[i]) -> [i] { x[i] ^ y[i] }").unwrap();
    let vals = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        2.0,
        -2.0,
        0.5,
        -0.5,
        3.0,
        -3.0,
        -1.8125,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ];
    let (xs, ys) = all_pairs(&vals);
    let n = xs.len();
    for dtype in [DType::F32, DType::F64] {
        let call = Call::new()
            .backend(Backend::Interp)
            .input("x", Array::real(vec![n], xs.clone()))
            .input("y", Array::real(vec![n], ys.clone()))
            .dtype(dtype);
        let (want, got) = interp_and_jit(&lib, "p", &call);
        for k in 0..n {
            let (a, b) = (want[k], got[k]);
            let same = (a.is_nan() && b.is_nan())
                || (a == b && a.is_sign_negative() == b.is_sign_negative())
                || (a.is_finite() && (a - b).abs() <= 1e-6 * a.abs());
            assert!(same, "{dtype:?}: {} ^ {} = {a}, JIT {b}", xs[k], ys[k]);
        }
    }
}

#[test]
fn min_max_and_clamp_follow_the_interpreter_on_special_values() {
    // A tie (±0 included) keeps the first argument and a NaN anywhere gives NaN, on every
    // path: vector steps and the cells after them, f32 and f64.
    let src = "loss mn(x[i], y[i]) -> [i] { min(x[i], y[i]) }
               loss mx(x[i], y[i]) -> [i] { max(x[i], y[i]) }
               loss mn3(x[i], y[i]) -> [i] { min(y[i], x[i], -0.0) }
               loss mx3(x[i], y[i]) -> [i] { max(0.0, x[i], y[i]) }
               loss cl(x[i], y[i]) -> [i] { clamp(x[i], y[i], 0.0) }
               loss cn(x[i], y[i]) -> [i] { clamp(x[i], -1.0, 2.0) * min(y[i], 0.0 / 0.0) }";
    let lib = Library::from_source("m.loss", src).unwrap();
    let vals = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        1.5,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ];
    let (mut xs, mut ys) = all_pairs(&vals);
    // (one more cell: a partial step after the vector steps)
    xs.push(-0.0);
    ys.push(0.0);
    let n = xs.len();
    for name in ["mn", "mx", "mn3", "mx3", "cl", "cn"] {
        for dtype in [DType::F32, DType::F64] {
            let call = Call::new()
                .backend(Backend::Interp)
                .input("x", Array::real(vec![n], xs.clone()))
                .input("y", Array::real(vec![n], ys.clone()))
                .dtype(dtype);
            let (want, got) = interp_and_jit(&lib, name, &call);
            for k in 0..n {
                let (a, b) = (want[k], got[k]);
                let same = (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits();
                assert!(
                    same,
                    "{name} {dtype:?}: x {} y {}: {a:?}, JIT {b:?}",
                    xs[k], ys[k]
                );
            }
        }
    }
}

/// Adjoints added to one cell across a scalar loop (a gather keeps the loop scalar) are held
/// in a register through the loop (the same additions in the same order as through memory):
/// the gradients agree with the interpreter's, f32 and f64, whether the cell's run is a
/// group's (`a`) or sits beside a moving one (`x` through `s`).
#[test]
fn adjoints_held_across_a_loop_agree() {
    let src = "loss g(a[i], x[i, j], ids[i, j]: int, w[k]) -> [] {
                   sum(i: sum(j: a[i] * w[ids[i, j]] * x[i, j]))
               }
               loss h(a[i], x[i, j], ids[i, j]: int, w[k]) -> [] {
                   let s[i] = sum(j: x[i, j] * x[i, j]);
                   sum(i: sum(j: w[ids[i, j]] * s[i] * a[i]))
               }";
    let lib = Library::from_source("h.loss", src).unwrap();
    let (ni, nj, nk) = (5usize, 37usize, 4usize);
    let mut rng = Rng(11);
    let a: Vec<f64> = (0..ni).map(|_| rng.next() * 2.0 - 1.0).collect();
    let x: Vec<f64> = (0..ni * nj).map(|_| rng.next() * 2.0 - 1.0).collect();
    let ids: Vec<i64> = (0..ni * nj).map(|k| (k * 7 % nk) as i64).collect();
    let w: Vec<f64> = (0..nk).map(|_| rng.next() * 3.0 - 1.5).collect();
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
        for name in ["g", "h"] {
            for wrt in ["a", "x"] {
                let call = Call::new()
                    .backend(Backend::Interp)
                    .input("a", Array::real(vec![ni], a.clone()))
                    .input("x", Array::real(vec![ni, nj], x.clone()))
                    .input("ids", Array::int(vec![ni, nj], ids.clone()))
                    .input("w", Array::real(vec![nk], w.clone()))
                    .dtype(dtype)
                    .grad(wrt);
                let want = lib.call(name, &call).unwrap();
                let mut jit = call.clone();
                jit.backend = Backend::Jit;
                let got = lib.call(name, &jit).unwrap();
                let (p, q) = (want.grads[0].1.to_f64(), got.grads[0].1.to_f64());
                for (k, (u, v)) in p.iter().zip(&q).enumerate() {
                    let ok = (u - v).abs() <= tol * u.abs().max(1e-3);
                    assert!(ok, "{name} {dtype:?} d/d{wrt}[{k}]: {u} vs {v}");
                }
            }
        }
    }
}

#[test]
fn compiled_losses_are_send_and_sync_and_print_their_code() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    let lib = Library::with_stdlib().unwrap();
    let c = lib
        .compile("focal_loss", Options::new().grad("logits"))
        .unwrap();
    send_sync(&c);
    let k = c.kernel().unwrap();
    assert!(k.clif().starts_with("function"), "{}", k.clif());
    assert!(k.asm().unwrap().contains("ret"));
    // The same compiled loss used from two threads gives the same numbers.
    let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
    let y: Vec<f32> = (0..1000).map(|i| (i % 2) as f32).collect();
    let shape = [1000usize];
    let run = || {
        let inputs = [
            ("labels", View::f32(&shape, &y)),
            ("logits", View::f32(&shape, &x)),
        ];
        let o = c.call(&inputs, &[], Reduction::Mean, None).unwrap();
        (o.value.to_f64(), o.grads[0].1.to_f64())
    };
    let (a, b) = std::thread::scope(|s| {
        let h1 = s.spawn(run);
        let h2 = s.spawn(run);
        (h1.join().unwrap(), h2.join().unwrap())
    });
    assert_eq!(a, b);
}

/// Big enough calls run in row blocks, on threads: every result is bitwise the same for 1, 2
/// and 8 threads, and agrees with the interpreter.
#[test]
fn threads_give_bitwise_identical_results() {
    let lib = Library::with_stdlib().unwrap();
    let mut rng = Rng(99);
    let mut u = |n: usize, lo: f64, hi: f64| -> Vec<f64> {
        (0..n).map(|_| lo + (hi - lo) * rng.next()).collect()
    };
    // (loss, grad input, inputs as (name, shape, data as f64, is int))
    let n = 150_000;
    let labels01: Vec<f64> = u(n, 0.0, 1.0).iter().map(|v| v.round()).collect();
    let (rows, cols) = (300usize, 700usize);
    let mut onehot = vec![0.0; rows * cols];
    for r in 0..rows {
        onehot[r * cols + (r * 13) % cols] = 1.0;
    }
    let (cn, cd, cc) = (40_000usize, 3usize, 5usize);
    let ids: Vec<f64> = (0..cn).map(|i| ((i * 7) % cc) as f64).collect();
    let (b, t, k, s) = (600usize, 30usize, 8usize, 6usize);
    let ctc_labels: Vec<f64> = (0..b * s).map(|i| (1 + i % (k - 1)) as f64).collect();
    type Inp = (&'static str, Vec<usize>, Vec<f64>, bool);
    let cases: Vec<(&str, &str, Vec<Inp>)> = vec![
        (
            "focal_loss",
            "logits",
            vec![
                ("labels", vec![n], labels01, false),
                ("logits", vec![n], u(n, -4.0, 4.0), false),
            ],
        ),
        (
            "softmax_cross_entropy",
            "logits",
            vec![
                ("labels", vec![rows, cols], onehot, false),
                ("logits", vec![rows, cols], u(rows * cols, -3.0, 3.0), false),
            ],
        ),
        (
            "center_loss",
            "centers",
            vec![
                ("labels", vec![cn], ids, true),
                ("features", vec![cn, cd], u(cn * cd, -1.0, 1.0), false),
                ("centers", vec![cc, cd], u(cc * cd, -1.0, 1.0), false),
            ],
        ),
        (
            "ctc_loss",
            "logits",
            vec![
                ("labels", vec![b, s], ctc_labels, true),
                ("logits", vec![b, t, k], u(b * t * k, -2.0, 2.0), false),
                ("label_lengths", vec![b], vec![s as f64; b], true),
                ("logit_lengths", vec![b], vec![t as f64; b], true),
            ],
        ),
    ];
    for (loss, wrt, inputs) in cases {
        let f32s: Vec<Vec<f32>> = inputs
            .iter()
            .map(|i| i.2.iter().map(|x| *x as f32).collect())
            .collect();
        let i64s: Vec<Vec<i64>> = inputs
            .iter()
            .map(|i| i.2.iter().map(|x| *x as i64).collect())
            .collect();
        let views: Vec<(&str, View)> = inputs
            .iter()
            .enumerate()
            .map(|(j, i)| {
                let v = if i.3 {
                    View::i64(&i.1, &i64s[j])
                } else {
                    View::f32(&i.1, &f32s[j])
                };
                (i.0, v)
            })
            .collect();
        for r in [Reduction::Mean, Reduction::None] {
            let mut results = Vec::new();
            for threads in [1usize, 2, 8] {
                let c = lib
                    .compile(
                        loss,
                        Options::new().dtype(DType::F32).grad(wrt).threads(threads),
                    )
                    .unwrap();
                let out = c.call(&views, &[], r, None).unwrap();
                let bits: Vec<u64> = out
                    .value
                    .to_f64()
                    .iter()
                    .chain(out.grads[0].1.to_f64().iter())
                    .map(|x| x.to_bits())
                    .collect();
                results.push(bits);
            }
            assert_eq!(results[0], results[1], "{loss} {r:?}: 1 vs 2 threads");
            assert_eq!(results[0], results[2], "{loss} {r:?}: 1 vs 8 threads");
            // Against the interpreter (f32 rounding per op there).
            let mut call = Call::new()
                .backend(Backend::Interp)
                .reduction(r)
                .dtype(DType::F32)
                .grad(wrt);
            for i in &inputs {
                let a = if i.3 {
                    Array::int(i.1.clone(), i.2.iter().map(|x| *x as i64).collect())
                } else {
                    Array::real(i.1.clone(), i.2.iter().map(|x| *x as f32 as f64).collect())
                };
                call = call.input(i.0, a);
            }
            let want = lib.call(loss, &call).unwrap();
            let got: Vec<f64> = results[0].iter().map(|b| f64::from_bits(*b)).collect();
            let want_all: Vec<f64> = want
                .value
                .to_f64()
                .into_iter()
                .chain(want.grads[0].1.to_f64())
                .collect();
            assert_eq!(got.len(), want_all.len());
            let scale = want_all.iter().fold(0f64, |m, x| m.max(x.abs()));
            for (j, (a, b)) in got.iter().zip(&want_all).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs() + 1e-6 * scale,
                    "{loss} {r:?} [{j}]: jit {a} interp {b}"
                );
            }
        }
    }
}

/// The generated code of a small loss, value and gradient in one kernel (f32, mean): a fused
/// loop, vector body and scalar tail. A change here is a question about codegen.
#[test]
fn clif_snapshot() {
    let lib = Library::from_source(
        "sq.loss",
        "loss sq(x[i], y[i]) -> [i] { (x[i] - y[i]) ^ 2 }",
    )
    .unwrap();
    let c = lib
        .compile("sq", Options::new().dtype(DType::F32).grad("x"))
        .unwrap();
    insta::assert_snapshot!("clif_sq_f32_mean_grad", c.kernel().unwrap().clif());
}

/// Baked parameters fold into the code and give the interpreter's numbers; a call may repeat
/// a baked value but not change it.
#[test]
fn baked_parameters() {
    let lib = Library::with_stdlib().unwrap();
    let mut rng = Rng(5);
    let n = 1001;
    let y: Vec<f64> = (0..n)
        .map(|i| {
            if i % 7 == 0 {
                rng.next()
            } else {
                (i % 2) as f64
            }
        })
        .collect();
    let x: Vec<f64> = (0..n)
        .map(|i| (rng.next() - 0.5) * if i % 50 == 0 { 400.0 } else { 8.0 })
        .collect();
    for (gamma, alpha) in [(2.0, 0.25), (0.0, 0.5), (1.5, -1.0)] {
        for dtype in [DType::F64, DType::F32] {
            let c = lib
                .compile(
                    "focal_loss",
                    Options::new()
                        .dtype(dtype)
                        .grad("logits")
                        .bake("gamma", gamma)
                        .bake("alpha", alpha),
                )
                .unwrap();
            let ys: Vec<f32> = y.iter().map(|v| *v as f32).collect();
            let xs: Vec<f32> = x.iter().map(|v| *v as f32).collect();
            let shape = [n];
            let inputs = if dtype == DType::F32 {
                [
                    ("labels", View::f32(&shape, &ys)),
                    ("logits", View::f32(&shape, &xs)),
                ]
            } else {
                [
                    ("labels", View::f64(&shape, &y)),
                    ("logits", View::f64(&shape, &x)),
                ]
            };
            let got = c.call(&inputs, &[], Reduction::None, None).unwrap();
            let conv = |v: &[f64]| -> Vec<f64> {
                if dtype == DType::F32 {
                    v.iter().map(|x| *x as f32 as f64).collect()
                } else {
                    v.to_vec()
                }
            };
            let want = lib
                .call(
                    "focal_loss",
                    &Call::new()
                        .backend(Backend::Interp)
                        .input("labels", Array::real(vec![n], conv(&y)))
                        .input("logits", Array::real(vec![n], conv(&x)))
                        .param("gamma", gamma)
                        .param("alpha", alpha)
                        .dtype(dtype)
                        .grad("logits"),
                )
                .unwrap();
            let rtol = if dtype == DType::F64 { 1e-12 } else { 2e-4 };
            for (a, b) in got.value.to_f64().iter().zip(want.value.to_f64()) {
                assert!(close(*a, b, rtol), "gamma {gamma} {dtype:?}: {a} vs {b}");
            }
            for (j, (a, b)) in got.grads[0]
                .1
                .to_f64()
                .iter()
                .zip(want.grads[0].1.to_f64())
                .enumerate()
            {
                assert!(
                    close(*a, b, rtol),
                    "grad gamma {gamma} {dtype:?} at {j} (x {}, y {}): {a} vs {b}",
                    x[j],
                    y[j]
                );
            }
            // The same value may be given again; another may not.
            assert!(c
                .call(
                    &inputs,
                    &[("gamma", ParamValue::Real(gamma))],
                    Reduction::None,
                    None
                )
                .is_ok());
            let e = c
                .call(
                    &inputs,
                    &[("gamma", ParamValue::Real(gamma + 1.0))],
                    Reduction::None,
                    None,
                )
                .unwrap_err();
            assert!(e.message().contains("baked"), "{}", e.message());
        }
    }
}

/// A loss's gradient with respect to input `wrt` under the mean reduction, simplified as the
/// runtime builds it, and the roots its backward passes hoist from.
fn mean_gradient(
    p: &lossc::ir::Program,
    wrt: u32,
) -> (
    lossc::ir::Program,
    Vec<(lossc::ir::ExprId, lossc::schedule::When)>,
) {
    let q = lossc::opt::simplify(&lossc::ir::with_reduction(p, Reduction::Mean, false));
    let g =
        lossc::opt::simplify(&lossc::grad::differentiate(&q, &[lossc::ir::InputId(wrt)]).unwrap());
    let roots = g
        .passes
        .iter()
        .flat_map(|ps| {
            ps.contributions
                .iter()
                .flat_map(lossc::schedule::contribution_hoist_roots)
        })
        .collect();
    (g, roots)
}

/// The gradient of a max picks the argmax with an int `min` over the row, evaluated under the
/// mean's guard: it must be computed once per row, before the loop over the row's cells (it
/// was computed once per cell: O(C²) per row, 3 s instead of 15 ms at 4096x1000).
#[test]
fn argmax_of_a_max_gradient_is_hoisted_out_of_the_row() {
    use lossc::ir::{Expr, ExprId, IndexId, Red, Ty};
    use lossc::schedule::Analysis;
    let lib = Library::from_source("m.loss", "loss m(x[n, c]) -> [n] { max(c: x[n, c]) }").unwrap();
    let c = lib
        .compile("m", Options::new().dtype(DType::F64).grad("x"))
        .unwrap();
    let (p, roots) = &mean_gradient(c.program(), 0);
    let (n, cc) = (IndexId(0), IndexId(1));
    let argmax = (0..p.pool.len() as u32)
        .map(ExprId)
        .find(|e| {
            p.pool.ty(*e) == Ty::Int
                && matches!(p.pool.get(*e), Expr::Reduce(Red::Min, i, _) if *i == cc)
        })
        .expect("the gradient holds an argmax");
    let an = Analysis::new(p);
    assert!(an.hoistable(roots, &[n], Some(n), &[cc]).contains(&argmax));
    // and the numbers: the first maximum of each row gets the whole gradient
    let x = [1.0, 3.0, 3.0, 0.0, -1.0, -2.0, -3.0, -1.0];
    let out = c
        .call(&[("x", View::f64(&[2, 4], &x))], &[], Reduction::Mean, None)
        .unwrap();
    assert_eq!(
        out.grads[0].1.to_f64(),
        vec![0.0, 0.5, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0]
    );
}

/// CTC's backward pass reads each cell's logsumexp back from alpha (alpha - emit) instead of
/// recomputing it; where an emission is -inf that would give NaN, so it recomputes there. A
/// -inf logit must leave every gradient finite, the same in both backends.
#[test]
fn ctc_with_minus_infinity_logits_has_finite_gradients() {
    let lib = Library::with_stdlib().unwrap();
    let inf = f64::INFINITY;
    let logits = vec![
        0.1, -inf, 0.3, 0.5, 0.2, -inf, 0.3, 0.1, 0.2, -inf, 0.4, 0.1,
    ];
    let call = Call::new()
        .backend(Backend::Interp)
        .input("labels", Array::int(vec![1, 2], vec![1, 2]))
        .input("logits", Array::real(vec![1, 4, 3], logits))
        .input("label_lengths", Array::int(vec![1], vec![2]))
        .input("logit_lengths", Array::int(vec![1], vec![4]))
        .reduction(Reduction::Mean)
        .grad("logits");
    let mut failures = Vec::new();
    compare("ctc -inf", &lib, "ctc_loss", &call, 1e-12, &mut failures);
    assert!(failures.is_empty(), "{failures:?}");
    let out = lib.call("ctc_loss", &call).unwrap();
    let g = out.grads[0].1.to_f64();
    assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    // where the softmax gives a class probability 0, its gradient is 0
    assert_eq!(g[1], 0.0);
}

/// Box losses over enough boxes to run the vector loop (rows of 4 loaded and transposed,
/// gradient columns transposed back and stored directly) and its scalar tail, every reduction,
/// both precisions, against the interpreter.
#[test]
fn box_losses_vector_path_matches_the_interpreter() {
    let lib = Library::with_stdlib().unwrap();
    let mut rng = Rng(99);
    let n = 37;
    let boxes = |rng: &mut Rng| -> Vec<f64> {
        (0..n)
            .flat_map(|_| {
                let (x, y) = (rng.next() * 10.0, rng.next() * 10.0);
                let (w, h) = (rng.next() * 5.0, rng.next() * 5.0);
                [x, y, x + w, y + h]
            })
            .collect()
    };
    let (p, t) = (boxes(&mut rng), boxes(&mut rng));
    let mut failures = Vec::new();
    for loss in ["giou_loss", "diou_loss", "ciou_loss"] {
        for dtype in [DType::F64, DType::F32] {
            for r in [Reduction::None, Reduction::Sum, Reduction::Mean] {
                let call = Call::new()
                    .backend(Backend::Interp)
                    .input("pred_boxes", Array::real(vec![n, 4], p.clone()))
                    .input("target_boxes", Array::real(vec![n, 4], t.clone()))
                    .reduction(r)
                    .dtype(dtype)
                    .grad("pred_boxes")
                    .grad("target_boxes");
                let rtol = if dtype == DType::F64 { 1e-12 } else { 2e-4 };
                compare(loss, &lib, loss, &call, rtol, &mut failures);
            }
        }
    }
    // rows of 2 (f64: a square transpose of its own)
    let src =
        "loss pts(p[n, 2], q[n, 2]) -> [n] { (p[n, 0] - q[n, 0]) ^ 2 + 3 * p[n, 1] * q[n, 1] }";
    let lib = Library::from_source("pts.loss", src).unwrap();
    for dtype in [DType::F64, DType::F32] {
        let call = Call::new()
            .backend(Backend::Interp)
            .input("p", Array::real(vec![n, 2], p[..2 * n].to_vec()))
            .input("q", Array::real(vec![n, 2], t[..2 * n].to_vec()))
            .reduction(Reduction::Mean)
            .dtype(dtype)
            .grad("p")
            .grad("q");
        let rtol = if dtype == DType::F64 { 1e-12 } else { 2e-4 };
        compare("pts", &lib, "pts", &call, rtol, &mut failures);
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Softmax gradients read the logsumexp's exponentials back (`exp / sum` instead of
/// `exp(x - lse)`): the same values in every special case of a row (a `+inf` maximum, all
/// `-inf`, a NaN, some `-inf`, huge spreads), on both backends, in both precisions, through
/// the vector loop and its scalar tail.
#[test]
fn softmax_gradients_reuse_the_logsumexp_exponentials() {
    let (inf, nan) = (f64::INFINITY, f64::NAN);
    let rows: Vec<[f64; 5]> = vec![
        [inf, 1.0, 2.0, 3.0, 4.0],
        [1.0, inf, 2.0, inf, -inf],
        [-inf; 5],
        [nan, 1.0, 2.0, 3.0, 4.0],
        [-inf, 0.0, 1.0, 2.0, 3.0],
        [100.0, -100.0, 3.0, 1e-3, 50.0],
        [0.5, -0.25, 0.125, 2.0, -3.0],
    ];
    let logits: Vec<f64> = rows.iter().flatten().copied().collect();
    let mut rng = Rng(7);
    let labels: Vec<f64> = (0..logits.len()).map(|_| rng.next()).collect();
    // reference: -y + (Σ y) exp(x - lse) where x != -inf, lse as logsumexp defines it
    let mut want = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        let y = &labels[r * 5..r * 5 + 5];
        let m = row.iter().fold(-inf, |a: f64, b| {
            if a.is_nan() || b.is_nan() {
                nan
            } else {
                a.max(*b)
            }
        });
        let lse = if m.is_finite() {
            m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
        } else {
            m
        };
        let g: f64 = y.iter().sum();
        for c in 0..5 {
            let e = if row[c] != -inf {
                (row[c] - lse).exp()
            } else {
                0.0
            };
            want.push(-y[c] + g * e);
        }
    }
    let lib = Library::with_stdlib().unwrap();
    let call = Call::new()
        .backend(Backend::Interp)
        .input("labels", Array::real(vec![rows.len(), 5], labels.clone()))
        .input("logits", Array::real(vec![rows.len(), 5], logits.clone()))
        .reduction(Reduction::Sum)
        .grad("logits");
    let check = |what: &str, got: &[f64], rtol: f64| {
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(close(*a, *b, rtol), "{what}: cell {k}: {a} vs {b}\n{got:?}");
        }
    };
    let out = lib.call("softmax_cross_entropy", &call).unwrap();
    check("interpreter", &out.grads[0].1.to_f64(), 1e-13);
    for dtype in [DType::F32, DType::F64] {
        let c = lib
            .compile(
                "softmax_cross_entropy",
                Options::new().dtype(dtype).grad("logits"),
            )
            .unwrap();
        let (l32, x32): (Vec<f32>, Vec<f32>) = (
            labels.iter().map(|v| *v as f32).collect(),
            logits.iter().map(|v| *v as f32).collect(),
        );
        let shape = [rows.len(), 5];
        let inputs = if dtype == DType::F32 {
            [
                ("labels", View::f32(&shape, &l32)),
                ("logits", View::f32(&shape, &x32)),
            ]
        } else {
            [
                ("labels", View::f64(&shape, &labels)),
                ("logits", View::f64(&shape, &logits)),
            ]
        };
        let out = c.call(&inputs, &[], Reduction::Sum, None).unwrap();
        let rtol = if dtype == DType::F32 { 1e-5 } else { 1e-13 };
        check(&format!("jit {dtype:?}"), &out.grads[0].1.to_f64(), rtol);
    }
}

/// Vector loops with enough inline math run two or four steps per iteration, their
/// instructions interleaved: the same values and gradients as the interpreter for every tail
/// length, both precisions, a gradient written by two stages (the second adds to the first's
/// cells), and a gathered read (whose range checks keep the steps apart).
#[test]
fn interleaved_vector_steps_agree_with_the_interpreter() {
    let lib = Library::from_source(
        "il.loss",
        "loss il(x[i], y[i]) -> [i] {
            let t[i] = sigmoid(x[i]) * y[i];
            softplus(x[i] * y[i]) * sigmoid(x[i] - y[i]) + log1p(exp(-abs(x[i]))) + t[i] * softplus(y[i])
        }
        loss gathered(x[i], lab[i]: int, c[k]) -> [i] {
            softplus(x[i] * c[lab[i]]) * sigmoid(x[i] - c[lab[i]]) + log1p(exp(-abs(x[i])))
        }",
    )
    .unwrap();
    // the mechanism is on: the kernel has the anchor slot
    let k = lib
        .compile("il", Options::new().grad("x").grad("y"))
        .unwrap();
    assert!(k.kernel().unwrap().clif().contains("explicit_slot"));
    let mut rng = Rng(11);
    let mut failures = Vec::new();
    for n in [5usize, 16, 37, 64, 203] {
        let x: Vec<f64> = (0..n).map(|_| rng.next() * 8.0 - 4.0).collect();
        let y: Vec<f64> = (0..n).map(|_| rng.next() * 2.0 - 1.0).collect();
        let lab: Vec<i64> = (0..n).map(|_| (rng.next() * 3.0) as i64).collect();
        let c: Vec<f64> = (0..3).map(|_| rng.next() * 2.0 - 1.0).collect();
        for dtype in [DType::F32, DType::F64] {
            for red in [Reduction::None, Reduction::Sum, Reduction::Mean] {
                // (f32: the interpreter rounds each node of an f64 evaluation, the JIT computes
                // in f32; some gradients cancel)
                let rtol = if dtype == DType::F32 { 1e-3 } else { 1e-11 };
                let call = Call::new()
                    .backend(Backend::Interp)
                    .input("x", Array::real(vec![n], x.clone()))
                    .input("y", Array::real(vec![n], y.clone()))
                    .dtype(dtype)
                    .reduction(red)
                    .grad("x")
                    .grad("y");
                let what = format!("il n={n} {dtype:?} {red:?}");
                compare(&what, &lib, "il", &call, rtol, &mut failures);
                let call = Call::new()
                    .backend(Backend::Interp)
                    .input("x", Array::real(vec![n], x.clone()))
                    .input("lab", Array::int(vec![n], lab.clone()))
                    .input("c", Array::real(vec![3], c.clone()))
                    .dtype(dtype)
                    .reduction(red)
                    .grad("x")
                    .grad("c");
                let what = format!("gathered n={n} {dtype:?} {red:?}");
                compare(&what, &lib, "gathered", &call, rtol, &mut failures);
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A fused linear cross-entropy's gradient keeps O(n + d*c) memory: the softmax gradient's
/// exponentials are not tabled when the logsumexp's body is itself a reduction (the
/// `[n, c]` product), and the JIT still agrees with the interpreter.
#[test]
fn fused_linear_cross_entropy_gradient_tables_no_n_by_c_product() {
    let lib = Library::from_source(
        "lin.loss",
        "loss lin(x[n, d], w[d, c], y[n]: int) -> [n] {
            let z = sum(d: x[n, d] * w[d, c]);
            let lse[n] = logsumexp(c: z);
            lse[n] - sum(d: x[n, d] * w[d, y[n]])
        }",
    )
    .unwrap();
    let base = lib.loss("lin").unwrap();
    let w = base.input("w").unwrap();
    let q = lossc::opt::simplify(&lossc::ir::with_reduction(base, Reduction::Mean, false));
    let p = lossc::opt::simplify(&lossc::grad::differentiate(&q, &[w]).unwrap());
    assert!(!p.passes.is_empty());
    for t in &p.tensors {
        let names: Vec<&str> = t
            .indices
            .iter()
            .map(|i| p.indices[i.ix()].name.as_str())
            .collect();
        assert!(
            !(names.contains(&"n") && names.contains(&"c")),
            "table {}[{}]",
            t.name,
            names.join(", ")
        );
    }
    let mut rng = Rng(5);
    let (n, d, c) = (7usize, 3usize, 5usize);
    let call = Call::new()
        .backend(Backend::Interp)
        .input(
            "x",
            Array::real(vec![n, d], (0..n * d).map(|_| rng.next() - 0.5).collect()),
        )
        .input(
            "w",
            Array::real(vec![d, c], (0..d * c).map(|_| rng.next() - 0.5).collect()),
        )
        .input(
            "y",
            Array::int(vec![n], (0..n).map(|k| (k % c) as i64).collect()),
        )
        .grad("w");
    let mut failures = Vec::new();
    compare("linear CE", &lib, "lin", &call, 1e-9, &mut failures);
    assert!(failures.is_empty(), "{failures:?}");
}

/// Recurrences and their adjoints run lane-wise. The adjoint of a recurrence that reads its
/// neighbours becomes a backward recurrence (pulled: each cell sums what it receives, no
/// scatter), and both tables fill 4 (f32) or 2 (f64) cells per step: padded reads outside
/// the table give the pad lane by lane, bool tables become lane masks, int comparisons run on
/// int lanes, and a step that reads past the end of an unpadded row (or a row outside it) is
/// redone cell by cell by the scalar code, which fails exactly where the language says.
#[test]
fn recurrences_and_their_adjoints_fill_lane_wise() {
    let src = "loss rec(x[b, t, u], w[b, u]) -> [b] {
            let keep[b, u] = w[b, u] > -0.5;
            let v[b, u] = w[b, u] * 0.5;
            let e[b, t, u] = x[b, t, u] + if u + 1 < U { v[b, u + 1] } else { 0.0 };
            let a[b, f: T + 1, u] pad -inf =
                if f == 0 { if u < 2 { x[b, 0, u] } else { -inf } }
                else if u > 2 * f + 1 { -inf }
                else {
                    logsumexp(a[b, f - 1, u - 1], a[b, f - 1, u],
                              if keep[b, u] { a[b, f - 1, u + 2] } else { -inf })
                      + e[b, f - 1, u]
                };
            logsumexp(u: a[b, T, u])
        }
        loss unguarded(x[b, u], w[b, u]) -> [b] {
            let a[b, f: 3, u] pad 0.0 = if f == 0 { x[b, u] } else { a[b, f - 1, u] * w[b, u + 1] };
            sum(u: a[b, 2, u])
        }";
    let lib = Library::from_source("rec.loss", src).unwrap();
    // the mechanism is on: the adjoint is a table of its own, filled in reverse, and the
    // kernel has lane-wise branches (speculative steps)
    let base = lib.loss("rec").unwrap();
    let x_id = base.input("x").unwrap();
    let q = lossc::opt::simplify(&lossc::ir::with_reduction(base, Reduction::Mean, false));
    let p = lossc::opt::simplify(&lossc::grad::differentiate(&q, &[x_id]).unwrap());
    let adj = p
        .tensors
        .iter()
        .find(|t| t.name.starts_with("a_grad"))
        .expect("the adjoint of a");
    assert!(adj.recurrent && adj.reverse && !adj.accumulated);
    assert!(p.passes.iter().all(|pass| pass
        .contributions
        .iter()
        .all(|c| p.tensors[c.target.ix()].name != adj.name)));
    let k = lib.compile("rec", Options::new().grad("x")).unwrap();
    assert!(k.kernel().unwrap().clif().contains("vany_true"));
    let mut rng = Rng(5);
    let mut failures = Vec::new();
    let mut compared = 0;
    for (nb, nt, nu) in [
        (1, 1, 1),
        (2, 3, 3),
        (1, 4, 4),
        (2, 2, 5),
        (3, 5, 9),
        (2, 6, 17),
    ] {
        let x: Vec<f64> = (0..nb * nt * nu).map(|_| rng.next() * 4.0 - 2.0).collect();
        let w: Vec<f64> = (0..nb * nu).map(|_| rng.next() * 2.0 - 1.0).collect();
        // with some cells -inf (masked) among large ones: where a step's own term is -inf the
        // gradient recomputes the step's logsumexp (in the scalar code, for the vector steps
        // that need it); read back from the table instead it would be exp(large) = inf, and
        // 0 * inf a NaN
        let mut masked: Vec<f64> = x.iter().map(|v| 300.0 * v).collect();
        for k in (3..masked.len()).step_by(7) {
            masked[k] = f64::NEG_INFINITY;
        }
        for (dtype, x) in [
            (DType::F32, &x),
            (DType::F64, &x),
            (DType::F32, &masked),
            (DType::F64, &masked),
        ] {
            for red in [Reduction::None, Reduction::Mean] {
                let rtol = if dtype == DType::F32 { 1e-3 } else { 1e-11 };
                let call = Call::new()
                    .backend(Backend::Interp)
                    .input("x", Array::real(vec![nb, nt, nu], x.clone()))
                    .input("w", Array::real(vec![nb, nu], w.clone()))
                    .dtype(dtype)
                    .reduction(red)
                    .grad("x")
                    .grad("w");
                let what = format!("rec {nb}x{nt}x{nu} {dtype:?} {red:?}");
                compare(&what, &lib, "rec", &call, rtol, &mut failures);
                let mut ci = call.clone();
                ci.backend = Backend::Interp;
                assert!(lib.call("rec", &ci).is_ok(), "{what}: interpreter failed");
                // reads w[b, u + 1] at the last u: a range error from both backends
                let call = Call::new()
                    .backend(Backend::Interp)
                    .input("x", Array::real(vec![nb, nu], w.clone()))
                    .input("w", Array::real(vec![nb, nu], w.clone()))
                    .dtype(dtype)
                    .reduction(red)
                    .grad("x");
                let what = format!("unguarded {nb}x{nu} {dtype:?} {red:?}");
                compare(&what, &lib, "unguarded", &call, rtol, &mut failures);
                let mut ci = call.clone();
                ci.backend = Backend::Jit;
                assert!(
                    lib.call("unguarded", &ci).is_err(),
                    "{what}: no range error"
                );
            }
        }
        // The pulled gradient against central differences (interpreter, f64, sum).
        let call = |x: &[f64]| {
            let mut c = Call::new()
                .backend(Backend::Interp)
                .input("x", Array::real(vec![nb, nt, nu], x.to_vec()))
                .input("w", Array::real(vec![nb, nu], w.clone()))
                .reduction(Reduction::Sum)
                .grad("x");
            c.backend = Backend::Interp;
            c
        };
        let out = lib.call("rec", &call(&x)).unwrap();
        let g = out.grads[0].1.to_f64();
        for i in 0..x.len() {
            let h = 1e-6;
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += h;
            xm[i] -= h;
            let fp = lib.call("rec", &call(&xp)).unwrap().value.to_f64()[0];
            let fm = lib.call("rec", &call(&xm)).unwrap().value.to_f64()[0];
            let fd = (fp - fm) / (2.0 * h);
            // (a perturbation that makes the value infinite has no difference to compare)
            compared += usize::from(fp.is_finite() && fm.is_finite());
            if fp.is_finite() && fm.is_finite() && (fd - g[i]).abs() > 1e-5 * (1.0 + fd.abs()) {
                failures.push(format!(
                    "rec {nb}x{nt}x{nu} d/dx[{i}]: fd {fd} grad {}",
                    g[i]
                ));
            }
        }
    }
    assert!(compared > 300, "only {compared} finite differences");
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A big kernel runs as several functions called in order (CTC's recurrences apart), a small
/// one as one; a fault raised in a later part stops the call with the interpreter's error.
#[test]
fn big_kernels_run_in_parts() {
    let lib = Library::with_stdlib().unwrap();
    let ctc = lib
        .compile("ctc_loss", Options::new().dtype(DType::F32).grad("logits"))
        .unwrap();
    let clif = ctc.kernel().unwrap().clif();
    assert!(clif.matches("function %ctc_loss_").count() >= 3, "{clif}");
    let mse = lib
        .compile(
            "mean_squared_error",
            Options::new().dtype(DType::F32).grad("predictions"),
        )
        .unwrap();
    assert_eq!(mse.kernel().unwrap().clif().matches("function ").count(), 1);
    // A label length above S is found where the loss reads alpha at 2 L: in the output, after
    // the recurrences' parts have run.
    let labels = [1i64, 2];
    let logits: Vec<f32> = (0..9).map(|x| x as f32 * 0.1).collect();
    for (len, ok) in [(2i64, true), (3, false)] {
        let (ll, tl) = ([len], [3i64]);
        let views = [
            ("labels", View::i64(&[1, 2], &labels)),
            ("logits", View::f32(&[1, 3, 3], &logits)),
            ("label_lengths", View::i64(&[1], &ll)),
            ("logit_lengths", View::i64(&[1], &tl)),
        ];
        let got = ctc.call(&views, &[], Reduction::Mean, None);
        let call = Call::new()
            .backend(Backend::Interp)
            .dtype(DType::F32)
            .grad("logits")
            .input("labels", Array::int(vec![1, 2], labels.to_vec()))
            .input(
                "logits",
                Array::real(vec![1, 3, 3], logits.iter().map(|x| *x as f64).collect()),
            )
            .input("label_lengths", Array::int(vec![1], ll.to_vec()))
            .input("logit_lengths", Array::int(vec![1], tl.to_vec()));
        let mut call = call;
        call.backend = Backend::Interp;
        let want = lib.call("ctc_loss", &call);
        match (got, want) {
            (Ok(g), Ok(w)) if ok => {
                let (g, w) = (g.value.to_f64()[0], w.value.to_f64()[0]);
                assert!(close(g, w, 1e-5), "{g} vs {w}");
            }
            (Err(g), Err(w)) if !ok => {
                assert_eq!(g.kind, w.kind);
                assert!(format!("{g:?}").contains("range"), "{g:?}");
            }
            (g, w) => panic!(
                "label length {len}: jit {:?} vs interpreter {:?}",
                g.is_ok(),
                w.is_ok()
            ),
        }
    }
}

/// A checked read every cell of inner loops evaluates, that does not depend on them, is read
/// once per row (`w[ids[n]]` below): the same numbers, an error exactly where the cells would
/// have raised one, and none where no cell reads it (a branch not taken, or no cells at all).
#[test]
fn per_row_checked_reads() {
    let lib = Library::from_source(
        "rows.loss",
        "loss always(ids[n]: int, x[n, c], w[k]) -> [n] {
             let t[n, j: 3] = w[ids[n]] * real(j) + x[n, 0];
             sum(j: t[n, j])
         }
         loss branch(ids[n]: int, x[n, c], w[k]) -> [n] {
             let g[n, j: 3] = if x[n, 0] > 100.0 { w[ids[n]] } else { real(j) };
             sum(j: g[n, j])
         }
         loss nocells(ids[n]: int, x[n, c], w[k]) -> [n] {
             let h[n, c] = w[ids[n]] * x[n, c];
             sum(c: h[n, c])
         }",
    )
    .unwrap();
    let w = Array::real(vec![3], vec![0.5, -1.5, 2.0]);
    let run = |loss: &str, ids: Vec<i64>, x: Array, dtype: DType| {
        let n = ids.len();
        let call = Call::new()
            .backend(Backend::Interp)
            .dtype(dtype)
            .reduction(Reduction::Sum)
            .grad("x")
            .input("ids", Array::int(vec![n], ids))
            .input("x", x)
            .input("w", w.clone());
        let mut failures = Vec::new();
        compare(loss, &lib, loss, &call, 1e-6, &mut failures);
        assert!(failures.is_empty(), "{failures:?}");
        let mut cj = call.clone();
        cj.backend = Backend::Jit;
        lib.call(loss, &cj).map(|o| o.value.to_f64()[0])
    };
    let x = Array::real(vec![3, 2], vec![0.25, 1.0, -2.0, 3.0, 1.5, 0.0]);
    for dtype in [DType::F32, DType::F64] {
        let v = run("always", vec![2, 0, 1], x.clone(), dtype).unwrap();
        assert!(
            close(v, 3.0 * (2.0 + 0.5 - 1.5) + 3.0 * (0.25 - 2.0 + 1.5), 1e-6),
            "{v}"
        );
        let e = run("always", vec![2, 7, 1], x.clone(), dtype).unwrap_err();
        assert_eq!(e.kind, lossc::diag::ErrorKind::Range);
        // never read: no cell takes the branch
        assert!(run("branch", vec![2, 7, 1], x.clone(), dtype).is_ok());
        // never read: the rows have no cells
        let empty = Array::real(vec![3, 0], vec![]);
        assert_eq!(run("nocells", vec![2, 7, 1], empty, dtype).unwrap(), 0.0);
        let e = run("nocells", vec![2, 7, 1], x.clone(), dtype).unwrap_err();
        assert_eq!(e.kind, lossc::diag::ErrorKind::Range);
    }
}

/// Rows of every length from 1 to 40: the interleaved vector steps (16 cells in f32, 8 in f64),
/// then single vector steps, then scalar cells, all agree with the interpreter, for a row-wise
/// max and sum of exps (softmax cross-entropies, their gradients) and a sum (MSE over rows).
#[test]
fn short_rows_take_single_vector_steps() {
    let lib = Library::with_stdlib().unwrap();
    let mut rng = Rng(0x51ed270b7a0f3c29);
    let mut failures = Vec::new();
    for c in 1..=40usize {
        let n = 3;
        let logits: Vec<f64> = (0..n * c).map(|_| 8.0 * rng.next() - 4.0).collect();
        let labels: Vec<f64> = (0..n * c).map(|_| rng.next()).collect();
        let ids: Vec<i64> = (0..n).map(|k| ((k * 7) % c) as i64).collect();
        for dtype in [DType::F64, DType::F32] {
            let rtol = if dtype == DType::F64 { 1e-12 } else { 2e-4 };
            let mut call = Call::new()
                .backend(Backend::Interp)
                .input("labels", Array::real(vec![n, c], labels.clone()))
                .input("logits", Array::real(vec![n, c], logits.clone()))
                .reduction(Reduction::Mean)
                .grad("logits");
            call.dtype = dtype;
            compare(
                &format!("softmax c={c} {dtype:?}"),
                &lib,
                "softmax_cross_entropy",
                &call,
                rtol,
                &mut failures,
            );
            let mut call = Call::new()
                .backend(Backend::Interp)
                .input("labels", Array::int(vec![n], ids.clone()))
                .input("logits", Array::real(vec![n, c], logits.clone()))
                .reduction(Reduction::Sum)
                .grad("logits");
            call.dtype = dtype;
            compare(
                &format!("sparse c={c} {dtype:?}"),
                &lib,
                "sparse_softmax_cross_entropy",
                &call,
                rtol,
                &mut failures,
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Softmax rows holding special values (NaN, ±inf, a row all -inf, exponentials that round
/// into the subnormals or to zero, -1e30), rows of 1 to 37 classes (vector steps, single
/// steps and scalar cells): the exponentials' fill and their sum run as one pass
/// (`summed_fill`), with the exp of non-positive arguments; JIT and interpreter agree, value
/// and gradient, in f32 and f64, for softmax and sparse softmax cross-entropy and a loss
/// whose sum of exponentials is its output.
#[test]
fn softmax_rows_of_special_values() {
    let lib = Library::with_stdlib().unwrap();
    let src = "loss mass(x[n, c]) -> [n] { let m[n] = max(c: x[n, c]); \
               let e[n, c] = exp(x[n, c] - m[n]); let s[n] = sum(c: e[n, c]); s[n] + e[n, 0] }";
    let own = Library::from_source("mass.loss", src).unwrap();
    let specials = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -1e30,
        -90.0,
        -104.5,
        -150.0,
        -745.5,
        0.0,
        -0.0,
        3.0,
    ];
    let mut rng = Rng(0x5f3759df);
    let mut failures = Vec::new();
    for c in [1usize, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 33, 37] {
        // row k: random values with special value k (if any) at a random cell; then a row
        // of -inf and a row of a special value everywhere
        let mut logits = Vec::new();
        let rows = specials.len() + 3;
        for k in 0..rows {
            let mut row: Vec<f64> = (0..c).map(|_| 6.0 * rng.next() - 3.0).collect();
            if k < specials.len() {
                let at = (rng.next() * c as f64) as usize % c;
                row[at] = specials[k];
                if c > 2 {
                    row[(at + 1) % c] = specials[(k + 4) % specials.len()];
                }
            } else if k == specials.len() {
                row.iter_mut().for_each(|v| *v = f64::NEG_INFINITY);
            } else if k == specials.len() + 1 {
                row.iter_mut().for_each(|v| *v = -100.0 * rng.next());
            }
            logits.extend(row);
        }
        let labels: Vec<f64> = (0..rows * c).map(|_| rng.next()).collect();
        let ids: Vec<i64> = (0..rows).map(|k| (k % c) as i64).collect();
        for dtype in [DType::F64, DType::F32] {
            let rtol = if dtype == DType::F64 { 1e-12 } else { 2e-4 };
            let x = Array::real(vec![rows, c], logits.clone());
            let dense = Array::real(vec![rows, c], labels.clone());
            let sparse = Array::int(vec![rows], ids.clone());
            for (entry, y) in [
                ("softmax_cross_entropy", dense),
                ("sparse_softmax_cross_entropy", sparse),
            ] {
                let mut call = Call::new()
                    .backend(Backend::Interp)
                    .input("labels", y)
                    .input("logits", x.clone())
                    .reduction(Reduction::None)
                    .grad("logits");
                call.dtype = dtype;
                let name = format!("{entry} c={c} {dtype:?}");
                compare(&name, &lib, entry, &call, rtol, &mut failures);
            }
            let mut call = Call::new()
                .backend(Backend::Interp)
                .input("x", x)
                .reduction(Reduction::None);
            call.dtype = dtype;
            compare(
                &format!("mass c={c} {dtype:?}"),
                &own,
                "mass",
                &call,
                rtol,
                &mut failures,
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A logsumexp of a few values on every combination of special values (NaN, ±inf, ±0, large,
/// small): the maximum taken as one maxps still gives NaN for any NaN argument, the maximum
/// where it is infinite, and the interpreter's value elsewhere, lane-wise and scalar.
#[test]
fn logsumexp_of_a_few_values_on_special_values() {
    let src = "loss lse3(a[i], b[i], c[i]) -> [i] { logsumexp(a[i], b[i], c[i]) }\n\
               loss lse2(a[i], b[i]) -> [i] { logsumexp(a[i], b[i]) }";
    let lib = Library::from_source("lse.loss", src).unwrap();
    let specials = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        0.0,
        -0.0,
        1.5,
        -1e30,
        80.0,
    ];
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for x in specials {
        for y in specials {
            for z in specials {
                a.push(x);
                b.push(y);
                c.push(z);
            }
        }
    }
    let n = a.len();
    let mut failures = Vec::new();
    for dtype in [DType::F64, DType::F32] {
        let rtol = if dtype == DType::F64 { 1e-12 } else { 2e-4 };
        // lse3(a, b, c) and lse2(a, c)
        for (entry, args) in [("lse3", vec![&a, &b, &c]), ("lse2", vec![&a, &c])] {
            let mut call = Call::new()
                .backend(Backend::Interp)
                .reduction(Reduction::None);
            for (name, v) in ["a", "b", "c"].iter().zip(args) {
                call = call.input(name, Array::real(vec![n], v.clone()));
            }
            call.dtype = dtype;
            let name = format!("{entry} {dtype:?}");
            compare(&name, &lib, entry, &call, rtol, &mut failures);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A fill reading `x[n, ids[n, j]]` runs as vector gathers (one id per lane, each checked
/// against `x`'s row): rows of 1 to 13 ids agree with the interpreter in f32 and f64, and an id
/// out of range at any position (vector lanes, single steps, scalar cells), negative or past
/// the row, is a range error from the JIT as from the interpreter.
#[test]
fn gathers_along_a_row_agree_and_check_their_ids() {
    let src = "loss g(x[n, k], ids[n, j]: int) -> [] {
        let t[n, j] = 2.0 * x[n, ids[n, j]] - x[n, 0];
        sum(n: sum(j: t[n, j] * t[n, j]))
    }";
    let lib = Library::from_source("g.loss", src).unwrap();
    let (n, k) = (3, 5);
    let x: Vec<f64> = (0..n * k).map(|v| 0.25 * v as f64 - 1.0).collect();
    for j in 1..=13usize {
        let ids: Vec<i64> = (0..n * j).map(|v| ((v * 3 + 1) % k) as i64).collect();
        for dtype in [DType::F64, DType::F32] {
            let mut call = Call::new()
                .backend(Backend::Interp)
                .input("x", Array::real(vec![n, k], x.clone()))
                .input("ids", Array::int(vec![n, j], ids.clone()))
                .grad("x");
            call.dtype = dtype;
            let (want, got) = interp_and_jit(&lib, "g", &call);
            assert!(
                close(want[0], got[0], 1e-6),
                "j={j} {dtype:?}: {want:?} {got:?}"
            );
            for bad_at in 0..n * j {
                for bad in [-1, k as i64, 1 << 40] {
                    let mut ids = ids.clone();
                    ids[bad_at] = bad;
                    for backend in [Backend::Interp, Backend::Jit] {
                        let mut c = call.clone();
                        c.inputs.retain(|(name, _)| name != "ids");
                        let mut c = c.input("ids", Array::int(vec![n, j], ids.clone()));
                        c.backend = backend;
                        let e = lib.call("g", &c).unwrap_err();
                        assert_eq!(e.kind, lossc::diag::ErrorKind::Range, "{backend:?} j={j}");
                    }
                }
            }
        }
    }
}

/// A vector loop whose selects and `&&` chains test conditions that are the same for the
/// whole row runs in copies, one per value of those conditions (`m[n] == 0`, `m[n] > 2`, ...):
/// every copy agrees with the interpreter, values and gradients, rows of 9 cells (vector steps
/// and the scalar cell). A row read at `clamp(j + 1, 0, J - 1)` of a table whose extent is at
/// least 1 needs no check; of an input, which may be empty, it is still checked.
#[test]
fn unswitched_rows_and_clamped_reads() {
    let lib = Library::from_source(
        "rows.loss",
        "loss rows(x[n, c], m[n]: int) -> [n] {
             let t[n, c] = if m[n] == 0 { x[n, c] } else {
                 if (m[n] > 2 && x[n, c] > 0.0) || m[n] == 1 { exp(x[n, c]) } else { -x[n, c] * x[n, c] }
             };
             sum(c: t[n, c])
         }
         loss next(x[n, c]) -> [n] {
             let t[n, j: 4] = x[n, 0] * real(j + 1);
             let s[n, j] = t[n, clamp(j + 1, 0, J - 1)] * x[n, 1];
             sum(j: s[n, j])
         }
         loss input(x[n, c], w[k]) -> [n] {
             let s[n, c] = w[clamp(c, 0, K - 1)] * x[n, c];
             sum(c: s[n, c])
         }",
    )
    .unwrap();
    let mut rng = Rng(7);
    let x: Vec<f64> = (0..8 * 9).map(|_| rng.next() * 4.0 - 2.0).collect();
    let x = Array::real(vec![8, 9], x);
    let m = Array::int(vec![8], vec![0, 1, 2, 3, 3, 2, 1, 0]);
    let mut failures = Vec::new();
    for dtype in [DType::F32, DType::F64] {
        let rtol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
        let call = Call::new()
            .backend(Backend::Interp)
            .dtype(dtype)
            .grad("x")
            .input("x", x.clone())
            .input("m", m.clone());
        compare("rows", &lib, "rows", &call, rtol, &mut failures);
        let call = Call::new()
            .backend(Backend::Interp)
            .dtype(dtype)
            .grad("x")
            .input("x", x.clone());
        compare("next", &lib, "next", &call, rtol, &mut failures);
        let w = Array::real(vec![9], (0..9).map(|k| k as f64 - 4.0).collect());
        let call = Call::new()
            .backend(Backend::Interp)
            .dtype(dtype)
            .grad("x")
            .input("x", x.clone())
            .input("w", w);
        compare("input", &lib, "input", &call, rtol, &mut failures);
        let mut call = Call::new()
            .backend(Backend::Interp)
            .dtype(dtype)
            .input("x", x.clone())
            .input("w", Array::real(vec![0], vec![]));
        call.backend = Backend::Jit;
        let e = lib.call("input", &call).unwrap_err();
        assert_eq!(e.kind, lossc::diag::ErrorKind::Range, "{}", e.message());
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A recurrence's fill runs, where its reads are inside their tables for the whole row and
/// the step's cells, "trusted" steps (no checks, two interleaved): rows of every length from
/// 1 to 20, reads at `u - 2`, `u + 1` (the pad near the ends) and a checked input row
/// `f - 1`; values and gradients agree with the interpreter in f32 and f64.
#[test]
fn trusted_fill_steps_agree() {
    let lib = Library::from_source(
        "rec.loss",
        "loss rec(x[b, t, u]) -> [b] {
             let a[b, f: T + 1, u] pad -inf = if f == 0 { x[b, 0, u] } else {
                 logsumexp(a[b, f - 1, u], a[b, f - 1, u - 2], a[b, f - 1, u + 1])
                   + x[b, f - 1, u] * 0.5
             };
             logsumexp(u: a[b, T, u])
         }",
    )
    .unwrap();
    let mut rng = Rng(5);
    let mut failures = Vec::new();
    for n in 1..=20 {
        let x: Vec<f64> = (0..2 * 5 * n).map(|_| rng.next() * 6.0 - 3.0).collect();
        let x = Array::real(vec![2, 5, n], x);
        for dtype in [DType::F32, DType::F64] {
            let rtol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
            let call = Call::new()
                .backend(Backend::Interp)
                .dtype(dtype)
                .grad("x")
                .input("x", x.clone());
            compare(
                &format!("rec u={n}"),
                &lib,
                "rec",
                &call,
                rtol,
                &mut failures,
            );
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A reduction nested in one over the same index is renamed (`max(i2: ..)` in `mean(i: ..)`);
/// its reads `x[i2]` are in range like `x[i]`, so it is safe and computed once, before the
/// loops, not again in every cell (RMSE's gradient was cubic in n: 1.1 s at n = 1000).
#[test]
fn renamed_nested_reductions_are_hoisted() {
    use lossc::ir::{Expr, ExprId, Red};
    use lossc::schedule::Analysis;
    let lib = Library::with_stdlib().unwrap();
    let c = lib
        .compile(
            "root_mean_squared_error",
            Options::new().dtype(DType::F64).grad("predictions"),
        )
        .unwrap();
    let (p, roots) = &mean_gradient(c.program(), 1);
    let an = Analysis::new(p);
    let maxes: Vec<ExprId> = (0..p.pool.len() as u32)
        .map(ExprId)
        .filter(|e| matches!(p.pool.get(*e), Expr::Reduce(Red::Max, _, _)))
        .collect();
    assert!(maxes.len() >= 2, "a max and its renamed copy");
    assert!(maxes.iter().all(|m| an.safe(*m)));
    let hoisted = an.hoistable(roots, &[], None, &[]);
    assert!(maxes.iter().any(|m| hoisted.contains(m)));
    let (want, got) = interp_and_jit(
        &lib,
        "root_mean_squared_error",
        &Call::new()
            .backend(Backend::Interp)
            .input("labels", Array::real(vec![4], vec![1.0, 2.0, 3.0, 4.0]))
            .input(
                "predictions",
                Array::real(vec![4], vec![1.5, 1.0, 3.0, 6.0]),
            )
            .reduction(Reduction::Mean),
    );
    assert!(close(want[0], got[0], 1e-12), "{want:?} {got:?}");
}

/// A parameter whose default reads the inputs (`beta = stop_grad(1 - mean(i: labels[i]))`) is
/// computed by the kernel when a call leaves it at its default (it was evaluated by the
/// interpreter before each call, a thousand times the kernel's time), and read from the call
/// when given; both as the interpreter computes them.
#[test]
fn data_reading_defaults_run_in_the_kernel() {
    let lib = Library::with_stdlib().unwrap();
    let c = lib
        .compile(
            "balanced_sigmoid_cross_entropy",
            Options::new().dtype(DType::F64).grad("logits"),
        )
        .unwrap();
    let labels = [1.0, 0.0, 1.0, 1.0, 0.0];
    let logits = [0.5, -1.0, 2.0, 0.1, 3.0];
    let inputs = [
        ("labels", View::f64(&[5], &labels)),
        ("logits", View::f64(&[5], &logits)),
    ];
    for beta in [None, Some(0.3)] {
        let params: Vec<(&str, ParamValue)> = beta
            .iter()
            .map(|b| ("beta", ParamValue::Real(*b)))
            .collect();
        let got = c.call(&inputs, &params, Reduction::Mean, None).unwrap();
        let mut call = Call::new()
            .backend(Backend::Interp)
            .input("labels", Array::real(vec![5], labels.to_vec()))
            .input("logits", Array::real(vec![5], logits.to_vec()))
            .reduction(Reduction::Mean)
            .grad("logits");
        if let Some(b) = beta {
            call = call.param("beta", ParamValue::Real(b));
        }
        let want = lib.call("balanced_sigmoid_cross_entropy", &call).unwrap();
        assert!(close(want.value.to_f64()[0], got.value.to_f64()[0], 1e-12));
        for (a, b) in want.grads[0].1.to_f64().iter().zip(got.grads[0].1.to_f64()) {
            assert!(close(*a, b, 1e-12), "beta {beta:?}: {a} vs {b}");
        }
    }
}

/// Closed reductions over copies of one index are one node on the finished program, and the
/// ones two stages read are computed once before them: RMSE's `max(i: |e|)` and `mean(i: z²)`
/// (the gradient's renamed copies) no longer run twice; both backends agree on it, and on a
/// closed logsumexp over a table, which reads a table not yet filled at the kernel's start
/// (so it is not computed up there: found by `generated_programs_agree`).
#[test]
fn renamed_closed_reductions_are_computed_once() {
    let src = "loss g(x[i], y[i]) -> [i] {
                   let yy[j: I] = y[j];
                   x[i] - logsumexp(j: yy[j]) + max(j: x[j])
               }";
    let lib = Library::from_source("g.loss", src).unwrap();
    for dtype in [DType::F32, DType::F64] {
        for wrt in ["x", "y"] {
            let call = Call::new()
                .backend(Backend::Interp)
                .input("x", Array::real(vec![3], vec![1.0, 2.0, 3.0]))
                .input("y", Array::real(vec![3], vec![0.5, 1.0, 2.0]))
                .dtype(dtype)
                .grad(wrt);
            let want = lib.call("g", &call).unwrap();
            let mut jit = call.clone();
            jit.backend = Backend::Jit;
            let got = lib.call("g", &jit).unwrap();
            let (p, q) = (want.value.to_f64(), got.value.to_f64());
            assert!(
                p.iter().zip(&q).all(|(u, v)| close(*u, *v, 1e-6)),
                "{p:?} vs {q:?}"
            );
            let (p, q) = (want.grads[0].1.to_f64(), got.grads[0].1.to_f64());
            assert!(
                p.iter().zip(&q).all(|(u, v)| close(*u, *v, 1e-6)),
                "d/d{wrt}: {p:?} vs {q:?}"
            );
        }
    }
    // RMSE's finished program (mean, gradient): one maximum and one mean node reachable,
    // where the gradient's renamed copies made two of each.
    let lib = Library::with_stdlib().unwrap();
    let p = lib.loss("root_mean_squared_error").unwrap();
    let q = lossc::ir::with_reduction(p, lossc::runtime::Reduction::Mean, false);
    let q = lossc::opt::simplify(&q);
    let wrt = [q.input("predictions").unwrap()];
    let q = lossc::opt::simplify(&lossc::grad::differentiate(&q, &wrt).unwrap());
    let q = lossc::opt::merge_bounds(&q);
    let mut roots: Vec<lossc::ir::ExprId> = vec![q.output.body];
    for pass in &q.passes {
        for c in &pass.contributions {
            roots.push(c.value);
            roots.extend(c.guards.iter().copied());
        }
    }
    let count = |red: lossc::ir::Red| {
        let n = std::cell::Cell::new(0);
        q.pool.reaches(&roots, |_, x| {
            if matches!(x, lossc::ir::Expr::Reduce(r, ..) if *r == red) {
                n.set(n.get() + 1);
            }
            false
        });
        n.get()
    };
    assert_eq!(count(lossc::ir::Red::Max), 1, "maxima");
    assert_eq!(count(lossc::ir::Red::Mean), 1, "means");
}

/// Frames past a sequence's logit length are padding and are never read (TensorFlow's CTC test
/// pads with NaN and asserts a zero gradient there): NaN or ±inf padding gives the value and
/// gradient of zero padding bit for bit, and a gradient exactly 0 on every padded frame, on
/// both backends in f32 and f64. Ten sequences of different lengths (one of no frames) so
/// the recurrences also run lane-wise.
#[test]
fn ctc_padded_frames_are_never_read() {
    let lib = Library::with_stdlib().unwrap();
    let (b, t, k, s) = (10usize, 8usize, 5usize, 3usize);
    let logit_lengths: Vec<i64> = vec![8, 5, 3, 8, 1, 6, 2, 7, 4, 0];
    let label_lengths: Vec<i64> = vec![3, 3, 2, 1, 1, 3, 1, 2, 2, 0];
    let labels: Vec<i64> = (0..b * s).map(|i| 1 + (i % (k - 1)) as i64).collect();
    let mut rng = Rng(7);
    let base: Vec<f64> = (0..b * t * k).map(|_| rng.next() * 4.0 - 2.0).collect();
    let padded = |bi: usize, ti: usize| ti as i64 >= logit_lengths[bi];
    let with_pad = |pad: f64| -> Vec<f64> {
        let mut v = base.clone();
        for (cell, x) in v.iter_mut().enumerate() {
            if padded(cell / (t * k), cell / k % t) {
                *x = pad;
            }
        }
        v
    };
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let mut failures = Vec::new();
    for dtype in [DType::F64, DType::F32] {
        for reduction in [Reduction::Mean, Reduction::None] {
            for backend in [Backend::Interp, Backend::Jit] {
                let run = |pad: f64| {
                    let mut call = Call::new()
                        .input("labels", Array::int(vec![b, s], labels.clone()))
                        .input("logits", Array::real(vec![b, t, k], with_pad(pad)))
                        .input("label_lengths", Array::int(vec![b], label_lengths.clone()))
                        .input("logit_lengths", Array::int(vec![b], logit_lengths.clone()))
                        .reduction(reduction)
                        .dtype(dtype)
                        .grad("logits");
                    call.backend = backend;
                    let out = lib.call("ctc_loss", &call).unwrap();
                    (out.value.to_f64(), out.grads[0].1.to_f64())
                };
                let (v0, g0) = run(0.0);
                let what = format!("{dtype:?} {reduction:?} {backend:?}");
                assert!(v0.iter().all(|x| x.is_finite()), "{what}: {v0:?}");
                for pad in [0.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                    let (v, g) = run(pad);
                    if bits(&v) != bits(&v0) {
                        failures.push(format!("{what} pad {pad}: value {v:?} vs {v0:?}"));
                    }
                    if bits(&g) != bits(&g0) {
                        failures.push(format!("{what} pad {pad}: gradient differs"));
                    }
                    for (cell, x) in g.iter().enumerate() {
                        if padded(cell / (t * k), cell / k % t) && x.to_bits() != 0 {
                            failures.push(format!("{what} pad {pad}: grad[{cell}] = {x}"));
                            break;
                        }
                    }
                }
            }
            // and the backends agree on NaN padding
            let call = Call::new()
                .input("labels", Array::int(vec![b, s], labels.clone()))
                .input("logits", Array::real(vec![b, t, k], with_pad(f64::NAN)))
                .input("label_lengths", Array::int(vec![b], label_lengths.clone()))
                .input("logit_lengths", Array::int(vec![b], logit_lengths.clone()))
                .reduction(reduction)
                .dtype(dtype)
                .grad("logits");
            let rtol = if dtype == DType::F64 { 1e-12 } else { 2e-4 };
            compare(
                "ctc nan padding",
                &lib,
                "ctc_loss",
                &call,
                rtol,
                &mut failures,
            );
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Sigmoid cross-entropy forms keep their relative accuracy in f32 where a confident correct
/// prediction makes them tiny: focal loss's `softplus(x) - x y` at x = 12.8, y = 1 lost 3% of
/// the value, and from x = 14.6 gave 0 (its gradient `σ(x) - y` too). Over x in [-30, 30] and hard
/// labels, the f32 value and gradient (both backends) are within 1e-5 relative of the f64
/// interpreter's; with a soft label the value too (its gradient crosses 0, where relative error
/// means nothing).
#[test]
fn sigmoid_losses_keep_relative_accuracy_in_f32() {
    let lib = Library::with_stdlib().unwrap();
    let n = 1201;
    let xs: Vec<f64> = (0..n)
        .map(|i| (-30.0 + 60.0 * i as f64 / (n - 1) as f64) as f32 as f64)
        .collect();
    let mut failures = Vec::new();
    for loss in [
        "focal_loss",
        "sigmoid_cross_entropy",
        "balanced_sigmoid_cross_entropy",
    ] {
        for y in [0.0, 1.0, 0.3] {
            let call = |dtype: DType, backend: Backend| {
                let mut c = Call::new()
                    .input("labels", Array::real(vec![n], vec![y; n]))
                    .input("logits", Array::real(vec![n], xs.clone()))
                    .dtype(dtype)
                    .grad("logits");
                if loss == "balanced_sigmoid_cross_entropy" {
                    c = c.param("beta", 0.25);
                }
                c.backend = backend;
                let out = lib.call(loss, &c).unwrap();
                (out.value.to_f64(), out.grads[0].1.to_f64())
            };
            let (rv, rg) = call(DType::F64, Backend::Interp);
            for backend in [Backend::Interp, Backend::Jit] {
                let (v, g) = call(DType::F32, backend);
                let mut pairs = vec![("value", &v, &rv)];
                if y != 0.3 {
                    pairs.push(("grad", &g, &rg));
                }
                for (what, got, want) in pairs {
                    for (j, (a, b)) in got.iter().zip(want.iter()).enumerate() {
                        // (below f32's normal range relative accuracy is not expected)
                        if b.abs() < 1e-37 {
                            continue;
                        }
                        // (NaN fails too)
                        if (a - b).abs() > 1e-5 * b.abs() || a.is_nan() {
                            failures.push(format!(
                                "{loss} y={y} {backend:?} {what} at x={}: f32 {a} f64 {b}",
                                xs[j]
                            ));
                            break;
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The softmax cross-entropies at confident correct predictions (margins 0..30 between the
/// labelled logit and the others): values within 1e-5 relative in f32, 1e-13 in f64, on both backends,
/// with and without a gradient (the logsumexp split two ways: `lse_exp` tables or not).
/// `lse - x_y` with `lse = max + log(1 + tiny)` rounded the tiny part away (3.6% off at
/// logits [14.8, 0, 0.5], 0 from a margin of about 17); the log-sum is now log1p of the
/// non-maximal terms' sum. (The gradient's `softmax - 1` at the label still cancels.)
#[test]
fn softmax_losses_keep_relative_accuracy_in_f32() {
    let lib = Library::with_stdlib().unwrap();
    let n = 301;
    let c = 3;
    let mut logits = Vec::new();
    for i in 0..n {
        let m = (30.0 * i as f64 / (n - 1) as f64) as f32 as f64;
        logits.extend([m, 0.0, 0.5]);
    }
    let onehot: Vec<f64> = (0..n).flat_map(|_| [1.0, 0.0, 0.0]).collect();
    let mut failures = Vec::new();
    for loss in ["softmax_cross_entropy", "sparse_softmax_cross_entropy"] {
        let call = |dtype: DType, backend: Backend, grad: bool| {
            let labels = if loss == "softmax_cross_entropy" {
                Array::real(vec![n, c], onehot.clone())
            } else {
                Array::int(vec![n], vec![0; n])
            };
            let mut k = Call::new()
                .input("labels", labels)
                .input("logits", Array::real(vec![n, c], logits.clone()))
                .dtype(dtype);
            if grad {
                k = k.grad("logits");
            }
            k.backend = backend;
            lib.call(loss, &k).unwrap().value.to_f64()
        };
        // -log_softmax of [m, 0, 0.5] at m: log1p(e^-m + e^(0.5 - m)), to about an ulp in f64
        let want: Vec<f64> = (0..n)
            .map(|j| {
                let m = logits[3 * j];
                ((-m).exp() + (0.5 - m).exp()).ln_1p()
            })
            .collect();
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-13)] {
            for backend in [Backend::Interp, Backend::Jit] {
                for grad in [false, true] {
                    let got = call(dtype, backend, grad);
                    for (j, (a, b)) in got.iter().zip(want.iter()).enumerate() {
                        // (NaN fails too)
                        if (a - b).abs() > tol * b.abs() || a.is_nan() {
                            failures.push(format!(
                                "{loss} {dtype:?} {backend:?} (grad: {grad}) at margin {}: {a}, want {b}",
                                logits[3 * j]
                            ));
                            break;
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// `native::run_with_grads`, safe and public, checks what it is given before the kernel runs:
/// extents (one per index, literal and computed ones as the program makes them), parameters
/// (count and type) and inputs (count, element type, length). Each mismatch is an `Error`;
/// an empty `Env` used to make the kernel read past its buffers (SIGSEGV).
#[test]
fn native_runs_check_extents_params_and_inputs() {
    use lossc::interp::{Env, InputData, Value};
    use lossc::runtime::native;
    let lib = Library::from_source(
        "t.loss",
        "loss f(x[n], b[n, 4]; k: int = 2) -> [n] {\n    let t[u: k + 1] = real(u);\n    x[n] + b[n, 3] + sum(u: t[u])\n}",
    )
    .unwrap();
    let p = lib.loss("f").unwrap().clone();
    let n = 3usize;
    let ext_of = |k: i64, fixed: i64| -> Vec<i64> {
        p.indices
            .iter()
            .map(|ix| match ix.name.as_str() {
                "n" => n as i64,
                "u" => k + 1,
                _ => fixed,
            })
            .collect()
    };
    let x = vec![1.0, 2.0, 3.0];
    let b: Vec<f64> = (0..n * 4).map(|v| v as f64).collect();
    let ints: Vec<i64> = vec![1, 2, 3];
    let env = |extents: Vec<i64>, inputs: Vec<InputData<'static>>, params: Vec<Value>| Env {
        f32: false,
        extents,
        inputs,
        params,
    };
    // (leaked so the closures above can hand out 'static slices)
    let x: &'static [f64] = Box::leak(x.into_boxed_slice());
    let b: &'static [f64] = Box::leak(b.into_boxed_slice());
    let ints: &'static [i64] = Box::leak(ints.into_boxed_slice());
    let good = env(
        ext_of(2, 4),
        vec![InputData::Real(x), InputData::Real(b)],
        vec![Value::Int(2)],
    );
    let (v, _) = native::run_with_grads(&p, &good).unwrap();
    let (w, _) = lossc::interp::run_with_grads(&p, &good).unwrap();
    assert_eq!(v, w);
    assert_eq!(v, vec![1.0 + 3.0 + 3.0, 2.0 + 7.0 + 3.0, 3.0 + 11.0 + 3.0]);
    let bad: Vec<(&str, Env)> = vec![
        ("empty", env(vec![], vec![], vec![])),
        (
            "no parameters",
            env(
                ext_of(2, 4),
                vec![InputData::Real(x), InputData::Real(b)],
                vec![],
            ),
        ),
        (
            "a real for an int parameter",
            env(
                ext_of(2, 4),
                vec![InputData::Real(x), InputData::Real(b)],
                vec![Value::Real(2.0)],
            ),
        ),
        (
            "a computed extent past its value",
            env(
                ext_of(9, 4),
                vec![InputData::Real(x), InputData::Real(b)],
                vec![Value::Int(2)],
            ),
        ),
        (
            "a literal extent changed",
            env(
                ext_of(2, 1),
                vec![InputData::Real(x), InputData::Real(&b[..n])],
                vec![Value::Int(2)],
            ),
        ),
        (
            "a short input",
            env(
                ext_of(2, 4),
                vec![InputData::Real(x), InputData::Real(&b[..5])],
                vec![Value::Int(2)],
            ),
        ),
        (
            "ints for a real input",
            env(
                ext_of(2, 4),
                vec![InputData::Int(ints), InputData::Real(b)],
                vec![Value::Int(2)],
            ),
        ),
        (
            "an input missing",
            env(ext_of(2, 4), vec![InputData::Real(x)], vec![Value::Int(2)]),
        ),
        (
            "a negative extent",
            env(
                vec![-1; p.indices.len()],
                vec![InputData::Real(x), InputData::Real(b)],
                vec![Value::Int(2)],
            ),
        ),
    ];
    for (what, e) in &bad {
        for f32 in [false, true] {
            let e = Env {
                f32,
                extents: e.extents.clone(),
                inputs: e.inputs.clone(),
                params: e.params.clone(),
            };
            assert!(
                native::run_with_grads(&p, &e).is_err(),
                "{what} (f32 {f32}) was accepted"
            );
        }
    }
}

/// Caller buffers of the wrong length, count or precision are errors from the compiled path,
/// on one kernel call and in row blocks (a batch long enough to be split), before anything
/// is written past them.
#[test]
fn compiled_buffer_mismatches_are_errors() {
    let lib = Library::with_stdlib().unwrap();
    for threads in [1, 2] {
        let c = lib
            .compile(
                "focal_loss",
                Options::new()
                    .dtype(DType::F32)
                    .grad("logits")
                    .threads(threads),
            )
            .unwrap();
        for n in [7usize, 200_000] {
            let labels: Vec<f32> = (0..n).map(|i| (i % 2) as f32).collect();
            let logits: Vec<f32> = (0..n).map(|i| (i % 5) as f32 - 2.0).collect();
            let shape = [n];
            let inputs = [
                ("labels", View::f32(&shape, &labels)),
                ("logits", View::f32(&shape, &logits)),
            ];
            let call = |r: Reduction, v: &mut [f32], g: &mut [&mut [f32]]| {
                c.call_into(&inputs, &[], r, None, v, g)
            };
            let mut ok_v = vec![0f32; n];
            let mut ok_g = vec![0f32; n];
            call(Reduction::None, &mut ok_v, &mut [&mut ok_g]).unwrap();
            for (vlen, glen, ngrads) in [
                (n - 1, n, 1),
                (n + 1, n, 1),
                (2 * n, n, 1),
                (0, n, 1),
                (n, n - 1, 1),
                (n, n + 1, 1),
                (n, 2 * n, 1),
                (n, n, 0),
                (n, n, 2),
            ] {
                let mut v = vec![0f32; vlen];
                let mut g1 = vec![0f32; glen];
                let mut g2 = vec![0f32; glen];
                let mut gs: Vec<&mut [f32]> = vec![&mut g1, &mut g2];
                gs.truncate(ngrads);
                let e = call(Reduction::None, &mut v, &mut gs);
                assert!(
                    e.is_err(),
                    "n {n} threads {threads}: value {vlen}, {ngrads} grads of {glen} accepted"
                );
                let e = e.unwrap_err();
                assert_eq!(e.kind, lossc::diag::ErrorKind::Shape, "{}", e.message());
            }
            // Reduced: one value cell.
            let mut v2 = [0f32; 2];
            assert!(call(Reduction::Mean, &mut v2, &mut [&mut ok_g]).is_err());
            // f64 buffers for an f32 kernel.
            let mut v64 = vec![0f64; n];
            let mut g64 = vec![0f64; n];
            let e = c
                .call_into(
                    &inputs,
                    &[],
                    Reduction::None,
                    None,
                    &mut v64,
                    &mut [&mut g64],
                )
                .unwrap_err();
            assert_eq!(e.kind, lossc::diag::ErrorKind::Type, "{}", e.message());
        }
    }
}

/// The JIT's range errors say at which cell, as the interpreter's do (the message is the
/// interpreter's, found on the error path only), through `Library::call` and compiled losses.
#[test]
fn jit_range_errors_name_the_cell() {
    let lib = Library::with_stdlib().unwrap();
    let labels = vec![2i64, 0, 3, 1];
    let logits: Vec<f64> = (0..12).map(|v| v as f64 / 7.0).collect();
    let call = Call::new()
        .input("labels", Array::int(vec![4], labels.clone()))
        .input("logits", Array::real(vec![4, 3], logits.clone()))
        .grad("logits");
    let want = "`logits` read at 3 along `c` (dimension 1), whose valid range is 0..3 (at n = 2)";
    let mut msgs = vec![];
    for b in [Backend::Interp, Backend::Jit] {
        let e = lib
            .call("sparse_softmax_cross_entropy", &call.clone().backend(b))
            .unwrap_err();
        msgs.push(e.message());
    }
    let c = lib
        .compile(
            "sparse_softmax_cross_entropy",
            Options::new().dtype(DType::F64).grad("logits"),
        )
        .unwrap();
    let (sy, sl) = ([4usize], [4usize, 3]);
    let inputs = [
        ("labels", View::i64(&sy, &labels)),
        ("logits", View::f64(&sl, &logits)),
    ];
    msgs.push(
        c.call(&inputs, &[], Reduction::Mean, None)
            .unwrap_err()
            .message(),
    );
    for m in &msgs {
        assert!(m.contains(want), "{m}");
    }
}

/// The fast path is the default: `Call` runs the JIT, and a compiled loss specialises its
/// parameters (the defaults baked in; another value compiles a variant of its own, cached),
/// unless `Options::vary` keeps one an argument. Every way gives the interpreter's numbers.
#[test]
fn defaults_take_the_fast_path() {
    assert_eq!(Call::new().backend, Backend::Jit);
    let lib = Library::with_stdlib().unwrap();
    let n = 101;
    let y: Vec<f64> = (0..n).map(|i| (i % 3 == 0) as i64 as f64).collect();
    let x: Vec<f64> = (0..n).map(|i| (i as f64 - 50.0) / 9.0).collect();
    let spec = lib
        .compile(
            "focal_loss",
            Options::new().dtype(DType::F64).grad("logits"),
        )
        .unwrap();
    let varied = lib
        .compile(
            "focal_loss",
            Options::new()
                .dtype(DType::F64)
                .grad("logits")
                .vary("gamma")
                .vary("alpha"),
        )
        .unwrap();
    // Specialised: no parameter is read by the folded program; varied: `gamma` still is.
    let reads = |p: &lossc::ir::Program, name: &str| {
        let id = p.param(name).unwrap();
        p.pool.reaches(
            &[p.output.body],
            |_, e| matches!(e, lossc::ir::Expr::Param(q) if *q == id),
        )
    };
    assert!(!reads(spec.program(), "gamma"));
    assert!(reads(varied.program(), "gamma"));
    assert!(lib
        .compile("focal_loss", Options::new().vary("nonesuch"))
        .is_err());
    let shape = [n];
    let inputs = [
        ("labels", View::f64(&shape, &y)),
        ("logits", View::f64(&shape, &x)),
    ];
    for gamma in [None, Some(0.5), Some(3.0), Some(0.5), None] {
        let params: Vec<(&str, ParamValue)> = gamma
            .map(|g| vec![("gamma", ParamValue::Real(g))])
            .unwrap_or_default();
        let mut call = Call::new()
            .backend(Backend::Interp)
            .input("labels", Array::real(vec![n], y.clone()))
            .input("logits", Array::real(vec![n], x.clone()))
            .reduction(Reduction::Mean)
            .grad("logits");
        if let Some(g) = gamma {
            call = call.param("gamma", g);
        }
        let want = lib.call("focal_loss", &call).unwrap();
        let jit = lib
            .call("focal_loss", &call.clone().backend(Backend::Jit))
            .unwrap();
        let a = spec.call(&inputs, &params, Reduction::Mean, None).unwrap();
        let b = varied
            .call(&inputs, &params, Reduction::Mean, None)
            .unwrap();
        for got in [&jit, &a, &b] {
            let (v, w) = (got.value.to_f64()[0], want.value.to_f64()[0]);
            assert!(close(v, w, 1e-12), "gamma {gamma:?}: {v} vs {w}");
            for (p, q) in got.grads[0].1.to_f64().iter().zip(want.grads[0].1.to_f64()) {
                assert!(close(*p, q, 1e-12), "gamma {gamma:?}: {p} vs {q}");
            }
        }
    }
}

/// In row blocks, the gradient of an input without the batch index (summed over the blocks
/// into the caller's buffer) must fit its buffer exactly too (a short one was filled in part).
#[test]
fn blocked_gradients_of_shared_inputs_check_their_buffers() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/linear_softmax.loss");
    let lib = Library::from_file(std::path::Path::new(path)).unwrap();
    let c = lib
        .compile(
            "linear_softmax",
            Options::new().dtype(DType::F32).grad("w").grad("b"),
        )
        .unwrap();
    let (n, d, k) = (40_000usize, 4usize, 3usize);
    let labels: Vec<i64> = (0..n).map(|i| (i % k) as i64).collect();
    let x: Vec<f32> = (0..n * d).map(|i| ((i % 7) as f32 - 3.0) / 4.0).collect();
    let w = vec![0.1f32; d * k];
    let b = vec![0f32; k];
    let (sl, sx, sw, sb) = ([n], [n, d], [d, k], [k]);
    let inputs = [
        ("labels", View::i64(&sl, &labels)),
        ("x", View::f32(&sx, &x)),
        ("w", View::f32(&sw, &w)),
        ("b", View::f32(&sb, &b)),
    ];
    let mut v = [0f32; 1];
    let (mut gw, mut gb) = (vec![0f32; d * k], vec![0f32; k]);
    c.call_into(
        &inputs,
        &[],
        Reduction::Mean,
        None,
        &mut v,
        &mut [&mut gw, &mut gb],
    )
    .unwrap();
    for (lw, lb) in [(d * k - 1, k), (d * k, k + 1), (d * k + 1, k)] {
        let (mut gw, mut gb) = (vec![0f32; lw], vec![0f32; lb]);
        let e = c
            .call_into(
                &inputs,
                &[],
                Reduction::Mean,
                None,
                &mut v,
                &mut [&mut gw, &mut gb],
            )
            .unwrap_err();
        assert_eq!(e.kind, lossc::diag::ErrorKind::Shape, "{}", e.message());
    }
}

/// A parameter given as NaN runs the variant specialised for NaN (it was refused as "baked
/// as NaN" since NaN != NaN), through `call_into` and `Library::call`, as the interpreter runs it.
#[test]
fn nan_parameter_values_run_their_specialisation() {
    let lib = Library::from_source("t.loss", "loss g(x[i]; p = 1.0) -> [i] { x[i] * p }").unwrap();
    let c = lib.compile("g", Options::new().dtype(DType::F64)).unwrap();
    let x = [1.0f64, 2.0];
    let mut v = [0f64; 2];
    c.call_into(
        &[("x", View::f64(&[2], &x))],
        &[("p", ParamValue::Real(f64::NAN))],
        Reduction::None,
        None,
        &mut v,
        &mut [],
    )
    .unwrap();
    assert!(v.iter().all(|y| y.is_nan()), "{v:?}");
    for backend in [Backend::Jit, Backend::Interp] {
        let call = Call::new()
            .input("x", Array::real(vec![2], x.to_vec()))
            .param("p", f64::NAN)
            .backend(backend);
        let out = lib.call("g", &call).unwrap();
        let Data::Real(d) = &out.value.data else {
            panic!("a real value")
        };
        assert!(d.iter().all(|y| y.is_nan()), "{backend:?}: {d:?}");
    }
}

/// `Library::call` (the README's recipe) against `lossc bench` and `call_into`, focal_loss f32
/// with the logits' gradient, mean, at 10^5 and 10^6 (a measurement, not a test:
/// `cargo test --release --test jit library_call_speed -- --ignored --nocapture`).
#[test]
#[ignore]
fn library_call_speed() {
    let lib = Library::with_stdlib().unwrap();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for n in [100_000usize, 1_000_000] {
        let labels: Vec<f64> = (0..n).map(|k| (k % 2) as f64).collect();
        let logits: Vec<f64> = (0..n)
            .map(|k| ((k * 7919) % 1000) as f64 / 250.0 - 2.0)
            .collect();
        let call = Call::new()
            .input("labels", Array::real(vec![n], labels.clone()))
            .input("logits", Array::real(vec![n], logits.clone()))
            .reduction(Reduction::Mean)
            .dtype(DType::F32)
            .grad("logits");
        let reps = 20;
        let t =
            lossc::runtime::time_it(|| lib.call("focal_loss", &call).map(|_| ()), 2, reps).unwrap();
        let lib_ms = median(t) * 1e3;
        let call15 = call.clone().param("gamma", 1.5);
        let t = lossc::runtime::time_it(|| lib.call("focal_loss", &call15).map(|_| ()), 2, reps)
            .unwrap();
        let lib15_ms = median(t) * 1e3;
        let focal = lib
            .compile(
                "focal_loss",
                Options::new().dtype(DType::F32).grad("logits"),
            )
            .unwrap();
        let (l32, x32): (Vec<f32>, Vec<f32>) = (
            labels.iter().map(|x| *x as f32).collect(),
            logits.iter().map(|x| *x as f32).collect(),
        );
        let (mut value, mut grad) = ([0f32; 1], vec![0f32; n]);
        let shape = [n];
        let inputs = [
            ("labels", View::f32(&shape, &l32)),
            ("logits", View::f32(&shape, &x32)),
        ];
        let t = lossc::runtime::time_it(
            || {
                focal.call_into(
                    &inputs,
                    &[],
                    Reduction::Mean,
                    None,
                    &mut value,
                    &mut [&mut grad],
                )
            },
            2,
            reps,
        )
        .unwrap();
        let into_ms = median(t) * 1e3;
        // the floor of any call taking and returning f64 arrays: the inputs converted to f32,
        // the f32 gradient returned as f64
        let t = lossc::runtime::time_it(
            || {
                let a: Vec<f32> = labels.iter().map(|x| *x as f32).collect();
                let b: Vec<f32> = logits.iter().map(|x| *x as f32).collect();
                let g: Vec<f64> = b.iter().map(|x| *x as f64).collect();
                assert_eq!(a.len() + g.len(), 2 * n);
                Ok(())
            },
            2,
            reps,
        )
        .unwrap();
        let copy_ms = median(t) * 1e3;
        let bench = std::process::Command::new(env!("CARGO_BIN_EXE_lossc"))
            .args([
                "bench",
                "focal_loss",
                "-g",
                "logits",
                "--dims",
                &format!("n={n}"),
            ])
            .output()
            .unwrap();
        println!(
            "n = {n}: Library::call {lib_ms:.3} ms (gamma = 1.5: {lib15_ms:.3} ms), call_into {into_ms:.3} ms, conversions alone {copy_ms:.3} ms; lossc bench: {}",
            String::from_utf8_lossy(&bench.stdout).trim()
        );
    }
}
