//! The Debezium side of the capture benchmarks: fetches Debezium 3.6.1 with Maven (once),
//! compiles `benches/debezium/DebeziumDrain.java` (when it changed) and runs it over a backlog
//! the benchmark wrote. See the header of `DebeziumDrain.java` for what it does and where its
//! reading starts.
//!
//! `BENCH_DEBEZIUM=0` leaves the Debezium side out; `BENCH_DEBEZIUM=1` makes a missing `java`,
//! `javac` or `mvn` an error; by default a missing tool is reported in one line and the
//! benchmark goes on without Debezium. The jars go to `$SLUICE_DEPS/debezium-3.6.1/libs`
//! (`SLUICE_DEPS` defaults to `~/.cache/sluice`), with a `.complete` marker holding the pom
//! they came from; neither the tests nor `scripts/deps.sh` fetch them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const VERSION: &str = "3.6.1.Final";
const INSTALL: &str = "apt-get install -y openjdk-17-jdk-headless maven";

/// A compiled drain, ready to run.
pub struct Debezium {
    classpath: String,
}

/// What one drain measured. Times are wall-clock milliseconds since the epoch.
pub struct Drain {
    pub rows: u64,
    /// Records that were not counted (heartbeats, schema changes, other tables).
    pub other: u64,
    pub spawn_ms: u64,
    pub main_ms: u64,
    pub first_ms: u64,
    pub last_ms: u64,
    pub cpu_first_s: f64,
    pub cpu_s: f64,
    pub peak_rss_mb: f64,
}

impl Drain {
    /// Rows per second from the first counted record to the N-th: the throughput figure.
    pub fn rows_per_s(&self) -> f64 {
        self.rows as f64 / self.stream_s()
    }

    pub fn stream_s(&self) -> f64 {
        ((self.last_ms.saturating_sub(self.first_ms)) as f64 / 1000.0).max(0.001)
    }

    /// Rows per second from the spawn of `java` to the N-th record (start-up included).
    pub fn rows_per_s_from_start(&self) -> f64 {
        self.rows as f64 / self.total_s()
    }

    pub fn total_s(&self) -> f64 {
        ((self.last_ms.saturating_sub(self.spawn_ms)) as f64 / 1000.0).max(0.001)
    }

    /// Seconds from the spawn of `java` to its `main` (the JVM's own start-up).
    pub fn jvm_startup_s(&self) -> f64 {
        self.main_ms.saturating_sub(self.spawn_ms) as f64 / 1000.0
    }

    /// Seconds from the spawn of `java` to the first counted record (JVM, engine, connector
    /// start and, for MySQL, the schema recovery).
    pub fn to_first_record_s(&self) -> f64 {
        self.first_ms.saturating_sub(self.spawn_ms) as f64 / 1000.0
    }

    /// CPU µs per row from the first counted record to the N-th (start-up excluded, as for
    /// Sluice, whose CPU is counted from its stream start).
    pub fn cpu_us_per_row(&self) -> f64 {
        (self.cpu_s - self.cpu_first_s) * 1e6 / self.rows as f64
    }

    /// CPU µs per row of the whole process, start-up included.
    pub fn cpu_us_per_row_total(&self) -> f64 {
        self.cpu_s * 1e6 / self.rows as f64
    }

    /// One line for the benchmark's output.
    pub fn describe(&self) -> String {
        format!(
            "debezium {VERSION}: {:.0} rows/s first→last record ({:.2}s), {:.0} rows/s from process start ({:.2}s: JVM start-up {:.2}s, first record after {:.2}s); CPU {:.2} µs/row first→last, {:.2} µs/row whole process; peak RSS {:.0} MB; {} other records",
            self.rows_per_s(),
            self.stream_s(),
            self.rows_per_s_from_start(),
            self.total_s(),
            self.jvm_startup_s(),
            self.to_first_record_s(),
            self.cpu_us_per_row(),
            self.cpu_us_per_row_total(),
            self.peak_rss_mb,
            self.other
        )
    }
}

/// Sluice against Debezium, both over the same rows: the ratio line the benchmarks print.
pub fn compare(
    sluice_rows_per_s: f64,
    sluice_cpu_us: f64,
    sluice_rss_mb: f64,
    d: &Drain,
) -> String {
    format!(
        "sluice vs debezium (rows/s: Sluice stream start → all in Kafka, Debezium first → last record; CPU µs/row over the same windows): {sluice_rows_per_s:.0} vs {:.0} rows/s, sluice/debezium {:.2}x; CPU {sluice_cpu_us:.2} vs {:.2} µs/row, debezium/sluice {}; peak RSS {sluice_rss_mb:.0} vs {:.0} MB",
        d.rows_per_s(),
        sluice_rows_per_s / d.rows_per_s(),
        d.cpu_us_per_row(),
        cpu_ratio(d.cpu_us_per_row(), sluice_cpu_us),
        d.peak_rss_mb
    )
}

/// Debezium's CPU per row over Sluice's, or "n/a" where Sluice's CPU read 0 (/proc counts in
/// 10 ms ticks: a small run can end inside one).
pub fn cpu_ratio(debezium_cpu_us: f64, sluice_cpu_us: f64) -> String {
    if sluice_cpu_us > 0.0 {
        format!("{:.2}x", debezium_cpu_us / sluice_cpu_us)
    } else {
        "n/a".into()
    }
}

fn deps_dir() -> PathBuf {
    sluice_test_support::kafka::deps_dir().join("debezium-3.6.1")
}

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/debezium")
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

impl Debezium {
    /// Fetches and compiles the drain, or says why the Debezium side is left out (`None`).
    pub fn prepare() -> Option<Debezium> {
        let mode = std::env::var("BENCH_DEBEZIUM").unwrap_or_default();
        if mode == "0" {
            println!("debezium: left out (BENCH_DEBEZIUM=0)");
            return None;
        }
        match Self::try_prepare() {
            Ok(d) => Some(d),
            Err(why) if mode == "1" => panic!("debezium: {why}"),
            Err(why) => {
                println!("debezium: left out: {why} (BENCH_DEBEZIUM=1 makes this an error, =0 silences it)");
                None
            }
        }
    }

    fn try_prepare() -> Result<Debezium, String> {
        for tool in ["java", "javac", "mvn"] {
            if !on_path(tool) {
                return Err(format!(
                    "`{tool}` not found on PATH: install Java 17+ and Maven with `{INSTALL}`"
                ));
            }
        }
        let version = Command::new("java")
            .arg("-version")
            .output()
            .map_err(|e| format!("java -version: {e}"))?;
        let text = String::from_utf8_lossy(&version.stderr).into_owned();
        let major = text
            .split('"')
            .nth(1)
            .and_then(|v| v.split('.').next())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0);
        if major < 17 {
            return Err(format!(
                "Debezium {VERSION} needs Java 17 or later; `java -version` says: {}",
                text.lines().next().unwrap_or("")
            ));
        }

        let dir = deps_dir();
        let libs = dir.join("libs");
        let pom = source_dir().join("pom.xml");
        let pom_text =
            std::fs::read_to_string(&pom).map_err(|e| format!("{}: {e}", pom.display()))?;
        let marker = libs.join(".complete");
        if std::fs::read_to_string(&marker).ok().as_deref() != Some(pom_text.as_str()) {
            println!(
                "debezium: fetching Debezium {VERSION} with Maven into {}",
                libs.display()
            );
            // A different pom (or a half-done fetch): start from an empty directory, so that
            // no jar of another version stays on the class path.
            let _ = std::fs::remove_dir_all(&libs);
            let out = Command::new("mvn")
                .args(["-q", "-B", "-f"])
                .arg(&pom)
                .arg("dependency:copy-dependencies")
                .arg(format!("-DoutputDirectory={}", libs.display()))
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("mvn: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "`mvn dependency:copy-dependencies` failed: {}",
                    tail(&format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ))
                ));
            }
            std::fs::write(&marker, &pom_text).map_err(|e| format!("{}: {e}", marker.display()))?;
        }

        let source = source_dir().join("DebeziumDrain.java");
        let classes = dir.join("classes");
        let class = classes.join("DebeziumDrain.class");
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let stale = match (mtime(&class), mtime(&source), mtime(&marker)) {
            (Some(c), Some(s), Some(m)) => c < s || c < m,
            _ => true,
        };
        let libs_glob = format!("{}/*", libs.display());
        if stale {
            let _ = std::fs::remove_dir_all(&classes);
            std::fs::create_dir_all(&classes).map_err(|e| format!("{}: {e}", classes.display()))?;
            let out = Command::new("javac")
                .args(["-nowarn", "-cp", &libs_glob, "-d"])
                .arg(&classes)
                .arg(&source)
                .output()
                .map_err(|e| format!("javac: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "javac {} failed: {}",
                    source.display(),
                    tail(&String::from_utf8_lossy(&out.stderr))
                ));
            }
        }
        Ok(Debezium {
            classpath: format!("{}:{libs_glob}", classes.display()),
        })
    }

    /// Runs the drain with `properties` (the engine's configuration), waiting for `rows`
    /// change records whose destination is `topic`. Writes its properties and log into
    /// `workdir`; an error carries the end of the log.
    pub fn drain(
        &self,
        properties: &[(&str, String)],
        rows: u64,
        topic: &str,
        workdir: &Path,
        timeout: Duration,
    ) -> Result<Drain, String> {
        let props_file = workdir.join("debezium.properties");
        let log = workdir.join("debezium.log");
        // What every drain sets: JSON without schemas, topics named `dbz.*`, a local server.
        let mut text = format!(
            "drain.rows={rows}\ndrain.topic={topic}\ndrain.idle.timeout.s=120\nname=drain\n\
             key.converter.schemas.enable=false\nvalue.converter.schemas.enable=false\n\
             topic.prefix=dbz\ndatabase.hostname=127.0.0.1\n"
        );
        for (k, v) in properties {
            text.push_str(&format!("{k}={}\n", escape(v)));
        }
        std::fs::write(&props_file, text).map_err(|e| format!("{}: {e}", props_file.display()))?;
        let level = std::env::var("BENCH_DEBEZIUM_LOG").unwrap_or_else(|_| "warn".into());
        let stderr = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let spawn_ms = now_ms();
        let mut child = Command::new("java")
            .arg("-Xmx1g")
            .arg(format!("-Dorg.slf4j.simpleLogger.defaultLogLevel={level}"))
            .args(["-cp", &self.classpath, "DebeziumDrain"])
            .arg(&props_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("java: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + timeout;
        let mut result = None;
        let mut lines = Vec::new();
        while result.is_none() {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) if line.starts_with("DRAINED ") => result = Some(Ok(line)),
                Ok(line) if line.starts_with("FAILED ") || line.starts_with("TIMEOUT ") => {
                    result = Some(Err(line))
                }
                Ok(line) => lines.push(line),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        result = Some(Err(format!("no DRAINED line after {timeout:?}; killed")));
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    result = Some(Err(format!(
                        "java exited without a DRAINED line ({})",
                        lines.join(" | ")
                    )))
                }
            }
        }
        let status = child.wait().map_err(|e| format!("java: {e}"))?;
        let line = result.expect("set above").map_err(|why| {
            // The program's own FAILED line names the cause; for anything else (a crash, a
            // time-out) the end of its log does.
            let log_tail = if why.starts_with("FAILED ") {
                String::new()
            } else {
                format!(
                    "; end of its log:\n{}",
                    tail(&std::fs::read_to_string(&log).unwrap_or_default())
                )
            };
            format!(
                "{why} (java {status}; log {}, kept with SLUICE_TEST_KEEP=1){log_tail}",
                log.display()
            )
        })?;
        let field = |name: &str| -> f64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in `{line}`"))
        };
        Ok(Drain {
            rows: field("rows") as u64,
            other: field("other") as u64,
            spawn_ms,
            main_ms: field("main_ms") as u64,
            first_ms: field("first_ms") as u64,
            last_ms: field("last_ms") as u64,
            cpu_first_s: field("cpu_first_ms") / 1000.0,
            cpu_s: field("cpu_ms") / 1000.0,
            peak_rss_mb: field("vmhwm_kb") / 1024.0,
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A value for a Java properties file.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The last lines of a tool's output, for an error message.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}
