//! The Naiad read path: reading files out of an image ([`unpack`]), verifying a whole image
//! ([`check`]), and mounting a bootstrap with the kernel's EROFS ([`kernel`]).

pub mod blob_view_fs;
pub mod check;
pub mod compare;
mod devices;
mod error;
pub mod fanotify;
pub mod fanotify_keeper;
pub mod fuse_keep;
pub mod fuse_ring;
pub mod image_fs;
pub mod kernel;
pub mod lazy;
pub mod prefetch;
pub mod unpack;

pub use error::{FsError, Result};
