//! Hostile identifiers end to end: a schema, a table and columns whose names hold spaces,
//! quotes, dots, non-ASCII letters, mixed case, a reserved word and the longest name the
//! server allows, through the snapshot and the stream: Postgres → Postgres, and MariaDB →
//! MariaDB and MySQL 8 → MySQL 8.

use sluice_test_support::{MariaDb, PgCluster};

use crate::common::{column, mariadb_and_mysql8, mysql, postgres, wait_same_rows, Workdir, LONG};

/// Postgres' longest identifier: 63 bytes.
fn long_name() -> String {
    "long_column_name_".repeat(4)[..63].to_owned()
}

fn schema_sql() -> String {
    format!(
        r#"create schema "Ünïcode. Schema";
create table "Ünïcode. Schema"."Order ""Lines"" 2024" (
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
    let table = "\"Ünïcode. Schema\".\"Order \"\"Lines\"\" 2024\"";
    let insert = |from: i32, to: i32| {
        format!(
            "insert into {table} select g, 'from ' || g, '名前 ' || g, g, 'it''s \"' || g || '\"', repeat('x', g)
               from generate_series({from}, {to}) g"
        )
    };
    src.batch_execute(&insert(1, 200)).await.expect("rows");
    let id = toml_string("\"Ünïcode. Schema\".Order \"Lines\" 2024");
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

/// MySQL's longest identifier: 64 characters.
fn my_long_name() -> String {
    "long_column_name_".repeat(4)[..64].to_owned()
}

/// The table in database `db`: a backtick, double quotes, a dot, spaces, unicode, mixed case,
/// a reserved word, 64 characters.
fn my_schema(db: &str) -> String {
    format!(
        "create database `{db}`;
         create table `{db}`.`Order \"Lines\" v.2` (
           `ID` int primary key, `select` text, `名前` varchar(50), `with space` int,
           `a``tick` text, `{}` text
         );",
        my_long_name()
    )
}

async fn mysql_names_round_trip(server: MariaDb) {
    let w = Workdir::new("identifiers-mysql");
    // Source and target: two databases of one server.
    let (shop, warehouse) = ("Shop é.1", "Warehouse é.2");
    server.execute(None, &my_schema(shop));
    server.execute(None, &my_schema(warehouse));
    let table = |db: &str| format!("`{db}`.`Order \"Lines\" v.2`");
    let insert = |from: i32, to: i32| {
        let values: Vec<String> = (from..=to)
            .map(|g| format!("({g}, 'from {g}', '名前 {g}', {g}, 'it''s `{g}`', repeat('x', {g}))"))
            .collect();
        format!("insert into {} values {};", table(shop), values.join(","))
    };
    server.execute(None, &insert(1, 200));
    let id = |db: &str| toml_string(&format!("\"{db}\".\"Order \"\"Lines\"\" v.2\""));
    let sections = format!(
        "\n[sources.shop]\n{}\ntables = [{}]\ncheckpoint_interval_ms = 200\n\n\
         [sinks.target]\n{}\n\n[[sinks.target.tables]]\nfrom = {}\nto = {}\n",
        mysql(&server, "mysql"),
        id(shop),
        mysql(&server, "mysql"),
        id(shop),
        id(warehouse),
    );
    w.configure(2, "", &sections);
    let sluice = w.start();
    sluice.wait_log("binlog stream started", 1, LONG);
    server.execute(
        None,
        &format!(
            "{} update {t} set `select` = 'updated', `{}` = 'long' where `ID` % 3 = 0;
             delete from {t} where `ID` % 7 = 0;",
            insert(201, 300),
            my_long_name(),
            t = table(shop),
        ),
    );
    let rows = |db: &str| {
        format!(
            "select concat_ws('|', `ID`, `select`, `名前`, `with space`, `a``tick`, `{}`) from {}",
            my_long_name(),
            table(db)
        )
    };
    let counts = wait_same_rows("hostile MySQL identifiers", || async {
        vec![(
            server.query("mysql", &rows(shop)),
            server.query("mysql", &rows(warehouse)),
        )]
    })
    .await;
    assert_eq!(counts, vec![258]);
}

mariadb_and_mysql8!(
    mysql_names_round_trip,
    mariadb_names_with_backticks_quotes_dots_unicode_and_64_characters_round_trip,
    mysql8_names_with_backticks_quotes_dots_unicode_and_64_characters_round_trip
);
