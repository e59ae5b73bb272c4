//! A whole pipeline for one test: source Postgres → broker → target Postgres, and sluice.

use std::time::Duration;

use sluice_test_support::{PgCluster, SluiceProcess};

use crate::common::{postgres, sink_section, table_maps, transaction, Fixture, LONG};

/// A [`Fixture`] whose source is also applied into a target Postgres (database `warehouse`).
pub struct Pipeline {
    fixture: Fixture,
    pub target: PgCluster,
}

impl std::ops::Deref for Pipeline {
    type Target = Fixture;

    fn deref(&self) -> &Fixture {
        &self.fixture
    }
}

impl std::ops::DerefMut for Pipeline {
    fn deref_mut(&mut self) -> &mut Fixture {
        &mut self.fixture
    }
}

impl Pipeline {
    /// Starts both databases (`app` on the source, `warehouse` on the target, each prepared
    /// with its SQL) and a broker, and writes a config that captures `tables` and maps each to
    /// the same name in the target. `sink_extra` goes into `[sinks.target]`.
    pub async fn new(
        tables: &[&str],
        source_sql: &str,
        target_sql: &str,
        sink_extra: &str,
    ) -> Pipeline {
        let target = PgCluster::start();
        target.database_with("warehouse", target_sql).await;
        let fixture = Fixture::started(PgCluster::start(), tables, source_sql).await;
        let p = Pipeline { fixture, target };
        let maps: Vec<_> = tables.iter().map(|t| (format!("public.{t}"), "")).collect();
        p.write_sink(sink_extra, &table_maps("target", &maps));
        p
    }

    /// A pipeline of `tables` (`schema` on both sides) whose source ran `sql` before sluice
    /// started; returns it with sluice once the target equals the source, and the row counts.
    pub async fn equal_after(
        tables: &[&str],
        schema: &str,
        sql: &str,
    ) -> (Pipeline, SluiceProcess, Vec<i64>) {
        let p = Pipeline::new(tables, schema, schema, "").await;
        let (_, sluice) = p.start_after(sql).await;
        let counts = p.wait_equal(LONG).await;
        (p, sluice, counts)
    }

    /// Runs `sql` in the source, then starts `sluice run`; returns a source client and sluice.
    pub async fn start_after(&self, sql: &str) -> (tokio_postgres::Client, SluiceProcess) {
        let src = self.source_db().await;
        src.batch_execute(sql).await.expect("source rows");
        (src, self.run("sluice", &[]))
    }

    /// Rewrites the config with `[sinks.target]` (the lines `sink_extra`) and these
    /// `[[sinks.target.tables]]` sections.
    pub fn write_sink(&self, sink_extra: &str, mappings: &str) {
        let sink = sink_section("target", &postgres(&self.target, "warehouse"), sink_extra);
        self.fixture.write_config(&format!("{sink}{mappings}"));
    }

    pub async fn source_db(&self) -> tokio_postgres::Client {
        self.source.connect("app").await
    }

    pub async fn target_db(&self) -> tokio_postgres::Client {
        self.target.connect("warehouse").await
    }

    /// Waits until every table has the same content on both sides (order-independent
    /// checksum), and returns the row counts.
    pub async fn wait_equal(&self, timeout: Duration) -> Vec<i64> {
        let src = self.source_db().await;
        let dst = self.target_db().await;
        let last = std::cell::RefCell::new(String::new());
        let result = sluice_test_support::wait_for_quiet(timeout, || {
            let (src, dst, last) = (&src, &dst, &last);
            async move {
                let mut counts = Vec::new();
                let mut equal = true;
                let mut report = String::new();
                for t in &self.tables {
                    let a = checksum(src, t).await;
                    let b = checksum(dst, t).await;
                    report.push_str(&format!("{t}: source {a:?} target {b:?}\n"));
                    equal &= a == b;
                    counts.push(a.0);
                }
                *last.borrow_mut() = report;
                equal.then_some(counts)
            }
        })
        .await;
        match result {
            Some(counts) => counts,
            None => panic!(
                "target never equalled source within {timeout:?}:\n{}",
                last.borrow()
            ),
        }
    }
}

/// (row count, md5 over the sorted md5s of every row as JSON): equal on both sides iff the
/// tables hold the same rows (JSON makes json/jsonb columns compare by content).
pub async fn checksum(db: &tokio_postgres::Client, table: &str) -> (i64, String) {
    let row = db
        .query_one(
            &format!(
                "select count(*), coalesce(md5(string_agg(h, ',' order by h)), '')
                   from (select md5(to_jsonb(t)::text) as h from {table} t) s"
            ),
            &[],
        )
        .await
        .expect("checksum query");
    (row.get(0), row.get(1))
}

pub const WAIT: Duration = LONG;

/// Three tables covering every type (the capture type test's table), TOASTed values, composite
/// and changing keys.
pub static SCHEMA: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{}{TABLES_MORE}", crate::capture_types::SETUP));

const TABLES_MORE: &str = r#"
create table accounts (
    id bigint primary key,
    owner text not null,
    balance numeric(14,2) not null,
    version int not null default 0,
    doc text
);
alter table accounts alter column doc set storage external;
create table lines (
    order_id int,
    line int,
    qty int not null,
    note text,
    primary key (order_id, line)
);
"#;

/// A `types` row for every `g` of `generate_series(from, to)`.
fn types_rows(from: i64, to: i64) -> String {
    format!(
        r#"insert into types select g, g % 2 = 0, (g % 30000)::int2, g, g::int8 * 1000003,
              g::numeric / 7, g * 1.5, g::real / 3, g::float8 / 7,
              'row ' || g || E' \u00e9 "q"\n', 'v' || g,
              '2024-01-01'::timestamp + g * interval '1 minute',
              '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 second',
              date '2000-01-01' + g::int, time '00:00' + g * interval '1 second', '12:00:00+02'::timetz,
              g * interval '1 hour 1 second', md5(g::text)::uuid,
              json_build_object('g', g), jsonb_build_array(g, 'x'), decode(md5(g::text), 'hex'),
              array[g::int, null, -g::int], array['a' || g, null], '{{}}', array[[g::int, 1], [2, 3]],
              (case when g % 2 = 0 then 'happy' else 'sad' end)::mood
         from generate_series({from}::int8, {to}::int8) g"#
    )
}

/// Existing rows before Sluice starts: `per_table` rows in each table, plus edge values.
pub async fn seed(db: &tokio_postgres::Client, per_table: i64) {
    db.batch_execute(&types_rows(1, per_table - 2))
        .await
        .expect("seed types");
    db.batch_execute(
        r#"insert into types (id, ts, tstz, d, by, f4, f8, n, iv) values
             (-1, '0044-03-15 12:00:00 BC', '0001-01-01 00:00:00+00 BC', '0044-03-15 BC', '\x', 'NaN', '-Infinity', 'NaN', '-1 days'),
             (-2, 'infinity', '-infinity', 'infinity', '\x00ff', 'Infinity', 'NaN', '-0.001', '1 year 2 months 3 days 04:05:06.5')"#,
    )
    .await
    .expect("seed edge rows");
    db.batch_execute(&format!(
        "insert into accounts select g, 'owner ' || g, g * 10.5, 0, repeat(md5(g::text), 100)
           from generate_series(1, {per_table}) g;
         insert into lines select g / 10, g % 10, g % 50, 'note ' || g
           from generate_series(1, {per_table}) g;"
    ))
    .await
    .expect("seed accounts and lines");
}

/// One transaction of mixed changes (inserts, updates with unchanged TOAST values, key
/// changes, deletes; a truncate in round 30). Returns how many row changes it made.
pub async fn workload_round(db: &mut tokio_postgres::Client, r: i64) -> u64 {
    let base = 1_000_000 + r * 1000;
    let statements = [
        format!("insert into accounts select g, 'owner ' || g, g, 0, repeat(md5(g::text), 100) from generate_series({base}, {base} + 149) g"),
        format!("update accounts set balance = balance + 1, version = version + 1 where id % 53 = {}", r % 53),
        format!("update accounts set doc = doc || 'x', version = version + 1 where id % 401 = {}", r % 401),
        format!("delete from accounts where id % 211 = {}", r % 211),
        types_rows(base, base + 99),
        format!("update types set i4 = i4 + 1, t = t || '.', jb = jsonb_build_object('r', {r}) where id % 61 = {}", r % 61),
        format!("delete from types where id % 197 = {}", r % 197),
        format!("insert into lines select g / 10, g % 10, g % 50, 'note ' || g from generate_series({b10}, {b10} + 149) g", b10 = base * 10),
        format!("update lines set qty = qty + 1 where order_id % 37 = {}", r % 37),
        format!("update lines set line = line + 1000 where order_id % 101 = {} and line < 1000", r % 101),
        format!("delete from lines where order_id % 173 = {}", r % 173),
    ];
    let last = (r == 30).then_some("truncate lines");
    transaction(db, &statements, last).await
}
