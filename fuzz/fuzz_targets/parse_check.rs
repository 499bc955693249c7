//! Source text -> parse, check, and (for what checks) gradients and compiled kernels.
#![no_main]

#[path = "../../tests/hostile/harness.rs"]
mod harness;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        harness::front_end(text);
    }
});
