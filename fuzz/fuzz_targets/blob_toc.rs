//! cargo-fuzz target `blob_toc`: the harness is [`naiad_fuzz::blob_toc`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| naiad_fuzz::blob_toc::run(data));
