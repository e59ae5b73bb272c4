//! Declarative mappings end to end: an LMS's `users`, `institutes`, `institute_user` and
//! `user_profiles` (on MariaDB, and on MySQL 8 for the main test) mapped into an organisation
//! service's Postgres tables with foreign keys — computed names, a role value map,
//! `status = 'ACTIVE'` as a boolean, a filter with soft deletes, two sources feeding one
//! target table — then a deactivation, a role change, an institute deleted (children first),
//! a row entering the filter; and a burst whose children reach the target before their
//! parents.

use std::path::Path;

use sluice_test_support::{MariaDb, PgCluster, SluiceProcess};

use crate::common::{
    column, deref_workdir, mariadb_and_mysql8, mysql, postgres, sink_section, source_section,
    Workdir, LONG, SLUICE,
};

const LMS: &str = r#"
create table institutes (
  id bigint primary key, name varchar(200) not null, imageUrl varchar(300),
  created_at datetime(6) not null default '2024-01-01 00:00:00'
);
create table users (
  id bigint primary key, first_name varchar(100) not null, last_name varchar(100) not null,
  email varchar(200), password varchar(100) not null,
  status enum('ACTIVE','INACTIVE','SUSPENDED') not null default 'ACTIVE',
  created_at datetime(6) not null default '2024-01-01 00:00:00'
);
create table institute_user (
  institute_id bigint, user_id bigint,
  user_type enum('ADMIN','TEACHER','INSTRUCTOR','STUDENT','STAFF','DIRECTOR','PARENT') not null,
  status enum('ACTIVE','INACTIVE') not null,
  primary key (institute_id, user_id)
);
create table user_profiles (user_id bigint primary key, bio text);
"#;

const ORGS: &str = r#"
create schema organizations;
create type organizations.role as enum ('ADMIN', 'FACULTY', 'STUDENT', 'STAFF', 'DIRECTOR');
create table organizations.institute (
  "instituteId" bigint primary key, name text not null, "imageUrl" text, "createdAt" timestamp(6)
);
create table organizations."user" (
  "userId" bigint primary key, name text not null, email text not null,
  "isActive" boolean not null, "deletedAt" timestamptz, "createdAt" timestamp(6)
);
create table organizations.user_auth (
  "userId" bigint primary key references organizations."user", password text not null
);
create table organizations.institute_users (
  "instituteId" bigint not null references organizations.institute,
  "userId" bigint not null references organizations."user",
  role organizations.role not null, "isActive" boolean not null,
  primary key ("instituteId", "userId")
);
create table organizations.user_card ("userId" bigint primary key, name text, bio text);
"#;

const MAPPINGS: &str = r#"
[[sinks.orgs.tables]]
from = "lms.institutes"
to = "organizations.institute"
columns = { instituteId = "id", createdAt = "created_at" }

[[sinks.orgs.tables]]
from = "lms.users"
to = "organizations.user"
columns = { userId = "id", createdAt = "created_at" }
compute = { name = "after.first_name + ' ' + after.last_name", isActive = "after.status == 'ACTIVE'", deletedAt = "null" }
filter = "after.status == 'ACTIVE' && after.email != null"
on_delete = "soft"
soft_delete = { isActive = "false", deletedAt = "source.commit_time" }

[[sinks.orgs.tables]]
from = "lms.users"
to = "organizations.user_auth"
columns = { userId = "id" }
filter = "after.status == 'ACTIVE' && after.email != null"
on_delete = "ignore"

[[sinks.orgs.tables]]
from = "lms.institute_user"
to = "organizations.institute_users"
columns = { instituteId = "institute_id", userId = "user_id" }
compute = { isActive = "after.status == 'ACTIVE'" }
maps.role = { from = "user_type", values = { ADMIN = "ADMIN", TEACHER = "FACULTY", INSTRUCTOR = "FACULTY", STUDENT = "STUDENT", STAFF = "STAFF", DIRECTOR = "DIRECTOR" }, default = "STUDENT" }

# Two sources, one target: each owns its columns.
[[sinks.orgs.tables]]
from = "lms.users"
to = "organizations.user_card"
columns = { userId = "id" }
include = []
compute = { name = "after.first_name + ' ' + after.last_name" }

[[sinks.orgs.tables]]
from = "lms.user_profiles"
to = "organizations.user_card"
columns = { userId = "user_id" }
include = ["bio"]
"#;

/// The target rows the mappings must produce, computed by MariaDB from the source (`gone`:
/// users that left the filter after being listed, soft-deleted).
fn expected(db: &MariaDb, gone: &[i64]) -> Vec<Vec<String>> {
    let gone = if gone.is_empty() {
        "0".to_owned()
    } else {
        gone.iter()
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let q = |sql: &str| {
        let mut rows = db.query("lms", sql);
        rows.sort();
        rows
    };
    vec![
        q("select concat_ws('|', id, name) from institutes"),
        q(&format!(
            "select concat_ws('|', id, concat(first_name, ' ', last_name), email,
                    if(status = 'ACTIVE' and id not in ({gone}), 't', 'f'))
               from users where email is not null and (status = 'ACTIVE' or id in ({gone}))"
        )),
        q(&format!(
            "select concat_ws('|', id, password) from users
              where email is not null and (status = 'ACTIVE' or id in ({gone}))"
        )),
        q("select concat_ws('|', institute_id, user_id,
                  case user_type when 'TEACHER' then 'FACULTY' when 'INSTRUCTOR' then 'FACULTY'
                                 when 'PARENT' then 'STUDENT' else user_type end,
                  if(status = 'ACTIVE', 't', 'f'))
             from institute_user"),
        q("select concat_ws('|', u.id, concat(u.first_name, ' ', u.last_name), coalesce(p.bio, '~'))
             from users u left join user_profiles p on p.user_id = u.id"),
    ]
}

async fn actual(pg: &tokio_postgres::Client) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for sql in [
        "select concat_ws('|', \"instituteId\", name) from organizations.institute",
        "select concat_ws('|', \"userId\", name, email, case when \"isActive\" then 't' else 'f' end) from organizations.\"user\"",
        "select concat_ws('|', \"userId\", password) from organizations.user_auth",
        "select concat_ws('|', \"instituteId\", \"userId\", role::text, case when \"isActive\" then 't' else 'f' end) from organizations.institute_users",
        "select concat_ws('|', \"userId\", name, coalesce(bio, '~')) from organizations.user_card",
    ] {
        let mut rows: Vec<String> = column(pg, sql).await;
        rows.sort();
        out.push(rows);
    }
    out
}

struct Org {
    lms: MariaDb,
    orgs: PgCluster,
    work: Workdir,
}

deref_workdir!(Org);

impl Org {
    /// A seeded MariaDB `lms` with sluice running, once the target holds its snapshot.
    async fn converged(fk_wait_ms: u64) -> (Org, SluiceProcess) {
        let org = Self::on(MariaDb::start(), fk_wait_ms).await;
        seed(&org.lms);
        let sluice = org.start();
        org.converge("snapshot", &[]).await;
        (org, sluice)
    }

    /// Runs `sql` in the source database `lms`.
    fn execute(&self, sql: &str) {
        self.lms.execute(Some("lms"), sql);
    }

    /// An `lms` on a server of the caller's choice (MySQL 8 or MariaDB), mapped into `orgs`.
    async fn on(lms: MariaDb, fk_wait_ms: u64) -> Org {
        lms.execute(None, "create database lms");
        lms.execute(Some("lms"), LMS);
        let orgs = PgCluster::start();
        orgs.database_with("orgs", ORGS).await;
        let work = Workdir::new("mappings");
        let tables = ["institutes", "users", "institute_user", "user_profiles"];
        let sink_extra = format!("foreign_key_wait_ms = {fk_wait_ms}\n{MAPPINGS}");
        let sections = source_section("lms", &mysql(&lms, "lms"), &tables, "")
            + &sink_section("orgs", &postgres(&orgs, "orgs"), &sink_extra);
        work.configure(2, "", &sections);
        Org { lms, orgs, work }
    }

    /// Waits until the target holds exactly the expected mapped rows.
    async fn converge(&self, step: &str, gone: &[i64]) {
        let pg = self.orgs.connect("orgs").await;
        let last = std::cell::RefCell::new((Vec::new(), Vec::new()));
        let ok = sluice_test_support::wait_for_quiet(LONG, || {
            let (pg, last) = (&pg, &last);
            async move {
                let want = expected(&self.lms, gone);
                let got = actual(pg).await;
                let equal = want == got;
                *last.borrow_mut() = (want, got);
                equal.then_some(())
            }
        })
        .await;
        if ok.is_none() {
            let (want, got) = last.into_inner();
            for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                let missing: Vec<&String> = w.iter().filter(|r| !g.contains(r)).take(5).collect();
                let extra: Vec<&String> = g.iter().filter(|r| !w.contains(r)).take(5).collect();
                if !missing.is_empty() || !extra.is_empty() {
                    eprintln!("table {i}: missing {missing:?}, unexpected {extra:?}");
                }
            }
            panic!("{step}: the target never held the expected mapped rows");
        }
    }

    async fn dead_letters(&self) -> Vec<String> {
        let db = self.orgs.connect("orgs").await;
        column(&db, "select error from sluice.dead_letters").await
    }
}

/// Waits until the target's institute `id` has `name` (a change flowing through).
async fn wait_institute_name(pg: &tokio_postgres::Client, id: i64, name: &str) {
    sluice_test_support::wait_for(
        &format!("institute {id} named {name:?}"),
        LONG,
        || async move {
            let current: String = pg
                .query_one(
                    "select name from organizations.institute where \"instituteId\" = $1",
                    &[&id],
                )
                .await
                .expect("institute")
                .get(0);
            (current == name).then_some(())
        },
    )
    .await;
}

fn seed(db: &MariaDb) {
    // Numbers 1–200 in a table Sluice does not capture (MySQL has no `seq_1_to_n`).
    let numbers: Vec<String> = (1..=200).map(|i| format!("({i})")).collect();
    db.execute(
        Some("lms"),
        &format!(
            "create table numbers (seq int primary key);
             insert into numbers values {};",
            numbers.join(",")
        ),
    );
    db.execute(
        Some("lms"),
        "insert into institutes (id, name) select seq, concat('Institute ', seq) from numbers where seq <= 5;
         insert into users (id, first_name, last_name, email, password, status)
           select seq, concat('First', seq), concat('Last', seq),
                  if(seq % 10 = 0, null, concat('u', seq, '@example.com')), concat('hash', seq),
                  if(seq % 15 = 0, 'INACTIVE', 'ACTIVE')
             from numbers;
         insert into institute_user
           select seq % 5 + 1, seq,
                  elt(seq % 7 + 1, 'ADMIN','TEACHER','INSTRUCTOR','STUDENT','STAFF','DIRECTOR','PARENT'),
                  if(seq % 7 = 0, 'INACTIVE', 'ACTIVE')
             from numbers where seq % 10 <> 0 and seq % 15 <> 0;
         insert into user_profiles select seq, concat('bio of ', seq) from numbers where seq % 3 = 0;",
    );
}

mariadb_and_mysql8!(
    org_directory_mapped_into_postgres,
    org_directory_mapped_from_mariadb_into_postgres,
    org_directory_mapped_from_mysql8_into_postgres
);

async fn org_directory_mapped_into_postgres(lms: MariaDb) {
    let org = Org::on(lms, 60_000).await;
    seed(&org.lms);

    // `sluice check` reads the live schemas: names a mapping reads from the source, or writes
    // in the target, that do not exist are named with the field.
    let good = std::fs::read_to_string(org.dir.path().join("sluice.toml")).expect("config");
    let bad = good
        .replace(
            "after.first_name + ' ' + after.last_name\", isActive",
            "after.firstname + ' ' + after.last_name\", isActive",
        )
        .replace(
            "columns = { instituteId = \"id\", createdAt",
            "columns = { instituteId = \"institute\", createdAt",
        )
        .replace("include = [\"bio\"]", "include = [\"biography\"]")
        .replace(
            "columns = { userId = \"id\" }\ninclude = []",
            "columns = { userId = \"email\" }\ninclude = []",
        )
        // Type mistakes, seen only with the columns' types: an integer into a timestamp, and
        // a string column added to a number.
        .replace(
            "deletedAt = \"source.commit_time\"",
            "deletedAt = \"source.ts_ms\"",
        )
        .replace(
            "compute = { isActive = \"after.status == 'ACTIVE'\" }",
            "compute = { isActive = \"after.status + 1 == 2\" }",
        );
    let bad_path = org.dir.path().join("bad.toml");
    std::fs::write(&bad_path, bad).expect("bad config");
    let (status, out, err) = sluice_test_support::sluice::run_to_end(
        Path::new(SLUICE),
        &["check", "--config", bad_path.to_str().expect("path")],
        LONG,
    );
    assert_eq!(status.code(), Some(1), "{out}");
    for needle in [
        "sinks.orgs.tables[1].compute.name: \"after.firstname + ' ' + after.last_name\" reads after.firstname, but source table lms.users has no column \"firstname\"",
        "sinks.orgs.tables[0].columns.instituteId: source table lms.institutes has no column \"institute\"",
        "sinks.orgs.tables[5].include: target table organizations.user_card has no column \"biography\"",
        "sinks.orgs.tables[4].columns.userId: key column \"userId\" of target table organizations.user_card comes from source column \"email\", which is not in the source key (id)",
        "sinks.orgs.tables[1].soft_delete.deletedAt: \"source.ts_ms\" gives int, but target column \"deletedAt\" of organizations.user is timestamp with time zone: a timestamp takes text such as source.commit_time",
        "sinks.orgs.tables[3].compute.isActive: CEL type error in \"after.status + 1 == 2\" at line 1, column 14: no `+` for string and int",
    ] {
        assert!(out.contains(needle), "{needle}\n{out}\n{err}");
    }

    let mut sluice = org.start();
    org.converge("snapshot", &[]).await;

    // A user is deactivated: it leaves the filter and is soft-deleted (isActive = false,
    // deletedAt set), its auth row kept.
    org.execute("update users set status = 'INACTIVE' where id = 3");
    org.converge("deactivation", &[3]).await;
    let pg = org.orgs.connect("orgs").await;
    let deleted_at = deleted_at_of(&pg, 3).await;
    assert!(deleted_at.is_some(), "a soft delete sets deletedAt");

    // A role changes.
    org.execute("update institute_user set user_type = 'TEACHER' where user_id = 4");
    org.converge("role change", &[3]).await;

    // An institute is deleted, its memberships first (target foreign keys restrict).
    org.execute(
        "start transaction; delete from institute_user where institute_id = 2;
         delete from institutes where id = 2; commit;",
    );
    org.converge("institute deleted", &[3]).await;

    // Filter transitions: a user without an email gets one (enters, written in full); the
    // deactivated user comes back (isActive again, deletedAt cleared by the mapping).
    org.execute(
        "update users set email = 'late@example.com' where id = 10;
         update users set status = 'ACTIVE' where id = 3;
         update user_profiles set bio = 'new bio' where user_id = 3;",
    );
    org.converge("filter transitions", &[]).await;
    let deleted_at = deleted_at_of(&pg, 3).await;
    assert_eq!(deleted_at, None);

    assert!(sluice.stop(LONG).success());
    assert_eq!(org.dead_letters().await, Vec::<String>::new());
}

/// The `deletedAt` of user `id` in the target, as text.
async fn deleted_at_of(pg: &tokio_postgres::Client, id: i64) -> Option<String> {
    let sql = "select \"deletedAt\"::text from organizations.\"user\" where \"userId\" = $1";
    pg.query_one(sql, &[&id])
        .await
        .unwrap_or_else(|e| panic!("user {id}: {e}"))
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_before_their_parents_converge_without_dead_letters() {
    let (org, mut sluice) = Org::converged(120_000).await;

    // Memberships of users that do not exist yet: the target's foreign key refuses them.
    org.execute(
        "insert into institute_user select 1, seq, 'STUDENT', 'ACTIVE' from seq_1001_to_1300;",
    );
    sluice.wait_log("a target foreign key refused", 1, LONG);
    // Meanwhile other tables keep flowing.
    org.execute("update institutes set name = 'Renamed' where id = 5");
    let pg = org.orgs.connect("orgs").await;
    wait_institute_name(&pg, 5, "Renamed").await;
    // The parents arrive.
    org.execute(
        "insert into users (id, first_name, last_name, email, password)
           select seq, 'New', concat('User', seq), concat('n', seq, '@example.com'), 'h'
             from seq_1001_to_1300;",
    );
    org.converge("children before parents", &[]).await;
    assert!(sluice.stop(LONG).success());
    assert_eq!(org.dead_letters().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_whose_parent_never_comes_is_dead_lettered_after_the_wait() {
    let (org, mut sluice) = Org::converged(3_000).await;
    org.execute("insert into institute_user values (1, 999999, 'STAFF', 'ACTIVE'); update institutes set name = 'After' where id = 4;",
    );
    let pg = org.orgs.connect("orgs").await;
    let dead = sluice_test_support::wait_for("the orphan's dead letter", LONG, || {
        let pg = &pg;
        async move {
            let rows = pg
                .query(
                    "select error, sqlstate from sluice.dead_letters where value like '%999999%'",
                    &[],
                )
                .await
                .expect("dead letters");
            rows.first()
                .map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1)))
        }
    })
    .await;
    assert_eq!(dead.1.as_deref(), Some("23503"), "{dead:?}");
    assert!(dead.0.contains("foreign key"), "{dead:?}");
    // The rest of the partition went on after it.
    wait_institute_name(&pg, 4, "After").await;
    assert!(sluice.stop(LONG).success());
}
