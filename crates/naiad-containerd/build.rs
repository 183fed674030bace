//! Compiles the containerd API protos under `proto/` with protox (a pure-Rust protobuf
//! compiler, so no `protoc` binary is needed) and generates prost messages plus tonic
//! clients and servers from the resulting descriptor set. Well-known types
//! (`google.protobuf.*`) are bundled by protox and map to `prost_types`.

use std::path::{Path, PathBuf};

/// The proto files to compile, relative to `proto/` (the import root).
const PROTO_FILES: &[&str] = &[
    "containerd/types/mount.proto",
    "containerd/types/descriptor.proto",
    "containerd/services/snapshots/v1/snapshots.proto",
    "containerd/services/content/v1/content.proto",
    "containerd/services/images/v1/images.proto",
    "containerd/services/leases/v1/leases.proto",
    "containerd/services/diff/v1/diff.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let files: Vec<PathBuf> = PROTO_FILES.iter().map(|f| root.join(f)).collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let descriptors = protox::compile(&files, [Path::new(&root)])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Clients are built on a `Channel` from `naiad_containerd::connect`, so the
        // generated `connect(uri)` constructors (TCP only) are left out.
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
