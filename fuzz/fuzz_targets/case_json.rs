//! Reference-case JSON bytes -> load, build the call, run it on both backends; they must end
//! the same way (values of the same shape, or errors of the same kind).
#![no_main]

#[path = "../../tests/hostile/harness.rs"]
mod harness;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = harness::case_json(text) {
            panic!("{e}");
        }
    }
});
