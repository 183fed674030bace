//! The Naiad read path.
//!
//! * [`mode`]: lazy mounts, one module per mode (fanotify, kernel, fuse), all reading
//!   through the storage crate's `LazyBlob`; [`prefetch`] fetches ahead of them.
//! * [`fanotify`], [`fuse`]: what the modes need of the kernel's fanotify and FUSE (system
//!   calls and wire structures, the FUSE server, FUSE over io_uring, adopted connections).
//! * [`keeper`]: the processes that hold a mount's fanotify group or FUSE connection across
//!   a restart of its server.
//! * [`erofs_mount`]: mounting a bootstrap with the kernel's EROFS; [`devices`] plans which
//!   files a lazy mount gives it as devices.
//! * [`socket`]: local sockets only their owner may use (the keepers', the admin API's).
//! * [`unpack`], [`check`], [`compare`]: reading a whole image out, verifying it, comparing
//!   two.
#![deny(unsafe_code)]

pub mod check;
pub mod compare;
mod devices;
pub mod erofs_mount;
mod error;
pub mod fanotify;
pub mod fuse;
pub mod keeper;
pub mod mode;
pub mod prefetch;
pub mod scratch;
pub mod socket;
pub mod unpack;

pub use error::{FsError, Result};
