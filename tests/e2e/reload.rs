//! SIGHUP reloads the config: an invalid one is refused and the pipeline keeps running; a
//! valid one that adds a mapping starts it, without restarting what did not change.

use crate::common::{count, LONG};
use crate::pipeline::Pipeline;

const TABLES: &str = "create table a (id int primary key, v text);
                      create table b (id int primary key, v text);";

fn hangup(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_refuses_a_bad_config_and_starts_an_added_mapping() {
    let p = Pipeline::new(&["a", "b"], TABLES, TABLES, "").await;
    // The sink maps only `a` to begin with.
    p.write_sink("", "[[sinks.target.tables]]\nfrom = \"public.a\"\n");
    let src = p.source_db().await;
    src.batch_execute(
        "insert into a select g, 'a' || g from generate_series(1, 200) g;
         insert into b select g, 'b' || g from generate_series(1, 300) g;",
    )
    .await
    .expect("rows");
    let mut sluice = p.run("sluice", &[]);
    let dst = p.target_db().await;
    sluice_test_support::wait_for("a applied", LONG, || async {
        (count(&dst, "select count(*) from a").await == 200).then_some(())
    })
    .await;
    assert_eq!(
        count(&dst, "select count(*) from b").await,
        0,
        "b is not mapped yet"
    );

    // An invalid config is refused; the pipeline goes on as it was.
    let good = p.edit_config(|t| {
        t.replace(
            "from = \"public.a\"",
            "from = \"public.a\"\nfilter = \"after.v +\"",
        )
    });
    hangup(sluice.pid());
    sluice.wait_log("reload refused", 1, LONG);
    assert!(
        sluice.log_text().contains("CEL syntax error"),
        "{}",
        sluice.log_text()
    );
    src.batch_execute("insert into a values (201, 'after the refused reload')")
        .await
        .expect("insert");
    sluice_test_support::wait_for("a still applied", LONG, || async {
        (count(&dst, "select count(*) from a").await == 201).then_some(())
    })
    .await;

    // A valid config adding the mapping of `b`: the sink restarts with it (b's topic holds
    // its snapshot), the capture, unchanged, keeps running.
    std::fs::write(
        &p.config,
        format!("{good}[[sinks.target.tables]]\nfrom = \"public.b\"\n"),
    )
    .expect("config with b");
    hangup(sluice.pid());
    sluice.wait_log("reload applied", 1, LONG);
    src.batch_execute("insert into b values (301, 'live'); insert into a values (202, 'live')")
        .await
        .expect("inserts");
    let counts = p.wait_equal(LONG).await;
    assert_eq!(counts, vec![202, 301]);
    let log = sluice.log_text();
    assert!(log.contains("restarted=apply target"), "{log}");
    assert_eq!(
        log.matches("replication stream started").count(),
        1,
        "the capture was not restarted"
    );
    assert!(sluice.stop(LONG).success());
}
