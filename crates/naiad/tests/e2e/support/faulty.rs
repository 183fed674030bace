//! A fault-injecting HTTP relay for tests. It sits in front of a real server (the test
//! registry) and, switched at run time, passes requests through or produces the faults a real
//! server cannot produce on demand: refused connections, a reset in the middle of a body,
//! bursts of `503`, `429` with `Retry-After`, a body cut short of its `Content-Length`, wrong
//! bytes, a slow trickle. The real server answers everything else; the fault is the only mock.
//!
//! It speaks just enough HTTP/1.1 for that: it reads each request head (and body, if any),
//! forwards the request to the upstream on a connection of its own, reads the whole answer,
//! and hands it to the client, damaged as the current fault says. Client connections stay
//! open across requests (keep-alive) as with a real server.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the relay does to requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Relay faithfully.
    Pass,
    /// Nothing listens: new connections are refused, open ones are closed.
    Refuse,
    /// Send the head and this many bytes of the body, then reset the connection (RST).
    ResetAfter(usize),
    /// Answer `503 Service Unavailable` without asking the upstream.
    Unavailable,
    /// Answer `429 Too Many Requests` with this `Retry-After` value.
    TooMany(String),
    /// Send the head (the full `Content-Length`) and half the body, then close (FIN).
    Truncate,
    /// Flip one bit of the body.
    Flip,
    /// Send the body at this many bytes per second.
    Trickle(u64),
    /// Send the body followed by this many spaces (JSON stays valid), its `Content-Length`
    /// grown to match: an answer as large as a hostile server likes, written as it goes.
    Pad(u64),
}

impl Fault {
    /// How [`Seen::fault`] names it.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Pass => "pass",
            Fault::Refuse => "refuse",
            Fault::ResetAfter(_) => "reset",
            Fault::Unavailable => "503",
            Fault::TooMany(_) => "429",
            Fault::Truncate => "truncate",
            Fault::Flip => "flip",
            Fault::Trickle(_) => "trickle",
            Fault::Pad(_) => "pad",
        }
    }
}

/// One request the relay saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    /// The same moment on the wall clock (for `Retry-After` dates).
    pub wall: std::time::SystemTime,
    /// `METHOD PATH`.
    pub request: String,
    /// The request's `Range` header, if any.
    pub range: Option<String>,
    /// What was done to it ([`Fault`] names: "pass", "503", ...).
    pub fault: &'static str,
}

struct State {
    fault: Fault,
    /// Requests left before the fault ends (`None`: until changed).
    remaining: Option<u32>,
    seen: Vec<Seen>,
}

struct Shared {
    addr: SocketAddr,
    upstream: String,
    state: Mutex<State>,
    listener: Mutex<Option<TcpListener>>,
    /// Open client connections, to close them when refusing or stopping.
    conns: Mutex<Vec<(u64, TcpStream)>>,
    next_conn: AtomicU64,
    stop: AtomicBool,
}

/// A running relay; stopped (listener and connections closed) on drop.
pub struct FaultyProxy {
    /// "127.0.0.1:PORT"
    pub addr: String,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultyProxy {
    /// Starts relaying to `upstream` ("host:port"), faithfully until told otherwise.
    pub fn start(upstream: &str) -> FaultyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            addr,
            upstream: upstream.to_string(),
            state: Mutex::new(State { fault: Fault::Pass, remaining: None, seen: Vec::new() }),
            listener: Mutex::new(Some(listener)),
            conns: Mutex::new(Vec::new()),
            next_conn: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let acceptor = std::thread::spawn(move || accept_loop(&s));
        FaultyProxy { addr: addr.to_string(), shared, acceptor: Some(acceptor) }
    }

    /// Applies `fault` to every request from now on (until changed).
    pub fn set(&self, fault: Fault) {
        self.switch(fault, None);
    }

    /// Applies `fault` to the next `k` requests, then relays faithfully again.
    pub fn set_next(&self, fault: Fault, k: u32) {
        assert_ne!(fault, Fault::Refuse, "refusing is per connection, not per request: use set");
        self.switch(fault, Some(k));
    }

    fn switch(&self, fault: Fault, remaining: Option<u32>) {
        let refuse = fault == Fault::Refuse;
        {
            let mut st = self.shared.state.lock().unwrap();
            st.fault = fault;
            st.remaining = remaining;
        }
        let mut listener = self.shared.listener.lock().unwrap();
        if refuse {
            // Close the listener (the kernel then refuses connections) and every open one,
            // so that a client's pooled connection cannot dodge the fault.
            *listener = None;
            self.shared.close_all();
        } else if listener.is_none() {
            let started = Instant::now();
            let l = loop {
                match TcpListener::bind(self.shared.addr) {
                    Ok(l) => break l,
                    Err(e) => {
                        assert!(
                            started.elapsed() < Duration::from_secs(5),
                            "cannot listen on {} again: {e}",
                            self.shared.addr
                        );
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            };
            l.set_nonblocking(true).unwrap();
            *listener = Some(l);
        }
    }

    /// Every request seen so far, in order of arrival.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.state.lock().unwrap().seen.clone()
    }

    /// How many requests got the fault named `name` ("503", "reset", ...).
    pub fn count(&self, name: &str) -> usize {
        self.seen().iter().filter(|s| s.fault == name).count()
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        *self.shared.listener.lock().unwrap() = None;
        self.shared.close_all();
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

impl Shared {
    fn close_all(&self) {
        for (_, c) in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// The fault for the next request (counting it down), recorded with the request.
    fn fault_for(&self, request: &str, range: Option<String>) -> Fault {
        let mut st = self.state.lock().unwrap();
        let fault = st.fault.clone();
        if let Some(k) = st.remaining.as_mut() {
            *k = k.saturating_sub(1);
            if *k == 0 {
                st.fault = Fault::Pass;
                st.remaining = None;
            }
        }
        st.seen.push(Seen {
            at: Instant::now(),
            wall: std::time::SystemTime::now(),
            request: request.to_string(),
            range,
            fault: fault.name(),
        });
        fault
    }
}

fn accept_loop(s: &Arc<Shared>) {
    while !s.stop.load(Ordering::SeqCst) {
        let accepted = match &*s.listener.lock().unwrap() {
            Some(l) => l.accept().ok(),
            None => None,
        };
        let Some((conn, _)) = accepted else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        conn.set_nonblocking(false).unwrap();
        let id = s.next_conn.fetch_add(1, Ordering::Relaxed);
        s.conns.lock().unwrap().push((id, conn.try_clone().unwrap()));
        let s = s.clone();
        std::thread::spawn(move || {
            serve(&s, conn);
            s.conns.lock().unwrap().retain(|(i, _)| *i != id);
        });
    }
}

/// Reads up to the end of an HTTP head (`\r\n\r\n`) into `buf` (which may already hold some
/// bytes); returns the head's length, or `None` at EOF.
fn read_head(conn: &mut impl Read, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(end + 4);
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The value of header `name` in an HTTP head.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// `head` without its `Connection` header.
fn without_connection(head: &str) -> String {
    let mut out: String = head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect::<Vec<_>>()
        .join("\r\n");
    out.push_str("\r\n\r\n");
    out
}

/// `head` with its `Content-Length` (added if missing) set to `len`, not chunked.
fn with_content_length(head: &str, len: u64) -> String {
    let mut out: String = head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            !l.starts_with("content-length:") && !l.starts_with("transfer-encoding:")
        })
        .collect::<Vec<_>>()
        .join("\r\n");
    out.push_str(&format!("\r\nContent-Length: {len}\r\n\r\n"));
    out
}

/// Serves one client connection, request after request.
fn serve(s: &Shared, mut client: TcpStream) {
    let mut buf = Vec::new();
    while !s.stop.load(Ordering::SeqCst) {
        let Some(head_len) = read_head(&mut client, &mut buf) else { return };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        let body_len: usize =
            header(&head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        while buf.len() < head_len + body_len {
            let mut chunk = [0u8; 8192];
            match client.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let request: Vec<u8> = buf.drain(..head_len + body_len).collect();
        let line = head
            .lines()
            .next()
            .unwrap_or("")
            .rsplit_once(' ')
            .map_or(head.clone(), |(l, _)| l.to_string());
        let fault = s.fault_for(&line, header(&head, "range"));
        let answer = |client: &mut TcpStream, status: &str, extra: &str| {
            client
                .write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n{extra}\r\n").as_bytes(),
                )
                .is_ok()
        };
        match &fault {
            Fault::Refuse => return,
            Fault::Unavailable => {
                if !answer(&mut client, "503 Service Unavailable", "") {
                    return;
                }
                continue;
            }
            Fault::TooMany(after) => {
                if !answer(
                    &mut client,
                    "429 Too Many Requests",
                    &format!("Retry-After: {after}\r\n"),
                ) {
                    return;
                }
                continue;
            }
            _ => {}
        }
        // Ask the upstream, on a connection of our own that it closes after answering.
        let Some((resp_head, body)) =
            ask_upstream(&s.upstream, &request[..head_len], &request[head_len..])
        else {
            let _ = answer(&mut client, "502 Bad Gateway", "");
            return;
        };
        let delimited = header(&resp_head, "content-length").is_some()
            || header(&resp_head, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
        // Keep the client's connection open when the answer's end is marked, as a server would.
        let out_head = if delimited { without_connection(&resp_head) } else { resp_head.clone() };
        let ok = match fault {
            Fault::Pass => {
                client.write_all(out_head.as_bytes()).and_then(|()| client.write_all(&body)).is_ok()
            }
            Fault::Flip => {
                let mut body = body;
                if !body.is_empty() {
                    let at = (body.len() / 2).min(100);
                    body[at] ^= 0x01;
                }
                client.write_all(out_head.as_bytes()).and_then(|()| client.write_all(&body)).is_ok()
            }
            Fault::Truncate => {
                let _ = client
                    .write_all(out_head.as_bytes())
                    .and_then(|()| client.write_all(&body[..body.len() / 2]));
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            Fault::ResetAfter(n) => {
                let _ = client
                    .write_all(out_head.as_bytes())
                    .and_then(|()| client.write_all(&body[..n.min(body.len())]));
                let _ = client.flush();
                // Closing with a zero linger sends RST instead of FIN.
                let _ = rustix::net::sockopt::set_socket_linger(&client, Some(Duration::ZERO));
                return;
            }
            Fault::Trickle(bytes_per_sec) => {
                const TICK: Duration = Duration::from_millis(50);
                let piece = ((bytes_per_sec as f64 * TICK.as_secs_f64()) as usize).max(1);
                let mut ok = client.write_all(out_head.as_bytes()).is_ok();
                for part in body.chunks(piece) {
                    if !ok || s.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(TICK);
                    ok = client.write_all(part).is_ok();
                }
                ok
            }
            Fault::Pad(n) => {
                let total = body.len() as u64 + n;
                let head = with_content_length(&out_head, total);
                let mut ok =
                    client.write_all(head.as_bytes()).is_ok() && client.write_all(&body).is_ok();
                let spaces = [b' '; 64 << 10];
                let mut left = n;
                while ok && left > 0 && !s.stop.load(Ordering::SeqCst) {
                    let piece = left.min(spaces.len() as u64) as usize;
                    ok = client.write_all(&spaces[..piece]).is_ok();
                    left -= piece as u64;
                }
                ok && left == 0
            }
            Fault::Refuse | Fault::Unavailable | Fault::TooMany(_) => {
                unreachable!("answered above")
            }
        };
        if !ok || !delimited {
            return;
        }
    }
}

/// Sends one request upstream with `Connection: close` and reads the whole answer: its head
/// and its body (as sent, chunked or not).
fn ask_upstream(upstream: &str, head: &[u8], body: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut up = TcpStream::connect(upstream).ok()?;
    let head = format!(
        "{}\r\nConnection: close\r\n\r\n",
        without_connection(&String::from_utf8_lossy(head)).trim_end_matches("\r\n")
    );
    up.write_all(head.as_bytes()).ok()?;
    up.write_all(body).ok()?;
    let mut all = Vec::new();
    up.read_to_end(&mut all).ok()?;
    let end = all.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let body = all.split_off(end);
    Some((String::from_utf8_lossy(&all).into_owned(), body))
}

/// An HTTP date (IMF-fixdate) `from_now` ahead, for `Retry-After`.
/// Also the instant the date names: `from_now` ahead, down to the whole second.
pub fn http_date_in(from_now: Duration) -> (String, std::time::SystemTime) {
    let at = (std::time::SystemTime::now() + from_now)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = std::process::Command::new("date")
        .args(["-u", &format!("--date=@{at}"), "+%a, %d %b %Y %H:%M:%S GMT"])
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    assert!(out.status.success());
    let date = String::from_utf8(out.stdout).unwrap().trim().to_string();
    (date, std::time::UNIX_EPOCH + Duration::from_secs(at))
}
