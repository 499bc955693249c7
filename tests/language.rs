//! The language through the library API: parse trees and IR (insta snapshots), the checker's
//! verdicts, the interpreter's semantics, shapes, parameters, reductions and weights.

use lossc::diag::ErrorKind;
use lossc::runtime::{Array, Backend, Call, DType, Library, Reduction};

fn lib(src: &str) -> Library {
    match Library::from_source("test.loss", src) {
        Ok(l) => l,
        Err(e) => panic!("{}", e.message()),
    }
}

fn real(v: &[f64]) -> Array {
    Array::real(vec![v.len()], v.to_vec())
}
fn int(v: &[i64]) -> Array {
    Array::int(vec![v.len()], v.to_vec())
}

fn value(l: &Library, name: &str, call: Call) -> Array {
    match l.call(name, &call) {
        Ok(o) => o.value,
        Err(e) => panic!("{}", e.message()),
    }
}

fn close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{a:?} vs {b:?}");
    }
}

fn stdlib_file(name: &str) -> String {
    std::fs::read_to_string(format!("{}/stdlib/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn parse_trees_of_stdlib_losses() {
    for f in [
        "focal_loss.loss",
        "ctc_loss.loss",
        "giou_loss.loss",
        "dice_loss.loss",
    ] {
        let ast = lossc::syntax::parse(0, &stdlib_file(f)).unwrap();
        insta::assert_snapshot!(format!("parse_{f}"), ast.to_string());
    }
}

#[test]
fn ir_of_stdlib_losses() {
    let l = Library::with_stdlib().unwrap();
    for name in [
        "focal_loss",
        "sparse_softmax_cross_entropy",
        "ctc_loss",
        "dice_loss",
        "edit_distance",
    ] {
        let p = l.loss(name).unwrap();
        insta::assert_snapshot!(format!("ir_{name}"), lossc::ir::print_program(p));
    }
}

#[test]
fn stdlib_losses_have_docs_and_the_contracted_signatures() {
    let l = Library::with_stdlib().unwrap();
    let sigs: Vec<String> = {
        let mut v: Vec<_> = l.losses().iter().map(|p| p.signature()).collect();
        v.sort();
        v
    };
    for p in l.losses() {
        assert!(
            p.doc.lines().count() >= 2,
            "{} needs a doc comment with its formula and reference",
            p.name
        );
    }
    insta::assert_snapshot!("stdlib_signatures", sigs.join("\n"));
}

#[test]
fn article_tables_mae_and_rmse() {
    let l = Library::with_stdlib().unwrap();
    for (errors, mae, rmse) in [
        (vec![0.0, 1.0, -2.0, -0.5, 1.5], 1.0, 1.224744871391589),
        (vec![0.0, 1.0, 1.0, -2.0, 15.0], 3.8, 6.797058187186571),
    ] {
        let labels = real(&vec![0.0; errors.len()]);
        let preds = real(&errors);
        let call = |r| {
            Call::new()
                .backend(Backend::Interp)
                .input("labels", labels.clone())
                .input("predictions", preds.clone())
                .reduction(r)
        };
        let m = value(&l, "mean_absolute_error", call(Reduction::Mean));
        let r = value(&l, "root_mean_squared_error", call(Reduction::None));
        close(&m.to_f64(), &[mae], 1e-12);
        close(&r.to_f64(), &[rmse], 1e-12);
        assert_eq!(
            format!("{:.4}", r.to_f64()[0]),
            if mae == 1.0 { "1.2247" } else { "6.7971" }
        );
    }
}

#[test]
fn int_arithmetic_is_floor_division_and_modulo() {
    let l = lib(
        "loss f(a[i]: int, b[i]: int) -> [i] { real(a[i] / b[i]) * 1000.0 + real(a[i] % b[i]) }",
    );
    let out = value(
        &l,
        "f",
        Call::new()
            .backend(Backend::Interp)
            .input("a", int(&[7, -7, 7, -1]))
            .input("b", int(&[2, 2, -2, 3])),
    );
    assert_eq!(out.to_f64(), vec![3001.0, -3999.0, -4001.0, -998.0]);
}

#[test]
fn if_is_lazy_so_a_dead_branch_cannot_fail() {
    // 10 / n with n == 0 would be a division-by-zero error if the branch were evaluated.
    let l = lib("loss f(n[i]: int) -> [i] { if n[i] == 0 { 0.0 } else { real(10 / n[i]) } }");
    assert_eq!(
        value(
            &l,
            "f",
            Call::new()
                .backend(Backend::Interp)
                .input("n", int(&[0, 5]))
        )
        .to_f64(),
        vec![0.0, 2.0]
    );
    let l = lib("loss f(n[i]: int) -> [i] { real(10 / n[i]) }");
    let e = l
        .call(
            "f",
            &Call::new().backend(Backend::Interp).input("n", int(&[0])),
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Range);
    // && short-circuits the same way
    let l = lib("loss f(x[t]) -> [t] { if t >= 1 && x[t - 1] > 0 { 1.0 } else { 0.0 } }");
    assert_eq!(
        value(
            &l,
            "f",
            Call::new()
                .backend(Backend::Interp)
                .input("x", real(&[1.0, 1.0, -1.0]))
        )
        .to_f64(),
        vec![0.0, 1.0, 1.0]
    );
}

#[test]
fn recurrences_fill_in_order_and_read_the_pad_outside() {
    let l = lib(
        "loss cumsum(x[t]) -> [t] { let c[t] pad 0.0 = c[t - 1] + x[t]; c[t] }
         loss fib(x[t]) -> [t] { let f[t] pad 1 = if t < 2 { 1 } else { f[t - 1] + f[t - 2] }; f[t] }",
    );
    assert_eq!(
        value(
            &l,
            "cumsum",
            Call::new()
                .backend(Backend::Interp)
                .input("x", real(&[1.0, 2.0, 3.0]))
        )
        .to_f64(),
        vec![1.0, 3.0, 6.0]
    );
    assert_eq!(
        value(
            &l,
            "fib",
            Call::new()
                .backend(Backend::Interp)
                .input("x", real(&[0.0; 6]))
        )
        .to_f64(),
        vec![1.0, 1.0, 2.0, 3.0, 5.0, 8.0]
    );
}

#[test]
fn new_indices_with_computed_extents() {
    let l = lib("loss interleave(x[s]) -> [] {
            let e[u: 2 * S + 1] = if u % 2 == 0 { 0.0 } else { x[u / 2] };
            sum(u: e[u] * real(u))
        }");
    // u = 1, 3, 5 carry x[0], x[1], x[2]
    assert_eq!(
        value(
            &l,
            "interleave",
            Call::new()
                .backend(Backend::Interp)
                .input("x", real(&[1.0, 10.0, 100.0]))
        )
        .to_f64(),
        vec![531.0]
    );
}

#[test]
fn gathers_are_range_checked() {
    let l = lib("loss g(labels[n]: int, x[n, c]) -> [n] { x[n, labels[n]] }");
    let x = Array::real(vec![2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(
        value(
            &l,
            "g",
            Call::new()
                .backend(Backend::Interp)
                .input("labels", int(&[2, 0]))
                .input("x", x.clone())
        )
        .to_f64(),
        vec![2.0, 3.0]
    );
    for bad in [[3, 0], [0, -1]] {
        let e = l
            .call(
                "g",
                &Call::new()
                    .backend(Backend::Interp)
                    .input("labels", int(&bad))
                    .input("x", x.clone()),
            )
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Range);
        assert!(e.message().contains("out of range"), "{}", e.message());
    }
}

#[test]
fn leading_dimensions_fold_into_the_first_index() {
    let l = Library::with_stdlib().unwrap();
    let y = Array::real(vec![2, 2, 2], vec![0.0; 8]);
    let p = Array::real(vec![2, 2, 2], (0..8).map(f64::from).collect());
    let out = value(
        &l,
        "mean_squared_error",
        Call::new()
            .backend(Backend::Interp)
            .input("labels", y.clone())
            .input("predictions", p.clone()),
    );
    assert_eq!(out.shape, vec![2, 2, 2]);
    assert_eq!(out.to_f64()[7], 49.0);
    // a row-wise loss keeps the leading dimensions of its rows
    let logits = Array::real(vec![2, 3, 4], vec![0.0; 24]);
    let labels = Array::int(vec![2, 3], vec![0; 6]);
    let out = value(
        &l,
        "sparse_softmax_cross_entropy",
        Call::new()
            .backend(Backend::Interp)
            .input("labels", labels)
            .input("logits", logits),
    );
    assert_eq!(out.shape, vec![2, 3]);
    close(&out.to_f64(), &[4f64.ln(); 6], 1e-12);
    // mismatched leading shapes are a shape error
    let e = l
        .call(
            "mean_squared_error",
            &Call::new()
                .backend(Backend::Interp)
                .input("labels", Array::real(vec![4, 2], vec![0.0; 8]))
                .input("predictions", p),
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Shape);
}

/// Elementwise losses take any shape, a scalar too: a rank-0 array for a one-index input is one
/// element (the index has extent 1) and the output is rank 0, on both backends, through
/// `Library::call` and a compiled loss's views; the gradient has the input's shape [].
/// A scalar against a [1] or [4] array, or for a two-index input, stays a shape error.
#[test]
fn rank_0_inputs_are_one_element_of_an_elementwise_loss() {
    use lossc::runtime::{Backend, Options, View};
    let l = Library::with_stdlib().unwrap();
    for backend in [Backend::Interp, Backend::Jit] {
        for dtype in [DType::F64, DType::F32] {
            let mut call = Call::new()
                .input("labels", Array::scalar(0.5))
                .input("predictions", Array::scalar(2.0))
                .dtype(dtype)
                .grad("predictions");
            call.backend = backend;
            let out = l.call("mean_squared_error", &call).unwrap();
            assert_eq!(out.value.shape, Vec::<usize>::new(), "{backend:?}");
            assert_eq!(out.value.to_f64(), vec![2.25]);
            assert_eq!(out.grads[0].1.shape, Vec::<usize>::new());
            assert_eq!(out.grads[0].1.to_f64(), vec![3.0]);
            // a reduced call of a scalar output, and a loss whose output is [] already
            let out = l
                .call("huber_loss", &call.clone().reduction(Reduction::Mean))
                .unwrap();
            assert_eq!(out.value.to_f64(), vec![1.0]);
            let out = l.call("root_mean_squared_error", &call).unwrap();
            assert_eq!(out.value.to_f64(), vec![1.5]);
            assert_eq!(out.grads[0].1.to_f64(), vec![1.0]);
        }
    }
    let c = l
        .compile(
            "mean_squared_error",
            Options::new().dtype(DType::F64).grad("predictions"),
        )
        .unwrap();
    let out = c
        .call(
            &[
                ("labels", View::f64(&[], &[0.5])),
                ("predictions", View::f64(&[], &[2.0])),
            ],
            &[],
            Reduction::None,
            None,
        )
        .unwrap();
    assert_eq!(out.value.shape, Vec::<usize>::new());
    assert_eq!(out.value.to_f64(), vec![2.25]);
    assert_eq!(out.grads[0].1.to_f64(), vec![3.0]);
    for other in [vec![1], vec![4]] {
        let n = other[0];
        let e = l
            .call(
                "mean_squared_error",
                &Call::new()
                    .input("labels", Array::scalar(0.5))
                    .input("predictions", Array::real(other, vec![1.0; n])),
            )
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Shape, "{}", e.message());
    }
    let e = l
        .call(
            "softmax_cross_entropy",
            &Call::new()
                .input("labels", Array::scalar(1.0))
                .input("logits", Array::scalar(0.3)),
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Shape, "{}", e.message());
}

#[test]
fn reductions_and_weights() {
    let l = lib("loss id(x[i]) -> [i] { x[i] }");
    let x = real(&[1.0, 2.0, 3.0, 4.0]);
    let w = real(&[0.0, 1.0, 2.0, 0.0]);
    let run = |r, w: Option<&Array>| {
        let mut c = Call::new()
            .backend(Backend::Interp)
            .input("x", x.clone())
            .reduction(r);
        c.weights = w.cloned();
        value(&l, "id", c).to_f64()
    };
    assert_eq!(run(Reduction::None, Some(&w)), vec![0.0, 2.0, 6.0, 0.0]);
    assert_eq!(run(Reduction::Sum, Some(&w)), vec![8.0]);
    assert_eq!(run(Reduction::Mean, Some(&w)), vec![2.0]);
    assert_eq!(run(Reduction::WeightedMean, Some(&w)), vec![8.0 / 3.0]);
    assert_eq!(run(Reduction::SumByNonzeroWeights, Some(&w)), vec![4.0]);
    assert_eq!(run(Reduction::Mean, None), vec![2.5]);
    assert_eq!(run(Reduction::SumByNonzeroWeights, None), vec![2.5]);
    // zero weights give 0, not NaN
    assert_eq!(
        run(Reduction::WeightedMean, Some(&real(&[0.0; 4]))),
        vec![0.0]
    );
    assert_eq!(
        run(Reduction::SumByNonzeroWeights, Some(&Array::scalar(0.0))),
        vec![0.0]
    );
    // a scalar weight counts every element
    assert_eq!(
        run(Reduction::SumByNonzeroWeights, Some(&Array::scalar(2.0))),
        vec![5.0]
    );
    // broadcasting: a [2, 1] weight over a [2, 2] output
    let l2 = lib("loss id2(x[n, j]) -> [n, j] { x[n, j] }");
    let x2 = Array::real(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]);
    let c = Call::new()
        .backend(Backend::Interp)
        .input("x", x2.clone())
        .weights(Array::real(vec![2, 1], vec![1.0, 10.0]));
    assert_eq!(value(&l2, "id2", c).to_f64(), vec![1.0, 2.0, 30.0, 40.0]);
    let bad = Call::new()
        .backend(Backend::Interp)
        .input("x", x2)
        .weights(real(&[1.0, 2.0, 3.0]));
    assert_eq!(l2.call("id2", &bad).unwrap_err().kind, ErrorKind::Shape);
}

#[test]
fn parameters_defaults_over_inputs_types_and_bools() {
    let l = lib(
        "loss p(y[i]; beta = stop_grad(1 - mean(i: y[i])), k: int = 2, on = true) -> [i] {
            if on { beta * real(k) } else { 0.0 }
        }",
    );
    let y = real(&[1.0, 0.0, 0.0, 0.0]);
    assert_eq!(
        value(
            &l,
            "p",
            Call::new().backend(Backend::Interp).input("y", y.clone())
        )
        .to_f64(),
        vec![1.5; 4]
    );
    assert_eq!(
        value(
            &l,
            "p",
            Call::new()
                .backend(Backend::Interp)
                .input("y", y.clone())
                .param("k", 3.0)
        )
        .to_f64(),
        vec![2.25; 4]
    );
    assert_eq!(
        value(
            &l,
            "p",
            Call::new()
                .backend(Backend::Interp)
                .input("y", y.clone())
                .param("on", false)
        )
        .to_f64(),
        vec![0.0; 4]
    );
    assert_eq!(
        l.call(
            "p",
            &Call::new()
                .backend(Backend::Interp)
                .input("y", y.clone())
                .param("k", 2.5)
        )
        .unwrap_err()
        .kind,
        ErrorKind::Type
    );
    assert_eq!(
        l.call(
            "p",
            &Call::new()
                .backend(Backend::Interp)
                .input("y", y.clone())
                .param("on", 1.0)
        )
        .unwrap_err()
        .kind,
        ErrorKind::Type
    );
    assert_eq!(
        l.call(
            "p",
            &Call::new()
                .backend(Backend::Interp)
                .input("y", y)
                .param("bta", 1.0)
        )
        .unwrap_err()
        .kind,
        ErrorKind::Unknown
    );
}

#[test]
fn f32_rounds_every_operation() {
    let l = lib("loss s(x[i]) -> [i] { x[i] + 1e-8 }");
    let out64 = value(
        &l,
        "s",
        Call::new()
            .backend(Backend::Interp)
            .input("x", real(&[1.0])),
    );
    let out32 = value(
        &l,
        "s",
        Call::new()
            .backend(Backend::Interp)
            .input("x", real(&[1.0]))
            .dtype(DType::F32),
    );
    assert!(out64.to_f64()[0] > 1.0);
    assert_eq!(out32.to_f64()[0], 1.0);
}

#[test]
fn checker_rejects_with_the_right_message() {
    let bad: &[(&str, &str)] = &[
        ("loss f(x[i]) -> [i] { y[i] }", "unknown name `y`"),
        ("loss f(x[i]) -> [i] { x }", "needs its indices"),
        ("loss f(x[i]) -> [] { x[i] }", "index `i` is free"),
        ("loss f(x[i]) -> [i] { sum(i: x[i]) }", "already in use"),
        (
            "loss f(x[i]) -> [i] { let t[i] = t[i] + 1.0; t[i] }",
            "reads ahead",
        ),
        (
            "loss f(x[t]) -> [t] { let c[t] = c[t - 1] + x[t]; c[t] }",
            "needs a pad",
        ),
        (
            "loss f(x[t]) -> [t] { let c[t] pad 0.0 = c[2 * t] + x[t]; c[t] }",
            "constant offset",
        ),
        ("loss f(x[i]) -> [i] { x[i] && true }", "needs a bool"),
        ("loss f(x[i]; a: int = 0.5) -> [i] { x[i] }", "declared int"),
        (
            "loss f(x[i]) -> [i] { sigmoid(x[i], 1.0) }",
            "takes 1 argument",
        ),
        (
            "loss f(x[i]) -> [i] { sigmod(x[i]) }",
            "did you mean `sigmoid`",
        ),
        (
            "fn g(a) = g(a); loss f(x[i]) -> [i] { g(x[i]) }",
            "calls itself",
        ),
        (
            "fn g(a) = a * x[i]; loss f(x[i]) -> [i] { g(x[i]) }",
            "unknown name `x`",
        ),
        ("loss f(x[i], x[j]) -> [i] { 0.0 }", "already defined"),
        ("loss f(b[n, 4]) -> [n] { b[n, 4] }", "out of range"),
        (
            "loss f(x[i]) -> [i] { let a = 1.0; let a = 2.0; a }",
            "already defined",
        ),
        ("loss f(x[i]) -> [i] { x[i] == true }", "cannot compare"),
        (
            "loss f(x[i]) -> [i] { if x[i] > 0 { true } else { 1.0 } }",
            "differ in type",
        ),
        ("loss f(x[i]) -> [i] { x[i] > 0.0 }", "not a bool"),
        ("loss f(x[i]) -> [j] { x[i] }", "unknown index `j`"),
        (
            "loss f(x[i]) -> [i] { let t[i, u] = x[i]; x[i] }",
            "a new index needs an extent",
        ),
        (
            "loss f(x[i]) -> [i] { let t[i, u: 2.5] = x[i]; x[i] }",
            "an extent must be an int",
        ),
        (
            "loss f(x[i]) -> [i] { let t[i, u: I * 2] = x[i]; t[i, i] }",
            "index mismatch",
        ),
        ("loss f(x[i]) -> [i] { median(i: x[i]) }", "not a reduction"),
    ];
    for (src, want) in bad {
        let e = Library::from_source("t.loss", src).unwrap_err();
        let msg = e.message();
        assert!(msg.contains(want), "{src}\nexpected `{want}` in:\n{msg}");
    }
}

#[test]
fn hostile_sources_are_errors_not_crashes() {
    let deep_parens = format!(
        "loss f(x[i]) -> [i] {{ {}x[i]{} }}",
        "(".repeat(100_000),
        ")".repeat(100_000)
    );
    let deep_minus = format!("loss f(x[i]) -> [i] {{ {}x[i] }}", "-".repeat(100_000));
    let long_pow = format!(
        "loss f(x[i]) -> [i] {{ x[i]{} }}",
        " ^ x[i]".repeat(100_000)
    );
    let long_sum = format!(
        "loss f(x[i]) -> [i] {{ x[i]{} }}",
        " + x[i]".repeat(100_000)
    );
    for src in [deep_parens, deep_minus, long_pow, long_sum] {
        let e = Library::from_source("t.loss", &src).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Limit, "{}", e.message());
    }
    // a 10^12-element table is refused before allocation
    let l = lib("loss big(x[i]) -> [] { let t[i, u: 1000000000000] = x[i]; sum(u: t[0, u]) }");
    let e = l
        .call(
            "big",
            &Call::new()
                .backend(Backend::Interp)
                .input("x", real(&[1.0])),
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Limit);
}

#[test]
fn imports_resolve_next_to_the_file_then_in_the_stdlib() {
    let dir = std::env::temp_dir().join(format!("lossc-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("helpers.loss"), "fn sq(a) = a * a;").unwrap();
    std::fs::write(
        dir.join("main.loss"),
        "import \"helpers.loss\";\nimport \"box_geometry.loss\";\nloss f(x[i]) -> [i] { sq(x[i]) }",
    )
    .unwrap();
    let l = Library::from_file(&dir.join("main.loss")).unwrap();
    assert_eq!(
        value(
            &l,
            "f",
            Call::new()
                .backend(Backend::Interp)
                .input("x", real(&[3.0]))
        )
        .to_f64(),
        vec![9.0]
    );
    std::fs::write(dir.join("bad.loss"), "import \"nowhere.loss\";").unwrap();
    let e = Library::from_file(&dir.join("bad.loss")).unwrap_err();
    assert!(e.message().contains("nowhere.loss"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn long_arrays_print_elided_like_numpy() {
    let a = Array::real(vec![2000], (0..2000).map(f64::from).collect());
    assert_eq!(a.display(), "[0.0, 1.0, 2.0, ..., 1997.0, 1998.0, 1999.0]");
    let short = Array::int(vec![2, 2], vec![1, 2, 3, 4]);
    assert_eq!(short.display(), "[[1, 2],\n [3, 4]]");
}

#[test]
fn weights_as_inputs_train_a_classifier() {
    // The softmax-regression example's loss: its weight gradient drives gradient descent.
    let l = Library::from_file(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/linear_softmax.loss"
    )))
    .unwrap();
    let x = Array::real(vec![4, 2], vec![2.0, 0.0, 1.5, 0.5, -2.0, 0.0, -1.5, -0.5]);
    let labels = int(&[0, 0, 1, 1]);
    let (mut w, mut b) = (vec![0.0; 4], vec![0.0; 2]);
    let mut losses = Vec::new();
    for _ in 0..20 {
        let call = Call::new()
            .backend(Backend::Interp)
            .input("labels", labels.clone())
            .input("x", x.clone())
            .input("w", Array::real(vec![2, 2], w.clone()))
            .input("b", Array::real(vec![2], b.clone()))
            .reduction(Reduction::Mean)
            .grad("w")
            .grad("b");
        let out = l.call("linear_softmax", &call).unwrap();
        losses.push(out.value.to_f64()[0]);
        for (name, g) in &out.grads {
            let p = if name == "w" { &mut w } else { &mut b };
            for (pi, gi) in p.iter_mut().zip(g.to_f64()) {
                *pi -= 0.5 * gi;
            }
        }
    }
    assert!((losses[0] - 2f64.ln()).abs() < 1e-12);
    assert!(losses[19] < 0.05, "{losses:?}");
    assert!(losses.windows(2).all(|p| p[1] < p[0]));
}

#[test]
fn npy_files_read_in_c_and_fortran_order_and_round_trip() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    // written column-major as [[1, 2, 3], [4, 5, 6]] in float32
    let a = Array::from_npy(
        &std::fs::read(format!("{dir}/fortran_f32.npy")).unwrap(),
        "a",
    )
    .unwrap();
    assert_eq!(a.shape, vec![2, 3]);
    assert_eq!(a.to_f64(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    for (arr, dtype) in [
        (
            Array::real(vec![2, 2], vec![0.5, -1.0, 1e300, f64::INFINITY]),
            DType::F64,
        ),
        (Array::real(vec![3], vec![0.25, -2.0, 3.0]), DType::F32),
        (Array::int(vec![2], vec![-7, 1 << 40]), DType::F64),
    ] {
        let back = Array::from_npy(&arr.to_npy(dtype).unwrap(), "b").unwrap();
        assert_eq!(back, arr);
    }
}
