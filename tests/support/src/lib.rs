//! Real services for Sluice's tests: private Postgres clusters and an Apache Kafka broker,
//! each on a free port in a temporary directory, torn down when dropped (also when a test
//! panics). Nothing here is a mock: tests talk to the same servers production would.
//!
//! A missing server binary fails the test with one line naming the command that installs it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod bench;
pub mod garage;
pub mod kafka;
pub mod mariadb;
pub mod process;
pub mod sluice;
pub mod tls;

pub use garage::Garage;
pub use kafka::{Broker, TopicReader};
pub use mariadb::{Flavor, MariaDb};
pub use sluice::SluiceProcess;

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "sluice-test-{label}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // SLUICE_TEST_KEEP=1 keeps logs and data for a post-mortem.
        if std::env::var_os("SLUICE_TEST_KEEP").is_some() {
            eprintln!("kept {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Finds an executable on PATH, in `~/.cargo/bin`, or in `extra_dirs`; panics with the install
/// command when it is missing.
pub fn require_binary(name: &str, extra_dirs: &[&str], install: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.extend(extra_dirs.iter().map(PathBuf::from));
    for d in dirs {
        let candidate = d.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("{name} not found: install it with `{install}`");
}

/// Polls `check` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_for_quiet(timeout, check)
        .await
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Like [`wait_for`], but returns `None` after `timeout` instead of panicking, so the caller
/// can say what it saw last.
pub async fn wait_for_quiet<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(20);
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A private Postgres 15 cluster with `wal_level = logical`.
pub struct PgCluster {
    dir: TempDir,
    port: u16,
    running: bool,
}

impl PgCluster {
    pub fn start() -> PgCluster {
        Self::start_with(&[])
    }

    /// Starts a cluster with extra `postgresql.conf` settings (which win over the defaults).
    pub fn start_with(settings: &[(&str, &str)]) -> PgCluster {
        let initdb = require_binary("initdb", &[PG_BIN], "apt-get install -y postgresql-15");
        let dir = TempDir::new("pg");
        let data = dir.path().join("data");
        if is_root() {
            // Postgres refuses to run as root: hand the directory to the postgres user.
            let _ = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status();
        }
        let status = as_postgres(&initdb)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed in {}", data.display());
        let mut cluster = PgCluster {
            dir,
            port: 0,
            running: false,
        };
        for attempt in 0..5 {
            cluster.port = free_port();
            let mut conf = format!(
                "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
                 wal_level = logical\nmax_replication_slots = 10\nmax_wal_senders = 10\n\
                 fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
                 shared_buffers = 64MB\nmax_connections = 50\n",
                cluster.port,
                cluster.dir.path().display()
            );
            for (k, v) in settings {
                conf.push_str(&format!("{k} = {v}\n"));
            }
            std::fs::write(data.join("postgresql.auto.conf"), conf)
                .expect("write postgresql.auto.conf");
            if cluster.pg_ctl(&["-w", "-t", "30", "start"]) {
                cluster.running = true;
                return cluster;
            }
            eprintln!(
                "postgres did not start on port {} (attempt {attempt}); retrying",
                cluster.port
            );
        }
        let log = std::fs::read_to_string(cluster.dir.path().join("log")).unwrap_or_default();
        panic!("postgres did not start: {log}");
    }

    fn pg_ctl(&self, args: &[&str]) -> bool {
        let pg_ctl = Path::new(PG_BIN).join("pg_ctl");
        as_postgres(&pg_ctl)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's process id (the first line of `postmaster.pid`).
    pub fn postmaster_pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.path().join("data").join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// Stops the server (fast shutdown) and waits.
    pub fn stop(&mut self) {
        if self.running {
            self.pg_ctl(&["-m", "fast", "-w", "-t", "60", "stop"]);
            self.running = false;
        }
    }

    /// Stops the server as a crash would (immediate shutdown: no checkpoint, recovery at the
    /// next start) and waits.
    pub fn stop_immediate(&mut self) {
        if self.running {
            self.pg_ctl(&["-m", "immediate", "-w", "-t", "60", "stop"]);
            self.running = false;
        }
    }

    /// Starts a stopped server again on the same port (a running one is stopped first).
    pub fn start_again(&mut self) {
        if !self.running {
            assert!(
                self.pg_ctl(&["-w", "-t", "60", "start"]),
                "postgres did not start again"
            );
            self.running = true;
        }
    }

    /// Starts a stopped server again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Creates a database (with the default owner `postgres`).
    pub async fn create_database(&self, name: &str) {
        let admin = self.connect("postgres").await;
        admin
            .batch_execute(&format!("create database {name}"))
            .await
            .expect("create database");
    }

    /// Creates database `name`, runs `sql` in it (its schema, rows), and returns a client of it.
    pub async fn database_with(&self, name: &str, sql: &str) -> tokio_postgres::Client {
        self.create_database(name).await;
        let client = self.connect(name).await;
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("setting up database {name}: {e}"));
        client
    }

    /// Connects as `postgres` to `db` with the session settings Sluice uses.
    pub async fn connect(&self, db: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname(db)
            .options("-c TimeZone=UTC -c DateStyle=ISO")
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect to the test postgres");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// A `postgres = { … }` config value for Sluice.
    pub fn sluice_connection(&self, db: &str) -> String {
        format!(
            "{{ host = \"127.0.0.1\", port = {}, user = \"postgres\", database = \"{db}\" }}",
            self.port
        )
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            self.pg_ctl(&["-m", "immediate", "-w", "-t", "30", "stop"]);
        }
    }
}

fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Signals the process in `child`, if there is one, like [`signal_child`], and reaps it.
pub fn end_child(child: &mut Option<Child>, graceful: bool) {
    if let Some(mut c) = child.take() {
        signal_child(&mut c, graceful);
        let _ = c.wait();
    }
}

/// Runs `cmd` to its end; panics naming `what`, with the output, when it fails.
pub fn run_checked(cmd: &mut Command, what: &str) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Sends SIGKILL (or SIGTERM with `graceful`) to a child and reaps it.
pub fn signal_child(child: &mut Child, graceful: bool) {
    let sig = if graceful { "-TERM" } else { "-KILL" };
    let _ = Command::new("kill")
        .arg(sig)
        .arg(child.id().to_string())
        .status();
}

/// `GET path` from the HTTP server at `addr` (HTTP/1.1, one connection per request), with a
/// bearer `token` when given: the status code and the body. `None` when nothing answers.
pub fn http_get(addr: &str, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    // axum answers small bodies whole; a chunked one is joined here.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            if n == 0 {
                break;
            }
            out.push_str(after.get(..n)?);
            rest = after.get(n + 2..)?;
        }
        out
    } else {
        body.to_owned()
    };
    Some((code, body))
}

/// Renders `url` in headless Chromium (Debian's `chromium`) until its scripts have had
/// `budget_ms` of (virtual) time, and returns the DOM then; with `screenshot`, also saves a
/// PNG of the page there.
pub fn chromium(url: &str, budget_ms: u32, screenshot: Option<&Path>) -> String {
    let chromium = require_binary("chromium", &["/usr/bin"], "apt-get install -y chromium");
    let profile = TempDir::new("chromium");
    let mut cmd = Command::new(&chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(format!("--virtual-time-budget={budget_ms}"));
    if let Some(png) = screenshot {
        let mut shot = Command::new(&chromium);
        shot.args(cmd.get_args().map(|a| a.to_os_string()).collect::<Vec<_>>())
            .arg(format!("--screenshot={}", png.display()))
            .arg(url);
        run_checked(&mut shot, "chromium --screenshot");
    }
    cmd.arg("--dump-dom").arg(url);
    let out = run_checked(&mut cmd, "chromium --dump-dom");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
