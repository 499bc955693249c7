//! Gradients against central finite differences: every differentiable input of every
//! reference case, at the case's own point and at randomly perturbed points (f64).
//! Also the structural rules on small hand-written programs.

use lossc::cases;
use lossc::runtime::{Array, Backend, Call, DType, Data, Library, Reduction};
use std::path::PathBuf;

#[path = "gen/mod.rs"]
mod gen;
#[path = "grad/roundtrip.rs"]
mod roundtrip;

/// A tiny deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn value_of(lib: &Library, name: &str, call: &Call) -> f64 {
    let mut c = call.clone();
    c.grad.clear();
    // The gradient of `none` is the gradient of the sum of the outputs.
    let out = lib.call(name, &c).unwrap();
    out.value.to_f64().iter().sum()
}

/// Max relative disagreement between the analytic gradient and central differences.
fn check_call(lib: &Library, name: &str, call: &Call, what: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let out = match lib.call(name, call) {
        Ok(o) => o,
        Err(e) => return vec![format!("{what}: {}", e.message())],
    };
    for (input, g) in &out.grads {
        let (k, arr) = call
            .inputs
            .iter()
            .enumerate()
            .find(|(_, (n, _))| n == input)
            .map(|(k, (_, a))| (k, a.clone()))
            .unwrap();
        let base = arr.to_f64();
        let analytic = g.to_f64();
        for j in 0..base.len() {
            let h = 1e-6 * base[j].abs().max(1.0);
            let mut plus = call.clone();
            let mut minus = call.clone();
            let mut vp = base.clone();
            vp[j] += h;
            let mut vm = base.clone();
            vm[j] -= h;
            plus.inputs[k].1 = Array {
                shape: arr.shape.clone(),
                data: Data::Real(vp),
            };
            minus.inputs[k].1 = Array {
                shape: arr.shape.clone(),
                data: Data::Real(vm),
            };
            let fd = (value_of(lib, name, &plus) - value_of(lib, name, &minus)) / (2.0 * h);
            let a = analytic[j];
            if !fd.is_finite() && !a.is_finite() {
                continue;
            }
            let tol = 1e-5 * (1.0 + fd.abs().max(a.abs()));
            if (a - fd).abs() > tol || a.is_nan() {
                failures.push(format!(
                    "{what}: d/d{input}[{j}] analytic {a:e} vs finite difference {fd:e}"
                ));
            }
        }
    }
    failures
}

fn case_files() -> Vec<PathBuf> {
    cases::collect(&[PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/cases"
    ))])
    .unwrap()
}

#[test]
fn gradients_match_finite_differences_on_every_case() {
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut rng = Rng(0x9e3779b97f4a7c15);
    for f in case_files() {
        let case = cases::load(&f).unwrap();
        if case.expected_error().is_some() {
            continue;
        }
        let mut call = case.call(Backend::Interp).unwrap();
        // (in f64: f32 rounding would swamp the differences; f32 cases are checked against
        // their references by the case runner)
        call.dtype = DType::F64;
        if call.grad.is_empty() {
            continue;
        }
        let (lib, name) = lossc::cases::loss_library(&case).unwrap();
        if f.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("sweep_"))
        {
            // The generated sweep (edge values: clip bounds, exact margins, 1e-9 probabilities,
            // 1e200 errors, a stop_grad β) sits where central differences do not apply; its
            // gradients are checked against torch autograd (float64) by the case runner.
            continue;
        }
        if name == "ciou_loss" {
            // Its α is stop_grad (as torchvision's): the gradient is deliberately not the
            // derivative of the value, so finite differences do not apply. The reference
            // cases check it against torchvision.
            continue;
        }
        checked += 1;
        failures.extend(check_call(&lib, &name, &call, &case.name));
        // Perturbed points: every differentiated input moved by up to ±5% (+ a little).
        for round in 0..2 {
            let mut c = call.clone();
            for (n, a) in c.inputs.iter_mut() {
                if call.grad.contains(n) {
                    if let Data::Real(v) = &mut a.data {
                        for x in v.iter_mut() {
                            *x += (rng.next() - 0.5) * (0.1 * x.abs() + 0.02);
                        }
                    }
                }
            }
            failures.extend(check_call(
                &lib,
                &name,
                &c,
                &format!("{} (perturbed {round})", case.name),
            ));
        }
    }
    assert!(checked > 50, "only {checked} cases with gradients");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn lib(src: &str) -> Library {
    Library::from_source("t.loss", src).unwrap_or_else(|e| panic!("{}", e.message()))
}

fn grad(l: &Library, name: &str, call: Call, wrt: &str) -> Vec<f64> {
    let mut c = call;
    c.grad = vec![wrt.to_string()];
    let out = l
        .call(name, &c)
        .unwrap_or_else(|e| panic!("{}", e.message()));
    out.grads
        .into_iter()
        .find(|(n, _)| n == wrt)
        .unwrap()
        .1
        .to_f64()
}

fn real(v: &[f64]) -> Array {
    Array::real(vec![v.len()], v.to_vec())
}

#[test]
fn gathers_scatter_add_with_repeated_ids() {
    let l = lib("loss g(ids[n]: int, x[k]) -> [n] { x[ids[n]] * x[ids[n]] }");
    let c = Call::new()
        .backend(Backend::Interp)
        .input("ids", Array::int(vec![3], vec![1, 1, 0]))
        .input("x", real(&[2.0, 3.0]));
    assert_eq!(grad(&l, "g", c, "x"), vec![4.0, 12.0]);
}

#[test]
fn dead_branches_never_reach_the_gradient() {
    // log(0) and 1/0 sit in the branch not taken: the gradient is exactly 0 there, not NaN.
    let l = lib("loss f(x[i]) -> [i] { if x[i] > 0 { log(x[i]) + 1 / x[i] } else { 2 * x[i] } }");
    let g = grad(
        &l,
        "f",
        Call::new()
            .backend(Backend::Interp)
            .input("x", real(&[0.0, -1.0, 2.0])),
        "x",
    );
    assert_eq!(g, vec![2.0, 2.0, 0.25]);
}

/// Issue 24, defect 3: a table's adjoint that is zero because every use of it sat under a
/// failed guard (max's losing side, an `if` not taken) must not multiply its partials, which
/// are inf or NaN there (sqrt' at 0, log at 0): the table gives what the same maths as an
/// alias gives, and what finite differences give. torch's `normalize` is the first variant.
#[test]
fn dead_branches_through_tables_never_reach_the_gradient() {
    // (definition of `nrm` over `m`, the use of `NRM` in each cell; expected d/dz at a zero row)
    let variants: &[(&str, &str, f64)] = &[
        (
            "sqrt(sum(d: z[m, d] ^ 2))",
            "z[m, d] / max(NRM, 0.001)",
            1000.0,
        ),
        (
            "sqrt(sum(d: z[m, d] ^ 2))",
            "if NRM > 0.001 { z[m, d] / NRM } else { z[m, d] / 0.001 }",
            1000.0,
        ),
        (
            "sqrt(sum(d: z[m, d] ^ 2))",
            "z[m, d] / clamp(NRM, 0.001, inf)",
            1000.0,
        ),
        (
            "sqrt(sum(d: z[m, d] ^ 2))",
            "z[m, d] / max(abs(NRM), 0.001)",
            1000.0,
        ),
        (
            "sum(d: z[m, d] ^ 2) ^ 0.5",
            "z[m, d] / max(NRM, 0.001)",
            1000.0,
        ),
        (
            "log(sqrt(sum(d: z[m, d] ^ 2)))",
            "if NRM > -5.0 { z[m, d] * NRM } else { z[m, d] }",
            1.0,
        ),
        (
            "acos(1.0 - sum(d: z[m, d] ^ 2))",
            "if NRM > 0.1 { NRM } else { 2.0 * z[m, d] }",
            2.0,
        ),
        (
            "1.0 / sum(d: z[m, d] ^ 2)",
            "if NRM < 1e6 { z[m, d] * NRM } else { 3.0 * z[m, d] }",
            3.0,
        ),
        (
            "log1p(sqrt(sum(d: z[m, d] ^ 2)) - 1.0)",
            "max(NRM, z[m, d])",
            1.0,
        ),
    ];
    // a zero row, an ordinary one, one below the threshold
    let z = Array::real(vec![3, 2], vec![0.0, 0.0, 0.3, -0.4, 1e-4, 0.0]);
    let mut failures = Vec::new();
    for (def, use_, at_zero) in variants {
        let table = format!(
            "loss f(z[m, d]) -> [] {{ let nrm[m] = {def}; sum(m: sum(d: {})) }}",
            use_.replace("NRM", "nrm[m]")
        );
        let alias = format!(
            "loss f(z[m, d]) -> [] {{ let nrm = {}; sum(m: sum(d: {})) }}",
            def,
            use_.replace("NRM", "nrm")
        );
        let mut got = Vec::new();
        for src in [&table, &alias] {
            let l = lib(src);
            for backend in [Backend::Interp, Backend::Jit] {
                let mut c = Call::new().input("z", z.clone());
                c.backend = backend;
                let g = grad(&l, "f", c.clone(), "z");
                if g[..2] != [*at_zero, *at_zero] {
                    failures.push(format!("{src} ({backend:?}): d/dz at a zero row {g:?}"));
                }
                c.grad = vec!["z".into()];
                failures.extend(check_call(&l, "f", &c, &format!("{src} ({backend:?})")));
                got.push(g);
            }
        }
        for g in &got[1..] {
            for (a, b) in g.iter().zip(&got[0]) {
                if (a - b).abs() > 1e-12 * (1.0 + b.abs()) {
                    failures.push(format!(
                        "{table}: table and alias differ: {g:?} vs {:?}",
                        got[0]
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn kink_conventions() {
    let l = lib("loss a(x[i]) -> [i] { abs(x[i]) }
         loss m(x[i]) -> [] { max(i: x[i]) }
         loss v(x[i]) -> [i] { max(x[i], 1.0) }
         loss c(x[i]) -> [i] { clamp(x[i], 0.0, 1.0) }");
    assert_eq!(
        grad(
            &l,
            "a",
            Call::new()
                .backend(Backend::Interp)
                .input("x", real(&[0.0, -2.0, 3.0])),
            "x"
        ),
        vec![0.0, -1.0, 1.0]
    );
    // ties go to the first arg-max
    assert_eq!(
        grad(
            &l,
            "m",
            Call::new()
                .backend(Backend::Interp)
                .input("x", real(&[1.0, 5.0, 5.0])),
            "x"
        ),
        vec![0.0, 1.0, 0.0]
    );
    assert_eq!(
        grad(
            &l,
            "v",
            Call::new()
                .backend(Backend::Interp)
                .input("x", real(&[1.0, 0.5, 2.0])),
            "x"
        ),
        vec![1.0, 0.0, 1.0]
    );
    // clip bounds pass the gradient
    assert_eq!(
        grad(
            &l,
            "c",
            Call::new()
                .backend(Backend::Interp)
                .input("x", real(&[0.0, 1.0, 1.5, -0.5])),
            "x"
        ),
        vec![1.0, 1.0, 0.0, 0.0]
    );
}

#[test]
fn recurrence_adjoint_runs_in_reverse() {
    // c[t] = 0.5 c[t-1] + x[t]; loss = c[T-1] -> d/dx[t] = 0.5^(T-1-t)
    let l = lib("loss r(x[t]) -> [] { let c[t] pad 0.0 = 0.5 * c[t - 1] + x[t]; c[T - 1] }");
    assert_eq!(
        grad(
            &l,
            "r",
            Call::new()
                .backend(Backend::Interp)
                .input("x", real(&[1.0, 1.0, 1.0, 1.0])),
            "x"
        ),
        vec![0.125, 0.25, 0.5, 1.0]
    );
}

#[test]
fn reductions_and_weights_seed_the_gradient() {
    let l = lib("loss id(x[i]) -> [i] { x[i] * x[i] }");
    let c = Call::new()
        .backend(Backend::Interp)
        .input("x", real(&[1.0, 2.0]))
        .weights(real(&[1.0, 3.0]))
        .reduction(Reduction::WeightedMean);
    assert_eq!(grad(&l, "id", c, "x"), vec![0.5, 3.0]);
    let c = Call::new()
        .backend(Backend::Interp)
        .input("x", real(&[1.0, 2.0]))
        .reduction(Reduction::Mean);
    assert_eq!(grad(&l, "id", c, "x"), vec![1.0, 2.0]);
}

#[test]
fn int_inputs_and_edit_distance_are_not_differentiable() {
    let l = Library::with_stdlib().unwrap();
    let mut c = Call::new()
        .backend(Backend::Interp)
        .input("labels", Array::int(vec![1], vec![0]))
        .input("logits", Array::real(vec![1, 2], vec![0.0, 1.0]));
    c.grad = vec!["labels".into()];
    let e = l.call("sparse_softmax_cross_entropy", &c).unwrap_err();
    assert!(
        e.message().contains("not differentiable"),
        "{}",
        e.message()
    );
}

/// `lossc grad` prints the gradient as a loss; that loss checks and evaluates to the gradient:
/// every reference case (so every stdlib loss), each real input as the target.
#[test]
fn printed_gradients_parse_check_and_agree() {
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut losses = std::collections::BTreeSet::new();
    for f in case_files() {
        let case = cases::load(&f).unwrap();
        if case.expected_error().is_some() {
            continue;
        }
        let mut call = case.call(Backend::Interp).unwrap();
        // (in f64: f32 rounding would swamp the differences; f32 cases are checked against
        // their references by the case runner)
        call.dtype = DType::F64;
        call.grad.clear();
        let (lib, name) = lossc::cases::loss_library(&case).unwrap();
        match roundtrip::round_trip_loss(&lib, &name, &call) {
            Ok(n) => {
                checked += n;
                if n > 0 {
                    losses.insert(name);
                }
            }
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked > 40, "only {checked} printed gradients checked");
    let stdlib = Library::with_stdlib().unwrap();
    for p in stdlib.losses() {
        if p.inputs.iter().any(|i| i.ty == lossc::ir::Ty::Real) {
            assert!(
                losses.contains(&p.name),
                "no printed gradient of {}",
                p.name
            );
        }
    }
}

/// Hand-written losses that reach what the stdlib does not (issue 24's reproductions and
/// their neighbours): a call for each, as `(name, literal)` inputs.
const CUSTOM: &[(&str, &[(&str, &str)])] = &[
    // defect 4: a bare index folded into another range (`m + 0`), a concatenation
    (
        "loss f(a[n, d], b[n, d]) -> [] {
            let z[m: 2 * N, d] = if m < N { a[m + 0, d] } else { b[m - N, d] };
            sum(m: sum(d: z[m, d] ^ 2))
        }",
        &[("a", "[[1, 2], [3, -4]]"), ("b", "[[0.5, 6], [7, 8]]")],
    ),
    (
        "loss f(a[n]) -> [m] { let z[m: N + 1] = if m < N { a[m + 1 - 1] } else { 2.0 }; z[m] * a[0] }",
        &[("a", "[1.5, -2, 3]")],
    ),
    (
        "loss f(a[n, d]) -> [d, n] { let t[d, n] = a[n, d] * a[n + 0, d]; t[d, n] + a[n, d + 0] }",
        &[("a", "[[1, 2, 3], [4, 5, 6]]")],
    ),
    (
        "loss f(a[n], b[k]) -> [] { let z[m: N + K] = if m < N { a[m + 0] } else { b[m - N] }; sum(m: z[m] * real(m)) }",
        &[("a", "[1, 2]"), ("b", "[3, 4, 5]")],
    ),
    // CTC-like: a range by arithmetic read at `u / 2`, offsets into a table over it
    (
        "loss f(x[s], w[v]) -> [] {
            let ext[u: 2 * S + 1] = if u % 2 == 0 { 0.0 } else { x[u / 2] };
            let y[u] = ext[u] * w[u / 2 + 0] + if u >= 2 { ext[u - 2] } else { 0.0 };
            sum(u: y[u] ^ 2)
        }",
        &[("x", "[1, -2, 0.5]"), ("w", "[0.5, 2, -1, 3]")],
    ),
    (
        "loss f(x[t, k]) -> [] {
            let r[t, k] pad 0.0 = x[t, k] * r[t + 1, k] + 1.0;
            sum(k: r[0, k])
        }",
        &[("x", "[[0.5, 1], [2, -1], [0.25, 3]]")],
    ),
    (
        "loss f(x[n]; g: real = 2.0) -> [n] { let h[n] = x[n] ^ g; if x[n] > 0.0 { h[n] } else { -x[n] } }",
        &[("x", "[0, 1.5, -2]")],
    ),
    // printed names: an input named like an extent (`N2`, `D`), scalar inputs' gradients, an
    // uppercase index, renamed indices, a parameter's default from an extent, fixed ranges
    (
        "loss f(x[n], N2) -> [n] { let d2[n] = x[n] * N2; let s = sum(n: d2[n]); d2[n] * s }",
        &[("x", "[1, 2, 3]"), ("N2", "5")],
    ),
    (
        "loss f(x[n], D) -> [n] { let d2[n] = x[n] * D; let s = sum(n: d2[n]); d2[n] * s }",
        &[("x", "[1, 2, 3]"), ("D", "-0.5")],
    ),
    (
        "loss f(x[n], k) -> [n] { let y[m: N + 1] = if m < N { x[m + 0] * k } else { k }; y[n + 1] * y[n + 0] }",
        &[("x", "[1, 2, 3]"), ("k", "1.5")],
    ),
    (
        "loss f(x[T]) -> [] { let y[T] = x[T] ^ 2; sum(T: y[T]) }",
        &[("x", "[1, 2, 3]")],
    ),
    (
        "loss f(x[n]; k: int = N / 2) -> [] { let y[m: k + 1] = x[m + 0] * x[m + 0]; sum(m: y[m]) }",
        &[("x", "[1, 2, 3, 4]")],
    ),
    (
        "loss f(x[n, c]) -> [c] { let t[c, n] = x[n, c] * 2.0; let u[n2: N, c] = t[c, n2] * x[n2, c]; sum(n: u[n, c]) }",
        &[("x", "[[1, 2], [3, 4], [5, -6]]")],
    ),
    (
        "loss f(x[n], y[m]) -> [] { let o[n, m] = x[n] * y[m]; sum(n: max(m: o[n, m])) + sum(m: logsumexp(n: o[n, m])) }",
        &[("x", "[1, -2, 3]"), ("y", "[0.5, 2]")],
    ),
    (
        "loss f(x[n]) -> [] { let z[m: 3] = x[m + 0] + x[2 - m]; sum(m: z[m] ^ 2) }",
        &[("x", "[1, 2, 4]")],
    ),
    (
        "loss f(x[n, d]) -> [n] { let s = sum(d: x[n, d]); let t = max(d: x[n, d] * s); sum(d: x[n, d] * t) }",
        &[("x", "[[1, 2], [3, -4]]")],
    ),
    (
        "loss f(x[t]) -> [] { let r[t] pad 0.0 = x[t] * r[t + 1] + x[t]; sum(t: r[t]) }",
        &[("x", "[0.5, -1, 2]")],
    ),
    // ranges by arithmetic: products, differences, reads at `m / K`, `m % K`
    (
        "loss f(a[n]) -> [] { let z[m: 2 * N] = if m < N { a[m + 0] } else { 0.0 }; sum(m: z[m]) }",
        &[("a", "[1, 2]")],
    ),
    (
        "loss f(a[n], b[k]) -> [] { let z[m: N * K] = a[m / K] * b[m % K]; sum(m: z[m] ^ 2) }",
        &[("a", "[1, 2]"), ("b", "[3, -1, 0.5]")],
    ),
    (
        "loss f(a[n]) -> [] { let z[m: N - 1] = a[m + 1] - a[m + 0]; let w[j: M - 1] = z[j + 1] * z[j + 0]; sum(j: w[j]) }",
        &[("a", "[1, 2, 4, 8, 3]")],
    ),
    (
        "loss f(x[n], weights[n]) -> [n] { x[n] * weights[n] * x[n] }",
        &[("x", "[1, 2, -3]"), ("weights", "[0.5, 0, 2]")],
    ),
    (
        "fn sq(a) = a * a;
        loss f(x[n]; k: int = 1) -> [] { let y[m: N - k] = sq(x[m + k]) - x[m + 0]; sum(m: y[m]) }",
        &[("x", "[1, 2, -3, 4]")],
    ),
    // defect 3: normalize, x / max(||x||, eps), as a table and as an alias, a zero row
    (
        "loss f(z[m, d]) -> [] {
            let nrm[m] = sqrt(sum(d: z[m, d] ^ 2));
            sum(m: sum(d: z[m, d] / max(nrm[m], 1e-12)))
        }",
        &[("z", "[[0, 0], [1, 2]]")],
    ),
    (
        "loss f(z[m, d]) -> [] {
            let nrm = sqrt(sum(d: z[m, d] ^ 2));
            sum(m: sum(d: z[m, d] / max(nrm, 1e-12)))
        }",
        &[("z", "[[0, 0], [1, 2]]")],
    ),
    (
        "loss f(z[m, d]) -> [m, d] {
            let nrm[m] = sum(d: z[m, d] ^ 2) ^ 0.5;
            let l[m] = log(nrm[m]);
            if nrm[m] > 0.0 { z[m, d] * l[m] } else { 0.0 }
        }",
        &[("z", "[[0, 0], [1, 2]]")],
    ),
    // 2-D tables reduced over each index; bool tables read transposed
    (
        "loss f(x[p, c]) -> [c] { let t[p, c] = x[p, c] ^ 2; sum(p: t[p, c]) + max(p: t[p, c]) }",
        &[("x", "[[0.5, 0.1], [0.9, 0.2], [0.0, 0.7]]")],
    ),
    (
        "loss f(x[p, c]) -> [p] { let t[p, c] = exp(x[p, c]); logsumexp(c: t[p, c]) + min(c: t[p, c]) }",
        &[("x", "[[0.5, 0.1], [0.9, 0.2], [0.0, 0.7]]")],
    ),
    (
        "loss f(x[p, c]) -> [c] {
            let big[p, c] = x[p, c] > 0.3;
            sum(p: if big[p, c] { x[p, c] ^ 2 } else { 0.0 })
        }",
        &[("x", "[[0.5, 0.1], [0.9, 0.2], [0.0, 0.7]]")],
    ),
    (
        "loss f(x[p, c]) -> [p] {
            let big[c, p] = x[p, c] > 0.3;
            sum(c: if big[c, p] { log(x[p, c]) } else { x[p, c] })
        }",
        &[("x", "[[0.5, 0.1], [0.9, 0.2], [0.0, 0.7]]")],
    ),
    // defect 2: a bool table defined after a reduction table
    (
        "loss f(target[n]: int, logits[n, c]) -> [] {
            let lse[n] = logsumexp(c: logits[n, c]);
            let keep[n] = target[n] != -100;
            let row[n] = if keep[n] { lse[n] - sum(c: logits[n, c]) } else { 0.0 };
            sum(n: row[n])
        }",
        &[("target", "[1, -100, 0]"), ("logits", "[[1, 2], [3, 4], [-1, 0.5]]")],
    ),
    // recurrences, forward and over two indices; gathers through an int table
    (
        "loss f(x[t]) -> [] { let c[t] pad 0.0 = 0.5 * c[t - 1] + x[t] * x[t]; c[T - 1] }",
        &[("x", "[1, -2, 3, 0.5]")],
    ),
    (
        "loss f(x[t, u]) -> [] {
            let a[t, u] pad -inf = if t == 0 && u == 0 { x[t, u] }
                else { logsumexp(a[t - 1, u], a[t, u - 1]) + x[t, u] };
            a[T - 1, U - 1]
        }",
        &[("x", "[[0.1, 0.2, 0.3], [0.4, -0.5, 0.6]]")],
    ),
    (
        "loss f(ids[n]: int, x[k]) -> [n] { let j[n] = ids[n] + 0; x[j[n]] * x[ids[n]] }",
        &[("ids", "[1, 1, 0]"), ("x", "[2, 3]")],
    ),
    // table names the gradient's passes also make (found by the generated programs, seeds
    // 397, 1902, 4253): a table the source names `t_grad` beside `t`'s adjoint, and a
    // recurrence branch with two `logsumexp`s, each with its `r_share0`
    (
        "loss f(x[i]) -> [i] { let t[i] = x[i] ^ 2; let t_grad[i] = t[i] + x[i]; t_grad[i] * x[i] }",
        &[("x", "[1, -2, 0.5]")],
    ),
    (
        "loss f(m[i, j]) -> [] {
            let r[i, j] pad 0.0 = logsumexp(r[i - 1, j], r[i - 1, j + 1]) + logsumexp(m[i, j], 0.5);
            sum(j: r[I - 1, j])
        }",
        &[("m", "[[0.5, -1, 2], [1, 0, -0.5]]")],
    ),
    // a gather whose index reads out of range where its guard fails (i = 0): the pulled
    // gradient tests the guard before the index (found by the generated programs, seeds
    // 9962, 10035, 11096)
    (
        "loss f(x[k], m[i]) -> [] { sum(i: if m[i] > 0.0 { x[if m[i - 1] > 0.0 { 0 } else { 1 }] ^ 2 } else { 0.0 }) }",
        &[("x", "[1.5, -2]"), ("m", "[-1, 2, 0.5, -3]")],
    ),
    // the same maths as an alias and as a table, softmax
    (
        "loss f(x[n, c]) -> [n, c] { let lse = logsumexp(c: x[n, c]); exp(x[n, c] - lse) }",
        &[("x", "[[1, 2, 3], [0, 0, 0]]")],
    ),
    (
        "loss f(x[n, c]) -> [n, c] { let lse[n] = logsumexp(c: x[n, c]); exp(x[n, c] - lse[n]) }",
        &[("x", "[[1, 2, 3], [0, 0, 0]]")],
    ),
];

#[test]
fn printed_gradients_round_trip_on_custom_losses() {
    let mut failures = Vec::new();
    for (src, inputs) in CUSTOM {
        let mut call = Call::new();
        for (n, v) in *inputs {
            call = call.input(n, Array::parse_literal(v, n).unwrap());
        }
        for red in [Reduction::None, Reduction::Mean] {
            let c = call.clone().reduction(red);
            match roundtrip::round_trip(src, &c) {
                Ok(0) => failures.push(format!("nothing compared for\n{src}")),
                Ok(_) => {}
                Err(e) => failures.push(e),
            }
        }
        // a scalar weight, broadcast to the output's shape (scalar losses take none)
        let c = call
            .clone()
            .reduction(Reduction::WeightedMean)
            .weights(Array::real(vec![], vec![0.5]));
        if let Err(e) = roundtrip::round_trip(src, &c) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// How many generated programs CI round-trips (`LOSSC_GEN_SEEDS=A..B` for more, or one seed to
/// replay a failure; see `tests/gen/mod.rs` for what the programs hold).
const GEN_SEEDS: u64 = 1500;

/// The printed gradients of generated programs (tests/gen, the programs the JIT is compared
/// on) parse, check and evaluate to the derived gradients: dead branches, gathers,
/// recurrences, aliases and tables of every shape, with NaN, inf and zeros in the data.
#[test]
fn printed_gradients_round_trip_on_generated_programs() {
    let seeds = gen::seeds(0..GEN_SEEDS);
    let total = seeds.end - seeds.start;
    let (mut failures, mut rejected, mut compared) = (Vec::new(), 0, 0);
    for seed in seeds {
        let case = gen::case(seed);
        if Library::from_source("gen.loss", &case.source).is_err() {
            // (tests/jit.rs bounds how many programs fail to check)
            rejected += 1;
            continue;
        }
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            roundtrip::round_trip(&case.source, &case.call)
        }));
        let what = match run {
            Ok(Ok(n)) => {
                compared += n;
                continue;
            }
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
            "seed {seed} ({:?}, {}, params {:?}, weights {:?}):\n{}{}\n{what}",
            case.call.dtype,
            case.call.reduction.name(),
            case.call.params,
            case.call.weights.as_ref().map(|w| w.to_f64()),
            case.source,
            inputs.join(" ")
        ));
    }
    eprintln!("{total} generated programs: {rejected} do not check, {compared} gradients compared");
    // most calls succeed, so most programs compare their three gradients
    assert!(
        compared as u64 >= total,
        "only {compared} gradients compared"
    );
    assert!(
        failures.is_empty(),
        "{} of {total} generated programs' printed gradients fail (LOSSC_GEN_SEEDS=N replays one):\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn printed_gradients_snapshots() {
    let lib = Library::with_stdlib().unwrap();
    for (name, wrt) in [
        ("focal_loss", "logits"),
        ("softmax_cross_entropy", "logits"),
        ("giou_loss", "pred_boxes"),
        ("ctc_loss", "logits"),
    ] {
        let src = lossc::cli::grad_source(&lib, name, wrt, "mean", false, None).unwrap();
        insta::assert_snapshot!(format!("grad_{name}_{wrt}"), src);
    }
}

/// Deriving and simplifying the gradient of every stdlib loss stays cheap (generous bound; the
/// figure is measured by the bench command, not here).
#[test]
fn deriving_the_whole_stdlib_is_fast() {
    let lib = Library::with_stdlib().unwrap();
    let start = std::time::Instant::now();
    let mut n = 0;
    for p in lib.losses() {
        let wrt: Vec<_> = (0..p.inputs.len())
            .filter(|k| p.inputs[*k].ty == lossc::ir::Ty::Real)
            .map(|k| lossc::ir::InputId(k as u32))
            .collect();
        if wrt.is_empty() {
            continue;
        }
        let q = lossc::opt::simplify(&lossc::ir::with_reduction(p, Reduction::Mean, true));
        let g = lossc::opt::simplify(&lossc::grad::differentiate(&q, &wrt).unwrap());
        assert!(!g.passes.is_empty(), "{}", p.name);
        n += 1;
    }
    assert!(n >= 25);
    let secs = start.elapsed().as_secs_f64();
    eprintln!("derived and simplified {n} stdlib gradients in {secs:.4} s");
    assert!(secs < 10.0);
}

/// The simplifier, one rewrite at a time: the rewritten form appears, and the value is finite
/// (and right) where the naive form overflows or cancels.
#[test]
fn simplifier_rewrites_each_on_its_own() {
    let cases: &[(&str, &str, f64, f64)] = &[
        // (body over x[i], expected function in the simplified IR, input, expected value)
        ("log(sigmoid(x[i]))", "log_sigmoid(", -800.0, -800.0),
        ("log(1 - sigmoid(x[i]))", "log_sigmoid(", 800.0, -800.0),
        ("log(1 + x[i])", "log1p(", 1e-20, 1e-20),
        ("log(x[i] + 1)", "log1p(", 1e-20, 1e-20),
        ("exp(x[i]) - 1", "expm1(", 1e-20, 1e-20),
        ("log(exp(x[i]))", "", 1e5, 1e5),
        (
            "1 - sigmoid(x[i])",
            "sigmoid(-",
            40.0,
            4.248354255291589e-18,
        ),
        ("x[i] * 1 + 0 - 0", "", 3.0, 3.0),
        ("2.0 * 3.0 + x[i]", "(6.0 + ", 1.0, 7.0),
        ("-(-x[i])", "", 2.0, 2.0),
        ("x[i] / 4.0", "* 0.25)", 3.0, 0.75),
        ("x[i] / -0.5", "* -2.0)", 3.0, -6.0),
        ("x[i] / 3.0", "/ 3.0)", 3.0, 1.0),
        ("x[i] * real((i + 2) - 1)", "real((i + 1))", 3.0, 3.0),
        // (-x) y -> -(x y), then a + -(x y) -> a - x y
        ("3.0 + (-x[i]) * x[i]", "(3.0 - (%0 * %0))", 2.0, -1.0),
        // y x -> x y where x y is a node already: one product
        (
            "exp(x[i] * 2.0) + exp(2.0 * x[i])",
            "output[i]: real = (%0 + %0)",
            0.5,
            2.0 * std::f64::consts::E,
        ),
        ("x[i] * real((i - 2) + 2)", "real(i)", 3.0, 0.0),
        // a function of a constant is a constant (not a libm call per element)
        (
            "x[i] - log(2.0)",
            "(x[i] - 0.6931471805599453)",
            1.0,
            1.0 - std::f64::consts::LN_2,
        ),
        ("x[i] + sqrt(4.0) * exp(0.0)", "(x[i] + 2.0)", 1.0, 3.0),
        // not folded where the result is not finite
        ("x[i] + log(0.0)", "log(0.0)", 1.0, f64::NEG_INFINITY),
    ];
    for (body, want, x, v) in cases {
        let src = format!("loss f(x[i]) -> [i] {{ {body} }}");
        let l = lib(&src);
        let p = l.loss("f").unwrap();
        let printed = lossc::ir::print_program(&lossc::opt::simplify(p));
        assert!(
            printed.contains(want),
            "{body}: expected `{want}` in\n{printed}"
        );
        let out = l
            .call(
                "f",
                &Call::new().backend(Backend::Interp).input("x", real(&[*x])),
            )
            .unwrap()
            .value
            .to_f64()[0];
        assert!(
            out == *v || (out - v).abs() <= 1e-12 * v.abs().max(1e-300),
            "{body} at {x}: {out} vs {v}"
        );
    }
    // log softmax and log-sum-exp of exps, at logits where exp overflows
    let l = lib(
        "loss ls(x[n, c]) -> [n] { log(exp(x[n, 0]) / sum(c: exp(x[n, c]))) }
         loss lse(x[n, c]) -> [n] { log(sum(c: exp(x[n, c]))) }",
    );
    let x = Array::real(vec![1, 2], vec![1000.0, 0.0]);
    let v = l
        .call(
            "lse",
            &Call::new().backend(Backend::Interp).input("x", x.clone()),
        )
        .unwrap()
        .value
        .to_f64();
    assert_eq!(v, vec![1000.0]);
    let printed = lossc::ir::print_program(&lossc::opt::simplify(l.loss("lse").unwrap()));
    assert!(printed.contains("logsumexp(c:"), "{printed}");
}

/// A quotient's adjoints share one division: `d(a/b)/da = v / b`, `d(a/b)/db = -(v / b) (a / b)`
/// (the finite-difference tests hold the values).
#[test]
fn a_quotient_costs_one_division_in_the_gradient() {
    let l = lib("loss q(x[i]) -> [] { sum(i: x[i] / (x[i] + 2.0)) }");
    let printed = lossc::cli::grad_source(&l, "q", "x", "none", false, None).unwrap();
    // the quotient itself and the one `v / (x[i] + 2)` both adjoints use
    assert_eq!(printed.matches(" / ").count(), 2, "{printed}");
}

/// `p == max(p, q)` -> `p >= q` (and the other three forms) gives the same truth value on
/// every pair, ties, ±0 and NaN included: held against the comparison with a materialised
/// maximum, which the rewrite does not touch, on both backends.
#[test]
fn winner_tests_compare_the_arguments() {
    let l = lib("loss a(x[i], y[i]) -> [i] {
            (if x[i] == max(x[i], y[i]) { 1.0 } else { 0.0 })
              + (if max(x[i], y[i]) == y[i] { 2.0 } else { 0.0 })
              + (if x[i] == min(x[i], y[i]) { 4.0 } else { 0.0 })
              + (if y[i] == min(x[i], y[i]) { 8.0 } else { 0.0 })
        }
        loss b(x[i], y[i]) -> [i] {
            let mx[i] = max(x[i], y[i]);
            let mn[i] = min(x[i], y[i]);
            (if x[i] == mx[i] { 1.0 } else { 0.0 }) + (if mx[i] == y[i] { 2.0 } else { 0.0 })
              + (if x[i] == mn[i] { 4.0 } else { 0.0 }) + (if y[i] == mn[i] { 8.0 } else { 0.0 })
        }");
    let printed = lossc::ir::print_program(&lossc::opt::simplify(l.loss("a").unwrap()));
    assert!(
        !printed.contains("max(") && printed.contains(">="),
        "{printed}"
    );
    let vals = [
        0.0,
        -0.0,
        1.0,
        -2.5,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ];
    let (mut xs, mut ys) = (vec![], vec![]);
    for x in vals {
        for y in vals {
            xs.push(x);
            ys.push(y);
        }
    }
    let n = xs.len();
    for backend in [Backend::Interp, Backend::Jit] {
        let mut call = Call::new()
            .backend(Backend::Interp)
            .input("x", Array::real(vec![n], xs.clone()))
            .input("y", Array::real(vec![n], ys.clone()));
        call.backend = backend;
        let (a, b) = (
            l.call("a", &call).unwrap().value.to_f64(),
            l.call("b", &call).unwrap().value.to_f64(),
        );
        assert_eq!(a, b, "{backend:?}");
    }
}

/// `x / 2^k -> x * 2^-k` changes no bit: both round the exact `x 2^-k` once, in f32 and f64,
/// for subnormal, huge, infinite and NaN `x` and results that overflow or underflow.
#[test]
fn division_by_a_power_of_two_is_the_multiplication() {
    let xs = [
        0.0,
        -0.0,
        1.0,
        3.0,
        -7.5,
        f64::MIN_POSITIVE,
        5e-324,
        1.5e-320,
        f32::MIN_POSITIVE as f64,
        1e-45,
        f64::MAX,
        f32::MAX as f64,
        1e300,
        f64::INFINITY,
        f64::NEG_INFINITY,
        0.1,
        1.0 / 3.0,
    ];
    for k in -126..=127 {
        let c = 2f64.powi(k);
        for sign in [1.0, -1.0] {
            let c = sign * c;
            for x in xs {
                let (a, b) = (x / c, x * (1.0 / c));
                assert_eq!(a.to_bits(), b.to_bits(), "f64 {x} / {c}");
                let (xf, cf) = (x as f32, c as f32);
                let (a, b) = (xf / cf, xf * (1.0 / cf));
                assert_eq!(a.to_bits(), b.to_bits(), "f32 {xf} / {cf}");
            }
            assert!((f64::NAN / c).is_nan() && (f64::NAN * (1.0 / c)).is_nan());
        }
    }
}

/// Comparisons an index's least value (0) decides fold: `i + 1 >= 0` is true, `2 == i + 3`
/// false; `i - 1 >= 0` is not decided and stays.
#[test]
fn simplifier_folds_range_tests_the_index_decides() {
    let l = lib("loss f(x[i]) -> [] {
            sum(i: if i + 1 >= 0 && !(2 == i + 3) && true { x[i] } else { 0.0 })
              + sum(i: if i - 1 >= 0 { x[i] } else { 0.0 })
        }");
    let printed = lossc::ir::print_program(&lossc::opt::simplify(l.loss("f").unwrap()));
    assert!(!printed.contains(">= 0) &&"), "{printed}");
    assert!(!printed.contains("== (i + 3)"), "{printed}");
    assert!(!printed.contains("true"), "{printed}");
    assert!(printed.contains("((i - 1) >= 0)"), "{printed}");
    let v = l
        .call(
            "f",
            &Call::new()
                .backend(Backend::Interp)
                .input("x", real(&[1.0, 2.0, 3.0])),
        )
        .unwrap()
        .value
        .to_f64();
    assert_eq!(v, vec![11.0]);
}

#[test]
fn log_softmax_pattern_becomes_x_minus_logsumexp() {
    // Written naively with aliases: exp overflows at 1000 unless rewritten.
    let l = lib("loss ls(x[n, c]) -> [n, c] {
            let e = exp(x[n, c]);
            let z = sum(c: e);
            let t[n, c] = log(e / z);
            t[n, c]
        }");
    let printed = lossc::ir::print_program(&lossc::opt::simplify(l.loss("ls").unwrap()));
    assert!(printed.contains("(x[n, c] - logsumexp(c"), "{printed}");
    let x = Array::real(vec![1, 2], vec![1000.0, 0.0]);
    let v = l
        .call("ls", &Call::new().backend(Backend::Interp).input("x", x))
        .unwrap()
        .value
        .to_f64();
    assert_eq!(v, vec![0.0, -1000.0]);
}

#[test]
fn focal_gradient_is_finite_at_extreme_logits_with_small_gamma() {
    let l = Library::with_stdlib().unwrap();
    for dtype in [lossc::runtime::DType::F32, lossc::runtime::DType::F64] {
        for x in [100.0, -100.0, 200.0, -200.0, 1e4] {
            let c = Call::new()
                .backend(Backend::Interp)
                .input("labels", real(&[1.0, 0.0, 0.5]))
                .input("logits", real(&[x, x, x]))
                .param("gamma", 0.5)
                .dtype(dtype);
            let g = grad(&l, "focal_loss", c, "logits");
            assert!(g.iter().all(|v| v.is_finite()), "{dtype:?} x = {x}: {g:?}");
        }
    }
}

/// Randomly generated well-typed losses: the derived gradient agrees with central finite
/// differences, and its printed form evaluates to the same numbers.
mod generated {
    use super::*;
    use proptest::prelude::*;

    /// An expression over x[i] and y[i] built from smooth functions (no kinks, no domain
    /// errors), so finite differences apply everywhere.
    fn expr() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("x[i]".to_string()),
            Just("y[i]".to_string()),
            (-3.0f64..3.0).prop_map(|c| format!("{c:.3}")),
        ];
        leaf.prop_recursive(4, 24, 3, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} + {b})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} - {b})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} * {b})")),
                (inner.clone(), inner.clone())
                    .prop_map(|(a, b)| format!("({a} / (1.5 + {b} * {b}))")),
                inner.clone().prop_map(|a| format!("sin({a})")),
                inner.clone().prop_map(|a| format!("tanh({a})")),
                inner.clone().prop_map(|a| format!("sigmoid({a})")),
                inner.clone().prop_map(|a| format!("softplus({a})")),
                inner.clone().prop_map(|a| format!("atan({a})")),
                inner.clone().prop_map(|a| format!("exp(tanh({a}))")),
                inner.clone().prop_map(|a| format!("log1p({a} * {a})")),
                inner.clone().prop_map(|a| format!("sqrt(1 + {a} * {a})")),
                inner.clone().prop_map(|a| format!("({a}) ^ 2")),
                (inner.clone(), inner.clone())
                    .prop_map(|(a, b)| format!("if {a} > 0.1 {{ {b} }} else {{ cos({b}) }}")),
            ]
        })
    }

    /// A loss: an elementwise expression, optionally mixed with a reduction over i.
    fn loss_src() -> impl Strategy<Value = String> {
        (expr(), expr(), 0..3usize).prop_map(|(a, b, shape)| match shape {
            0 => format!("loss g(x[i], y[i]) -> [i] {{ {a} }}"),
            1 => format!("loss g(x[i], y[i]) -> [] {{ logsumexp(i: {a}) + mean(i: {b}) }}"),
            _ => format!(
                "loss g(x[i], y[i]) -> [i] {{ let s[j: 1] = sum(i: {b}); {a} * tanh(s[0]) }}"
            ),
        })
    }

    fn inputs() -> impl Strategy<Value = (Vec<f64>, Vec<f64>)> {
        (1..5usize).prop_flat_map(|n| {
            (
                proptest::collection::vec(-2.0f64..2.0, n),
                proptest::collection::vec(-2.0f64..2.0, n),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn generated_losses_differentiate_correctly(src in loss_src(), (x, y) in inputs(), mean in any::<bool>()) {
            let l = lib(&src);
            let r = if mean { Reduction::Mean } else { Reduction::None };
            let call = Call::new().backend(Backend::Interp).input("x", real(&x)).input("y", real(&y)).reduction(r).grad("x").grad("y");
            // Skip points where the generated `if` sits within a step of its threshold.
            let failures = check_call(&l, "g", &call, &src);
            let near_kink = failures.iter().any(|_| true) && src.contains("if ");
            prop_assert!(failures.is_empty() || near_kink, "{}", failures.join("\n"));
            // The JIT agrees with the interpreter on the value and the gradients.
            let mut jc = call.clone();
            jc.backend = Backend::Jit;
            let (a, b) = (l.call("g", &call), l.call("g", &jc));
            match (a, b) {
                (Ok(a), Ok(b)) => {
                    let xs: Vec<f64> = a.value.to_f64().into_iter().chain(a.grads.iter().flat_map(|g| g.1.to_f64())).collect();
                    let ys: Vec<f64> = b.value.to_f64().into_iter().chain(b.grads.iter().flat_map(|g| g.1.to_f64())).collect();
                    prop_assert_eq!(xs.len(), ys.len());
                    for (u, v) in xs.iter().zip(&ys) {
                        let same = (u.is_nan() && v.is_nan()) || u == v || (u - v).abs() <= 1e-12 * (1.0 + u.abs().max(v.abs()));
                        prop_assert!(same, "{src}\ninterp {u} jit {v}");
                    }
                }
                (Err(a), Err(b)) => prop_assert_eq!(a.kind, b.kind),
                (a, b) => prop_assert!(false, "{src}\none backend failed: {:?} / {:?}", a.err().map(|e| e.message()), b.err().map(|e| e.message())),
            }
            // The printed gradient evaluates to the derived one.
            let n = super::roundtrip::round_trip(&src, &call).map_err(TestCaseError::fail)?;
            prop_assert_eq!(n, 2);
        }
    }
}

/// A node used twice, once under a guard (`logsumexp(a, x) / ...sigmoid(a)`, both branches of
/// an `if`, `max` and `min`), doubled the guard combinations of every node below it: 12 levels
/// took seconds, 60 would never finish (fuzz finding 10). Folded terms keep it linear; the
/// gradients still match finite differences, and the JIT matches the interpreter.
#[test]
fn shared_aliases_under_guards_differentiate_in_linear_time() {
    let steps: [&dyn Fn(usize) -> String; 3] = [
        &|k| {
            format!(
                "let a{k} = logsumexp(a{}, x[i]) / (1 + sigmoid(a{}));",
                k - 1,
                k - 1
            )
        },
        &|k| {
            let p = k - 1;
            format!(
                "let a{k} = if a{p} > x[i] {{ 0.5 * a{p} + log(a{p} - x[i]) }} else {{ a{p} - 0.25 * x[i] }};"
            )
        },
        &|k| {
            format!(
                "let a{k} = max(a{}, x[i]) * 0.5 + min(a{}, 0.5 * x[i]);",
                k - 1,
                k - 1
            )
        },
    ];
    let x = [0.3, -1.2, 2.0, 0.7, -0.4];
    // 20 levels against finite differences (deeper, `log(a - x)` makes the chain too
    // ill-conditioned for them), 60 against the JIT (2^60 paths without the folding)
    for (s, step, levels) in (0..3).flat_map(|s| [(s, steps[s], 20), (s, steps[s], 60)]) {
        let mut src = String::from("loss g(x[i]) -> [i] {\n    let a0 = 0.9 * x[i] + 0.3;\n");
        for k in 1..=levels {
            src += &format!("    {}\n", step(k));
        }
        src += &format!("    a{levels}\n}}\n");
        let l = lib(&src);
        let call = Call::new()
            .backend(Backend::Interp)
            .input("x", real(&x))
            .grad("x");
        if levels == 20 {
            let failures = check_call(&l, "g", &call, &format!("step {s}"));
            assert!(failures.is_empty(), "{failures:?}");
        }
        let mut jit = call.clone();
        jit.backend = Backend::Jit;
        let a = l.call("g", &call).unwrap().grads[0].1.to_f64();
        let b = l.call("g", &jit).unwrap().grads[0].1.to_f64();
        for (u, v) in a.iter().zip(&b) {
            assert!(
                (u - v).abs() <= 1e-9 * (1.0 + u.abs()),
                "step {s}: {u} vs {v}"
            );
        }
    }
}

/// Index bounds in a chain merge into one test against the tightest bound
/// (`opt::merge_bounds`), with the chain's truth unchanged: the same tests on ints (merged) and
/// on reals (not merged) agree for row lengths on both sides of every bound, on both backends;
/// a read that can fail between two bounds keeps them apart, so its error stays.
#[test]
fn index_bounds_merge_with_the_same_truth() {
    let l = lib("
        loss ints(x[b, u], n[b]: int) -> [b] {
            sum(u: if u + 2 < U && !(u + 1 > 2 * n[b]) && u >= 1 && !(u - 1 < n[b] - 4) { x[b, u] } else { 0.0 })
          + sum(u: if u > n[b] || u + 3 > U || u < 1 || 2 > u { 2.0 * x[b, u] } else { 0.0 })
        }
        loss reals(x[b, u], n[b]: int) -> [b] {
            let r = real(u);
            let m = real(n[b]);
            sum(u: if r + 2 < real(U) && !(r + 1 > 2 * m) && r >= 1 && !(r - 1 < m - 4) { x[b, u] } else { 0.0 })
          + sum(u: if r > m || r + 3 > real(U) || r < 1 || 2 > r { 2.0 * x[b, u] } else { 0.0 })
        }
        loss guarded(x[u], ids[u]: int, w[k]) -> [] {
            sum(u: if u < K && x[ids[u]] > 0 && u + 1 < U { x[u] } else { 0.0 })
        }");
    let merged = lossc::ir::print_program(&lossc::opt::merge_bounds(&lossc::opt::simplify(
        l.loss("ints").unwrap(),
    )));
    assert!(merged.contains("(u <= min("), "{merged}");
    assert!(merged.contains("(u >= max("), "{merged}");
    assert!(merged.contains("(u > min("), "{merged}");
    assert!(merged.contains("(u < max("), "{merged}");
    let (rows, cols) = (12, 9);
    let x: Vec<f64> = (0..rows * cols).map(|k| 1.0 + k as f64).collect();
    let n: Vec<i64> = (0..rows as i64).map(|k| k - 2).collect();
    for backend in [Backend::Interp, Backend::Jit] {
        let mut c = Call::new()
            .backend(Backend::Interp)
            .input("x", Array::real(vec![rows, cols], x.clone()))
            .input("n", Array::int(vec![rows], n.clone()));
        c.backend = backend;
        let a = l.call("ints", &c).unwrap().value.to_f64();
        let b = l.call("reals", &c).unwrap().value.to_f64();
        assert_eq!(a, b, "{backend:?}");
        assert!(a.iter().any(|v| *v != 0.0));
        // ids[2] is out of range and read at u = 2 (u < K), though u + 1 < U fails there:
        // merged across the read, the chain would stop before it
        let mut g = Call::new()
            .backend(Backend::Interp)
            .input("x", real(&[1.0, 2.0, 3.0]))
            .input("ids", Array::int(vec![3], vec![0, 1, 7]))
            .input("w", real(&[0.0; 3]));
        g.backend = backend;
        let e = l.call("guarded", &g).unwrap_err();
        assert_eq!(e.kind, lossc::diag::ErrorKind::Range, "{backend:?}");
    }
}
