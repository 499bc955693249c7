//! `.npy` bytes -> read, print, round trip, and run losses on the array in both backends.
#![no_main]

#[path = "../../tests/hostile/harness.rs"]
mod harness;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = harness::npy(data) {
        panic!("{e}");
    }
});
