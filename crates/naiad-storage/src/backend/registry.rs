//! Blobs in an OCI registry, read with HTTP Range requests.
//!
//! * Auth: anonymous, basic, or bearer; a `401` with a `Bearer` challenge fetches a pull
//!   token from the realm it names (with basic credentials when configured) and retries, also
//!   when the token held has expired (at most one new token per read).
//! * Redirects (registries that serve blobs from object storage) are followed, and the final
//!   URL is remembered per blob so later reads go there directly; a remembered URL that
//!   stops working is dropped and the registry asked again. Credentials are never sent to
//!   another host.
//! * Plain HTTP only when `insecure` is set.
//! * Every attempt has a timeout; transient failures (connection errors, timeouts, 5xx,
//!   429, a body shorter than asked or cut off) are retried with backoff a bounded number of
//!   times, and a read as a whole (retries, backoff and token requests included) is bounded
//!   by `attempts * timeout`, so a dead registry yields an error within that time.
//! * A `Retry-After` (seconds or an HTTP date) on a 429 or 5xx is honoured: the next attempt
//!   waits at least that long. A wait that would end past the read's time bound is not
//!   started: the read fails at once instead (a reader gets EIO now, not at the bound).
//! * A `206` must carry the range asked for (`Content-Range`) and exactly its length; a body
//!   cut off before its `Content-Length` is an error of that attempt. Nothing partial is
//!   ever returned (and the fetcher verifies every chunk of what is).

use super::{Backend, OwnedRuntime};
use crate::credentials::RegistryAuth;
use crate::{Result, StorageError};
use naiad_format::digest::{to_hex, Digest32};
use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime};

/// How to reach a registry.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// `host[:port]`.
    pub registry: String,
    pub repository: String,
    pub auth: RegistryAuth,
    pub insecure: bool,
    /// Timeout of one request, connection included.
    pub timeout: Duration,
    /// Attempts per read (the first included).
    pub attempts: u32,
}

impl RegistryOptions {
    /// Defaults: credentials from the docker config, 10 s per request, 3 attempts.
    pub fn new(registry: &str, repository: &str) -> Self {
        RegistryOptions {
            registry: registry.into(),
            repository: repository.into(),
            auth: crate::credentials::credentials_for(registry),
            insecure: false,
            timeout: Duration::from_secs(10),
            attempts: 3,
        }
    }
}

/// An OCI registry repository as a blob backend.
pub struct RegistryBackend {
    opts: RegistryOptions,
    client: reqwest::Client,
    rt: OwnedRuntime,
    token: RwLock<Option<String>>,
    redirects: Mutex<HashMap<Digest32, reqwest::Url>>,
}

enum Attempt {
    Done(Vec<u8>),
    /// Try again (after a backoff) with this reason.
    Retry(String),
    /// Try again, not before this long (the server's `Retry-After`), with this reason.
    RetryAfter(Duration, String),
    /// The registry asked for a token: get one and try again at once.
    Auth(String),
    Fail(StorageError),
}

impl RegistryBackend {
    /// A backend for one repository.
    pub fn new(opts: RegistryOptions) -> Result<Self> {
        super::check_bounds(opts.timeout, opts.attempts).map_err(|detail| {
            StorageError::Backend { backend: format!("registry {}", opts.registry), detail }
        })?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout)
            .build()
            .map_err(|e| StorageError::Backend {
                backend: format!("registry {}", opts.registry),
                detail: e.to_string(),
            })?;
        let rt = OwnedRuntime::new("naiad-registry").map_err(|e| StorageError::Backend {
            backend: format!("registry {}", opts.registry),
            detail: e.to_string(),
        })?;
        Ok(RegistryBackend {
            opts,
            client,
            rt,
            token: RwLock::new(None),
            redirects: Mutex::new(HashMap::new()),
        })
    }

    fn scheme(&self) -> &'static str {
        if self.opts.insecure {
            "http"
        } else {
            "https"
        }
    }

    fn blob_url(&self, digest: &Digest32) -> String {
        format!(
            "{}://{}/v2/{}/blobs/sha256:{}",
            self.scheme(),
            self.opts.registry,
            self.opts.repository,
            to_hex(digest)
        )
    }

    fn fail(&self, detail: impl Into<String>) -> StorageError {
        StorageError::Backend { backend: self.name(), detail: detail.into() }
    }

    async fn attempt(&self, digest: &Digest32, offset: u64, len: u64) -> Attempt {
        let remembered = self.redirects.lock().expect("redirects lock").get(digest).cloned();
        let direct = remembered.is_some();
        let url = match &remembered {
            Some(u) => u.clone(),
            None => match reqwest::Url::parse(&self.blob_url(digest)) {
                Ok(u) => u,
                Err(e) => return Attempt::Fail(self.fail(e.to_string())),
            },
        };
        let mut req = self
            .client
            .get(url.clone())
            .header("Range", format!("bytes={}-{}", offset, offset + len - 1));
        if !direct {
            req = match (&*self.token.read().expect("token lock"), &self.opts.auth) {
                (Some(t), _) => req.bearer_auth(t),
                (None, RegistryAuth::Basic(u, p)) => req.basic_auth(u, Some(p)),
                (None, RegistryAuth::Bearer(t)) => req.bearer_auth(t),
                (None, RegistryAuth::Anonymous) => req,
            };
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if direct => {
                self.redirects.lock().expect("redirects lock").remove(digest);
                return Attempt::Retry(format!("redirected URL failed: {e}"));
            }
            Err(e) => return Attempt::Retry(error_text(&e)),
        };
        let status = resp.status().as_u16();
        if !direct && resp.url() != &url {
            self.redirects.lock().expect("redirects lock").insert(*digest, resp.url().clone());
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let resp_range =
            resp.headers().get("content-range").and_then(|v| v.to_str().ok()).map(str::to_string);
        match status {
            206 | 200 => {
                let body = match resp.bytes().await {
                    Ok(b) => b,
                    Err(e) => return Attempt::Retry(format!("body: {}", error_text(&e))),
                };
                let slice = if status == 206 {
                    if let Some(start) = content_range_start(resp_range.as_deref()) {
                        if start != offset {
                            return Attempt::Retry(format!(
                                "answered the range at {start}, asked {offset}"
                            ));
                        }
                    }
                    &body[..]
                } else if body.len() as u64 >= offset + len {
                    // The server ignored the Range header: take our part of the whole blob.
                    &body[offset as usize..(offset + len) as usize]
                } else {
                    return Attempt::Retry(format!("short body: {} bytes", body.len()));
                };
                if slice.len() as u64 != len {
                    return Attempt::Retry(format!("got {} bytes, asked {len}", slice.len()));
                }
                Attempt::Done(slice.to_vec())
            }
            401 if !direct => {
                let challenge = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                if !challenge.to_ascii_lowercase().starts_with("bearer") {
                    return Attempt::Fail(self.fail("authentication failed (credentials from the docker config or the config file)"));
                }
                // No token yet, or the one held has expired: `read_async` gets a new one once.
                Attempt::Auth(challenge)
            }
            401 | 403 if direct => {
                self.redirects.lock().expect("redirects lock").remove(digest);
                Attempt::Retry(format!("redirected URL answered {status}"))
            }
            401 | 403 => Attempt::Fail(self.fail(format!("access denied ({status})"))),
            404 => Attempt::Fail(StorageError::BlobMissing {
                digest: to_hex(digest),
                dirs: self.name(),
            }),
            429 | 500..=599 => match retry_after {
                Some(after) => Attempt::RetryAfter(
                    after,
                    format!("HTTP {status}, Retry-After {} s", after.as_secs_f32()),
                ),
                None => Attempt::Retry(format!("HTTP {status}")),
            },
            other => Attempt::Fail(self.fail(format!("unexpected HTTP {other}"))),
        }
    }

    /// Gets a pull token from the challenge's realm.
    async fn fetch_token(&self, challenge: &str) -> Result<()> {
        let params = parse_challenge(challenge);
        let realm =
            params.get("realm").ok_or_else(|| self.fail("bearer challenge without a realm"))?;
        let mut url =
            reqwest::Url::parse(realm).map_err(|e| self.fail(format!("bad token realm: {e}")))?;
        if url.scheme() == "http" && !self.opts.insecure {
            return Err(self.fail("the token realm is plain HTTP; allow it with --insecure"));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = params.get("service") {
                q.append_pair("service", s);
            }
            q.append_pair("scope", &format!("repository:{}:pull", self.opts.repository));
        }
        let mut req = self.client.get(url);
        if let RegistryAuth::Basic(u, p) = &self.opts.auth {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.fail(format!("token request: {}", error_text(&e))))?;
        if !resp.status().is_success() {
            return Err(self.fail(format!("token request answered {}", resp.status().as_u16())));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.fail(format!("token response: {}", error_text(&e))))?;
        let body: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| self.fail(format!("token response: {e}")))?;
        let token = body
            .get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| self.fail("token response without a token"))?;
        *self.token.write().expect("token lock") = Some(token.to_string());
        Ok(())
    }

    /// One read with its retries, bounded as a whole by `attempts * timeout` (backoff and a
    /// token request included), so a registry that stays down fails a read within that time.
    async fn read_async(&self, digest: &Digest32, offset: u64, len: u64) -> Result<Vec<u8>> {
        let limit = self.opts.timeout * self.opts.attempts.max(1);
        let deadline = tokio::time::Instant::now() + limit;
        match tokio::time::timeout_at(deadline, self.read_retrying(digest, offset, len, deadline))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(self.fail(format!(
                "blob {} at {offset}+{len}: no answer within {} s",
                to_hex(digest),
                limit.as_secs_f32()
            ))),
        }
    }

    async fn read_retrying(
        &self,
        digest: &Digest32,
        offset: u64,
        len: u64,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<u8>> {
        let mut delay = Duration::from_millis(200);
        let mut last = String::new();
        let mut authed = false;
        let mut attempt = 0;
        while attempt < self.opts.attempts {
            match self.attempt(digest, offset, len).await {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fail(e) => return Err(e),
                Attempt::Auth(challenge) if !authed => {
                    authed = true;
                    self.fetch_token(&challenge).await?;
                    continue;
                }
                Attempt::Auth(_) => return Err(self.fail("authentication failed")),
                Attempt::Retry(why) => {
                    tracing::warn!(backend = %self.name(), blob = %to_hex(digest), offset, %why, "retrying");
                    last = why;
                    attempt += 1;
                    if attempt < self.opts.attempts {
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
                Attempt::RetryAfter(after, why) => {
                    last = why;
                    attempt += 1;
                    if attempt < self.opts.attempts {
                        let wait = after.max(delay);
                        if tokio::time::Instant::now()
                            .checked_add(wait)
                            .is_none_or(|t| t >= deadline)
                        {
                            // Waiting as asked would outlast the read's bound: fail now.
                            return Err(self.fail(format!(
                                "blob {} at {offset}+{len}: {last}, beyond this read's limit of {} s",
                                to_hex(digest),
                                (self.opts.timeout * self.opts.attempts.max(1)).as_secs_f32()
                            )));
                        }
                        tracing::warn!(backend = %self.name(), blob = %to_hex(digest), offset, why = %last, "retrying when the server asks");
                        tokio::time::sleep(wait).await;
                        delay *= 2;
                    }
                }
            }
        }
        Err(self.fail(format!(
            "blob {} at {offset}+{len}: gave up after {} attempts: {last}",
            to_hex(digest),
            self.opts.attempts
        )))
    }
}

impl Backend for RegistryBackend {
    fn read(&self, digest: &Digest32, offset: u64, len: u64) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        self.rt.block_on(self.read_async(digest, offset, len))
    }

    fn name(&self) -> String {
        format!("registry {}/{}", self.opts.registry, self.opts.repository)
    }
}

/// The message of a reqwest error, with its cause (timeouts and refused connections say so).
fn error_text(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    if e.is_timeout() {
        s.push_str(" (timed out)");
    }
    s
}

/// How long a `Retry-After` value asks to wait: delay-seconds, or an HTTP date (IMF-fixdate,
/// RFC 850 or asctime form) measured from `now` (a date past is no wait).
fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX)));
    }
    let at = parse_http_date(v)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses an HTTP date in any of the three forms of RFC 9110 section 5.6.7:
/// `Sun, 06 Nov 1994 08:49:37 GMT`, `Sunday, 06-Nov-94 08:49:37 GMT`,
/// `Sun Nov  6 08:49:37 1994`. In each the day comes before the year.
fn parse_http_date(v: &str) -> Option<SystemTime> {
    const MONTHS: [&str; 12] =
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
    let mut month = None;
    let mut time = None;
    let mut numbers = Vec::new();
    for t in v.split([' ', ',', '-']).filter(|t| !t.is_empty()) {
        if t.contains(':') {
            let hms: Vec<u64> = t.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
            match hms[..] {
                [h, m, s] if h < 24 && m < 60 && s < 61 => time = Some(h * 3600 + m * 60 + s),
                _ => return None,
            }
        } else if t.bytes().all(|b| b.is_ascii_digit()) {
            numbers.push((t.parse::<i64>().ok()?, t.len()));
        } else if let Some(m) = MONTHS.iter().position(|m| t.eq_ignore_ascii_case(m)) {
            month = Some(m as i64 + 1);
        }
    }
    let (&[(day, _), (year, year_digits)], Some(month), Some(time)) = (&numbers[..], month, time)
    else {
        return None;
    };
    // RFC 850's two-digit years: the RFC says to read them as at most 50 years ahead.
    let year = if year_digits == 2 {
        if year < 70 {
            2000 + year
        } else {
            1900 + year
        }
    } else {
        year
    };
    if !(1..=31).contains(&day) {
        return None;
    }
    if !(1..=9999).contains(&year) {
        return None;
    }
    let secs = u64::try_from(days_from_civil(year, month, day) * 86_400).ok()? + time;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days from 1970-01-01 to the given date (proleptic Gregorian calendar).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The first byte of `Content-Range: bytes START-END/TOTAL`.
fn content_range_start(h: Option<&str>) -> Option<u64> {
    h?.trim().strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

/// Parses `Bearer realm="...",service="...",scope="..."`.
fn parse_challenge(h: &str) -> HashMap<String, String> {
    let rest = h.split_once(' ').map(|x| x.1).unwrap_or("");
    let mut out = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_string();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
                value.push(c);
            }
            while chars.peek().is_some_and(|c| *c != ',') {
                chars.next();
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        out.insert(key.to_ascii_lowercase(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    #[test]
    fn timeouts_and_attempts_over_the_limits_are_refused_not_a_panic() {
        let opts = |secs: u64, attempts: u32| super::RegistryOptions {
            timeout: Duration::from_secs(secs),
            attempts,
            ..super::RegistryOptions::new("127.0.0.1:9", "r")
        };
        for (o, limit) in
            [(opts(u64::MAX, 3), "MAX_TIMEOUT_SECS"), (opts(10, u32::MAX), "MAX_ATTEMPTS")]
        {
            let err = super::RegistryBackend::new(o).err().expect("accepted");
            assert!(err.to_string().contains(limit), "{err}");
        }
        assert!(super::RegistryBackend::new(opts(super::super::MAX_TIMEOUT_SECS, 3)).is_ok());
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_770); // Sun, 06 Nov 1994 08:49:30 GMT
        assert_eq!(super::parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(super::parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            super::parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX)),
            "huge, not a panic"
        );
        for date in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(super::parse_retry_after(date, now), Some(Duration::from_secs(7)), "{date}");
        }
        assert_eq!(
            super::parse_retry_after("Sat, 05 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO),
            "a date past"
        );
        for bad in [
            "",
            "soon",
            "-1",
            "1.5",
            "Sun, 06 Nov 1994 25:00:00 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 99999999999999 08:49:37 GMT",
        ] {
            assert_eq!(super::parse_retry_after(bad, now), None, "{bad:?}");
        }
        assert_eq!(super::days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn content_range_start_is_read() {
        assert_eq!(super::content_range_start(Some("bytes 100-199/1000")), Some(100));
        assert_eq!(super::content_range_start(Some("bytes */1000")), None);
        assert_eq!(super::content_range_start(None), None);
    }

    #[test]
    fn bearer_challenges_parse() {
        let p = super::parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull");
    }
}
