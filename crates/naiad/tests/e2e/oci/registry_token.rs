//! Bearer-token auth against the real registry: Debian's `docker-registry` with `auth: token`,
//! and a token issuer written for the tests (`common::token`). `naiad convert` pushes with a
//! token, `naiad mount` reads lazily with tokens in both modes, a wrong password fails cleanly
//! without printing it, and tokens that expire during reads are renewed.
//!
//! Needs root (mounting, umoci) and the Debian packages docker-registry, skopeo, umoci and
//! openssl (see `scripts/install-deps.sh`).

use crate::support as common;

use common::registry::*;
use common::token::{base64, TokenIssuer, STD_ALPHABET};
use common::tree::make_tree;
use common::*;
use naiad_storage::backend::{Backend, RegistryBackend, RegistryOptions};
use naiad_storage::credentials::RegistryAuth;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const USER: &str = "naiad-token-user";
const PASSWORD: &str = "t0ken-pass phrase";
/// A wrong password that must never show up in any output.
const WRONG_PASSWORD: &str = "Wr0ng-pa55-xyzzy";
/// The repository and tag the converted image is pushed to.
const IMAGE: &str = "naiad/tree:1";
/// How long a `naiad` command or a mount may take before the test fails (a hang).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// A file of the test tree that exists once a mount serves it.
const PROBE: &str = "files/tiny";

/// A token-auth registry, its issuer, and the test tree as an OCI layout.
struct Setup {
    issuer: TokenIssuer,
    reg: Registry,
    /// `layout/` the OCI layout (tag `1`), `expected/rootfs` the tree in it (see `tree_layout`).
    dir: tempfile::TempDir,
}

impl Drop for Setup {
    /// Detaches whatever a failed test left mounted below the directory (a killed kernel-mode
    /// server leaves its blob views), deepest first, so the directory can be removed.
    fn drop(&mut self) {
        let root = format!("{}/", self.dir.path().display());
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut below: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&root))
            .collect();
        below.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in below {
            let _ = rustix::mount::unmount(m, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

impl Setup {
    fn new() -> Setup {
        assert!(is_root(), "needs root: umoci keeps ownership, the tests mount");
        let issuer = TokenIssuer::start(USER, PASSWORD);
        let reg = Registry::start_with_token_auth(&issuer);
        let dir = tempfile::Builder::new().prefix("naiad-registry-token").tempdir().unwrap();
        tree_layout(
            &dir.path().join("layout"),
            &dir.path().join("bundle"),
            &dir.path().join("expected"),
        );
        Setup { issuer, reg, dir }
    }

    fn layout_ref(&self) -> String {
        format!("oci:{}:1", self.dir.path().join("layout").display())
    }

    /// The tree the image holds.
    fn src(&self) -> PathBuf {
        self.dir.path().join("expected/rootfs")
    }

    /// `docker://127.0.0.1:PORT/naiad/tree:1` (naiad and skopeo both take it).
    fn image(&self) -> String {
        self.reg.docker_ref(IMAGE)
    }

    /// A docker config holding `password` for the registry.
    fn docker_config(&self, password: &str) -> DockerConfig {
        DockerConfig::new(&self.reg.addr, USER, password)
    }

    /// Converts the layout into the registry with the right credentials.
    fn push(&self) {
        let cfg = self.docker_config(PASSWORD);
        let out = cfg.naiad(&["convert", &self.layout_ref(), &self.image(), "--insecure"]);
        out.assert_success();
    }
}

/// The test tree (`make_tree`, without what a tar layer cannot hold: the socket) packed by umoci
/// as the only layer of `layout:1`, and unpacked again by umoci at `expected`: the tree as the
/// layer holds it (umoci keeps whole-second mtimes only, and turns the overlay opaque xattr
/// into an opaque whiteout).
fn tree_layout(layout: &Path, bundle: &Path, expected: &Path) {
    let image = format!("{}:1", layout.display());
    run_ok(Command::new("umoci").args(["init", "--layout"]).arg(layout));
    run_ok(Command::new("umoci").args(["new", "--image", &image]));
    run_ok(Command::new("umoci").args(["unpack", "--image", &image]).arg(bundle));
    let rootfs = bundle.join("rootfs");
    make_tree(&rootfs, false);
    fs::remove_file(rootfs.join("special/socket")).unwrap();
    run_ok(Command::new("umoci").args(["repack", "--image", &image]).arg(bundle));
    run_ok(Command::new("umoci").args(["gc", "--layout"]).arg(layout));
    run_ok(Command::new("umoci").args(["unpack", "--image", &image]).arg(expected));
}

/// `$DOCKER_CONFIG` for naiad: a temporary directory whose `config.json` holds one `auths`
/// entry (`auth`: base64 of `user:password`); its `tmp/` is the commands' `$TMPDIR`.
struct DockerConfig(tempfile::TempDir);

impl DockerConfig {
    fn new(registry: &str, user: &str, password: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("naiad-docker-config").tempdir().unwrap();
        let auth = base64(format!("{user}:{password}").as_bytes(), STD_ALPHABET, true);
        let config = serde_json::json!({ "auths": { registry: { "auth": auth } } });
        fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        fs::create_dir(dir.path().join("tmp")).unwrap();
        DockerConfig(dir)
    }

    /// `naiad ARGS` with this config, output to files, started but not waited for.
    fn spawn(&self, args: &[&str]) -> Running {
        let logs = tempfile::tempdir().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_naiad"))
            .args(args)
            .env("DOCKER_CONFIG", self.0.path())
            .env("TMPDIR", self.0.path().join("tmp"))
            .env_remove("NAIAD_LOG")
            .stdin(Stdio::null())
            .stdout(fs::File::create(logs.path().join("stdout")).unwrap())
            .stderr(fs::File::create(logs.path().join("stderr")).unwrap())
            .spawn()
            .expect("spawn naiad");
        Running { args: args.iter().map(|a| a.to_string()).collect(), child: Some(child), logs }
    }

    /// `naiad ARGS` with this config, waited for.
    fn naiad(&self, args: &[&str]) -> Finished {
        self.spawn(args).wait()
    }
}

/// A `naiad` process; killed on drop if still running.
struct Running {
    args: Vec<String>,
    child: Option<Child>,
    logs: tempfile::TempDir,
}

impl Running {
    fn output(&self) -> (String, String) {
        let read = |name: &str| fs::read_to_string(self.logs.path().join(name)).unwrap_or_default();
        (read("stdout"), read("stderr"))
    }

    /// Whether it has exited (and then how).
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().unwrap().try_wait().unwrap()
    }

    /// Waits for it to exit, failing the test after [`COMMAND_TIMEOUT`].
    fn wait(mut self) -> Finished {
        let started = Instant::now();
        let status = loop {
            if let Some(s) = self.exited() {
                break s;
            }
            assert!(
                started.elapsed() < COMMAND_TIMEOUT,
                "naiad {:?} hangs; stderr so far:\n{}",
                self.args,
                self.output().1
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        self.child = None;
        let (stdout, stderr) = self.output();
        Finished { args: self.args.clone(), status, stdout, stderr }
    }
}

impl Drop for Running {
    /// SIGTERM first (a mount server then unmounts both of its layers), SIGKILL if it lingers.
    fn drop(&mut self) {
        let Some(c) = self.child.as_mut() else { return };
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(c),
            rustix::process::Signal::TERM,
        );
        let started = Instant::now();
        while c.try_wait().ok().flatten().is_none() && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// How a `naiad` command ended.
struct Finished {
    args: Vec<String>,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn describe(&self) -> String {
        format!(
            "naiad {:?}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args, self.status, self.stdout, self.stderr
        )
    }

    fn assert_success(&self) {
        assert!(self.status.success(), "expected success: {}", self.describe());
    }

    /// Exit 1 with a `naiad: error:` line that holds every one of `phrases` (any case), and
    /// neither the password nor its base64 anywhere.
    fn assert_auth_failure(&self, phrases: &[&str]) {
        assert_eq!(self.status.code(), Some(1), "expected exit 1: {}", self.describe());
        let error = self
            .stderr
            .lines()
            .find(|l| l.contains("naiad: error:"))
            .unwrap_or_else(|| panic!("no error line: {}", self.describe()));
        for p in phrases {
            assert!(
                error.to_lowercase().contains(&p.to_lowercase()),
                "the error lacks {p:?}: {}",
                self.describe()
            );
        }
        let encoded = base64(format!("{USER}:{WRONG_PASSWORD}").as_bytes(), STD_ALPHABET, true);
        for secret in [WRONG_PASSWORD, encoded.as_str()] {
            assert!(
                !self.stderr.contains(secret) && !self.stdout.contains(secret),
                "the password leaked: {}",
                self.describe()
            );
        }
    }
}

/// Starts `naiad mount IMAGE MNT --mode MODE` below `work` and waits until it serves [`PROBE`].
fn mount(cfg: &DockerConfig, image: &str, work: &Path, mode: &str) -> (Running, MountGuard) {
    let mnt = work.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let (cache, run) = (work.join("cache"), work.join("run"));
    let mut running = cfg.spawn(&[
        "mount",
        image,
        mnt.to_str().unwrap(),
        "--insecure",
        "--mode",
        mode,
        "--cache-dir",
        cache.to_str().unwrap(),
        "--runtime-dir",
        run.to_str().unwrap(),
    ]);
    let guard = MountGuard(mnt.clone());
    let started = Instant::now();
    while !mnt.join(PROBE).exists() {
        if let Some(status) = running.exited() {
            panic!("naiad mount ({mode}) exited with {status}:\n{}", running.output().1);
        }
        assert!(
            started.elapsed() < COMMAND_TIMEOUT,
            "{mode} mount did not come up:\n{}",
            running.output().1
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (running, guard)
}

/// `naiad umount MNT`, then the mount process must exit successfully.
fn unmount(running: Running, guard: MountGuard) {
    naiad_ok(args!["umount", guard.0]);
    let finished = running.wait();
    finished.assert_success();
    assert!(fs::read_dir(&guard.0).unwrap().next().is_none(), "still mounted");
}

/// The entries below `root` (the root directory itself is the mountpoint's or the bundle's).
fn tree_below(root: &Path) -> std::collections::BTreeMap<Vec<u8>, Entry> {
    let mut t = snapshot(root);
    t.remove(&b""[..]);
    t
}

#[test]
fn the_issuer_works_with_skopeo_and_refuses_a_wrong_password() {
    require!(Root);
    let issuer = TokenIssuer::start(USER, PASSWORD);
    let reg = Registry::start_with_token_auth(&issuer);
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("bb");
    busybox_oci_layout(&layout, "1");
    let src = format!("oci:{}:1", layout.display());
    let dst = reg.docker_ref("test/bb:1");
    let out = try_skopeo_copy(&src, &dst, Some((USER, WRONG_PASSWORD)), &[]);
    assert!(!out.status.success(), "a push with a wrong password succeeded");
    assert!(issuer.refused() > 0, "the issuer was not asked");
    assert_eq!(issuer.issued(), 0);
    skopeo_copy(&src, &dst, reg.creds());
    assert!(
        issuer.scopes().iter().any(|s| s == "repository:test/bb:pull,push"),
        "{:?}",
        issuer.scopes()
    );
    let info = skopeo_inspect(&dst, reg.creds(), &[]);
    assert_eq!(info["Layers"].as_array().unwrap().len(), 2, "{info}");
}

#[test]
fn convert_pushes_and_both_modes_mount_lazily_with_tokens() {
    require!(Root);
    let s = Setup::new();
    s.push();
    let after_push = s.issuer.issued();
    assert!(after_push > 0, "convert pushed without a token");
    assert!(
        s.issuer
            .scopes()
            .iter()
            .any(|x| x.contains("repository:naiad/tree:") && x.contains("push")),
        "{:?}",
        s.issuer.scopes()
    );
    // An independent client reads what was pushed.
    let info = skopeo_inspect(&s.image(), s.reg.creds(), &[]);
    assert!(!info["Layers"].as_array().unwrap().is_empty(), "{info}");

    let expected = tree_below(&s.src());
    let cfg = s.docker_config(PASSWORD);
    for mode in ["fanotify", "kernel", "fuse"] {
        let before = s.issuer.issued();
        let work = s.dir.path().join(mode);
        let (running, guard) = mount(&cfg, &s.image(), &work, mode);
        assert_same_tree(mode, &expected, &tree_below(&guard.0), Skip::default());
        assert!(s.issuer.issued() > before, "{mode}: the mount read without a token");
        unmount(running, guard);
    }
}

#[test]
fn a_wrong_password_fails_with_a_clear_error_and_is_never_printed() {
    require!(Root);
    let s = Setup::new();
    let bad = s.docker_config(WRONG_PASSWORD);
    let out = bad.naiad(&["convert", &s.layout_ref(), &s.image(), "--insecure"]);
    out.assert_auth_failure(&[&s.reg.addr, "auth"]);
    assert!(s.issuer.refused() > 0, "the issuer was not asked");
    assert_eq!(s.issuer.issued(), 0);

    s.push();
    let work = s.dir.path().join("mount");
    let mnt = work.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let _guard = MountGuard(mnt.clone());
    let refused = s.issuer.refused();
    let out = bad.naiad(&[
        "mount",
        &s.image(),
        mnt.to_str().unwrap(),
        "--insecure",
        "--cache-dir",
        work.join("cache").to_str().unwrap(),
        "--runtime-dir",
        work.join("run").to_str().unwrap(),
    ]);
    out.assert_auth_failure(&[&s.reg.addr, "auth"]);
    assert!(s.issuer.refused() > refused, "the issuer was not asked");
    assert!(fs::read_dir(&mnt).unwrap().next().is_none(), "mounted anyway");

    // The lazy read path on its own: the token request is refused, the password not shown.
    let digest = registry_blob_digest(&s);
    let opts = RegistryOptions {
        auth: RegistryAuth::Basic(USER.into(), WRONG_PASSWORD.into()),
        insecure: true,
        timeout: Duration::from_secs(2),
        attempts: 2,
        ..RegistryOptions::new(&s.reg.addr, "naiad/tree")
    };
    let err = RegistryBackend::new(opts).unwrap().read(&digest, 0, 10).unwrap_err().to_string();
    assert!(err.contains(&s.reg.addr) && err.contains("token request answered 401"), "{err}");
    assert!(!err.contains(WRONG_PASSWORD), "the password leaked: {err}");
}

/// The digest of the first layer of the pushed image, as read by skopeo.
fn registry_blob_digest(s: &Setup) -> [u8; 32] {
    let raw = skopeo_inspect(&s.image(), s.reg.creds(), &["--raw"]);
    let digest = raw["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:");
    hex::decode(digest).unwrap().try_into().unwrap()
}

#[test]
fn expired_tokens_are_renewed_while_reading() {
    require!(Root);
    let s = Setup::new();
    s.push();
    // From now on the registry takes each token for two seconds only.
    s.issuer.set_token_lifetime(Duration::from_secs(2));
    let cfg = s.docker_config(PASSWORD);
    let work = s.dir.path().join("expiry");
    let (running, guard) = mount(&cfg, &s.image(), &work, "kernel");
    let mnt = guard.0.clone();
    // One file read with the first token the mount's backend gets.
    let first = "files/multi_chunk";
    assert_eq!(fs::read(mnt.join(first)).unwrap(), fs::read(s.src().join(first)).unwrap());
    let before = s.issuer.issued();
    // Every token issued so far is now refused by the registry.
    std::thread::sleep(Duration::from_secs(3));
    assert_same_tree(
        "after the tokens expired",
        &tree_below(&s.src()),
        &tree_below(&mnt),
        Skip::default(),
    );
    assert!(s.issuer.issued() > before, "no new token: nothing was read after the expiry?");
    unmount(running, guard);
}
