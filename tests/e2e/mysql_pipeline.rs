//! MariaDB and MySQL 8 → broker → Postgres, the whole pipeline: equality after a snapshot and
//! 50k mixed changes (key changes and a truncate among them) across a server restart, and
//! `kill -9` of Sluice several times without a change lost or applied twice. Compared by
//! per-row checksums computed by each database. Each test runs on both servers.

use sluice_test_support::{MariaDb, PgCluster};

use crate::common::{
    audit, column, deref_workdir, mariadb_and_mysql8, mysql, postgres, sink_section,
    source_section, table_maps, wait_same_rows, Workdir, AUDIT, LONG,
};

const SOURCE: &str = r#"
create table accounts (
  id bigint primary key, name varchar(100) not null, balance decimal(14,2) not null,
  born date, seen_at datetime(6), active tinyint not null, photo blob,
  version int not null default 0, note text
);
create table visits (
  account_id bigint, n int, at timestamp(6) not null default current_timestamp(6),
  score double, primary key (account_id, n)
);
"#;

const TARGET: &str = r#"
create table accounts (
  id bigint primary key, name text not null, balance numeric(14,2) not null, born date,
  seen_at timestamp(6), active smallint not null, photo bytea, version int not null, note text
);
create table visits (
  account_id bigint, n int, at timestamptz not null, score double precision,
  primary key (account_id, n)
);
"#;

const MY_ACCOUNTS: &str = "select md5(concat_ws('|', id, name, balance, coalesce(born, '~'),
      coalesce(date_format(seen_at, '%Y-%m-%d %H:%i:%s.%f'), '~'), active,
      coalesce(lower(hex(photo)), '~'), version, coalesce(md5(note), '~'))) from accounts";
const PG_ACCOUNTS: &str = "select md5(concat_ws('|', id, name, balance::text,
      coalesce(born::text, '~'), coalesce(to_char(seen_at, 'YYYY-MM-DD HH24:MI:SS.US'), '~'),
      active, coalesce(encode(photo, 'hex'), '~'), version, coalesce(md5(note), '~')))
      from accounts";
const MY_VISITS: &str = "set time_zone = '+00:00'; select md5(concat_ws('|', account_id, n,
      date_format(at, '%Y-%m-%d %H:%i:%s.%f'),
      coalesce(score, '~'))) from visits";
const PG_VISITS: &str = "select md5(concat_ws('|', account_id, n,
      to_char(at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), coalesce(score::text, '~')))
      from visits";

struct Pipeline {
    source: MariaDb,
    target: PgCluster,
    work: Workdir,
}

deref_workdir!(Pipeline);

impl Pipeline {
    async fn new(source: MariaDb) -> Pipeline {
        source.execute(None, "create database shop");
        source.execute(Some("shop"), SOURCE);
        // Numbers 0–10,000 in a table Sluice does not capture (MySQL has no `seq_0_to_n`).
        for start in (0..=10_000).step_by(2_000) {
            let values: Vec<String> = (start..(start + 2_000).min(10_001))
                .map(|i| format!("({i})"))
                .collect();
            source.execute(
                Some("shop"),
                &format!(
                    "create table if not exists numbers (seq int primary key);
                     insert into numbers values {};",
                    values.join(",")
                ),
            );
        }
        let target = PgCluster::start();
        target
            .database_with("warehouse", &format!("{TARGET}{AUDIT}"))
            .await;
        let work = Workdir::new("mysql-pipeline");
        let maps = [
            ("shop.accounts", "public.accounts"),
            ("shop.visits", "public.visits"),
        ];
        let sections = source_section("shop", &mysql(&source, "shop"), &["accounts", "visits"], "")
            + &sink_section("warehouse", &postgres(&target, "warehouse"), "")
            + &table_maps("warehouse", &maps);
        work.configure(3, "", &sections);
        Pipeline {
            source,
            target,
            work,
        }
    }

    fn seed(&self, n: i64) {
        self.source.execute(
            Some("shop"),
            &format!(
                "insert into accounts select seq, concat('account ', seq), seq * 1.25,
                   if(seq % 4 = 0, null, date_add('1970-01-01', interval seq % 20000 day)),
                   if(seq % 3 = 0, null, date_add('2024-01-01', interval seq * 1500 microsecond)),
                   seq % 2, if(seq % 5 = 0, null, unhex(md5(seq))), 0, repeat(md5(seq), 20)
                 from numbers where seq between 1 and {n};
                 insert into visits (account_id, n, at, score)
                   select seq div 5, seq % 5, timestamp('2024-02-01') + interval seq minute, seq * 0.25
                   from numbers where seq between 1 and {n};"
            ),
        );
    }

    /// One transaction of mixed changes (about 600); a truncate of `visits` in round 20.
    /// Returns the number of rows changed.
    fn round(&self, r: i64) -> u64 {
        let base = 1_000_000 + r * 1000;
        let truncate = if r == 20 { "truncate visits;" } else { "" };
        let out = self.source.query(
            "shop",
            &format!(
                "start transaction;
                 insert into accounts select {base} + seq, concat('new ', seq), seq, null,
                   now(6), 1, null, 0, repeat('n', 300) from numbers where seq <= 199;
                 select row_count();
                 update accounts set balance = balance + 1, version = version + 1,
                   name = concat(name, '+') where id % 47 = {m47};
                 select row_count();
                 delete from accounts where id % 199 = {m199};
                 select row_count();
                 insert into visits (account_id, n, score)
                   select ({base} * 10 + seq) div 5, ({base} * 10 + seq) % 5, null from numbers where seq <= 199;
                 select row_count();
                 update visits set n = n + 10 where account_id % 83 = {m83} and n < 10;
                 select row_count();
                 delete from visits where account_id % 97 = {m97};
                 select row_count();
                 commit;
                 {truncate}",
                m47 = r % 47,
                m199 = r % 199,
                m83 = r % 83,
                m97 = r % 97,
            ),
        );
        out.iter()
            .filter_map(|l| l.trim().parse::<u64>().ok())
            .sum()
    }

    /// Waits until both tables hold the same rows on both sides; returns the row counts.
    async fn wait_equal(&self) -> Vec<usize> {
        let dst = self.target.connect("warehouse").await;
        wait_same_rows("Postgres against the MySQL-family source", || {
            let dst = &dst;
            async move {
                let mut pairs = Vec::new();
                for (my, pg) in [(MY_ACCOUNTS, PG_ACCOUNTS), (MY_VISITS, PG_VISITS)] {
                    pairs.push((self.source.query("shop", my), column(dst, pg).await));
                }
                pairs
            }
        })
        .await
    }

    /// (row versions applied twice, version regressions) in the target.
    async fn audit(&self) -> (i64, i64) {
        let (_, twice, regressions) = audit(&self.target.connect("warehouse").await).await;
        (twice, regressions)
    }
}

mariadb_and_mysql8!(
    equal_after_50k_changes_and_a_server_restart,
    mariadb_to_postgres_equal_after_snapshot_50k_changes_and_a_server_restart,
    mysql8_to_postgres_equal_after_snapshot_50k_changes_and_a_server_restart
);

async fn equal_after_50k_changes_and_a_server_restart(source: MariaDb) {
    let server = format!("{:?}", source.flavor());
    let mut p = Pipeline::new(source).await;
    let restart_after_round = 45;
    p.seed(5000);
    let mut sluice = p.start();
    sluice.wait_log("binlog stream started", 1, LONG);
    let (mut r, mut changes) = (0, 0);
    while changes < 50_000 {
        changes += p.round(r);
        r += 1;
        if r == restart_after_round {
            // The source goes away mid-stream; capture reconnects and resumes from its
            // checkpoint.
            p.source.restart();
        }
    }
    let counts = p.wait_equal().await;
    assert!(
        sluice.log_text().matches("binlog stream started").count() >= 2,
        "capture never reconnected after the {server} restart"
    );
    assert!(sluice.stop(LONG).success());
    let (twice, regressions) = p.audit().await;
    println!("10k snapshot rows + {changes} changes in {r} transactions across a {server} restart: equal ({counts:?} rows)");
    assert!(r > 45, "the restart happened mid-stream");
    assert_eq!(
        (twice, regressions),
        (0, 0),
        "applied twice, version regressions"
    );
}

mariadb_and_mysql8!(
    capture_survives_kill_9,
    mariadb_capture_survives_kill_9_without_loss_or_double_application,
    mysql8_capture_survives_kill_9_without_loss_or_double_application,
    ["from the GTID position"],
    ["from the GTID set"]
);

/// `resumed` names how the server's GTIDs let a restarted capture resume.
async fn capture_survives_kill_9(source: MariaDb, resumed: &str) {
    let p = Pipeline::new(source).await;
    p.seed(2000);
    let mut sluice = p.start();
    sluice.wait_snapshot_checkpointed(LONG);
    let mut changes = 0;
    for kill in 0..3 {
        for r in (kill * 6)..(kill * 6 + 6) {
            changes += p.round(r);
        }
        sluice.kill9();
        sluice = p.start();
    }
    for r in 18..24 {
        changes += p.round(r);
    }
    let counts = p.wait_equal().await;
    assert!(
        sluice
            .log_text()
            .contains(&format!("binlog stream started ({resumed})")),
        "a restarted capture resumes {resumed}"
    );
    assert!(sluice.stop(LONG).success());
    let (twice, regressions) = p.audit().await;
    println!("{changes} changes in 24 transactions, 3 kill -9: equal ({counts:?} rows)");
    assert_eq!(
        (twice, regressions),
        (0, 0),
        "applied twice, version regressions"
    );
}
