//! What capture needs of a change source. A source connector implements [`ChangeSource`];
//! capture (publishing, checkpoints, acknowledgement) is generic over it. The backfill hooks
//! a source supplies are [`crate::backfill::ChunkReader`].
//!
//! Contract, for every source:
//! - **Order.** A run hands [`crate::Batch`]es through [`RunHandles::out`] in the source's
//!   commit order; every event carries a [`crate::Position`] that only grows.
//! - **Checkpoints cover what came before.** A batch's checkpoint covers every event handed
//!   before it. Capture publishes the events, waits until Kafka confirmed them, and only then
//!   makes the checkpoint durable ([`RunHandles::durable`]); the source acknowledges a position
//!   to the database (slot, binlog) only once a durable checkpoint covers it.
//! - **Resume without gaps.** A run resumes after the durable checkpoint it is given: it may
//!   hand again events after it (capture drops those Kafka already has), never skip one.
//! - **Stop.** A run ends when [`RunHandles::stop`] turns true, after handing what it has.

use std::future::Future;

use crate::batch::RunHandles;
use crate::{Classified, SourceCheckpoint, TableSchema};

/// Runs a stream session to its end on a thread of its own (`name`) with a single-threaded
/// runtime, so that decoding a busy stream never waits behind the pipeline's tasks. `setup`
/// makes the error for a thread or runtime that cannot start.
pub fn spawn_session_thread<E, F>(
    name: String,
    setup: fn(String) -> E,
    session: impl FnOnce() -> F + Send + 'static,
) -> std::thread::JoinHandle<Result<(), E>>
where
    F: Future<Output = Result<(), E>>,
    E: Send + 'static,
{
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| setup(format!("cannot start the stream runtime: {e}")))?;
            rt.block_on(session())
        })
        .unwrap_or_else(|e| {
            let msg = format!("cannot start the stream thread: {e}");
            std::thread::spawn(move || Err(setup(msg)))
        })
}

/// Whether a source without a checkpoint starts with a snapshot of the existing rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMode {
    Initial,
    Never,
}

/// A database whose row changes capture publishes.
pub trait ChangeSource: Send + Sync + Sized + 'static {
    /// The source's configuration (connection, tables, snapshot mode, …).
    type Settings: Clone + Send + Sync + 'static;
    type Error: Classified;

    /// Connects and reads the captured tables' shapes (the preflight's checks included).
    fn open(settings: Self::Settings) -> impl Future<Output = Result<Self, Self::Error>> + Send;
    fn tables(&self) -> Vec<&TableSchema>;
    /// One run: decide where to start (`resume`, or a new snapshot with `resnapshot`),
    /// snapshot if needed, then stream until stopped or an error. Capture retries transient
    /// errors with the then-durable checkpoint.
    fn run(
        &self,
        resume: Option<SourceCheckpoint>,
        resnapshot: bool,
        handles: RunHandles,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// How many bytes of the server's log lie past `position` (a checkpoint's), for lag:
    /// `None` where the source cannot tell.
    fn log_behind(
        &self,
        _position: &str,
    ) -> impl Future<Output = Result<Option<u64>, Self::Error>> + Send {
        async { Ok(None) }
    }
}
