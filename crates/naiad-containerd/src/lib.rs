//! Naiad in containerd: the remote snapshotter ([`snapshotter`], served by [`service`], its
//! snapshots kept in [`store`]) that mounts Naiad images lazily through a Naiad daemon and
//! keeps every other image as containerd's overlayfs snapshotter does, and `naiad pull`
//! ([`pull`]), which pulls an image with the labels the snapshotter needs.
//!
//! Underneath, containerd's gRPC API: prost messages and tonic clients/servers generated
//! at build time (protox, no `protoc`) from protos under `proto/` that match containerd v1.6's
//! wire format (package, service, RPC and message names and field numbers are containerd's),
//! plus helpers to talk gRPC over unix sockets and to set containerd's request metadata.
//!
//! The generated code lives under [`api`]:
//! - [`api::snapshots`] has `snapshots_client::SnapshotsClient`, `snapshots_server::{Snapshots,
//!   SnapshotsServer}` (what a proxy snapshotter plugin serves);
//! - [`api::content`] has `content_client::ContentClient` (and a server);
//! - [`api::images`] has `images_client::ImagesClient`;
//! - [`api::leases`] has `leases_client::LeasesClient`;
//! - [`api::diff`] has `diff_client::DiffClient`;
//! - [`api::types`] has `Mount`, `Descriptor`.
//!
//! Well-known types (`Timestamp`, `Empty`, `FieldMask`, `Any`) are [`prost_types`]'s (and `()`
//! for `google.protobuf.Empty`); [`prost_types`] is re-exported for convenience.
//!
//! containerd's namespaced services (content, images, leases, snapshots) refuse requests that
//! lack the `containerd-namespace` metadata header: see [`with_namespace`] and
//! [`NamespaceInterceptor`]. Content written under a lease (`containerd-lease` header) is kept
//! from garbage collection until the lease is deleted.

mod error;
mod metadata;
pub mod pull;
pub mod service;
pub mod snapshotter;
pub mod store;
mod transport;

pub use error::{Error, Result};

pub use metadata::{
    namespace_of, with_namespace, with_namespace_and_lease, NamespaceInterceptor, LEASE_HEADER,
    NAMESPACE_HEADER,
};
pub use transport::{bind_unix, connect, serve_unix, SOCKET_MODE};

pub use prost_types;

/// The generated code, nested by protobuf package, as prost's cross-package references
/// (`super::super::...`) expect.
mod generated {
    pub mod containerd {
        pub mod types {
            tonic::include_proto!("containerd.types");
        }
        pub mod services {
            pub mod snapshots {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.snapshots.v1");
                }
            }
            pub mod content {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.content.v1");
                }
            }
            pub mod images {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.images.v1");
                }
            }
            pub mod leases {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.leases.v1");
                }
            }
            pub mod diff {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.diff.v1");
                }
            }
        }
    }
}

/// containerd v1.6 API, one module per protobuf package.
pub mod api {
    /// `containerd.services.content.v1`: the content store (`Write` is a bidirectional stream).
    pub use crate::generated::containerd::services::content::v1 as content;
    /// `containerd.services.diff.v1`: apply a layer to mounts, or diff two mounts.
    pub use crate::generated::containerd::services::diff::v1 as diff;
    /// `containerd.services.images.v1`: image records (name -> target descriptor).
    pub use crate::generated::containerd::services::images::v1 as images;
    /// `containerd.services.leases.v1`: leases that keep resources from garbage collection.
    pub use crate::generated::containerd::services::leases::v1 as leases;
    /// `containerd.services.snapshots.v1`: the `Snapshots` service, served by containerd
    /// (with `snapshotter` naming the backend) and by proxy snapshotter plugins.
    pub use crate::generated::containerd::services::snapshots::v1 as snapshots;
    /// `containerd.types`: `Mount` and `Descriptor`.
    pub use crate::generated::containerd::types;
}
