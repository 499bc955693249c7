//! Inline, branch-free elementary functions for JIT kernels.
//!
//! [`emit`] writes `f(x)` as Cranelift IR at the builder's current position, using only
//! arithmetic, compares, selects, bitcasts and integer ops, so a kernel never calls libm and the
//! same code works lane-wise on `F32X4` / `F64X2`. The algorithms are the fdlibm ones (FreeBSD
//! msun / musl), with every branch replaced by computing all candidates and selecting:
//!
//! * `exp`: `x = k ln2 + r`, `|r| <= ln2/2`, then fdlibm's rational approximation of `exp(r)`
//!   (f64) or, for f32, with fused multiply-adds where the CPU has them, a degree-6 minimax
//!   polynomial `1 + r (1 + r P(r))` fitted here (relative error 3e-9; about half the time of
//!   the unfused Cephes form in a `sum(c: exp(x))` loop), else Cephes' division-free
//!   `1 + r + r² P(r)` (Horner: in f32x4 loops it keeps fewer constants live than Estrin, 12%
//!   faster measured); then scaling by `2^k` in
//!   two steps so that subnormal results and overflow come out right.
//! * `log`, `log1p`: `x = 2^k m`, `m` in `[sqrt(1/2), sqrt(2))`, `log(m) = f - f²/2 + s(f²/2 + R(s²))`
//!   with `s = f/(2+f)`; `log1p` carries the rounding error of `1+x` as a correction `c/u`.
//!   Softplus's f32 `log1p` on `[0, 1]` is instead `x + x² R(x)` with one degree-9 minimax `R`
//!   (a third of focal loss's time went to the general form's reduction and two divisions).
//!   The f32 `log` uses Cephes' division-free `f - f²/2 + f³ P(f)` (Estrin) instead.
//!   Subnormal inputs of `log` are scaled by `2^54` (`2^25` for f32) first.
//! * `expm1`: the fdlibm `s_expm1` rational approximation, with its seven result formulas (by
//!   the reduction integer `k`) computed and selected.
//! * `tanh`: Cephes' odd rational (f64) / polynomial (f32) for `|x| < 0.625`, else fdlibm's
//!   formulas from one `expm1` (`expm1(2|x|)` for `|x| >= 1`, else `expm1(-2|x|)`).
//! * `sin`, `cos`: Cody–Waite reduction by `π/2`, `x - nπ/2`, with `π/2` split into short
//!   parts (four of 23 bits for f64, six of 8 bits for f32: products with `n` exact) and a full-precision tail, accumulated in double-word
//!   arithmetic; then the fdlibm kernels on `[-π/4, π/4]` (with the low word of the reduced
//!   argument) for f64, the Cephes kernels for f32, and the quadrant from the low bits of `n`.
//!   The reduction is exact enough while `n` fits the short parts: `|x| < 2^30·π/2 ≈ 1.69e9`
//!   for f64 (tested to 1e9) and `|x| < 2^16·π/2 ≈ 102943` for f32. There is no Payne–Hanek
//!   reduction, so the error bounds below hold only inside those ranges (see below).
//! * `atan`: fdlibm's five intervals, `atan(x) = atan(c) + atan((x-c)/(1+xc))`, with the
//!   interval constants selected per lane.
//! * `acos`: fdlibm's rational approximation of `asin` around 0 and `2 asin(sqrt((1-|x|)/2))`
//!   near ±1.
//!
//! The f32 variants compute in f32 throughout. Integers (the `k` of `exp`, the quadrant of
//! `sin`) come from the "magic number" trick, `x + 1.5·2^52` (`1.5·2^23`) then a bitcast, which
//! needs no float-to-int conversion (absent for `F64X2` on x86).
//!
//! ## Measured accuracy
//!
//! Errors are in units in the last place of the result type, measured by the tests below
//! (`cargo test --release --lib jit::math`):
//!
//! * f32: against the f64 libm (glibc) result, unrounded, so the figures are fractional. The
//!   table gives the figures of the ignored test `exhaustive_f32`, over every f32 (F32X4 code,
//!   ~10 minutes); the regular test covers every 401st bit pattern (~10^7 points spread over
//!   all floats), all subnormals near ±0, uniform sweeps of [-20, 20], [-1, 1] and the sin/cos
//!   domain, and the floats nearest to `nπ/2` for `n <= 65536`.
//! * f64: the test compares against glibc (Rust's `f64` methods), over ~4·10^6 bit patterns
//!   spread over all doubles, uniform sweeps of [-40, 40], [-1, 1], [-1e5, 1e5], [-1e9, 1e9],
//!   all small subnormals and 4·10^5 doubles nearest to `nπ/2`; that figure is an integer
//!   (both sides are doubles) and includes glibc's own error. The figure in parentheses is
//!   the true error, graded offline with mpmath at 160 bits over the (up to 30 000) points
//!   where we differ from glibc plus 3 000 where we agree: it is below 0.9 ulp everywhere,
//!   and glibc's `tanh` is itself off by up to 1.97 ulp (at 0.548), which is why the test
//!   allows one extra ulp for f64 `tanh`.
//!
//! Vector (`F32X4`, `F64X2`) results are checked bitwise equal to the scalar ones on all these
//! inputs (NaN payloads aside).
//!
//! | function | f32 max ulp (all f32) | f64 max ulp vs glibc (true) | domain              |
//! |----------|-----------------------|-----------------------------|---------------------|
//! | exp      | 0.894 (FMA; 0.987 unfused) | 1 (0.871)                   | all                           |
//! | log      | 0.862       | 1 (0.768)                   | all                           |
//! | log1p    | 0.840       | 1 (0.818)                   | all                           |
//! | log1p on [0, 1] (softplus) | 1.247 (one polynomial) | = log1p, bitwise | `[0, 1]`, NaN |
//! | exp on x <= 0 (`ExpNonPos`) | = exp, bitwise | = exp, bitwise     | `x <= 0`, NaN                 |
//! | log of a positive normal (`LogNormal`) | = log, bitwise | = log, bitwise | positive normal finite (else unspecified) |
//! | expm1    | 0.813       | 1 (0.799)                   | all                           |
//! | tanh     | 1.738       | 2 (0.746)                   | all                           |
//! | sin      | 0.844       | 1 (0.766)                   | f32 `|x| <= 102943`, f64 `|x| <= 1e9` |
//! | cos      | 0.849       | 1 (0.759)                   | f32 `|x| <= 102943`, f64 `|x| <= 1e9` |
//! | atan     | 0.852       | 1 (0.841)                   | all                           |
//! | acos     | 0.918       | 1 (0.881)                   | all                           |
//!
//! Outside the sin/cos domain the reduction loses bits gradually: the measured absolute error
//! is at most 0.031 for f32 `|x| <= 1e6` and 6.1e-5 for f64 `|x| <= 1e12`; for larger
//! arguments (f32 beyond `2^22`, f64 beyond `2^51`) the result is meaningless.
//!
//! Throughput (the ignored test `throughput`, 10^7 f32, on the 2-core development VM; noisy):
//! exp 5.4 ns/element scalar, 2.3 ns F32X4, against 3.8 ns for Rust's `f32::exp` (glibc);
//! log 6.9 ns scalar, 2.3–2.9 ns F32X4, against 3.8 ns for `f32::ln`. Scalar code pays for
//! Cranelift's lowering of scalar float `select`/`fmin`/`fmax` (short branch sequences).
//! (Those figures are for Estrin's scheme in exp; exp now uses Horner, which in a kernel's
//! f32x4 loop, `sum(c: exp(x[n, c]))` over 4096x1000, took 9.0 ms against 10.2 ms.)
//!
//! Special values (NaN, ±inf, ±0, overflow, underflow, subnormals, the poles and branch
//! limits) are exact as listed in the tests.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{
    types, Endianness, Inst, InstBuilder, MemFlagsData, StackSlot, Type, Value,
};
use cranelift_frontend::FunctionBuilder;

/// Elementary functions the JIT emits inline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MathFn {
    Exp,
    Log,
    Log1p,
    /// `log1p` for arguments in `[0, 1]` (and NaN) only: softplus's `log1p(exp(-|x|))`.
    /// f64: bitwise equal to `Log1p` there, without the cases that cannot arise (`1 + x >= 4`,
    /// `x <= -1`, infinities, tiny or negative `x` near 0). f32: one polynomial over the whole
    /// interval, `x + x² R(x)` (no reduction, no division), within 1.25 ulp.
    Log1pUnit,
    /// `exp` for arguments `<= 0` (and NaN, -inf) only: `exp(x - max)` of a logsumexp or a
    /// softmax, `exp(-|x|)` of softplus. Bitwise equal to `Exp` there, with one scaling
    /// multiplication instead of two (`k <= 0` leaves room for `2^(k+64)` to stay normal) and
    /// no upper clamp.
    ExpNonPos,
    /// `log` for positive, normal, finite arguments only (a logsumexp's sum of `exp(x - max)`,
    /// which is in `[1, n]`): bitwise equal to `Log` there, without the subnormal rescaling and
    /// the special values; other arguments (NaN included) give unspecified results, which the
    /// caller must not use.
    LogNormal,
    Expm1,
    Tanh,
    Sin,
    Cos,
    Atan,
    Acos,
}

impl MathFn {
    /// All the functions, in declaration order.
    pub const ALL: [MathFn; 12] = [
        MathFn::Exp,
        MathFn::Log,
        MathFn::Log1p,
        MathFn::Log1pUnit,
        MathFn::ExpNonPos,
        MathFn::LogNormal,
        MathFn::Expm1,
        MathFn::Tanh,
        MathFn::Sin,
        MathFn::Cos,
        MathFn::Atan,
        MathFn::Acos,
    ];
}

/// The maximum error of `emit(f)` in units in the last place of the type, as measured by the
/// tests, rounded up to a whole or half ulp (see the table in the module documentation for the exact
/// figures and, for sin/cos, the domain).
pub fn max_ulp(f: MathFn, f64: bool) -> f64 {
    match (f, f64) {
        (MathFn::Tanh, false) => 2.0,
        (MathFn::Log1pUnit, false) => 1.5,
        _ => 1.0,
    }
}

/// Emits `f(x)` at the builder's current position. The type of `x` (F32, F64, F32X4 or F64X2)
/// is the type of the result. No branches, no calls: only arithmetic, compares, selects,
/// bitcasts and integer ops, so the same code works lane-wise on vectors.
pub fn emit(b: &mut FunctionBuilder, f: MathFn, x: Value) -> Value {
    emit_pinned(b, f, x, None).0
}

/// [`emit`], storing some intermediate results (the reduced argument, the polynomial, the
/// divisions) to cell `k % cells` of `slot` (`pin = (slot, k, cells)`, `k` counting up): the
/// stores fix where Cranelift places what precedes them, so copies of a loop step can be
/// interleaved finely (see `vector::interleave`). Returns the stores too.
pub fn emit_pinned(
    b: &mut FunctionBuilder,
    f: MathFn,
    x: Value,
    pin: Option<(StackSlot, usize, usize)>,
) -> (Value, Vec<Inst>) {
    let ty = b.func.dfg.value_type(x);
    let mut e = E::new(b, ty);
    e.pin = pin;
    let v = e.emit(f, x);
    (v, e.pinned)
}

impl E<'_, '_> {
    fn emit(&mut self, f: MathFn, x: Value) -> Value {
        let e = self;
        match f {
            MathFn::Exp => e.exp(x),
            MathFn::ExpNonPos => e.exp_nonpos(x),
            MathFn::Log => e.log(x),
            MathFn::LogNormal => e.log_normal(x),
            MathFn::Log1p => e.log1p(x),
            MathFn::Log1pUnit => e.log1p_unit(x),
            MathFn::Expm1 => e.expm1(x),
            MathFn::Tanh => e.tanh(x),
            MathFn::Sin => e.sincos(x, false),
            MathFn::Cos => e.sincos(x, true),
            MathFn::Atan => e.atan(x),
            MathFn::Acos => e.acos(x),
        }
    }

    /// See [`emit_pinned`].
    fn pin(&mut self, v: Value) {
        if let Some((slot, k, cells)) = self.pin {
            let st = pin_store(self.b, slot, (k + self.pinned.len()) % cells, v);
            self.pinned.push(st);
        }
    }
}

/// Stores the 16-byte `v` to cell `cell` of `slot`: a side effect that pins where `v` is
/// computed (see `vector::interleave`). Each pin needs its own cell: Cranelift drops a store
/// that a later store to the same address overwrites before any load.
pub fn pin_store(b: &mut FunctionBuilder, slot: StackSlot, cell: usize, v: Value) -> Inst {
    let a = b.ins().stack_addr(types::I64, slot, 16 * cell as i32);
    b.ins().store(MemFlagsData::trusted(), v, a, 0)
}

/// The emitter: a builder and the float type being computed in.
struct E<'a, 'b> {
    b: &'a mut FunctionBuilder<'b>,
    /// The float type (scalar or vector).
    ty: Type,
    /// The integer type of the same shape.
    ity: Type,
    /// Whether the lanes are f64.
    d: bool,
    /// Whether `fma` is a native instruction (else Cranelift would call a library function).
    fma: bool,
    /// where to pin intermediate results (see [`emit_pinned`]), and the stores made
    pin: Option<(StackSlot, usize, usize)>,
    pinned: Vec<Inst>,
}

/// Whether the host CPU has fused multiply-add (which `cranelift_native` then enables).
pub fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(target_arch = "aarch64")]
    {
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

fn le() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

impl<'a, 'b> E<'a, 'b> {
    fn new(b: &'a mut FunctionBuilder<'b>, ty: Type) -> Self {
        let (ity, d) = match ty {
            types::F32 => (types::I32, false),
            types::F64 => (types::I64, true),
            types::F32X4 => (types::I32X4, false),
            types::F64X2 => (types::I64X2, true),
            other => panic!("math::emit: unsupported type {other}"),
        };
        E {
            b,
            ty,
            ity,
            d,
            fma: has_fma(),
            pin: None,
            pinned: Vec::new(),
        }
    }

    // ---- constants and plumbing ------------------------------------------------------------

    /// A float constant (rounded to f32 for f32 lanes), splatted for vectors.
    fn c(&mut self, v: f64) -> Value {
        let s = if self.d {
            self.b.ins().f64const(v)
        } else {
            self.b.ins().f32const(v as f32)
        };
        if self.ty.is_vector() {
            self.b.ins().splat(self.ty, s)
        } else {
            s
        }
    }

    /// A float constant picked by lane width.
    fn c2(&mut self, single: f64, double: f64) -> Value {
        self.c(if self.d { double } else { single })
    }

    /// An integer constant of the lane width, splatted for vectors.
    fn ci(&mut self, v: i64) -> Value {
        let lane = self.ity.lane_type();
        let s = self.b.ins().iconst(lane, v);
        if self.ty.is_vector() {
            self.b.ins().splat(self.ity, s)
        } else {
            s
        }
    }

    /// `i + v` for an integer `i` of the lane width.
    fn iaddc(&mut self, i: Value, v: i64) -> Value {
        let c = self.ci(v);
        self.b.ins().iadd(i, c)
    }

    fn bits_of(&mut self, x: Value) -> Value {
        self.b.ins().bitcast(self.ity, le(), x)
    }

    fn float_of(&mut self, i: Value) -> Value {
        self.b.ins().bitcast(self.ty, le(), i)
    }

    fn add(&mut self, x: Value, y: Value) -> Value {
        self.b.ins().fadd(x, y)
    }
    fn sub(&mut self, x: Value, y: Value) -> Value {
        self.b.ins().fsub(x, y)
    }
    fn mul(&mut self, x: Value, y: Value) -> Value {
        self.b.ins().fmul(x, y)
    }
    fn div(&mut self, x: Value, y: Value) -> Value {
        self.b.ins().fdiv(x, y)
    }
    fn addc(&mut self, x: Value, v: f64) -> Value {
        let c = self.c(v);
        self.add(x, c)
    }
    fn mulc(&mut self, x: Value, v: f64) -> Value {
        let c = self.c(v);
        self.mul(x, c)
    }
    /// `v - x`.
    fn csub(&mut self, v: f64, x: Value) -> Value {
        let c = self.c(v);
        self.sub(c, x)
    }

    /// Horner evaluation of `c[0] + z*(c[1] + z*(...))`.
    fn horner(&mut self, z: Value, cs: &[f64]) -> Value {
        let mut acc = self.c(cs[cs.len() - 1]);
        for &k in cs[..cs.len() - 1].iter().rev() {
            acc = self.mul(acc, z);
            acc = self.addc(acc, k);
        }
        acc
    }

    /// `a * b + c`, fused where the CPU has FMA (one rounding), else a multiply and an add.
    fn fma(&mut self, a: Value, b: Value, c: Value) -> Value {
        if self.fma {
            self.b.ins().fma(a, b, c)
        } else {
            let p = self.mul(a, b);
            self.add(p, c)
        }
    }

    /// [`Self::horner`] with fused multiply-adds.
    fn horner_fma(&mut self, z: Value, cs: &[f64]) -> Value {
        let mut acc = self.c(cs[cs.len() - 1]);
        for &k in cs[..cs.len() - 1].iter().rev() {
            let kc = self.c(k);
            acc = self.fma(acc, z, kc);
        }
        acc
    }

    /// Estrin evaluation of `c[0] + c[1] x + c[2] x² + ...`: same polynomial as
    /// [`Self::horner`], shorter dependency chain.
    fn estrin(&mut self, x: Value, cs: &[f64]) -> Value {
        let mut terms: Vec<Value> = cs
            .chunks(2)
            .map(|pair| match *pair {
                [a, b] => {
                    let bx = self.mulc(x, b);
                    self.addc(bx, a)
                }
                [a] => self.c(a),
                _ => unreachable!(),
            })
            .collect();
        let mut pw = x;
        while terms.len() > 1 {
            pw = self.mul(pw, pw);
            terms = terms
                .chunks(2)
                .map(|pair| match *pair {
                    [a, b] => {
                        let bp = self.mul(b, pw);
                        self.add(a, bp)
                    }
                    [a] => a,
                    _ => unreachable!(),
                })
                .collect();
        }
        terms[0]
    }

    /// A lane-wise float compare, as a condition for [`Self::sel`].
    fn cmp(&mut self, cc: FloatCC, x: Value, y: Value) -> Value {
        self.b.ins().fcmp(cc, x, y)
    }
    fn cmpc(&mut self, cc: FloatCC, x: Value, v: f64) -> Value {
        let c = self.c(v);
        self.cmp(cc, x, c)
    }

    /// `x` clamped to `[lo, hi]`, NaN kept: two compares and selects (an ordered compare is
    /// false for NaN, which then stays). Cheaper than `fmax`/`fmin`, whose IEEE NaN and
    /// signed-zero handling takes about eight instructions per vector on x86.
    fn clamp(&mut self, x: Value, lo: Value, hi: Value) -> Value {
        let below = self.cmp(FloatCC::LessThan, x, lo);
        let x = self.sel(below, lo, x);
        let above = self.cmp(FloatCC::GreaterThan, x, hi);
        self.sel(above, hi, x)
    }

    /// Lane-wise `cond ? x : y` for a condition from [`Self::cmp`] and float or integer values.
    fn sel(&mut self, cond: Value, x: Value, y: Value) -> Value {
        let vty = self.b.func.dfg.value_type(x);
        if vty.is_vector() {
            let ct = self.b.func.dfg.value_type(cond);
            let mask = if ct == vty {
                cond
            } else {
                self.b.ins().bitcast(vty, le(), cond)
            };
            self.b.ins().bitselect(mask, x, y)
        } else {
            self.b.ins().select(cond, x, y)
        }
    }

    /// Lane-wise "both conditions" (conditions are i8 booleans or lane masks).
    fn and(&mut self, c1: Value, c2: Value) -> Value {
        self.b.ins().band(c1, c2)
    }
    fn or(&mut self, c1: Value, c2: Value) -> Value {
        self.b.ins().bor(c1, c2)
    }

    fn mant_bits(&self) -> i64 {
        if self.d {
            52
        } else {
            23
        }
    }
    fn bias(&self) -> i64 {
        if self.d {
            1023
        } else {
            127
        }
    }
    fn sign_mask(&self) -> i64 {
        if self.d {
            i64::MIN
        } else {
            0x8000_0000
        }
    }

    /// Rounds `t` (with `|t| < 2^22`) to the nearest integer: the integer as a float and as an
    /// integer of the lane width.
    fn round_int(&mut self, t: Value) -> (Value, Value) {
        let (nf, bits, off) = self.round_int_bits(t);
        (nf, self.iaddc(bits, off))
    }

    /// [`Self::round_int`] with the integer left as `bits + off` (`off` the negated bits of
    /// the rounding constant), so that a caller adding constants to it adds them all at once.
    fn round_int_bits(&mut self, t: Value) -> (Value, Value, i64) {
        let magic: f64 = if self.d {
            6755399441055744.0
        } else {
            12582912.0
        };
        let magic_bits = if self.d {
            magic.to_bits() as i64
        } else {
            (magic as f32).to_bits() as i64
        };
        let m = self.c(magic);
        let tm = self.add(t, m);
        let nf = self.sub(tm, m);
        (nf, self.bits_of(tm), -magic_bits)
    }

    /// An integer `n` (`|n| < 2^22`) as a float.
    fn int_to_float(&mut self, n: Value) -> Value {
        let magic: f64 = if self.d {
            6755399441055744.0
        } else {
            12582912.0
        };
        let magic_bits = if self.d {
            magic.to_bits() as i64
        } else {
            (magic as f32).to_bits() as i64
        };
        let mb = self.ci(magic_bits);
        let s = self.b.ins().iadd(n, mb);
        let f = self.float_of(s);
        let m = self.c(magic);
        self.sub(f, m)
    }

    /// `2^k` for an integer `k` in the normal exponent range.
    fn pow2i(&mut self, k: Value) -> Value {
        let bias = self.bias();
        let kb = self.iaddc(k, bias);
        let mb = self.mant_bits();
        let bits = self.b.ins().ishl_imm_s(kb, mb);
        self.float_of(bits)
    }

    /// `y * 2^k` in two steps, so that `k` may reach twice the exponent range: subnormal
    /// results and overflow to infinity come out right.
    fn scale2(&mut self, y: Value, k: Value) -> Value {
        let k1 = self.b.ins().sshr_imm_s(k, 1);
        let k2 = self.b.ins().isub(k, k1);
        let s1 = self.pow2i(k1);
        let s2 = self.pow2i(k2);
        let y1 = self.mul(y, s1);
        self.mul(y1, s2)
    }

    /// Copies the sign of `s` onto `m` (which must be non-negative).
    fn with_sign_of(&mut self, m: Value, s: Value) -> Value {
        let sm = self.ci(self.sign_mask());
        let sb = self.bits_of(s);
        let sign = self.b.ins().band(sb, sm);
        let mb = self.bits_of(m);
        let r = self.b.ins().bor(mb, sign);
        self.float_of(r)
    }

    // ---- exp -------------------------------------------------------------------------------

    /// The lower clamp is where `k = -254` (`-2046`): both halves of `2^k` (see
    /// [`Self::scale2`]) have biased exponent 0, so they are 0 and an `exp` of `-inf` (or of
    /// any `x` under the clamp) multiplies by 0 instead of rounding a tiny product to 0. The
    /// CPU takes a microcode assist for each vector product that underflows: with CTC's
    /// `-inf` arguments (a blank's skip, the cells out of the band) those were a quarter of
    /// its time (1.13 ms; 0.84 ms with the CPU set to flush subnormals).
    fn exp(&mut self, x: Value) -> Value {
        // Clamp so that k stays in range; the results at the clamps are 0 and inf anyway.
        // fmin/fmax propagate NaN.
        let lo = self.c2(-176.1, -1418.3);
        let hi = self.c2(89.0, 710.0);
        let xc = self.clamp(x, lo, hi);
        self.exp_clamped(xc, false)
    }

    /// `exp(x)` for `x <= 0` or NaN (see [`MathFn::ExpNonPos`]): only the lower clamp, then
    /// `y 2^k` as `(y 2^(k+64)) 2^-64` (`2^(k+512)`, `2^-512` for f64): for `k` in
    /// `[-150, 0]` the first product is exact (normal), the second rounds once, as the
    /// second step of [`Self::scale2`] does: the same bits. The clamp is where `k = -191`
    /// (`-1535`): the first factor's biased exponent is 0, so it is 0, and so is the result,
    /// with no underflowing product (see [`Self::exp`]).
    fn exp_nonpos(&mut self, x: Value) -> Value {
        let lo = self.c2(-132.4, -1064.0);
        let below = self.cmp(FloatCC::LessThan, x, lo);
        let xc = self.sel(below, lo, x);
        self.exp_clamped(xc, true)
    }

    fn exp_clamped(&mut self, xc: Value, nonpos: bool) -> Value {
        if !self.d && self.fma {
            return self.exp_f32_fma(xc, nonpos);
        }
        let t = self.mulc(xc, std::f64::consts::LOG2_E);
        let (kf, kbits, koff) = self.round_int_bits(t);
        let (ln2hi, ln2lo) = if self.d {
            (0.6931471803691238, 1.9082149292705877e-10)
        } else {
            (6.9314575195e-01, 1.4286067653e-06)
        };
        let a = self.mulc(kf, ln2hi);
        let hi = self.sub(xc, a);
        let lo = self.mulc(kf, ln2lo);
        let r = self.sub(hi, lo);
        let z = self.mul(r, r);
        let y = if self.d {
            // fdlibm: c = r - r²(P1 + r²(P2 + ...)); y = 1 - ((lo - r c/(2 - c)) - hi)
            let poly = self.horner(
                z,
                &[
                    0.16666666666666602,
                    -0.0027777777777015593,
                    6.613756321437934e-05,
                    -1.6533902205465252e-06,
                    4.1381367970572385e-08,
                ],
            );
            let zp = self.mul(z, poly);
            let c = self.sub(r, zp);
            let rc = self.mul(r, c);
            let two_c = self.csub(2.0, c);
            let q = self.div(rc, two_c);
            let u = self.sub(lo, q);
            let u = self.sub(u, hi);
            self.csub(1.0, u)
        } else {
            // Cephes expf, no division: 1 + r + r² P(r).
            let poly = self.horner(
                r,
                &[
                    5.0000001201e-1,
                    1.6666665459e-1,
                    4.1665795894e-2,
                    8.3334519073e-3,
                    1.3981999507e-3,
                    1.9875691500e-4,
                ],
            );
            let zp = self.mul(z, poly);
            let y = self.add(zp, r);
            self.addc(y, 1.0)
        };
        self.scale_exp(y, kbits, koff, nonpos)
    }

    /// `y 2^k` for exp's `k = kbits + koff` (wrapping): in two steps ([`Self::scale2`]), or
    /// for `k <= 0` in one shifted step and a constant, where the rounding constant's bits,
    /// the shift and the exponent bias are one addition (the same bits as three).
    fn scale_exp(&mut self, y: Value, kbits: Value, koff: i64, nonpos: bool) -> Value {
        if !nonpos {
            let k = self.iaddc(kbits, koff);
            return self.scale2(y, k);
        }
        let (up, down) = if self.d { (512, -512) } else { (64, -64) };
        let bias = self.bias();
        let kb = self.iaddc(kbits, koff.wrapping_add(up + bias));
        let mb = self.mant_bits();
        let bits = self.b.ins().ishl_imm_s(kb, mb);
        let s = self.float_of(bits);
        let y = self.mul(y, s);
        self.mulc(y, 2f64.powi(down))
    }

    /// f32 `exp` of a clamped `x` with fused multiply-adds: rounding folded into one fma,
    /// Cody-Waite reduction in two exact-product steps, and a degree-6 minimax polynomial
    /// `1 + r (1 + r P(r))` (relative error 3e-9 on `|r| <= ln2/2`), about ten instructions
    /// fewer than the unfused form and fewer live constants.
    fn exp_f32_fma(&mut self, xc: Value, nonpos: bool) -> Value {
        let magic = 12582912.0_f32;
        let m = self.c(magic as f64);
        let l2e = self.c(std::f64::consts::LOG2_E);
        let t = self.fma(xc, l2e, m);
        let kf = self.sub(t, m);
        let bits = self.bits_of(t);
        let koff = -(magic.to_bits() as i64);
        let ln2hi = std::f64::consts::LN_2 as f32 as f64;
        let ln2lo = std::f64::consts::LN_2 - ln2hi;
        let nhi = self.c(-ln2hi);
        let r = self.fma(kf, nhi, xc);
        let nlo = self.c(-ln2lo);
        let r = self.fma(kf, nlo, r);
        self.pin(r);
        let p = self.horner_fma(
            r,
            &[
                0.4999999403953552,
                0.1666652113199234,
                0.04166838899254799,
                0.0083687175065279,
                0.0013814596459269524,
            ],
        );
        let one = self.c(1.0);
        let q = self.fma(r, p, one);
        let y = self.fma(r, q, one);
        self.pin(y);
        self.scale_exp(y, bits, koff, nonpos)
    }

    // ---- log, log1p ------------------------------------------------------------------------

    /// Splits a positive normal `u` into `2^k m`, `m` in `[sqrt(1/2), sqrt(2))`: returns
    /// (`k` as float, `m`).
    fn split(&mut self, u: Value) -> (Value, Value) {
        let off = if self.d {
            0x3fe6a09e667f3bcd_i64
        } else {
            0x3f3504f3
        };
        let ix = self.bits_of(u);
        let tmp = self.iaddc(ix, -off);
        let mb = self.mant_bits();
        let k = self.b.ins().sshr_imm_s(tmp, mb);
        let ks = self.b.ins().ishl_imm_s(k, mb);
        let iz = self.b.ins().isub(ix, ks);
        let m = self.float_of(iz);
        let kf = self.int_to_float(k);
        (kf, m)
    }

    /// `k ln2 + log(1+f) + c`, for `f` in `[sqrt(1/2)-1, sqrt(2)-1]`, as fdlibm.
    fn log_kernel(&mut self, kf: Value, f: Value, c: Value) -> Value {
        let (ln2hi, ln2lo) = if self.d {
            (0.6931471803691238, 1.9082149292705877e-10)
        } else {
            (6.9313812256e-01, 9.0580006145e-06)
        };
        let lg: &[f64] = if self.d {
            &[
                0.6666666666666735,
                0.3999999999940942,
                0.2857142874366239,
                0.22222198432149784,
                0.1818357216161805,
                0.15313837699209373,
                0.14798198605116586,
            ]
        } else {
            &[
                0.6666666269302368,  // 0xaaaaaa.0p-24
                0.40000972151756287, // 0xccce13.0p-25
                0.2849878668785095,  // 0x91e9ee.0p-25
                0.24279078841209412, // 0xf89e26.0p-26
            ]
        };
        let ff = self.mul(f, f);
        let hfsq = self.mulc(ff, 0.5);
        let two_f = self.addc(f, 2.0);
        let s = self.div(f, two_f);
        self.pin(s);
        let z = self.mul(s, s);
        let p = self.horner(z, lg);
        let r = self.mul(z, p);
        // s*(hfsq+R) + (k*ln2_lo + c) - hfsq + f + k*ln2_hi
        let hr = self.add(hfsq, r);
        let t1 = self.mul(s, hr);
        let kl = self.mulc(kf, ln2lo);
        let klc = self.add(kl, c);
        let t = self.add(t1, klc);
        let t = self.sub(t, hfsq);
        let t = self.add(t, f);
        let kh = self.mulc(kf, ln2hi);
        self.add(t, kh)
    }

    fn log(&mut self, x: Value) -> Value {
        let (min_normal, scale, shift) = if self.d {
            (f64::MIN_POSITIVE, 1.8014398509481984e+16, -54.0) // 2^54
        } else {
            (f32::MIN_POSITIVE as f64, 33554432.0, -25.0) // 2^25
        };
        let sub = self.cmpc(FloatCC::LessThan, x, min_normal);
        let xs_ = self.mulc(x, scale);
        let xs = self.sel(sub, xs_, x);
        let (kf, m) = self.split(xs);
        let sh = self.c(shift);
        let zero = self.c(0.0);
        let adj = self.sel(sub, sh, zero);
        let kf = self.add(kf, adj);
        let r = self.log_split(kf, m);
        // Special values.
        let is0 = self.cmpc(FloatCC::Equal, x, 0.0);
        let ninf = self.c(f64::NEG_INFINITY);
        let r = self.sel(is0, ninf, r);
        let neg = self.cmpc(FloatCC::UnorderedOrLessThan, x, 0.0);
        let nan = self.c(f64::NAN);
        let r = self.sel(neg, nan, r);
        let isinf = self.cmpc(FloatCC::Equal, x, f64::INFINITY);
        let inf = self.c(f64::INFINITY);
        self.sel(isinf, inf, r)
    }

    /// [`Self::log`] of a positive normal finite `x` (see [`MathFn::LogNormal`]): for such
    /// `x` the subnormal step adds 0 to `k` and no special value applies, so the same bits.
    fn log_normal(&mut self, x: Value) -> Value {
        let (kf, m) = self.split(x);
        self.log_split(kf, m)
    }

    /// `k ln2 + log(m)` for `m` in `[sqrt(1/2), sqrt(2))`, `kf` = `k` as a float.
    fn log_split(&mut self, kf: Value, m: Value) -> Value {
        let f = self.addc(m, -1.0);
        if self.d {
            let zero = self.c(0.0);
            self.log_kernel(kf, f, zero)
        } else {
            // Cephes logf, no division: f - f²/2 + f³ P(f) + k ln2.
            let z = self.mul(f, f);
            let p = self.estrin(
                f,
                &[
                    3.3333331174e-1,
                    -2.4999993993e-1,
                    2.0000714765e-1,
                    -1.6668057665e-1,
                    1.4249322787e-1,
                    -1.2420140846e-1,
                    1.1676998740e-1,
                    -1.1514610310e-1,
                    7.0376836292e-2,
                ],
            );
            let fz = self.mul(f, z);
            let y = self.mul(fz, p);
            let kl = self.mulc(kf, -2.12194440e-4);
            let y = self.add(y, kl);
            let hz = self.mulc(z, 0.5);
            let y = self.sub(y, hz);
            let r = self.add(f, y);
            let kh = self.mulc(kf, 0.693359375);
            self.add(r, kh)
        }
    }

    fn log1p(&mut self, x: Value) -> Value {
        let u = self.addc(x, 1.0);
        let (kf, m) = self.split(u);
        let f_big = self.addc(m, -1.0);
        // c = (k >= 2 ? 1-(u-x) : x-(u-1)) / u, and 0 for k >= 54 (as fdlibm).
        let ux = self.sub(u, x);
        let c_hi = self.csub(1.0, ux);
        let u1 = self.addc(u, -1.0);
        let c_lo = self.sub(x, u1);
        let k_ge2 = self.cmpc(FloatCC::GreaterThanOrEqual, kf, 2.0);
        let c = self.sel(k_ge2, c_hi, c_lo);
        let c = self.div(c, u);
        let zero = self.c(0.0);
        let limit = self.c2(25.0, 54.0);
        let k_big = self.cmp(FloatCC::GreaterThanOrEqual, kf, limit);
        let c = self.sel(k_big, zero, c);
        // Near 0, take f = x exactly, k = 0, c = 0.
        let gt = self.cmpc(FloatCC::GreaterThan, x, -0.2928932188134524);
        let lt = self.cmpc(FloatCC::LessThan, x, 0.41421356237309503);
        let near = self.and(gt, lt);
        let f = self.sel(near, x, f_big);
        let c = self.sel(near, zero, c);
        let kf = self.sel(near, zero, kf);
        let r = self.log_kernel(kf, f, c);
        // Special values: tiny (and ±0) -> x; -1 -> -inf; < -1 or NaN -> NaN; inf -> inf.
        let ax = self.b.ins().fabs(x);
        let tiny = self.cmpc(
            FloatCC::LessThan,
            ax,
            if self.d {
                5.551115123125783e-17
            } else {
                2.9802322387695312e-8
            },
        );
        let r = self.sel(tiny, x, r);
        let m1 = self.cmpc(FloatCC::Equal, x, -1.0);
        let ninf = self.c(f64::NEG_INFINITY);
        let r = self.sel(m1, ninf, r);
        let bad = self.cmpc(FloatCC::UnorderedOrLessThan, x, -1.0);
        let nan = self.c(f64::NAN);
        let r = self.sel(bad, nan, r);
        let isinf = self.cmpc(FloatCC::Equal, x, f64::INFINITY);
        let inf = self.c(f64::INFINITY);
        self.sel(isinf, inf, r)
    }

    /// [`E::log1p`] for `x` in `[0, 1]` or NaN: `1 + x` is in `[1, 2]`, so `k` is 0 or 1 and
    /// the correction is `(x - (u - 1)) / u`; below `sqrt(2) - 1` (tiny `x` and 0 included)
    /// `f = x` exactly, as in `log1p`. A NaN `x` fails the comparison and makes `c` NaN, so
    /// the result is NaN without a select.
    fn log1p_unit(&mut self, x: Value) -> Value {
        if !self.d {
            // f32: `x + x² R(x)`, `R` a degree-9 minimax fit of `(log1p(x) - x) / x²` on
            // [0, 1] for relative error (Lawson's iteration on 4000 Chebyshev nodes, then f32
            // coefficients): no range reduction, no division, no select; a third of
            // focal loss's time went to the general form. ±0 and NaN come through as they go
            // in (`fma(±0, R, ±0)` keeps the sign).
            let r = self.horner_fma(
                x,
                &[
                    -0.49999988079071045,
                    0.33332690596580505,
                    -0.24988578259944916,
                    0.19897928833961487,
                    -0.16129323840141296,
                    0.12467096000909805,
                    -0.0830736979842186,
                    0.0419810488820076,
                    -0.013631332665681839,
                    0.002072918228805065,
                ],
            );
            self.pin(r);
            let x2 = self.mul(x, x);
            return self.fma(x2, r, x);
        }
        let u = self.addc(x, 1.0);
        let (kf, m) = self.split(u);
        let f_big = self.addc(m, -1.0);
        let u1 = self.addc(u, -1.0);
        let c = self.sub(x, u1);
        let c = self.div(c, u);
        self.pin(c);
        let zero = self.c(0.0);
        let near = self.cmpc(FloatCC::LessThan, x, 0.41421356237309503);
        let f = self.sel(near, x, f_big);
        let c = self.sel(near, zero, c);
        let kf = self.sel(near, zero, kf);
        self.log_kernel(kf, f, c)
    }

    // ---- expm1, tanh -----------------------------------------------------------------------

    fn expm1(&mut self, x: Value) -> Value {
        let lo = self.c2(-30.0, -60.0);
        let hi = self.c2(89.0, 710.0);
        let xc = self.clamp(x, lo, hi);
        let (ln2hi, ln2lo) = if self.d {
            (0.6931471803691238, 1.9082149292705877e-10)
        } else {
            (6.9313812256e-01, 9.0580006145e-06)
        };
        let t = self.mulc(xc, std::f64::consts::LOG2_E);
        let (kf, k) = self.round_int(t);
        let a = self.mulc(kf, ln2hi);
        let hi = self.sub(xc, a);
        let lo = self.mulc(kf, ln2lo);
        let r = self.sub(hi, lo);
        let hr = self.sub(hi, r);
        let c = self.sub(hr, lo);
        let q: &[f64] = if self.d {
            &[
                1.0,
                -0.03333333333333313,
                0.0015873015872548146,
                -7.93650757867488e-05,
                4.008217827329362e-06,
                -2.0109921818362437e-07,
            ]
        } else {
            &[1.0, -3.3333212137e-2, 1.5807170421e-3]
        };
        let hfx = self.mulc(r, 0.5);
        let hxs = self.mul(r, hfx);
        let r1 = self.horner(hxs, q);
        let r1h = self.mul(r1, hfx);
        let t = self.csub(3.0, r1h);
        let rt = self.mul(r, t);
        let den = self.csub(6.0, rt);
        let num = self.sub(r1, t);
        let e = self.div(num, den);
        let e = self.mul(hxs, e);
        // e = r*(e - c) - c - hxs
        let ec = self.sub(e, c);
        let e = self.mul(r, ec);
        let e = self.sub(e, c);
        let e = self.sub(e, hxs);
        let rme = self.sub(r, e); // r - e
                                  // k == 0
        let res_a = rme;
        // k == -1: 0.5*(r - e) - 0.5
        let res_b = self.mulc(rme, 0.5);
        let res_b = self.addc(res_b, -0.5);
        // k == 1: r < -0.25 ? -2*(e - (r + 0.5)) : 1 + 2*(r - e)
        let rh = self.addc(r, 0.5);
        let erh = self.sub(e, rh);
        let res_c = self.mulc(erh, -2.0);
        let res_d = self.mulc(rme, 2.0);
        let res_d = self.addc(res_d, 1.0);
        // k <= -2 || k > 56: (r - e + 1) * 2^k - 1
        let y = self.addc(rme, 1.0);
        let y = self.scale2(y, k);
        let res_e = self.addc(y, -1.0);
        // otherwise, with 2^-k:
        let negk = self.b.ins().ineg(k);
        let tmk = self.pow2i(negk);
        let twopk = self.pow2i(k);
        // k < 20 (23 for f32): (1 - 2^-k - (e - r)) * 2^k
        let t = self.csub(1.0, tmk);
        let er = self.sub(e, r);
        let y = self.sub(t, er);
        let res_f = self.mul(y, twopk);
        // else: ((r - (e + 2^-k)) + 1) * 2^k
        let et = self.add(e, tmk);
        let y = self.sub(r, et);
        let y = self.addc(y, 1.0);
        let res_g = self.mul(y, twopk);

        let kf_small = self.cmpc(FloatCC::LessThan, kf, if self.d { 20.0 } else { 23.0 });
        let res = self.sel(kf_small, res_f, res_g);
        let kneg = self.cmpc(FloatCC::LessThanOrEqual, kf, -2.0);
        let kbig = self.cmpc(FloatCC::GreaterThan, kf, 56.0);
        let ke = self.or(kneg, kbig);
        let res = self.sel(ke, res_e, res);
        let rlt = self.cmpc(FloatCC::LessThan, r, -0.25);
        let res_cd = self.sel(rlt, res_c, res_d);
        let k1 = self.cmpc(FloatCC::Equal, kf, 1.0);
        let res = self.sel(k1, res_cd, res);
        let km1 = self.cmpc(FloatCC::Equal, kf, -1.0);
        let res = self.sel(km1, res_b, res);
        let k0 = self.cmpc(FloatCC::Equal, kf, 0.0);
        let res = self.sel(k0, res_a, res);
        // Tiny x (and ±0): x.
        let ax = self.b.ins().fabs(x);
        let tiny = self.cmpc(
            FloatCC::LessThan,
            ax,
            if self.d {
                5.551115123125783e-17
            } else {
                2.9802322387695312e-8
            },
        );
        self.sel(tiny, x, res)
    }

    fn tanh(&mut self, x: Value) -> Value {
        let ax = self.b.ins().fabs(x);
        let cap = self.c2(10.0, 22.0);
        let a = self.b.ins().fmin(ax, cap);
        let big = self.cmpc(FloatCC::GreaterThanOrEqual, a, 1.0);
        let a2 = self.mulc(a, 2.0);
        let ma2 = self.b.ins().fneg(a2);
        let arg = self.sel(big, a2, ma2);
        let t = self.expm1(arg);
        let t2 = self.addc(t, 2.0);
        // a >= 1: 1 - 2/(t+2); else -t/(t+2)
        let two = self.c(2.0);
        let q = self.div(two, t2);
        let z_big = self.csub(1.0, q);
        let nt = self.b.ins().fneg(t);
        let z_small = self.div(nt, t2);
        let z = self.sel(big, z_big, z_small);
        // |x| < 0.625: x + x z P(z)/Q(z), z = x² (Cephes).
        let zz = self.mul(ax, ax);
        let pq = if self.d {
            let p = self.horner(
                zz,
                &[-1614.6876844170845, -99.28772310019185, -0.9643991794250523],
            );
            let q = self.horner(
                zz,
                &[
                    4844.063053251255,
                    2235.4883906010045,
                    112.81167849163293,
                    1.0,
                ],
            );
            self.div(p, q)
        } else {
            self.horner(
                zz,
                &[
                    -3.33332819422e-1,
                    1.33314422036e-1,
                    -5.37397155531e-2,
                    2.06390887954e-2,
                    -5.70498872745e-3,
                ],
            )
        };
        let xz = self.mul(ax, zz);
        let w = self.mul(xz, pq);
        let z_tiny = self.add(ax, w);
        let small = self.cmpc(FloatCC::LessThan, ax, 0.625);
        let z = self.sel(small, z_tiny, z);
        let tiny = self.cmpc(
            FloatCC::LessThan,
            ax,
            if self.d {
                2.7755575615628914e-17
            } else {
                1.4901161193847656e-8
            },
        );
        let z = self.sel(tiny, ax, z);
        self.with_sign_of(z, x)
    }

    // ---- sin, cos --------------------------------------------------------------------------

    /// `(s, e)` with `s + e == a + b` exactly.
    fn two_sum(&mut self, a: Value, b: Value) -> (Value, Value) {
        let s = self.add(a, b);
        let bb = self.sub(s, a);
        let ab = self.sub(s, bb);
        let e1 = self.sub(a, ab);
        let e2 = self.sub(b, bb);
        let e = self.add(e1, e2);
        (s, e)
    }

    fn sincos(&mut self, x: Value, cos: bool) -> Value {
        let t = self.mulc(x, std::f64::consts::FRAC_2_PI);
        let (nf, n) = self.round_int(t);
        // π/2 as short parts (whose products with n are exact while |n| < 2^30 for f64, 2^16
        // for f32) and a full-precision tail: about 150 bits for f64, 82 for f32.
        let parts: &[f64] = if self.d {
            &[
                1.570796251296997,
                7.549789415861596e-08,
                5.390302529957765e-15,
                3.2820031633724233e-22,
                3.7950107727212256e-29,
            ]
        } else {
            &[
                1.5703125,
                0.0004825592041015625,
                1.2665987014770508e-06,
                9.89530235528946e-10,
                2.5579538487363607e-12,
                5.384581669432009e-15,
                5.721188916458728e-18,
            ]
        };
        let last = parts.len() - 1;
        // x - n*p1 is exact (n*p1 is, and Sterbenz); then subtract the exact products with the
        // other short parts in double-word arithmetic, and the rounded product with the tail
        // from the low word.
        let np = self.mulc(nf, parts[0]);
        let mut rh = self.sub(x, np);
        let mut rl: Option<Value> = None;
        for &p in &parts[1..last] {
            let np = self.mulc(nf, p);
            let nnp = self.b.ins().fneg(np);
            let (s, e) = self.two_sum(rh, nnp);
            rh = s;
            rl = Some(match rl {
                None => e,
                Some(l) => self.add(l, e),
            });
        }
        let np = self.mulc(nf, parts[last]);
        // Cannot fail: both constant tables have at least three parts, so the loop ran.
        let rl = self.sub(rl.unwrap(), np);
        // Renormalise (fast two-sum: |rh| >= |rl|).
        let r = self.add(rh, rl);
        let rr = self.sub(r, rh);
        let y = self.sub(rl, rr);

        let s = self.sin_kernel(r, y);
        let c = self.cos_kernel(r, y);
        // Quadrant: q = n (+1 for cos); odd q swaps to the other kernel, q & 2 negates.
        let q = if cos { self.iaddc(n, 1) } else { n };
        let one = self.ci(1);
        let odd = self.b.ins().band(q, one);
        let mask = self.b.ins().ineg(odd); // all ones when odd
        let sb = self.bits_of(s);
        let cb = self.bits_of(c);
        let pick_c = self.b.ins().band(cb, mask);
        let not_mask = self.b.ins().bnot(mask);
        let pick_s = self.b.ins().band(sb, not_mask);
        let v = self.b.ins().bor(pick_c, pick_s);
        let two = self.ci(2);
        let q2 = self.b.ins().band(q, two);
        let width = if self.d { 62 } else { 30 };
        let sign = self.b.ins().ishl_imm_s(q2, width);
        let v = self.b.ins().bxor(v, sign);
        let v = self.float_of(v);
        if cos {
            v
        } else {
            // The reduction loses the sign of a zero.
            let zero = self.cmpc(FloatCC::Equal, x, 0.0);
            self.sel(zero, x, v)
        }
    }

    /// `sin(x + y)` for `|x| <= π/4`, `|y|` below half an ulp of `x`.
    fn sin_kernel(&mut self, x: Value, y: Value) -> Value {
        let z = self.mul(x, x);
        if self.d {
            // fdlibm __kernel_sin with iy = 1.
            let s1 = -0.16666666666666632;
            let r = self.horner(
                z,
                &[
                    0.00833333333332249,
                    -0.0001984126982985795,
                    2.7557313707070068e-06,
                    -2.5050760253406863e-08,
                    1.58969099521155e-10,
                ],
            );
            let v = self.mul(z, x);
            // x - ((z*(half*y - v*r) - y) - v*S1)
            let hy = self.mulc(y, 0.5);
            let vr = self.mul(v, r);
            let a = self.sub(hy, vr);
            let a = self.mul(z, a);
            let a = self.sub(a, y);
            let vs = self.mulc(v, s1);
            let a = self.sub(a, vs);
            self.sub(x, a)
        } else {
            // Cephes sinf, plus y*(1 - z/2).
            let p = self.horner(z, &[-1.6666654611e-1, 8.3321608736e-3, -1.9515295891e-4]);
            let zx = self.mul(z, x);
            let a = self.mul(zx, p);
            let hz = self.mulc(z, 0.5);
            let w = self.csub(1.0, hz);
            let yw = self.mul(y, w);
            let a = self.add(a, yw);
            self.add(x, a)
        }
    }

    /// `cos(x + y)` for `|x| <= π/4`, `|y|` below half an ulp of `x`.
    fn cos_kernel(&mut self, x: Value, y: Value) -> Value {
        let z = self.mul(x, x);
        let zr = if self.d {
            let r = self.horner(
                z,
                &[
                    0.0416666666666666,
                    -0.001388888888887411,
                    2.480158728947673e-05,
                    -2.7557314351390663e-07,
                    2.087572321298175e-09,
                    -1.1359647557788195e-11,
                ],
            );
            let zz = self.mul(z, z);
            self.mul(zz, r)
        } else {
            let r = self.horner(
                z,
                &[
                    4.166664568298827e-2,
                    -1.388731625493765e-3,
                    2.443315711809948e-5,
                ],
            );
            let zz = self.mul(z, z);
            self.mul(zz, r)
        };
        // hz = z/2; w = 1 - hz; w + (((1 - w) - hz) + (z*r - x*y))
        let hz = self.mulc(z, 0.5);
        let w = self.csub(1.0, hz);
        let omw = self.csub(1.0, w);
        let a = self.sub(omw, hz);
        let xy = self.mul(x, y);
        let b = self.sub(zr, xy);
        let a = self.add(a, b);
        self.add(w, a)
    }

    // ---- atan, acos ------------------------------------------------------------------------

    fn atan(&mut self, x: Value) -> Value {
        let a = self.b.ins().fabs(x);
        // Intervals [0,7/16) [7/16,11/16) [11/16,19/16) [19/16,39/16) [39/16,inf):
        // t = (a*p - q)/(r + a*s), result = hi - ((t*S(t²) - lo) - t).
        let (hi, lo): ([f64; 4], [f64; 4]) = if self.d {
            (
                [
                    0.4636476090008061,
                    std::f64::consts::FRAC_PI_4,
                    0.982793723247329,
                    std::f64::consts::FRAC_PI_2,
                ],
                [
                    2.2698777452961687e-17,
                    3.061616997868383e-17,
                    1.3903311031230998e-17,
                    6.123233995736766e-17,
                ],
            )
        } else {
            (
                [
                    4.6364760399e-01,
                    7.8539812565e-01,
                    9.8279368877e-01,
                    1.5707962513e+00,
                ],
                [
                    5.0121582440e-09,
                    3.7748947079e-08,
                    3.4473217170e-08,
                    7.5497894159e-08,
                ],
            )
        };
        let table: [(f64, f64, f64, f64, f64, f64); 5] = [
            (1.0, 0.0, 1.0, 0.0, 0.0, 0.0),
            (2.0, 1.0, 2.0, 1.0, hi[0], lo[0]),
            (1.0, 1.0, 1.0, 1.0, hi[1], lo[1]),
            (1.0, 1.5, 1.0, 1.5, hi[2], lo[2]),
            (0.0, 1.0, 0.0, 1.0, hi[3], lo[3]),
        ];
        let bounds = [7.0 / 16.0, 11.0 / 16.0, 19.0 / 16.0, 39.0 / 16.0];
        let mut vals: [Value; 6] = {
            let e = table[0];
            [
                self.c(e.0),
                self.c(e.1),
                self.c(e.2),
                self.c(e.3),
                self.c(e.4),
                self.c(e.5),
            ]
        };
        for (i, &bound) in bounds.iter().enumerate() {
            let ge = self.cmpc(FloatCC::GreaterThanOrEqual, a, bound);
            let e = table[i + 1];
            for (j, v) in [e.0, e.1, e.2, e.3, e.4, e.5].into_iter().enumerate() {
                let cv = self.c(v);
                vals[j] = self.sel(ge, cv, vals[j]);
            }
        }
        let [p, q, r, s, h, l] = vals;
        let ap = self.mul(a, p);
        let num = self.sub(ap, q);
        let as_ = self.mul(a, s);
        let den = self.add(r, as_);
        let t = self.div(num, den);
        let z = self.mul(t, t);
        let w = self.mul(z, z);
        let (even, odd): (&[f64], &[f64]) = if self.d {
            (
                &[
                    0.3333333333333293,
                    0.14285714272503466,
                    0.09090887133436507,
                    0.06661073137387531,
                    0.049768779946159324,
                    0.016285820115365782,
                ],
                &[
                    -0.19999999999876483,
                    -0.11111110405462356,
                    -0.0769187620504483,
                    -0.058335701337905735,
                    -0.036531572744216916,
                ],
            )
        } else {
            (
                &[3.3333328366e-01, 1.4253635705e-01, 6.1687607318e-02],
                &[-1.9999158382e-01, -1.0648017377e-01],
            )
        };
        let s1 = self.horner(w, even);
        let s1 = self.mul(z, s1);
        let s2 = self.horner(w, odd);
        let s2 = self.mul(w, s2);
        let ss = self.add(s1, s2);
        let ts = self.mul(t, ss);
        let u = self.sub(ts, l);
        let u = self.sub(u, t);
        let res = self.sub(h, u);
        let isinf = self.cmpc(FloatCC::Equal, a, f64::INFINITY);
        let pio2 = self.c(std::f64::consts::FRAC_PI_2);
        let res = self.sel(isinf, pio2, res);
        self.with_sign_of(res, x)
    }

    fn acos(&mut self, x: Value) -> Value {
        let (pio2_hi, pio2_lo, pi) = if self.d {
            (
                std::f64::consts::FRAC_PI_2,
                6.123233995736766e-17,
                std::f64::consts::PI,
            )
        } else {
            (1.5707962513e+00, 7.5497894159e-08, 3.1415925026e+00)
        };
        let ax = self.b.ins().fabs(x);
        let small = self.cmpc(FloatCC::LessThan, ax, 0.5);
        let xx = self.mul(x, x);
        let oma = self.csub(1.0, ax);
        let zb = self.mulc(oma, 0.5);
        let z = self.sel(small, xx, zb);
        // R(z) = p(z)/q(z)
        let (ps, qs): (&[f64], &[f64]) = if self.d {
            (
                &[
                    0.16666666666666666,
                    -0.3255658186224009,
                    0.20121253213486293,
                    -0.04005553450067941,
                    0.0007915349942898145,
                    3.479331075960212e-05,
                ],
                &[
                    1.0,
                    -2.403394911734414,
                    2.0209457602335057,
                    -0.6882839716054533,
                    0.07703815055590194,
                ],
            )
        } else {
            (
                &[1.6666586697e-01, -4.2743422091e-02, -8.6563630030e-03],
                &[1.0, -7.0662963390e-01],
            )
        };
        let p = self.horner(z, ps);
        let p = self.mul(z, p);
        let q = self.horner(z, qs);
        let rz = self.div(p, q);
        // |x| < 0.5: pio2_hi - (x - (pio2_lo - x*R))
        let xr = self.mul(x, rz);
        let a = self.csub(pio2_lo, xr);
        let a = self.sub(x, a);
        let res_small = self.csub(pio2_hi, a);
        let s = self.b.ins().sqrt(z);
        // x <= -0.5: pi - 2*(s + (R*s - pio2_lo))
        let rs = self.mul(rz, s);
        let w = self.addc(rs, -pio2_lo);
        let sw = self.add(s, w);
        let sw2 = self.mulc(sw, 2.0);
        let res_neg = self.csub(pi, sw2);
        // x >= 0.5: df = s with the low half cleared; c = (z - df²)/(s + df);
        // 2*(df + (R*s + c))
        let lowmask = self.ci(if self.d {
            -0x1_0000_0000_i64
        } else {
            0xffff_f000_u32 as i32 as i64
        });
        let sb = self.bits_of(s);
        let dfb = self.b.ins().band(sb, lowmask);
        let df = self.float_of(dfb);
        let dd = self.mul(df, df);
        let zd = self.sub(z, dd);
        let sd = self.add(s, df);
        let c = self.div(zd, sd);
        let w = self.add(rs, c);
        let dw = self.add(df, w);
        let res_pos = self.mulc(dw, 2.0);
        let neg = self.cmpc(FloatCC::LessThan, x, 0.0);
        let res_big = self.sel(neg, res_neg, res_pos);
        let res = self.sel(small, res_small, res_big);
        let one = self.cmpc(FloatCC::Equal, x, 1.0);
        let zero = self.c(0.0);
        self.sel(one, zero, res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cranelift_codegen::ir::{AbiParam, Function, Signature, UserFuncName};
    use cranelift_codegen::settings::{self, Configurable};
    use cranelift_codegen::Context;
    use cranelift_frontend::FunctionBuilderContext;
    use cranelift_jit::{JITBuilder, JITModule};
    use cranelift_module::{default_libcall_names, Linkage, Module};

    /// The JIT-compiled variants of one function.
    struct Compiled {
        _module: JITModule,
        f32: extern "C" fn(f32) -> f32,
        f64: extern "C" fn(f64) -> f64,
        /// `(in, out)`: four f32 lanes.
        v32: extern "C" fn(*const f32, *mut f32),
        /// `(in, out)`: two f64 lanes.
        v64: extern "C" fn(*const f64, *mut f64),
        /// `(in, out, n)`, `n > 0`: a scalar f32 loop.
        loop32: extern "C" fn(*const f32, *mut f32, i64),
        /// `(in, out, n)`, `n > 0` a multiple of 4: an F32X4 loop.
        loopv32: extern "C" fn(*const f32, *mut f32, i64),
    }

    fn module() -> JITModule {
        let mut flags = settings::builder();
        flags.set("opt_level", "speed").unwrap();
        let isa = cranelift_native::builder()
            .unwrap()
            .finish(settings::Flags::new(flags))
            .unwrap();
        JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()))
    }

    fn define(
        m: &mut JITModule,
        name: &str,
        params: &[Type],
        rets: &[Type],
        body: impl FnOnce(&mut FunctionBuilder, &[Value]) -> Vec<Value>,
    ) -> *const u8 {
        let mut sig = Signature::new(m.isa().default_call_conv());
        sig.params.extend(params.iter().map(|&t| AbiParam::new(t)));
        sig.returns.extend(rets.iter().map(|&t| AbiParam::new(t)));
        let id = m.declare_function(name, Linkage::Local, &sig).unwrap();
        let mut func = Function::with_name_signature(UserFuncName::user(0, id.as_u32()), sig);
        let mut fctx = FunctionBuilderContext::new();
        {
            let mut b = FunctionBuilder::new(&mut func, &mut fctx);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            b.seal_block(entry);
            let args = b.block_params(entry).to_vec();
            let rets = body(&mut b, &args);
            b.ins().return_(&rets);
            b.finalize(m.target_config());
        }
        let mut ctx = Context::for_function(func);
        m.define_function(id, &mut ctx)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        m.finalize_definitions().unwrap();
        m.get_finalized_function(id)
    }

    /// A loop over `n` elements (`step` per iteration) applying `f` to values of type `ty`.
    fn define_loop(m: &mut JITModule, name: &str, f: MathFn, ty: Type) -> *const u8 {
        let ptr = m.target_config().pointer_type();
        define(m, name, &[ptr, ptr, types::I64], &[], |b, args| {
            let (src, dst, n) = (args[0], args[1], args[2]);
            let body = b.create_block();
            let exit = b.create_block();
            b.append_block_param(body, types::I64);
            let zero = b.ins().iconst(types::I64, 0);
            b.ins().jump(body, &[zero.into()]);
            b.switch_to_block(body);
            let i = b.block_params(body)[0];
            let off = b.ins().ishl_imm_s(i, 2);
            let s = b.ins().iadd(src, off);
            let d = b.ins().iadd(dst, off);
            let x = b.ins().load(ty, MemFlagsData::new(), s, 0);
            let y = emit(b, f, x);
            b.ins().store(MemFlagsData::new(), y, d, 0);
            let next = b.ins().iadd_imm_s(i, i64::from(ty.lane_count()));
            let more = b.ins().icmp(
                cranelift_codegen::ir::condcodes::IntCC::SignedLessThan,
                next,
                n,
            );
            b.ins().brif(more, body, &[next.into()], exit, &[]);
            b.seal_block(body);
            b.switch_to_block(exit);
            b.seal_block(exit);
            vec![]
        })
    }

    fn compile(f: MathFn) -> Compiled {
        let mut m = module();
        let ptr = m.target_config().pointer_type();
        let s32 = define(&mut m, "s32", &[types::F32], &[types::F32], |b, a| {
            vec![emit(b, f, a[0])]
        });
        let s64 = define(&mut m, "s64", &[types::F64], &[types::F64], |b, a| {
            vec![emit(b, f, a[0])]
        });
        let vec_fn = |ty: Type| {
            move |b: &mut FunctionBuilder, a: &[Value]| {
                let x = b.ins().load(ty, MemFlagsData::new(), a[0], 0);
                let y = emit(b, f, x);
                b.ins().store(MemFlagsData::new(), y, a[1], 0);
                vec![]
            }
        };
        let v32 = define(&mut m, "v32", &[ptr, ptr], &[], vec_fn(types::F32X4));
        let v64 = define(&mut m, "v64", &[ptr, ptr], &[], vec_fn(types::F64X2));
        let l32 = define_loop(&mut m, "l32", f, types::F32);
        let lv32 = define_loop(&mut m, "lv32", f, types::F32X4);
        // SAFETY: the functions were compiled with exactly these signatures, and the module
        // that owns their code lives as long as the pointers (in `Compiled`).
        unsafe {
            Compiled {
                _module: m,
                f32: std::mem::transmute::<*const u8, extern "C" fn(f32) -> f32>(s32),
                f64: std::mem::transmute::<*const u8, extern "C" fn(f64) -> f64>(s64),
                v32: std::mem::transmute::<*const u8, extern "C" fn(*const f32, *mut f32)>(v32),
                v64: std::mem::transmute::<*const u8, extern "C" fn(*const f64, *mut f64)>(v64),
                loop32: std::mem::transmute::<*const u8, extern "C" fn(*const f32, *mut f32, i64)>(
                    l32,
                ),
                loopv32: std::mem::transmute::<*const u8, extern "C" fn(*const f32, *mut f32, i64)>(
                    lv32,
                ),
            }
        }
    }

    fn reference(f: MathFn, x: f64) -> f64 {
        match f {
            MathFn::Exp | MathFn::ExpNonPos => x.exp(),
            MathFn::Log | MathFn::LogNormal => x.ln(),
            MathFn::Log1p | MathFn::Log1pUnit => x.ln_1p(),
            MathFn::Expm1 => x.exp_m1(),
            MathFn::Tanh => x.tanh(),
            MathFn::Sin => x.sin(),
            MathFn::Cos => x.cos(),
            MathFn::Atan => x.atan(),
            MathFn::Acos => x.acos(),
        }
    }

    /// The size of an ulp of an f32 at the (f64) value `r`.
    fn ulp32(r: f64) -> f64 {
        let e = ((r.abs().to_bits() >> 52) as i64 - 1023).max(-126);
        f64::from_bits(((e - 23 + 1023) as u64) << 52)
    }

    /// The size of an ulp of an f64 at `r`.
    fn ulp64(r: f64) -> f64 {
        let e = ((r.abs().to_bits() >> 52) as i64 - 1023).max(-1022) - 52;
        if e >= -1022 {
            f64::from_bits(((e + 1023) as u64) << 52)
        } else {
            f64::from_bits(1u64 << (e + 1074))
        }
    }

    /// The error of `got` against `want` (exact or f64) in ulps of f32, infinite for a wrong
    /// special value.
    fn err32(got: f32, want: f64) -> f64 {
        let w32 = want as f32;
        if want.is_nan() || got.is_nan() {
            return if want.is_nan() && got.is_nan() {
                0.0
            } else {
                f64::INFINITY
            };
        }
        if w32.is_infinite() || got.is_infinite() {
            return if got == w32 { 0.0 } else { f64::INFINITY };
        }
        (got as f64 - want).abs() / ulp32(want)
    }

    fn err64(got: f64, want: f64) -> f64 {
        if want.is_nan() || got.is_nan() {
            return if want.is_nan() && got.is_nan() {
                0.0
            } else {
                f64::INFINITY
            };
        }
        if want.is_infinite() || got.is_infinite() {
            return if got == want { 0.0 } else { f64::INFINITY };
        }
        if got == want {
            return 0.0;
        }
        // Exact in the scaled form even near the f64 limits.
        let u = ulp64(want);
        ((got / u) - (want / u)).abs()
    }

    /// Whether `f` at `x` is inside the domain the error bounds claim.
    fn in_domain(f: MathFn, x: f64, double: bool) -> bool {
        match f {
            MathFn::Sin | MathFn::Cos => x.abs() <= if double { 1e9 } else { 102943.0 },
            MathFn::Log1pUnit => (0.0..=1.0).contains(&x),
            MathFn::ExpNonPos => x <= 0.0 || x.is_nan(),
            MathFn::LogNormal => {
                let min = if double {
                    f64::MIN_POSITIVE
                } else {
                    f32::MIN_POSITIVE as f64
                };
                let max = if double { f64::MAX } else { f32::MAX as f64 };
                (min..=max).contains(&x)
            }
            _ => true,
        }
    }

    /// Deterministic pseudo-random numbers (SplitMix64).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
            lo + (hi - lo) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
        }
    }

    /// The f32 inputs: a bit pattern every 401 (about 10^7 over all floats), all subnormals
    /// near 0 densely, and dense uniform sweeps of [-20, 20] and the reduction range of sin/cos.
    fn inputs32() -> Vec<f32> {
        let mut v: Vec<f32> = (0..=u32::MAX / 401)
            .map(|i| f32::from_bits(i * 401))
            .collect();
        v.extend((0..200_000u32).map(f32::from_bits));
        v.extend((0..200_000u32).map(|i| f32::from_bits(0x8000_0000 | i)));
        let mut rng = Rng(1);
        for (lo, hi, n) in [
            (-20.0, 20.0, 1_000_000),
            (-1.0, 1.0, 500_000),
            (-12867.0, 12867.0, 500_000),
        ] {
            v.extend((0..n).map(|_| rng.uniform(lo, hi) as f32));
        }
        // Nearest floats to multiples of π/2 (cancellation in the reduction).
        for n in 1..=65536 {
            let x = (n as f64 * std::f64::consts::FRAC_PI_2) as f32;
            v.extend([
                x,
                -x,
                f32::from_bits(x.to_bits() + 1),
                f32::from_bits(x.to_bits() - 1),
            ]);
        }
        while !v.len().is_multiple_of(4) {
            v.push(1.0);
        }
        v
    }

    /// The f64 inputs: ~4·10^6 bit patterns spread over all doubles, plus uniform sweeps.
    fn inputs64() -> Vec<f64> {
        let step = u64::MAX / 4_000_000;
        let mut v: Vec<f64> = (0..4_000_000u64)
            .map(|i| f64::from_bits(i.wrapping_mul(step).wrapping_add(i % 7919)))
            .collect();
        let mut rng = Rng(2);
        for (lo, hi, n) in [
            (-40.0, 40.0, 1_000_000),
            (-1.0, 1.0, 500_000),
            (-1e5, 1e5, 500_000),
            (-1e9, 1e9, 300_000),
            (-1e12, 1e12, 100_000),
        ] {
            v.extend((0..n).map(|_| rng.uniform(lo, hi)));
        }
        v.extend((0..100_000u64).map(f64::from_bits));
        // Nearest doubles to multiples of π/2 (cancellation in the reduction).
        for _ in 0..200_000 {
            let n = (rng.next() % 636_619_772) as f64;
            let x = n * std::f64::consts::FRAC_PI_2;
            v.extend([x, -x]);
        }
        if !v.len().is_multiple_of(2) {
            v.push(1.0);
        }
        v
    }

    /// Max ulp error (and its argument) of the f32 scalar version, checking the vector
    /// version bitwise equal on the same inputs.
    fn measure32(c: &Compiled, f: MathFn, xs: &[f32]) -> (f64, f32) {
        let mut worst = (0.0, 0.0f32);
        let mut outside = (0.0, 0.0f32);
        let mut out = [0f32; 4];
        for chunk in xs.chunks_exact(4) {
            (c.v32)(chunk.as_ptr(), out.as_mut_ptr());
            for (&x, &vy) in chunk.iter().zip(&out) {
                let y = (c.f32)(x);
                assert!(
                    (y.is_nan() && vy.is_nan()) || y.to_bits() == vy.to_bits(),
                    "{f:?} f32 vector {vy:e} != scalar {y:e} at {x:e}"
                );
                let want = reference(f, x as f64);
                let e = err32(y, want);
                let w = if in_domain(f, x as f64, false) {
                    &mut worst
                } else if x.abs() <= 1e6 {
                    // Absolute error: near the zeros of sin/cos the ulp error says little.
                    let e = (y as f64 - want).abs();
                    if e > outside.0 || e.is_nan() {
                        outside = (e, x);
                    }
                    continue;
                } else {
                    continue;
                };
                if e > w.0 || e.is_nan() {
                    *w = (e, x);
                }
            }
        }
        if outside.0 > 0.0 {
            println!(
                "{f:?}: f32 outside the claimed domain, |x| <= 1e6: absolute error {:.3e} at {:e}",
                outside.0, outside.1
            );
        }
        worst
    }

    fn measure64(c: &Compiled, f: MathFn, xs: &[f64]) -> (f64, f64) {
        let mut worst = (0.0, 0.0);
        let mut outside = (0.0, 0.0);
        let mut out = [0f64; 2];
        for chunk in xs.chunks_exact(2) {
            (c.v64)(chunk.as_ptr(), out.as_mut_ptr());
            for (&x, &vy) in chunk.iter().zip(&out) {
                let y = (c.f64)(x);
                assert!(
                    same64(y, vy),
                    "{f:?} f64 vector {vy:e} != scalar {y:e} at {x:e}"
                );
                let want = reference(f, x);
                let e = err64(y, want);
                let w = if in_domain(f, x, true) {
                    &mut worst
                } else if x.abs() <= 1e12 {
                    // Absolute error: near the zeros of sin/cos the ulp error says little.
                    let e = (y - want).abs();
                    if e > outside.0 || e.is_nan() {
                        outside = (e, x);
                    }
                    continue;
                } else {
                    continue;
                };
                if e > w.0 || e.is_nan() {
                    *w = (e, x);
                }
            }
        }
        if outside.0 > 0.0 {
            println!(
                "{f:?}: f64 outside the claimed domain, |x| <= 1e12: absolute error {:.3e} at {:e}",
                outside.0, outside.1
            );
        }
        worst
    }

    #[test]
    fn accuracy_and_vectors() {
        let xs32 = inputs32();
        let xs64 = inputs64();
        let mut failures = vec![];
        for f in MathFn::ALL {
            let c = compile(f);
            let (e32, at32) = measure32(&c, f, &xs32);
            let (e64, at64) = measure64(&c, f, &xs64);
            println!("{f:?}: f32 {e32:.3} ulp (at {at32:e}), f64 {e64:.3} ulp (at {at64:e})");
            // glibc's tanh is off by up to ~2 ulp itself (graded with mpmath), ours by < 1.
            let glibc_slack = if f == MathFn::Tanh { 1.0 } else { 0.0 };
            if e32.is_nan()
                || e64.is_nan()
                || e32 > max_ulp(f, false)
                || e64 > max_ulp(f, true) + glibc_slack
            {
                failures.push(f);
            }
        }
        assert!(failures.is_empty(), "over the bound: {failures:?}");
    }

    /// The emitted code is one straight-line block of verifiable IR: no branches, no calls.
    #[test]
    fn straight_line() {
        let flags = settings::Flags::new(settings::builder());
        let isa = cranelift_native::builder()
            .unwrap()
            .finish(flags.clone())
            .unwrap();
        for ty in [types::F32, types::F64, types::F32X4, types::F64X2] {
            for f in MathFn::ALL {
                let mut sig = Signature::new(isa.default_call_conv());
                sig.params.push(AbiParam::new(ty));
                sig.returns.push(AbiParam::new(ty));
                let mut func = Function::with_name_signature(UserFuncName::user(0, 0), sig);
                let mut fctx = FunctionBuilderContext::new();
                let mut b = FunctionBuilder::new(&mut func, &mut fctx);
                let entry = b.create_block();
                b.append_block_params_for_function_params(entry);
                b.switch_to_block(entry);
                b.seal_block(entry);
                let x = b.block_params(entry)[0];
                let y = emit(&mut b, f, x);
                assert_eq!(b.func.dfg.value_type(y), ty);
                b.ins().return_(&[y]);
                b.finalize(isa.frontend_config());
                cranelift_codegen::verify_function(&func, &flags)
                    .unwrap_or_else(|e| panic!("{f:?} {ty}: {e}"));
                assert_eq!(func.layout.blocks().count(), 1, "{f:?} {ty}");
                for inst in func.layout.block_insts(entry) {
                    let op = func.dfg.insts[inst].opcode();
                    assert!(
                        !op.is_call() && (!op.is_branch() || op.is_return()),
                        "{f:?} {ty}: {op}"
                    );
                }
            }
        }
    }

    /// `(x, f(x))` pairs that must come out exactly (bitwise, NaN as any NaN).
    fn specials(f: MathFn) -> Vec<(f64, f64)> {
        use std::f64::consts::{FRAC_PI_2, PI};
        let (inf, nan) = (f64::INFINITY, f64::NAN);
        let common: &[(f64, f64)] = if f == MathFn::LogNormal {
            &[]
        } else {
            &[(nan, nan)]
        };
        let own: &[(f64, f64)] = match f {
            MathFn::Exp => &[
                (-inf, 0.0),
                (inf, inf),
                (0.0, 1.0),
                (-0.0, 1.0),
                (1e4, inf),
                (-1e4, 0.0),
            ],
            MathFn::Log => &[
                (0.0, -inf),
                (-0.0, -inf),
                (-1.0, nan),
                (-inf, nan),
                (inf, inf),
                (1.0, 0.0),
            ],
            MathFn::Log1p => &[
                (-1.0, -inf),
                (-2.0, nan),
                (-inf, nan),
                (inf, inf),
                (0.0, 0.0),
                (-0.0, -0.0),
                (1e-30, 1e-30),
                (-1e-30, -1e-30),
            ],
            MathFn::Log1pUnit => &[(0.0, 0.0), (1e-30, 1e-30), (1e-310, 1e-310)],
            MathFn::ExpNonPos => &[(-inf, 0.0), (0.0, 1.0), (-0.0, 1.0), (-1e4, 0.0)],
            // (no NaN: outside its domain; `common` is skipped below)
            MathFn::LogNormal => &[(1.0, 0.0), (2.0, std::f64::consts::LN_2)],
            MathFn::Expm1 => &[
                (-inf, -1.0),
                (inf, inf),
                (1e4, inf),
                (0.0, 0.0),
                (-0.0, -0.0),
                (1e-30, 1e-30),
                (-1e-30, -1e-30),
            ],
            MathFn::Tanh => &[
                (inf, 1.0),
                (-inf, -1.0),
                (0.0, 0.0),
                (-0.0, -0.0),
                (1e-30, 1e-30),
                (-1e-30, -1e-30),
                (100.0, 1.0),
            ],
            MathFn::Sin => &[
                (inf, nan),
                (-inf, nan),
                (0.0, 0.0),
                (-0.0, -0.0),
                (1e-30, 1e-30),
                (-1e-30, -1e-30),
            ],
            MathFn::Cos => &[(inf, nan), (-inf, nan), (0.0, 1.0), (-0.0, 1.0)],
            MathFn::Atan => &[
                (inf, FRAC_PI_2),
                (-inf, -FRAC_PI_2),
                (0.0, 0.0),
                (-0.0, -0.0),
                (1e-30, 1e-30),
            ],
            MathFn::Acos => &[
                (1.0, 0.0),
                (-1.0, PI),
                (1.5, nan),
                (-1.5, nan),
                (inf, nan),
                (-inf, nan),
                (0.0, FRAC_PI_2),
            ],
        };
        common.iter().chain(own).copied().collect()
    }

    fn same64(a: f64, b: f64) -> bool {
        (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
    }

    #[test]
    fn special_values() {
        for f in MathFn::ALL {
            let c = compile(f);
            for (x, want) in specials(f) {
                let got = (c.f64)(x);
                assert!(
                    same64(got, want),
                    "{f:?}({x:e}) f64: got {got:e}, want {want:e}"
                );
                let (got, want) = ((c.f32)(x as f32), want as f32);
                let ok = (got.is_nan() && want.is_nan()) || got.to_bits() == want.to_bits();
                assert!(ok, "{f:?}({x:e}) f32: got {got:e}, want {want:e}");
                let mut out = [0f32; 4];
                (c.v32)([x as f32; 4].as_ptr(), out.as_mut_ptr());
                assert!(
                    out.iter()
                        .all(|o| (o.is_nan() && got.is_nan()) || o.to_bits() == got.to_bits()),
                    "{f:?}({x:e}) f32x4"
                );
                let mut out = [0f64; 2];
                (c.v64)([x; 2].as_ptr(), out.as_mut_ptr());
                let g64 = (c.f64)(x);
                assert!(out.iter().all(|&o| same64(o, g64)), "{f:?}({x:e}) f64x2");
            }
        }
        // Subnormal arguments and results.
        let exp = compile(MathFn::Exp);
        for x in [-740.0, -745.0, -745.2, -709.0, -708.5] {
            let (got, want) = ((exp.f64)(x), f64::exp(x));
            assert!(err64(got, want) <= 1.0, "exp({x}) = {got:e}, want {want:e}");
        }
        for x in [-88.0f32, -100.0, -103.0, -103.9] {
            let (got, want) = ((exp.f32)(x), (x as f64).exp());
            assert!(
                err32(got, want) <= 1.0,
                "expf({x}) = {got:e}, want {want:e}"
            );
        }
        let log = compile(MathFn::Log);
        for bits in [1u64, 2, 12345, 1 << 51, (1 << 52) - 1] {
            let x = f64::from_bits(bits);
            let (got, want) = ((log.f64)(x), x.ln());
            assert!(
                err64(got, want) <= 1.0,
                "log({x:e}) = {got:e}, want {want:e}"
            );
        }
        for bits in [1u32, 2, 12345, 1 << 22, (1 << 23) - 1] {
            let x = f32::from_bits(bits);
            let (got, want) = ((log.f32)(x), (x as f64).ln());
            assert!(
                err32(got, want) <= 1.0,
                "logf({x:e}) = {got:e}, want {want:e}"
            );
        }
    }

    /// `b` gives `a`'s bits (NaN: any NaN) on every `x`, scalar and two lanes at a time.
    fn same_bits_f64(a: &Compiled, b: &Compiled, xs: &[f64]) {
        let same = |p: f64, q: f64| p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan());
        let mut out = [0f64; 2];
        for chunk in xs.chunks_exact(2) {
            (b.v64)(chunk.as_ptr(), out.as_mut_ptr());
            for (&x, &y) in chunk.iter().zip(&out) {
                let (p, q) = ((a.f64)(x), (b.f64)(x));
                assert!(same(p, q), "f64 {x:e}: {p:e} vs {q:e}");
                assert!(same(p, y), "f64x2 {x:e}: {p:e} vs {y:e}");
            }
        }
    }

    /// The exp of non-positive arguments is the general one there, bit for bit: every 61st
    /// non-positive f32 (all of [-104, 0] at that stride, the clamp, subnormal results),
    /// every f32 of [-104, -85] (the results that round into the subnormals), NaN, -inf, and
    /// 10^6 doubles of [-750, 0] with the ends.
    #[test]
    fn exp_nonpos_is_exp_on_its_domain() {
        let (a, b) = (compile(MathFn::Exp), compile(MathFn::ExpNonPos));
        let neg = (-0.0f32).to_bits();
        let xs32: Vec<f32> = (neg..=u32::MAX)
            .step_by(61)
            .chain((-85.0f32).to_bits()..=(-104.0f32).to_bits())
            .map(f32::from_bits)
            .chain([0.0, -0.0, f32::NEG_INFINITY, f32::NAN, -f32::MIN_POSITIVE])
            .chain([-103.97208, -87.33655, -1e-45, f32::MIN])
            .collect();
        let same = |p: f32, q: f32| p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan());
        let mut out = [0f32; 4];
        for chunk in xs32.chunks(4) {
            let mut lanes = [0f32; 4];
            lanes[..chunk.len()].copy_from_slice(chunk);
            (b.v32)(lanes.as_ptr(), out.as_mut_ptr());
            for (&x, &y) in lanes.iter().zip(&out) {
                let (p, q) = ((a.f32)(x), (b.f32)(x));
                assert!(same(p, q), "f32 {x:e}: {p:e} vs {q:e}");
                assert!(same(p, y), "f32x4 {x:e}: {p:e} vs {y:e}");
            }
        }
        let mut rng = Rng(11);
        let xs64: Vec<f64> = (0..1_000_000)
            .map(|_| rng.uniform(-750.0, 0.0))
            .chain([
                0.0,
                -0.0,
                f64::NEG_INFINITY,
                f64::NAN,
                -746.0,
                -745.1332191019412,
            ])
            .chain([-708.3964185322641, -709.782712893384, -5e-324, f64::MIN])
            .collect();
        same_bits_f64(&a, &b, &xs64);
    }

    /// Under the subnormals (`x < -103.98`, `< -745.14` for f64) exp is +0 in every form,
    /// on both sides of the clamps (where the scale factor's exponent reaches 0), down to
    /// -inf: the lanes multiply by 0 there rather than round a tiny product.
    #[test]
    fn exp_is_zero_below_the_subnormals() {
        let (a, b) = (compile(MathFn::Exp), compile(MathFn::ExpNonPos));
        let xs32 = [
            -104.0f32,
            -132.39,
            -132.41,
            -150.0,
            -176.09,
            -176.11,
            -1e30,
            f32::MIN,
        ];
        let mut out = [0f32; 4];
        for chunk in xs32.chunks(4) {
            for c in [&a, &b] {
                (c.v32)(chunk.as_ptr(), out.as_mut_ptr());
                for (&x, &y) in chunk.iter().zip(&out) {
                    let p = (c.f32)(x);
                    assert!(
                        p.to_bits() == 0 && y.to_bits() == 0,
                        "f32 {x:e}: {p:e}, {y:e}"
                    );
                }
            }
        }
        let xs64 = [-746.0, -1063.9, -1064.1, -1418.2, -1418.4, -1e300];
        let mut out = [0f64; 2];
        for chunk in xs64.chunks(2) {
            for c in [&a, &b] {
                (c.v64)(chunk.as_ptr(), out.as_mut_ptr());
                for (&x, &y) in chunk.iter().zip(&out) {
                    let p = (c.f64)(x);
                    assert!(
                        p.to_bits() == 0 && y.to_bits() == 0,
                        "f64 {x:e}: {p:e}, {y:e}"
                    );
                }
            }
        }
    }

    /// The log of positive normal finite arguments is the general one there, bit for bit:
    /// every 61st positive normal f32, every f32 of [1, 4] (a logsumexp's sums of a few
    /// terms), the ends, and 10^6 doubles of [1, 64] and 10^6 over all positive normal
    /// exponents.
    #[test]
    fn log_normal_is_log_on_its_domain() {
        let (a, b) = (compile(MathFn::Log), compile(MathFn::LogNormal));
        let xs32: Vec<f32> = (f32::MIN_POSITIVE.to_bits()..=f32::MAX.to_bits())
            .step_by(61)
            .chain(1.0f32.to_bits()..=4.0f32.to_bits())
            .map(f32::from_bits)
            .chain([f32::MIN_POSITIVE, f32::MAX, 1.0, 2.0, 3.0])
            .collect();
        let mut out = [0f32; 4];
        for chunk in xs32.chunks(4) {
            let mut lanes = [1f32; 4];
            lanes[..chunk.len()].copy_from_slice(chunk);
            (b.v32)(lanes.as_ptr(), out.as_mut_ptr());
            for (&x, &y) in lanes.iter().zip(&out) {
                let (p, q) = ((a.f32)(x), (b.f32)(x));
                assert_eq!(p.to_bits(), q.to_bits(), "f32 {x:e}: {p:e} vs {q:e}");
                assert_eq!(p.to_bits(), y.to_bits(), "f32x4 {x:e}: {p:e} vs {y:e}");
            }
        }
        let (mut rng, mut bits) = (Rng(13), Rng(14));
        let xs64: Vec<f64> = (0..1_000_000)
            .map(|_| rng.uniform(1.0, 64.0))
            .chain((0..1_000_000).map(|_| {
                let e = bits.next() % 2046 + 1;
                f64::from_bits(e << 52 | bits.next() >> 12)
            }))
            .chain([f64::MIN_POSITIVE, f64::MAX, 1.0, 2.0, 3.0, 4.0])
            .collect();
        same_bits_f64(&a, &b, &xs64);
    }

    /// The `[0, 1]` log1p of softplus: for f64 the general one there, bit for bit (10^6
    /// doubles); for f32 its own polynomial, within its bound of the f64 libm result, ±0 kept,
    /// and the vector code equal to the scalar (every 61st f32 of `[0, 1]`, the first 10^5
    /// subnormals).
    #[test]
    fn log1p_unit_on_its_domain() {
        let (a, b) = (compile(MathFn::Log1p), compile(MathFn::Log1pUnit));
        let one = 1.0f32.to_bits();
        let xs32: Vec<f32> = (0..=one)
            .step_by(61)
            .chain(0..100_000)
            .chain([one, (-0.0f32).to_bits()])
            .map(f32::from_bits)
            .collect();
        let bound = max_ulp(MathFn::Log1pUnit, false);
        for &x in &xs32 {
            let q = (b.f32)(x);
            let e = err32(q, (x as f64).ln_1p());
            assert!(e <= bound, "f32 {x:e}: {q:e}, {e} ulp");
        }
        assert_eq!((b.f32)(-0.0).to_bits(), (-0.0f32).to_bits());
        assert!((b.f32)(f32::NAN).is_nan());
        let mut out = [0f32; 4];
        for chunk in xs32.chunks_exact(4) {
            (b.v32)(chunk.as_ptr(), out.as_mut_ptr());
            for (&x, &y) in chunk.iter().zip(&out) {
                assert_eq!((b.f32)(x).to_bits(), y.to_bits(), "f32x4 {x:e}");
            }
        }
        let mut rng = Rng(7);
        let xs64: Vec<f64> = (0..1_000_000)
            .map(|_| rng.uniform(0.0, 1.0))
            .chain((1..1000).map(f64::from_bits))
            .chain([1.0, 0.41421356237309503, 0.414213562373095])
            .collect();
        same_bits_f64(&a, &b, &xs64);
    }

    /// Every f32 (through the F32X4 loop, which the other tests check against the scalar code),
    /// graded against the f64 libm result; prints the max ulp error per function and asserts
    /// the bound. Takes a few minutes: run with
    /// `cargo test --release --lib jit::math::tests::exhaustive_f32 -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn exhaustive_f32() {
        const CHUNK: u64 = 1 << 16;
        let mut failures = vec![];
        for f in MathFn::ALL {
            let c = compile(f);
            let run = c.loopv32;
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
            let per = (1u64 << 32) / threads;
            let worst = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        s.spawn(move || {
                            let mut worst = (0.0f64, 0.0f32);
                            let mut xs = vec![0f32; CHUNK as usize];
                            let mut ys = vec![0f32; CHUNK as usize];
                            let mut start = t * per;
                            while start < (t + 1) * per {
                                for (i, x) in xs.iter_mut().enumerate() {
                                    *x = f32::from_bits((start + i as u64) as u32);
                                }
                                run(xs.as_ptr(), ys.as_mut_ptr(), CHUNK as i64);
                                for (&x, &y) in xs.iter().zip(&ys) {
                                    if !in_domain(f, x as f64, false) {
                                        continue;
                                    }
                                    let e = err32(y, reference(f, x as f64));
                                    if e > worst.0 || e.is_nan() {
                                        worst = (e, x);
                                    }
                                }
                                start += CHUNK;
                            }
                            worst
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .fold(
                        (0.0, 0.0),
                        |a, b| if b.0 > a.0 || b.0.is_nan() { b } else { a },
                    )
            });
            println!("{f:?}: all f32: {:.3} ulp (at {:e})", worst.0, worst.1);
            if worst.0.is_nan() || worst.0 > max_ulp(f, false) {
                failures.push((f, worst));
            }
        }
        assert!(failures.is_empty(), "over the bound: {failures:?}");
    }

    /// Prints the throughput of the JIT f32 exp/log (scalar loop and F32X4 loop) against
    /// Rust's `f32::exp`/`f32::ln` (libm) over 10^7 elements. Run with
    /// `cargo test --release --lib jit::math::tests::throughput -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn throughput() {
        use std::hint::black_box;
        use std::time::Instant;
        const N: usize = 10_000_000;
        let mut rng = Rng(3);
        for f in [MathFn::Exp, MathFn::Log] {
            let c = compile(f);
            let xs: Vec<f32> = (0..N)
                .map(|_| match f {
                    MathFn::Exp => rng.uniform(-80.0, 80.0) as f32,
                    _ => rng.uniform(1e-3, 1e3) as f32,
                })
                .collect();
            let mut out = vec![0f32; N];
            let mut time = |name: &str, run: &mut dyn FnMut(&mut [f32])| {
                let mut best = f64::INFINITY;
                for _ in 0..3 {
                    let t = Instant::now();
                    run(&mut out);
                    best = best.min(t.elapsed().as_secs_f64());
                }
                black_box(&out);
                println!(
                    "{f:?} {name}: {:.2} ms for 10^7, {:.2} ns/element",
                    best * 1e3,
                    best * 1e9 / N as f64
                );
            };
            time("jit scalar", &mut |o| {
                (c.loop32)(xs.as_ptr(), o.as_mut_ptr(), N as i64)
            });
            time("jit f32x4", &mut |o| {
                (c.loopv32)(xs.as_ptr(), o.as_mut_ptr(), N as i64)
            });
            time("rust f32 (libm)", &mut |o| {
                for (y, &x) in o.iter_mut().zip(&xs) {
                    *y = match f {
                        MathFn::Exp => black_box(x).exp(),
                        _ => black_box(x).ln(),
                    };
                }
            });
        }
    }
}
