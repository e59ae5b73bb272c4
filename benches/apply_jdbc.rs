//! Sluice apply alone against the Debezium JDBC sink connector (in Kafka Connect standalone),
//! reading the same change events from the same broker into the same target Postgres.
//!
//! `cargo bench --bench apply_jdbc` (release build). It captures `BENCH_ROWS` rows (default
//! 200000) of an 8-column table from a source Postgres into a 4-partition topic once
//! (`--only capture`: snapshot events, `op = "r"`), then, one side at a time:
//!
//! 1. `sluice run --only apply` (4 workers, batches of up to 5000 events) into `users_sluice`;
//! 2. Kafka Connect standalone (the broker's own 4.1.1 jars) with Debezium's JDBC sink
//!    connector (its plugin archive, `benches/debezium-jdbc/pom.xml`, as Connect's
//!    `plugin.path`), 4 tasks, upsert on the record key, deletes enabled, into `users_jdbc`.
//!
//! Both tables are created beforehand with the source's DDL plus `applied_at timestamptz
//! default clock_timestamp()`, which neither side writes. Each side's rate is the middle 80%
//! of its rows over the time between the 10th and 90th percentiles of `applied_at` (start-up,
//! group join, the first batches and the tail excluded; first → last row is printed too); CPU
//! per row over the same window, from samples every 100 ms of utime + stime (/proc) of the
//! process and of the target Postgres (less the bench's own counting backend), interpolated;
//! peak RSS is VmHWM read once every row is in, just before the process is stopped. The table
//! is counted every 250 ms to know when every row is in.
//!
//! The JDBC sink needs Connect schemas (column types) in every record. The bench first points
//! it at Sluice's own topic with `schemas.enable=false` (schemaless JSON, table pre-created)
//! and reports what happens; if it cannot write that way, the bench copies the topic to a
//! second one, same partitions, where each key and value is wrapped in JsonConverter's
//! `{"schema": …, "payload": <Sluice's bytes unchanged>}` form, and measures the sink on that
//! (bigger) topic. The output says which one was measured.
//!
//! `BENCH_ROWS`, `BENCH_JDBC_PROBE=0` (skip the schemaless attempt),
//! `BENCH_JDBC_UNNEST=false` (the connector's per-row batched statements instead of its
//! Postgres UNNEST insert), `SLUICE_DEPS` (where the jars are cached, default ~/.cache/sluice).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use sluice_test_support::bench::{env_flag, env_number, run_only, source_target_broker};
use sluice_test_support::{free_port, process, require_binary, signal_child, PgCluster, TempDir};

#[path = "shared/users.rs"]
mod users;

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const LONG: Duration = Duration::from_secs(1800);
const CONNECT_EXITED: &str = "Kafka Connect exited";
/// How long the schemaless attempt may go without a row and without a failure.
const PROBE_WAIT: Duration = Duration::from_secs(300);
const KAFKA_VERSION: &str = "4.1.1";
const PARTITIONS: i32 = users::PARTITIONS;
/// Sluice's apply workers and the connector's tasks: one per partition on both sides.
const WORKERS: usize = 4;
/// Sluice's `max_batch_events`, the connector's `batch.size` and Connect's `max.poll.records`.
const BATCH: usize = 5000;
const TOPIC: &str = "app.public.users";
const SCHEMA_TOPIC: &str = "jdbc.public.users";
/// JVM options of Kafka's own `connect-standalone.sh` (heap) and `kafka-run-class.sh`.
const JVM_OPTS: &[&str] = &[
    "-Xms256M",
    "-Xmx2G",
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:MaxInlineLevel=15",
    "-Djava.awt.headless=true",
];

const TABLE_COLUMNS: &str = "id bigint primary key, first_name text not null,
    last_name text not null, email text, user_type text not null, status text not null,
    score int not null, created_at timestamptz not null default now()";
/// The source's columns, and what the target tables add: when each row was written.
const COLUMNS: &str = "id, first_name, last_name, email, user_type, status, score, created_at";
const APPLIED_AT: &str = "applied_at timestamptz not null default clock_timestamp()";

use sluice_test_support::kafka::deps_dir;

/// The broker's jars, which also hold Kafka Connect's runtime.
fn kafka_libs() -> PathBuf {
    let libs = deps_dir().join(format!("kafka-{KAFKA_VERSION}/libs"));
    for jar in [
        format!("kafka_2.13-{KAFKA_VERSION}.jar"),
        format!("connect-runtime-{KAFKA_VERSION}.jar"),
        format!("connect-json-{KAFKA_VERSION}.jar"),
    ] {
        assert!(
            libs.join(&jar).is_file(),
            "{jar} not found in {}: install Apache Kafka's jars with `bash scripts/deps.sh`",
            libs.display()
        );
    }
    libs
}

fn pom() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/debezium-jdbc/pom.xml")
}

/// The connector version the pom names.
fn connector_version() -> String {
    let text = std::fs::read_to_string(pom()).expect("read benches/debezium-jdbc/pom.xml");
    let tag = "<debezium.jdbc.version>";
    let start = text.find(tag).expect("debezium.jdbc.version in the pom") + tag.len();
    text[start..start + text[start..].find('<').expect("closing tag")].to_owned()
}

/// Connect's plugin path holding the unpacked connector archive; fetched with Maven the
/// first time.
fn connector_plugin_path(version: &str) -> PathBuf {
    let short = version.trim_end_matches(".Final");
    let base = deps_dir().join(format!("debezium-jdbc-{short}"));
    let plugins = base.join("plugins");
    let jar = plugins.join(format!(
        "debezium-connector-jdbc/debezium-connector-jdbc-{version}.jar"
    ));
    if base.join(".complete").is_file() && jar.is_file() {
        return plugins;
    }
    let mvn = require_binary("mvn", &[], "apt-get install -y maven");
    let tar = require_binary("tar", &[], "apt-get install -y tar");
    eprintln!(
        "fetching the Debezium JDBC sink {version} plugin archive from Maven Central into {}",
        base.display()
    );
    let _ = std::fs::remove_dir_all(&base);
    let libs = base.join("libs");
    let status = Command::new(&mvn)
        .args(["-q", "-B", "-f"])
        .arg(pom())
        .arg("dependency:copy-dependencies")
        .arg(format!("-DoutputDirectory={}", libs.display()))
        .status()
        .expect("run mvn");
    assert!(
        status.success(),
        "mvn dependency:copy-dependencies -f benches/debezium-jdbc/pom.xml failed ({status})"
    );
    let archive = libs.join(format!("debezium-connector-jdbc-{version}-plugin.tar.gz"));
    assert!(archive.is_file(), "{} is missing", archive.display());
    std::fs::create_dir_all(&plugins).expect("create the plugin path");
    let status = Command::new(tar)
        .arg("xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&plugins)
        .status()
        .expect("run tar");
    assert!(
        status.success() && jar.is_file(),
        "unpacking {} did not give {}",
        archive.display(),
        jar.display()
    );
    std::fs::write(base.join(".complete"), "").expect("write .complete");
    plugins
}

/// What one side did.
struct Run {
    /// Over the middle 80% of the rows (by `applied_at`).
    rows_per_s: f64,
    /// From the first row written to the last.
    first_to_last_rows_per_s: f64,
    cpu_us_per_row: f64,
    /// Process start to the last row in the target.
    wall_s: f64,
    /// CPU of the whole process life up to the last row (start-up included).
    cpu_total_s: f64,
    /// CPU the target Postgres spent per row over the same window (the bench's own counting
    /// backend left out): both sides hand work to the server.
    target_cpu_us_per_row: f64,
    peak_rss_mb: f64,
}

/// The target Postgres and the connection that counts rows in it.
struct Target<'a> {
    db: &'a tokio_postgres::Client,
    postmaster: u32,
    counter_backend: u32,
}

impl Target<'_> {
    /// CPU seconds of the target server, less its counting backend.
    fn cpu(&self) -> f64 {
        process::tree_cpu_seconds(self.postmaster) - process::cpu_seconds(self.counter_backend)
    }
}

async fn target_of<'a>(cluster: &PgCluster, db: &'a tokio_postgres::Client) -> Target<'a> {
    let backend: i32 = db
        .query_one("select pg_backend_pid()", &[])
        .await
        .expect("backend pid")
        .get(0);
    Target {
        db,
        postmaster: cluster.postmaster_pid(),
        counter_backend: backend as u32,
    }
}

async fn count(db: &tokio_postgres::Client, table: &str) -> i64 {
    db.query_one(&format!("select count(*) from {table}"), &[])
        .await
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(0)
}

fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Times a side until `table` holds `rows` rows. The rate comes from the target itself, from
/// `applied_at` (a target-only column, `default clock_timestamp()`): the middle 80% of the
/// rows over the time between the 10th and the 90th percentile. CPU (the process, and the
/// target server) is sampled every 100 ms and interpolated at those two instants.
/// `alive` is asked every poll and returns why the process can no longer get there.
async fn time_apply(
    target: &Target<'_>,
    table: &str,
    rows: i64,
    pid: u32,
    started: Instant,
    first_row_within: Duration,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Result<Run, String> {
    let deadline = Instant::now() + LONG;
    let first_deadline = Instant::now() + first_row_within;
    let db = target.db;
    // (wall clock, process CPU, target CPU)
    let mut samples: Vec<(f64, f64, f64)> = Vec::new();
    let mut last_count = Instant::now() - Duration::from_secs(1);
    loop {
        samples.push((epoch_now(), process::cpu_seconds(pid), target.cpu()));
        if last_count.elapsed() >= Duration::from_millis(250) {
            last_count = Instant::now();
            let n = count(db, table).await;
            if n >= rows {
                samples.push((epoch_now(), process::cpu_seconds(pid), target.cpu()));
                break;
            }
            if n == 0 && Instant::now() > first_deadline {
                return Err(format!(
                    "{table}: nothing applied within {first_row_within:?}, and no failure reported"
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{table}: {n} of {rows} rows applied after {LONG:?}"
                ));
            }
        }
        alive()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall_s = started.elapsed().as_secs_f64();
    let peak_rss_mb = process::peak_rss_mb(pid);
    // The middle 80% of the rows by applied_at: both sides at full pace, neither the first
    // batches (read before anything is written) nor the last ones.
    let t = db
        .query_one(
            &format!(
                "select extract(epoch from min(applied_at))::float8,
                        extract(epoch from percentile_disc(0.1) within group (order by applied_at))::float8,
                        extract(epoch from percentile_disc(0.9) within group (order by applied_at))::float8,
                        extract(epoch from max(applied_at))::float8
                   from {table}"
            ),
            &[],
        )
        .await
        .map_err(|e| format!("{table}: applied_at: {e}"))?;
    let (first, p10, p90, last): (f64, f64, f64, f64) = (t.get(0), t.get(1), t.get(2), t.get(3));
    let (cpu10, target10) = interpolate(&samples, p10);
    let (cpu90, target90) = interpolate(&samples, p90);
    let middle = 0.8 * rows as f64;
    Ok(Run {
        rows_per_s: middle / (p90 - p10),
        first_to_last_rows_per_s: rows as f64 / (last - first),
        cpu_us_per_row: (cpu90 - cpu10) * 1e6 / middle,
        wall_s,
        cpu_total_s: samples[samples.len() - 1].1,
        target_cpu_us_per_row: (target90 - target10) * 1e6 / middle,
        peak_rss_mb,
    })
}

/// (process CPU, target CPU) at wall-clock time `t`, linear between the samples around it.
fn interpolate(samples: &[(f64, f64, f64)], t: f64) -> (f64, f64) {
    let i = samples.partition_point(|s| s.0 <= t);
    if i == 0 {
        return (samples[0].1, samples[0].2);
    }
    if i == samples.len() {
        let s = samples[i - 1];
        return (s.1, s.2);
    }
    let (a, b) = (samples[i - 1], samples[i]);
    let f = if b.0 > a.0 {
        (t - a.0) / (b.0 - a.0)
    } else {
        0.0
    };
    (a.1 + f * (b.1 - a.1), a.2 + f * (b.2 - a.2))
}

/// Kafka Connect standalone, one connector. Stopped (SIGTERM, then SIGKILL) on drop.
struct Connect {
    child: Option<Child>,
    rest_port: u16,
    name: String,
    log: PathBuf,
}

struct ConnectSetup<'a> {
    dir: &'a Path,
    name: &'a str,
    brokers: &'a str,
    topic: &'a str,
    schemas: bool,
    target: &'a PgCluster,
    table: &'a str,
    unnest: bool,
}

impl Connect {
    fn start(s: &ConnectSetup, kafka_libs: &Path, plugin_path: &Path) -> Connect {
        let dir = s.dir.join(s.name);
        std::fs::create_dir_all(&dir).expect("connect dir");
        let rest_port = free_port();
        let worker = format!(
            "bootstrap.servers={brokers}\n\
             key.converter=org.apache.kafka.connect.json.JsonConverter\n\
             value.converter=org.apache.kafka.connect.json.JsonConverter\n\
             key.converter.schemas.enable={schemas}\n\
             value.converter.schemas.enable={schemas}\n\
             offset.storage.file.filename={offsets}\n\
             offset.flush.interval.ms=1000\n\
             plugin.path={plugins}\n\
             plugin.discovery=service_load\n\
             listeners=http://127.0.0.1:{rest_port}\n\
             connector.client.config.override.policy=All\n",
            brokers = s.brokers,
            schemas = s.schemas,
            offsets = dir.join("connect.offsets").display(),
            plugins = plugin_path.display(),
        );
        std::fs::write(dir.join("worker.properties"), worker).expect("worker.properties");
        std::fs::write(dir.join("sink.properties"), sink_properties(s)).expect("sink.properties");
        let log = dir.join("connect.log");
        let log4j = format!(
            "status = warn\n\
             appender.file.type = File\n\
             appender.file.name = file\n\
             appender.file.fileName = {}\n\
             appender.file.layout.type = PatternLayout\n\
             appender.file.layout.pattern = [%d] %p %m (%c)%n\n\
             rootLogger.level = INFO\n\
             rootLogger.appenderRef.file.ref = file\n\
             logger.reflections.name = org.reflections\n\
             logger.reflections.level = ERROR\n",
            log.display()
        );
        std::fs::write(dir.join("log4j2.properties"), log4j).expect("log4j2.properties");
        let out = std::fs::File::create(dir.join("stdout.log")).expect("connect stdout log");
        let child = Command::new("java")
            .current_dir(&dir)
            .args(JVM_OPTS)
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                dir.join("log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(kafka_libs.join("*"))
            .args([
                "org.apache.kafka.connect.cli.ConnectStandalone",
                "worker.properties",
                "sink.properties",
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .expect("spawn java (install Java 17: apt-get install -y openjdk-17-jre-headless)");
        Connect {
            child: Some(child),
            rest_port,
            name: s.name.to_owned(),
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// `GET /connectors/<name>/status` from Connect's REST listener.
    fn status(&self) -> Option<serde_json::Value> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.rest_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET /connectors/{}/status HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
            self.name
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let body = text.split_once("\r\n\r\n")?.1;
        serde_json::from_str(body).ok()
    }

    /// Why the connector cannot go on: the process exited, or the connector or a task FAILED
    /// (the first lines of its trace).
    fn failure(&mut self) -> Option<String> {
        if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
            return Some(format!(
                "{CONNECT_EXITED} ({status}); its errors (SLUICE_TEST_KEEP=1 keeps {}):\n{}",
                self.log.display(),
                self.log_errors(12)
            ));
        }
        let st = self.status()?;
        let mut states = vec![st.get("connector")?.clone()];
        states.extend(st["tasks"].as_array().cloned().unwrap_or_default());
        states.iter().find(|s| s["state"] == "FAILED").map(|s| {
            let trace = s["trace"].as_str().unwrap_or("(no trace)");
            // The exception lines (the first and every "Caused by"), not the stack frames.
            trace
                .lines()
                .filter(|l| {
                    !l.trim_start().starts_with("at ") && !l.trim_start().starts_with("...")
                })
                .take(8)
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    /// The last `n` ERROR and "Caused by" lines of Connect's log.
    fn log_errors(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("] ERROR ") || l.starts_with("Caused by"))
            .collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM (Connect stops its tasks and commits), SIGKILL after 60 s.
    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        signal_child(&mut c, true);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("Kafka Connect did not stop within 60 s of SIGTERM: killing it");
        signal_child(&mut c, false);
        let _ = c.wait();
    }
}

impl Drop for Connect {
    fn drop(&mut self) {
        self.stop();
    }
}

fn sink_properties(s: &ConnectSetup) -> String {
    format!(
        "name={name}\n\
         connector.class=io.debezium.connector.jdbc.JdbcSinkConnector\n\
         tasks.max={WORKERS}\n\
         topics={topic}\n\
         connection.url=jdbc:postgresql://127.0.0.1:{port}/bench?reWriteBatchedInserts=true\n\
         connection.username=postgres\n\
         connection.password=postgres\n\
         insert.mode=upsert\n\
         primary.key.mode=record_key\n\
         delete.enabled=true\n\
         schema.evolution=none\n\
         collection.name.format={table}\n\
         batch.size={BATCH}\n\
         dialect.postgres.unnest.insert.enabled={unnest}\n\
         consumer.override.max.poll.records={BATCH}\n",
        name = s.name,
        topic = s.topic,
        port = s.target.port(),
        table = s.table,
        unnest = s.unnest,
    )
}

/// Runs the connector until `rows` rows are in its table.
async fn run_jdbc(
    setup: &ConnectSetup<'_>,
    kafka_libs: &Path,
    plugin_path: &Path,
    rows: i64,
    first_row_within: Duration,
) -> Result<Run, String> {
    let db = setup.target.connect("bench").await;
    let tgt = target_of(setup.target, &db).await;
    let started = Instant::now();
    let mut connect = Connect::start(setup, kafka_libs, plugin_path);
    let pid = connect.pid();
    let mut last_check = Instant::now();
    let result = time_apply(
        &tgt,
        setup.table,
        rows,
        pid,
        started,
        first_row_within,
        || {
            // The REST call costs the worker a little: once a second is enough.
            if last_check.elapsed() < Duration::from_secs(1) {
                return Ok(());
            }
            last_check = Instant::now();
            connect.failure().map_or(Ok(()), Err)
        },
    )
    .await;
    connect.stop();
    result
}

/// The JSON schemas JsonConverter needs for the key and the envelope of `public.users`, as
/// Debezium's Postgres connector would describe them (timestamptz as ZonedTimestamp, the text
/// form Sluice already writes).
fn connect_schemas() -> (String, String) {
    use serde_json::json;
    let col = |name: &str, ty: &str, optional: bool| json!({"field": name, "type": ty, "optional": optional});
    let key = json!({"type": "struct", "name": "app.public.users.Key", "optional": false,
        "fields": [col("id", "int64", false)]});
    let row = json!({"type": "struct", "name": "app.public.users.Value", "optional": true,
    "fields": [
        col("id", "int64", false),
        col("first_name", "string", true),
        col("last_name", "string", true),
        col("email", "string", true),
        col("user_type", "string", true),
        col("status", "string", true),
        col("score", "int32", true),
        {"field": "created_at", "type": "string", "optional": true,
         "name": "io.debezium.time.ZonedTimestamp", "version": 1},
    ]});
    let field = |name: &str, schema: &serde_json::Value| {
        let mut f = schema.clone();
        f["field"] = json!(name);
        f
    };
    let source = json!({"type": "struct", "name": "sluice.Source", "optional": false,
    "fields": [
        col("connector", "string", false),
        col("name", "string", true),
        col("db", "string", true),
        col("schema", "string", true),
        col("table", "string", true),
        col("commit_lsn", "string", true),
        col("seq", "int64", true),
        col("tx_id", "int64", true),
        col("ts_us", "int64", true),
        col("ts_ms", "int64", true),
        col("snapshot", "boolean", true),
    ]});
    let envelope = json!({"type": "struct", "name": "app.public.users.Envelope",
    "optional": false, "version": 1,
    "fields": [
        field("before", &row),
        field("after", &row),
        field("source", &source),
        col("op", "string", false),
        col("ts_ms", "int64", true),
    ]});
    (key.to_string(), envelope.to_string())
}

/// Copies `from` into `to` (same partitions, same order), each key and value wrapped as
/// `{"schema":…,"payload":<the original bytes>}`. Returns (messages, value bytes of `from`,
/// value bytes of `to`).
fn copy_with_schemas(brokers: &str, from: &str, to: &str) -> (u64, u64, u64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-apply-jdbc-copy")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut ends = Vec::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        let (_, high) = consumer
            .fetch_watermarks(from, p, Duration::from_secs(10))
            .expect("watermarks");
        ends.push(high);
        tpl.add_partition_offset(from, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let (key_schema, value_schema) = connect_schemas();
    let wrap = |schema: &str, payload: &[u8]| {
        let mut v = Vec::with_capacity(schema.len() + payload.len() + 24);
        v.extend_from_slice(b"{\"schema\":");
        v.extend_from_slice(schema.as_bytes());
        v.extend_from_slice(b",\"payload\":");
        v.extend_from_slice(payload);
        v.push(b'}');
        v
    };
    let mut next = vec![0i64; PARTITIONS as usize];
    let (mut n, mut bytes_in, mut bytes_out) = (0u64, 0u64, 0u64);
    let deadline = Instant::now() + LONG;
    while next.iter().zip(&ends).any(|(n, e)| n < e) {
        assert!(Instant::now() < deadline, "copying {from} took too long");
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.expect("consume");
        let p = msg.partition();
        if msg.offset() < next[p as usize] {
            continue;
        }
        next[p as usize] = msg.offset() + 1;
        let (Some(k), Some(v)) = (msg.key(), msg.payload()) else {
            continue;
        };
        let (key, value) = (wrap(&key_schema, k), wrap(&value_schema, v));
        bytes_in += v.len() as u64;
        bytes_out += value.len() as u64;
        let mut record = BaseRecord::to(to).partition(p).key(&key).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => panic!("produce to {to}: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
        n += 1;
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    let mut copied = 0;
    for p in 0..PARTITIONS {
        let (low, high) = producer
            .client()
            .fetch_watermarks(to, p, Duration::from_secs(10))
            .expect("watermarks");
        copied += (high - low) as u64;
    }
    assert_eq!(copied, n, "not every message reached {to}");
    (n, bytes_in, bytes_out)
}

async fn create_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let result = admin
        .create_topics(
            &[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create topic");
    for r in result {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

fn line(side: &str, r: &Run) -> String {
    format!(
        "{side}: {:.0} rows/s (first → last row {:.0}), {:.1} µs CPU/row (+ {:.1} in the target Postgres), peak RSS {:.0} MB (start → last row {:.1} s, CPU {:.1} s incl. start-up)",
        r.rows_per_s,
        r.first_to_last_rows_per_s,
        r.cpu_us_per_row,
        r.target_cpu_us_per_row,
        r.peak_rss_mb,
        r.wall_s,
        r.cpu_total_s
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows: i64 = env_number("BENCH_ROWS", 200_000);
    let probe = env_flag("BENCH_JDBC_PROBE", true);
    let unnest = env_flag("BENCH_JDBC_UNNEST", true);
    // What the Java side needs, before any server starts.
    require_binary("java", &[], "apt-get install -y openjdk-17-jre-headless");
    let kafka_libs = kafka_libs();
    let version = connector_version();
    let plugin_path = connector_plugin_path(&version);

    let (source, target, broker) = source_target_broker(&[]);
    let brokers = broker.brokers();
    source
        .database_with("bench", &format!("create table users ({TABLE_COLUMNS})"))
        .await;
    let tdb = target
        .database_with(
            "bench",
            &format!(
                "create table users_sluice ({TABLE_COLUMNS}, {APPLIED_AT});
                 create table users_jdbc ({TABLE_COLUMNS}, {APPLIED_AT});"
            ),
        )
        .await;

    // Capture once: the snapshot puts every row into the topic.
    let dir = TempDir::new("bench-apply-jdbc");
    let topic_prefix = "topic_prefix = \"app\"";
    let head = users::capture_users(dir.path(), &brokers, topic_prefix, &source, rows as u64).await;

    // a. Sluice apply alone.
    let apply_config = format!(
        "{head}\n[sinks.bench]\npostgres = {}\nworkers = {WORKERS}\n\
         max_batch_events = {BATCH}\nmax_batch_delay_ms = 20\n\n\
         [[sinks.bench.tables]]\nfrom = \"public.users\"\nto = \"public.users_sluice\"\n",
        target.sluice_connection("bench")
    );
    let started = Instant::now();
    let mut sluice = run_only(
        Path::new(SLUICE),
        dir.path(),
        "apply",
        "apply",
        &apply_config,
    );
    let pid = sluice.pid();
    let sluice_run = {
        let sluice = &mut sluice;
        let tgt = target_of(&target, &tdb).await;
        time_apply(&tgt, "users_sluice", rows, pid, started, LONG, || {
            if sluice.is_running() {
                Ok(())
            } else {
                Err(format!(
                    "sluice apply exited; log:\n{}",
                    sluice.log_tail(30)
                ))
            }
        })
        .await
    }
    .unwrap_or_else(|e| panic!("sluice apply: {e}"));
    assert!(
        sluice.stop(LONG).success(),
        "sluice apply did not stop cleanly"
    );
    eprintln!("{}", line("sluice apply", &sluice_run));

    // b. The Debezium JDBC sink: first on Sluice's topic as it is (schemaless JSON).
    let mut schemaless_outcome = "not tried (BENCH_JDBC_PROBE=0)".to_owned();
    let mut measured: Option<(Run, &str, bool)> = None;
    if probe {
        let setup = ConnectSetup {
            dir: dir.path(),
            name: "jdbc-schemaless",
            brokers: &brokers,
            topic: TOPIC,
            schemas: false,
            target: &target,
            table: "users_jdbc",
            unnest,
        };
        // Start-up (JVM, plugin scan, group join) takes well under this here.
        match run_jdbc(&setup, &kafka_libs, &plugin_path, rows, PROBE_WAIT).await {
            Ok(run) => {
                schemaless_outcome = "works: measured on Sluice's topic as it is".to_owned();
                measured = Some((run, TOPIC, false));
            }
            Err(e) if e.starts_with(CONNECT_EXITED) => panic!("Debezium JDBC sink: {e}"),
            Err(e) => {
                schemaless_outcome = format!(
                    "refused; the task failed with:\n    {}",
                    e.replace('\n', "\n    ")
                );
                tdb.batch_execute("truncate users_jdbc")
                    .await
                    .expect("truncate");
            }
        }
        eprintln!("JDBC sink on Sluice's schemaless topic: {schemaless_outcome}");
    }
    let (mut bytes_plain, mut bytes_schema) = (0u64, 0u64);
    let (jdbc_run, jdbc_topic, with_schemas) = match measured {
        Some(m) => m,
        None => {
            create_topic(&brokers, SCHEMA_TOPIC).await;
            let b = brokers.clone();
            let (n, bin, bout) =
                tokio::task::spawn_blocking(move || copy_with_schemas(&b, TOPIC, SCHEMA_TOPIC))
                    .await
                    .expect("copy task");
            assert_eq!(n as i64, rows, "{TOPIC} holds {n} messages, not {rows}");
            (bytes_plain, bytes_schema) = (bin, bout);
            let setup = ConnectSetup {
                dir: dir.path(),
                name: "jdbc-schemas",
                brokers: &brokers,
                topic: SCHEMA_TOPIC,
                schemas: true,
                target: &target,
                table: "users_jdbc",
                unnest,
            };
            let run = run_jdbc(&setup, &kafka_libs, &plugin_path, rows, LONG)
                .await
                .unwrap_or_else(|e| panic!("Debezium JDBC sink: {e}"));
            (run, SCHEMA_TOPIC, true)
        }
    };
    eprintln!("{}", line("debezium jdbc sink", &jdbc_run));
    // Both tables hold the same rows.
    let diff: i64 = tdb
        .query_one(
            &format!(
                "select count(*) from ((select {COLUMNS} from users_sluice
                                        except select {COLUMNS} from users_jdbc)
                             union all (select {COLUMNS} from users_jdbc
                                        except select {COLUMNS} from users_sluice)) d"
            ),
            &[],
        )
        .await
        .expect("compare")
        .get(0);

    println!();
    println!(
        "apply vs Debezium JDBC sink: {rows} change events (snapshot, op r; 8 columns) from one \
         topic of {PARTITIONS} partitions into one target Postgres; Apache Kafka {KAFKA_VERSION}; \
         this machine, all co-located, one side at a time"
    );
    println!("{}", line("sluice apply          ", &sluice_run));
    println!("{}", line(&format!("debezium jdbc {version}"), &jdbc_run));
    println!(
        "ratios: Sluice/JDBC rows/s {:.2}×; JDBC/Sluice CPU per row {:.2}× (with the target's {:.2}×); JDBC/Sluice peak RSS {:.2}×",
        sluice_run.rows_per_s / jdbc_run.rows_per_s,
        jdbc_run.cpu_us_per_row / sluice_run.cpu_us_per_row,
        (jdbc_run.cpu_us_per_row + jdbc_run.target_cpu_us_per_row)
            / (sluice_run.cpu_us_per_row + sluice_run.target_cpu_us_per_row),
        jdbc_run.peak_rss_mb / sluice_run.peak_rss_mb
    );
    println!("tables differ in {diff} rows (0: the same rows on both sides)");
    let batches = rows as f64 / (WORKERS * BATCH) as f64;
    if batches < 5.0 {
        println!(
            "NOTE: {batches:.1} batches per worker only: the rates above are little more than the \
             target's last inserts (start-up dominates); use BENCH_ROWS of 200000 or more"
        );
    }
    println!(
        "sluice: --only apply, topic {TOPIC}, workers = {WORKERS}, max_batch_events = {BATCH}, \
         max_batch_delay_ms = 20"
    );
    println!(
        "jdbc: Kafka Connect {KAFKA_VERSION} standalone, JVM {}; JsonConverter \
         schemas.enable={with_schemas}; tasks.max={WORKERS}, insert.mode=upsert, \
         primary.key.mode=record_key, delete.enabled=true, schema.evolution=none, \
         batch.size={BATCH}, consumer.override.max.poll.records={BATCH}, \
         dialect.postgres.unnest.insert.enabled={unnest}, offset.flush.interval.ms=1000, \
         connection.url …?reWriteBatchedInserts=true",
        JVM_OPTS.join(" ")
    );
    println!("jdbc on Sluice's schemaless topic: {schemaless_outcome}");
    if with_schemas {
        println!(
            "NOTE: the JDBC sink read {jdbc_topic}, a copy of {TOPIC} with JsonConverter schemas \
             added by the bench (payload bytes unchanged): {:.0} bytes per value against {:.0} \
             in Sluice's topic",
            bytes_schema as f64 / rows as f64,
            bytes_plain as f64 / rows as f64
        );
    }
    drop(broker);
}
