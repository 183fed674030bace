//! Local sockets only their owner can use: the admin API's and the keepers'.
//!
//! A socket is bound inside a fresh directory of mode 0700, made 0600 there, and only then
//! renamed to its path, so it is never reachable by anyone else, whatever the umask. What is
//! at the path already is replaced only if it is a socket ([`Replace`] says whether a live
//! one may be); anything else (a file, a directory, a symlink) is an error and is left alone. Each connection is then checked by its peer's credentials
//! (`SO_PEERCRED`): only root and this process's own uid are served.

use std::io::{Error, ErrorKind, Result};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Which socket already at the path a new one replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    /// Only one nobody answers on (left by a killed process): a second server is an error.
    DeadSocket,
    /// Any socket: a keeper started for a mount point mounted again takes the path over from
    /// the previous mount's keeper, which is on its way out.
    AnySocket,
}

/// Binds a listening socket at `path` that only its owner may connect to.
pub fn bind_private(path: &Path, replace: Replace) -> Result<UnixListener> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            if replace == Replace::DeadSocket && UnixStream::connect(path).is_ok() {
                return Err(Error::new(
                    ErrorKind::AddrInUse,
                    format!("{}: a server answers on this socket already", path.display()),
                ));
            }
        }
        Ok(_) => {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{}: exists and is not a socket; not replaced", path.display()),
            ))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let name = path.file_name().ok_or_else(|| {
        Error::new(ErrorKind::InvalidInput, format!("{}: no file name", path.display()))
    })?;
    // A directory nobody else can enter: made by this mkdir (it fails if the name exists).
    let private = crate::scratch::unique_sibling(&parent.join(".bind"));
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let at = private.join(name);
    let bound = (|| -> Result<UnixListener> {
        let listener = UnixListener::bind(&at)?;
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&at, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&at);
    let _ = std::fs::remove_dir(&private);
    let listener = bound?;
    Ok(listener)
}

/// Whether the peer of `stream` may be served: root, or this process's own uid.
pub fn peer_trusted(stream: &impl std::os::fd::AsFd) -> bool {
    match rustix::net::sockopt::socket_peercred(stream) {
        Ok(cred) => {
            let uid = cred.uid.as_raw();
            uid == 0 || uid == rustix::process::geteuid().as_raw()
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_socket_is_private_and_replaces_only_a_dead_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/api.sock");
        let l = bind_private(&path, Replace::DeadSocket).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777, 0o700);
        let c = UnixStream::connect(&path).unwrap();
        let (s, _) = l.accept().unwrap();
        assert!(peer_trusted(&s) && peer_trusted(&c), "our own uid is trusted");
        // A live socket is not taken over.
        let err = bind_private(&path, Replace::DeadSocket).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AddrInUse, "{err}");
        // Unless asked to.
        let l2 = bind_private(&path, Replace::AnySocket).unwrap();
        // A dead one is.
        drop((l, s, c, l2));
        let _l = bind_private(&path, Replace::DeadSocket).unwrap();
        // Anything else is left alone.
        let file = dir.path().join("file");
        std::fs::write(&file, b"keep me").unwrap();
        assert_eq!(
            bind_private(&file, Replace::AnySocket).unwrap_err().kind(),
            ErrorKind::AlreadyExists
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        // No private directory is left behind.
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("api.sock")]);
    }
}
