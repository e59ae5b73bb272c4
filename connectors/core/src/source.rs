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
use crate::{ErrorClass, SourceCheckpoint, TableSchema};

/// A database whose row changes capture publishes.
pub trait ChangeSource: Send + Sync + Sized + 'static {
    /// The source's configuration (connection, tables, snapshot mode, …).
    type Settings: Clone + Send + Sync + 'static;
    type Error: std::error::Error + Send + Sync + 'static;

    /// The source's name in the config (`[sources.NAME]`).
    fn name(settings: &Self::Settings) -> &str;
    /// Whether a start without a checkpoint takes an initial snapshot.
    fn snapshots(settings: &Self::Settings) -> bool;
    /// Connects and reads the captured tables' shapes (the preflight's checks included).
    fn open(settings: Self::Settings) -> impl Future<Output = Result<Self, Self::Error>> + Send;
    fn tables(&self) -> Vec<&TableSchema>;
    fn class(e: &Self::Error) -> ErrorClass;
    /// One run: decide where to start (`resume`, or a new snapshot with `resnapshot`),
    /// snapshot if needed, then stream until stopped or an error. Capture retries transient
    /// errors with the then-durable checkpoint.
    fn run(
        &self,
        resume: Option<SourceCheckpoint>,
        resnapshot: bool,
        handles: RunHandles,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}
