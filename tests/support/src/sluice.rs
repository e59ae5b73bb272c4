//! Runs the `sluice` binary under test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{end_child, signal_child};

/// The database password the tests give Sluice (through `password_env` or `password_file`).
pub const DB_PASSWORD: &str = "db-Secret-pw-4d2e91";
/// The Kafka SASL password of the tests' secure broker, and a wrong one.
pub const KAFKA_PASSWORD: &str = "kafka-Scram-pw-7c41";
pub const KAFKA_WRONG_PASSWORD: &str = "not-the-Scram-pw-99";

/// Every secret the tests give Sluice. No line Sluice writes may hold one: the log of every
/// [`SluiceProcess`] is checked when it is dropped, and the output of every [`run_to_end`]
/// when it returns, across the whole suite.
pub const SECRETS: &[&str] = &[
    DB_PASSWORD,
    KAFKA_PASSWORD,
    KAFKA_WRONG_PASSWORD,
    crate::garage::SECRET_KEY,
];

/// Panics if `text` (what Sluice wrote to `what`) holds one of [`SECRETS`].
pub fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        if let Some(at) = text.find(secret) {
            let line = text[..at].lines().count();
            panic!("a secret the test gave Sluice is in {what}, line {line}");
        }
    }
}

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
        // Several processes may share a log: each check reads it whole.
        if !std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            assert_no_secret(&self.log.display().to_string(), &log);
        }
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
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_no_secret(&format!("the output of sluice {args:?}"), &stdout);
    assert_no_secret(&format!("the output of sluice {args:?}"), &stderr);
    (out.status, stdout, stderr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "a secret the test gave Sluice is in sluice.log, line 2")]
    fn a_secret_in_the_output_fails_the_test() {
        assert_no_secret(
            "sluice.log",
            &format!("starting\nconnect with {DB_PASSWORD}\n"),
        );
    }

    #[test]
    fn output_without_secrets_passes() {
        assert_no_secret("sluice.log", "password_env = SLUICE_TEST_DB_PASSWORD\n");
    }
}
