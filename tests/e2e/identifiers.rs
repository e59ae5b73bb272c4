//! Hostile identifiers end to end: a schema, a table and columns whose names hold spaces,
//! quotes, non-ASCII letters, mixed case, a reserved word and 63 bytes, captured from
//! Postgres and applied to Postgres through the snapshot and the stream.

use sluice_test_support::PgCluster;

use crate::common::{column, postgres, wait_same_rows, Workdir};

/// Postgres' longest identifier: 63 bytes.
fn long_name() -> String {
    "long_column_name_".repeat(4)[..63].to_owned()
}

fn schema_sql() -> String {
    format!(
        r#"create schema "Ünïcode Schema";
create table "Ünïcode Schema"."Order ""Lines"" 2024" (
    "ID" int primary key, "select" text, "名前" text, "with space" int, "a""quote" text,
    "{}" text
);"#,
        long_name()
    )
}

/// A TOML string holding `text` (JSON's string escapes are TOML's).
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("string")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_quotes_spaces_unicode_and_63_bytes_round_trip() {
    let w = Workdir::new("identifiers");
    let source = PgCluster::start();
    let target = PgCluster::start();
    let src = source.database_with("app", &schema_sql()).await;
    let dst = target.database_with("warehouse", &schema_sql()).await;
    let table = "\"Ünïcode Schema\".\"Order \"\"Lines\"\" 2024\"";
    let insert = |from: i32, to: i32| {
        format!(
            "insert into {table} select g, 'from ' || g, '名前 ' || g, g, 'it''s \"' || g || '\"', repeat('x', g)
               from generate_series({from}, {to}) g"
        )
    };
    src.batch_execute(&insert(1, 200)).await.expect("rows");
    let id = toml_string("Ünïcode Schema.Order \"Lines\" 2024");
    let sections = format!(
        "\n[sources.app]\n{}\ntables = [{id}]\ncheckpoint_interval_ms = 200\n\n\
         [sinks.target]\n{}\n\n[[sinks.target.tables]]\nfrom = {id}\n",
        postgres(&source, "app"),
        postgres(&target, "warehouse"),
    );
    w.configure(2, "", &sections);
    let _sluice = w.start();
    src.batch_execute(&format!(
        "{}; update {table} set \"select\" = 'updated', \"{}\" = 'long' where \"ID\" % 3 = 0;
         delete from {table} where \"ID\" % 7 = 0;",
        insert(201, 300),
        long_name()
    ))
    .await
    .expect("changes");
    let rows = format!(
        "select concat_ws('|', \"ID\", \"select\", \"名前\", \"with space\", \"a\"\"quote\", \"{}\") from {table}",
        long_name()
    );
    let counts = wait_same_rows("hostile identifiers", || async {
        vec![(
            column::<String>(&src, &rows).await,
            column::<String>(&dst, &rows).await,
        )]
    })
    .await;
    assert_eq!(counts, vec![258]);
}
