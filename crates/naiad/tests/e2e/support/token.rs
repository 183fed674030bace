//! A bearer-token issuer for registry tests: the "token server" of the Docker registry auth
//! spec, small enough to read, for `docker-registry` (distribution 2.8) configured with
//! `auth: token` (see `Registry::start_with_token_auth`).
//!
//! It serves `GET /token?service=..&scope=repository:NAME:ACTIONS` on 127.0.0.1 from a thread,
//! requires HTTP basic auth with its user and password (401 otherwise), and answers
//! `{"token", "access_token", "expires_in"}` with a JWT the registry accepts:
//! * header `{"alg": "RS256", "typ": "JWT", "x5c": [the issuer's certificate, base64 DER]}`;
//!   the registry checks the certificate against its `rootcertbundle` (this same self-signed
//!   certificate) and the signature with the certificate's key;
//! * claims `{iss, sub, aud, exp, nbf, iat, jti, access: [{type, name, actions}]}`; the
//!   registry wants `iss` equal to its configured issuer, `aud` (a string) equal to its
//!   service, and the access list to hold every action the request needs.
//!
//! The key and certificate are made with the `openssl` CLI at start, in a temporary directory,
//! and each token is signed by `openssl dgst`. Needs the Debian package `openssl`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The `service` of the registry (its token audience).
pub const SERVICE: &str = "naiad-test-registry";
/// The issuer name in the tokens (the registry's `issuer`).
pub const ISSUER: &str = "naiad-test-token-issuer";
/// distribution 2.8 accepts a token until this long after its `exp` (and from this long
/// before its `nbf`): its allowance for clock skew.
pub const REGISTRY_LEEWAY_SECS: i64 = 60;
/// How long the registry accepts a token, unless changed with `set_token_lifetime`.
pub const DEFAULT_TOKEN_LIFETIME_SECS: i64 = 300;
/// The largest request head read.
const MAX_REQUEST_HEAD_BYTES: usize = 16 << 10;
/// How long a connection may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A running token issuer; stopped (thread joined, key removed) on drop.
pub struct TokenIssuer {
    /// "127.0.0.1:PORT"
    pub addr: String,
    pub user: String,
    pub password: String,
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
    dir: tempfile::TempDir,
}

struct State {
    stop: AtomicBool,
    issued: AtomicUsize,
    refused: AtomicUsize,
    lifetime_secs: AtomicI64,
    /// The `scope` parameters of the tokens issued, in order.
    scopes: Mutex<Vec<String>>,
    key_path: PathBuf,
    /// The certificate, base64 DER (the body of its PEM).
    x5c: String,
    /// The `Authorization` header value that is accepted.
    basic: String,
}

impl TokenIssuer {
    /// Makes a key and certificate and starts serving on a free port of 127.0.0.1.
    pub fn start(user: &str, password: &str) -> TokenIssuer {
        let dir = tempfile::Builder::new().prefix("naiad-token-issuer").tempdir().expect("tempdir");
        let key_path = dir.path().join("key.pem");
        let cert_path = dir.path().join("cert.pem");
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=naiad-test-token-issuer",
            ])
            .arg("-keyout")
            .arg(&key_path)
            .arg("-out")
            .arg(&cert_path)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run openssl: {e} (install the Debian package openssl)")
            });
        assert!(
            out.status.success(),
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pem = std::fs::read_to_string(&cert_path).unwrap();
        let x5c: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(State {
            stop: AtomicBool::new(false),
            issued: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            lifetime_secs: AtomicI64::new(DEFAULT_TOKEN_LIFETIME_SECS),
            scopes: Mutex::new(Vec::new()),
            key_path,
            x5c,
            basic: format!(
                "Basic {}",
                base64(format!("{user}:{password}").as_bytes(), STD_ALPHABET, true)
            ),
        });
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("token-issuer".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let st = st.clone();
                    std::thread::spawn(move || serve(&st, conn));
                }
            })
            .unwrap();
        TokenIssuer {
            addr,
            user: user.into(),
            password: password.into(),
            state,
            thread: Some(thread),
            dir,
        }
    }

    /// The URL of the token endpoint (the registry's `realm`).
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The certificate the tokens carry, PEM (the registry's `rootcertbundle`).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// How many tokens it has issued.
    pub fn issued(&self) -> usize {
        self.state.issued.load(Ordering::SeqCst)
    }

    /// How many requests it refused for missing or wrong credentials.
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// The scopes of the tokens issued so far, in order (e.g. `repository:a/b:pull,push`).
    pub fn scopes(&self) -> Vec<String> {
        self.state.scopes.lock().unwrap().clone()
    }

    /// Tokens issued from now on are accepted by the registry for `lifetime` (whole seconds).
    /// Their `exp` is set `REGISTRY_LEEWAY_SECS` earlier than that, since the registry accepts
    /// a token that long after its `exp`: a lifetime under a minute gives an `exp` in the past.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state.lifetime_secs.store(lifetime.as_secs() as i64, Ordering::SeqCst);
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one request on `conn` and closes it.
fn serve(st: &State, mut conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(READ_TIMEOUT));
    let Some(head) = read_head(&mut conn) else { return };
    let (status, extra, body) = answer(st, &head);
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
}

/// The request line and headers, up to the blank line.
fn read_head(conn: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 || head.len() > MAX_REQUEST_HEAD_BYTES {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Status, extra header lines ("Name: value\r\n"…) and body for a request head.
fn answer(st: &State, head: &str) -> (u16, String, String) {
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let (method, target) = (request_line.next().unwrap_or(""), request_line.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if method != "GET" || path != "/token" {
        return (404, String::new(), r#"{"errors":[{"code":"NOT_FOUND"}]}"#.into());
    }
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim());
    if authorization != Some(st.basic.as_str()) {
        st.refused.fetch_add(1, Ordering::SeqCst);
        // Says nothing about what was sent.
        return (
            401,
            format!("WWW-Authenticate: Basic realm=\"{ISSUER}\"\r\n"),
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"a valid user and password are required"}]}"#.into(),
        );
    }
    let params: Vec<(String, String)> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect();
    let service = params.iter().find(|(k, _)| k == "service").map(|(_, v)| v.as_str());
    if service != Some(SERVICE) {
        return (
            400,
            String::new(),
            format!(
                r#"{{"errors":[{{"code":"BAD_REQUEST","message":"unknown service {service:?}"}}]}}"#
            ),
        );
    }
    // Grants every action asked for on every repository named, in one or more `scope`
    // parameters, each a space-separated list.
    let scopes: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' '))
        .filter(|s| !s.is_empty())
        .collect();
    let mut access = Vec::new();
    for scope in &scopes {
        let Some((kind_and_name, actions)) = scope.rsplit_once(':') else { continue };
        let Some((kind, name)) = kind_and_name.split_once(':') else { continue };
        access.push(serde_json::json!({ "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>() }));
    }
    let n = st.issued.fetch_add(1, Ordering::SeqCst) + 1;
    st.scopes.lock().unwrap().push(scopes.join(" "));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let lifetime = st.lifetime_secs.load(Ordering::SeqCst);
    let header = serde_json::json!({ "alg": "RS256", "typ": "JWT", "x5c": [st.x5c] });
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": "naiad-test-user",
        "aud": SERVICE,
        "exp": now + lifetime - REGISTRY_LEEWAY_SECS,
        "nbf": now,
        "iat": now,
        "jti": format!("naiad-test-token-{n}"),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    );
    let signature = sign_rs256(&st.key_path, signing_input.as_bytes());
    let jwt = format!("{signing_input}.{}", base64url(&signature));
    let body = serde_json::json!({ "token": jwt, "access_token": jwt, "expires_in": lifetime });
    (200, String::new(), body.to_string())
}

/// RSASSA-PKCS1-v1_5 with SHA-256 (JWS "RS256") of `data` with the PEM key at `key`.
fn sign_rs256(key: &Path, data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running openssl dgst");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl dgst -sign failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Decodes `%XX` escapes and `+` (a space in a query).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => out.push(v),
                    None => out.extend_from_slice(&b[i..i + 3]),
                }
                i += 3;
                continue;
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub const STD_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 of `input` in `alphabet`, with `=` padding when `pad`.
pub fn base64(input: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::new();
    for c in input.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

/// Unpadded base64url, as JWS uses.
fn base64url(input: &[u8]) -> String {
    base64(input, URL_ALPHABET, false)
}
