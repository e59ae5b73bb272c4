//! Kafka over TLS and SASL: the whole pipeline runs through a broker's mutual-TLS listener,
//! then through its SASL_SSL (SCRAM-SHA-512) listener; a wrong SASL password is refused by
//! `sluice check` with a message that names the settings and prints no password.

use std::time::Duration;

use sluice_test_support::kafka::SecureListeners;
use sluice_test_support::sluice::{
    KAFKA_PASSWORD as PASSWORD, KAFKA_WRONG_PASSWORD as WRONG_PASSWORD,
};
use sluice_test_support::tls::TestCa;
use sluice_test_support::{Broker, PgCluster, TempDir};

use crate::common::{assert_refused, column, sluice_check, start_in, wait_same_rows};

/// The config: `kafka` is the `[kafka]` section's body after `brokers`.
fn config(brokers: &str, kafka: &str, source: &PgCluster, target: &PgCluster) -> String {
    format!(
        "[kafka]\nbrokers = \"{brokers}\"\npartitions = 2\n{kafka}\n\n\
         [sources.app]\npostgres = {}\ntables = [\"public.items\"]\ncheckpoint_interval_ms = 200\n\n\
         [sinks.target]\npostgres = {}\n\n[[sinks.target.tables]]\nfrom = \"public.items\"\n",
        source.sluice_connection("app"),
        target.sluice_connection("warehouse"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_over_mutual_tls_and_over_sasl_scram() {
    let dir = TempDir::new("kafka-security");
    let certs = dir.path().join("certs");
    let ca = TestCa::new(&certs, "Sluice test CA");
    let (broker_cert, broker_key) = ca.issue("broker", &["127.0.0.1", "localhost"]);
    let (client_cert, client_key) = ca.issue("sluice-client", &["sluice"]);
    let broker = Broker::start_secure(SecureListeners::new(
        &broker_cert,
        &broker_key,
        &ca.ca_file(),
        "sluice",
        PASSWORD,
    ));
    let password_file = dir.path().join("kafka-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("write password file");

    let source = PgCluster::start();
    let target = PgCluster::start();
    let table = "create table items (id int primary key, name text)";
    let src = source
        .database_with(
            "app",
            &format!(
                "{table}; insert into items select g, 'n' || g from generate_series(1, 300) g;"
            ),
        )
        .await;
    let dst = target.database_with("warehouse", table).await;
    let rows = "select id::text || '|' || name from items";
    let equal = |what: &'static str| {
        let (src, dst) = (&src, &dst);
        async move {
            wait_same_rows(what, || async {
                vec![(
                    column::<String>(src, rows).await,
                    column::<String>(dst, rows).await,
                )]
            })
            .await
        }
    };

    // Mutual TLS: the broker asks for a client certificate its CA signed.
    let tls = format!(
        "[kafka.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        ca.ca_file().display(),
        client_cert.display(),
        client_key.display()
    );
    let config_path = dir.path().join("sluice.toml");
    std::fs::write(
        &config_path,
        config(&broker.ssl_brokers(), &tls, &source, &target),
    )
    .expect("write config");
    let mut sluice = start_in(dir.path(), &[]);
    src.batch_execute("update items set name = 'tls ' || name where id <= 100")
        .await
        .expect("changes");
    assert_eq!(equal("over mutual TLS").await, vec![300]);
    sluice.stop(Duration::from_secs(30));

    // SASL_SSL with SCRAM-SHA-512, the password read from a file; capture and apply go on
    // from their checkpoints through the other listener.
    let sasl = format!(
        "[kafka.tls]\nca_file = \"{}\"\n\n[kafka.sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"sluice\"\npassword = \"file:{}\"\n",
        ca.ca_file().display(),
        password_file.display()
    );
    std::fs::write(
        &config_path,
        config(&broker.sasl_ssl_brokers(), &sasl, &source, &target),
    )
    .expect("write config");
    let (code, text) = sluice_check(&config_path);
    assert_eq!(code, 0, "check over SASL_SSL: {text}");
    let mut sluice = start_in(dir.path(), &[]);
    src.batch_execute(
        "insert into items select g, 'sasl ' || g from generate_series(301, 400) g;
         delete from items where id % 10 = 0;",
    )
    .await
    .expect("changes");
    assert_eq!(equal("over SASL_SSL").await, vec![360]);
    sluice.stop(Duration::from_secs(30));

    // A wrong password: refused, the settings named, no password printed.
    std::fs::write(&password_file, WRONG_PASSWORD).expect("write password file");
    let (code, text) = sluice_check(&config_path);
    assert_refused(
        code,
        &text,
        &["refused the SASL login", "kafka.sasl.password"],
    );
    for secret in [PASSWORD, WRONG_PASSWORD] {
        assert!(!text.contains(secret), "a password was printed: {text}");
    }
    let log = std::fs::read_to_string(dir.path().join("sluice.log")).expect("sluice log");
    assert!(!log.contains(PASSWORD), "the password is in sluice.log");
}
