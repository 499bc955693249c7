//! Generated well-typed loss programs and calls, for the differential test of the JIT against
//! the interpreter (`tests/jit.rs`, `generated_programs_agree`) and the `backends` fuzz
//! target (`fuzz/fuzz_targets/backends.rs`), which include this file with `#[path]`.
//!
//! One generator, driven by a [`Choices`] source: a seeded RNG ([`Seeded`], for tests) or
//! the fuzzer's bytes ([`Bytes`]). A program is `loss g(x[i], y[i], m[i, j], lab[i]: int;
//! p = 0.5) -> OUT { LETS BODY }` whose definitions are, in a random order, each reading what
//! is defined before it: real, bool and int tables over `[i]`, `[j]`, `[i, j]` or `[j, i]`
//! (transposed), aliases of the same forms, recurrences (forward and backward, along either
//! index of a 2-D table). Reads of a table whose indices are not all in scope reduce over the
//! missing ones (so a 2-D table is reduced over each of its indices) or gather them
//! (`m[i, lab[i]]`, `t[k[j], j]`); `if`s guard a branch that would be NaN or inf where it is
//! not taken (`if e > 0.0 { log(e) } else { .. }`). The call differentiates every real input,
//! in f32 or f64, with reduction none, sum, mean or weighted_mean.
//!
//! [`source`] gives the program of a seed (for other tests to reuse), [`case`] the program and
//! its call.
#![allow(dead_code)]

use lossc::runtime::{Array, Call, DType, Reduction};

/// Where the generator's decisions come from.
pub trait Choices {
    /// A number in `0..n` (`n >= 1`).
    fn below(&mut self, n: u32) -> u32;
}

/// A seeded RNG (splitmix64).
pub struct Seeded(pub u64);

impl Choices for Seeded {
    fn below(&mut self, n: u32) -> u32 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^= z >> 31;
        (((z >> 32) * n as u64) >> 32) as u32
    }
}

/// The fuzzer's bytes, one per choice (two for more than 256 options); zeros once used up, so
/// every choice's first option must lead to a small program.
pub struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes { data, at: 0 }
    }
    fn byte(&mut self) -> u32 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b as u32
    }
}

impl Choices for Bytes<'_> {
    fn below(&mut self, n: u32) -> u32 {
        let x = if n > 256 {
            self.byte() << 8 | self.byte()
        } else {
            self.byte()
        };
        x % n.max(1)
    }
}

/// A generated program and the call to run it with.
pub struct Case {
    pub source: String,
    pub call: Call,
}

/// The source of the program generated for `seed`.
pub fn source(seed: u64) -> String {
    case(seed).source
}

/// The program and call generated for `seed`.
pub fn case(seed: u64) -> Case {
    generate(&mut Seeded(seed))
}

/// The seeds a test over generated programs runs: `LOSSC_GEN_SEEDS=A..B` (or one seed `A`)
/// for more, or to replay a failure; `default` without it.
pub fn seeds(default: std::ops::Range<u64>) -> std::ops::Range<u64> {
    match std::env::var("LOSSC_GEN_SEEDS") {
        Ok(s) => match s.split_once("..") {
            Some((a, b)) => {
                a.trim().parse().expect("LOSSC_GEN_SEEDS=A..B")
                    ..b.trim().parse().expect("LOSSC_GEN_SEEDS=A..B")
            }
            None => {
                let a: u64 = s.trim().parse().expect("LOSSC_GEN_SEEDS=A or A..B");
                a..a + 1
            }
        },
        Err(_) => default,
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Real,
    Bool,
    Int,
}

/// An index: `i` (extent `I`) or `j` (extent `J`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ix {
    I,
    J,
}

impl Ix {
    fn name(self) -> &'static str {
        match self {
            Ix::I => "i",
            Ix::J => "j",
        }
    }
    fn extent(self) -> &'static str {
        match self {
            Ix::I => "I",
            Ix::J => "J",
        }
    }
}

/// Something readable: an input, a table or an alias.
#[derive(Clone, Debug)]
struct Def {
    name: String,
    kind: Kind,
    /// a table's indices in declared order; an alias's, the scope it was written in
    dims: Vec<Ix>,
    alias: bool,
    /// for ints: the index whose range its values are meant to fall in
    range: Option<Ix>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Scope {
    i: bool,
    j: bool,
}

impl Scope {
    fn has(self, x: Ix) -> bool {
        match x {
            Ix::I => self.i,
            Ix::J => self.j,
        }
    }
    fn with(self, x: Ix) -> Scope {
        match x {
            Ix::I => Scope { i: true, ..self },
            Ix::J => Scope { j: true, ..self },
        }
    }
    fn of(dims: &[Ix]) -> Scope {
        Scope {
            i: dims.contains(&Ix::I),
            j: dims.contains(&Ix::J),
        }
    }
}

const CONSTS: [&str; 10] = [
    "1.0", "0.5", "2.0", "-1.5", "0.0", "3.0", "0.25", "-0.75", "100.0", "1e-7",
];

struct Gen<'a> {
    ch: &'a mut dyn Choices,
    budget: u32,
    /// inputs, then definitions in order (all readable by what comes after)
    defs: Vec<Def>,
}

impl Gen<'_> {
    fn below(&mut self, n: u32) -> u32 {
        self.ch.below(n)
    }
    fn chance(&mut self, k: u32, n: u32) -> bool {
        self.below(n) < k
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u32) as usize]
    }

    /// Readable definitions of a kind.
    fn of_kind(&self, kind: Kind) -> Vec<Def> {
        self.defs
            .iter()
            .filter(|d| d.kind == kind)
            .cloned()
            .collect()
    }

    /// An int expression whose value is meant to fall in `r`'s range (data-dependent reads
    /// are range-checked, so one that does not is an error both backends must report).
    fn int(&mut self, sc: Scope, r: Ix, depth: u32) -> String {
        let ext = r.extent();
        let leaf = depth == 0 || self.budget == 0 || self.chance(1, 3);
        if self.budget > 0 {
            self.budget -= 1;
        }
        if leaf {
            return match self.below(7) {
                0 => "0".into(),
                1 if sc.has(r) => r.name().into(),
                2 if sc.has(r) => format!("{ext} - 1 - {}", r.name()),
                3 if r == Ix::J => {
                    let k = self.lab_arg(sc, depth);
                    format!("lab[{k}]")
                }
                4 => {
                    let ints: Vec<Def> = self
                        .of_kind(Kind::Int)
                        .into_iter()
                        .filter(|d| d.range == Some(r) && d.dims.iter().all(|x| sc.has(*x)))
                        .collect();
                    if ints.is_empty() {
                        format!("{ext} - 1")
                    } else {
                        let d = ints[self.below(ints.len() as u32) as usize].clone();
                        self.plain_read(&d)
                    }
                }
                5 => format!("{ext} - 1"),
                _ => {
                    let other = if r == Ix::I { Ix::J } else { Ix::I };
                    if sc.has(other) {
                        format!("{} % {ext}", other.name())
                    } else {
                        "0".into()
                    }
                }
            };
        }
        let d = depth - 1;
        match self.below(5) {
            0 => format!("({} + {}) % {ext}", self.int(sc, r, d), self.below(3) + 1),
            1 => format!("min(max({}, 0), {ext} - 1)", self.int_any(sc, d)),
            2 => {
                let c = self.cond(sc, d);
                format!(
                    "(if {c} {{ {} }} else {{ {} }})",
                    self.int(sc, r, d),
                    self.int(sc, r, d)
                )
            }
            3 => format!("abs({}) % {ext}", self.int_any(sc, d)),
            _ => format!("({} * 3 + 1) % {ext}", self.int(sc, r, d)),
        }
    }

    /// An int of any value (arithmetic on ids and extents).
    fn int_any(&mut self, sc: Scope, depth: u32) -> String {
        let r = self.pick(&[Ix::I, Ix::J]);
        let a = self.int(sc, r, depth);
        match self.below(4) {
            0 => format!("({a} - {})", self.below(4)),
            1 => format!("({a} * {})", self.below(3) as i32 - 1),
            2 => format!("({a} / 2)"),
            _ => a,
        }
    }

    /// An argument for `lab` (indexed by `i`).
    fn lab_arg(&mut self, sc: Scope, depth: u32) -> String {
        if sc.i && self.chance(3, 4) {
            "i".into()
        } else {
            self.int(sc, Ix::I, depth.saturating_sub(1))
        }
    }

    /// A read of `d` at its plain indices (all in scope).
    fn plain_read(&self, d: &Def) -> String {
        if d.alias || d.dims.is_empty() {
            return d.name.clone();
        }
        let args: Vec<&str> = d.dims.iter().map(|x| x.name()).collect();
        format!("{}[{}]", d.name, args.join(", "))
    }

    /// A read of `d` in scope `sc`, as an expression of its kind, its indices in scope; or
    /// `None` when some are not (the caller reduces over them).
    fn read(&mut self, d: &Def, sc: Scope, depth: u32) -> Option<String> {
        if d.alias {
            return d.dims.iter().all(|x| sc.has(*x)).then(|| d.name.clone());
        }
        let mut args = Vec::new();
        for x in &d.dims {
            let a = if sc.has(*x) {
                match self.below(14) {
                    // a gather in place of the plain index
                    0 | 1 => self.int(sc, *x, depth.min(2)),
                    // a constant offset: the pad, or a range error for unpadded tables
                    2 => format!("{} - 1", x.name()),
                    _ => x.name().to_string(),
                }
            } else if self.chance(1, 3) {
                // a gather of the missing index
                self.int(sc, *x, depth.min(2))
            } else {
                return None;
            };
            args.push(a);
        }
        Some(if args.is_empty() {
            d.name.clone()
        } else {
            format!("{}[{}]", d.name, args.join(", "))
        })
    }

    /// `d` read as a real in scope `sc`, reducing over the indices it has out of scope.
    fn real_read(&mut self, d: &Def, sc: Scope, depth: u32) -> String {
        if let Some(r) = self.read(d, sc, depth) {
            if d.kind == Kind::Real && self.chance(1, 4) {
                // a difference with a table read (`lse[i] - x[i]`: the optimizer splits
                // logsumexp tables read so)
                let other = self.real(sc, depth.saturating_sub(1));
                return if self.chance(1, 2) {
                    format!("({r} - {other})")
                } else {
                    format!("({other} - {r})")
                };
            }
            return self.as_real(d.kind, r, sc, depth);
        }
        // reduce over the first missing index (the others, in the inner scope, in turn)
        let x = *d.dims.iter().find(|x| !sc.has(**x)).unwrap();
        let inner = sc.with(x);
        let body = self.real_read(d, inner, depth);
        let body = if self.chance(1, 3) {
            let other = self.real(inner, depth.saturating_sub(1));
            format!("{body} * {other}")
        } else {
            body
        };
        let op = self.pick(&["sum", "sum", "mean", "max", "min", "logsumexp"]);
        format!("{op}({}: {body})", x.name())
    }

    fn as_real(&mut self, kind: Kind, r: String, sc: Scope, depth: u32) -> String {
        match kind {
            Kind::Real => r,
            Kind::Int => format!("real({r})"),
            Kind::Bool => {
                let d = depth.saturating_sub(1);
                let a = if self.chance(1, 2) {
                    self.pick(&CONSTS).to_string()
                } else {
                    self.real(sc, d)
                };
                let b = self.pick(&CONSTS).to_string();
                format!("(if {r} {{ {a} }} else {{ {b} }})")
            }
        }
    }

    /// A real expression over the indices in scope.
    fn real(&mut self, sc: Scope, depth: u32) -> String {
        if self.budget == 0 || depth == 0 || self.chance(1, 4) {
            return self.real_leaf(sc, depth);
        }
        self.budget -= 1;
        let d = depth - 1;
        match self.below(12) {
            0 | 1 => {
                let op = self.pick(&["+", "-", "*", "/"]);
                format!("({} {op} {})", self.real(sc, d), self.real(sc, d))
            }
            2 => {
                let f = self.pick(&[
                    "exp",
                    "log1p",
                    "sigmoid",
                    "softplus",
                    "tanh",
                    "abs",
                    "sin",
                    "atan",
                    "-",
                    "log_sigmoid",
                    "sqrt",
                    "log",
                ]);
                format!("{f}({})", self.real(sc, d))
            }
            3 => format!("({}) ^ {}", self.real(sc, d), self.below(3) + 1),
            4 => {
                let f = self.pick(&["min", "max", "logsumexp"]);
                format!("{f}({}, {})", self.real(sc, d), self.real(sc, d))
            }
            5 | 6 => {
                let c = self.cond(sc, d);
                format!(
                    "(if {c} {{ {} }} else {{ {} }})",
                    self.real(sc, d),
                    self.real(sc, d)
                )
            }
            7 | 8 => self.dead_branch(sc, d),
            9 => {
                // a reduction over an index not in scope
                let free: Vec<Ix> = [Ix::I, Ix::J].into_iter().filter(|x| !sc.has(*x)).collect();
                if free.is_empty() {
                    return self.real_leaf(sc, d);
                }
                let x = self.pick(&free);
                let op = self.pick(&["sum", "mean", "max", "min", "logsumexp"]);
                format!("{op}({}: {})", x.name(), self.real(sc.with(x), d))
            }
            10 => format!("real({})", self.int_any(sc, d.min(2))),
            _ => {
                // a branch-local alias
                let a = self.real(sc, d);
                format!("(if true {{ let a = {a}; a * a - a }} else {{ 0.0 }})")
            }
        }
    }

    /// `if`s whose untaken branch is NaN or inf where it is not taken.
    fn dead_branch(&mut self, sc: Scope, depth: u32) -> String {
        let e = self.real(sc, depth);
        let other = self.real(sc, depth.saturating_sub(1));
        let (c, f) = match self.below(6) {
            0 => (format!("({e}) > 0.0"), format!("log({e})")),
            1 => (format!("({e}) >= 0.0"), format!("sqrt({e})")),
            2 => (format!("({e}) != 0.0"), format!("1.0 / ({e})")),
            3 => (format!("abs({e}) < 1.0"), format!("acos({e})")),
            4 => (format!("({e}) > -1.0"), format!("log1p({e})")),
            _ => (format!("({e}) < 20.0"), format!("exp(({e}) * 40.0)")),
        };
        if self.chance(1, 2) {
            format!("(if {c} {{ {f} }} else {{ {other} }})")
        } else {
            format!("(if !({c}) {{ {other} }} else {{ {f} }})")
        }
    }

    fn real_leaf(&mut self, sc: Scope, depth: u32) -> String {
        match self.below(8) {
            0 => self.pick(&CONSTS).to_string(),
            1 => "p".into(),
            2 | 3 => {
                // the inputs
                let names = ["x", "y", "m"];
                let n = self.pick(&names);
                let d = self.defs.iter().find(|d| d.name == n).unwrap().clone();
                self.real_read(&d, sc, depth.min(1))
            }
            _ => {
                // any definition, the inputs' too
                let k = self.below(self.defs.len() as u32) as usize;
                let d = self.defs[k].clone();
                self.real_read(&d, sc, depth.min(1))
            }
        }
    }

    fn cond(&mut self, sc: Scope, depth: u32) -> String {
        let d = depth.saturating_sub(1);
        match self.below(8) {
            0 | 1 => {
                let op = self.pick(&["<", "<=", ">", ">=", "==", "!="]);
                format!("{} {op} {}", self.real(sc, d), self.real(sc, d))
            }
            2 | 3 => {
                let bools = self.of_kind(Kind::Bool);
                if bools.is_empty() {
                    return format!("{} > 0.3", self.real(sc, d));
                }
                let b = bools[self.below(bools.len() as u32) as usize].clone();
                match self.read(&b, sc, d) {
                    Some(r) => r,
                    // a bool read out of scope: counted (a bool reduction, through reals)
                    None => format!("{} > 0.5", self.real_read(&b, sc, d)),
                }
            }
            4 if depth > 0 => format!("!({})", self.cond(sc, d)),
            5 if depth > 0 => {
                let op = self.pick(&["&&", "||"]);
                format!("({} {op} {})", self.cond(sc, d), self.cond(sc, d))
            }
            6 => {
                let op = self.pick(&["<", "==", "!=", ">="]);
                format!(
                    "{} {op} {}",
                    self.int_any(sc, d.min(1)),
                    self.int_any(sc, d.min(1))
                )
            }
            _ => format!("isnan({})", self.real(sc, d)),
        }
    }

    fn dims(&mut self) -> Vec<Ix> {
        match self.below(5) {
            0 => vec![Ix::I],
            1 => vec![Ix::J],
            2 => vec![Ix::J, Ix::I],
            _ => vec![Ix::I, Ix::J],
        }
    }

    /// One definition, reading what is defined so far.
    fn definition(&mut self, k: usize, depth: u32) -> String {
        let what = self.below(20);
        if what >= 17 {
            return self.recurrence(k, depth);
        }
        let kind = match what {
            0..=10 => Kind::Real,
            11..=14 => Kind::Bool,
            _ => Kind::Int,
        };
        // a reduction table, `lse[i] = logsumexp(j: ..)` (which the optimizer splits into
        // more tables), or any other definition
        let reduction = (6..=10).contains(&what);
        let mut dims = self.dims();
        if reduction {
            dims.truncate(1);
        }
        let sc = Scope::of(&dims);
        let alias = self.chance(1, 4);
        let range = (kind == Kind::Int).then(|| self.pick(&[Ix::I, Ix::J]));
        let body = match kind {
            Kind::Real if reduction => {
                let x = if dims[0] == Ix::I { Ix::J } else { Ix::I };
                let op = self.pick(&["logsumexp", "logsumexp", "logsumexp", "sum", "max", "mean"]);
                let e = if self.chance(1, 2) {
                    "m[i, j]".to_string()
                } else {
                    self.real(sc.with(x), depth)
                };
                format!("{op}({}: {e})", x.name())
            }
            Kind::Real => self.real(sc, depth),
            Kind::Bool => self.cond(sc, depth),
            Kind::Int => self.int(sc, range.unwrap(), depth.min(3)),
        };
        let name = match kind {
            Kind::Real => format!("t{k}"),
            Kind::Bool => format!("b{k}"),
            Kind::Int => format!("k{k}"),
        };
        let text = if alias {
            format!("    let {name} = {body};\n")
        } else {
            let ix: Vec<&str> = dims.iter().map(|x| x.name()).collect();
            format!("    let {name}[{}] = {body};\n", ix.join(", "))
        };
        self.defs.push(Def {
            name,
            kind,
            dims,
            alias,
            range,
        });
        text
    }

    /// A recurrence along one of its indices, forward or backward, with a pad.
    fn recurrence(&mut self, k: usize, depth: u32) -> String {
        let dims = self.dims();
        let sc = Scope::of(&dims);
        let name = format!("r{k}");
        let along = self.pick(&dims);
        let back = self.chance(1, 3);
        // the self-read: one step back (forward) or ahead (backward) along `along`, the other
        // index (of a 2-D table) shifted by -1, 0 or 1 only when reading another row
        let shift = if back { "+ 1" } else { "- 1" };
        let args: Vec<String> = dims
            .iter()
            .map(|x| {
                if *x == along {
                    format!("{} {shift}", x.name())
                } else {
                    x.name().to_string()
                }
            })
            .collect();
        let mut args2 = args.clone();
        if dims.len() == 2 && dims[0] == along && self.chance(1, 2) {
            // the other index, in the row before: any constant offset is earlier
            let o = dims[1];
            args2[1] = format!("{} {}", o.name(), self.pick(&["- 1", "+ 1", "+ 2"]));
        }
        let a = format!("{name}[{}]", args.join(", "));
        let b = format!("{name}[{}]", args2.join(", "));
        let step = self.real(sc, depth.min(2));
        let comb = match self.below(5) {
            0 => format!("logsumexp({a}, {b}) + {step}"),
            1 => format!("{a} + {step}"),
            2 => format!("max({a}, {b}) - {step}"),
            3 => format!("{a} * 0.5 + {b} * {step}"),
            _ => {
                let c = self.cond(sc, 1);
                format!("(if {c} {{ {a} }} else {{ {b} + {step} }})")
            }
        };
        let pad = self.pick(&["0.0", "-inf", "1.0"]);
        let ix: Vec<&str> = dims.iter().map(|x| x.name()).collect();
        let text = format!("    let {name}[{}] pad {pad} = {comb};\n", ix.join(", "));
        self.defs.push(Def {
            name,
            kind: Kind::Real,
            dims,
            alias: false,
            range: None,
        });
        text
    }

    fn program(&mut self) -> (String, Vec<Ix>) {
        let depth = 1 + self.below(3);
        let n = 1 + self.below(6) as usize;
        let mut lets = String::new();
        for k in 0..n {
            lets += &self.definition(k, depth);
        }
        let out = match self.below(6) {
            0 => vec![],
            1 | 2 => vec![Ix::I],
            3 | 4 => vec![Ix::J],
            _ => vec![Ix::I, Ix::J],
        };
        // the body reads the last definition, so each program uses what it defines last
        let last = self.defs.last().unwrap().clone();
        let sc = Scope::of(&out);
        let r = self.real_read(&last, sc, depth);
        let body = if self.chance(1, 2) {
            format!("{r} + {}", self.real(sc, depth))
        } else {
            r
        };
        let ix: Vec<&str> = out.iter().map(|x| x.name()).collect();
        let src = format!(
            "loss g(x[i], y[i], m[i, j], lab[i]: int; p = 0.5) -> [{}] {{\n{lets}    {body}\n}}\n",
            ix.join(", ")
        );
        (src, out)
    }

    fn value(&mut self) -> f64 {
        match self.below(40) {
            0 => f64::NAN,
            1 => f64::INFINITY,
            2 => f64::NEG_INFINITY,
            3 | 4 => 0.0,
            5 => -0.0,
            6 => 1e30,
            // dyadic values: exact in f32 and f64, so ties compare the same in both backends
            _ => (self.below(129) as i32 - 64) as f64 / 16.0,
        }
    }
}

fn inputs() -> Vec<Def> {
    let d = |name: &str, kind, dims: Vec<Ix>, range| Def {
        name: name.into(),
        kind,
        dims,
        alias: false,
        range,
    };
    vec![
        d("x", Kind::Real, vec![Ix::I], None),
        d("y", Kind::Real, vec![Ix::I], None),
        d("m", Kind::Real, vec![Ix::I, Ix::J], None),
        d("lab", Kind::Int, vec![Ix::I], Some(Ix::J)),
    ]
}

/// A program and its call from `ch`.
pub fn generate(ch: &mut dyn Choices) -> Case {
    let mut g = Gen {
        ch,
        budget: 40,
        defs: inputs(),
    };
    let (source, out) = g.program();
    let n = 1 + g.below(6) as usize;
    let nj = 1 + g.below(5) as usize;
    let x: Vec<f64> = (0..n).map(|_| g.value()).collect();
    let y: Vec<f64> = (0..n).map(|_| g.value()).collect();
    let m: Vec<f64> = (0..n * nj).map(|_| g.value()).collect();
    // mostly valid class ids; now and then out of range
    let bad_ids = g.chance(1, 6);
    let lab: Vec<i64> = (0..n)
        .map(|_| {
            if bad_ids && g.chance(1, 3) {
                g.pick(&[-1, nj as i64, 1_000_000_000])
            } else {
                g.below(nj as u32) as i64
            }
        })
        .collect();
    let reduction = if out.is_empty() {
        g.pick(&[Reduction::None, Reduction::Sum, Reduction::Mean])
    } else {
        g.pick(&[
            Reduction::None,
            Reduction::Sum,
            Reduction::Mean,
            Reduction::WeightedMean,
        ])
    };
    let dtype = if g.chance(1, 3) {
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
        .dtype(dtype)
        .grad("x")
        .grad("y")
        .grad("m");
    if g.chance(1, 3) {
        let v = g.value();
        call = call.param("p", v);
    }
    if reduction == Reduction::WeightedMean {
        // zero weights too: the interpreter then skips the loss's body, and so must the JIT
        let w = if g.chance(1, 4) {
            0.0
        } else {
            0.5 + (g.below(16) as f64) / 8.0
        };
        call = call.weights(Array::scalar(w));
    }
    Case { source, call }
}
