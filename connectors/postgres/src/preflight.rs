//! Checks that a source database can be captured, each failure explained with its fix.

use sluice_core::Problem;
use tokio_postgres::Client;

use crate::catalog;
use crate::client::connect;
use crate::source::SourceSettings;

/// Runs every check against the live server. An empty list means capture can start.
pub async fn preflight(settings: &SourceSettings) -> Vec<Problem> {
    let subject = format!("source {}", settings.name);
    let client = match connect(&settings.connection, "preflight").await {
        Ok(c) => c,
        Err(e) => {
            let section = format!("sources.{}.postgres", settings.name);
            return vec![Problem::of_connect(subject, &e, &section)];
        }
    };
    match checks(settings, &client, &subject).await {
        Ok(problems) => problems,
        Err(e) => vec![Problem::of_error(subject, &e)],
    }
}

async fn checks(
    settings: &SourceSettings,
    client: &Client,
    subject: &str,
) -> Result<Vec<Problem>, crate::PostgresError> {
    let mut problems = Vec::new();
    let q = |sql: &'static str| async move {
        client
            .query_one(sql, &[])
            .await
            .map_err(crate::PostgresError::query(format!("running `{sql}`")))
    };

    let wal_level: String = q("show wal_level").await?.get(0);
    if wal_level != "logical" {
        problems.push(Problem::new(
            subject,
            format!(
                "wal_level is \"{wal_level}\", logical replication needs \"logical\": set \
                 wal_level = logical in postgresql.conf (or alter system set wal_level = logical) \
                 and restart Postgres"
            ),
        ));
    }
    let slots: String = q("show max_replication_slots").await?.get(0);
    if slots.parse::<i64>().unwrap_or(0) < 1 {
        problems.push(Problem::new(
            subject,
            "max_replication_slots is 0: set it to at least 1 (one per Sluice source) and restart Postgres",
        ));
    }
    let row = q("select rolreplication, rolsuper, current_user::text from pg_catalog.pg_roles where rolname = current_user").await?;
    let (replication, superuser, user): (bool, bool, String) = (row.get(0), row.get(1), row.get(2));
    if !replication && !superuser {
        problems.push(Problem::new(
            subject,
            format!(
                "role {user} lacks the REPLICATION attribute needed to stream changes: run \
                 `alter role {user} replication` as a superuser"
            ),
        ));
    }

    let published = catalog::publication_tables(client, &settings.publication).await?;
    for table in &settings.tables {
        let tsubject = format!("{subject} table {table}");
        let Some(info) = catalog::describe_table(client, table).await? else {
            problems.push(Problem::new(
                tsubject,
                format!(
                    "table {table} does not exist in database {}: create it, or fix the name in \
                     sources.{}.tables (names are case-sensitive, schema-qualified as schema.table)",
                    settings.connection.database, settings.name
                ),
            ));
            continue;
        };
        if info.kind != b'r' && info.kind != b'p' {
            problems.push(Problem::new(
                tsubject.clone(),
                format!("{table} is not a table (views and foreign tables cannot be captured): remove it from sources.{}.tables", settings.name),
            ));
        }
        if let Err(why) = info.key() {
            problems.push(Problem::new(tsubject.clone(), why));
        }
        if !info.can_select {
            problems.push(Problem::new(
                tsubject.clone(),
                format!("role {user} cannot read {table}, which the initial snapshot needs: grant select on {table} to {user}"),
            ));
        }
        let in_publication = published.as_ref().is_some_and(|p| p.contains(table));
        if !in_publication && !info.is_owner && !superuser {
            problems.push(Problem::new(
                tsubject,
                format!(
                    "{table} is not in publication {pub_} and role {user} does not own it, so Sluice \
                     cannot add it: as the owner run `{verb}`",
                    pub_ = settings.publication,
                    verb = if published.is_some() {
                        format!("alter publication {} add table {table}", settings.publication)
                    } else {
                        format!("create publication {} for table {table}", settings.publication)
                    }
                ),
            ));
        }
    }

    if let Some(slot) = catalog::slot(client, &settings.slot).await? {
        if slot.plugin.as_deref() != Some("pgoutput") {
            problems.push(Problem::new(
                subject,
                format!(
                    "replication slot {} exists but is not a pgoutput logical slot: choose another \
                     sources.{}.slot, or drop it with select pg_drop_replication_slot('{}')",
                    settings.slot, settings.name, settings.slot
                ),
            ));
        } else if slot.database.as_deref() != Some(settings.connection.database.as_str()) {
            problems.push(Problem::new(
                subject,
                format!(
                    "replication slot {} belongs to database {}, not {}: choose another sources.{}.slot",
                    settings.slot,
                    slot.database.unwrap_or_default(),
                    settings.connection.database,
                    settings.name
                ),
            ));
        } else if slot.wal_status.as_deref() == Some("lost") {
            problems.push(Problem::new(
                subject,
                format!(
                    "replication slot {} was invalidated (the WAL it needed was removed, see \
                     max_slot_wal_keep_size): changes were lost; re-snapshot with \
                     `sluice run --resnapshot {}`",
                    settings.slot, settings.name
                ),
            ));
        }
    }
    Ok(problems)
}
