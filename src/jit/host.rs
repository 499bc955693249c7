//! Host functions a kernel may call: libm's elementary functions (through Rust's f64 and f32
//! methods) and integer/real powers.

use crate::ir::Func;

extern "C" fn exp(x: f64) -> f64 {
    x.exp()
}
extern "C" fn ln(x: f64) -> f64 {
    x.ln()
}
extern "C" fn ln_1p(x: f64) -> f64 {
    x.ln_1p()
}
extern "C" fn exp_m1(x: f64) -> f64 {
    x.exp_m1()
}
extern "C" fn tanh(x: f64) -> f64 {
    x.tanh()
}
extern "C" fn sin(x: f64) -> f64 {
    x.sin()
}
extern "C" fn cos(x: f64) -> f64 {
    x.cos()
}
extern "C" fn atan(x: f64) -> f64 {
    x.atan()
}
extern "C" fn acos(x: f64) -> f64 {
    x.acos()
}
extern "C" fn pow(x: f64, y: f64) -> f64 {
    x.powf(y)
}
extern "C" fn exp32(x: f32) -> f32 {
    x.exp()
}
extern "C" fn ln32(x: f32) -> f32 {
    x.ln()
}
extern "C" fn ln_1p32(x: f32) -> f32 {
    x.ln_1p()
}
extern "C" fn exp_m132(x: f32) -> f32 {
    x.exp_m1()
}
extern "C" fn tanh32(x: f32) -> f32 {
    x.tanh()
}
extern "C" fn sin32(x: f32) -> f32 {
    x.sin()
}
extern "C" fn cos32(x: f32) -> f32 {
    x.cos()
}
extern "C" fn atan32(x: f32) -> f32 {
    x.atan()
}
extern "C" fn acos32(x: f32) -> f32 {
    x.acos()
}

/// A real to an int power, as the interpreter computes it.
extern "C" fn powi(x: f64, n: i64) -> f64 {
    crate::ir::arith::powi(x, n)
}
/// An int to a non-negative int power, wrapping (the kernel checks the sign first).
extern "C" fn ipow(x: i64, n: i64) -> i64 {
    crate::ir::arith::ipow(x, n)
}

/// The symbol of the f32 host function for an elementary function (glibc's f32 versions,
/// within one f32 ulp).
pub fn name32(f: Func) -> Option<&'static str> {
    Some(match f {
        Func::Exp => "lossc_exp32",
        Func::Log => "lossc_log32",
        Func::Log1p => "lossc_log1p32",
        Func::Expm1 => "lossc_expm132",
        Func::Tanh => "lossc_tanh32",
        Func::Sin => "lossc_sin32",
        Func::Cos => "lossc_cos32",
        Func::Atan => "lossc_atan32",
        Func::Acos => "lossc_acos32",
        _ => return None,
    })
}

/// The symbol of the host function for an elementary function.
pub fn name(f: Func) -> Option<&'static str> {
    Some(match f {
        Func::Exp => "lossc_exp",
        Func::Log => "lossc_log",
        Func::Log1p => "lossc_log1p",
        Func::Expm1 => "lossc_expm1",
        Func::Tanh => "lossc_tanh",
        Func::Sin => "lossc_sin",
        Func::Cos => "lossc_cos",
        Func::Atan => "lossc_atan",
        Func::Acos => "lossc_acos",
        _ => return None,
    })
}

/// Every host symbol and its address, for the JIT's symbol table.
pub fn symbols() -> Vec<(&'static str, *const u8)> {
    vec![
        ("lossc_exp", exp as *const u8),
        ("lossc_log", ln as *const u8),
        ("lossc_log1p", ln_1p as *const u8),
        ("lossc_expm1", exp_m1 as *const u8),
        ("lossc_tanh", tanh as *const u8),
        ("lossc_sin", sin as *const u8),
        ("lossc_cos", cos as *const u8),
        ("lossc_atan", atan as *const u8),
        ("lossc_acos", acos as *const u8),
        ("lossc_exp32", exp32 as *const u8),
        ("lossc_log32", ln32 as *const u8),
        ("lossc_log1p32", ln_1p32 as *const u8),
        ("lossc_expm132", exp_m132 as *const u8),
        ("lossc_tanh32", tanh32 as *const u8),
        ("lossc_sin32", sin32 as *const u8),
        ("lossc_cos32", cos32 as *const u8),
        ("lossc_atan32", atan32 as *const u8),
        ("lossc_acos32", acos32 as *const u8),
        ("lossc_pow", pow as *const u8),
        ("lossc_powi", powi as *const u8),
        ("lossc_ipow", ipow as *const u8),
    ]
}
