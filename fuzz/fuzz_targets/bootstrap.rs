//! cargo-fuzz target `bootstrap`: the harness is [`naiad_fuzz::bootstrap`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| naiad_fuzz::bootstrap::run(data));
