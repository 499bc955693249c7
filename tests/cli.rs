//! The `lossc` binary as a user meets it: diagnostics (insta snapshots), exit codes, errors
//! for bad input of every kind, and the main commands.

use std::path::Path;
use std::process::{Command, Output};

fn lossc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lossc"))
        .args(args)
        .env_remove("LOSSC_STDLIB_DIR")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run lossc")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_diagnostics_point_at_the_cause() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/diagnostics");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 7);
    for f in files {
        let rel = format!(
            "tests/diagnostics/{}",
            f.file_name().unwrap().to_string_lossy()
        );
        let o = lossc(&["check", &rel]);
        assert_eq!(o.status.code(), Some(2), "{rel} should fail to check");
        let err = stderr(&o);
        // file:line:column and a caret, always
        assert!(err.contains(&format!("{rel}:")), "{err}");
        assert!(err.contains('^'), "{err}");
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        insta::assert_snapshot!(format!("diagnostic_{name}"), err);
    }
}

#[test]
fn check_accepts_the_stdlib_and_examples() {
    let mut args = vec!["check".to_string()];
    for dir in ["stdlib", "examples"] {
        let d = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.extension().map(|x| x == "loss").unwrap_or(false) {
                args.push(format!(
                    "{dir}/{}",
                    p.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let o = lossc(&refs);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn list_shows_every_stdlib_loss_with_its_summary() {
    let o = lossc(&["list"]);
    assert!(o.status.success());
    let out = stdout(&o);
    let names: Vec<&str> = out
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    for want in STDLIB_NAMES {
        assert!(
            names.contains(want),
            "`{want}` missing from `lossc list`:\n{out}"
        );
    }
    for line in out.lines() {
        assert!(line.split_whitespace().count() > 2, "no summary: {line}");
    }
}

pub const STDLIB_NAMES: &[&str] = &[
    "sigmoid_cross_entropy",
    "binary_crossentropy",
    "balanced_sigmoid_cross_entropy",
    "softmax_cross_entropy",
    "sparse_softmax_cross_entropy",
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "focal_loss",
    "softmax_focal_loss",
    "dice_loss",
    "giou_loss",
    "diou_loss",
    "ciou_loss",
    "hinge_loss",
    "ctc_loss",
    "edit_distance",
    "kl_divergence",
    "large_margin_softmax_loss",
    "center_loss",
    "mean_squared_error",
    "mean_absolute_error",
    "root_mean_squared_error",
    "l2_loss",
    "l1_loss",
    "huber_loss",
    "smooth_l1_loss",
    "log_cosh",
];

#[test]
fn show_prints_signature_defaults_doc_and_source() {
    let o = lossc(&["show", "focal_loss"]);
    assert!(o.status.success());
    insta::assert_snapshot!("show_focal_loss", stdout(&o));
}

#[test]
fn run_check_passes_the_reference_cases() {
    let o = lossc(&["run", "--check", "--backend", "interp", "tests/cases"]);
    let out = stdout(&o);
    let last = out.lines().last().unwrap_or("");
    assert!(last.ends_with(" 0 failed"), "{out}");
    assert_eq!(o.status.code(), Some(0), "{out}");
}

#[test]
fn run_check_reports_a_failing_case_and_exits_nonzero() {
    let o = lossc(&["run", "--check", "tests/data/wrong_value.json"]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("FAIL mean_squared_error/wrong_value"), "{out}");
    assert!(out.trim_end().ends_with("0 passed, 1 failed"), "{out}");
}

#[test]
fn run_without_check_prints_json_results() {
    let o = lossc(&[
        "run",
        "tests/cases/mean_absolute_error/article_table_1.json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["value"]["shape"], serde_json::json!([]));
    assert!((v["value"]["data"][0].as_f64().unwrap() - 1.0).abs() < 1e-12);
}

#[test]
fn eval_takes_literals_params_reduction_and_writes_npy() {
    let out_dir = std::env::temp_dir().join(format!("lossc-eval-{}", std::process::id()));
    let o = lossc(&[
        "eval",
        "focal_loss",
        "--input",
        "labels=[1,0,1]",
        "--input",
        "logits=[0.2,-1.0,3.0]",
        "--param",
        "gamma=1.5",
        "--reduction",
        "mean",
        "--dtype",
        "f32",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(out_dir.join("value.npy")).unwrap();
    let a = lossc::runtime::Array::from_npy(&bytes, "value").unwrap();
    assert_eq!(a.shape, Vec::<usize>::new());
    // reading the value back as the next call's input works too
    let o2 = lossc(&[
        "eval",
        "mean_squared_error",
        "--input",
        "labels=[1,2]",
        "--input",
        "predictions=[0,0]",
        "--reduction",
        "sum",
        "--weights",
        &out_dir.join("value.npy").display().to_string(),
    ]);
    assert!(o2.status.success(), "{}", stderr(&o2));
    let _ = std::fs::remove_dir_all(out_dir);
}

/// Scalars given to an elementwise loss: a rank-0 value (and gradient), on both backends.
#[test]
fn eval_takes_scalars_for_elementwise_losses() {
    for backend in ["interp", "jit"] {
        let o = lossc(&[
            "eval",
            "mean_squared_error",
            "--input",
            "labels=3",
            "--input",
            "predictions=1",
            "--grad",
            "predictions",
            "--backend",
            backend,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        assert!(out.contains("mean_squared_error [] =\n4.0"), "{out}");
        assert!(out.contains("d/dpredictions [] =\n-4.0"), "{out}");
    }
}

/// Every kind of bad input: exit code 2 and a message naming the cause, never a panic.
#[test]
fn bad_input_is_a_clear_error_with_exit_code_2() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "eval",
                "ctc_loss",
                "--input",
                "labels=[[1, 1]]",
                "--input",
                "logits=[[[0, 0, 0], [0, 0, 0], [0, 0, 0]]]",
                "--input",
                "label_lengths=[2]",
                "--input",
                "logit_lengths=[4]",
            ],
            "out of range",
        ),
        (
            &[
                "eval",
                "focal_los",
                "--input",
                "labels=[1]",
                "--input",
                "logits=[0]",
            ],
            "unknown loss `focal_los`",
        ),
        (
            &[
                "eval",
                "focal_loss",
                "--input",
                "labels=[1]",
                "--input",
                "logits=[0]",
                "--param",
                "gama=1",
            ],
            "unknown parameter `gama`",
        ),
        (
            &[
                "eval",
                "focal_loss",
                "--input",
                "labels=[1]",
                "--input",
                "logit=[0]",
            ],
            "unknown input `logit`",
        ),
        (
            &["eval", "focal_loss", "--input", "labels=[1]"],
            "missing input `logits",
        ),
        (
            &[
                "eval",
                "focal_loss",
                "--input",
                "labels=[1,0]",
                "--input",
                "logits=[0]",
            ],
            "shape mismatch",
        ),
        (
            &[
                "eval",
                "focal_loss",
                "--input",
                "labels=[1,0",
                "--input",
                "logits=[0]",
            ],
            "not an array literal",
        ),
        (
            &[
                "eval",
                "focal_loss",
                "--input",
                "labels=[[1],[0,1]]",
                "--input",
                "logits=[0]",
            ],
            "ragged",
        ),
        (
            &[
                "eval",
                "focal_loss",
                "--input",
                "labels=[1]",
                "--input",
                "logits=[0]",
                "--reduction",
                "avg",
            ],
            "unknown reduction",
        ),
        (
            &[
                "eval",
                "focal_loss",
                "--input",
                "labels=[1]",
                "--input",
                "logits=[0]",
                "--param",
                "gamma=true",
            ],
            "is real",
        ),
        (
            &[
                "eval",
                "dice_loss",
                "--input",
                "labels=[1]",
                "--input",
                "probs=[0.5]",
                "--reduction",
                "weighted_mean",
            ],
            "reduction",
        ),
        (
            &[
                "eval",
                "sparse_softmax_cross_entropy",
                "--input",
                "labels=[0,3]",
                "--input",
                "logits=[[1,2,3],[1,2,3]]",
            ],
            "out of range",
        ),
        (
            &[
                "eval",
                "sparse_softmax_cross_entropy",
                "--input",
                "labels=[0,0.5]",
                "--input",
                "logits=[[1,2,3],[1,2,3]]",
            ],
            "wrong dtype",
        ),
        (
            &[
                "eval",
                "focal_loss",
                "--input",
                "labels=tests/data/corrupt.npy",
                "--input",
                "logits=[0]",
            ],
            "not a valid .npy",
        ),
        (
            &[
                "eval",
                "focal_loss",
                "--input",
                "labels=tests/data/strings.npy",
                "--input",
                "logits=[0]",
            ],
            "dtype",
        ),
        (
            &[
                "eval",
                "focal_loss",
                "--input",
                "labels=tests/data/absent.npy",
                "--input",
                "logits=[0]",
            ],
            "cannot read",
        ),
        (
            &["run", "--check", "tests/data/no_such_dir"],
            "no such case",
        ),
        (&["run", "tests/data/malformed.json"], "not valid JSON"),
        (
            &["show", "tests/diagnostics/undefined_name.loss"],
            "unknown name `gama`",
        ),
    ];
    for (args, want) in cases {
        let o = lossc(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected `{want}` in:\n{err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn bench_prints_json_and_refuses_sizes_it_cannot_allocate() {
    let o = lossc(&[
        "bench",
        "focal_loss",
        "--dims",
        "n=1000",
        "--grad",
        "logits",
        "--reps",
        "3",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert!(j["median_s"].as_f64().unwrap() > 0.0);
    assert!(j["compile_s"].as_f64().unwrap() > 0.0);
    let o = lossc(&[
        "bench",
        "focal_loss",
        "--dims",
        "n=1000000000000",
        "--grad",
        "logits",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("size") || stderr(&o).contains("elements"),
        "{}",
        stderr(&o)
    );
    let o = lossc(&[
        "bench",
        "softmax_cross_entropy",
        "--dims",
        "n=100000,c=100000",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("elements"), "{}", stderr(&o));
    // clif and asm print code; an unknown loss is exit 2.
    let o = lossc(&["clif", "mean_squared_error", "--grad", "predictions"]);
    assert!(stdout(&o).starts_with("function"));
    let o = lossc(&["asm", "mean_squared_error"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(!stdout(&o).is_empty());
    assert_eq!(lossc(&["clif", "no_such_loss"]).status.code(), Some(2));
}

/// `run` without `--check` runs every case and reports each failure (on stderr, naming the
/// case), the good cases' results still printed; the exit code says some failed. The JIT's
/// range error names the cell as the interpreter does.
#[test]
fn run_reports_every_failing_case() {
    let mut good: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases/focal_loss"))
            .unwrap()
            .map(|e| {
                format!(
                    "tests/cases/focal_loss/{}",
                    e.unwrap().file_name().to_string_lossy()
                )
            })
            .filter(|p| p.ends_with(".json"))
            .collect();
    good.sort();
    let args = [
        "run",
        &good[0],
        "tests/cases/errors/audit_center_loss_label_eq_K_D0.json",
        "tests/cases/errors/audit_gen_input_null.json",
        &good[1],
    ];
    let o = lossc(&args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 2, "{out}");
    let err = stderr(&o);
    assert!(
        err.contains("audit_center_loss_label_eq_K_D0: index out of range: `centre` read at 3")
            && err.contains("(at n = 1)"),
        "{err}"
    );
    assert!(err.contains("audit_gen_input_null: missing input"), "{err}");
    assert!(err.contains("2 of 4 case(s) failed to run"), "{err}");
    // Every case good: exit 0.
    let o = lossc(&["run", &good[0], &good[1]]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// `eval` runs the JIT unless told otherwise; both evaluators give the same error, with the
/// failing cell.
#[test]
fn eval_defaults_to_the_jit() {
    let help = stdout(&lossc(&["eval", "--help"]));
    assert!(help.contains("[default: jit]"), "{help}");
    let args = [
        "eval",
        "sparse_softmax_cross_entropy",
        "--input",
        "labels=[2,3]",
        "--input",
        "logits=[[1,2,3],[0.5,-1,0]]",
    ];
    let jit = lossc(&args);
    let mut with = args.to_vec();
    with.extend(["--backend", "interp"]);
    let interp = lossc(&with);
    assert_eq!(jit.status.code(), Some(2));
    assert!(
        stderr(&jit).contains(
            "`logits` read at 3 along `c` (dimension 1), whose valid range is 0..3 (at n = 1)"
        ),
        "{}",
        stderr(&jit)
    );
    assert_eq!(stderr(&jit), stderr(&interp));
}

/// Files that never end (`/dev/zero`) as a source, an array and a case file: a clear error
/// with exit code 2 at once, not an out-of-memory abort (sources were read whole before the
/// length limit was checked); a huge output prints its ends only, and `--out` writes it all.
#[cfg(unix)]
#[test]
fn endless_files_and_huge_outputs_end_cleanly() {
    let t0 = std::time::Instant::now();
    for (args, want) in [
        (&["check", "/dev/zero"][..], "the limit for a source"),
        (
            &[
                "eval",
                "mean_squared_error",
                "--input",
                "labels=/dev/zero",
                "--input",
                "predictions=[1]",
            ][..],
            "labels",
        ),
        (&["run", "/dev/zero"][..], "/dev/zero"),
    ] {
        let o = lossc(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
    assert!(t0.elapsed().as_secs() < 20, "{:?}", t0.elapsed());
    let dir = std::env::temp_dir().join(format!("lossc-huge-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("many.loss");
    std::fs::write(
        &f,
        "loss many(x[i]) -> [j] { let t[j: 3000000] = x[0] * real(j); t[j] }\n",
    )
    .unwrap();
    let out = dir.join("out");
    let o = lossc(&[
        "eval",
        f.to_str().unwrap(),
        "--input",
        "x=[1.0]",
        "--dtype",
        "f64",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("[0.0, 1.0, 2.0, ..., 2999997.0, 2999998.0, 2999999.0]"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).len() < 1000);
    let bytes = std::fs::read(out.join("value.npy")).unwrap();
    let a = lossc::runtime::Array::from_npy(&bytes, "value").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(a.shape, vec![3_000_000]);
    assert_eq!(a.to_f64()[2_999_999], 2_999_999.0);
}
