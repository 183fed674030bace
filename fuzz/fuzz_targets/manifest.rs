//! cargo-fuzz target `manifest`: the harness is [`naiad_fuzz::manifest`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| naiad_fuzz::manifest::run(data));
