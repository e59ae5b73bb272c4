//! Random faults under a mixed workload, then every row of every table compared.
//!
//! A writer runs transactions of 1–200 row changes over four tables (a TOASTed column under
//! the default replica identity with key changes, a composite key with key changes, and a pair
//! that a target foreign key links, fed from a source without one) while faults come at random
//! moments: `kill -9` and SIGSTOP of Sluice, an immediate stop of the source and of the target
//! Postgres, a `kill -9` of the broker. Table topics are compacted within seconds. When the
//! faults end, the target must equal the source row for row, and a trigger on the target
//! proves no version of a row was applied twice.
//!
//! `SLUICE_CHAOS_SEED` replays a run (the seed is printed); `SLUICE_CHAOS_SECS` sets how long
//! faults go on (default 45). `scripts/soak.sh` runs it for as long as asked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_test_support::SluiceProcess;

use crate::common::{audit, AUDIT};
use crate::pipeline::Pipeline;

const SOURCE: &str = r#"
create table accounts (id bigint primary key, owner text not null, version int not null,
                       doc text);
alter table accounts alter column doc set storage external;
create table lines (order_id int, line int, qty int not null, note text,
                    primary key (order_id, line));
create table institutes (id int primary key, name text not null);
create table members (id int primary key, institute_id int not null, name text not null);
insert into accounts select g, 'owner ' || g, 0, repeat(md5(g::text), 100)
  from generate_series(1, 500) g;
insert into lines select g / 10, g % 10, g, 'note ' || g from generate_series(1, 500) g;
insert into institutes select g, 'institute ' || g from generate_series(1, 10) g;
insert into members select i * 1000 + k, i, 'member ' || k
  from generate_series(1, 10) i, generate_series(0, 4) k;
"#;

const TARGET: &str = r#"
create table accounts (id bigint primary key, owner text not null, version int not null,
                       doc text);
create table lines (order_id int, line int, qty int not null, note text,
                    primary key (order_id, line));
create table institutes (id int primary key, name text not null);
create table members (id int primary key,
                      institute_id int not null references institutes (id),
                      name text not null);
"#;

const TABLES: [(&str, &str); 4] = [
    ("accounts", "id::text"),
    ("lines", "order_id || ',' || line"),
    ("institutes", "id::text"),
    ("members", "id::text"),
];

/// xorshift64*: a small, seedable generator (the test needs replayable choices, not quality).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

/// One source transaction of 1–200 row changes, as SQL.
fn transaction(rng: &mut Rng, round: u64) -> String {
    let n = 1 + rng.below(200);
    let pick = |table: &str| {
        format!("select id from {table} order by md5(id::text || '{round}') limit {n}")
    };
    let body = match rng.below(10) {
        0 => format!(
            "insert into accounts select g, 'owner ' || g, 0, repeat(md5(g::text), 100)
               from generate_series({b}, {b} + {n} - 1) g",
            b = 1_000_000 + round * 1000
        ),
        1 => format!(
            "update accounts set owner = owner || '.', version = version + 1 where id in ({})",
            pick("accounts")
        ),
        2 => format!(
            "update accounts set doc = left(doc, 3000) || '{round}', version = version + 1 where id in ({})",
            pick("accounts")
        ),
        3 => format!(
            "update accounts set id = id + 100000000, version = version + 1
              where id < 100000000 and id in ({})",
            pick("accounts")
        ),
        4 => format!("delete from accounts where id in ({})", pick("accounts")),
        5 => format!(
            "insert into lines select {o}, g, g, 'note ' || g from generate_series(0, {n} - 1) g",
            o = 100_000 + round
        ),
        6 => format!(
            "update lines set qty = qty + 1 where (order_id, line) in
               (select order_id, line from lines order by md5(order_id || ',' || line || '{round}') limit {n})"
        ),
        7 => format!(
            "update lines set line = line + 100000 where line < 100000 and (order_id, line) in
               (select order_id, line from lines order by md5(order_id || ',' || line || '{round}') limit {n})"
        ),
        8 => format!(
            "delete from lines where (order_id, line) in
               (select order_id, line from lines order by md5(order_id || ',' || line || '{round}') limit {n})"
        ),
        _ => {
            // A parent deleted before its children, children inserted before their parent and
            // moved to it: states a source without the foreign key allows in between.
            let new = 1000 + round;
            format!(
                "delete from institutes where id = (select min(id) from institutes);
                 insert into members select {new} * 1000 + k, {new}, 'member ' || k from generate_series(0, 4) k;
                 insert into institutes values ({new}, 'institute {new}');
                 update members set institute_id = {new}
                  where institute_id not in (select id from institutes) and id % 2 = 0;
                 delete from members where institute_id not in (select id from institutes)"
            )
        }
    };
    format!("begin; {body}; commit;")
}

/// (rows lost, rows extra, rows differing) of `table` in the target against the source.
async fn diff(
    src: &tokio_postgres::Client,
    dst: &tokio_postgres::Client,
    table: &str,
    key: &str,
) -> (usize, usize, usize) {
    async fn read(db: &tokio_postgres::Client, sql: &str) -> HashMap<String, String> {
        db.query(sql, &[])
            .await
            .expect("read table")
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect()
    }
    let sql = format!("select {key}, md5(to_jsonb(t)::text) from {table} t");
    let (a, b) = (read(src, &sql).await, read(dst, &sql).await);
    let lost = a.keys().filter(|k| !b.contains_key(*k)).count();
    let extra = b.keys().filter(|k| !a.contains_key(*k)).count();
    let differing = a
        .iter()
        .filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
        .count();
    (lost, extra, differing)
}

enum Fault {
    KillSluice,
    FreezeSluice,
    SourceCrash,
    TargetCrash,
    BrokerKill,
}

async fn chaos(split: bool) {
    let seed: u64 = std::env::var("SLUICE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    let secs: u64 = std::env::var("SLUICE_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    let shape = if split { "capture + apply" } else { "run" };
    eprintln!(
        "chaos: seed {seed} ({shape}, {secs} s of faults); replay with SLUICE_CHAOS_SEED={seed}"
    );
    let mut rng = Rng(seed);

    let mut p = Pipeline::new(
        &["accounts", "lines", "institutes", "members"],
        SOURCE,
        TARGET,
        "",
    )
    .await;
    p.kafka_extra = r#"topic_configs = { "cleanup.policy" = "compact", "segment.ms" = "2000", "min.cleanable.dirty.ratio" = "0.01", "delete.retention.ms" = "86400000" }"#.into();
    let mappings: String = TABLES
        .iter()
        .map(|(t, _)| format!("[[sinks.target.tables]]\nfrom = \"public.{t}\"\n"))
        .collect();
    p.write_config("", &mappings);
    p.target_db()
        .await
        .batch_execute(AUDIT)
        .await
        .expect("audit trigger");

    let names: Vec<(&str, Vec<&str>)> = if split {
        vec![
            ("capture", vec!["--only", "capture"]),
            ("apply", vec!["--only", "apply"]),
        ]
    } else {
        vec![("sluice", vec![])]
    };
    let mut procs: Vec<SluiceProcess> = names.iter().map(|(n, a)| p.start(n, a)).collect();

    // The writer: one transaction at a time, paused while the source is down.
    let gate = Arc::new(tokio::sync::Mutex::new(()));
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let port = p.source.port();
    let writer = {
        let (gate, stop, written) = (gate.clone(), stop.clone(), written.clone());
        let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
        tokio::spawn(async move {
            let connect = || async move {
                let (c, conn) = tokio_postgres::connect(
                    &format!("host=127.0.0.1 port={port} user=postgres dbname=app"),
                    tokio_postgres::NoTls,
                )
                .await
                .ok()?;
                tokio::spawn(conn);
                Some(c)
            };
            let mut client = None;
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _permit = gate.lock().await;
                if client
                    .as_ref()
                    .is_none_or(|c: &tokio_postgres::Client| c.is_closed())
                {
                    client = connect().await;
                }
                let Some(c) = client.as_ref() else { continue };
                round += 1;
                let sql = transaction(&mut rng, round);
                match c.batch_execute(&sql).await {
                    Ok(()) => {
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        // A failed transaction (the server went away) changed nothing.
                        let _ = c.batch_execute("rollback").await;
                    }
                }
                drop(_permit);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let until = Instant::now() + Duration::from_secs(secs);
    let mut faults: HashMap<&str, u32> = HashMap::new();
    while Instant::now() < until {
        tokio::time::sleep(rng.millis(1500, 5000)).await;
        let fault = match rng.below(5) {
            0 => Fault::KillSluice,
            1 => Fault::FreezeSluice,
            2 => Fault::SourceCrash,
            3 => Fault::TargetCrash,
            _ => Fault::BrokerKill,
        };
        let which = rng.below(procs.len() as u64) as usize;
        match fault {
            Fault::KillSluice => {
                *faults.entry("kill -9 of sluice").or_default() += 1;
                procs[which].kill9();
                let (n, a) = &names[which];
                procs[which] = p.start(n, a);
            }
            Fault::FreezeSluice => {
                *faults.entry("SIGSTOP of sluice").or_default() += 1;
                procs[which].freeze(true);
                tokio::time::sleep(rng.millis(1000, 8000)).await;
                procs[which].freeze(false);
            }
            Fault::SourceCrash => {
                *faults.entry("source immediate stop").or_default() += 1;
                let _permit = gate.lock().await;
                p.source.stop_immediate();
                tokio::time::sleep(rng.millis(200, 2000)).await;
                p.source.start_again();
            }
            Fault::TargetCrash => {
                *faults.entry("target immediate stop").or_default() += 1;
                p.target.stop_immediate();
                tokio::time::sleep(rng.millis(200, 2000)).await;
                p.target.start_again();
            }
            Fault::BrokerKill => {
                *faults.entry("kill -9 of the broker").or_default() += 1;
                p.broker.kill();
                tokio::time::sleep(rng.millis(200, 2000)).await;
                p.broker.restart();
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    let transactions = written.load(Ordering::Relaxed);
    eprintln!("chaos: faults {faults:?}; {transactions} source transactions committed");

    let converged = sluice_test_support::wait_for_quiet(Duration::from_secs(240), || async {
        let (src, dst) = (p.source_db().await, p.target_db().await);
        for (t, _) in TABLES {
            if crate::pipeline::checksum(&src, t).await != crate::pipeline::checksum(&dst, t).await
            {
                return None;
            }
        }
        Some(())
    })
    .await;
    let (src, dst) = (p.source_db().await, p.target_db().await);
    let mut report = Vec::new();
    for (t, key) in TABLES {
        let rows: i64 = src
            .query_one(&format!("select count(*) from {t}"), &[])
            .await
            .expect("count")
            .get(0);
        let (lost, extra, differing) = diff(&src, &dst, t, key).await;
        report.push(format!(
            "{t}: {rows} rows, lost {lost}, extra {extra}, differing {differing}"
        ));
    }
    let (versions, twice, regressions) = audit(&dst).await;
    let dead: i64 = dst
        .query_one("select count(*) from sluice.dead_letters", &[])
        .await
        .expect("dead letters")
        .get(0);
    eprintln!(
        "chaos: seed {seed}: {}; account versions applied {versions}, applied twice {twice}, regressions {regressions}, dead letters {dead}",
        report.join("; ")
    );
    assert!(
        converged.is_some(),
        "seed {seed}: the target never equalled the source: {}",
        report.join("; ")
    );
    assert_eq!(
        (twice, regressions),
        (0, 0),
        "seed {seed}: a change was applied twice"
    );
    assert_eq!(
        dead, 0,
        "seed {seed}: valid changes went to the dead letters"
    );
    for p in &mut procs {
        assert!(
            p.is_running(),
            "seed {seed}: a sluice process exited by itself"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_with_one_process() {
    chaos(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_with_capture_and_apply_processes() {
    chaos(true).await;
}
