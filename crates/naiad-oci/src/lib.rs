//! Naiad and OCI: image references, the two transports (a registry, an OCI image layout),
//! the Naiad image as an OCI artifact, and the converter from OCI images to Naiad images.
//!
//! A Naiad image in OCI terms (see `docs/oci.md`):
//! * layers `0..n-1`: the data blobs (media type [`media::NAIAD_BLOB`]);
//! * layer `n`: the bootstrap, wrapped in a one-file gzip tar so generic tools copy it;
//! * the config: the source image's config, with `rootfs.diff_ids` rewritten to the new
//!   layers so that runtimes that check them agree;
//! * annotations: the source digest, the format version and the build options.

pub mod bootstrap_layer;
pub mod check;
pub mod convert;
mod error;
pub mod layout;
pub mod manifest;
pub mod media;
pub mod reference;
pub mod registry;
pub mod store;

pub use error::{OciError, Result};
