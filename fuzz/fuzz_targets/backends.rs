//! Generated well-typed programs -> the interpreter and the JIT on the same call; they must
//! agree (values and gradients within a tolerance, or errors of the same kind).
//!
//! The fuzzer's bytes drive a generator (`arbitrary::Unstructured`) of loss source text and
//! inputs. With `LOSSC_FUZZ_DUMP=DIR` set, each input is written as a `.loss` file and a
//! reference-case JSON naming it (the form kept in `tests/fuzz-regressions/backends/`).
#![no_main]

#[path = "../../tests/hostile/harness.rs"]
mod harness;

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use lossc::runtime::{Array, Call, DType, Data, Library, ParamValue, Reduction};

/// Which indices are in scope where an expression is generated.
#[derive(Clone, Copy)]
struct Scope {
    i: bool,
    j: bool,
    /// tensors defined so far: t[i], s[j], c[i] (a recurrence), e[k] (computed extent),
    /// r[i, j] (a recurrence over rows i whose cells along j fill lane-wise)
    t: bool,
    s: bool,
    c: bool,
    r: bool,
}

struct Gen<'a, 'b> {
    u: &'a mut Unstructured<'b>,
    budget: u32,
}

const CONSTS: [&str; 12] = [
    "0.0", "1.0", "0.5", "2.0", "-1.5", "3.0", "0.1", "1e-7", "100.0", "-0.25", "inf", "nan",
];

impl Gen<'_, '_> {
    fn pick<T: Copy>(&mut self, xs: &[T]) -> Result<T> {
        Ok(*self.u.choose(xs)?)
    }

    /// An int expression valid as an index into [0, I) most of the time (data-dependent
    /// indices are range-checked, so out-of-range ones are errors both backends must report).
    fn int_expr(&mut self, sc: Scope, depth: u32) -> Result<String> {
        let n = if depth == 0 { 4 } else { 9 };
        Ok(match self.u.int_in_range(0..=n)? {
            0 => "lab[i]".to_string(),
            1 if sc.i => "i".to_string(),
            2 if sc.j => "j".to_string(),
            3 => format!("{}", self.u.int_in_range(-2..=4)?),
            4 => "I".to_string(),
            5 => format!(
                "({} + {})",
                self.int_expr(sc, depth - 1)?,
                self.int_expr(sc, depth - 1)?
            ),
            6 => format!(
                "({} * {})",
                self.int_expr(sc, depth - 1)?,
                self.int_expr(sc, depth - 1)?
            ),
            7 => format!(
                "({} % {})",
                self.int_expr(sc, depth - 1)?,
                self.int_expr(sc, depth - 1)?
            ),
            8 => format!(
                "({} / {})",
                self.int_expr(sc, depth - 1)?,
                self.int_expr(sc, depth - 1)?
            ),
            9 => format!("abs({})", self.int_expr(sc, depth - 1)?),
            _ => "lab[i]".to_string(),
        })
    }

    /// A real expression whose free indices are among those in `sc`.
    fn real(&mut self, sc: Scope, depth: u32) -> Result<String> {
        if self.budget == 0 {
            return Ok("x[i]".into());
        }
        self.budget -= 1;
        let leaf = depth == 0 || self.u.ratio(1, 4)?;
        if leaf {
            return Ok(match self.u.int_in_range(0..=12)? {
                0 | 1 => "x[i]".to_string(),
                2 => "y[i]".to_string(),
                3 if sc.j => "m[i, j]".to_string(),
                4 => "m[i, lab[i]]".to_string(),
                5 => format!("x[{}]", self.int_expr(sc, 2)?),
                6 => self.pick(&CONSTS)?.to_string(),
                7 => "p".to_string(),
                8 if sc.t => "t[i]".to_string(),
                9 if sc.s && sc.j => "s[j]".to_string(),
                10 if sc.c => format!("c[{}]", self.pick(&["i", "i - 1", "i + 1", "lab[i]"])?),
                11 => format!("real({})", self.int_expr(sc, 1)?),
                12 if sc.r && sc.j => format!("r[i, {}]", self.pick(&["j", "j - 1", "j + 1"])?),
                _ => "y[i]".to_string(),
            });
        }
        let d = depth - 1;
        Ok(match self.u.int_in_range(0..=13)? {
            0 => {
                let op = self.pick(&["+", "-", "*", "/"])?;
                format!("({} {op} {})", self.real(sc, d)?, self.real(sc, d)?)
            }
            1 => {
                let f = self.pick(&[
                    "exp",
                    "log",
                    "log1p",
                    "expm1",
                    "sqrt",
                    "abs",
                    "sign",
                    "sigmoid",
                    "softplus",
                    "log_sigmoid",
                    "tanh",
                    "sin",
                    "cos",
                    "atan",
                    "acos",
                    "floor",
                    "ceil",
                    "stop_grad",
                    "-",
                ])?;
                format!("{f}({})", self.real(sc, d)?)
            }
            2 => format!("({}) ^ {}", self.real(sc, d)?, self.u.int_in_range(-2..=3)?),
            3 => format!("pow({}, {})", self.real(sc, d)?, self.real(sc, d)?),
            4 => {
                let f = self.pick(&["min", "max", "logsumexp", "xlogy"])?;
                format!("{f}({}, {})", self.real(sc, d)?, self.real(sc, d)?)
            }
            5 => format!(
                "clamp({}, {}, {})",
                self.real(sc, d)?,
                self.pick(&["-1.0", "0.0", "-0.5"])?,
                self.pick(&["1.0", "0.5", "2.0"])?
            ),
            6 | 7 => {
                let c = self.cond(sc, d)?;
                format!(
                    "if {c} {{ {} }} else {{ {} }}",
                    self.real(sc, d)?,
                    self.real(sc, d)?
                )
            }
            8 | 9 if !sc.j => {
                let r = self.pick(&["sum", "mean", "max", "min", "logsumexp"])?;
                let inner = Scope { j: true, ..sc };
                format!("{r}(j: {})", self.real(inner, d)?)
            }
            10 if !sc.i => {
                let r = self.pick(&["sum", "mean", "max", "min", "logsumexp"])?;
                let inner = Scope { i: true, ..sc };
                format!("{r}(i: {})", self.real(inner, d)?)
            }
            11 => format!("{} * {}", self.real(sc, d)?, self.real(sc, d)?),
            12 => {
                // an alias in a branch
                format!(
                    "if true {{ let a = {}; a * a - a }} else {{ 0.0 }}",
                    self.real(sc, d)?
                )
            }
            _ => format!("({} - {})", self.real(sc, d)?, self.real(sc, d)?),
        })
    }

    fn cond(&mut self, sc: Scope, depth: u32) -> Result<String> {
        Ok(match self.u.int_in_range(0..=5)? {
            0 => format!(
                "{} {} {}",
                self.real(sc, depth)?,
                self.pick(&["<", "<=", ">", ">=", "==", "!="])?,
                self.real(sc, depth)?
            ),
            1 => format!("isnan({})", self.real(sc, depth)?),
            2 => format!("isinf({})", self.real(sc, depth)?),
            3 => format!(
                "({} && {})",
                self.cond(sc, depth / 2)?,
                self.cond(sc, depth / 2)?
            ),
            4 => format!(
                "({} || !{})",
                self.cond(sc, depth / 2)?,
                self.cond(sc, depth / 2)?
            ),
            _ => format!(
                "{} {} {}",
                self.int_expr(sc, 1)?,
                self.pick(&["<", "==", ">="])?,
                self.int_expr(sc, 1)?
            ),
        })
    }

    fn program(&mut self) -> Result<(String, Vec<&'static str>)> {
        let mut sc = Scope {
            i: true,
            j: false,
            t: false,
            s: false,
            c: false,
            r: false,
        };
        let mut lets = String::new();
        let depth = self.u.int_in_range(1..=4)?;
        if self.u.ratio(1, 2)? {
            lets += &format!("let t[i] = {};\n", self.real(sc, depth)?);
            sc.t = true;
        }
        if self.u.ratio(1, 3)? {
            let inner = Scope {
                i: false,
                j: true,
                ..sc
            };
            let body = self.real(Scope { t: false, ..inner }, depth)?;
            // s[j] may not read i: bodies are closed over their own indices
            let body = if body.contains("[i") || body.contains("i]") {
                "m[0, j]".to_string()
            } else {
                body
            };
            lets += &format!("let s[j: J] = {body};\n");
            sc.s = true;
        }
        if self.u.ratio(1, 3)? {
            let (read, pad) = if self.u.ratio(1, 2)? {
                ("c[i - 1]", self.pick(&["0.0", "1.0", "-inf"])?)
            } else {
                ("c[i + 1]", "0.0")
            };
            let step = self.real(Scope { c: false, ..sc }, depth.min(2))?;
            let op = self.pick(&["+", "*", "-"])?;
            lets += &format!("let c[i] pad {pad} = {read} {op} {step};\n");
            sc.c = true;
        }
        if self.u.ratio(1, 3)? {
            // rows along i, each cell reading the row before at neighbouring columns (the pad
            // outside), m at shifted columns, guarded or not (a range error at the row's end)
            let near = [
                "r[i - 1, j - 1]",
                "r[i - 1, j]",
                "r[i - 1, j + 1]",
                "r[i - 1, j + 2]",
                "r[i - 1, j - 2]",
            ];
            let (a, b) = (self.pick(&near)?, self.pick(&near)?);
            let comb = match self.u.int_in_range(0..=3)? {
                0 => format!("logsumexp({a}, {b})"),
                1 => format!("{a} + {b}"),
                2 => format!("max({a}, {b})"),
                _ => format!("if m[i, j] > 0.0 {{ {a} }} else {{ {b} }}"),
            };
            let side = self.pick(&[
                "m[i, j]",
                "m[i, j + 1]",
                "m[i, j - 1]",
                "if j + 1 < J { m[i, j + 1] } else { 0.0 }",
                "if j >= 1 { m[i - 1, j - 1] } else { 1.0 }",
                "real(j)",
            ])?;
            let pad = self.pick(&["0.0", "-inf", "1.0"])?;
            let inner = Scope {
                j: true,
                c: false,
                r: false,
                ..sc
            };
            let init = self.real(inner, 1)?;
            let step = self.real(inner, depth.min(2))?;
            lets += &format!(
                "let r[i, j] pad {pad} = if i == 0 {{ {init} }} else {{ {comb} + {side} * {step} }};\n"
            );
            sc.r = true;
        }
        let shape = self.u.int_in_range(0..=2)?;
        let src = match shape {
            0 => format!(
                "loss g(x[i], y[i], m[i, j], lab[i]: int; p = 0.5) -> [i] {{\n{lets}{}\n}}\n",
                self.real(sc, depth)?
            ),
            1 => {
                let r = self.pick(&["sum", "mean", "max", "logsumexp"])?;
                let body = self.real(sc, depth)?;
                format!("loss g(x[i], y[i], m[i, j], lab[i]: int; p = 0.5) -> [] {{\n{lets}{r}(i: {body})\n}}\n")
            }
            _ => {
                let body = self.real(Scope { j: true, ..sc }, depth)?;
                format!("loss g(x[i], y[i], m[i, j], lab[i]: int; p = 0.5) -> [i, j] {{\n{lets}{body}\n}}\n")
            }
        };
        Ok((src, vec!["x", "y", "m"]))
    }

    fn value(&mut self) -> Result<f64> {
        Ok(match self.u.int_in_range(0..=15)? {
            0 => f64::NAN,
            1 => f64::INFINITY,
            2 => f64::NEG_INFINITY,
            3 => 0.0,
            4 => -0.0,
            5 => 1e300,
            6 => -1e-300,
            // dyadic values: exact in f32 and f64, so ties compare the same in both backends
            _ => (self.u.int_in_range(-64i32..=64)? as f64) / 16.0,
        })
    }
}

fn build(u: &mut Unstructured) -> Result<(String, Call)> {
    let mut g = Gen { u, budget: 40 };
    let (src, reals) = g.program()?;
    let n = g.u.int_in_range(1..=6usize)?;
    let nj = g.u.int_in_range(1..=4usize)?;
    let mut vals = |len: usize| -> Result<Vec<f64>> { (0..len).map(|_| g.value()).collect() };
    let x = vals(n)?;
    let y = vals(n)?;
    let m = vals(n * nj)?;
    let mut lab = Vec::with_capacity(n);
    for _ in 0..n {
        // mostly valid class ids; sometimes out of range, negative or huge
        lab.push(match g.u.int_in_range(0..=9)? {
            0 => -1,
            1 => nj as i64,
            2 => 1_000_000_000,
            _ => g.u.int_in_range(0..=nj as i64 - 1)?,
        });
    }
    let reduction = *g.u.choose(&[
        Reduction::None,
        Reduction::Sum,
        Reduction::Mean,
        Reduction::WeightedMean,
    ])?;
    let dtype = if g.u.ratio(1, 3)? {
        DType::F32
    } else {
        DType::F64
    };
    let mut call = Call::new()
        .input("x", Array::real(vec![n], x))
        .input("y", Array::real(vec![n], y))
        .input("m", Array::real(vec![n, nj], m))
        .input("lab", Array::int(vec![n], lab))
        .reduction(reduction)
        .dtype(dtype);
    if g.u.ratio(1, 2)? {
        call = call.param("p", g.value()?);
    }
    if reduction == Reduction::WeightedMean {
        // Zero weights too: the interpreter then skips the loss's body, and so must the JIT
        // (tests/fuzz-regressions/backends/zero_weights_grad_range).
        let w = if g.u.ratio(1, 4)? {
            0.0
        } else {
            0.5 + g.value()?.abs()
        };
        call = call.weights(Array::scalar(w));
    }
    for r in reals {
        if g.u.ratio(2, 3)? {
            call = call.grad(r);
        }
    }
    Ok((src, call))
}

fn dump(dir: &str, src: &str, call: &Call) {
    let h = src.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    let name = format!("gen_{h:016x}");
    let num = |x: f64| {
        if x.is_finite() {
            serde_json::json!(x)
        } else {
            serde_json::json!(x.to_string().to_lowercase())
        }
    };
    let arr = |a: &Array| {
        let data: Vec<serde_json::Value> = match &a.data {
            Data::Real(v) => v.iter().map(|x| num(*x)).collect(),
            Data::Int(v) => v.iter().map(|x| serde_json::json!(x)).collect(),
        };
        serde_json::json!({"shape": a.shape, "data": data})
    };
    let inputs: serde_json::Map<String, serde_json::Value> = call
        .inputs
        .iter()
        .map(|(k, a)| (k.clone(), arr(a)))
        .collect();
    let params: serde_json::Map<String, serde_json::Value> = call
        .params
        .iter()
        .map(|(k, v)| {
            let j = match v {
                ParamValue::Real(x) => num(*x),
                ParamValue::Int(i) => serde_json::json!(i),
                ParamValue::Bool(b) => serde_json::json!(b),
            };
            (k.clone(), j)
        })
        .collect();
    let case = serde_json::json!({
        "name": name, "loss": format!("{name}.loss"), "inputs": inputs, "params": params,
        "reduction": call.reduction.name(), "dtype": call.dtype.name(), "grad": call.grad,
        "weights": call.weights.as_ref().map(arr),
    });
    let _ = std::fs::write(format!("{dir}/{name}.loss"), src);
    let _ = std::fs::write(
        format!("{dir}/{name}.json"),
        serde_json::to_string_pretty(&case).unwrap_or_default(),
    );
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok((src, call)) = build(&mut u) else {
        return;
    };
    if let Ok(dir) = std::env::var("LOSSC_FUZZ_DUMP") {
        dump(&dir, &src, &call);
    }
    let lib = match Library::from_source("gen.loss", &src) {
        Ok(l) => l,
        // The generator aims at well-typed programs but does not promise it.
        Err(_) => return,
    };
    let rtol = if call.dtype == DType::F64 { 1e-6 } else { 1e-2 };
    if let Err(e) = harness::compare_backends(&lib, "g", &call, Some(rtol)) {
        panic!("{src}\n{e}");
    }
});
