//! The database side of a backfill: reads key-ordered chunks and commits a marker after each,
//! one backfill after another, for any source that supplies a [`ChunkReader`].

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::tracker::{Chunk, MarkerId};
use super::ReadPace;
use crate::{error_chain, BackfillState, Backoff, Row, TableId, TableSchema};

/// A chunk's rows and the last row's key, in the form the next read's `after` takes.
pub type ChunkRead = (Vec<Row>, Option<Vec<String>>);

/// What a source supplies to the [`Driver`]: a connection, a chunk read and a marker write.
///
/// Contract:
/// - [`Self::read`] returns up to `limit` rows after `bf.after` in primary-key order, matching
///   `bf.predicate`, read in one statement (one snapshot), and the last row's key in the form
///   the next read's `after` takes.
/// - [`Self::mark`] commits a marker the source's stream decodes in commit order, with the
///   same visibility as any other transaction: whatever a read saw committed before the marker.
///   The stream hands it to [`super::Tracker::marker`].
/// - Errors are classed: transient ones (a lost connection) are retried from the last published
///   chunk; a definite one, or a query the table refuses, abandons the backfill.
pub trait ChunkReader: Send + Sync + 'static {
    /// The captured table as the source knows it (its schema, how to select it).
    type Table: Send + Sync + 'static;
    type Conn: Send;
    type Error: std::error::Error + Send + Sync + 'static;

    fn schema(table: &Self::Table) -> &Arc<TableSchema>;
    /// Whether retrying can help: a transient error that is not a query the table refuses.
    fn retryable(e: &Self::Error) -> bool;
    /// A connection ready for reads and markers (the source's own checks done).
    fn open(&self) -> impl Future<Output = Result<Self::Conn, Self::Error>> + Send;
    /// The table's row count as the source estimates it, for progress lines.
    fn estimate(
        &self,
        conn: &mut Self::Conn,
        table: &Self::Table,
    ) -> impl Future<Output = Option<i64>> + Send;
    fn read(
        &self,
        conn: &mut Self::Conn,
        table: &Self::Table,
        bf: &BackfillState,
        limit: usize,
    ) -> impl Future<Output = Result<ChunkRead, Self::Error>> + Send;
    fn mark(
        &self,
        conn: &mut Self::Conn,
        table: &TableId,
        marker: &MarkerId,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Ends a connection (after a round, whatever its outcome).
    fn close(&self, conn: Self::Conn) -> impl Future<Output = ()> + Send;
}

/// The driver may run this many chunks ahead of the stream: a stream lagging behind the
/// database then still receives whole chunks at every marker it reaches.
const CHUNKS_AHEAD: usize = 8;

pub type ChunkChannel = (mpsc::Sender<Chunk>, mpsc::Receiver<Chunk>);
pub type RequestChannel = (
    mpsc::UnboundedSender<BackfillState>,
    mpsc::UnboundedReceiver<BackfillState>,
);

/// Creates the channels between a [`Driver`] and its [`super::Tracker`].
pub fn channels() -> (ChunkChannel, RequestChannel) {
    (mpsc::channel(CHUNKS_AHEAD), mpsc::unbounded_channel())
}

/// Reads chunks and commits markers, one backfill after another.
pub struct Driver<R: ChunkReader> {
    pub reader: R,
    pub source: String,
    pub tables: HashMap<TableId, Arc<R::Table>>,
    /// The schema a table name without one is in (`public` for Postgres).
    pub default_schema: &'static str,
    pub chunk_rows: usize,
    /// Most rows read per second (0: no limit).
    pub max_rows_per_second: u64,
    pub chunks: mpsc::Sender<Chunk>,
    pub requests: mpsc::UnboundedReceiver<BackfillState>,
}

enum RoundError<E> {
    /// The stream session ended: so does the driver.
    Closed,
    Failed(E),
}

struct Round<'a, R: ChunkReader> {
    conn: R::Conn,
    run: &'a str,
    n: &'a mut u64,
    driver: &'a Driver<R>,
}

impl<R: ChunkReader> Driver<R> {
    /// Works through `queue`, then through requests as the stream decodes them, until the
    /// stream session ends. A definite error abandons its backfill; lost connections are
    /// retried, resuming after the last published chunk.
    pub async fn run(mut self, queue: Vec<BackfillState>) {
        let mut queue: VecDeque<BackfillState> = queue.into();
        let mut backoff = Backoff::default();
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let run = format!("{micros:x}");
        let mut n = 0u64;
        loop {
            let mut bf = match queue.pop_front() {
                Some(bf) => bf,
                None => match self.requests.recv().await {
                    Some(bf) => bf,
                    None => return,
                },
            };
            let Some(table) = TableId::parse(&bf.table, self.default_schema)
                .and_then(|id| self.tables.get(&id))
                .cloned()
            else {
                tracing::error!(source = %self.source, table = %bf.table, id = %bf.id, "backfill skipped: the source does not capture this table");
                continue;
            };
            loop {
                let conn = match self.reader.open().await {
                    Ok(c) => c,
                    Err(e) => {
                        let delay = backoff.next_delay();
                        if R::retryable(&e) {
                            tracing::warn!(source = %self.source, error = %error_chain(&e), retry_in_ms = delay.as_millis() as u64, "backfill cannot connect");
                        } else {
                            tracing::error!(source = %self.source, table = %bf.table, error = %error_chain(&e), retry_in_ms = delay.as_millis() as u64, "backfill cannot start");
                        }
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                };
                let mut round = Round {
                    conn,
                    run: &run,
                    n: &mut n,
                    driver: &self,
                };
                let outcome = match round.backfill(&table, &mut bf).await {
                    Ok(()) => Ok(true),
                    Err(RoundError::Closed) => Err(()),
                    Err(RoundError::Failed(e)) if R::retryable(&e) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(table = %bf.table, error = %error_chain(&e), retry_in_ms = delay.as_millis() as u64, "backfill interrupted; resuming after its last chunk");
                        tokio::time::sleep(delay).await;
                        Ok(false)
                    }
                    // A definite error, or a query the table refuses (a predicate naming a
                    // column dropped since the request, say), abandons it.
                    Err(RoundError::Failed(e)) => round
                        .publish(
                            &bf,
                            R::schema(&table),
                            Vec::new(),
                            None,
                            Some(Some(error_chain(&e))),
                        )
                        .await
                        .map(|()| true)
                        .map_err(|_| ()),
                };
                self.reader.close(round.conn).await;
                match outcome {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(()) => return,
                }
            }
            backoff.reset();
        }
    }
}

impl<R: ChunkReader> Round<'_, R> {
    async fn backfill(
        &mut self,
        table: &R::Table,
        bf: &mut BackfillState,
    ) -> Result<(), RoundError<R::Error>> {
        let d = self.driver;
        let estimate = d.reader.estimate(&mut self.conn, table).await;
        tracing::info!(
            source = %d.source,
            table = %bf.table,
            id = %bf.id,
            predicate = bf.predicate.as_deref().unwrap_or("(all rows)"),
            resume_after = ?bf.after,
            rows_estimate = estimate,
            "backfill {}",
            if bf.after.is_some() { "resumed" } else { "started" }
        );
        let mut pace = ReadPace::new(&d.source, &bf.table, d.max_rows_per_second, estimate);
        loop {
            let (rows, last) = d
                .reader
                .read(&mut self.conn, table, bf, d.chunk_rows)
                .await
                .map_err(RoundError::Failed)?;
            pace.read(rows.len());
            let done = rows.len() < d.chunk_rows;
            self.publish(
                bf,
                R::schema(table),
                rows,
                last.clone(),
                done.then_some(None),
            )
            .await?;
            // Only once its marker committed: a retry after a failed marker reads the chunk
            // again (its rows were never published without the marker).
            if last.is_some() {
                bf.after = last;
            }
            if done {
                pace.complete();
                return Ok(());
            }
            pace.next().await;
        }
    }

    /// Hands a chunk to the stream, then commits its marker. `end` is `None` for a chunk with
    /// more to come, `Some(None)` for the last one, `Some(Some(reason))` to abandon.
    async fn publish(
        &mut self,
        bf: &BackfillState,
        table: &Arc<TableSchema>,
        rows: Vec<Row>,
        after: Option<Vec<String>>,
        end: Option<Option<String>>,
    ) -> Result<(), RoundError<R::Error>> {
        let d = self.driver;
        *self.n += 1;
        let marker = MarkerId {
            run: self.run.to_owned(),
            n: *self.n,
        };
        let chunk = Chunk {
            marker: marker.clone(),
            backfill: bf.id.clone(),
            table: table.clone(),
            rows,
            after,
            done: end.is_some(),
            failed: end.flatten(),
        };
        d.chunks.send(chunk).await.map_err(|_| RoundError::Closed)?;
        d.reader
            .mark(&mut self.conn, &table.id, &marker)
            .await
            .map_err(RoundError::Failed)
    }
}
