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
//!
//! [registries."127.0.0.1:5000"]
//! insecure = true              # plain HTTP allowed
//! mirrors = ["127.0.0.1:5001"] # tried in order before this registry
//! ```
//! Credentials come from the docker config (`~/.docker/config.json`), not from this file.

use anyhow::{Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the configuration is read from by default.
pub const DEFAULT_CONFIG: &str = "/etc/naiad/config.toml";

/// The configuration file's contents.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub cache_dir: Option<PathBuf>,
    pub runtime_dir: Option<PathBuf>,
    pub api: Option<PathBuf>,
    pub cache_limit: Option<String>,
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryConfig>,
}

/// Settings of one registry (`host[:port]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub mirrors: Vec<String>,
}

impl Config {
    /// Reads `path`, or the default file if it exists (an explicitly named file must exist).
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(Config::default()),
            Err(e) => return Err(e).with_context(|| format!("reading the config file {}", path.display())),
        };
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_parse_and_typos_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "cache_dir = \"/x\"\n[registries.\"r:5000\"]\ninsecure = true\nmirrors = [\"m:1\"]\n").unwrap();
        let c = Config::load(Some(&p)).unwrap();
        assert_eq!(c.cache_dir.as_deref(), Some(Path::new("/x")));
        assert!(c.insecure("r:5000") && !c.insecure("other"));
        assert_eq!(c.registry("r:5000").unwrap().mirrors, vec!["m:1".to_string()]);
        std::fs::write(&p, "cache_dri = \"/x\"\n").unwrap();
        assert!(format!("{:#}", Config::load(Some(&p)).unwrap_err()).contains("cache_dri"));
        assert!(Config::load(Some(&dir.path().join("missing.toml"))).is_err());
        assert_eq!(registry_of("docker://h:1/a/b:c"), Some("h:1"));
    }
}
