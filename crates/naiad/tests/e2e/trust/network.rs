//! Network peers are not trusted either: a registry that trickles its answers fails the
//! mounts of its own images within their time limit and delays no other image's.

use crate::support as common;

use common::faulty::{Fault, FaultyProxy};
use common::registry::*;
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// The per-request limit `naiad ctl mount` sends with a mount (its `timeout_secs`).
const CTL_TIMEOUT: Duration = Duration::from_secs(10);
/// Scheduling on a busy 2-core machine, a mount's own work: what a bounded operation may
/// take beyond its limit.
const SLACK: Duration = Duration::from_secs(10);
/// Bytes per second a trickling relay sends: a manifest then takes about a minute.
const TRICKLE_BYTES_PER_SEC: u64 = 20;

/// The busybox test image converted and pushed to `reg` under each of `names`.
fn push_naiad_image(reg: &Registry, work: &Path, names: &[&str]) {
    let layout = work.join("bb");
    busybox_oci_layout(&layout, "1");
    let naiad = format!("oci:{}:1", work.join("naiad").display());
    naiad_ok(args!["convert", format!("oci:{}:1", layout.display()), naiad]);
    for name in names {
        skopeo_copy(&naiad, &reg.docker_ref(name), None);
    }
}

/// `naiad ctl --api SOCK ARGS...`.
fn ctl(sock: &Path, args: &[&str]) -> std::process::Output {
    let mut all: Vec<&std::ffi::OsStr> = vec!["ctl".as_ref(), "--api".as_ref(), sock.as_os_str()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    naiad(&all)
}

#[test]
fn a_trickling_registry_times_out_and_delays_no_other_image() {
    require!(Root);
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let _cleanup = BelowGuard(work.to_path_buf());
    push_naiad_image(&reg, work, &["naiad/slow:1", "naiad/fast:1"]);
    let relay = FaultyProxy::start(&reg.addr);
    relay.set(Fault::Trickle(TRICKLE_BYTES_PER_SEC));
    let mut daemon = start_daemon(work);
    let sock = work.join("run/api.sock");
    let (slow_mnt, fast_mnt) = (work.join("slow"), work.join("fast"));
    std::fs::create_dir_all(&slow_mnt).unwrap();
    std::fs::create_dir_all(&fast_mnt).unwrap();

    // The slow image's mount goes first and stays in flight (its manifest trickling in).
    let slow = {
        let (sock, mnt) = (sock.clone(), slow_mnt.clone());
        let image = format!("docker://{}/naiad/slow:1", relay.addr);
        std::thread::spawn(move || {
            let started = Instant::now();
            let args = ["mount", &image, mnt.to_str().unwrap(), "--insecure", "--no-prefetch"];
            (ctl(&sock, &args), started.elapsed())
        })
    };
    let in_flight = Instant::now();
    while !relay.seen().iter().any(|s| s.request.contains("/manifests/")) {
        assert!(in_flight.elapsed() < SLACK, "the slow image's manifest was never asked for");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Meanwhile another image of the same registry, asked for directly, mounts, serves and
    // unmounts in its usual time.
    let started = Instant::now();
    let image = reg.docker_ref("naiad/fast:1");
    let fast = ctl(&sock, &["mount", &image, fast_mnt.to_str().unwrap(), "--insecure"]);
    assert!(fast.status.success(), "{}", String::from_utf8_lossy(&fast.stderr));
    assert_eq!(
        std::fs::read(fast_mnt.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    let out = ctl(&sock, &["umount", fast_mnt.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        started.elapsed() < SLACK,
        "the other image took {:?} beside a trickling registry",
        started.elapsed()
    );

    // The slow one fails on its own, within its limit, saying it timed out.
    let bound = CTL_TIMEOUT + SLACK;
    while !slow.is_finished() && in_flight.elapsed() < bound {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !slow.is_finished() {
        kill9(&mut daemon);
        panic!("the trickled mount was still waiting after {bound:?}");
    }
    let (out, took) = slow.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the trickled mount succeeded");
    assert!(stderr.contains("timed out") && stderr.contains("10 s"), "{stderr}");
    assert!(took < bound, "the trickled mount failed after {took:?}");
    assert!(!slow_mnt.join("bin").exists(), "the trickled image is mounted");
    kill9(&mut daemon);
}
