//! Int arithmetic and real-to-int powers, defined once for every backend: the interpreter,
//! the JIT's host functions and the simplifier's constant folds call these, so the backends
//! cannot disagree. Ints are two's complement and wrap (`i64::MIN / -1` is `i64::MIN`,
//! `abs(i64::MIN)` is `i64::MIN`); division by zero and negative int exponents are errors the
//! callers raise before calling.

/// Floor division (`-7 / 2 == -4`), wrapping; `b != 0`.
pub fn floor_div(a: i64, b: i64) -> i64 {
    let q = a.wrapping_div(b);
    // (wrapping_rem: `i64::MIN % -1` overflows in Rust, and is 0)
    if a.wrapping_rem(b) != 0 && ((a < 0) != (b < 0)) {
        q.wrapping_sub(1)
    } else {
        q
    }
}

/// Floor modulo (`-1 % 3 == 2`): the sign of `b`; `b != 0`.
pub fn floor_mod(a: i64, b: i64) -> i64 {
    let r = a.wrapping_rem(b);
    if r != 0 && ((r < 0) != (b < 0)) {
        // (r and b have opposite signs: no overflow)
        r + b
    } else {
        r
    }
}

/// `x ^ n` for an int `n >= 0`, wrapping, exact for every `n` (square and multiply over all
/// 64 bits of the exponent; Rust's `wrapping_pow` takes only a u32).
pub fn ipow(x: i64, n: i64) -> i64 {
    let mut n = n.max(0) as u64;
    let (mut base, mut r) = (x, 1i64);
    while n > 0 {
        if n & 1 == 1 {
            r = r.wrapping_mul(base);
        }
        base = base.wrapping_mul(base);
        n >>= 1;
    }
    r
}

/// `x ^ n` (`n >= 0`), or None where it overflows.
pub fn checked_ipow(x: i64, n: i64) -> Option<i64> {
    let (mut n, mut base, mut r) = (n.max(0) as u64, x, 1i64);
    while n > 0 {
        if n & 1 == 1 {
            r = r.checked_mul(base)?;
        }
        n >>= 1;
        if n > 0 {
            // (a square that overflows with bits of the exponent left: so does the result)
            base = base.checked_mul(base)?;
        }
    }
    Some(r)
}

/// A real to an int power: `powi` (repeated multiplication) where the exponent fits an i32;
/// beyond, `|x| ^ n` with the sign taken from the exponent's exact parity (converting `n` to a
/// real could round an odd exponent to an even one, and truncating it to i32 changes it).
pub fn powi(x: f64, n: i64) -> f64 {
    if let Ok(k) = i32::try_from(n) {
        return x.powi(k);
    }
    let m = x.abs().powf(n as f64);
    if x.is_sign_negative() && n & 1 == 1 {
        -m
    } else {
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges() {
        assert_eq!(floor_div(i64::MIN, -1), i64::MIN);
        assert_eq!(floor_mod(i64::MIN, -1), 0);
        assert_eq!(floor_div(-7, 2), -4);
        assert_eq!(floor_mod(-1, 3), 2);
        assert_eq!(floor_div(i64::MIN, 3), -3074457345618258603);
        assert_eq!(
            ipow(3, 1 << 40),
            3i64.wrapping_pow(1 << 20).wrapping_pow(1 << 20)
        );
        assert_eq!(ipow(-1, (1 << 33) + 1), -1);
        assert_eq!(ipow(2, 64), 0);
        assert_eq!(powi(-1.0, 4294967296), 1.0);
        assert_eq!(powi(-1.0, 4294967297), -1.0);
        assert_eq!(powi(-1.0, i64::MAX), -1.0);
        assert_eq!(powi(-1.0, i64::MIN), 1.0);
        assert_eq!(powi(-0.0, -4294967297), f64::NEG_INFINITY);
        assert_eq!(powi(2.0, 3), 8.0);
        assert_eq!(powi(0.5, 1 << 40), 0.0);
    }
}
