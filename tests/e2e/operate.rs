//! Operating Sluice: the HTTP API of `sluice run` (`[http]`). After a known workload the
//! counters in `/metrics` and `/status` equal the rows written; `/health/ready` answers 200
//! once capture and apply run; the token guards `/status` and `/metrics`, not `/health/*`.

use serde_json::Value as J;
use sluice_test_support::{free_port, http_get, wait_for};

use crate::common::{table_maps, LONG};
use crate::pipeline::Pipeline;

const TOKEN_ENV: &str = "SLUICE_TEST_HTTP_TOKEN";
const TOKEN: &str = "operate-Token-5e81";

/// The value of the sample `name{labels}` in Prometheus text.
fn sample(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_status_count_what_was_written() {
    let schema = "create table items (id int primary key, n int, note text)";
    let p = Pipeline::new(&["items"], schema, schema, "").await;
    let addr = format!("127.0.0.1:{}", free_port());
    std::env::set_var(TOKEN_ENV, TOKEN);
    let http = format!("\n[http]\nlisten = \"{addr}\"\ntoken = \"env:{TOKEN_ENV}\"\n");
    p.write_sink("", &(table_maps("target", &[("public.items", "")]) + &http));
    let (src, sluice) = p
        .start_after("insert into items select g, g, 'snapshot' from generate_series(1, 500) g")
        .await;
    let ready = wait_for("/health/ready to answer 200", LONG, || async {
        let (code, body) = http_get(&addr, "/health/ready", None)?;
        (code == 200).then_some(body)
    })
    .await;
    assert_eq!(
        serde_json::from_str::<J>(&ready).expect("json")["ready"],
        true
    );
    src.batch_execute(
        "insert into items select g, g, 'streamed' from generate_series(501, 800) g;
         update items set n = n + 1 where id % 5 = 0 and id <= 500;
         delete from items where id % 10 = 1 and id > 500;",
    )
    .await
    .expect("workload");
    // 500 snapshot reads, 300 inserts, 100 updates, 30 deletes.
    let written = 930.0;
    assert_eq!(p.wait_equal(LONG).await, vec![770]);
    let metrics = wait_for("the counters to reach the rows written", LONG, || async {
        let (code, body) = http_get(&addr, "/metrics", Some(TOKEN))?;
        assert_eq!(code, 200, "{body}");
        let applied = sample(&body, "sluice_events_applied_total", "sink=\"target\"")?;
        (applied >= written).then_some(body)
    })
    .await;
    assert_eq!(
        sample(&metrics, "sluice_events_published_total", "source=\"app\""),
        Some(written)
    );
    assert_eq!(
        sample(&metrics, "sluice_events_applied_total", "sink=\"target\""),
        Some(written)
    );
    assert_eq!(
        sample(&metrics, "sluice_dead_letters_total", "sink=\"target\""),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "sluice_source_up", "source=\"app\""),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "sluice_sink_up", "sink=\"target\""),
        Some(1.0)
    );

    // The source's lag: WAL past the checkpoint (measured every 5 s), and how far behind its
    // commits the streamed changes were confirmed.
    let status = wait_for("the source's WAL lag in /status", LONG, || async {
        let (code, body) = http_get(&addr, "/status", Some(TOKEN))?;
        assert_eq!(code, 200, "{body}");
        let status: J = serde_json::from_str(&body).ok()?;
        status["sources"]["app"]["lag_bytes"].as_i64()?;
        Some(status)
    })
    .await;
    assert!(status["sources"]["app"]["behind_s"]
        .as_f64()
        .is_some_and(|s| s >= 0.0));
    assert_eq!(status["sources"]["app"]["state"], "running");
    assert_eq!(status["sources"]["app"]["events_published"], 930);
    assert!(status["sources"]["app"]["checkpoint"]["position"].is_string());
    assert_eq!(status["sinks"]["target"]["state"], "running");
    assert_eq!(status["sinks"]["target"]["events_applied"], 930);
    assert_eq!(status["sinks"]["target"]["dead_letters"], 0);
    // End-to-end lag of the table's topic: from a source commit to the target commit.
    let topic = &status["sinks"]["target"]["topics"]["sluice.public.items"];
    let lag_s = topic["lag_s"].as_f64().expect("lag_s");
    assert!(lag_s >= 0.0, "{topic}");
    assert!(topic["last_source_commit"].is_string(), "{topic}");
    let lag = sample(
        &metrics,
        "sluice_apply_lag_seconds",
        "sink=\"target\",topic=\"sluice.public.items\"",
    );
    assert!(lag.is_some_and(|l| l >= 0.0), "{metrics}");

    // The token guards what shows data; health stays open.
    for path in ["/status", "/metrics"] {
        assert_eq!(
            http_get(&addr, path, None).map(|r| r.0),
            Some(401),
            "{path}"
        );
        assert_eq!(
            http_get(&addr, path, Some("wrong")).map(|r| r.0),
            Some(401),
            "{path}"
        );
    }
    assert_eq!(
        http_get(&addr, "/health/live", None).map(|r| r.0),
        Some(200)
    );
    // The status page holds no data itself: without the token it asks for it.
    let page = sluice_test_support::chromium(&format!("http://{addr}/"), 3000, None);
    assert!(page.contains("wants a bearer token"), "{page}");
    assert!(!page.contains("data-field=\"events_applied\""), "{page}");
    assert!(!sluice.log_text().contains(TOKEN));
}

/// The sink's consumer lag in `/status` (records in Kafka not yet applied, summed over its
/// partitions), once measured.
fn lag(addr: &str) -> Option<i64> {
    let (code, body) = http_get(addr, "/status", None)?;
    assert_eq!(code, 200, "{body}");
    let status: J = serde_json::from_str(&body).ok()?;
    status["sinks"]["target"]["lag_records"].as_i64()
}

/// Consumer lag rises while the target is down and apply cannot write, and falls to zero
/// once it is back and has caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_rises_while_the_target_is_down_and_returns_to_zero() {
    let schema = "create table items (id int primary key, n int, note text)";
    let mut p = Pipeline::new(&["items"], schema, schema, "").await;
    let addr = format!("127.0.0.1:{}", free_port());
    let http = format!("\n[http]\nlisten = \"{addr}\"\n");
    p.write_sink("", &(table_maps("target", &[("public.items", "")]) + &http));
    let (src, mut sluice) = p
        .start_after("insert into items select g, g, 'before' from generate_series(1, 100) g")
        .await;
    p.wait_equal(LONG).await;
    wait_for("lag 0 after the snapshot", LONG, || async {
        (lag(&addr)? == 0).then_some(())
    })
    .await;
    p.target.stop();
    src.batch_execute(
        "insert into items select g, g, 'while down' from generate_series(101, 400) g",
    )
    .await
    .expect("rows while the target is down");
    let behind = wait_for("lag to reach the 300 rows written", LONG, || async {
        let l = lag(&addr)?;
        (l >= 300).then_some(l)
    })
    .await;
    assert_eq!(behind, 300, "one record per inserted row");
    p.target.start_again();
    assert_eq!(p.wait_equal(LONG).await, vec![400]);
    wait_for("lag back to 0", LONG, || async {
        (lag(&addr)? == 0).then_some(())
    })
    .await;
    let (_, metrics) = http_get(&addr, "/metrics", None).expect("metrics");
    let per_partition: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("sluice_consumer_lag_records{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(per_partition, 0.0, "{metrics}");
    assert!(
        metrics.contains("sluice_consumer_lag_records{"),
        "{metrics}"
    );

    // `sluice status` asks the running process…
    let status = |what: &str| {
        let args = ["status", "--config", p.config.to_str().expect("utf-8 path")];
        let (code, out, err) = sluice_test_support::sluice::run_to_end(
            std::path::Path::new(crate::common::SLUICE),
            &args,
            LONG,
        );
        assert!(code.success(), "sluice status ({what}): {out}{err}");
        (out, err)
    };
    let (out, _) = status("through the API");
    let sink_line = out
        .lines()
        .find(|l| l.starts_with("target "))
        .unwrap_or_else(|| panic!("no sink line: {out}"));
    let cells: Vec<&str> = sink_line.split_whitespace().collect();
    assert_eq!(cells[..3], ["target", "running", "400"], "{out}");
    // …and, with it stopped, reads Kafka and the target itself.
    assert!(sluice.stop(LONG).success());
    let (out, err) = status("directly");
    assert!(err.contains("does not answer"), "{err}");
    let topic_line = out
        .lines()
        .find(|l| l.starts_with("target ") && l.contains("sluice.public.items"))
        .unwrap_or_else(|| panic!("no topic line: {out}"));
    let cells: Vec<&str> = topic_line.split_whitespace().collect();
    assert_eq!(cells[2..], ["3", "400", "0"], "{out}");
    assert!(out.contains("app ") && out.contains("done"), "{out}");
}

/// A row the target refuses for now (its parent is not there) holds its partition: `/status`
/// shows the hold, `/health/ready` fails once it is older than `stuck_after_s`, and both clear
/// when the parent arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_row_shows_in_status_and_fails_readiness_after_stuck_after() {
    let source = "create table parents (id int primary key);
                  create table children (id int primary key, parent_id int not null);";
    let target = "create table parents (id int primary key);
                  create table children (id int primary key,
                                         parent_id int not null references parents (id));";
    let p = Pipeline::new(&["parents", "children"], source, target, "").await;
    let addr = format!("127.0.0.1:{}", free_port());
    let http = format!("\n[http]\nlisten = \"{addr}\"\nstuck_after_s = 1\n");
    let maps = table_maps("target", &[("public.parents", ""), ("public.children", "")]);
    p.write_sink("foreign_key_wait_ms = 600000", &(maps + &http));
    let (src, _sluice) = p.start_after("insert into parents values (1)").await;
    p.wait_equal(LONG).await;
    src.batch_execute("insert into children values (10, 7)")
        .await
        .expect("an orphan");
    let status = |path: &'static str| {
        let addr = addr.clone();
        async move {
            let (code, body) = http_get(&addr, path, None)?;
            Some((code, serde_json::from_str::<J>(&body).ok()?))
        }
    };
    let (_, held) = wait_for("the hold in /status", LONG, || async {
        let (_, s) = status("/status").await?;
        let held = s["sinks"]["target"]["held"].as_array()?.clone();
        (!held.is_empty()).then_some(((), held))
    })
    .await;
    assert_eq!(held.len(), 1);
    assert!(held[0]["topic"]
        .as_str()
        .is_some_and(|t| t.ends_with("public.children")));
    let reasons = wait_for("/health/ready to fail", LONG, || async {
        let (code, r) = status("/health/ready").await?;
        (code == 503).then_some(r["reasons"].to_string())
    })
    .await;
    assert!(
        reasons.contains("held") && reasons.contains("stuck_after_s"),
        "{reasons}"
    );
    src.batch_execute("insert into parents values (7)")
        .await
        .expect("the parent");
    p.wait_equal(LONG).await;
    wait_for("/health/ready to pass again", LONG, || async {
        let (code, r) = status("/health/ready").await?;
        (code == 200 && r["ready"] == true).then_some(())
    })
    .await;
    let (_, s) = status("/status").await.expect("status");
    assert_eq!(s["sinks"]["target"]["held"], serde_json::json!([]));
    assert_eq!(s["sinks"]["target"]["dead_letters"], 0);
}

/// A MySQL-family source reports its binlog lag and counts; a database of the same server is
/// the target.
async fn mysql_source_reports_its_lag(server: sluice_test_support::MariaDb) {
    use crate::common::{mysql, sink_section, source_section, Workdir};
    server.execute(None, "create database shop; create database warehouse");
    let table = "create table items (id int primary key, note text)";
    server.execute(Some("shop"), table);
    server.execute(Some("warehouse"), table);
    let addr = format!("127.0.0.1:{}", free_port());
    let work = Workdir::new("operate-mysql");
    let sections = source_section("shop", &mysql(&server, "shop"), &["items"], "")
        + &sink_section("warehouse", &mysql(&server, "warehouse"), "")
        + &table_maps("warehouse", &[("shop.items", "warehouse.items")])
        + &format!("\n[http]\nlisten = \"{addr}\"\n");
    work.configure(3, "", &sections);
    let _sluice = work.start();
    let values: Vec<String> = (1..=200).map(|i| format!("({i}, 'n{i}')")).collect();
    server.execute(
        Some("shop"),
        &format!("insert into items values {};", values.join(",")),
    );
    let status = wait_for(
        "the source's binlog lag and 200 rows applied",
        LONG,
        || async {
            let (_, body) = http_get(&addr, "/status", None)?;
            let s: J = serde_json::from_str(&body).ok()?;
            s["sources"]["shop"]["lag_bytes"].as_i64()?;
            (s["sinks"]["warehouse"]["events_applied"] == 200).then_some(s)
        },
    )
    .await;
    assert_eq!(status["sources"]["shop"]["events_published"], 200);
    assert_eq!(status["sources"]["shop"]["state"], "running");
    assert!(status["sources"]["shop"]["checkpoint"]["position"]
        .as_str()
        .is_some_and(|p| p.contains(':')));
    // The status tables in the target database, written with the rows.
    let totals = server.query(
        "warehouse",
        "select target_table, sum(upserts), sum(deletes), sum(dead_letters)
           from sluice_table_status group by sink, target_table",
    );
    assert_eq!(totals, vec!["warehouse.items\t200\t0\t0".to_string()]);
    let history = server.query("warehouse", "select sum(events) from sluice_sync_history");
    assert_eq!(history, vec!["200".to_string()]);
}

crate::common::mariadb_and_mysql8!(
    mysql_source_reports_its_lag,
    mariadb_source_reports_its_binlog_lag_and_counts,
    mysql8_source_reports_its_binlog_lag_and_counts
);

/// The status page at `/`, rendered in headless Chromium, shows a table's lag and a sink's
/// dead letter; its screenshot is kept in the target directory (`status-page.png`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_lag_and_a_dead_letter_in_chromium() {
    let schema = "create table items (id int primary key, n int, note text)";
    let target = "create table items (id int primary key, n int check (n >= 0), note text)";
    let p = Pipeline::new(&["items"], schema, target, "").await;
    let addr = format!("127.0.0.1:{}", free_port());
    let http = format!("\n[http]\nlisten = \"{addr}\"\n");
    p.write_sink("", &(table_maps("target", &[("public.items", "")]) + &http));
    let (src, _sluice) = p
        .start_after("insert into items select g, g, 'ok' from generate_series(1, 50) g")
        .await;
    src.batch_execute("insert into items values (51, -1, 'refused by the target')")
        .await
        .expect("a row the target refuses");
    wait_for("the dead letter in /status", LONG, || async {
        let (_, body) = http_get(&addr, "/status", None)?;
        let s: J = serde_json::from_str(&body).ok()?;
        (s["sinks"]["target"]["dead_letters"] == 1).then_some(())
    })
    .await;
    let url = format!("http://{addr}/");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let dom = sluice_test_support::chromium(&url, 5000, Some(&shot));
    let field = |name: &str| {
        let at = dom
            .find(&format!("data-field=\"{name}\""))
            .unwrap_or_else(|| panic!("no {name} on the page: {dom}"));
        let text = &dom[at..];
        let start = text.find('>').expect("a cell") + 1;
        let end = text.find('<').expect("a cell end");
        text[start..end].to_owned()
    };
    assert_eq!(field("dead_letters"), "1");
    assert!(dom.contains("data-topic=\"sluice.public.items\""), "{dom}");
    assert!(field("lag_s").ends_with(" s"), "{}", field("lag_s"));
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000),
        "a screenshot at {}",
        shot.display()
    );
}
