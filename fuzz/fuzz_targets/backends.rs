//! Generated well-typed programs -> the interpreter and the JIT on the same call; they must
//! agree (values and gradients within a tolerance, or errors of the same kind).
//!
//! The fuzzer's bytes drive the generator the tests use (`tests/gen/mod.rs`, through its
//! [`gen::Bytes`] source): loss source text and the call's inputs. With `LOSSC_FUZZ_DUMP=DIR`
//! set, each input is written as a `.loss` file and a reference-case JSON naming it (the form
//! kept in `tests/fuzz-regressions/backends/`).
#![no_main]

#[path = "../../tests/hostile/harness.rs"]
mod harness;

#[path = "../../tests/gen/mod.rs"]
mod gen;

use libfuzzer_sys::fuzz_target;
use lossc::runtime::{Array, Call, DType, Data, Library, ParamValue};

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
    let gen::Case {
        source: src,
        call,
    } = gen::generate(&mut gen::Bytes::new(data));
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
