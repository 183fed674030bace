//! Starting a keeper process with descriptors it inherits, taking descriptors over from one,
//! and turning inherited descriptor numbers into owned descriptors in the keeper.
#![allow(unsafe_code)]

use crate::{FsError, Result};
use rustix::io::FdFlags;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a keeper may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a keeper process (`cmd`) in its own session (a signal to our process group does
/// not reach it) with `fds` kept open across exec, its stderr in `sock`.log; returns once it
/// accepts connections on `sock`.
pub(crate) fn spawn_keeper(
    mut cmd: std::process::Command,
    fds: &[BorrowedFd<'_>],
    sock: &Path,
    what: &str,
) -> Result<UnixStream> {
    let _ = std::fs::remove_file(sock);
    let log_path = sock.with_extension("log");
    let log = std::fs::File::create(&log_path).map_err(FsError::io(&log_path))?;
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(log);
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and makes only raw
    // syscalls (setsid, fcntl), which are async-signal-safe; it allocates nothing. The
    // descriptors are the caller's, open for the whole call (borrowed), so they are open in
    // the child too.
    unsafe {
        cmd.pre_exec(move || {
            let _ = rustix::process::setsid();
            for &fd in &raw {
                let fd = BorrowedFd::borrow_raw(fd);
                let flags = rustix::io::fcntl_getfd(fd)?;
                rustix::io::fcntl_setfd(fd, flags - FdFlags::CLOEXEC)?;
            }
            Ok(())
        });
    }
    let exe = cmd.get_program().to_owned();
    let mut child = cmd.spawn().map_err(|e| FsError::Io { path: exe.into(), cause: e })?;
    let started = Instant::now();
    loop {
        if let Ok(s) = UnixStream::connect(sock) {
            // Reap it if it exits later (it is in its own session; nobody else waits for it).
            std::thread::spawn(move || child.wait());
            return Ok(s);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(FsError::Invalid(format!(
                "the {what} exited ({status}); see {}",
                log_path.display()
            )));
        }
        if started.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            return Err(FsError::Invalid(format!(
                "the {what} did not start within {} s",
                START_TIMEOUT.as_secs()
            )));
        }
        // It starts in a few milliseconds: a mount waits for it.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Makes `cmd` start its process in a session of its own (`setsid`): a signal to this
/// process's group or session does not reach it, so it outlives this process.
pub fn in_new_session(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and makes one raw syscall
    // (setsid), which is async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            let _ = rustix::process::setsid();
            Ok(())
        });
    }
}

/// A copy of descriptor `fd` of process `pid` (`pidfd_getfd`; needs the right to ptrace it).
pub(crate) fn copy_fd(pid: u32, fd: RawFd) -> std::io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "pid 0"))?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
    Ok(rustix::process::pidfd_getfd(pidfd, fd, rustix::process::PidfdGetfdFlags::empty())?)
}

/// Takes ownership of descriptor `fd`, inherited across exec from the process that started
/// this one (a keeper's `--fd` arguments). Refused unless it is open, is not stdin, stdout or
/// stderr, was not opened by this process (those are close-on-exec: Rust opens every
/// descriptor so, and [`spawn_keeper`] clears the flag only on the ones it hands down), and
/// was not taken before: so no descriptor gets two owners. It is made close-on-exec again.
pub fn inherited_fd(fd: RawFd) -> std::io::Result<OwnedFd> {
    static TAKEN: std::sync::Mutex<Vec<RawFd>> = std::sync::Mutex::new(Vec::new());
    let refuse = |why: &str| {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("descriptor {fd}: {why}"),
        ))
    };
    if fd <= 2 {
        return refuse("not an inherited descriptor");
    }
    let mut taken = TAKEN.lock().expect("inherited descriptors");
    if taken.contains(&fd) {
        return refuse("taken already");
    }
    // SAFETY: only borrowed for the checks below, while this function holds the list of
    // descriptors taken; the call fails on a number that is not an open descriptor.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let flags = rustix::io::fcntl_getfd(borrowed)?;
    if flags.contains(FdFlags::CLOEXEC) {
        return refuse("opened by this process, not inherited");
    }
    rustix::io::fcntl_setfd(borrowed, flags | FdFlags::CLOEXEC)?;
    taken.push(fd);
    // SAFETY: the descriptor is open, was inherited across exec (close-on-exec was clear, and
    // this process opens none so), and no owner was made of it before (the list above).
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_inherited_descriptors_are_taken_and_only_once() {
        let own = std::fs::File::open("/dev/null").unwrap();
        let raw = own.as_raw_fd();
        let e = inherited_fd(raw).unwrap_err().to_string();
        assert!(e.contains("not inherited"), "{e}");
        assert!(inherited_fd(1).is_err() && inherited_fd(-1).is_err());
        // What a parent hands down: close-on-exec clear.
        let dup = rustix::io::fcntl_dupfd_cloexec(&own, 100).unwrap();
        let n = dup.as_raw_fd();
        rustix::io::fcntl_setfd(&dup, FdFlags::empty()).unwrap();
        std::mem::forget(dup);
        let taken = inherited_fd(n).unwrap();
        assert!(rustix::io::fcntl_getfd(&taken).unwrap().contains(FdFlags::CLOEXEC));
        assert!(inherited_fd(n).unwrap_err().to_string().contains("taken already"));
        drop(taken);
        assert!(inherited_fd(n).is_err(), "closed: not open any more");
    }
}
