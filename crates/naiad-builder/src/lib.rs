//! The Naiad builder: turns a directory, a tar layer or several layers into a bootstrap and
//! blobs.
//!
//! The data goes through three stages:
//! 1. a *source* (`dir_source`, `tar_source`) walks its input in a fixed order, records every
//!    entry in a [`tree_builder::TreeBuilder`] (which applies OCI whiteouts and rejects hostile
//!    paths), and cuts regular files into chunks;
//! 2. the [`chunk_pipeline`] hashes chunks in parallel, deduplicates them (within the image and
//!    against a [`chunk_dict::ChunkDict`]), packs small chunks into shared frames and compresses
//!    frames in parallel, while the source goes on reading;
//! 3. [`image::build`] seals the blobs and writes the bootstrap.

pub mod chunk_dict;
pub mod chunk_pipeline;
pub mod dir_source;
mod error;
pub mod image;
pub mod merge;
pub mod options;
pub mod tar_reader;
pub mod tar_source;
mod temp_path;
pub mod tree_builder;

pub use error::{BuildError, Result};
pub use image::{build, BuildSummary, Source};
pub use options::BuildOptions;
