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

/// The highest resident set `child` reached (its VmHWM, polled) and its output.
fn peak_rss(child: std::process::Child) -> (u64, std::process::Output) {
    let status = format!("/proc/{}/status", child.id());
    let waiting = std::thread::spawn(move || child.wait_with_output().unwrap());
    let mut peak = 0;
    while !waiting.is_finished() {
        let kib = std::fs::read_to_string(&status).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix(" kB")?.parse().ok())
        });
        peak = peak.max(kib.unwrap_or(0) * 1024);
        std::thread::sleep(Duration::from_millis(20));
    }
    (peak, waiting.join().unwrap())
}

#[test]
fn an_oversized_manifest_is_refused_before_it_is_read() {
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    push_naiad_image(&reg, work.path(), &["naiad/big:1"]);
    // A real registry refuses to store a manifest over 4 MiB, so the relay makes every answer
    // 1 GiB larger (with spaces: the JSON stays valid), as a hostile registry would.
    let relay = FaultyProxy::start(&reg.addr);
    relay.set(Fault::Pad(1 << 30));
    let started = Instant::now();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_naiad"))
        .args(["check", &format!("docker://{}/naiad/big:1", relay.addr), "--insecure"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (peak, out) = peak_rss(child);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("MAX_MANIFEST_BYTES (4194304 bytes)"), "{stderr}");
    assert!(peak < 256 << 20, "naiad check reached {} MiB", peak >> 20);
    assert!(started.elapsed() < SLACK, "refused after {:?}", started.elapsed());
}

#[test]
fn a_gzip_bomb_as_the_bootstrap_layer_is_refused_in_bounded_memory() {
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    push_naiad_image(&reg, work, &["naiad/ok:1"]);
    let layout = work.join("naiad");
    // The bootstrap layer rebuilt: its bootstrap first, then 1.5 GiB of zeros (1.5 MB gzipped).
    let desc = tag_descriptor(&layout, "1");
    let mut m = image_manifest(&layout, "1");
    let layers = m["layers"].as_array_mut().unwrap();
    let boot = layers.iter_mut().find(|l| l["mediaType"] == naiad_oci::media::NAIAD_BOOTSTRAP);
    let boot = boot.expect("a bootstrap layer");
    let wrapped = read_blob(&layout, boot["digest"].as_str().unwrap());
    let tree = work.join("bomb");
    std::fs::create_dir_all(tree.join("naiad")).unwrap();
    let bootstrap = naiad_oci::bootstrap_layer::unwrap(&wrapped, "test").unwrap();
    std::fs::write(tree.join("naiad/bootstrap"), bootstrap).unwrap();
    std::fs::File::create(tree.join("zeros")).unwrap().set_len(3 << 29).unwrap();
    let sh = format!("tar -C {} -cf - naiad/bootstrap zeros | gzip -1", tree.display());
    let bomb = std::process::Command::new("sh").args(["-c", &sh]).output().unwrap().stdout;
    assert!(bomb.len() < 8 << 20, "{} bytes", bomb.len());
    let (digest, size) = write_blob(&layout, &bomb);
    boot["digest"] = digest.into();
    boot["size"] = size.into();
    let (digest, size) = write_blob(&layout, &serde_json::to_vec(&m).unwrap());
    let mut index = read_index(&layout);
    for d in index["manifests"].as_array_mut().unwrap() {
        if d["digest"] == desc["digest"] {
            d["digest"] = digest.clone().into();
            d["size"] = size.into();
        }
    }
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    skopeo_copy(&format!("oci:{}:1", layout.display()), &reg.docker_ref("naiad/bomb:1"), None);

    let child = std::process::Command::new(env!("CARGO_BIN_EXE_naiad"))
        .args(["check", &reg.docker_ref("naiad/bomb:1"), "--insecure"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (peak, out) = peak_rss(child);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("MAX_BOOTSTRAP_LAYER_SIZE_BYTES"), "{stderr}");
    assert!(peak < 512 << 20, "naiad check reached {} MiB", peak >> 20);
}
