//! Media types and annotation keys.

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const OCI_LAYER_NONDIST_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const OCI_LAYER_NONDIST_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const DOCKER_FOREIGN_GZIP: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// A Naiad data blob.
pub const NAIAD_BLOB: &str = "application/vnd.naiad.blob.v1";
/// The Naiad bootstrap: an ordinary gzip layer holding one file, so every tool copies it.
pub const NAIAD_BOOTSTRAP: &str = OCI_LAYER_GZIP;

/// Annotation on the bootstrap layer.
pub const ANN_BOOTSTRAP: &str = "dev.naiad.bootstrap";
/// Annotation on a data blob layer.
pub const ANN_BLOB: &str = "dev.naiad.blob";
/// Manifest annotation: the source manifest's digest.
pub const ANN_SOURCE: &str = "dev.naiad.source-digest";
/// Manifest annotation: the Naiad format version.
pub const ANN_VERSION: &str = "dev.naiad.format-version";
/// Manifest annotation: the build options.
pub const ANN_OPTIONS: &str = "dev.naiad.options";
/// Index entry annotation / platform OS feature marking a Naiad manifest in a merged index.
pub const NAIAD_OS_FEATURE: &str = "naiad.image.v1";
/// OCI layout tag annotation.
pub const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Whether `mt` is a manifest list / index.
pub fn is_index(mt: &str) -> bool {
    mt == OCI_INDEX || mt == DOCKER_LIST
}

/// Whether `mt` is a single-image manifest.
pub fn is_manifest(mt: &str) -> bool {
    mt == OCI_MANIFEST || mt == DOCKER_MANIFEST
}

/// Whether `mt` is a layer media type the converter reads (compression is told from the
/// bytes, so gzip and zstd layers under either name are fine).
pub fn is_layer(mt: &str) -> bool {
    matches!(
        mt,
        OCI_LAYER_TAR
            | OCI_LAYER_GZIP
            | OCI_LAYER_ZSTD
            | DOCKER_LAYER_GZIP
            | OCI_LAYER_NONDIST_TAR
            | OCI_LAYER_NONDIST_GZIP
            | DOCKER_FOREIGN_GZIP
    )
}
