//! The Naiad daemon: lazy mounts (shared by the foreground `naiad mount` and the long-running
//! `naiad daemon`), their bookkeeping, and the admin API (JSON over a unix socket, Prometheus
//! text at `/metrics`).

pub mod api;
pub mod client;
mod error;
pub mod metrics;
pub mod mounts;
pub mod state;

pub use error::{DaemonError, Result};
