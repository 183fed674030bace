//! End-to-end tests of the `naiad` command and the crates behind it, against real
//! components started on 127.0.0.1 (a registry, containerd, an S3 server) and the kernel's
//! EROFS, FUSE and fanotify. One test binary, modules by area:
//!
//! * [`cli`]: build, inspect, check, unpack and local mounts of images; hostile input.
//! * [`oci`]: conversion of OCI images, registries and their authentication.
//! * [`lazy`]: lazy mounts in every mode, from a registry, local blobs and S3.
//! * [`containerd`]: the remote snapshotter and `naiad pull` with a private containerd.
//! * [`faults`]: a registry that fails on demand, a full disk, a daemon killed mid-read.
//! * [`trust`]: hostile images, labels and peers: what one of them can never do to another.
//! * [`support`]: what the tests share (servers, trees, snapshots, the skip rule).
//!
//! Tests that need root or a kernel feature skip, printing why, where it is missing
//! ([`support::skip_unless`]); `cargo test` as an ordinary user runs the rest.

#[macro_use]
mod support;

mod cli;
mod containerd;
mod faults;
mod lazy;
mod oci;
mod trust;
