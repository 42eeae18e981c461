//! Fuzz target: the PII transform never panics on any response body and never emits a dropped
//! or encrypted value in clear (checks in `src/transform.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    spgate_fuzz::transform::run(data);
});
