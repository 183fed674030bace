use std::path::Path;

/// What the snapshotter and `naiad pull` report; each maps to the gRPC code containerd acts on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The request does not fit the state (a parent that is not committed, a child left...).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Internal(String),
    #[error("{path}: {cause}")]
    Io {
        path: String,
        #[source]
        cause: std::io::Error,
    },
    #[error("snapshot database {path}: {detail}")]
    Db { path: String, detail: String },
    #[error("the Naiad daemon: {0}")]
    Daemon(String),
    #[error("image {image}: {cause}")]
    Image {
        image: String,
        #[source]
        cause: Box<naiad_oci::OciError>,
    },
    #[error("containerd: {0}")]
    Containerd(Box<tonic::Status>),
    #[error("containerd at {socket}: {cause}")]
    Connect { socket: String, cause: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn db(path: &Path, e: impl std::fmt::Display) -> Error {
        Error::Db { path: path.display().to_string(), detail: e.to_string() }
    }

    pub fn image(image: &str) -> impl Fn(naiad_oci::OciError) -> Error + Copy + '_ {
        move |cause| Error::Image { image: image.to_string(), cause: Box::new(cause) }
    }

    pub fn io(path: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
        move |cause| Error::Io { path: path.to_string(), cause }
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Error {
        Error::Containerd(Box::new(s))
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        match e {
            Error::NotFound(_) => tonic::Status::not_found(e.to_string()),
            Error::AlreadyExists(_) => tonic::Status::already_exists(e.to_string()),
            Error::Invalid(_) => tonic::Status::failed_precondition(e.to_string()),
            Error::Containerd(s) => *s,
            Error::Image { .. } | Error::Daemon(_) => tonic::Status::unavailable(e.to_string()),
            _ => tonic::Status::internal(e.to_string()),
        }
    }
}
