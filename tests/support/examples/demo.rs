//! The quickstart: Sluice replicating a sample Postgres database through Kafka into a second
//! Postgres, on private servers started here and stopped at the end. Run through
//! `scripts/demo.sh`.

use std::path::PathBuf;
use std::time::Duration;

use sluice_test_support::{wait_for, Broker, PgCluster, SluiceProcess, TempDir};

const WAIT: Duration = Duration::from_secs(60);

const SOURCE_SCHEMA: &str = "
create table customers (id serial primary key, name text not null, email text);
create table orders (id serial primary key, customer_id int not null references customers,
                     total numeric(10,2) not null, status text not null default 'new');
insert into customers (name, email) values ('Ada', 'ada@example.com'), ('Grace', 'grace@example.com'),
                                           ('Linus', 'linus@example.com');
insert into orders (customer_id, total, status) values (1, 12.50, 'new'), (2, 99.99, 'paid'), (3, 5.00, 'new');
";

// The target names things its own way: `orders` becomes `sales` with renamed columns.
const TARGET_SCHEMA: &str = "
create table customers (id int primary key, name text not null, email text);
create table sales (order_id int primary key, customer_id int not null, amount numeric(10,2) not null,
                    status text not null, loaded_at timestamptz not null default now());
";

async fn show(db: &tokio_postgres::Client, title: &str) {
    println!("\n{title}");
    for (table, sql) in [
        (
            "customers",
            "select id, name, coalesce(email, '') from customers order by id",
        ),
        (
            "sales",
            "select order_id, customer_id, amount::text, status from sales order by order_id",
        ),
    ] {
        let rows = db.query(sql, &[]).await.expect("query target");
        println!("  target {table}:");
        for r in rows {
            let cells: Vec<String> = (0..r.len())
                .map(|i| {
                    r.try_get::<_, i32>(i)
                        .map(|v| v.to_string())
                        .or_else(|_| r.try_get::<_, String>(i))
                        .unwrap_or_default()
                })
                .collect();
            println!("    {}", cells.join(" | "));
        }
    }
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.map(|r| r.get(0)).unwrap_or(-1)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sluice_bin = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/debug/sluice".into()),
    );
    println!(
        "starting a source Postgres 15 (wal_level=logical), a target Postgres and an Apache Kafka broker…"
    );
    let source = PgCluster::start();
    let target = PgCluster::start();
    let broker = Broker::start();
    source.create_database("shop").await;
    target.create_database("reporting").await;
    let src = source.connect("shop").await;
    let dst = target.connect("reporting").await;
    src.batch_execute(SOURCE_SCHEMA)
        .await
        .expect("source schema");
    dst.batch_execute(TARGET_SCHEMA)
        .await
        .expect("target schema");

    let dir = TempDir::new("demo");
    let config = dir.path().join("sluice.toml");
    let text = format!(
        r#"[kafka]
brokers = "{brokers}"

[sources.shop]
postgres = {src}
tables = ["public.customers", "public.orders"]

[sinks.reporting]
postgres = {dst}

[[sinks.reporting.tables]]
from = "public.customers"

[[sinks.reporting.tables]]
from = "public.orders"
to = "public.sales"
columns = {{ order_id = "id", amount = "total" }}
"#,
        brokers = broker.brokers(),
        src = source.sluice_connection("shop"),
        dst = target.sluice_connection("reporting"),
    );
    std::fs::write(&config, &text).expect("write config");
    println!("\nconfig ({}):\n{text}", config.display());

    let mut sluice = SluiceProcess::run(&sluice_bin, &config, &[], &dir.path().join("sluice.log"));
    wait_for("the snapshot in the target", WAIT, || async {
        (count(&dst, "select count(*) from sales").await == 3).then_some(())
    })
    .await;
    show(&dst, "initial snapshot applied:").await;

    src.batch_execute(
        "insert into customers (name, email) values ('Margaret', 'margaret@example.com');
         insert into orders (customer_id, total) values (4, 42.00);
         update orders set status = 'paid' where id = 1;
         update customers set email = null where name = 'Grace';
         delete from orders where id = 3;",
    )
    .await
    .expect("changes");
    println!("\nin the source: insert customer 4 and order 4, pay order 1, clear Grace's email, delete order 3");
    wait_for("the changes in the target", WAIT, || async {
        let paid = count(&dst, "select count(*) from sales where status = 'paid'").await;
        let total = count(&dst, "select count(*) from sales").await;
        let emails = count(&dst, "select count(email) from customers").await;
        (paid == 2 && total == 3 && emails == 3).then_some(())
    })
    .await;
    show(&dst, "after the changes:").await;
    println!(
        "\nSluice's own state in the target: {} partition offsets in sluice.apply_offsets, {} dead letters",
        count(&dst, "select count(*) from sluice.apply_offsets").await,
        count(&dst, "select count(*) from sluice.dead_letters").await
    );

    let status = sluice.stop(WAIT);
    println!(
        "\nsluice stopped ({status}). Its log:\n{}",
        sluice.log_text()
    );
    println!("stopping both Postgres servers and the broker.");
}
