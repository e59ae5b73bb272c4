//! `sluice replay`: move a sink's stored offsets back so that it applies changes again.
//!
//! The offsets live in the target (`sluice.apply_offsets`), written with the rows. A replay
//! rewrites them for the chosen partitions and forgets their last applied source positions
//! (otherwise every replayed event would be skipped as already applied). A running sink's
//! workers notice a stored offset that moved back within seconds and have the consumer read
//! again from there; a stopped sink starts there.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::{topic_name, TableId};
use sluice_kafka::ReplayFrom;

use crate::apply::target::{self, TargetConnection};
use crate::progress::Progress;

/// Parses `--from`.
pub fn parse_from(text: &str) -> Result<ReplayFrom, String> {
    if text == "beginning" {
        return Ok(ReplayFrom::Beginning);
    }
    if let Some(t) = text.strip_prefix("time:") {
        return parse_rfc3339_ms(t).map(ReplayFrom::Time).ok_or_else(|| {
            format!("--from {text}: {t:?} is not an RFC 3339 time such as 2026-11-22T10:00:00Z")
        });
    }
    if let Some(rest) = text.strip_prefix("offset:") {
        let mut parts = rest.rsplitn(3, '/');
        let (Some(offset), Some(partition), Some(topic)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "--from {text}: write offset:TOPIC/PARTITION/OFFSET"
            ));
        };
        let partition: i32 = partition
            .parse()
            .map_err(|_| format!("--from {text}: {partition:?} is not a partition number"))?;
        let offset: i64 = offset
            .parse()
            .map_err(|_| format!("--from {text}: {offset:?} is not an offset"))?;
        return Ok(ReplayFrom::Offset(topic.to_owned(), partition, offset));
    }
    Err(format!(
        "--from {text}: write `beginning`, `time:2026-11-22T10:00:00Z` or `offset:TOPIC/PARTITION/OFFSET`"
    ))
}

/// An RFC 3339 time (`2026-11-22T10:00:00Z`, `…T10:00:00.250+01:00`) as Unix milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { text.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        ms = padded.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    // Days from the civil date (proleptic Gregorian), after Howard Hinnant's algorithm.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + s) - offset_s) * 1000 + ms)
}

/// Runs `sluice replay`.
pub async fn run(
    path: &std::path::Path,
    sink_name: &str,
    from: &str,
    tables: &[String],
    wait: bool,
) -> ExitCode {
    let config = match crate::config::Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(sink) = config.sinks.get(sink_name) else {
        let known: Vec<&str> = config.sinks.keys().map(String::as_str).collect();
        eprintln!(
            "error: --sink {sink_name}: no [sinks.{sink_name}] in {} (sinks: {})",
            path.display(),
            known.join(", ")
        );
        return ExitCode::from(2);
    };
    let from = match parse_from(from) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let prefix = &config.kafka.topic_prefix;
    let mut topics: Vec<String> = Vec::new();
    for m in &sink.tables {
        let Some(t) = m.source_table() else { continue };
        let topic = topic_name(prefix, &t);
        if !topics.contains(&topic) {
            topics.push(topic);
        }
    }
    if !tables.is_empty() {
        let wanted: Vec<String> = tables
            .iter()
            .filter_map(|t| TableId::parse(t, "public"))
            .map(|t| topic_name(prefix, &t))
            .collect();
        let unknown: Vec<&String> = wanted.iter().filter(|w| !topics.contains(w)).collect();
        if !unknown.is_empty() {
            eprintln!(
                "error: --table: sink {sink_name} maps no such table (topics {}; it reads {})",
                unknown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                topics.join(", ")
            );
            return ExitCode::from(2);
        }
        topics = wanted;
    }
    let Some(connection) = TargetConnection::of(sink) else {
        eprintln!("error: sinks.{sink_name} has no target connection");
        return ExitCode::from(2);
    };
    let kafka = config.kafka.clone();
    let plan = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let counts = sluice_kafka::partition_counts(&kafka, &topics)
            .map_err(|e| crate::telemetry::error_chain(&e))?;
        let mut list: Vec<(String, i32)> = counts.into_iter().collect();
        list.sort();
        sluice_kafka::replay_offsets(&kafka, &list, &from)
            .map_err(|e| crate::telemetry::error_chain(&e))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let moves: Vec<(String, i32, i64)> = plan
        .iter()
        .map(|(t, p, o, _)| (t.clone(), *p, *o))
        .collect();
    let before = match target::move_offsets(&connection, sink_name, &moves).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "error: moving sink {sink_name}'s offsets in {}: {e} (has the sink run once, creating Sluice's tables there?)",
                connection.describe()
            );
            return ExitCode::FAILURE;
        }
    };
    let mut total = 0i64;
    for (topic, partition, offset, end) in &plan {
        let was = before
            .get(&(Arc::from(topic.as_str()), *partition))
            .map(|(n, _)| n.to_string())
            .unwrap_or_else(|| "nothing stored".into());
        let again = (end - offset).max(0);
        total += again;
        println!("{topic}[{partition}]: {was} → {offset} ({again} event(s) to apply, up to {end})");
    }
    println!(
        "sink {sink_name}: {} partition(s) moved, {total} event(s) to apply again; a running sink picks this up within seconds",
        plan.len()
    );
    if !wait {
        return ExitCode::SUCCESS;
    }
    follow(&connection, sink_name, &plan, total).await
}

/// Shows the sink's progress through the replayed range until it has applied all of it.
async fn follow(
    connection: &TargetConnection,
    sink: &str,
    plan: &[(String, i32, i64, i64)],
    total: i64,
) -> ExitCode {
    let partitions: Vec<(Arc<str>, i32)> = plan
        .iter()
        .map(|(t, p, _, _)| (Arc::from(t.as_str()), *p))
        .collect();
    let mut progress = Progress::new("replay", "events");
    loop {
        let stored = match target::load_offsets(connection, sink, &partitions).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("reading progress failed: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let done: i64 = plan
            .iter()
            .map(|(t, p, start, end)| {
                let next = stored
                    .get(&(Arc::from(t.as_str()), *p))
                    .map(|(n, _)| *n)
                    .unwrap_or(*start);
                (next.min(*end) - start).max(0)
            })
            .sum();
        progress.show(done, total);
        if done >= total {
            progress.finish();
            let secs = progress.elapsed_s();
            println!("sink {sink}: replay applied ({total} events in {secs:.1} s)");
            return ExitCode::SUCCESS;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc3339() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2026-11-22T10:00:00Z"),
            Some(1_795_341_600_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-22T11:00:00.250+01:00"),
            Some(1_795_341_600_250)
        );
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T23:59:59-00:30"),
            Some(951_870_599_000)
        );
        for bad in [
            "2026-11-22",
            "2026-13-01T00:00:00Z",
            "2026-11-22T10:00:00",
            "x",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn from_specs_parse_or_say_how() {
        assert_eq!(parse_from("beginning"), Ok(ReplayFrom::Beginning));
        assert_eq!(
            parse_from("offset:sluice.public.users/2/40"),
            Ok(ReplayFrom::Offset("sluice.public.users".into(), 2, 40))
        );
        assert!(matches!(
            parse_from("time:2026-11-22T10:00:00Z"),
            Ok(ReplayFrom::Time(_))
        ));
        let e = parse_from("yesterday").expect_err("bad");
        assert!(e.contains("write `beginning`"), "{e}");
        let e = parse_from("offset:t/x/1").expect_err("bad");
        assert!(e.contains("not a partition number"), "{e}");
    }
}
