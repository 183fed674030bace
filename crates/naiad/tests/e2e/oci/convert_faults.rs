//! `naiad convert` against a registry that fails for a while: transient errors (503) are
//! retried and the conversion succeeds; a registry that keeps failing gives a clear error.

use crate::support as common;

use common::registry::*;
use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A TCP relay to `upstream` whose first `failures` connections get `503` instead.
struct FlakyProxy {
    addr: String,
    failed: Arc<AtomicUsize>,
}

impl FlakyProxy {
    fn start(upstream: String, failures: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let failed = Arc::new(AtomicUsize::new(0));
        let count = failed.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut client) = conn else { return };
                if count.load(Ordering::SeqCst) < failures {
                    count.fetch_add(1, Ordering::SeqCst);
                    let mut buf = [0u8; 4096];
                    let _ = client.read(&mut buf);
                    let _ = client.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    continue;
                }
                let upstream = upstream.clone();
                std::thread::spawn(move || {
                    let Ok(server) = TcpStream::connect(&upstream) else { return };
                    let (mut c2, mut s2) =
                        (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let t = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c2, &mut s2);
                        let _ = s2.shutdown(std::net::Shutdown::Write);
                    });
                    let (mut c, mut s) = (client, server);
                    let _ = std::io::copy(&mut s, &mut c);
                    let _ = c.shutdown(std::net::Shutdown::Write);
                    let _ = t.join();
                });
            }
        });
        FlakyProxy { addr, failed }
    }
}

fn source_image(reg: &Registry) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("bb");
    busybox_oci_layout(&layout, "1");
    skopeo_copy(&format!("oci:{}:1", layout.display()), &reg.docker_ref("src/bb:1"), None);
    dir
}

#[test]
fn transient_registry_errors_are_retried() {
    require!(Root);
    let reg = Registry::start(None);
    let _src = source_image(&reg);
    let proxy = FlakyProxy::start(reg.addr.clone(), 2);
    let src = format!("docker://{}/src/bb:1", proxy.addr);
    let dst = format!("docker://{}/naiad/bb:1", proxy.addr);
    let out = naiad(args!["convert", src, dst, "--insecure"]);
    assert!(
        out.status.success(),
        "convert failed through 503s: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(proxy.failed.load(Ordering::SeqCst), 2, "the proxy failed two requests");
    naiad_ok(args!["check", reg.docker_ref("naiad/bb:1"), "--insecure"]);
}

#[test]
fn a_registry_that_keeps_failing_gives_a_clear_error() {
    require!(Root);
    let reg = Registry::start(None);
    let _src = source_image(&reg);
    let proxy = FlakyProxy::start(reg.addr.clone(), usize::MAX);
    let src = format!("docker://{}/src/bb:1", proxy.addr);
    let out_dir = tempfile::tempdir().unwrap();
    let dst = format!("oci:{}:x", out_dir.path().join("out").display());
    let started = std::time::Instant::now();
    let out = naiad(args!["convert", src, dst, "--insecure"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("503") && !err.contains("panicked"), "{err}");
    assert!(started.elapsed().as_secs() < 30, "gave up only after {:?}", started.elapsed());
    assert!(!out_dir.path().join("out").exists(), "a failed conversion left a layout behind");
}
