//! Naiad storage: where blob bytes come from ([`backend`], [`blob_store`]), where a blob's
//! chunks come from ([`source`]), fetching and verifying them ([`fetch`]), the lazy chunk
//! cache with its presence maps ([`cache`]), the seam every mount mode reads through
//! ([`lazy::LazyBlob`]), and the whole-view cache of local mounts ([`view_cache`]).
//!
//! Every chunk that leaves this crate has been checked against its digest; a chunk that
//! fails is an error naming the blob and offset, never data.

pub mod backend;
pub mod blob_store;
pub mod cache;
pub mod credentials;
mod error;
pub mod fetch;
pub mod lazy;
pub mod source;
pub mod verify;
pub mod view_cache;

pub use error::{Result, StorageError};
