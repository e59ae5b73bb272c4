//! Runs the `sluice` binary under test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{end_child, signal_child};

/// A running `sluice` process; killed on drop.
pub struct SluiceProcess {
    child: Option<Child>,
    pub log: PathBuf,
}

impl SluiceProcess {
    /// Starts `bin run --config config` with its stderr in `log`.
    pub fn run(bin: &Path, config: &Path, extra: &[&str], log: &Path) -> SluiceProcess {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open sluice log");
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(extra)
            // SLUICE_TEST_LOG widens the log for a post-mortem (e.g. `debug`).
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "info,sluice=debug".into()),
            )
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn sluice");
        SluiceProcess {
            child: Some(child),
            log: log.to_owned(),
        }
    }

    /// Whether the process is still running (it has not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGSTOP (frozen: a long GC pause, a stalled VM) or SIGCONT.
    pub fn freeze(&self, frozen: bool) {
        let _ = std::process::Command::new("kill")
            .arg(if frozen { "-STOP" } else { "-CONT" })
            .arg(self.pid().to_string())
            .status();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL: a crash.
    pub fn kill9(&mut self) {
        end_child(&mut self.child, false);
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        let c = self.child.as_mut().expect("sluice is running");
        signal_child(c, true);
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit by itself (panics, with the log, after `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("sluice is running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!(
                    "sluice did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `needle` appears at least `count` times in the log (which several runs of
    /// sluice may share).
    pub fn wait_log(&self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().matches(needle).count() >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {count}x {needle:?} in the sluice log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until a capture checkpoint was written after the initial snapshot was read, so
    /// that a crash from now on does not take the snapshot again.
    pub fn wait_snapshot_checkpointed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log_text();
            // "published" where the snapshot is read between watermarks (MySQL).
            let done = ["initial snapshot read", "initial snapshot published"]
                .iter()
                .filter_map(|line| log.find(line))
                .any(|i| log[i..].contains("checkpoint written"));
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for a checkpoint after the snapshot:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for SluiceProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `bin args…` to completion, returning (status, stdout, stderr).
pub fn run_to_end(bin: &Path, args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sluice {args:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("collect output");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
