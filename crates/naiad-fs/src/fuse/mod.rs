//! FUSE as the kernel and fuse modes use it: the server that mounts and serves a filesystem
//! ([`server`]), serving a connection adopted from a keeper ([`adopt`]), FUSE over io_uring
//! ([`ring`]), and the kernel's structures Naiad reads and writes itself ([`abi`]).

pub mod abi;
pub mod adopt;
pub mod ring;
pub mod server;
