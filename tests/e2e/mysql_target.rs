//! Postgres → broker → MariaDB and MySQL 8: the MySQL target sink. Equality after a snapshot
//! and 50k mixed changes (checksums computed on both sides; on both servers), `kill -9`
//! without loss or double application, refused rows in `sluice_dead_letters` (MariaDB).

use sluice_test_support::{MariaDb, PgCluster};

use crate::common::{
    column, deref_workdir, mariadb_and_mysql8, mysql, postgres, sink_section, source_section,
    table_maps, transaction, wait_same_rows, Workdir, LONG,
};

const SOURCE: &str = r#"
create table people (
    id bigint primary key, name text not null, email varchar(200), balance numeric(14,2) not null,
    born date, seen_at timestamptz, active boolean not null, photo bytea, prefs jsonb,
    version int not null default 0, note text
);
alter table people alter column note set storage external;
create table visits (
    person_id bigint, n int, at timestamp(6) not null, score double precision,
    primary key (person_id, n)
);
"#;

const TARGET: &str = r#"
create table people (
    id bigint primary key, name text not null, email varchar(200), balance decimal(14,2) not null,
    born date, seen_at datetime(6), active tinyint(1) not null, photo blob, prefs json,
    version int not null, note longtext, check (balance < 100000000)
);
create table visits (
    person_id bigint, n int, at datetime(6) not null, score double,
    primary key (person_id, n)
);
create table applications (id bigint, version int, n int not null, primary key (id, version));
create trigger count_insert after insert on people for each row
  insert into applications values (new.id, new.version, 1) on duplicate key update n = n + 1;
create trigger count_update after update on people for each row
  insert into applications values (new.id, new.version, 1) on duplicate key update n = n + 1;
"#;

/// Per-row md5s of a canonical text of each row, computed by each database (JSON compared by
/// its values: the two databases order object keys differently).
const PG_PEOPLE: &str = "select md5(concat_ws('|', id, name, coalesce(email, '~'), balance::text,
      coalesce(born::text, '~'),
      coalesce(to_char(seen_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), '~'),
      case when active then '1' else '0' end, coalesce(encode(photo, 'hex'), '~'),
      coalesce(prefs->>'tag', '~'), coalesce(prefs->>'v', '~'), version,
      coalesce(md5(note), '~'))) from people";
const MY_PEOPLE: &str = "select md5(concat_ws('|', id, name, coalesce(email, '~'), balance,
      coalesce(born, '~'), coalesce(date_format(seen_at, '%Y-%m-%d %H:%i:%s.%f'), '~'),
      active, coalesce(lower(hex(photo)), '~'), coalesce(json_value(prefs, '$.tag'), '~'),
      coalesce(json_value(prefs, '$.v'), '~'), version,
      coalesce(md5(note), '~'))) from people";
const PG_VISITS: &str = "select md5(concat_ws('|', person_id, n,
      to_char(at, 'YYYY-MM-DD HH24:MI:SS.US'), coalesce(score::text, '~'))) from visits";
const MY_VISITS: &str = "select md5(concat_ws('|', person_id, n,
      date_format(at, '%Y-%m-%d %H:%i:%s.%f'), coalesce(score, '~'))) from visits";

struct MySqlPipeline {
    source: PgCluster,
    target: MariaDb,
    work: Workdir,
}

deref_workdir!(MySqlPipeline);

impl MySqlPipeline {
    /// A Postgres source applied into `target` (MySQL 8 or MariaDB).
    async fn on(target: MariaDb) -> MySqlPipeline {
        let source = PgCluster::start();
        source.database_with("app", SOURCE).await;
        target.execute(None, "create database warehouse");
        target.execute(Some("warehouse"), TARGET);
        let work = Workdir::new("mysql-target");
        let tables = ["public.people", "public.visits"];
        let sections = source_section("app", &postgres(&source, "app"), &tables, "")
            + &sink_section("warehouse", &mysql(&target, "warehouse"), "")
            + &table_maps("warehouse", &tables.map(|t| (t, "")));
        work.configure(3, "", &sections);
        MySqlPipeline {
            source,
            target,
            work,
        }
    }

    /// Waits until both tables hold the same rows on both sides; returns the row counts.
    async fn wait_equal(&self) -> Vec<usize> {
        let src = self.source.connect("app").await;
        wait_same_rows("the MySQL-family target against the source", || {
            let src = &src;
            async move {
                let mut pairs = Vec::new();
                for (pg, my) in [(PG_PEOPLE, MY_PEOPLE), (PG_VISITS, MY_VISITS)] {
                    pairs.push((column(src, pg).await, self.target.query("warehouse", my)));
                }
                pairs
            }
        })
        .await
    }

    /// Row versions the target's trigger saw applied more than once (must be 0).
    fn applied_twice(&self) -> Vec<String> {
        self.target
            .query("warehouse", "select count(*) from applications where n > 1")
    }
}

async fn seed(db: &tokio_postgres::Client, n: i64) {
    db.batch_execute(&format!(
        "insert into people select g, 'person ' || g, case when g % 3 = 0 then null else 'p' || g || '@example.com' end,
                g * 1.25, date '1970-01-01' + (g % 20000)::int,
                case when g % 4 = 0 then null else timestamptz '2024-01-01 00:00:00+00' + g * interval '1.5 second' end,
                g % 2 = 0, case when g % 5 = 0 then null else decode(md5(g::text), 'hex') end,
                jsonb_build_object('tag', 'x' || g, 'v', 0), 0, repeat(md5(g::text), 100)
           from generate_series(1, {n}) g;
         insert into visits select g / 5, g % 5, timestamp '2024-02-01' + g * interval '1 minute', g / 3.0
           from generate_series(1, {n}) g;"
    ))
    .await
    .expect("seed");
}

/// One transaction of mixed changes; a truncate of `visits` in round 20.
async fn round(db: &mut tokio_postgres::Client, r: i64) -> u64 {
    let base = 1_000_000 + r * 1000;
    let statements = [
        format!("insert into people select g, 'new ' || g, null, g, null, now(), true, null, null, 0, repeat('n', 3000) from generate_series({base}, {base} + 199) g"),
        format!("update people set balance = balance + 1, version = version + 1, prefs = jsonb_build_object('tag', 'r', 'v', version + 1) where id % 47 = {}", r % 47),
        format!("delete from people where id % 199 = {}", r % 199),
        format!("insert into visits select g / 5, g % 5, now(), null from generate_series({b}, {b} + 199) g", b = base * 10),
        format!("update visits set n = n + 10 where person_id % 83 = {} and n < 10", r % 83),
        format!("delete from visits where person_id % 97 = {}", r % 97),
    ];
    let last = (r == 20).then_some("truncate visits");
    transaction(db, &statements, last).await
}

mariadb_and_mysql8!(
    equal_after_snapshot_and_mixed_changes,
    postgres_to_mariadb_equal_after_snapshot_and_mixed_changes,
    postgres_to_mysql8_equal_after_snapshot_and_mixed_changes
);

async fn equal_after_snapshot_and_mixed_changes(target: MariaDb) {
    let server = format!("{:?}", target.flavor());
    let p = MySqlPipeline::on(target).await;
    let mut src = p.source.connect("app").await;
    seed(&src, 5000).await;
    let mut sluice = p.start();
    sluice.wait_log("replication stream started", 1, LONG);
    let (mut r, mut changes) = (0, 0);
    while changes < 50_000 {
        changes += round(&mut src, r).await;
        r += 1;
    }
    let counts = p.wait_equal().await;
    assert!(sluice.stop(LONG).success());
    println!("10k snapshot rows + {changes} changes in {r} transactions: {server} equals the source ({counts:?} rows)");
    assert_eq!(
        p.applied_twice(),
        vec!["0".to_owned()],
        "a row version was applied twice"
    );
    let truncates = p
        .target
        .query("warehouse", "select count(*) from sluice_truncates_done");
    assert_eq!(truncates, vec!["1".to_owned()]);
}

// MariaDB reports a failed CHECK as SQLSTATE 23000, error 4025.
// MySQL 8 reports it as SQLSTATE HY000, error 3819: the class does not say "data", the
// error number does.
mariadb_and_mysql8!(
    survives_kill_9_and_refuses_bad_rows,
    mariadb_target_survives_kill_9_and_refuses_bad_rows_into_dead_letters,
    mysql8_target_survives_kill_9_and_refuses_bad_rows_into_dead_letters,
    ["23000/4025"],
    ["HY000/3819"]
);

async fn survives_kill_9_and_refuses_bad_rows(target: MariaDb, refusal: &str) {
    let p = MySqlPipeline::on(target).await;
    let mut src = p.source.connect("app").await;
    seed(&src, 2000).await;
    let mut sluice = p.start();
    sluice.wait_log("replication stream started", 1, LONG);
    sluice.wait_snapshot_checkpointed(LONG);
    let mut made = 0;
    for kill in 0..3 {
        for r in (kill * 5)..(kill * 5 + 5) {
            made += round(&mut src, r).await;
        }
        sluice.kill9();
        sluice = p.start();
    }
    // A balance the target's CHECK refuses, among good rows.
    src.batch_execute(
        "insert into people (id, name, balance, active) values (9000001, 'ok', 1, true), (9000002, 'too rich', 200000000, true), (9000003, 'ok too', 2, false)",
    )
    .await
    .expect("poison");
    sluice_test_support::wait_for("the dead letter", LONG, || {
        let rows = p
            .target
            .query("warehouse", "select `sqlstate` from sluice_dead_letters");
        async move { (!rows.is_empty()).then_some(()) }
    })
    .await;
    // The refused row is the only difference from the source.
    src.batch_execute("delete from people where id = 9000002")
        .await
        .expect("drop the refused row from the comparison");
    let counts = p.wait_equal().await;
    sluice.stop(LONG);
    let dead = p.target.query(
        "warehouse",
        "select concat(`sqlstate`, ' ', error) from sluice_dead_letters",
    );
    println!("{made} changes, 3 kill -9: equal ({counts:?} rows); dead letters: {dead:?}");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].contains(refusal), "{dead:?}");
    assert_eq!(
        p.applied_twice(),
        vec!["0".to_owned()],
        "a row version was applied twice"
    );
}
