//! The configuration file: `/etc/naiad/config.toml` unless `--config` names another.
//! Every key is optional; a flag given on the command line wins over the file, and the file
//! over the built-in default. Unknown keys are errors, so a typo does not pass silently.
//!
//! ```toml
//! cache_dir = "/var/lib/naiad/cache"
//! runtime_dir = "/run/naiad"
//! api = "/run/naiad/api.sock"
//! cache_limit = "20G"          # naiad daemon: evict unused blobs beyond this
//! timeout_secs = 10            # per registry request
//! fetch_merge_max = "4M"       # largest merged backend request of a lazy mount
//! fetch_concurrency = 8        # backend requests at once, per lazy mount
//!
//! [registries."127.0.0.1:5000"]
//! insecure = true              # plain HTTP allowed
//! mirrors = ["127.0.0.1:5001"] # tried in order before this registry
//! username = "..."             # credentials for it (basic, or a token flow started with
//! password = "..."             #   them); else the docker config's; keep such a file 0600
//!
//! [s3]                         # blobs of bootstrap mounts given no --blob-dir
//! endpoint = "http://127.0.0.1:9000"  # none: AWS (https://s3.REGION.amazonaws.com)
//! bucket = "images"
//! prefix = "naiad/blobs"       # a blob is the object PREFIX/SHA256HEX
//! region = "us-east-1"         # the default
//! insecure = true              # plain HTTP allowed to the endpoint
//! access_key_id = "..."        # used only when AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
//! secret_access_key = "..."    #   are not set; keep such a file private (mode 0600)
//! ```
//! Registry credentials: `username`/`password` of the registry's table here, else the docker
//! config (`~/.docker/config.json`). S3 credentials: the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`), else `[s3]` here, else none (unsigned requests). They are read by
//! the process that serves a mount (the foreground `naiad mount`, or `naiad daemon`), never
//! sent over the admin API.

use anyhow::{bail, Context, Result};
use naiad_storage::backend::{S3Credentials, S3Location};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the configuration is read from by default.
pub const DEFAULT_CONFIG: &str = "/etc/naiad/config.toml";
/// Default directory of the blob cache.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/naiad/cache";
/// Default directory for runtime state (keeper sockets, kept bootstraps, blob-view mounts).
pub const DEFAULT_RUNTIME_DIR: &str = "/run/naiad";
/// Default admin API socket of `naiad daemon`.
pub const DEFAULT_API_SOCKET: &str = "/run/naiad/api.sock";
/// Default seconds per registry or S3 request.
pub const DEFAULT_TIMEOUT_SECS: u64 = 10;

/// The configuration file's contents.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub cache_dir: Option<PathBuf>,
    pub runtime_dir: Option<PathBuf>,
    pub api: Option<PathBuf>,
    pub cache_limit: Option<String>,
    pub timeout_secs: Option<u64>,
    pub fetch_merge_max: Option<String>,
    pub fetch_concurrency: Option<usize>,
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryConfig>,
    /// S3-compatible storage of blobs.
    #[serde(default)]
    pub s3: S3Config,
}

/// Settings of one registry (`host[:port]`).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub mirrors: Vec<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("RegistryConfig")
            .field("insecure", &self.insecure)
            .field("mirrors", &self.mirrors)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The `[s3]` table: where bootstrap mounts without `--blob-dir` find their blobs, and
/// credentials for when the environment has none. `Debug` never shows the secret.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub region: Option<String>,
    #[serde(default)]
    pub insecure: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("insecure", &self.insecure)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// S3 settings given on the command line (`naiad mount`, `naiad ctl mount`).
#[derive(clap::Args, Debug, Default)]
pub struct S3Args {
    /// S3-compatible storage holding the blobs of a bootstrap SOURCE (each blob is the object
    /// PREFIX/SHA256HEX): the endpoint, e.g. http://127.0.0.1:9000 (plain HTTP needs
    /// --insecure) [default: config [s3] endpoint, else AWS S3 in the region]
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// The bucket; a bootstrap SOURCE without --blob-dir then mounts lazily from S3
    /// [default: config [s3] bucket]
    #[arg(long, value_name = "BUCKET")]
    pub s3_bucket: Option<String>,
    /// Key prefix of the blobs in the bucket [default: config [s3] prefix, else none]
    #[arg(long, value_name = "PREFIX")]
    pub s3_prefix: Option<String>,
    /// Region the requests are signed for [default: config [s3] region, else us-east-1]
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,
}

impl S3Args {
    fn any(&self) -> bool {
        self.s3_endpoint.is_some()
            || self.s3_bucket.is_some()
            || self.s3_prefix.is_some()
            || self.s3_region.is_some()
    }
}

impl Config {
    /// The cache directory: the flag, else the file's, else the default.
    pub fn cache_dir(&self, flag: Option<&Path>) -> PathBuf {
        pick(flag, self.cache_dir.as_deref(), DEFAULT_CACHE_DIR)
    }

    /// The runtime directory: the flag, else the file's, else the default.
    pub fn runtime_dir(&self, flag: Option<&Path>) -> PathBuf {
        pick(flag, self.runtime_dir.as_deref(), DEFAULT_RUNTIME_DIR)
    }

    /// The daemon's admin socket: the flag, else the file's, else the default.
    pub fn api(&self, flag: Option<&Path>) -> PathBuf {
        pick(flag, self.api.as_deref(), DEFAULT_API_SOCKET)
    }

    /// Seconds per registry or S3 request: the flag, else the file's, else the default.
    pub fn timeout_secs(&self, flag: Option<u64>) -> u64 {
        flag.or(self.timeout_secs).unwrap_or(DEFAULT_TIMEOUT_SECS)
    }

    /// Where a mount of `source` reads its blobs from S3, if it does: a bootstrap source with
    /// no blob directories and a bucket given by a flag or the file. Each flag wins over its
    /// key in the file. Also returns whether the file allows plain HTTP to the endpoint.
    pub fn s3_location(
        &self,
        source: &str,
        has_blob_dirs: bool,
        flags: &S3Args,
    ) -> Result<(Option<S3Location>, bool)> {
        if registry_of(source).is_some() || source.starts_with("oci:") {
            if flags.any() {
                bail!("the --s3-* flags are for a bootstrap SOURCE; an image reference reads its blobs from its registry");
            }
            return Ok((None, false));
        }
        if has_blob_dirs {
            if flags.any() {
                bail!("give --blob-dir or S3 storage (--s3-*), not both");
            }
            return Ok((None, false));
        }
        let file = &self.s3;
        let Some(bucket) = flags.s3_bucket.clone().or(file.bucket.clone()) else {
            if flags.any() {
                bail!("--s3-bucket is needed (or bucket in the config file's [s3] table)");
            }
            return Ok((None, false));
        };
        let location = S3Location {
            endpoint: flags.s3_endpoint.clone().or(file.endpoint.clone()),
            bucket,
            prefix: flags.s3_prefix.clone().or(file.prefix.clone()).unwrap_or_default(),
            region: flags.s3_region.clone().or(file.region.clone()),
        };
        Ok((Some(location), file.insecure))
    }

    /// The file's S3 credentials, if it has them (a key without its secret is an error).
    pub fn s3_credentials(&self) -> Result<Option<S3Credentials>> {
        match (&self.s3.access_key_id, &self.s3.secret_access_key) {
            (Some(id), Some(secret)) => Ok(Some(S3Credentials {
                access_key_id: id.clone(),
                secret_access_key: secret.clone(),
                session_token: self.s3.session_token.clone(),
            })),
            (None, None) => Ok(None),
            (Some(_), None) => bail!("[s3] has access_key_id but no secret_access_key"),
            (None, Some(_)) => bail!("[s3] has secret_access_key but no access_key_id"),
        }
    }

    /// Reads `path`, or the default file if it exists (an explicitly named file must exist).
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config::default())
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading the config file {}", path.display()))
            }
        };
        let cfg: Config =
            toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?;
        let mut registry_creds = std::collections::BTreeMap::new();
        for (host, r) in &cfg.registries {
            match (&r.username, &r.password) {
                (Some(u), Some(p)) => {
                    registry_creds.insert(
                        host.clone(),
                        naiad_storage::credentials::RegistryAuth::Basic(u.clone(), p.clone()),
                    );
                }
                (None, None) => {}
                _ => bail!(
                    "config file {}: registry {host}: username and password go together",
                    path.display()
                ),
            }
        }
        if !registry_creds.is_empty() {
            use std::os::unix::fs::PermissionsExt;
            if std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0) {
                tracing::warn!(config = %path.display(), "the config file holds a registry password and is readable by everyone");
            }
            naiad_storage::credentials::set_configured(registry_creds);
        }
        let creds =
            cfg.s3_credentials().with_context(|| format!("config file {}", path.display()))?;
        if let Some(c) = creds {
            use std::os::unix::fs::PermissionsExt;
            if std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0) {
                tracing::warn!(config = %path.display(), "the config file holds an S3 secret and is readable by everyone");
            }
            // A process setting: specs (sent over the API, saved) never carry credentials.
            S3Credentials::set_configured(c);
        }
        Ok(cfg)
    }

    /// `fetch_merge_max` in bytes.
    pub fn fetch_merge_max(&self) -> Result<Option<u64>> {
        self.fetch_merge_max
            .as_deref()
            .map(|s| crate::args::parse_size_u64(s).context("config fetch_merge_max"))
            .transpose()
    }

    /// Settings of a registry, if configured.
    pub fn registry(&self, host: &str) -> Option<&RegistryConfig> {
        self.registries.get(host)
    }

    /// Whether plain HTTP to `host` is allowed by the file.
    pub fn insecure(&self, host: &str) -> bool {
        self.registry(host).is_some_and(|r| r.insecure)
    }
}

/// The registry host of an image reference, if it is one.
pub fn registry_of(reference: &str) -> Option<&str> {
    reference.strip_prefix("docker://").and_then(|r| r.split('/').next())
}

/// A flag's path, else the config file's, else `default`.
fn pick(flag: Option<&Path>, file: Option<&Path>, default: &str) -> PathBuf {
    flag.or(file).map_or_else(|| PathBuf::from(default), Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_parse_and_typos_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "cache_dir = \"/x\"\n[registries.\"r:5000\"]\ninsecure = true\nmirrors = [\"m:1\"]\n",
        )
        .unwrap();
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!(c.cache_dir.as_deref(), Some(Path::new("/x")));
        assert!(c.insecure("r:5000") && !c.insecure("other"));
        assert_eq!(c.registry("r:5000").unwrap().mirrors, vec!["m:1".to_string()]);
        std::fs::write(&p, "cache_dri = \"/x\"\n").unwrap();
        assert!(format!("{:#}", Config::load(Some(&p)).unwrap_err()).contains("cache_dri"));
        assert!(Config::load(Some(&dir.path().join("missing.toml"))).is_err());
        assert_eq!(registry_of("docker://h:1/a/b:c"), Some("h:1"));
    }

    #[test]
    fn s3_flags_win_over_the_file_and_secrets_stay_hidden() {
        let c: Config = toml::from_str(
            "[s3]\nendpoint = \"http://e:1\"\nbucket = \"fb\"\nprefix = \"fp\"\ninsecure = true\naccess_key_id = \"AK\"\nsecret_access_key = \"hush\"\n",
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hush"));
        assert_eq!(c.s3_credentials().unwrap().unwrap().secret_access_key, "hush");
        let none = S3Args::default();
        let (loc, insecure) = c.s3_location("/b/bootstrap", false, &none).unwrap();
        assert_eq!(
            loc.unwrap(),
            S3Location {
                endpoint: Some("http://e:1".into()),
                bucket: "fb".into(),
                prefix: "fp".into(),
                region: None
            }
        );
        assert!(insecure);
        let flags = S3Args {
            s3_bucket: Some("b2".into()),
            s3_prefix: Some("".into()),
            ..S3Args::default()
        };
        let (loc, _) = c.s3_location("/b/bootstrap", false, &flags).unwrap();
        let loc = loc.unwrap();
        assert_eq!(
            (loc.bucket.as_str(), loc.prefix.as_str(), loc.endpoint.as_deref()),
            ("b2", "", Some("http://e:1"))
        );
        // Blob directories or an image reference: no S3 (flags for them are errors).
        assert!(c.s3_location("/b/bootstrap", true, &none).unwrap().0.is_none());
        assert!(c.s3_location("docker://h/r:t", false, &none).unwrap().0.is_none());
        assert!(c.s3_location("/b/bootstrap", true, &flags).is_err());
        assert!(c.s3_location("oci:/d:t", false, &flags).is_err());
        let empty = Config::default();
        assert!(empty.s3_location("/b/bootstrap", false, &none).unwrap().0.is_none());
        assert!(empty
            .s3_location(
                "/b/bootstrap",
                false,
                &S3Args { s3_prefix: Some("p".into()), ..S3Args::default() }
            )
            .is_err());
        let half: Config = toml::from_str("[s3]\naccess_key_id = \"AK\"\n").unwrap();
        assert!(half.s3_credentials().is_err());
        assert!(toml::from_str::<Config>("[s3]\nbukket = \"x\"\n").is_err());
    }
}
