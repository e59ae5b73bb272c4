//! `sluice status`: the pipeline's state as tables in the terminal. With `[http]` in the
//! config it asks the running process (`GET /status`); otherwise, or when nothing answers
//! there, it reads what it can directly: each source's checkpoint from Kafka, and each sink's
//! stored offsets from its target beside the ends of its partitions in Kafka.

use std::io::{Read as _, Write as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret as _;
use serde_json::Value as J;
use sluice_core::topic_name;

use crate::apply::target::{self, TargetConnection};
use crate::config::Config;
use crate::http::HttpConfig;

pub async fn run(path: &std::path::Path) -> ExitCode {
    let config = match crate::load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(http) = &config.http {
        match from_api(http) {
            Ok(status) => {
                print_api(&status, &http.listen);
                return ExitCode::SUCCESS;
            }
            Err(e) => eprintln!(
                "the running sluice does not answer at http.listen = {}: {e}; reading Kafka and the targets instead",
                http.listen
            ),
        }
    }
    direct(&config).await
}

/// `GET /status` from the running process (one request, HTTP/1.1, the token when set).
fn from_api(http: &HttpConfig) -> Result<J, String> {
    let token = match &http.token {
        Some(t) => Some(sluice_core::secret::resolve(t, "http.token")?),
        None => None,
    };
    let mut stream = std::net::TcpStream::connect(&http.listen).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {}\r\n", t.expose_secret()))
        .unwrap_or_default();
    write!(
        stream,
        "GET /status HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n",
        http.listen
    )
    .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("an answer that is not HTTP")?;
    match head.split(' ').nth(1) {
        Some("200") => {}
        Some("401") => return Err("it refused the token of http.token".into()),
        other => return Err(format!("it answered {}", other.unwrap_or("nothing"))),
    }
    serde_json::from_str(body).map_err(|e| format!("an answer that is not JSON: {e}"))
}

/// Left-aligned columns, separated by two spaces.
fn print_table(head: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(head.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn text(v: &J) -> String {
    match v {
        J::Null => "-".into(),
        J::String(s) => s.clone(),
        J::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.1}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn print_api(status: &J, listen: &str) {
    println!("sluice at {listen}");
    println!();
    let empty = serde_json::Map::new();
    let sources = status["sources"].as_object().unwrap_or(&empty);
    let rows: Vec<Vec<String>> = sources
        .iter()
        .map(|(name, s)| {
            vec![
                name.clone(),
                text(&s["state"]),
                text(&s["events_published"]),
                text(&s["lag_bytes"]),
                text(&s["behind_s"]),
                text(&s["checkpoint"]["position"]),
                text(&s["checkpoint"]["age_s"]),
            ]
        })
        .collect();
    print_table(
        &[
            "SOURCE",
            "STATE",
            "PUBLISHED",
            "LAG BYTES",
            "BEHIND S",
            "CHECKPOINT",
            "CHECKPOINT AGE S",
        ],
        &rows,
    );
    println!();
    let sinks = status["sinks"].as_object().unwrap_or(&empty);
    let rows: Vec<Vec<String>> = sinks
        .iter()
        .map(|(name, s)| {
            vec![
                name.clone(),
                text(&s["state"]),
                text(&s["events_applied"]),
                text(&s["dead_letters"]),
                text(&s["lag_records"]),
                s["held"].as_array().map_or(0, Vec::len).to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "SINK",
            "STATE",
            "APPLIED",
            "DEAD LETTERS",
            "LAG RECORDS",
            "HELD",
        ],
        &rows,
    );
    let mut rows = Vec::new();
    for (sink, s) in sinks {
        for (topic, t) in s["topics"].as_object().unwrap_or(&empty) {
            rows.push(vec![
                sink.clone(),
                topic.clone(),
                text(&t["lag_s"]),
                text(&t["last_source_commit"]),
            ]);
        }
    }
    if !rows.is_empty() {
        println!();
        print_table(&["SINK", "TOPIC", "LAG S", "LAST SOURCE COMMIT"], &rows);
    }
}

/// Without the API: checkpoints from Kafka, offsets from the targets, ends from Kafka.
async fn direct(config: &Config) -> ExitCode {
    let mut failed = false;
    let mut rows = Vec::new();
    for name in config.sources.keys() {
        let found = async {
            let store = sluice_kafka::checkpoint::CheckpointStore::open(&config.kafka, name)
                .await
                .map_err(|e| crate::telemetry::error_chain(&e))?;
            store
                .load()
                .await
                .map_err(|e| crate::telemetry::error_chain(&e))
        }
        .await;
        rows.push(match found {
            Ok(Some(cp)) => vec![
                name.clone(),
                cp.position.clone(),
                if cp.snapshot_done { "done" } else { "not done" }.into(),
            ],
            Ok(None) => vec![name.clone(), "no checkpoint yet".into(), "-".into()],
            Err(e) => {
                failed = true;
                vec![name.clone(), format!("cannot read: {e}"), "-".into()]
            }
        });
    }
    if !rows.is_empty() {
        print_table(&["SOURCE", "CHECKPOINT", "SNAPSHOT"], &rows);
        println!();
    }
    let mut rows = Vec::new();
    for (name, sink) in &config.sinks {
        match sink_lag(config, name, sink).await {
            Ok(lags) => {
                for (topic, partitions, next, lag) in lags {
                    rows.push(vec![
                        name.clone(),
                        topic,
                        partitions.to_string(),
                        next.to_string(),
                        lag.to_string(),
                    ]);
                }
            }
            Err(e) => {
                failed = true;
                rows.push(vec![
                    name.clone(),
                    format!("cannot read: {e}"),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]);
            }
        }
    }
    if !rows.is_empty() {
        print_table(
            &["SINK", "TOPIC", "PARTITIONS", "APPLIED", "LAG RECORDS"],
            &rows,
        );
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Per topic a sink reads: its partitions, the events applied (offsets stored) and the
/// records after them.
async fn sink_lag(
    config: &Config,
    name: &str,
    sink: &crate::config::SinkConfig,
) -> Result<Vec<(String, i32, i64, i64)>, String> {
    let connection = TargetConnection::of(sink).ok_or("no target connection")?;
    let mut topics: Vec<String> = sink
        .tables
        .iter()
        .filter_map(|m| m.source_table())
        .map(|t| topic_name(&config.kafka.topic_prefix, &t))
        .collect();
    topics.sort();
    topics.dedup();
    let kafka = config.kafka.clone();
    let ends = tokio::task::spawn_blocking(move || -> Result<Vec<(String, i32, i64)>, String> {
        let err = |e: sluice_kafka::KafkaError| crate::telemetry::error_chain(&e);
        let counts = sluice_kafka::partition_counts(&kafka, &topics).map_err(err)?;
        let marks = sluice_kafka::consumer::Watermarks::new(&kafka).map_err(err)?;
        let mut out = Vec::new();
        for topic in topics {
            for p in 0..counts.get(&topic).copied().unwrap_or(0) {
                out.push((topic.clone(), p, marks.high(&topic, p).map_err(err)?));
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| e.to_string())??;
    let partitions: Vec<(Arc<str>, i32)> = ends
        .iter()
        .map(|(t, p, _)| (Arc::from(t.as_str()), *p))
        .collect();
    let stored = target::load_offsets(&connection, name, &partitions).await?;
    let mut per_topic: std::collections::BTreeMap<String, (i32, i64, i64)> = Default::default();
    for (topic, p, high) in ends {
        let next = stored
            .get(&(Arc::from(topic.as_str()), p))
            .map(|(n, _)| *n)
            .unwrap_or(0);
        let e = per_topic.entry(topic).or_default();
        e.0 += 1;
        e.1 += next;
        e.2 += (high - next).max(0);
    }
    Ok(per_topic
        .into_iter()
        .map(|(t, (n, next, lag))| (t, n, next, lag))
        .collect())
}
