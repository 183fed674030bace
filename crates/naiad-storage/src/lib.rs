//! Naiad storage: finding and reading blobs, verifying chunks, and the cache of blob
//! *uncompressed views* that the kernel mounts as EROFS devices.
//!
//! Every chunk that leaves this crate has been checked against its digest; a chunk that
//! fails is an error naming the blob and offset, never data.

pub mod backend;
pub mod blob_store;
pub mod cache_check;
pub mod chunk_cache;
pub mod credentials;
mod error;
pub mod fetcher;
pub mod verify;
pub mod view_cache;

pub use error::{Result, StorageError};
