//! The quickstart: Sluice capturing a sample Postgres table into Kafka, on private servers
//! started here and stopped at the end. Run through `scripts/demo.sh`.

use std::path::PathBuf;
use std::time::Duration;

use sluice_test_support::{Broker, PgCluster, SluiceProcess, TempDir, TopicReader};

const WAIT: Duration = Duration::from_secs(60);

fn show(reader: &TopicReader, from: usize) {
    for r in &reader.records[from..] {
        match &r.value {
            Some(v) => println!(
                "  op={} key={} before={} after={}",
                v["op"].as_str().unwrap_or("?"),
                r.key.clone().unwrap_or_default(),
                v["before"],
                v["after"]
            ),
            None => println!("  tombstone key={}", r.key.clone().unwrap_or_default()),
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sluice_bin = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/debug/sluice".into()),
    );
    println!("starting a private Postgres 15 (wal_level=logical) and a tansu broker…");
    let pg = PgCluster::start();
    let broker = Broker::start();
    pg.create_database("shop").await;
    let db = pg.connect("shop").await;
    db.batch_execute(
        "create table orders (id serial primary key, customer text not null, total numeric(10,2), status text);
         insert into orders (customer, total, status) values
           ('ada', 12.50, 'new'), ('grace', 99.99, 'paid'), ('linus', 5.00, 'new');",
    )
    .await
    .expect("sample schema");
    let dir = TempDir::new("demo");
    let config = dir.path().join("sluice.toml");
    let text = format!(
        "[kafka]\nbrokers = \"{}\"\n\n[sources.shop]\npostgres = {}\ntables = [\"public.orders\"]\n",
        broker.brokers(),
        pg.sluice_connection("shop")
    );
    std::fs::write(&config, &text).expect("write config");
    println!("\nconfig ({}):\n{text}", config.display());

    let mut sluice = SluiceProcess::run(&sluice_bin, &config, &[], &dir.path().join("sluice.log"));
    sluice.wait_log("replication stream started", 1, WAIT);
    let mut reader = TopicReader::new(&broker.brokers(), "sluice.public.orders");
    reader.read_until(WAIT, "the snapshot", |r| r.len() >= 3);
    println!("initial snapshot → topic sluice.public.orders:");
    show(&reader, 0);

    db.batch_execute(
        "insert into orders (customer, total, status) values ('margaret', 42.00, 'new');
         update orders set status = 'paid' where customer = 'ada';
         delete from orders where customer = 'linus';",
    )
    .await
    .expect("changes");
    // insert, update, delete + tombstone
    reader.read_until(WAIT, "the changes", |r| r.len() >= 7);
    println!("\nafter an insert, an update and a delete:");
    show(&reader, 3);

    let status = sluice.stop(WAIT);
    println!(
        "\nsluice stopped ({status}); its checkpoint is in topic sluice.__sluice_capture.shop.\nlog:\n{}",
        sluice.log_text()
    );
    println!("stopping Postgres and the broker.");
}
