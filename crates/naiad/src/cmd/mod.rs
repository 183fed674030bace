//! One module per subcommand.

pub mod build;
pub mod cache;
pub mod check;
pub mod convert;
pub mod ctl;
pub mod daemon;
pub mod inspect;
pub mod mount;
pub mod pull;
pub mod snapshotter;
pub mod umount;
pub mod unpack;
