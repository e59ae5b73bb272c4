//! Blob columns against a real object store (garage): files and byte columns uploaded before
//! their rows commit, URLs in the target rows, deletions, content-addressed sharing, presigned
//! URL renewal, a store outage, and `kill -9` during uploads.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};
use sluice_test_support::garage::Garage;
use sluice_test_support::tls::{TestCa, TlsProxy};
use sluice_test_support::{wait_for, MariaDb, PgCluster};

use crate::common::{column, count, start_in, Fixture, LONG, SLUICE};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Credentials for sluice (it inherits the test's environment; each test is its own process).
fn credentials() {
    for (k, v) in Garage::env() {
        std::env::set_var(k, v);
    }
}

/// A plain HTTP GET of `url` (a presigned URL on the local store): status and body.
fn http_get(url: &str) -> (u16, Vec<u8>) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_at(rest.find('/').expect("path"));
    let mut s = std::net::TcpStream::connect(host).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").expect("request");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("response");
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers");
    let head = String::from_utf8_lossy(&out[..end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out[end + 4..].to_vec())
}

/// A garage bucket, a source Postgres capturing `table` (made by `source_sql`), and a target
/// database `target` on the same server holding `target_sql`.
async fn blob_fixture(
    bucket: &str,
    table: &str,
    source_sql: &str,
    target: &str,
    target_sql: &str,
) -> (Garage, Fixture, tokio_postgres::Client) {
    credentials();
    let garage = Garage::start(bucket);
    let f = Fixture::new(&[table], source_sql).await;
    let db = f.source.database_with(target, target_sql).await;
    (garage, f, db)
}

/// Runs the sluice binary to its end: (status, stdout, stderr).
fn run_sluice(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    sluice_test_support::sluice::run_to_end(Path::new(SLUICE), args, LONG)
}

async fn rows(db: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    db.query(sql, &[])
        .await
        .expect(sql)
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<String>>(i))
                .collect()
        })
        .collect()
}

/// Waits until `garage`'s bucket holds no object.
async fn wait_bucket_empty(garage: &Garage, what: &str) {
    wait_for(what, LONG, || async {
        garage.keys().await.is_empty().then_some(())
    })
    .await;
}

/// Waits until the target's blob ledger has no row left.
async fn wait_ledger_empty(db: &tokio_postgres::Client, what: &str) {
    wait_for(what, LONG, || async {
        let left = count(db, "select count(*) from sluice.blobs").await;
        (left == 0).then_some(())
    })
    .await;
}

async fn dead_letters(db: &tokio_postgres::Client) -> Vec<String> {
    column(db, "select error from sluice.dead_letters order by id").await
}

const SESSIONS_TARGET: &str = "create table sessions (id bigint primary key, trainee text not null,
    score int, pdf_url text, pdf_sha256 text, json_url text)";

/// Training sessions: PDF and JSON reports uploaded before their rows; a file written after
/// its row; a file that never comes; a replaced report; a deleted session; the store down
/// for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_session_reports_go_to_the_store_before_their_rows() {
    let (mut garage, f, cloud) = blob_fixture(
        "reports",
        "sessions",
        "create table sessions (id bigint primary key, trainee text not null, score int,
           pdf_path text, json_path text)",
        "cloud",
        SESSIONS_TARGET,
    )
    .await;
    let files = f.dir.path().join("sessions");
    std::fs::create_dir_all(&files).expect("files dir");
    let report = |id: i64, kind: &str| {
        format!(
            "{kind} report of session {id} {}",
            "x".repeat(id as usize * 37)
        )
    };
    for id in 1..=20 {
        std::fs::write(files.join(format!("session_{id}.pdf")), report(id, "pdf")).expect("pdf");
        std::fs::write(files.join(format!("session_{id}.json")), report(id, "json")).expect("json");
    }
    let public = format!("{}/reports/{{key}}", garage.endpoint());
    f.write_config(&format!(
        "\n[sinks.cloud]\npostgres = {}\nworkers = 2\n\n{}\n\
         [[sinks.cloud.tables]]\nfrom = \"public.sessions\"\n\
         blobs.pdf_url = {{ store = \"reports\", path = \"pdf_path\", base_dirs = [\"{dir}\"], key = \"sessions/{{id}}.pdf\", sha256_column = \"pdf_sha256\", missing_file_wait_ms = 60000 }}\n\
         blobs.json_url = {{ store = \"reports\", path = \"json_path\", base_dirs = [\"{dir}\"], key = \"sessions/{{id}}{{ext}}\", missing_file_wait_ms = 1500 }}\n",
        f.source.sluice_connection("cloud"),
        garage.store_section("reports", &format!("public_url = \"{public}\"")),
        dir = files.display(),
    ));
    let src = f.client().await;
    src.batch_execute(
        "insert into sessions select g, 'trainee ' || g, g * 3, 'session_' || g || '.pdf',
           'session_' || g || '.json' from generate_series(1, 20) g",
    )
    .await
    .expect("sessions");
    let mut sluice = f.start();

    let expect_row = |id: i64| {
        vec![
            Some(id.to_string()),
            Some(format!("{}/reports/sessions/{id}.pdf", garage.endpoint())),
            Some(sha(report(id, "pdf").as_bytes())),
            Some(format!("{}/reports/sessions/{id}.json", garage.endpoint())),
        ]
    };
    let target_rows =
        "select id::text, pdf_url, pdf_sha256, json_url from sessions order by sessions.id";
    let want: Vec<_> = (1..=20).map(expect_row).collect();
    let last = std::cell::RefCell::new(Vec::new());
    let done = sluice_test_support::wait_for_quiet(LONG, || async {
        let got = rows(&cloud, target_rows).await;
        let equal = got == want;
        *last.borrow_mut() = got;
        equal.then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "the 20 sessions with their URLs: want {want:?}\ngot {:?}",
        last.borrow()
    );
    for id in 1..=20 {
        for kind in ["pdf", "json"] {
            let (bytes, meta) = garage
                .get(&format!("sessions/{id}.{kind}"))
                .await
                .expect("object");
            assert_eq!(bytes, report(id, kind).into_bytes(), "session {id} {kind}");
            assert_eq!(
                meta,
                Some(sha(&bytes)),
                "sha256 metadata of session {id} {kind}"
            );
        }
    }

    // A report written after its row: the row waits for it (its partition held), then lands.
    src.batch_execute(
        "insert into sessions values (21, 'late', 1, 'session_21.pdf', 'session_1.json')",
    )
    .await
    .expect("late session");
    sluice.wait_log("a row's file is not there yet", 1, LONG);
    assert!(rows(&cloud, "select id::text from sessions where id = 21")
        .await
        .is_empty());
    std::fs::write(files.join("session_21.pdf"), report(21, "pdf")).expect("late pdf");
    wait_for("the late session", LONG, || async {
        let r = rows(&cloud, "select pdf_sha256 from sessions where id = 21").await;
        (r == vec![vec![Some(sha(report(21, "pdf").as_bytes()))]]).then_some(())
    })
    .await;

    // A JSON file that never comes: a dead letter once its window (1.5 s) is over, and the
    // sessions after it go on.
    src.batch_execute(
        "insert into sessions values (22, 'never', 1, 'session_2.pdf', 'missing.json');
         insert into sessions values (23, 'after', 1, 'session_3.pdf', 'session_3.json');",
    )
    .await
    .expect("missing file");
    wait_for("the session after the missing file", LONG, || async {
        (!rows(&cloud, "select id::text from sessions where id = 23")
            .await
            .is_empty())
        .then_some(())
    })
    .await;
    let dead = wait_for("the dead letter", LONG, || async {
        let d = dead_letters(&cloud).await;
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].contains("blob: file")
            && dead[0].contains("missing.json")
            && dead[0].contains("missing_file_wait_ms"),
        "{dead:?}"
    );
    assert!(rows(&cloud, "select id::text from sessions where id = 22")
        .await
        .is_empty());

    // A replaced report goes up under the same key; a deleted session's objects go.
    std::fs::write(files.join("session_1_v2.pdf"), b"the corrected report").expect("v2");
    src.batch_execute(
        "update sessions set pdf_path = 'session_1_v2.pdf', score = 99 where id = 1;
         delete from sessions where id = 2;",
    )
    .await
    .expect("replace and delete");
    wait_for(
        "the replaced report and the deleted session",
        LONG,
        || async {
            let keys = garage.keys().await;
            let gone = !keys.iter().any(|k| k.starts_with("sessions/2."));
            let replaced = garage.get("sessions/1.pdf").await.map(|(b, _)| b)
                == Some(b"the corrected report".to_vec());
            let row = rows(&cloud, "select pdf_sha256 from sessions where id = 1").await;
            (gone && replaced && row == vec![vec![Some(sha(b"the corrected report"))]])
                .then_some(())
        },
    )
    .await;

    // The store goes away for a while: the sink waits and retries; nothing is lost and
    // nothing is dead-lettered.
    garage.stop();
    src.batch_execute(
        "insert into sessions select g, 'outage ' || g, 0, 'session_' || (g - 20) || '.pdf',
           'session_' || (g - 20) || '.json' from generate_series(24, 30) g",
    )
    .await
    .expect("rows during the outage");
    sluice.wait_log("target write failed; retrying", 1, LONG);
    assert!(rows(&cloud, "select id::text from sessions where id >= 24")
        .await
        .is_empty());
    garage.restart();
    wait_for("the rows written during the outage", LONG, || async {
        (rows(&cloud, "select id::text from sessions where id >= 24")
            .await
            .len()
            == 7)
            .then_some(())
    })
    .await;
    assert_eq!(
        dead_letters(&cloud).await.len(),
        1,
        "only the missing file is a dead letter"
    );
    assert_eq!(
        garage.get("sessions/24.pdf").await.map(|(b, _)| b),
        Some(report(4, "pdf").into_bytes())
    );

    // The ledger and the bucket agree.
    let (status, out, err) = run_sluice(&[
        "blobs",
        "verify",
        "--config",
        f.config.to_str().expect("path"),
    ]);
    assert!(status.success(), "{out}\n{err}");
    assert!(out.contains("0 missing, 0 damaged, 0 orphaned"), "{out}");
    assert!(sluice.stop(LONG).success());
}

/// Patient files (MariaDB → Postgres): content-addressed objects shared by identical files
/// and deleted once no row references them, by a hard delete or by `deleted = 1`; presigned
/// URLs that work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_files_share_content_addressed_objects_until_the_last_row_goes() {
    credentials();
    let garage = Garage::start("ehr");
    let vsrx = MariaDb::start();
    vsrx.execute(None, "create database vsrx");
    vsrx.execute(
        Some("vsrx"),
        "create table Files (id varchar(36) primary key, path varchar(255) not null,
           patientId varchar(36) not null, deleted tinyint not null default 0)",
    );
    let target = PgCluster::start();
    let pg = target
        .database_with(
            "vitalsign",
            "create table documents (vsrx_reference text primary key, url text, sha256 text,
               patient_id text not null)",
        )
        .await;
    let broker = sluice_test_support::Broker::start();
    let dir = sluice_test_support::TempDir::new("ehr");
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).expect("files");
    std::fs::write(files.join("a.pdf"), b"scan of the same letter").expect("a");
    std::fs::write(files.join("b.pdf"), b"scan of the same letter").expect("b");
    std::fs::write(files.join("c.pdf"), b"a lab result").expect("c");
    // Above the multipart threshold (1 MB): uploaded in parts of 5 MB, each verified.
    let scan: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(files.join("d.tif"), &scan).expect("d");
    std::fs::write(
        dir.path().join("sluice.toml"),
        format!(
            "[kafka]\nbrokers = \"{}\"\npartitions = 2\n\n\
             [sources.vsrx]\nmysql = {}\ntables = [\"Files\"]\ncheckpoint_interval_ms = 200\n\n\
             {}\n\
             [sinks.vitalsign]\npostgres = {}\n\
             [[sinks.vitalsign.tables]]\nfrom = \"vsrx.Files\"\nto = \"public.documents\"\n\
             columns = {{ vsrx_reference = \"id\", patient_id = \"patientId\" }}\n\
             filter = \"after.deleted == 0\"\n\
             blobs.url = {{ store = \"ehr\", path = \"path\", base_dirs = [\"{}\"], key = \"sha256/{{sha256}}\", sha256_column = \"sha256\" }}\n",
            broker.brokers(),
            vsrx.sluice_connection("vsrx"),
            garage.store_section(
                "ehr",
                "presign_ttl_s = 3600\nmultipart_threshold_mb = 1\nmultipart_part_mb = 5"
            ),
            target.sluice_connection("vitalsign"),
            files.display(),
        ),
    )
    .expect("config");
    vsrx.execute(
        Some("vsrx"),
        "insert into Files values ('f1', 'a.pdf', 'p1', 0), ('f2', 'b.pdf', 'p1', 0), ('f3', 'c.pdf', 'p2', 0)",
    );
    let mut sluice = start_in(dir.path(), &[]);
    let letter = format!("sha256/{}", sha(b"scan of the same letter"));
    let lab = format!("sha256/{}", sha(b"a lab result"));
    vsrx.execute(
        Some("vsrx"),
        "insert into Files values ('f4', 'd.tif', 'p3', 0)",
    );
    let urls = wait_for("four documents", LONG, || async {
        let r = rows(
            &pg,
            "select vsrx_reference, url, sha256 from documents order by 1",
        )
        .await;
        (r.len() == 4).then_some(r)
    })
    .await;
    let big = format!("sha256/{}", sha(&scan));
    let (bytes, meta) = garage.get(&big).await.expect("the multipart object");
    assert!(bytes == scan, "the multipart object holds the file");
    assert_eq!(meta, Some(sha(&scan)));
    vsrx.execute(Some("vsrx"), "delete from Files where id = 'f4'");
    // Presigned URLs of one object differ by their signing time: compare what they point at.
    let object = |u: &Option<String>| {
        u.as_deref()
            .and_then(|u| u.split('?').next())
            .map(str::to_owned)
    };
    assert_eq!(
        object(&urls[0][1]),
        object(&urls[1][1]),
        "identical files share one object"
    );
    assert!(object(&urls[0][1]).is_some_and(|u| u.ends_with(&letter)));
    assert_eq!(urls[0][2], Some(sha(b"scan of the same letter")));
    wait_for(
        "the multipart object deleted with its row",
        LONG,
        || async {
            let want: Vec<String> = BTreeSet::from([letter.clone(), lab.clone()])
                .into_iter()
                .collect();
            (garage.keys().await == want).then_some(())
        },
    )
    .await;
    // The presigned URL serves the object.
    let (status, body) = http_get(urls[2][1].as_deref().expect("url"));
    assert_eq!((status, body.as_slice()), (200, &b"a lab result"[..]));

    // One of the two rows goes: the shared object stays for the other.
    vsrx.execute(Some("vsrx"), "delete from Files where id = 'f1'");
    wait_for("f1 gone", LONG, || async {
        (rows(&pg, "select vsrx_reference from documents")
            .await
            .len()
            == 2)
            .then_some(())
    })
    .await;
    assert!(
        garage.keys().await.contains(&letter),
        "still referenced by f2"
    );
    // The other is flagged deleted: it leaves the target, and the object goes.
    vsrx.execute(Some("vsrx"), "update Files set deleted = 1 where id = 'f2'");
    wait_for("the shared object deleted", LONG, || async {
        let keys = garage.keys().await;
        (!keys.contains(&letter)).then_some(())
    })
    .await;
    assert_eq!(
        rows(&pg, "select vsrx_reference from documents").await,
        vec![vec![Some("f3".to_owned())]]
    );
    vsrx.execute(Some("vsrx"), "delete from Files where id = 'f3'");
    wait_bucket_empty(&garage, "the bucket empty").await;
    // The object is deleted first, then its released ledger row is forgotten.
    wait_ledger_empty(&pg, "deleted objects leave no ledger rows").await;
    assert!(sluice.stop(LONG).success());
}

/// A bytea column becomes an object (the target row keeps only its URL), its presigned URL is
/// renewed in the target row before it expires, and a truncate of the source table removes
/// the objects with the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_columns_are_offloaded_and_presigned_urls_renewed() {
    let (garage, f, dash) = blob_fixture(
        "photos",
        "photos",
        "create table photos (id int primary key, caption text, image bytea)",
        "dash",
        "create table photos (id int primary key, caption text, image bytea, image_url text,
            check (caption is distinct from 'refused'))",
    )
    .await;
    let api = format!("127.0.0.1:{}", sluice_test_support::free_port());
    f.write_config(&format!(
        "\n[sinks.dash]\npostgres = {}\n\n{}\n\
         [[sinks.dash.tables]]\nfrom = \"public.photos\"\n\
         blobs.image_url = {{ store = \"photos\", bytes = \"image\", key = \"photos/{{id}}.png\", content_type = \"image/png\" }}\n\
         \n[http]\nlisten = \"{api}\"\n",
        f.source.sluice_connection("dash"),
        garage.store_section("photos", "presign_ttl_s = 16"),
    ));
    let src = f.client().await;
    src.batch_execute(
        "insert into photos values (1, 'a field', decode('89504e470d0a1a0a0001', 'hex')),
                                   (2, 'no photo', null)",
    )
    .await
    .expect("photos");
    let mut sluice = f.start();
    let first = wait_for("the photo rows", LONG, || async {
        let r = rows(
            &dash,
            "select id::text, caption, image::text, image_url from photos order by id",
        )
        .await;
        (r.len() == 2).then_some(r)
    })
    .await;
    assert_eq!(
        first[0][2], None,
        "the bytes do not travel in the target row"
    );
    assert_eq!(first[1][3], None, "no bytes, no object");
    let url = first[0][3].clone().expect("url");
    // One object of 10 bytes went up, and the API counts it.
    let (_, status) = sluice_test_support::http_get(&api, "/status", None).expect("status");
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(status["sinks"]["dash"]["blob_uploads"], 1, "{status}");
    assert_eq!(status["sinks"]["dash"]["blob_upload_bytes"], 10, "{status}");

    // `sluice check` names a store it cannot use: a bucket that does not exist, and
    // credentials whose variable is not set.
    let config = std::fs::read_to_string(&f.config).expect("config");
    let bad = f.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        config
            .replace("bucket = \"photos\"", "bucket = \"no-such-bucket\"")
            .replace(
                "[stores.photos]",
                "[stores.photos]\naccess_key_id_env = \"SLUICE_TEST_UNSET_KEY\"",
            ),
    )
    .expect("bad config");
    let (status, out, err) = run_sluice(&["check", "--config", bad.to_str().expect("path")]);
    assert_eq!(status.code(), Some(1), "{out}\n{err}");
    assert!(
        out.contains("stores.photos: environment variable SLUICE_TEST_UNSET_KEY is not set"),
        "{out}"
    );
    std::fs::write(
        &bad,
        config.replace("bucket = \"photos\"", "bucket = \"no-such-bucket\""),
    )
    .expect("bad config");
    let (status, out, err) = run_sluice(&["check", "--config", bad.to_str().expect("path")]);
    assert_eq!(status.code(), Some(1), "{out}\n{err}");
    assert!(
        out.contains("store photos")
            && out.contains("bucket no-such-bucket")
            && out.contains("check stores.photos.endpoint"),
        "{out}"
    );
    assert!(url.contains("X-Amz-Expires=16"), "{url}");
    let (status, body) = http_get(&url);
    assert_eq!(status, 200);
    assert_eq!(
        body,
        vec![0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x01]
    );
    // Renewed at half its life (8 s): the row gets a new URL that works.
    let renewed = wait_for("a renewed URL", LONG, || async {
        let r = rows(&dash, "select image_url from photos where id = 1").await;
        r[0][0].clone().filter(|u| *u != url)
    })
    .await;
    let (status, _) = http_get(&renewed);
    assert_eq!(status, 200);
    assert!(sluice.log_text().contains("presigned URLs renewed"));

    // A row the target refuses (its CHECK) becomes a dead letter after its object went up:
    // the object is deleted with it, not left as an orphan.
    src.batch_execute("insert into photos values (4, 'refused', decode('0102', 'hex'))")
        .await
        .expect("refused photo");
    wait_for("the refused row's dead letter", LONG, || async {
        let dead = dead_letters(&dash).await;
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    wait_for("the refused row's object deleted", LONG, || async {
        let keys = garage.keys().await;
        (keys.len() == 1 && !keys.contains(&"photos/4.png".to_owned())).then_some(())
    })
    .await;

    // A truncate of the source table empties the target table and releases its objects:
    // the bucket and the ledger end empty.
    src.batch_execute("insert into photos values (3, 'another', decode('ffd8ffe0', 'hex'))")
        .await
        .expect("third photo");
    wait_for("two objects", LONG, || async {
        (garage.keys().await.len() == 2).then_some(())
    })
    .await;
    src.batch_execute("truncate photos")
        .await
        .expect("truncate");
    wait_bucket_empty(&garage, "the bucket emptied by the truncate").await;
    assert!(rows(&dash, "select id::text from photos").await.is_empty());
    wait_ledger_empty(&dash, "the truncated rows' ledger rows forgotten").await;
    assert!(sluice.stop(LONG).success());
}

/// `kill -9` during uploads, three times: afterwards `sluice blobs verify --repair` leaves no
/// orphan and no missing object, and the target holds every row with its object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_during_uploads_leave_no_orphan_after_repair() {
    let (garage, f, cloud) = blob_fixture(
        "crash",
        "docs",
        "create table docs (id int primary key, path text not null, v int not null default 0)",
        "cloud",
        "create table docs (id int primary key, v int, url text, sha text)",
    )
    .await;
    let files = f.dir.path().join("docs");
    std::fs::create_dir_all(&files).expect("dir");
    let content = |id: i32, v: i32| format!("doc {id} v{v} {}", "z".repeat(20_000)).into_bytes();
    for id in 1..=400 {
        std::fs::write(files.join(format!("{id}.txt")), content(id, 0)).expect("doc");
    }
    f.write_config(&format!(
        "\n[sinks.cloud]\npostgres = {}\nmax_batch_events = 50\n\n{}\n\
         [[sinks.cloud.tables]]\nfrom = \"public.docs\"\n\
         blobs.url = {{ store = \"crash\", path = \"path\", base_dirs = [\"{}\"], key = \"docs/{{id}}-{{sha256}}.txt\", sha256_column = \"sha\" }}\n",
        f.source.sluice_connection("cloud"),
        garage.store_section("crash", "public_url = \"http://objects.invalid/{key}\""),
        files.display(),
    ));
    let src = f.client().await;
    src.batch_execute("insert into docs select g, g || '.txt' from generate_series(1, 400) g")
        .await
        .expect("docs");
    let mut sluice = f.start();
    for round in 0..3 {
        // Let some uploads happen, then kill in the middle of the next batches.
        let target = 60 * (round + 1);
        wait_for("some docs applied", LONG, || async {
            let n = count(&cloud, "select count(*) from docs").await;
            (n >= target).then_some(())
        })
        .await;
        // New versions replace objects (their keys carry the hash), old ones are released.
        for id in (round * 50 + 1)..=(round * 50 + 40) {
            std::fs::write(
                files.join(format!("{id}.txt")),
                content(id as i32, round as i32 + 1),
            )
            .expect("new version");
        }
        src.batch_execute(&format!(
            "update docs set v = {} where id between {} and {};
             delete from docs where id % 97 = {round};",
            round + 1,
            round * 50 + 1,
            round * 50 + 40
        ))
        .await
        .expect("changes");
        sluice.kill9();
        sluice = f.start();
    }
    let expected = |src_rows: Vec<Vec<Option<String>>>| -> Vec<Vec<Option<String>>> {
        src_rows
            .into_iter()
            .map(|r| {
                let id: i32 = r[0].as_deref().unwrap_or("0").parse().unwrap_or(0);
                let v: i32 = r[1].as_deref().unwrap_or("0").parse().unwrap_or(0);
                let sha = sha(&content(id, v));
                vec![
                    r[0].clone(),
                    r[1].clone(),
                    Some(format!("http://objects.invalid/docs/{id}-{sha}.txt")),
                    Some(sha),
                ]
            })
            .collect()
    };
    wait_for("the target equal to the source", LONG, || async {
        let want = expected(rows(&src, "select id::text, v::text from docs order by id").await);
        let got = rows(
            &cloud,
            "select id::text, v::text, url, sha from docs order by id",
        )
        .await;
        (want == got).then_some(())
    })
    .await;
    assert!(sluice.stop(LONG).success());
    assert!(dead_letters(&cloud).await.is_empty());

    let verify = |args: &[&str]| {
        let mut all = vec![
            "blobs",
            "verify",
            "--config",
            f.config.to_str().expect("path"),
        ];
        all.extend_from_slice(args);
        run_sluice(&all)
    };
    let (status, out, err) = verify(&["--repair", "--grace-s", "0"]);
    assert!(status.success(), "{out}\n{err}");
    let (status, out, err) = verify(&[]);
    assert!(status.success(), "{out}\n{err}");
    assert!(
        out.contains("0 missing, 0 damaged, 0 orphaned, 0 released"),
        "{out}"
    );
    // Exactly the objects the rows reference are in the bucket.
    let referenced: Vec<String> = rows(&cloud, "select url from docs order by url")
        .await
        .into_iter()
        .filter_map(|r| r[0].clone())
        .map(|u| u.trim_start_matches("http://objects.invalid/").to_owned())
        .collect();
    let mut keys = garage.keys().await;
    keys.sort();
    let mut referenced_sorted = referenced.clone();
    referenced_sorted.sort();
    assert_eq!(keys, referenced_sorted);
}

/// A private endpoint behind TLS with its own CA: Sluice uploads through it once the store's
/// `ca_file` names that CA, and `sluice check` refuses the store without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_behind_tls_with_a_private_ca() {
    let (garage, f, dash) = blob_fixture(
        "private",
        "scans",
        "create table scans (id int primary key, image bytea)",
        "dash",
        "create table scans (id int primary key, image bytea, image_url text)",
    )
    .await;
    let ca = TestCa::new(&f.dir.path().join("certs"), "Private storage CA");
    let (cert, key) = ca.issue("storage", &["127.0.0.1", "localhost"]);
    let upstream = garage.endpoint().replace("http://", "");
    let proxy = TlsProxy::start(&upstream, &cert, &key).await;
    let store = |extra: &str| {
        garage
            .store_section("private", extra)
            .replace(&garage.endpoint(), &proxy.url())
    };
    let sections = |store: String| {
        format!(
            "\n[sinks.dash]\npostgres = {}\n\n{store}\n\
             [[sinks.dash.tables]]\nfrom = \"public.scans\"\n\
             blobs.image_url = {{ store = \"private\", bytes = \"image\", key = \"scans/{{id}}\" }}\n",
            f.source.sluice_connection("dash"),
        )
    };
    // Without the CA, the endpoint's certificate is refused.
    f.write_config(&sections(store("")));
    let (status, out, err) = run_sluice(&["check", "--config", f.config.to_str().expect("path")]);
    assert_eq!(status.code(), Some(1), "{out}\n{err}");
    assert!(out.contains("store private"), "{out}");
    assert!(out.contains("set stores.private.ca_file"), "{out}");

    f.write_config(&sections(store(&format!(
        "ca_file = \"{}\"",
        ca.ca_file().display()
    ))));
    f.client()
        .await
        .batch_execute("insert into scans values (1, decode('cafe01', 'hex'))")
        .await
        .expect("scan");
    let _sluice = f.start();
    let url = wait_for("the scan's URL", LONG, || async {
        let r = rows(&dash, "select image_url from scans where id = 1").await;
        r.first().and_then(|row| row[0].clone())
    })
    .await;
    assert!(url.starts_with(&proxy.url()), "{url}");
    let object = garage
        .client()
        .get_object()
        .bucket("private")
        .key("scans/1")
        .send()
        .await
        .expect("the object is in the bucket");
    let body = object.body.collect().await.expect("body").into_bytes();
    assert_eq!(body.as_ref(), [0xca, 0xfe, 0x01]);
}
