//! `sluice replay` against a running pipeline: from the beginning into an emptied target, and
//! from a time in the middle of a run into a target damaged by hand. The sink keeps running
//! throughout and carries on live afterwards.

use std::path::Path;

use crate::common::{LONG, SLUICE};
use crate::pipeline::Pipeline;

const ITEMS: &str = "create table items (id int primary key, name text not null, qty int not null)";

fn replay(p: &Pipeline, from: &str) -> String {
    let (status, out, err) = sluice_test_support::sluice::run_to_end(
        Path::new(SLUICE),
        &[
            "replay",
            "--config",
            p.config.to_str().expect("path"),
            "--sink",
            "target",
            "--from",
            from,
            "--wait",
        ],
        LONG,
    );
    assert!(status.success(), "replay --from {from}: {out}\n{err}");
    assert!(out.contains("replay applied"), "{out}\n{err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_the_beginning_rebuilds_an_emptied_target() {
    let changes =
        "insert into items select g, 'item ' || g, g % 17 from generate_series(1, 3000) g;
         update items set qty = qty + 100 where id % 5 = 0;
         delete from items where id % 11 = 0;";
    let (p, mut sluice, counts) = Pipeline::equal_after(&["items"], ITEMS, changes).await;
    let src = p.source_db().await;
    assert_eq!(counts, vec![3000 - 3000 / 11]);

    // The target loses everything (its stored offsets stay): a replay from the beginning
    // rebuilds it while the sink runs.
    p.target_db()
        .await
        .batch_execute("delete from items")
        .await
        .expect("empty the target");
    let out = replay(&p, "beginning");
    assert!(out.contains("sluice.public.items[0]:"), "{out}");
    p.wait_equal(LONG).await;

    // And it carries on live.
    src.batch_execute("insert into items values (5001, 'after the replay', 1); update items set name = 'renamed' where id = 7")
        .await
        .expect("live changes");
    let counts = p.wait_equal(LONG).await;
    assert_eq!(counts, vec![3000 - 3000 / 11 + 1]);
    assert!(
        sluice
            .log_text()
            .contains("stored offset moved back (a replay)"),
        "the running sink noticed the replay"
    );
    assert!(sluice.stop(LONG).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_a_time_heals_rows_damaged_after_it() {
    let first = "insert into items select g, 'item ' || g, 0 from generate_series(1, 1000) g";
    let (p, mut sluice, _) = Pipeline::equal_after(&["items"], ITEMS, first).await;
    let src = p.source_db().await;
    // Every change after this moment is in Kafka with a later timestamp.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    let middle = sluice_core::value::utc_timestamp(now.as_secs() as i64, now.subsec_micros());
    src.batch_execute(
        "update items set qty = id * 2, name = 'updated ' || id where id > 500;
         insert into items select g, 'new ' || g, 1 from generate_series(1001, 1500) g;
         delete from items where id between 900 and 950;",
    )
    .await
    .expect("changes after the middle");
    p.wait_equal(LONG).await;

    // Someone damages rows that changed after the middle: deletes some, alters others, and
    // brings back deleted ones.
    p.target_db()
        .await
        .batch_execute(
            "delete from items where id between 1200 and 1300;
             update items set qty = -1, name = 'damaged' where id between 600 and 700;
             insert into items values (920, 'resurrected', 0);",
        )
        .await
        .expect("damage");
    let out = replay(&p, &format!("time:{middle}"));
    // Only what came after the middle is applied again: the 1000 first inserts are not.
    let again: i64 = out
        .split("partition(s) moved, ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the count of events to apply again");
    assert!(
        (1000..1200).contains(&again),
        "{again} events replayed:\n{out}"
    );
    let counts = p.wait_equal(LONG).await;
    assert_eq!(counts, vec![1500 - 51]);
    assert!(sluice.stop(LONG).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_mistakes_are_explained() {
    let p = Pipeline::new(&["items"], ITEMS, ITEMS, "").await;
    let run = |args: &[&str]| {
        let mut all = vec!["replay", "--config", p.config.to_str().expect("path")];
        all.extend_from_slice(args);
        sluice_test_support::sluice::run_to_end(Path::new(SLUICE), &all, LONG)
    };
    let (status, _, err) = run(&["--sink", "nope", "--from", "beginning"]);
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("--sink nope: no [sinks.nope]"), "{err}");
    let (status, _, err) = run(&["--sink", "target", "--from", "yesterday"]);
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("write `beginning`, `time:"), "{err}");
    let (status, _, err) = run(&[
        "--sink",
        "target",
        "--from",
        "beginning",
        "--table",
        "public.other",
    ]);
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("sink target maps no such table"), "{err}");
}
