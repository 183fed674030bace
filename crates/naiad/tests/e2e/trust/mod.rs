//! The trust boundary between images: hostile images, and what one can never do to another
//! that shares a node's daemon and cache.
mod api;
mod bootstrap;
mod cache;
mod exposure;
mod network;
mod sockets;
