//! The Postgres source: publication, slot, snapshot and stream, put together.
//!
//! # Where a run starts
//!
//! | slot      | durable checkpoint          | what happens                                      |
//! |-----------|-----------------------------|---------------------------------------------------|
//! | missing   | none                        | create the slot, snapshot, stream                 |
//! | exists    | snapshot done               | stream from the checkpoint LSN                    |
//! | exists    | none, or snapshot unfinished| drop and recreate the slot, snapshot again        |
//! | missing   | exists                      | refuse: changes since the checkpoint are gone;    |
//! |           |                             | `--resnapshot` starts over                        |
//!
//! The checkpoint, not the slot's `confirmed_flush_lsn`, is the resume point: after a crash
//! Postgres may persist the slot's position lazily and hand back transactions we already
//! published. Passing our own LSN makes the server skip them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationConfig};
use sluice_core::event::{format_lsn, parse_lsn};
use sluice_core::source::SnapshotMode;
use sluice_core::{
    topic_name, BackfillBook, Batch, RunHandles, SourceCheckpoint, TableId, TableSchema,
};
use tokio::sync::oneshot;

use crate::backfill::PgChunks;
use crate::catalog;
use crate::client::{connect, quote_ident, quote_table, SESSION_OPTIONS};
use crate::config::PostgresConnection;
use crate::error::PostgresError;
use crate::snapshot::{now_us, read_snapshot};
use crate::stream::{spawn_session, StartPlan, StreamContext};
use crate::table::CapturedTable;
use crate::types::TypeMap;
use sluice_core::backfill::{self, Driver, Tracker};

/// Everything a Postgres source needs to run.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub name: String,
    pub connection: PostgresConnection,
    pub tables: Vec<TableId>,
    pub slot: String,
    pub publication: String,
    pub snapshot: SnapshotMode,
    pub topic_prefix: String,
    pub max_batch_events: usize,
    pub max_batch_delay: Duration,
    /// Rows per chunk of an incremental backfill.
    pub backfill_chunk_rows: usize,
    /// Most rows a backfill reads per second (0: no limit).
    pub backfill_max_rows_per_second: u64,
}

pub struct PostgresSource {
    settings: SourceSettings,
    tables: Vec<Arc<CapturedTable>>,
    types: Arc<TypeMap>,
    /// A connection kept for measuring lag (made on first use).
    lag_client: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

impl PostgresSource {
    /// Every configured table, by name.
    fn configured(&self) -> Vec<String> {
        self.tables
            .iter()
            .map(|t| t.schema.id.to_string())
            .collect()
    }
}

#[derive(Clone, Copy)]
enum Plan {
    Resume(u64),
    Create,
}

async fn join(
    session: std::thread::JoinHandle<Result<(), PostgresError>>,
) -> Result<(), PostgresError> {
    tokio::task::spawn_blocking(move || session.join())
        .await
        .map_err(|e| PostgresError::Setup(format!("stream thread lost: {e}")))?
        .unwrap_or_else(|_| Err(PostgresError::Setup("stream thread panicked".into())))
}

async fn drop_slot(client: &tokio_postgres::Client, slot: &str) -> Result<(), PostgresError> {
    client
        .execute("select pg_drop_replication_slot($1)", &[&slot])
        .await
        .map_err(PostgresError::query(format!(
            "dropping replication slot {slot}"
        )))?;
    Ok(())
}

/// Creates the publication, or adds configured tables it lacks. Tables it holds beyond the
/// configured ones are left alone (their changes are skipped) and reported.
async fn ensure_publication(
    client: &tokio_postgres::Client,
    s: &SourceSettings,
) -> Result<(), PostgresError> {
    let existing = catalog::publication_tables(client, &s.publication).await?;
    let wanted: Vec<String> = match &existing {
        None => s.tables.iter().map(quote_table).collect(),
        Some(held) => {
            let extra = held.iter().filter(|t| !s.tables.contains(t)).count();
            if extra > 0 {
                tracing::warn!(publication = %s.publication, extra, "publication holds tables Sluice does not capture; their changes are skipped");
            }
            let missing = s.tables.iter().filter(|t| !held.contains(t));
            missing.map(quote_table).collect()
        }
    };
    let (publication, list) = (quote_ident(&s.publication), wanted.join(", "));
    let (sql, doing, done) = match existing {
        None => (
            format!("create publication {publication} for table {list}"),
            "creating publication",
            "publication created",
        ),
        Some(_) if wanted.is_empty() => return Ok(()),
        Some(_) => (
            format!("alter publication {publication} add table {list}"),
            "adding tables to publication",
            "tables added to publication",
        ),
    };
    client
        .batch_execute(&sql)
        .await
        .map_err(PostgresError::query(format!("{doing} {}", s.publication)))?;
    tracing::info!(publication = %s.publication, tables = wanted.len(), "{done}");
    Ok(())
}

/// The replication connection's TLS: the same `sslmode` and files as every other connection
/// (the transport verifies with the same meanings; without `sslrootcert` it trusts the Mozilla
/// roots it carries).
fn replication_tls(connection: &PostgresConnection) -> pgwire_replication::TlsConfig {
    use pgwire_replication::SslMode as Mode;
    let tls = connection.tls();
    let mode = match tls.mode {
        _ if connection.host.starts_with('/') => Mode::Disable,
        sluice_core::tls::SslMode::Disable => Mode::Disable,
        sluice_core::tls::SslMode::Prefer => Mode::Prefer,
        sluice_core::tls::SslMode::Require => Mode::Require,
        sluice_core::tls::SslMode::VerifyCa => Mode::VerifyCa,
        sluice_core::tls::SslMode::VerifyFull => Mode::VerifyFull,
    };
    // The transport wants an IP address spelt out as the name to verify (as libpq does, the
    // certificate must then hold that address).
    let is_ip = connection.host.parse::<std::net::IpAddr>().is_ok();
    pgwire_replication::TlsConfig {
        mode,
        ca_pem_path: tls.root_cert,
        sni_hostname: is_ip.then(|| connection.host.clone()),
        client_cert_pem_path: tls.client_cert,
        client_key_pem_path: tls.client_key,
    }
}

impl sluice_core::source::ChangeSource for PostgresSource {
    type Settings = SourceSettings;
    type Error = PostgresError;

    /// Reads the catalog and makes sure the publication holds every configured table.
    /// Preflight has run before; problems found here are still explained.
    async fn open(settings: SourceSettings) -> Result<Self, PostgresError> {
        let client = connect(&settings.connection, "catalog").await?;
        let types = Arc::new(catalog::load_types(&client).await?);
        let mut tables = Vec::new();
        for id in &settings.tables {
            let info = catalog::describe_table(&client, id).await?.ok_or_else(|| {
                PostgresError::Setup(format!(
                    "table {id} does not exist in database {}: create it or fix sources.{}.tables",
                    settings.connection.database, settings.name
                ))
            })?;
            let key_names = info.key().map_err(PostgresError::Setup)?;
            let columns: Arc<[Arc<str>]> = info
                .columns
                .iter()
                .map(|(n, _)| Arc::from(n.as_str()))
                .collect();
            let key = key_names
                .iter()
                .filter_map(|k| info.columns.iter().position(|(n, _)| n == k))
                .collect();
            tables.push(Arc::new(CapturedTable {
                schema: Arc::new(TableSchema::new(
                    Arc::from(settings.name.as_str()),
                    Arc::from(settings.connection.database.as_str()),
                    id.clone(),
                    columns,
                    key,
                    Arc::from(topic_name(&settings.topic_prefix, id)),
                )),
                kinds: info
                    .columns
                    .iter()
                    .map(|(_, oid)| types.kind(*oid))
                    .collect(),
                key_names,
            }));
        }
        ensure_publication(&client, &settings).await?;
        Ok(PostgresSource {
            settings,
            tables,
            types,
            lag_client: tokio::sync::Mutex::new(None),
        })
    }

    /// WAL bytes between `position` (a checkpoint's LSN) and the server's WAL end (on a
    /// standby, the WAL it received).
    async fn log_behind(&self, position: &str) -> Result<Option<u64>, PostgresError> {
        let Some(lsn) = parse_lsn(position) else {
            return Ok(None);
        };
        let mut client = self.lag_client.lock().await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            *client = Some(connect(&self.settings.connection, "lag").await?);
        }
        let Some(c) = client.as_ref() else {
            return Ok(None);
        };
        let row = c
            .query_one(
                "select pg_wal_lsn_diff(case when pg_is_in_recovery() then pg_last_wal_receive_lsn()
                                             else pg_current_wal_lsn() end, $1::text::pg_lsn)::bigint",
                &[&format_lsn(lsn)],
            )
            .await
            .map_err(PostgresError::query("measuring the WAL past the checkpoint"))?;
        Ok(row.get::<_, Option<i64>>(0).map(|b| b.max(0) as u64))
    }

    fn tables(&self) -> Vec<&TableSchema> {
        self.tables.iter().map(|t| &*t.schema).collect()
    }

    async fn run(
        &self,
        resume: Option<SourceCheckpoint>,
        resnapshot: bool,
        handles: RunHandles,
    ) -> Result<(), PostgresError> {
        let s = &self.settings;
        let control = connect(&s.connection, "control").await?;
        let slot = catalog::slot(&control, &s.slot).await?;
        let resume_lsn = resume
            .as_ref()
            .filter(|c| c.slot.as_deref() == Some(s.slot.as_str()))
            .filter(|c| c.snapshot_done || s.snapshot == SnapshotMode::Never)
            .and_then(|c| parse_lsn(&c.position));

        let plan = match (&slot, resume_lsn) {
            (Some(slot), _) if slot.wal_status.as_deref() == Some("lost") && !resnapshot => {
                return Err(PostgresError::Setup(format!(
                    "replication slot {} was invalidated (its WAL was removed): changes were lost; \
                     start over with `sluice run --resnapshot {}`",
                    s.slot, s.name
                )))
            }
            (Some(_), Some(lsn)) if !resnapshot => Plan::Resume(lsn),
            (Some(_), None) if s.snapshot == SnapshotMode::Never && !resnapshot => Plan::Resume(0),
            (Some(_), _) => {
                tracing::warn!(
                    slot = %s.slot,
                    "slot exists without a finished snapshot checkpoint: dropping it and taking a new snapshot"
                );
                drop_slot(&control, &s.slot).await?;
                Plan::Create
            }
            (None, Some(lsn)) if !resnapshot => {
                return Err(PostgresError::Setup(format!(
                    "replication slot {} is missing but source {} has a checkpoint at {}: the \
                     changes since then cannot be recovered; start over with a new snapshot with \
                     `sluice run --resnapshot {}`",
                    s.slot,
                    s.name,
                    format_lsn(lsn),
                    s.name
                )))
            }
            (None, _) => Plan::Create,
        };

        let target = s.connection.describe();
        let password = s.connection.password().map_err(PostgresError::Setup)?;
        let mut cfg = ReplicationConfig::new(
            s.connection.host.clone(),
            s.connection.user.clone(),
            password
                .map(|p| secrecy::ExposeSecret::expose_secret(&p).to_owned())
                .unwrap_or_default(),
            s.connection.database.clone(),
            s.slot.clone(),
            s.publication.clone(),
        )
        .with_port(s.connection.port)
        .with_tls(replication_tls(&s.connection))
        .with_options(SESSION_OPTIONS)
        .with_application_name(format!("sluice {}", s.name))
        .with_status_interval(Duration::from_secs(1))
        .with_wakeup_interval(Duration::from_secs(1))
        .with_buffer_size(4096);
        let source_name: Arc<str> = Arc::from(s.name.as_str());
        let book = match plan {
            Plan::Resume(_) => BackfillBook::resume(
                &s.name,
                &self.configured(),
                resume.as_ref(),
                s.snapshot == SnapshotMode::Never,
            ),
            Plan::Create => BackfillBook {
                complete: self.configured(),
                ..BackfillBook::default()
            },
        };
        let (backfills, complete) = (book.state.clone(), book.complete.clone());
        let captured: HashMap<TableId, Arc<CapturedTable>> = self
            .tables
            .iter()
            .map(|t| (t.schema.id.clone(), t.clone()))
            .collect();
        let ((chunk_tx, chunk_rx), (request_tx, request_rx)) = backfill::channels();
        let driver = Driver {
            reader: PgChunks {
                conn: s.connection.clone(),
                source: s.name.clone(),
            },
            source: s.name.clone(),
            default_schema: "public",
            tables: captured.clone(),
            chunk_rows: s.backfill_chunk_rows,
            max_rows_per_second: s.backfill_max_rows_per_second,
            chunks: chunk_tx,
            requests: request_rx,
        };
        let tracker = Tracker::new(
            s.name.clone(),
            "public",
            captured.into_keys().collect(),
            chunk_rx,
            request_tx,
            book,
        );
        let ctx = StreamContext {
            source_name: source_name.clone(),
            slot: s.slot.clone(),
            tables: self
                .tables
                .iter()
                .map(|t| (t.schema.id.clone(), t.clone()))
                .collect::<HashMap<_, _>>(),
            types: self.types.clone(),
            max_batch: s.max_batch_events,
            max_delay: s.max_batch_delay,
            out: handles.out.clone(),
            durable: handles.durable,
            stop: handles.stop,
            backfill: tracker,
            connection: s.connection.clone(),
        };

        let session = match plan {
            Plan::Resume(lsn) => {
                cfg = cfg.with_start_lsn(Lsn(lsn));
                spawn_session(target, cfg, StartPlan::Resume { lsn }, ctx)
            }
            Plan::Create => {
                let export = s.snapshot == SnapshotMode::Initial;
                let (created_tx, created_rx) = oneshot::channel();
                let (go_tx, go_rx) = oneshot::channel();
                let session = spawn_session(
                    target,
                    cfg,
                    StartPlan::CreateSlot {
                        export,
                        created: created_tx,
                        go: go_rx,
                    },
                    ctx,
                );
                let Ok((point, snapshot_name)) = created_rx.await else {
                    return join(session).await;
                };
                if export {
                    let name = snapshot_name.ok_or_else(|| {
                        PostgresError::Setup(
                            "the slot was created without an exported snapshot".into(),
                        )
                    })?;
                    tracing::info!(source = %s.name, tables = self.tables.len(), "initial snapshot started");
                    let rows = read_snapshot(
                        &s.connection,
                        &self.tables,
                        &name,
                        point,
                        s.max_batch_events,
                        &handles.out,
                    )
                    .await?;
                    tracing::info!(source = %s.name, rows, "initial snapshot read");
                }
                handles
                    .out
                    .send(Batch {
                        events: Vec::new(),
                        checkpoint: Some(SourceCheckpoint {
                            connector: "postgres".into(),
                            position: format_lsn(point),
                            snapshot_done: true,
                            slot: Some(s.slot.clone()),
                            gtid: None,
                            gtid_set: None,
                            written_at_ms: now_us() / 1000,
                            tables: Some(complete),
                            backfills: Vec::new(),
                            abandoned: Vec::new(),
                        }),
                    })
                    .await
                    .map_err(|_| PostgresError::Closed)?;
                let _ = go_tx.send(());
                session
            }
        };
        drop(control);
        // The driver ends when the session drops its side of the request channel.
        let driver = tokio::spawn(driver.run(backfills));
        let result = join(session).await;
        driver.abort();
        result
    }
}
