//! The Naiad daemon: lazy mounts (shared by the foreground `naiad mount` and the long-running
//! `naiad daemon`) and their bookkeeping, and the admin API (JSON over a unix socket,
//! Prometheus text at `/metrics`).
//!
//! [`spec`] is what a mount is asked to be; [`source`] resolves it to a bootstrap and a
//! backend; [`mount`] mounts it in its mode; [`table`] keeps the active mounts, saved through
//! [`state`]; [`api`] serves them, [`client`] talks to it.

pub mod api;
pub mod client;
mod error;
pub mod metrics;
pub mod mount;
mod source;
pub mod spec;
pub mod state;
pub mod table;

pub use error::{DaemonError, Result};
