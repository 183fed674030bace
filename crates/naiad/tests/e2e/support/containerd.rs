//! A private containerd (its own root, state, sockets, runc root, fifo dir and cgroup) with
//! `naiad snapshotter` as its `naiad` proxy plugin, for the end-to-end tests. Dropping them
//! kills the containers, stops containerd, the snapshotter and the daemon it started, and
//! unmounts what is left under their directories.

use super::registry::run;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Whether containerd and runc are here (the tests skip otherwise, saying so).
pub fn available() -> bool {
    ["containerd", "ctr", "runc"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Child,
    cgroup: String,
}

impl Containerd {
    /// Starts containerd in `dir` with the proxy snapshotter `naiad` at `snapshotter_socket`.
    pub fn start(dir: &Path, snapshotter_socket: &Path) -> Containerd {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "{s}"
[ttrpc]
  address = "{d}/ttrpc.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[proxy_plugins.naiad]
  type = "snapshot"
  address = "{sn}"
"#,
            d = dir.display(),
            s = socket.display(),
            sn = snapshotter_socket.display()
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Containerd {
            dir: dir.to_path_buf(),
            socket,
            child,
            cgroup: format!(
                "naiad-test-{}-{}",
                std::process::id(),
                dir.file_name().unwrap().to_string_lossy()
            ),
        };
        let started = Instant::now();
        while !c.ctr(&["version"]).status.success() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "containerd did not start: {}",
                std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        run(Command::new("ctr").arg("-a").arg(&self.socket).args(args))
    }

    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `ctr run` with runc state, fifos and the cgroup kept to this containerd's own places.
    pub fn run_args(&self, id: &str) -> Vec<String> {
        vec![
            "run".into(),
            "--runc-root".into(),
            self.dir.join("runc").display().to_string(),
            "--fifo-dir".into(),
            self.dir.join("fifo").display().to_string(),
            "--cgroup".into(),
            format!("/{}/{id}", self.cgroup),
        ]
    }

    /// Runs `cmd` in a new container of `image` (snapshotter naiad) and returns its output.
    pub fn run_container(&self, image: &str, id: &str, cmd: &[&str]) -> String {
        let mut args = self.run_args(id);
        args.extend([
            "--rm".into(),
            "--snapshotter".into(),
            "naiad".into(),
            image.into(),
            id.into(),
        ]);
        args.extend(cmd.iter().map(|s| s.to_string()));
        self.ctr_ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in String::from_utf8_lossy(&self.ctr(&["tasks", "ls", "-q"]).stdout).lines() {
            let _ = self.ctr(&["tasks", "kill", "-s", "KILL", id]);
        }
        std::thread::sleep(Duration::from_millis(300));
        for id in String::from_utf8_lossy(&self.ctr(&["tasks", "ls", "-q"]).stdout).lines() {
            let _ = self.ctr(&["tasks", "delete", "-f", id]);
        }
        for id in String::from_utf8_lossy(&self.ctr(&["containers", "ls", "-q"]).stdout).lines() {
            let _ = self.ctr(&["containers", "rm", id]);
        }
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        );
        let until = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_processes_naming(&self.dir);
        unmount_below(&self.dir);
        for d in glob_dirs("/sys/fs/cgroup") {
            let g = d.join(&self.cgroup);
            if let Ok(rd) = std::fs::read_dir(&g) {
                for e in rd.flatten().filter(|e| e.path().is_dir()) {
                    let _ = std::fs::remove_dir(e.path());
                }
                let _ = std::fs::remove_dir(&g);
            }
        }
        // The shims' sockets go to /run/containerd/s whatever the config says.
        let _ = std::fs::remove_dir("/run/containerd/s");
        let _ = std::fs::remove_dir("/run/containerd");
    }
}

/// `/sys/fs/cgroup` itself (cgroup v2) and its controller directories (v1).
fn glob_dirs(root: &str) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from(root)];
    if let Ok(rd) = std::fs::read_dir(root) {
        out.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    out
}

/// Kills every process whose command line names `dir` (the shims, a daemon the snapshotter
/// started in its own session).
pub fn kill_processes_naming(dir: &Path) {
    let needle = dir.display().to_string();
    let Ok(rd) = std::fs::read_dir("/proc") else { return };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if pid == std::process::id() as i32 {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).replace('\0', " ").contains(&needle) {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(200));
}

/// Lazily unmounts everything mounted below `dir`, deepest first.
pub fn unmount_below(dir: &Path) {
    let prefix = dir.display().to_string();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(|m| m.replace("\\040", " "))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = rustix::mount::unmount(p.as_str(), rustix::mount::UnmountFlags::DETACH);
    }
}

/// `naiad snapshotter` serving `dir/snapshotter.sock` with its root in `dir/root` (so its
/// daemon's API is `dir/root/daemon/api.sock` and its cache `dir/root/cache`).
pub struct Snapshotter {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub root: PathBuf,
    child: Option<Child>,
    insecure: String,
}

impl Snapshotter {
    pub fn start(dir: &Path, insecure_registry: &str) -> Snapshotter {
        std::fs::create_dir_all(dir).unwrap();
        let mut s = Snapshotter {
            dir: dir.to_path_buf(),
            socket: dir.join("snapshotter.sock"),
            root: dir.join("root"),
            child: None,
            insecure: insecure_registry.into(),
        };
        s.restart();
        s
    }

    /// Starts it (again) and waits for its socket.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("snapshotter.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_naiad"))
            .args(["snapshotter", "--address"])
            .arg(&self.socket)
            .arg("--root")
            .arg(&self.root)
            .args(["--insecure-registry", &self.insecure])
            .env("NAIAD_LOG", "info")
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let started = Instant::now();
        while !self.log().contains(&format!("snapshotter serving {}", self.socket.display()))
            || !self.socket.exists()
        {
            assert!(
                self.child.as_mut().unwrap().try_wait().unwrap().is_none(),
                "the snapshotter exited: {}",
                self.log()
            );
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the snapshotter did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("snapshotter.log")).unwrap_or_default()
    }

    pub fn daemon_api(&self) -> PathBuf {
        self.root.join("daemon/api.sock")
    }

    /// The daemon's Prometheus metrics.
    pub fn metrics(&self) -> String {
        naiad_daemon::client::DaemonClient::new(self.daemon_api()).metrics().unwrap()
    }

    /// Sum of a metric's samples (all label sets).
    pub fn metric_sum(&self, name: &str) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Mountpoints of lazy images (below the root's images directory).
    pub fn image_mounts(&self) -> Vec<String> {
        let prefix = self.root.join("images").display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        self.kill();
        // The daemon it started: SIGTERM unmounts its mounts.
        if let Ok(status) = naiad_daemon::client::DaemonClient::new(self.daemon_api()).status() {
            if let Some(p) = rustix::process::Pid::from_raw(status.pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
                let until = Instant::now() + Duration::from_secs(10);
                while rustix::process::test_kill_process(p).is_ok() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        kill_processes_naming(&self.dir);
        unmount_below(&self.dir);
    }
}
