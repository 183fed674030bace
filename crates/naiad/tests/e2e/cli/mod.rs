//! The `naiad` command on images: build, inspect, check, unpack, local mounts, and hostile
//! input to all of them.
mod bad_input;
mod build;
mod fidelity;
mod inspect;
mod mount;
