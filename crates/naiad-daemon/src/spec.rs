//! What a lazy mount is asked to be: [`MountSpec`], as the CLI builds it, the admin API
//! takes it and the daemon's state file keeps it.

pub use naiad_fs::mode::Mode;
use naiad_storage::backend::S3Location;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What to mount and how.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MountSpec {
    /// An image reference (`docker://`, `oci:`) or a bootstrap path.
    pub source: String,
    pub mountpoint: PathBuf,
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// Blob directories, for a bootstrap source.
    #[serde(default)]
    pub blob_dirs: Vec<PathBuf>,
    /// S3-compatible storage holding the blobs, for a bootstrap source (instead of blob
    /// directories). No credentials: the serving process (the foreground `naiad mount` or
    /// the daemon) takes them from its own environment or config file, so a spec sent over
    /// the API, listed or saved never holds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Location>,
    #[serde(default)]
    pub insecure: bool,
    /// Seconds per registry or S3 request.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Fetch the prefetch list ahead of reads.
    #[serde(default = "yes")]
    pub prefetch: bool,
    /// Then fetch everything in the background.
    #[serde(default)]
    pub prefetch_all: bool,
    /// Background prefetch limit in bytes per second.
    #[serde(default)]
    pub prefetch_rate: Option<u64>,
    /// Registry mirrors (`host[:port]`, same repository), tried in order before the origin.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// The bootstrap the kernel mounts, kept in the runtime directory: the daemon sets it
    /// when it mounts (an image's fetched bootstrap, or a copy of the bootstrap file named),
    /// so that bringing an image's mount back after a crash needs no registry, and removes the
    /// file with the last mount using it. A request may not set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<PathBuf>,
    /// Largest merged backend request, bytes (default 4 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_merge_max: Option<u64>,
    /// Backend requests at once, per mount (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch_concurrency: Option<usize>,
    /// Mount even if the mount point is not an empty directory (what is there is hidden
    /// while mounted).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Let setuid/setgid bits take effect (default: `nosuid`; a container's root filesystem
    /// needs them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_setuid: bool,
    /// Let device nodes open their devices (default: `nodev`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_devices: bool,
}

impl MountSpec {
    /// What the mount lets its files do beyond being read.
    pub fn exposure(&self) -> naiad_fs::erofs_mount::Exposure {
        naiad_fs::erofs_mount::Exposure { setuid: self.allow_setuid, devices: self.allow_devices }
    }
}

impl MountSpec {
    /// `source` at `mountpoint` with every other field at its default (what an API request
    /// naming only these two gets).
    pub fn new(source: impl Into<String>, mountpoint: impl Into<PathBuf>) -> MountSpec {
        MountSpec {
            source: source.into(),
            mountpoint: mountpoint.into(),
            mode: default_mode(),
            blob_dirs: Vec::new(),
            s3: None,
            insecure: false,
            timeout_secs: default_timeout(),
            prefetch: yes(),
            prefetch_all: false,
            prefetch_rate: None,
            mirrors: Vec::new(),
            bootstrap: None,
            fetch_merge_max: None,
            fetch_concurrency: None,
            force: false,
            allow_setuid: false,
            allow_devices: false,
        }
    }
}

fn default_mode() -> Mode {
    Mode::Auto
}
fn default_timeout() -> u64 {
    10
}
fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_has_the_defaults_an_api_request_gets() {
        let parsed: MountSpec = serde_json::from_value(
            serde_json::json!({ "source": "docker://h/r:t", "mountpoint": "/m" }),
        )
        .unwrap();
        let made = MountSpec::new("docker://h/r:t", "/m");
        assert_eq!(serde_json::to_value(&made).unwrap(), serde_json::to_value(&parsed).unwrap());
        assert_eq!((made.mode, made.timeout_secs, made.prefetch), (Mode::Auto, 10, true));
    }
}
