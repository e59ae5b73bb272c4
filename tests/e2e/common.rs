//! A source Postgres, a broker, a config, and the sluice binary, wired for one test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_test_support::{Broker, MariaDb, PgCluster, SluiceProcess, TempDir, TopicReader};

pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
pub const LONG: Duration = Duration::from_secs(120);

/// Two tests, `$mariadb` and `$mysql8`, that run the async `$body` on a fresh MariaDB and on a
/// fresh MySQL 8 server, with each one's extra arguments in brackets.
macro_rules! mariadb_and_mysql8 {
    ($body:ident, $mariadb:ident, $mysql8:ident $(, [$($a:expr),*], [$($b:expr),*])?) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $mariadb() {
            $body(sluice_test_support::MariaDb::start() $($(, $a)*)?).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $mysql8() {
            $body(sluice_test_support::MariaDb::start_mysql8() $($(, $b)*)?).await;
        }
    };
}
pub(crate) use mariadb_and_mysql8;

/// Runs sluice with `dir/sluice.toml`, logging to `dir/sluice.log`.
pub fn start_in(dir: &Path, args: &[&str]) -> SluiceProcess {
    SluiceProcess::run(
        Path::new(SLUICE),
        &dir.join("sluice.toml"),
        args,
        &dir.join("sluice.log"),
    )
}

/// The number from `key=NUMBER` in the last log line containing `line`.
pub fn logged_number(log: &str, line: &str, key: &str) -> Option<u64> {
    let l = log.lines().rev().find(|l| l.contains(line))?;
    let at = l.find(&format!("{key}="))? + key.len() + 1;
    l[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()
}

/// The number `count_sql` (a `select count(*)`) returns.
pub async fn count(db: &tokio_postgres::Client, count_sql: &str) -> i64 {
    db.query_one(count_sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{count_sql}: {e}"))
        .get(0)
}

/// Runs `statements` in one transaction (and `last` at its end); returns the rows they changed.
pub async fn transaction(
    db: &mut tokio_postgres::Client,
    statements: &[String],
    last: Option<&str>,
) -> u64 {
    let tx = db.transaction().await.expect("begin");
    let mut changes = 0;
    for s in statements {
        changes += tx.execute(s.as_str(), &[]).await.expect("statement");
    }
    if let Some(last) = last {
        tx.batch_execute(last).await.expect(last);
    }
    tx.commit().await.expect("commit");
    changes
}

/// `sluice check --config config`: its exit code and its whole output (stdout, then stderr).
pub fn sluice_check(config: &Path) -> (i32, String) {
    let args = ["check", "--config", config.to_str().expect("utf-8 path")];
    let (status, out, err) =
        sluice_test_support::sluice::run_to_end(Path::new(SLUICE), &args, LONG);
    (status.code().unwrap_or(-1), format!("{out}{err}"))
}

/// Asserts that a command exited with status 1 (`code`) and that its output `text` says each
/// of `needles`.
pub fn assert_refused(code: i32, text: &str, needles: &[&str]) {
    assert_eq!(code, 1, "{text}");
    for needle in needles {
        assert!(text.contains(needle), "{needle:?} not in: {text}");
    }
}

/// Runs `insert`, which writes the row with id -1, waits until its event is in `reader`, stops
/// `sluice`, and reads the rest of the topic.
pub async fn read_through_marker(
    db: &tokio_postgres::Client,
    insert: &str,
    reader: &mut TopicReader,
    sluice: &mut SluiceProcess,
) {
    db.batch_execute(insert).await.expect("marker");
    reader.read_until(LONG, "the marker row", |r| {
        r.iter()
            .any(|x| x.value.as_ref().is_some_and(|v| v["after"]["id"] == -1))
    });
    sluice.stop(LONG);
    reader.read_to_end(LONG);
}

/// The (first, second) columns, both int8, of every row `sql` returns, by the first.
pub async fn int_pairs(
    db: &tokio_postgres::Client,
    sql: &str,
) -> std::collections::BTreeMap<i64, i64> {
    db.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The first column of every row `sql` returns from Postgres.
pub async fn column<T>(db: &tokio_postgres::Client, sql: &str) -> Vec<T>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    db.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Waits until every (source rows, target rows) pair `sides` returns holds the same rows in
/// any order; returns each pair's source row count. Panics with the last counts.
pub async fn wait_same_rows<F, Fut>(what: &str, mut sides: F) -> Vec<usize>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Vec<(Vec<String>, Vec<String>)>>,
{
    let last = std::cell::RefCell::new(Vec::new());
    let equal = sluice_test_support::wait_for_quiet(LONG, || {
        let pairs = sides();
        let last = &last;
        async move {
            let mut equal = true;
            let mut counts = Vec::new();
            for (mut a, mut b) in pairs.await {
                a.sort();
                b.sort();
                equal &= a == b;
                counts.push((a.len(), b.len()));
            }
            let sources = counts.iter().map(|(a, _)| *a).collect::<Vec<_>>();
            *last.borrow_mut() = counts;
            equal.then_some(sources)
        }
    })
    .await;
    equal.unwrap_or_else(|| {
        panic!(
            "{what}: never equal; row counts (source, target) {:?}",
            last.borrow()
        )
    })
}

/// A target-side audit of `accounts`: every application of each (id, version) is counted,
/// and a version that does not increase is recorded. The source bumps `version` on every
/// update, so a change applied twice shows up as a count of 2 or a regression.
pub const AUDIT: &str = r#"
create table applications (id bigint, version int, n int not null, digests text[],
                           primary key (id, version));
create table regressions (id bigint, old_version int, new_version int);
create function audit_apply() returns trigger language plpgsql as $$
begin
  if tg_op = 'UPDATE' and new.version <= old.version then
    insert into regressions values (new.id, old.version, new.version);
  end if;
  -- Each application's row digest: the same row applied again, or another row with a version
  -- number the source used twice (a source that lost a commit), tell apart.
  insert into applications values (new.id, new.version, 1, array[md5(new::text)])
    on conflict (id, version) do update
      set n = applications.n + 1, digests = applications.digests || excluded.digests;
  return new;
end $$;
create trigger audit_apply after insert or update on accounts
  for each row execute function audit_apply();
"#;

/// (versions applied, versions applied more than once, regressions) from [`AUDIT`].
pub async fn audit(db: &tokio_postgres::Client) -> (i64, i64, i64) {
    let count = |sql: &'static str| async move {
        db.query_one(sql, &[])
            .await
            .expect("audit tables")
            .get::<_, i64>(0)
    };
    (
        count("select count(*) from applications").await,
        count("select count(*) from applications where n > 1").await,
        count("select count(*) from regressions").await,
    )
}

/// A `[kafka]` section: `brokers`, `partitions`, and the lines `extra`.
pub fn kafka_section(brokers: &str, partitions: u32, extra: &str) -> String {
    format!("[kafka]\nbrokers = \"{brokers}\"\npartitions = {partitions}\n{extra}\n")
}

/// The `postgres = …` line of database `db` of `pg`.
pub fn postgres(pg: &PgCluster, db: &str) -> String {
    format!("postgres = {}", pg.sluice_connection(db))
}

/// The `mysql = …` line of database `db` of `server`.
pub fn mysql(server: &MariaDb, db: &str) -> String {
    format!("mysql = {}", server.sluice_connection(db))
}

/// A `[sources.<name>]` section: its `connection` line (`postgres = …`, `mysql = …`), `tables`
/// checkpointed every 200 ms, and the lines `extra`.
pub fn source_section(
    name: &str,
    connection: &str,
    tables: &[impl AsRef<str>],
    extra: &str,
) -> String {
    let tables = tables
        .iter()
        .map(|t| format!("\"{}\"", t.as_ref()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "\n[sources.{name}]\n{connection}\ntables = [{tables}]\ncheckpoint_interval_ms = 200\n{extra}\n"
    )
}

/// A `[sinks.<name>]` section: its `connection` line and the lines `extra`.
pub fn sink_section(name: &str, connection: &str, extra: &str) -> String {
    format!("\n[sinks.{name}]\n{connection}\n{extra}\n\n")
}

/// A `[[sinks.<sink>.tables]]` for each `(from, to)` of `maps` (no `to` where it is empty).
pub fn table_maps(sink: &str, maps: &[(impl AsRef<str>, impl AsRef<str>)]) -> String {
    let mut text = String::new();
    for (from, to) in maps {
        text.push_str(&format!(
            "[[sinks.{sink}.tables]]\nfrom = \"{}\"\n",
            from.as_ref()
        ));
        if !to.as_ref().is_empty() {
            text.push_str(&format!("to = \"{}\"\n", to.as_ref()));
        }
    }
    text
}

/// A broker, and a directory for one test's config (`config`) and sluice's logs.
pub struct Workdir {
    pub broker: Broker,
    pub dir: TempDir,
    pub config: PathBuf,
}

impl Workdir {
    /// Starts a broker and makes the directory (`label` in its name).
    pub fn new(label: &str) -> Workdir {
        let dir = TempDir::new(label);
        Workdir {
            broker: Broker::start(),
            config: dir.path().join("sluice.toml"),
            dir,
        }
    }

    /// Writes the config: `[kafka]` (`partitions`, the lines `kafka`), then `sections`.
    pub fn configure(&self, partitions: u32, kafka: &str, sections: &str) {
        let text = kafka_section(&self.broker.brokers(), partitions, kafka) + sections;
        std::fs::write(&self.config, text).expect("write config");
    }

    /// Rewrites the config as `edit` makes its text; returns the text it had.
    pub fn edit_config(&self, edit: impl FnOnce(&str) -> String) -> String {
        let text = std::fs::read_to_string(&self.config).expect("config");
        std::fs::write(&self.config, edit(&text)).expect("write config");
        text
    }

    /// Runs sluice with `args` and no checkpoint for ten minutes, waits until its initial
    /// snapshot (`rows` records) is in the topic `reader` opens, and kills it (-9) before any
    /// checkpoint; puts the config back and returns the reader.
    pub fn abandon_first_snapshot(
        &self,
        args: &[&str],
        reader: impl FnOnce() -> TopicReader,
        rows: usize,
    ) -> TopicReader {
        let text = self.edit_config(|t| {
            t.replace(
                "checkpoint_interval_ms = 200",
                "checkpoint_interval_ms = 600000",
            )
        });
        let mut sluice = self.start_with(args);
        sluice.wait_log("initial snapshot read", 1, LONG);
        let mut reader = reader();
        reader.read_until(LONG, "the first snapshot", |r| r.len() >= rows);
        sluice.kill9();
        assert!(!sluice.log_text().contains("checkpoint written"));
        std::fs::write(&self.config, text).expect("write config");
        reader
    }

    /// After [`Workdir::abandon_first_snapshot`] of rows 1-10 and the delete of rows 1-3 in
    /// the source: runs sluice with `args` again, and waits until its new snapshot (7 rows) and
    /// a delete and a tombstone for each of rows 1-3 are in `reader`'s topic, checkpointed.
    pub fn snapshot_again_without_rows_1_to_3(
        &self,
        args: &[&str],
        reader: &mut TopicReader,
    ) -> SluiceProcess {
        let sluice = self.start_with(args);
        sluice.wait_log("initial snapshot read", 2, LONG);
        sluice.wait_log("checkpoint written", 1, LONG);
        reader.read_until(LONG, "the second snapshot", |r| r.len() >= 23);
        // The topic's last word on each key is what a sink ends with.
        assert_eq!(
            reader.alive_ids("id"),
            (4..=10).collect::<Vec<_>>(),
            "rows 1-3 were deleted in the source"
        );
        sluice
    }

    /// The log of the run called `name`.
    pub fn log_of(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    pub fn log_path(&self) -> PathBuf {
        self.log_of("sluice")
    }

    /// Starts `sluice run` with `args`, logging to `<name>.log`.
    pub fn run(&self, name: &str, args: &[&str]) -> SluiceProcess {
        SluiceProcess::run(Path::new(SLUICE), &self.config, args, &self.log_of(name))
    }

    /// Starts `sluice run` with `args`, logging to `sluice.log`.
    pub fn start_with(&self, args: &[&str]) -> SluiceProcess {
        self.run("sluice", args)
    }

    pub fn start(&self) -> SluiceProcess {
        self.start_with(&[])
    }
}

/// Lets a fixture type that holds a [`Workdir`] in `work` be used as one.
macro_rules! deref_workdir {
    ($fixture:ty) => {
        impl std::ops::Deref for $fixture {
            type Target = $crate::common::Workdir;

            fn deref(&self) -> &$crate::common::Workdir {
                &self.work
            }
        }

        impl std::ops::DerefMut for $fixture {
            fn deref_mut(&mut self) -> &mut $crate::common::Workdir {
                &mut self.work
            }
        }
    };
}
pub(crate) use deref_workdir;

/// A source Postgres (database `app`), a broker, and a directory with a config capturing
/// `tables` (in schema public) as source `app`; [`Pipeline`] adds a target.
pub struct Fixture {
    pub source: PgCluster,
    pub work: Workdir,
    pub tables: Vec<String>,
    /// Extra lines for `[sources.app]`.
    pub source_extra: String,
    /// Extra lines for `[kafka]`.
    pub kafka_extra: String,
}

deref_workdir!(Fixture);

impl Fixture {
    /// Starts Postgres (database `app`, prepared with `setup_sql`) and a broker, and writes the
    /// config.
    pub async fn new(tables: &[&str], setup_sql: &str) -> Fixture {
        Self::with_pg(PgCluster::start(), tables, setup_sql).await
    }

    /// The same with a Postgres of the caller's.
    pub async fn with_pg(source: PgCluster, tables: &[&str], setup_sql: &str) -> Fixture {
        let fixture = Self::started(source, tables, setup_sql).await;
        fixture.write_config("");
        fixture
    }

    /// The services and the directory, without a config yet.
    pub async fn started(source: PgCluster, tables: &[&str], setup_sql: &str) -> Fixture {
        source.database_with("app", setup_sql).await;
        Fixture {
            source,
            work: Workdir::new("e2e"),
            tables: tables.iter().map(|t| t.to_string()).collect(),
            source_extra: String::new(),
            kafka_extra: String::new(),
        }
    }

    /// Rewrites the config: `[kafka]`, `[sources.app]`, then `rest` (sinks, stores).
    pub fn write_config(&self, rest: &str) {
        let tables: Vec<String> = self.tables.iter().map(|t| format!("public.{t}")).collect();
        let connection = postgres(&self.source, "app");
        let source = source_section("app", &connection, &tables, &self.source_extra);
        self.configure(3, &self.kafka_extra, &(source + rest));
    }

    /// Starts sluice and waits until its replication stream runs.
    pub fn start_streaming(&self) -> SluiceProcess {
        let before = std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .matches("replication stream started")
            .count();
        let p = self.start();
        p.wait_log("replication stream started", before + 1, LONG);
        p
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        self.source.connect("app").await
    }

    /// A reader of table `t`'s topic (waits until sluice created it).
    pub fn reader(&self, table: &str) -> TopicReader {
        TopicReader::new(&self.broker.brokers(), &format!("sluice.public.{table}"))
    }
}

/// The envelopes' `after.id` (or `before.id` for deletes) as i64.
pub fn id_of(env: &serde_json::Value) -> i64 {
    let row = if env["op"] == "d" {
        &env["before"]
    } else {
        &env["after"]
    };
    row["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no id in {env}"))
}

/// Waits until `count_sql` (a `select count(*)`) returns at least `n`.
pub async fn wait_rows(db: &tokio_postgres::Client, count_sql: &str, n: i64) {
    wait_count(db, count_sql, |c| c >= n).await
}

/// Waits until the number `count_sql` (a `select count(*)`) returns is `done`.
pub async fn wait_count(db: &tokio_postgres::Client, count_sql: &str, done: impl Fn(i64) -> bool) {
    sluice_test_support::wait_for(count_sql, LONG, || async {
        let c: i64 = db.query_one(count_sql, &[]).await.ok()?.get(0);
        done(c).then_some(())
    })
    .await
}

/// A background writer: runs `statement(n)` for n = 0, 1, … at a steady 500 a second until
/// stopped. Enough to be mid-stream at any moment, few enough for a test's reader to keep up.
pub struct PacedWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    done: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<u64>,
}

impl PacedWriter {
    pub fn start(
        db: tokio_postgres::Client,
        statement: impl Fn(u64) -> String + Send + 'static,
    ) -> PacedWriter {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = {
            let (stop, done) = (stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut pace = tokio::time::interval(Duration::from_millis(2));
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    pace.tick().await;
                    db.batch_execute(&statement(n)).await.expect("paced write");
                    n += 1;
                    done.store(n, Ordering::Relaxed);
                }
                n
            })
        };
        PacedWriter { stop, done, task }
    }

    /// Writes completed so far.
    pub fn count(&self) -> u64 {
        self.done.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the writer; returns how many writes it made.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("writer task")
    }
}
