//! Fuzzing harnesses: one function per target, taking the fuzzer's bytes.
//!
//! The cargo-fuzz targets in `fuzz/` are one-line wrappers around these, and
//! `tests/corpus.rs` replays the committed corpus and every regression input through the same
//! functions, so a plain `cargo nextest run` is the short fuzzing run CI keeps.
//!
//! What every harness promises: the code under test returns a typed error for bad input and
//! never panics, loops for ever or allocates without bound. A harness panics (a finding) only
//! when the library panics or when one of the cross-checks it states fails. Work that a hostile
//! input can make large *by design* (decompressing frames, looking up chunk indexes) is capped
//! per input so the fuzzer keeps its pace; the caps are named below each module.

pub mod blob_toc;
pub mod bootstrap;
pub mod manifest;
pub mod tar_layer;

/// A harness: takes the fuzzer's bytes, panics only on a finding.
pub type Harness = fn(&[u8]);

/// The fuzz targets, by the name of their `fuzz/fuzz_targets/*.rs` file and corpus directory.
pub const TARGETS: &[(&str, Harness)] = &[
    ("bootstrap", bootstrap::run),
    ("blob_toc", blob_toc::run),
    ("tar_layer", tar_layer::run),
    ("manifest", manifest::run),
];
