//! Registry credentials: those of naiad's own configuration file (recorded once by the
//! program, [`set_configured`]) first, else the docker config (`$DOCKER_CONFIG/config.json`,
//! else `~/.docker/config.json`): the `auths` entries (`auth` = base64 `user:password`, or
//! `username`/`password`, or an `identitytoken`). Credentials are never logged or put into
//! error messages.

use base64::Engine as _;
use std::path::PathBuf;

/// How to authenticate to a registry.
#[derive(Clone, PartialEq, Eq)]
pub enum RegistryAuth {
    Anonymous,
    Basic(String, String),
    /// An identity token, sent as a bearer token.
    Bearer(String),
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        match self {
            RegistryAuth::Anonymous => write!(f, "Anonymous"),
            RegistryAuth::Basic(user, _) => write!(f, "Basic({user}, <redacted>)"),
            RegistryAuth::Bearer(_) => write!(f, "Bearer(<redacted>)"),
        }
    }
}

/// The docker config file in use.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Registry credentials from the program's configuration file, by `host[:port]`.
static CONFIGURED: std::sync::OnceLock<std::collections::BTreeMap<String, RegistryAuth>> =
    std::sync::OnceLock::new();

/// Records the registry credentials of this process's configuration file (once, at start; a
/// second call is ignored). A process setting, like S3's: mount specs never hold credentials.
pub fn set_configured(by_host: std::collections::BTreeMap<String, RegistryAuth>) {
    let _ = CONFIGURED.set(by_host);
}

/// Credentials for `registry` (`host[:port]`), anonymous if none are configured.
pub fn credentials_for(registry: &str) -> RegistryAuth {
    if let Some(auth) = CONFIGURED.get().and_then(|m| m.get(registry)) {
        return auth.clone();
    }
    let Some(path) = docker_config_path() else { return RegistryAuth::Anonymous };
    let Ok(bytes) = std::fs::read(&path) else { return RegistryAuth::Anonymous };
    parse_config(&bytes, registry).unwrap_or(RegistryAuth::Anonymous)
}

fn parse_config(bytes: &[u8], registry: &str) -> Option<RegistryAuth> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let auths = v.get("auths")?.as_object()?;
    let wanted = [
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v1/"),
        format!("https://{registry}/v2/"),
    ];
    let docker_hub = matches!(registry, "docker.io" | "registry-1.docker.io" | "index.docker.io");
    let entry = auths
        .iter()
        .find(|(k, _)| wanted.contains(k) || (docker_hub && k.contains("index.docker.io")))?
        .1;
    if let Some(token) =
        entry.get("identitytoken").and_then(|t| t.as_str()).filter(|t| !t.is_empty())
    {
        return Some(RegistryAuth::Bearer(token.to_string()));
    }
    if let (Some(u), Some(p)) = (
        entry.get("username").and_then(|u| u.as_str()),
        entry.get("password").and_then(|p| p.as_str()),
    ) {
        return Some(RegistryAuth::Basic(u.to_string(), p.to_string()));
    }
    let encoded = entry.get("auth")?.as_str()?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some(RegistryAuth::Basic(u.to_string(), p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_entries_are_found_by_host() {
        let cfg = br#"{"auths": {"127.0.0.1:5000": {"auth": "dXNlcjpwYTpzcw=="}, "https://other.io": {"username": "a", "password": "b"}}}"#;
        match parse_config(cfg, "127.0.0.1:5000") {
            Some(RegistryAuth::Basic(u, p)) => {
                assert_eq!((u.as_str(), p.as_str()), ("user", "pa:ss"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_config(cfg, "other.io"), Some(RegistryAuth::Basic(..))));
        assert!(parse_config(cfg, "third.io").is_none());
        assert!(parse_config(b"not json", "x").is_none());
    }
}
