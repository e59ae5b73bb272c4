//! Blob upload throughput through Sluice next to a plain aws-sdk-s3 upload loop, against the
//! same garage server in the same run.
//!
//! `cargo bench --bench blobs` (release build). `BENCH_FILES` files (default 1000) of
//! `BENCH_FILE_KB` KB (default 100) are written to disk. Each round:
//! - plain: the files are uploaded with `put_object`, 16 at a time (Sluice's default
//!   `upload_concurrency`), timed from the first request to the last response; once with the
//!   SDK's default CRC32 checksum, once with SHA-256 checksums (what Sluice sends);
//! - Sluice: a running `sluice run` (capture and apply, warmed up with one row) gets one
//!   transaction inserting a row per file; timed from just before the insert to the moment the
//!   target holds every row with its URL (each object uploaded with its SHA-256 verified by
//!   the store, before its row commits), so capture and Kafka are inside the figure.
//!
//! An untimed plain round warms the store up; then `BENCH_ROUNDS` rounds (default 3), the
//! three paths taking turns going first. It prints each path's rate per round with the CPU
//! time garage and the uploader (this process for the loops, Sluice for Sluice) spent per
//! object, the ratio of the best of each, and each round's Sluice time against that round's
//! faster plain loop. `BENCH_KAFKA_EXTRA` adds lines to the `[kafka]` section (experiments).

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use sluice_test_support::bench::{env_number, print_table_head};
use sluice_test_support::garage::Garage;
use sluice_test_support::process::cpu_seconds;
use sluice_test_support::{Broker, PgCluster, SluiceProcess, TempDir};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const LONG: Duration = Duration::from_secs(600);

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[])
        .await
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(0)
}

/// Uploads every file with a plain put_object loop (the SDK's default CRC32 checksum, or a
/// SHA-256 one); returns the seconds it took.
async fn plain_round(
    garage: &Garage,
    files: &[std::path::PathBuf],
    round: usize,
    sha256: bool,
) -> f64 {
    let client = garage.client();
    let bodies: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("file"))
        .collect();
    let t0 = Instant::now();
    let mut puts = futures_util::stream::iter(bodies.into_iter().enumerate().map(|(i, body)| {
        let client = client.clone();
        let bucket = garage.bucket.clone();
        async move {
            let mut put = client
                .put_object()
                .bucket(bucket)
                .key(format!("plain/{round}/{sha256}/{i}.bin"));
            if sha256 {
                put = put.checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256);
            }
            put.body(aws_sdk_s3::primitives::ByteStream::from(body))
                .send()
                .await
                .expect("put_object")
        }
    }))
    .buffer_unordered(16);
    while puts.next().await.is_some() {}
    t0.elapsed().as_secs_f64()
}

/// Inserts a row per file in one transaction and waits until the target holds every row with
/// its URL; returns the seconds from before the insert.
async fn sluice_round(
    src: &tokio_postgres::Client,
    cloud: &tokio_postgres::Client,
    sluice: &SluiceProcess,
    n: usize,
    round: usize,
    deadline: Instant,
) -> f64 {
    let first = 1 + round * n;
    let t0 = Instant::now();
    src.batch_execute(&format!(
        "insert into reports select g, ((g - 1) % {n}) || '.bin' from generate_series({first}, {}) g",
        first + n - 1
    ))
    .await
    .expect("rows");
    // For lining up Sluice's debug log (UTC timestamps) with the round.
    eprintln!(
        "round {round}: rows committed at unix {:.6}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    );
    let want = (1 + (round + 1) * n) as i64;
    while count(cloud, "select count(*) from reports where url is not null").await < want {
        if Instant::now() >= deadline {
            let log = sluice.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "Sluice did not apply every row; the end of its log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        // Polled every 50 ms: often enough for a ±2% figure over ~2 s, rarely enough not to
        // take the store's CPU on a 2-core machine.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t0.elapsed().as_secs_f64()
}

/// One timed path of a round: its seconds and the CPU seconds garage and Sluice used.
struct Phase {
    seconds: f64,
    garage_cpu: f64,
    sluice_cpu: f64,
    /// This process (the plain loop's uploads and the polling).
    bench_cpu: f64,
}

/// CPU counters at the start of a timed path.
struct PhaseStart {
    pids: (u32, u32),
    garage: f64,
    sluice: f64,
    bench: f64,
}

impl Phase {
    fn start(garage: u32, sluice: u32) -> PhaseStart {
        PhaseStart {
            pids: (garage, sluice),
            garage: cpu_seconds(garage),
            sluice: cpu_seconds(sluice),
            bench: cpu_seconds(std::process::id()),
        }
    }
}

impl PhaseStart {
    fn end(self, seconds: f64) -> Phase {
        Phase {
            seconds,
            garage_cpu: cpu_seconds(self.pids.0) - self.garage,
            sluice_cpu: cpu_seconds(self.pids.1) - self.sluice,
            bench_cpu: cpu_seconds(std::process::id()) - self.bench,
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_number::<usize>("BENCH_FILES", 1000);
    let kb = env_number::<usize>("BENCH_FILE_KB", 100);
    for (k, v) in Garage::env() {
        std::env::set_var(k, v);
    }
    let garage = Garage::start("bench");
    // Test clusters run with synchronous_commit = off, so a commit reaches the WAL (and
    // logical decoding) only at the WAL writer's next round, up to 200 ms later: a delay of
    // the test setting, not of Sluice. A source here commits as production sources do.
    let pg = PgCluster::start_with(&[("shared_buffers", "256MB"), ("synchronous_commit", "on")]);
    let broker = Broker::start();
    pg.create_database("app").await;
    pg.create_database("cloud").await;
    let src = pg.connect("app").await;
    src.batch_execute("create table reports (id int primary key, path text not null)")
        .await
        .expect("source");
    let cloud = pg.connect("cloud").await;
    cloud
        .batch_execute("create table reports (id int primary key, url text, sha text)")
        .await
        .expect("target");
    let dir = TempDir::new("bench-blobs");
    let files_dir = dir.path().join("files");
    std::fs::create_dir_all(&files_dir).expect("files");
    // Incompressible, distinct content.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut files = Vec::new();
    for i in 0..n {
        let mut body = Vec::with_capacity(kb * 1024);
        while body.len() < kb * 1024 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            body.extend_from_slice(&seed.to_le_bytes());
        }
        body.truncate(kb * 1024);
        let path = files_dir.join(format!("{i}.bin"));
        std::fs::write(&path, body).expect("write file");
        files.push(path);
    }
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\npartitions = 4\n{}\n\n\
             [sources.app]\npostgres = {}\ntables = [\"public.reports\"]\n\n\
             {}\n\
             [sinks.cloud]\npostgres = {}\n\
             [[sinks.cloud.tables]]\nfrom = \"public.reports\"\n\
             blobs.url = {{ store = \"bench\", path = \"path\", base_dirs = [\"{}\"], key = \"sluice/{{id}}.bin\", sha256_column = \"sha\" }}\n",
            broker.brokers(),
            std::env::var("BENCH_KAFKA_EXTRA").unwrap_or_default(),
            pg.sluice_connection("app"),
            garage.store_section("bench", &format!("public_url = \"{}/bench/{{key}}\"", garage.endpoint())),
            pg.sluice_connection("cloud"),
            files_dir.display(),
        ),
    )
    .expect("config");
    src.batch_execute("insert into reports values (0, '0.bin')")
        .await
        .expect("warm-up row");
    let mut sluice = SluiceProcess::run(
        Path::new(SLUICE),
        &config,
        &[],
        &dir.path().join("sluice.log"),
    );
    let deadline = Instant::now() + LONG;
    while count(&cloud, "select count(*) from reports where url is not null").await < 1 {
        assert!(
            Instant::now() < deadline,
            "the warm-up row never arrived:\n{}",
            sluice.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let rounds = env_number::<usize>("BENCH_ROUNDS", 3).max(1);
    let (gpid, spid) = (garage.pid(), sluice.pid());
    // Seconds and the CPU seconds garage and Sluice used, per path and round.
    let mut plain: Vec<Phase> = Vec::new();
    let mut plain_sha: Vec<Phase> = Vec::new();
    let mut through: Vec<Phase> = Vec::new();
    // An untimed plain round first: a fresh node's first thousand objects cost it more than
    // later ones, and no path should pay for that.
    plain_round(&garage, &files, usize::MAX, true).await;
    for round in 0..rounds {
        // The paths take turns going first: whatever the store still does for the path
        // before (its background work) then falls on each path alike.
        for path in (0..3).map(|i| (i + round) % 3) {
            let at = Phase::start(gpid, spid);
            match path {
                0 => {
                    let secs = plain_round(&garage, &files, round, false).await;
                    plain.push(at.end(secs));
                }
                1 => {
                    let secs = plain_round(&garage, &files, round, true).await;
                    plain_sha.push(at.end(secs));
                }
                _ => {
                    let secs = sluice_round(&src, &cloud, &sluice, n, round, deadline).await;
                    through.push(at.end(secs));
                }
            }
        }
    }
    assert!(sluice.stop(LONG).success());
    let mb = (n * kb) as f64 / 1024.0;
    let per_round =
        |p: &[Phase], f: &dyn Fn(&Phase) -> String| p.iter().map(f).collect::<Vec<_>>().join(" / ");
    println!();
    println!("blob benchmark: {n} files of {kb} KB ({mb:.1} MB) per round, {rounds} rounds, into one local garage node; this machine, all co-located");
    print_table_head(&[
        "path",
        "objects/s (per round)",
        "MB/s (per round)",
        "garage CPU ms per object",
        "uploader CPU ms per object (the loop's process, or Sluice)",
    ]);
    for (name, phases) in [
        (
            "plain aws-sdk-s3 put_object loop, 16 at a time (default CRC32 checksum)",
            &plain,
        ),
        ("the same loop with SHA-256 checksums", &plain_sha),
        (
            "Sluice: insert → object uploaded and verified → row with URL committed",
            &through,
        ),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} |",
            per_round(phases, &|p| format!("{:.0}", n as f64 / p.seconds)),
            per_round(phases, &|p| format!("{:.1}", mb / p.seconds)),
            per_round(phases, &|p| format!(
                "{:.2}",
                1000.0 * p.garage_cpu / n as f64
            )),
            per_round(phases, &|p| {
                let uploader = if std::ptr::eq(phases, &through) {
                    p.sluice_cpu
                } else {
                    p.bench_cpu
                };
                format!("{:.2}", 1000.0 * uploader / n as f64)
            }),
        );
    }
    let best = |p: &[Phase]| p.iter().map(|p| p.seconds).fold(f64::MAX, f64::min);
    // Each round's Sluice time against the faster plain loop of the same round.
    let mut ratios: Vec<f64> = (0..rounds)
        .map(|r| plain[r].seconds.min(plain_sha[r].seconds) / through[r].seconds)
        .collect();
    let listed = ratios
        .iter()
        .map(|r| format!("{r:.2}"))
        .collect::<Vec<_>>()
        .join(", ");
    ratios.sort_by(f64::total_cmp);
    println!(
        "Sluice / plain throughput (best of each): {:.2} against the default loop, {:.2} against the SHA-256 loop, {:.2} against the faster of the two",
        best(&plain) / best(&through),
        best(&plain_sha) / best(&through),
        best(&plain).min(best(&plain_sha)) / best(&through)
    );
    println!(
        "Sluice / the faster plain loop of the same round: {listed} (median {:.2})",
        ratios[ratios.len() / 2]
    );
}
