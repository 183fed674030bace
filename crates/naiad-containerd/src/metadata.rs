//! containerd's request metadata: the namespace and lease headers.

use tonic::metadata::errors::InvalidMetadataValue;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The gRPC metadata key that carries the containerd namespace of a request. containerd's
/// namespaced services answer `FailedPrecondition` ("namespace is required") without it.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";

/// The gRPC metadata key that carries the lease a request's new resources are added to.
pub const LEASE_HEADER: &str = "containerd-lease";

/// Wraps `message` in a request that carries `namespace` in the [`NAMESPACE_HEADER`].
///
/// Works for streaming requests too (pass the stream as `message`). Fails only if `namespace`
/// is not a valid metadata value (containerd's own rules are stricter: `[a-zA-Z0-9._-]`).
pub fn with_namespace<T>(message: T, namespace: &str) -> Result<Request<T>, InvalidMetadataValue> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(NAMESPACE_HEADER, namespace.parse()?);
    Ok(request)
}

/// Like [`with_namespace`], and also carries `lease` in the [`LEASE_HEADER`], so that what the
/// request creates (content, snapshots, ...) is held by that lease.
pub fn with_namespace_and_lease<T>(
    message: T,
    namespace: &str,
    lease: &str,
) -> Result<Request<T>, InvalidMetadataValue> {
    let mut request = with_namespace(message, namespace)?;
    request.metadata_mut().insert(LEASE_HEADER, lease.parse()?);
    Ok(request)
}

/// The containerd namespace a request carries, if any and if it is valid ASCII; what a server
/// (e.g. a proxy snapshotter) uses to learn the caller's namespace.
pub fn namespace_of<T>(request: &Request<T>) -> Option<&str> {
    request.metadata().get(NAMESPACE_HEADER)?.to_str().ok()
}

/// A client interceptor that adds a namespace (and optionally a lease) to every request that
/// does not already carry one, for use with `XxxClient::with_interceptor(channel, ...)`.
#[derive(Debug, Clone)]
pub struct NamespaceInterceptor {
    namespace: MetadataValue<Ascii>,
    lease: Option<MetadataValue<Ascii>>,
}

impl NamespaceInterceptor {
    /// An interceptor that adds `namespace`; fails only if it is not a valid metadata value.
    pub fn new(namespace: &str) -> Result<Self, InvalidMetadataValue> {
        Ok(Self { namespace: namespace.parse()?, lease: None })
    }

    /// The same interceptor, also adding `lease` to every request.
    pub fn with_lease(self, lease: &str) -> Result<Self, InvalidMetadataValue> {
        Ok(Self { lease: Some(lease.parse()?), ..self })
    }
}

impl Interceptor for NamespaceInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let metadata = request.metadata_mut();
        if !metadata.contains_key(NAMESPACE_HEADER) {
            metadata.insert(NAMESPACE_HEADER, self.namespace.clone());
        }
        if let Some(lease) = &self.lease {
            if !metadata.contains_key(LEASE_HEADER) {
                metadata.insert(LEASE_HEADER, lease.clone());
            }
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_set_and_read_back() {
        let request = with_namespace_and_lease(7u32, "naiad", "lease-1").unwrap();
        assert_eq!(namespace_of(&request), Some("naiad"));
        assert_eq!(request.metadata().get(LEASE_HEADER).unwrap(), "lease-1");
        assert!(with_namespace((), "bad\nname").is_err());
    }

    #[test]
    fn interceptor_keeps_an_explicit_namespace() {
        let mut interceptor =
            NamespaceInterceptor::new("default").unwrap().with_lease("l").unwrap();
        let out = interceptor.call(with_namespace((), "mine").unwrap()).unwrap();
        assert_eq!(namespace_of(&out), Some("mine"));
        assert_eq!(out.metadata().get(LEASE_HEADER).unwrap(), "l");
        let out = interceptor.call(Request::new(())).unwrap();
        assert_eq!(namespace_of(&out), Some("default"));
    }
}
