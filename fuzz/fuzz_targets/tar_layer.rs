//! cargo-fuzz target `tar_layer`: the harness is [`naiad_fuzz::tar_layer`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| naiad_fuzz::tar_layer::run(data));
