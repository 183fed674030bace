//! A small client for the admin API (`naiad ctl`): HTTP/1.1 over the unix socket, one
//! request per connection.

use crate::{DaemonError, Result};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Sends a request; returns the status code and the body.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, String)> {
    let mut s = UnixStream::connect(socket).map_err(|e| DaemonError::Io {
        path: format!("{} (is `naiad daemon` running?)", socket.display()),
        cause: e,
    })?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: naiad\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(DaemonError::io(socket.display()))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(DaemonError::io(socket.display()))?;
    let text = String::from_utf8_lossy(&resp);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| DaemonError::Invalid("malformed response from the daemon".into()))?;
    let code: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| DaemonError::Invalid("malformed status line from the daemon".into()))?;
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((code, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
