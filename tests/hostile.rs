//! Hostile input (docs/RELIABILITY.md): every fuzz crasher kept under
//! `tests/fuzz-regressions/<target>/` replayed through the fuzz targets' own code, nesting
//! 100,000 deep, 10^12-element shapes, out-of-range class ids and lengths, NaN and inf. Each
//! must end in an `Error` (or a value), never a panic, an abort or a stack overflow.

#[path = "hostile/harness.rs"]
mod harness;

use lossc::cases;
use lossc::diag::ErrorKind;
use lossc::runtime::{Array, Backend, Call, DType, Library, Options, Reduction, View};
use std::path::{Path, PathBuf};

const DEEP: usize = 100_000;

fn regressions(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-regressions")
        .join(target);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs `f` on a thread with a 2 MiB stack (a typical worker thread's), so that a recursion
/// the limits do not bound shows up as a stack overflow here.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic")
}

#[test]
fn parse_check_crashers_end_cleanly() {
    for f in regressions("parse_check") {
        let bytes = std::fs::read(&f).unwrap();
        if let Ok(text) = std::str::from_utf8(&bytes) {
            harness::front_end(text);
        }
    }
}

#[test]
fn case_json_crashers_end_cleanly() {
    for f in regressions("case_json") {
        let bytes = std::fs::read(&f).unwrap();
        if let Ok(text) = std::str::from_utf8(&bytes) {
            if let Err(e) = harness::case_json(text) {
                panic!("{}: {e}", f.display());
            }
        }
    }
}

#[test]
fn npy_crashers_end_cleanly() {
    for f in regressions("npy") {
        let bytes = std::fs::read(&f).unwrap();
        if let Err(e) = harness::npy(&bytes) {
            panic!("{}: {e}", f.display());
        }
    }
}

/// A `.npy` header length past the end of the file is refused before npyz allocates it (the
/// `npy` fuzzer's out-of-memory input: 100 bytes declaring a 4 GiB header).
#[test]
fn npy_header_length_past_the_end_is_refused() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-regressions/npy/header_length_past_the_end_oom.npy");
    let bytes = std::fs::read(f).unwrap();
    let e = Array::from_npy(&bytes, "x").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Data);
    assert!(e.message().contains("header length"), "{}", e.message());
    // a version-1 header (2-byte length) one byte past the end, likewise
    let mut v1 = b"\x93NUMPY\x01\x00".to_vec();
    v1.extend_from_slice(&20u16.to_le_bytes());
    v1.extend_from_slice(&[b' '; 19]);
    let e = Array::from_npy(&v1, "x").unwrap_err();
    assert!(e.message().contains("header length"), "{}", e.message());
}

/// An empty `.npy` array with a dimension of 1.3·10^19 prints as `[]` (the `npy` fuzzer's capacity
/// overflow: printing made a list of 1.3·10^19 row numbers).
#[test]
fn empty_arrays_with_huge_dimensions_print() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-regressions/npy/empty_array_with_a_huge_dimension_display.npy");
    let a = Array::from_npy(&std::fs::read(f).unwrap(), "x").unwrap();
    assert_eq!(a.shape, vec![13123489314157625328, 0, 2]);
    assert_eq!(a.display(), "[]");
    assert_eq!(Array::real(vec![0, 3], vec![]).display(), "[]");
}

/// A `.npy` shape that is not a tuple of integers (npyz evaluates `1+++2` as Python would) or
/// whose product overflows is a `Data` error before npyz multiplies it out (the `npy` fuzzer's
/// overflow panic in a debug build).
#[test]
fn npy_shapes_must_be_integer_tuples_that_fit() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-regressions/npy/shape_expression_product_overflow.npy");
    let e = Array::from_npy(&std::fs::read(f).unwrap(), "x").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Data);
    assert!(e.message().contains("shape"), "{}", e.message());
    let npy = |shape: &str| {
        let h = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}");
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b
    };
    let e = Array::from_npy(&npy("(4294967296, 4294967296, 2)"), "x").unwrap_err();
    assert!(e.message().contains("64 bits"), "{}", e.message());
    // ordinary shapes still load (here: no data for a non-empty shape, refused later)
    let ok = Array::from_npy(&npy("(0, 3)"), "x").unwrap();
    assert_eq!(ok.shape, vec![0, 3]);
}

/// The `backends` target's crashers, kept as reference cases (the generated `.loss` and a
/// case JSON naming it): both backends agree on them.
#[test]
fn backends_crashers_agree() {
    for f in regressions("backends") {
        if f.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let case = cases::load(&f).unwrap();
        let (lib, entry) = cases::loss_library(&case).unwrap();
        let call = case.call(Backend::Interp).unwrap();
        let rtol = if call.dtype == DType::F64 { 1e-6 } else { 1e-2 };
        if let Err(e) = harness::compare_backends(&lib, &entry, &call, Some(rtol)) {
            panic!("{}: {e}", f.display());
        }
    }
}

/// Losses nested 100,000 deep in every way the grammar allows.
fn deep_sources() -> Vec<(&'static str, String)> {
    let wrap = |open: &str, close: &str| {
        format!(
            "loss g(x[i]) -> [i] {{ {}x[i]{} }}",
            open.repeat(DEEP),
            close.repeat(DEEP)
        )
    };
    let lets: String = (1..DEEP)
        .map(|k| format!("let a{k} = a{} + a{};\n", k - 1, k - 1))
        .collect();
    vec![
        ("brackets", wrap("(", ")")),
        ("unary minus", wrap("-", "")),
        ("not", wrap("!", "")),
        ("calls", wrap("exp(", ")")),
        ("reads", wrap("x[", "]")),
        (
            "powers",
            format!("loss g(x[i]) -> [i] {{ x[i]{} }}", " ^ x[i]".repeat(DEEP)),
        ),
        (
            "sum chain",
            format!("loss g(x[i]) -> [i] {{ x[i]{} }}", " + x[i]".repeat(DEEP)),
        ),
        (
            "if chain",
            format!(
                "loss g(x[i]) -> [i] {{ {} {{ 0.0 }} }}",
                "if x[i] > 0.0 { x[i] } else ".repeat(DEEP)
            ),
        ),
        (
            "let chain",
            format!(
                "loss g(x[i]) -> [i] {{\nlet a0 = x[i];\n{lets}a{} }}",
                DEEP - 1
            ),
        ),
        (
            "helper chain",
            format!(
                "fn f0(a) = a;\n{}loss g(x[i]) -> [i] {{ f{}(x[i]) }}",
                (1..DEEP)
                    .map(|k| format!("fn f{k}(a) = f{}(a) + 1.0;\n", k - 1))
                    .collect::<String>(),
                DEEP - 1
            ),
        ),
    ]
}

#[test]
fn nesting_100000_deep_is_an_error() {
    for (what, src) in deep_sources() {
        let e = Library::from_source("deep.loss", &src).expect_err(what);
        assert!(
            matches!(
                e.kind,
                ErrorKind::Limit | ErrorKind::Syntax | ErrorKind::Check
            ),
            "{what}: {:?} {}",
            e.kind,
            e.message()
        );
    }
}

#[test]
fn nesting_100000_deep_is_an_error_on_a_small_stack() {
    on_small_stack(|| {
        for (what, src) in deep_sources() {
            let e = Library::from_source("deep.loss", &src).expect_err(what);
            assert!(
                matches!(
                    e.kind,
                    ErrorKind::Limit | ErrorKind::Syntax | ErrorKind::Check
                ),
                "{what}"
            );
        }
    });
}

/// Programs just inside the depth limits compile (value and gradient: grad, opt, schedule,
/// JIT) and run on a 2 MiB stack: the limits are low enough for every recursive pass.
/// The longest chain of `lets` (`step(k)` defines `a{k}` from `a{k-1}`) that still checks,
/// found by bisection: the deepest program the IR depth limit accepts.
fn deepest(step: impl Fn(usize) -> String) -> (usize, String) {
    let src = |n: usize| {
        let lets: String = (1..=n).map(&step).collect();
        format!("loss g(x[i]) -> [i] {{\nlet a0 = x[i];\n{lets}a{n} }}")
    };
    let (mut lo, mut hi) = (1usize, lossc::check::MAX_IR_DEPTH + 1);
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        if Library::from_source("deep.loss", &src(mid)).is_ok() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo, src(lo))
}

/// Programs at the IR depth limit compile (value and gradient: grad, opt, schedule, JIT) and
/// run on a 2 MiB stack: the limit is low enough for every recursive pass.
#[test]
fn the_deepest_accepted_programs_compile_on_a_small_stack() {
    let chains: Vec<Box<dyn Fn(usize) -> String>> = vec![
        Box::new(|k| format!("let a{k} = sin(a{}) + x[i];\n", k - 1)),
        // (Chains where each alias is used twice inside `if` or `logsumexp` take exponential
        // time in grad: an open finding, docs/RELIABILITY.md.)
        Box::new(|k| format!("let a{k} = -a{};\n", k - 1)),
    ];
    for step in chains {
        let (n, src) = deepest(step);
        on_small_stack_run(n, src);
    }
    // Each alias used twice: a DAG (this one 150 deep: Cranelift's register allocator is slow on
    // the full depth's gradient kernel, though it fits the stack).
    let lets: String = (1..=150)
        .map(|k| format!("let a{k} = tanh(a{}) * a{};\n", k - 1, k - 1))
        .collect();
    on_small_stack_run(
        150,
        format!("loss g(x[i]) -> [i] {{\nlet a0 = x[i];\n{lets}a150 }}"),
    );
}

fn on_small_stack_run(n: usize, src: String) {
    {
        assert!(n >= 100, "only {n} levels accepted");
        on_small_stack(move || {
            let lib = Library::from_source("deep.loss", &src).unwrap();
            // f64 only: the kernels are large, and the recursion is the same in f32.
            let c = lib
                .compile("g", Options::new().dtype(DType::F64).grad("x"))
                .unwrap();
            let x = [0.5f64, -0.25];
            c.call(&[("x", View::f64(&[2], &x))], &[], Reduction::Mean, None)
                .unwrap();
            let call = Call::new()
                .backend(Backend::Interp)
                .input("x", Array::real(vec![2], vec![0.5, -0.25]))
                .grad("x");
            harness::compare_backends(&lib, "g", &call, Some(1e-9)).unwrap();
            lossc::cli::grad_source(&lib, "g", "x", "sum", false, None).unwrap();
        });
    }
}

#[test]
fn sources_past_the_length_limit_are_refused() {
    let src = format!(
        "loss g(x[i]) -> [i] {{ x[i] }}\n{}",
        " ".repeat(lossc::syntax::MAX_SOURCE_LEN)
    );
    let e = Library::from_source("long.loss", &src).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Limit);
}

#[test]
fn import_chains_past_the_limit_are_refused() {
    let dir = std::env::temp_dir().join(format!("lossc-imports-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for k in 0..300 {
        std::fs::write(
            dir.join(format!("f{k}.loss")),
            format!("import \"f{}.loss\";\nfn h{k}(a) = a;\n", k + 1),
        )
        .unwrap();
    }
    std::fs::write(dir.join("f300.loss"), "fn h300(a) = a;\n").unwrap();
    let e = Library::from_file(&dir.join("f0.loss")).unwrap_err();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(e.kind, ErrorKind::Limit, "{}", e.message());
}

/// Every way to ask for 10^12 cells is a Limit (or Shape) error before anything is allocated.
#[test]
fn shapes_of_ten_to_the_twelve_are_errors() {
    let tera = 1_000_000usize;
    // An input whose array claims the shape.
    let lib = Library::from_source("g.loss", "loss g(x[i, j]) -> [i] { sum(j: x[i, j]) }").unwrap();
    let x = Array::real(vec![tera, tera], vec![]);
    for b in [Backend::Interp, Backend::Jit] {
        let mut c = Call::new().backend(Backend::Interp).input("x", x.clone());
        c.backend = b;
        let e = lib.call("g", &c).unwrap_err();
        assert!(
            matches!(e.kind, ErrorKind::Limit | ErrorKind::Shape),
            "{}",
            e.message()
        );
    }
    // Through the compiled path, with a view that claims it.
    let c = lib.compile("g", Options::new().dtype(DType::F64)).unwrap();
    let e = c
        .call(
            &[("x", View::f64(&[tera, tera], &[]))],
            &[],
            Reduction::Sum,
            None,
        )
        .unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::Limit | ErrorKind::Shape),
        "{}",
        e.message()
    );
    let e = c
        .call(
            &[("x", View::f64(&[usize::MAX, 3, 0], &[]))],
            &[],
            Reduction::Sum,
            None,
        )
        .unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::Limit | ErrorKind::Shape),
        "{}",
        e.message()
    );
    // An index space of 10^12 from small inputs: an outer product, and a declared extent.
    let outer =
        Library::from_source("o.loss", "loss o(x[i], y[j]) -> [i, j] { x[i] * y[j] }").unwrap();
    let v = Array::real(vec![tera], vec![1.0; tera]);
    for b in [Backend::Interp, Backend::Jit] {
        let mut c = Call::new()
            .backend(Backend::Interp)
            .input("x", v.clone())
            .input("y", v.clone())
            .grad("x");
        c.backend = b;
        let e = outer.call("o", &c).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Limit, "{}", e.message());
    }
    let oc = outer
        .compile(
            "o",
            Options::new().dtype(DType::F32).reduction(Reduction::None),
        )
        .unwrap();
    let vs = vec![1f32; tera];
    let shape = [tera];
    let views = [("x", View::f32(&shape, &vs)), ("y", View::f32(&shape, &vs))];
    let e = oc.call(&views, &[], Reduction::None, None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Limit, "{}", e.message());
    let e = oc.value_len(&views, Reduction::None);
    assert!(e.is_err() || e.unwrap() == tera * tera);
    let declared = Library::from_source(
        "t.loss",
        "loss t(x[i]) -> [] { let t[j: 1000000000000] = x[0] * real(j); sum(j: t[j]) }",
    )
    .unwrap();
    for b in [Backend::Interp, Backend::Jit] {
        let mut c = Call::new()
            .backend(Backend::Interp)
            .input("x", Array::real(vec![1], vec![1.0]))
            .grad("x");
        c.backend = b;
        let e = declared.call("t", &c).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Limit, "{}", e.message());
    }
    // A literal extent in the signature, and one that overflows when multiplied.
    let lit = Library::from_source(
        "l.loss",
        "loss l(x[i, 1000000, 1000000]) -> [i] { x[i, 0, 0] }",
    );
    if let Ok(lit) = lit {
        let e = lit
            .call(
                "l",
                &Call::new()
                    .backend(Backend::Interp)
                    .input("x", Array::real(vec![1, tera, tera], vec![])),
            )
            .unwrap_err();
        assert!(
            matches!(e.kind, ErrorKind::Limit | ErrorKind::Shape),
            "{}",
            e.message()
        );
    }
    let big = Library::from_source(
        "b.loss",
        "loss b(x[i]) -> [] { let t[j: 4611686018427387904, k: 4611686018427387904] = 1.0; sum(j, k: t[j, k]) }",
    );
    if let Ok(big) = big {
        for b in [Backend::Interp, Backend::Jit] {
            let mut c = Call::new()
                .backend(Backend::Interp)
                .input("x", Array::real(vec![1], vec![1.0]));
            c.backend = b;
            let e = big.call("b", &c).unwrap_err();
            assert!(
                matches!(
                    e.kind,
                    ErrorKind::Limit | ErrorKind::Range | ErrorKind::Check
                ),
                "{}",
                e.message()
            );
        }
    }
    // A `.npy` header and a case file claiming the shape.
    let hdr = "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000, 1000000), }";
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let pad = 64 - (10 + hdr.len() + 1) % 64;
    let header = format!("{hdr}{}\n", " ".repeat(pad));
    npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
    npy.extend_from_slice(header.as_bytes());
    npy.extend_from_slice(&[0u8; 64]);
    let e = Array::from_npy(&npy, "x").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Limit, "{}", e.message());
    let case = r#"{"loss": "mean_squared_error", "inputs": {
        "labels": {"shape": [1000000, 1000000], "data": []},
        "predictions": {"shape": [1000000, 1000000], "data": []}}}"#;
    let c = cases::parse(case, Path::new("big.json")).unwrap();
    let e = c.run(harness::stdlib(), Backend::Jit).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Limit, "{}", e.message());
}

fn kinds(lib: &Library, entry: &str, call: &Call) -> Vec<ErrorKind> {
    [Backend::Interp, Backend::Jit]
        .into_iter()
        .map(|b| {
            let mut c = call.clone();
            c.backend = b;
            match lib.call(entry, &c) {
                Ok(_) => panic!("{entry} on {b:?} accepted bad data"),
                Err(e) => e.kind,
            }
        })
        .collect()
}

#[test]
fn class_ids_of_ten_to_the_ninth_are_range_errors() {
    let lib = harness::stdlib();
    for label in [1_000_000_000i64, -1, 3, i64::MAX, i64::MIN] {
        for (name, x) in [
            ("sparse_softmax_cross_entropy", "logits"),
            ("softmax_focal_loss", "logits"),
            ("sparse_categorical_crossentropy", "probs"),
        ] {
            let call = Call::new()
                .backend(Backend::Interp)
                .input("labels", Array::int(vec![2], vec![0, label]))
                .input(x, Array::real(vec![2, 3], vec![0.25; 6]))
                .grad(x);
            for dtype in [DType::F64, DType::F32] {
                let k = kinds(lib, name, &call.clone().dtype(dtype));
                assert_eq!(
                    k,
                    vec![ErrorKind::Range, ErrorKind::Range],
                    "{name} {label}"
                );
            }
            // The compiled path.
            let c = lib
                .compile(name, Options::new().dtype(DType::F32).grad(x))
                .unwrap();
            let (labels, xs) = ([0i64, label], [0.25f32; 6]);
            let mut value = [0f32];
            let mut g = [0f32; 6];
            let e = c
                .call_into(
                    &[
                        ("labels", View::i64(&[2], &labels)),
                        (x, View::f32(&[2, 3], &xs)),
                    ],
                    &[],
                    Reduction::Mean,
                    None,
                    &mut value,
                    &mut [&mut g],
                )
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::Range, "{name} {label}: {}", e.message());
        }
    }
}

#[test]
fn ctc_lengths_past_the_padding_are_range_errors() {
    let lib = harness::stdlib();
    // 2 sequences, 3 labels of padding, 4 frames, 5 classes.
    let bad = [
        (vec![1, 2], vec![4, 5]), // logit length past T
        (vec![4, 2], vec![4, 4]), // label length past S
        (vec![-1, 2], vec![4, 4]),
        (vec![1, 2], vec![-1, 4]),
        (vec![1_000_000_000, 2], vec![4, 4]),
        (vec![1, 2], vec![1_000_000_000, 4]),
    ];
    for (label_lengths, logit_lengths) in bad {
        let call = Call::new()
            .backend(Backend::Interp)
            .input("labels", Array::int(vec![2, 3], vec![1, 2, 3, 1, 1, 0]))
            .input("logits", Array::real(vec![2, 4, 5], vec![0.1; 40]))
            .input("label_lengths", Array::int(vec![2], label_lengths.clone()))
            .input("logit_lengths", Array::int(vec![2], logit_lengths.clone()))
            .grad("logits");
        for dtype in [DType::F64, DType::F32] {
            let k = kinds(lib, "ctc_loss", &call.clone().dtype(dtype));
            assert_eq!(
                k,
                vec![ErrorKind::Range, ErrorKind::Range],
                "{label_lengths:?} {logit_lengths:?}"
            );
        }
    }
    // Class ids of 10^9 in the labels.
    let call = Call::new()
        .backend(Backend::Interp)
        .input("labels", Array::int(vec![1, 2], vec![1, 1_000_000_000]))
        .input("logits", Array::real(vec![1, 4, 5], vec![0.1; 20]))
        .input("label_lengths", Array::int(vec![1], vec![2]))
        .input("logit_lengths", Array::int(vec![1], vec![4]))
        .grad("logits");
    assert_eq!(
        kinds(lib, "ctc_loss", &call),
        vec![ErrorKind::Range, ErrorKind::Range]
    );
}

/// NaN and inf inputs give values (NaN or inf where they reach the output), never a crash, and
/// both backends agree on every reference case with its real inputs poisoned.
#[test]
fn nan_and_inf_inputs_propagate() {
    let lib = harness::stdlib();
    let call = Call::new()
        .backend(Backend::Interp)
        .input("labels", Array::real(vec![3], vec![1.0, 0.0, 1.0]))
        .input(
            "predictions",
            Array::real(vec![3], vec![f64::NAN, f64::INFINITY, 1.0]),
        )
        .grad("predictions");
    for b in [Backend::Interp, Backend::Jit] {
        let mut c = call.clone();
        c.backend = b;
        let out = lib.call("mean_squared_error", &c).unwrap();
        let v = out.value.to_f64();
        assert!(
            v[0].is_nan() && v[1] == f64::INFINITY && v[2] == 0.0,
            "{b:?} {v:?}"
        );
        let g = out.grads[0].1.to_f64();
        assert!(g[0].is_nan() && g[1] == f64::INFINITY, "{b:?} {g:?}");
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let mut n = 0;
    for f in cases::collect(&[dir]).unwrap() {
        let case = cases::load(&f).unwrap();
        let Ok((lib, entry)) = cases::loss_library(&case) else {
            continue;
        };
        let Ok(call) = case.call(Backend::Interp) else {
            continue;
        };
        for poison in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut c = call.clone();
            for (_, a) in c.inputs.iter_mut() {
                if let lossc::runtime::Data::Real(v) = &mut a.data {
                    if let Some(x) = v.first_mut() {
                        *x = poison;
                    }
                }
            }
            // NaN propagation differs between reductions by design (max/min propagate);
            // the backends agree on where it lands.
            if let Err(e) = harness::compare_backends(&lib, &entry, &c, Some(1e-4)) {
                panic!("{} with {poison}: {e}", case.name);
            }
            n += 1;
        }
    }
    assert!(n > 100, "only {n} poisoned cases");
}

/// An output over an index whose extent is computed (not bound by an input): the compiled
/// path sizes the value from the computed extent, as the interpreter does.
#[test]
fn outputs_over_computed_extents_are_sized_from_them() {
    let lib = Library::from_source(
        "k.loss",
        "loss g(x[i]) -> [k] { let t[k: 2 * I + 1] = if k < 2 * I { x[k / 2] } else { 0.5 }; t[k] }",
    )
    .unwrap();
    let want = lib
        .call(
            "g",
            &Call::new()
                .backend(Backend::Interp)
                .input("x", Array::real(vec![2], vec![1.0, 2.0])),
        )
        .unwrap();
    assert_eq!(want.value.shape, vec![5]);
    let c = lib
        .compile(
            "g",
            Options::new().dtype(DType::F64).reduction(Reduction::None),
        )
        .unwrap();
    let x = [1.0f64, 2.0];
    let views = [("x", View::f64(&[2], &x))];
    let got = c.call(&views, &[], Reduction::None, None);
    match got {
        Ok(got) => assert_eq!(got.value, want.value),
        Err(e) => assert_ne!(e.kind, ErrorKind::Limit, "{}", e.message()),
    }
}

/// A shape with a zero and a huge dimension holds no data but must not make an extent past
/// the limits (or one that wraps to a negative i64).
#[test]
fn empty_arrays_with_huge_dimensions_are_refused_or_consistent() {
    let lib = harness::stdlib();
    for huge in [1usize << 31, 1 << 62, 1 << 63, usize::MAX] {
        for shape in [vec![huge, 0], vec![0, huge]] {
            for b in [Backend::Interp, Backend::Jit] {
                let mut c = Call::new()
                    .backend(Backend::Interp)
                    .input("p", Array::real(shape.clone(), vec![]))
                    .input("q", Array::real(shape.clone(), vec![]))
                    .grad("q");
                c.backend = b;
                match lib.call("kl_divergence", &c) {
                    Ok(out) => out.value.validate("value").unwrap(),
                    Err(e) => assert!(
                        matches!(e.kind, ErrorKind::Limit | ErrorKind::Shape),
                        "{shape:?}: {}",
                        e.message()
                    ),
                }
            }
        }
    }
}

/// Chains as long as the source limit allows (millions of levels, not brackets): still an
/// error, not an overflow of the parser's stack.
#[test]
fn chains_as_long_as_the_source_limit_are_errors() {
    let room = lossc::syntax::MAX_SOURCE_LEN - 100;
    for (what, unit, tail) in [
        ("unary minus", "-", "x[i]"),
        ("not", "!", "x[i]"),
        ("powers", "x[i] ^ ", "x[i]"),
        ("sums", "x[i] + ", "x[i]"),
        ("else if", "if x[i] > 0.0 { x[i] } else ", "{ 0.0 }"),
    ] {
        let src = format!(
            "loss g(x[i]) -> [i] {{ {}{tail} }}",
            unit.repeat(room / unit.len())
        );
        let e = Library::from_source("long.loss", &src).expect_err(what);
        assert!(
            matches!(e.kind, ErrorKind::Limit | ErrorKind::Syntax),
            "{what}: {}",
            e.message()
        );
    }
}

/// Runs `entry` on both backends, f64 and f32, and through the compiled path (f64), and
/// returns the values of each (or its error).
fn everywhere(lib: &Library, entry: &str, call: &Call) -> Vec<(String, Result<Vec<f64>, String>)> {
    let mut out = Vec::new();
    for b in [Backend::Interp, Backend::Jit] {
        for d in [DType::F64, DType::F32] {
            let mut c = call.clone().dtype(d);
            c.backend = b;
            let r = std::panic::catch_unwind(|| lib.call(entry, &c))
                .unwrap_or_else(|_| panic!("{entry}: {b:?} {d:?} panicked"));
            out.push((
                format!("{b:?} {d:?}"),
                r.map(|o| o.value.to_f64()).map_err(|e| e.message()),
            ));
        }
    }
    out
}

/// Int arithmetic wraps (two's complement) the same way everywhere: `i64::MIN / -1` made the
/// interpreter panic (`a % b` overflowed in its floor division) while the JIT wrapped; on data,
/// through a parameter's default, from a parameter given, and folded by the simplifier.
#[test]
fn int_arithmetic_wraps_the_same_on_every_backend() {
    let min = i64::MIN;
    let src = "loss f(x[i]; a: int = 0) -> [i] { x[i] + real(a / -1) }\n\
               loss g(x[i]; a: int = -9223372036854775807 - 1, b: int = a / -1 + a % -1) -> [i] { x[i] + real(b) }\n\
               loss h(x[i], k[i]: int) -> [i] { x[i] + real(k[i] / -1) + real(k[i] % -1) + real(abs(k[i])) + real(-k[i]) }\n\
               loss c(x[i]) -> [i] { x[i] + real((-9223372036854775807 - 1) / -1) + real(9223372036854775807 + 1) + real(3 ^ 1099511627776) }\n\
               loss w(x[i], k[i]: int) -> [i] { x[i] + real(k[i] * k[i] + 9223372036854775807) + real(k[i] ^ 1099511627776) }";
    let lib = Library::from_source("wrap.loss", src).unwrap();
    let x = Array::real(vec![1], vec![0.0]);
    let m = min as f64;
    let cases: Vec<(&str, Call, f64)> = vec![
        ("f", Call::new().input("x", x.clone()).param("a", min), m),
        ("g", Call::new().input("x", x.clone()), m),
        (
            "h",
            Call::new()
                .input("x", x.clone())
                .input("k", Array::int(vec![1], vec![min])),
            3.0 * m,
        ),
        (
            "c",
            Call::new().input("x", x.clone()),
            // 3^(2^40) mod 2^64, as square and multiply over the whole exponent gives it
            2.0 * m + lossc::ir::arith::ipow(3, 1 << 40) as f64,
        ),
        (
            "w",
            Call::new()
                .input("x", x.clone())
                .input("k", Array::int(vec![1], vec![3])),
            9i64.wrapping_add(i64::MAX) as f64 + lossc::ir::arith::ipow(3, 1 << 40) as f64,
        ),
    ];
    for (entry, call, want) in cases {
        for (how, r) in everywhere(&lib, entry, &call) {
            let got = r.unwrap_or_else(|e| panic!("{entry} {how}: {e}"));
            let tol = want.abs() * 1e-6;
            assert!(
                (got[0] - want).abs() <= tol,
                "{entry} {how}: {got:?}, want {want}"
            );
        }
    }
    // through the compiled path with the parameter given per call, and baked
    for bake in [false, true] {
        let mut o = Options::new().dtype(DType::F64).reduction(Reduction::None);
        if bake {
            o = o.bake("a", min);
        }
        let c = lib.compile("f", o).unwrap();
        let xs = [0.0f64];
        let params: Vec<(&str, lossc::runtime::ParamValue)> = if bake {
            vec![]
        } else {
            vec![("a", min.into())]
        };
        let got = c
            .call(
                &[("x", View::f64(&[1], &xs))],
                &params,
                Reduction::None,
                None,
            )
            .unwrap();
        assert_eq!(got.value.to_f64(), vec![m], "bake {bake}");
    }
}

/// A real to an int power past i32: the exponent's parity is exact (`(-1.0) ^ 4294967296` was
/// -1: the exponent was clamped to i32::MAX, which is odd).
#[test]
fn real_to_a_huge_int_power_keeps_the_parity() {
    let src = "loss p(x[i]; n: int = 4294967296) -> [i] { x[i] ^ n }\n\
               loss q(x[i]) -> [i] { x[i] ^ 4294967297 + x[i] ^ 9223372036854775807 + (-1.0) ^ 4294967296 }";
    let lib = Library::from_source("pow.loss", src).unwrap();
    let x = Array::real(vec![3], vec![-1.0, 1.0, 0.5]);
    for (entry, call, want) in [
        ("p", Call::new().input("x", x.clone()), vec![1.0, 1.0, 0.0]),
        (
            "p",
            Call::new().input("x", x.clone()).param("n", 4294967297i64),
            vec![-1.0, 1.0, 0.0],
        ),
        ("q", Call::new().input("x", x.clone()), vec![-1.0, 3.0, 1.0]),
    ] {
        for (how, r) in everywhere(&lib, entry, &call) {
            assert_eq!(r.unwrap(), want, "{entry} {how}");
        }
    }
}

/// A computed extent that overflows 64 bits is a `Limit` error naming the index (`I * I * I`
/// with `I = 2^22` wrapped to 0, and the loss summed over nothing).
#[test]
fn computed_extents_that_overflow_are_errors() {
    let src = "loss e(x[i]; I: int = 4194304) -> [] { let t[u: I * I * I] = x[0]; sum(u: t[u]) }\n\
               loss f(x[i]; I: int = 3) -> [] { let t[u: I ^ 40 - 1] = x[0]; sum(u: t[u]) }\n\
               loss g(x[i]; I: int = 2) -> [] { let t[u: -(I ^ 63) + 1] = x[0]; sum(u: t[u]) }";
    let lib = Library::from_source("ext.loss", src).unwrap();
    for entry in ["e", "f", "g"] {
        let call = Call::new()
            .input("x", Array::real(vec![1], vec![1.0]))
            .grad("x");
        for (how, r) in everywhere(&lib, entry, &call) {
            let e = r.expect_err(&format!("{entry} {how}"));
            assert!(e.contains("extent of index `u`"), "{entry} {how}: {e}");
        }
        let c = lib
            .compile(entry, Options::new().dtype(DType::F64))
            .unwrap();
        let xs = [1.0f64];
        let e = c
            .call(&[("x", View::f64(&[1], &xs))], &[], Reduction::Sum, None)
            .unwrap_err();
        assert!(
            matches!(e.kind, ErrorKind::Limit),
            "{entry}: {}",
            e.message()
        );
    }
}

/// Worker threads past the limit are an error, at once (65535 spawned threads for a minute,
/// then fell back to one without a word).
#[test]
fn too_many_threads_are_an_error() {
    let lib = Library::from_source("t.loss", "loss t(x[i]) -> [i] { x[i] }").unwrap();
    let t0 = std::time::Instant::now();
    let Err(e) = lib.compile("t", Options::new().threads(65535)) else {
        panic!("65535 threads accepted");
    };
    assert_eq!(e.kind, ErrorKind::Limit, "{}", e.message());
    assert!(e.message().contains("1024"), "{}", e.message());
    assert!(t0.elapsed().as_secs() < 5);
    assert!(lib.compile("t", Options::new().threads(4)).is_ok());
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lossc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An import names a `.loss` file under the importing file's folder (or the standard
/// library): an absolute path, `..`, a file that is not `.loss` and a link out of the folder
/// are refused before the file is read, and the error quotes none of its contents (a syntax
/// error printed `/proc/self/environ`).
#[test]
fn imports_outside_the_folder_are_refused_unread() {
    let dir = scratch_dir("imports-outside");
    let inner = dir.join("inner");
    std::fs::create_dir_all(inner.join("sub")).unwrap();
    let secret = "SECRET_TOKEN=hunter2";
    std::fs::write(dir.join("secret.loss"), secret).unwrap();
    std::fs::write(dir.join("secret.txt"), secret).unwrap();
    std::fs::write(inner.join("notes.txt"), secret).unwrap();
    std::fs::write(inner.join("sub/ok.loss"), "fn ok(a) = a;\n").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(dir.join("secret.loss"), inner.join("link.loss")).unwrap();
    let abs = dir.join("secret.loss").display().to_string();
    let mut refused = vec![
        "/proc/self/environ".to_string(),
        "../secret.loss".to_string(),
        "../secret.txt".to_string(),
        "sub/../../secret.loss".to_string(),
        "notes.txt".to_string(),
        abs,
    ];
    if cfg!(unix) {
        refused.push("link.loss".to_string());
    }
    for imp in &refused {
        let src = format!("import \"{imp}\";\nloss q(x[i]) -> [i] {{ x[i] }}\n");
        std::fs::write(inner.join("main.loss"), &src).unwrap();
        let e = Library::from_file(&inner.join("main.loss")).expect_err(imp);
        assert!(!e.message().contains("hunter2"), "{imp}: {}", e.message());
        assert!(
            e.message().contains("cannot import"),
            "{imp}: {}",
            e.message()
        );
    }
    // inside the folder, and the standard library, still import
    let src = "import \"sub/ok.loss\";\nimport \"./sub/ok.loss\";\nimport \"box_geometry.loss\";\nloss q(x[i]) -> [i] { ok(x[i]) }\n";
    std::fs::write(inner.join("main.loss"), src).unwrap();
    let lib = Library::from_file(&inner.join("main.loss"));
    let _ = std::fs::remove_dir_all(&dir);
    lib.unwrap();
}

/// An import cycle is an error that names it, also when the first file is named by a relative
/// path (it said "defined twice": the root and its import were two keys for one file).
#[test]
fn import_cycles_are_named() {
    let dir = scratch_dir("import-cycle");
    std::fs::write(dir.join("a.loss"), "import \"b.loss\";\nfn fa(v) = v;\n").unwrap();
    std::fs::write(dir.join("b.loss"), "import \"a.loss\";\nfn fb(v) = v;\n").unwrap();
    std::fs::write(dir.join("c.loss"), "import \"c.loss\";\nfn fc(v) = v;\n").unwrap();
    let here = std::env::current_dir().unwrap();
    let rel = |f: &str| {
        let p = dir.join(f);
        pathdiff(&p, &here)
    };
    for (f, want) in [
        (rel("a.loss"), "import cycle: a.loss -> b.loss -> a.loss"),
        (
            dir.join("a.loss"),
            "import cycle: a.loss -> b.loss -> a.loss",
        ),
        (rel("c.loss"), "import cycle: c.loss -> c.loss"),
    ] {
        let e = Library::from_file(&f).unwrap_err();
        assert!(
            e.message().contains(want),
            "{}: {}",
            f.display(),
            e.message()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `p` relative to `base` (both absolute), with `..` steps.
fn pathdiff(p: &Path, base: &Path) -> PathBuf {
    let (pc, bc): (Vec<_>, Vec<_>) = (p.components().collect(), base.components().collect());
    let common = pc.iter().zip(&bc).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..bc.len() {
        out.push("..");
    }
    for c in &pc[common..] {
        out.push(c);
    }
    out
}

/// A source file is read up to the length limit only (`lossc check /dev/zero` ran out of
/// memory), and one that is not UTF-8 is an error that does not quote it.
#[test]
fn source_files_are_read_up_to_the_limit() {
    #[cfg(unix)]
    {
        let e = Library::from_file(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Limit, "{}", e.message());
    }
    let dir = scratch_dir("read-limit");
    std::fs::write(
        dir.join("bin.loss"),
        b"loss q(x[i]) -> [i] { x[i] }\n\xff\xfe",
    )
    .unwrap();
    let e = Library::from_file(&dir.join("bin.loss")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Data, "{}", e.message());
    std::fs::write(
        dir.join("big.loss"),
        " ".repeat(lossc::syntax::MAX_SOURCE_LEN + 1),
    )
    .unwrap();
    let e = Library::from_file(&dir.join("big.loss")).unwrap_err();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(e.kind, ErrorKind::Limit, "{}", e.message());
}

/// A legal size whose tables would not fit in memory is a `Limit` error before anything is
/// allocated (a 10^9-cell table, below `MAX_TABLE`, aborted allocating 16 GB), in the
/// interpreter, the JIT and the compiled path.
#[test]
fn tables_past_the_memory_limit_are_errors() {
    let lib = Library::from_source(
        "big.loss",
        "loss big(x[i]) -> [] { let t[j: 1000000000] = x[0] * real(j); let u[j] = t[j] * t[j]; sum(j: u[j]) }\n\
         loss out(x[i]) -> [j] { let t[j: 600000000] = x[0]; t[j] }",
    )
    .unwrap();
    let t0 = std::time::Instant::now();
    for entry in ["big", "out"] {
        let call = Call::new()
            .input("x", Array::real(vec![1], vec![1.0]))
            .grad("x");
        for (how, r) in everywhere(&lib, entry, &call) {
            let e = r.expect_err(&format!("{entry} {how}"));
            assert!(e.contains("the limit is"), "{entry} {how}: {e}");
        }
        let c = lib
            .compile(
                entry,
                Options::new().dtype(DType::F64).reduction(Reduction::None),
            )
            .unwrap();
        let xs = [1.0f64];
        let e = c
            .call(&[("x", View::f64(&[1], &xs))], &[], Reduction::None, None)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Limit, "{entry}: {}", e.message());
    }
    assert!(t0.elapsed().as_secs() < 10, "{:?}", t0.elapsed());
}

/// Printing a long array formats the elements it shows, not all of them (10^7 elements took
/// seconds to print three at each end).
#[test]
fn long_arrays_print_their_ends_only() {
    let n = 20_000_000;
    let a = Array::real(vec![n], (0..n).map(|k| k as f64 + 0.1).collect());
    let t0 = std::time::Instant::now();
    let text = a.display();
    let took = t0.elapsed();
    assert_eq!(
        text,
        "[0.1, 1.1, 2.1, ..., 19999997.1, 19999998.1, 19999999.1]"
    );
    assert!(took.as_millis() < 300, "{took:?}");
    let m = Array::int(vec![4, 2_000_000], vec![7; 8_000_000]);
    let text = m.display();
    assert!(text.len() < 200, "{text}");
    assert!(text.starts_with("[[7, 7, 7, ..., 7, 7, 7],"), "{text}");
}

/// Helpers each calling the one below twice: 20 levels (1 KB of source) took 13 s and 1.3 GB
/// to inline, 24 aborted at 3.9 GB. The work inlining does is bounded: a `Limit` error naming
/// the helper, in well under a second; the same maths with the shared part in a `let` is fine.
#[test]
fn exponential_helper_inlining_is_a_limit_error() {
    for levels in [20, 24, 40] {
        let mut src = String::from("fn e0(x) = x * 2.0;\n");
        for k in 1..=levels {
            src += &format!("fn e{k}(x) = e{}(x + 1.0) - e{}(x - 1.0);\n", k - 1, k - 1);
        }
        src += &format!("loss f(x[i]) -> [i] {{ e{levels}(x[i]) }}\n");
        let t0 = std::time::Instant::now();
        let e = Library::from_source("exp.loss", &src).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Limit, "{}", e.message());
        assert!(
            e.message().contains(&format!("inlining `e{levels}`")),
            "{}",
            e.message()
        );
        assert!(t0.elapsed().as_secs() < 2, "{levels}: {:?}", t0.elapsed());
    }
    let mut src = String::from("fn e0(x) = x * 2.0;\n");
    for k in 1..=40 {
        src += &format!(
            "fn e{k}(x) {{ let a = e{}(x + 1.0); a - a * 0.5 }}\n",
            k - 1
        );
    }
    src += "loss f(x[i]) -> [i] { e40(x[i]) }\n";
    Library::from_source("linear.loss", &src).unwrap();
}

/// Compiling many small tensor definitions grows linearly: every part's function loaded the
/// pointer of every table and every extent (and `parts` kept a pool-sized vector per stage),
/// so 30,000 definitions took 49 s and 9.7 GB. The generated IR for 4x the definitions is
/// about 4x the size (it was 11x), and both compile and run.
#[test]
fn many_small_definitions_compile_in_linear_size() {
    let clif_len = |n: usize| {
        let mut src = String::from("loss f(x[i]) -> [i] {\n    let t0[i] = x[i] * 0.5;\n");
        for k in 1..n {
            src += &format!("    let t{k}[i] = t{}[i] * 0.5 + x[i];\n", k - 1);
        }
        src += &format!("    t{}[i]\n}}\n", n - 1);
        let lib = Library::from_source("many.loss", &src).unwrap();
        let mut c = Call::new().input("x", Array::real(vec![2], vec![1.0, 2.0]));
        c.backend = Backend::Jit;
        let got = lib.call("f", &c).unwrap().value.to_f64();
        // t_k = t_{k-1} / 2 + x converges to 2x
        assert!(
            (got[0] - 2.0).abs() < 1e-9 && (got[1] - 4.0).abs() < 1e-9,
            "{got:?}"
        );
        let k = lossc::runtime::native::kernel(lib.loss("f").unwrap(), false).unwrap();
        k.clif().len()
    };
    let (small, big) = (clif_len(500), clif_len(2000));
    let ratio = big as f64 / small as f64;
    assert!(
        ratio < 6.0,
        "IR of 500 definitions: {small} bytes, of 2000: {big} ({ratio:.1}x)"
    );
}
