//! The apply worker's blob step, between mapping a batch and writing it.
//!
//! Over 700 lines: the blob step's reads, uploads, holds and releases share one batch's state.
//!
//! For every row a batch writes with a blob column, the bytes are read (a file under the
//! configured directories, or a byte column), hashed, and uploaded unless the ledger shows the
//! object is already there with that content; the store verifies each upload by its SHA-256.
//! Only then does the batch go to the target, carrying the URLs in the rows and the ledger rows
//! in the same transaction. Objects the committed batch released (a row deleted, soft-deleted
//! or filtered out, a file replaced) are deleted after the commit once no live ledger row
//! references them; a crash in between leaves them `released` in the ledger, and the next
//! sweep deletes them.
//!
//! A file that does not exist yet (a report written after its row) holds the row's partition
//! and is retried, like a row waiting for its foreign-key parent, for `missing_file_wait_ms`;
//! then the row becomes a dead letter. A path outside the configured directories is a dead
//! letter at once. A store that fails (after the SDK's own retries) fails the batch, which the
//! worker retries with backoff: nothing is lost and nothing is dead-lettered for it.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::Value as J;
use sha2::{Digest, Sha256};
use sluice_core::{ApplyBatch, DeadLetter, RecordRef, TableId, TargetChange};
use sluice_postgres::PostgresConnection;

use super::ledger::{self, Entry, Slot};
use super::store::{Body, Store, StoreError};
use super::{content_type_of, hex, KeyTemplate, PartialKey};

/// Where a blob column's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A source column holding a file path.
    Path(String),
    /// A source byte column (base64 in the envelope).
    Bytes(String),
}

/// A blob column of a table mapping, resolved at start.
#[derive(Debug)]
pub struct BlobSpec {
    /// The target URL column's name.
    pub url_column: String,
    pub store: String,
    pub input: Input,
    pub base_dirs: Vec<PathBuf>,
    pub key: KeyTemplate,
    pub content_type: Option<String>,
    /// Delete objects no row references any more (else keep them).
    pub delete_objects: bool,
    pub missing_wait: Duration,
}

/// One event's value for a blob column.
#[derive(Debug, Clone)]
pub enum InputValue {
    Path(String),
    Bytes(Vec<u8>),
    /// Null: the row has no object (any earlier one is released).
    Null,
    /// The value could not be read (bad base64, not a string): why.
    Bad(String),
}

/// What mapping asks of the blob step for one event.
#[derive(Debug, Clone)]
pub enum BlobWork {
    /// The row `change` writes gets the object's URL in column `url` (and its hash and size in
    /// `sha` and `size`).
    Put {
        change: usize,
        table: usize,
        target_key: Vec<J>,
        url: usize,
        sha: Option<usize>,
        size: Option<usize>,
        spec: Arc<BlobSpec>,
        input: InputValue,
        key: Result<PartialKey, String>,
    },
    /// The target row is gone (deleted, soft-deleted, filtered out): its object is released.
    Release {
        table: usize,
        target_key: Vec<J>,
        spec: Arc<BlobSpec>,
    },
}

impl BlobWork {
    /// The target table, the row's key and the blob column this work is about.
    fn row(&self) -> (usize, &[J], &Arc<BlobSpec>) {
        match self {
            BlobWork::Put {
                table,
                target_key,
                spec,
                ..
            }
            | BlobWork::Release {
                table,
                target_key,
                spec,
            } => (*table, target_key, spec),
        }
    }
}

/// The outcome of preparing a batch.
#[derive(Debug)]
pub enum Prepared {
    /// Ready to write.
    Ready(Ready),
    /// This record's file does not exist yet: hold its partition there.
    Hold(RecordRef, String),
}

/// A prepared batch's objects, (store, key) each.
#[derive(Debug, Default)]
pub struct Ready {
    /// Objects the batch's rows let go of: after the commit, deleted where no live row
    /// references them.
    pub released: Vec<(String, String)>,
    /// Objects uploaded for the batch: those of rows the target then refuses (dead letters)
    /// are referenced by no live row after the commit, and deleted.
    pub uploaded: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the blob ledger (sluice.blobs) in the target: {0}")]
    Ledger(String),
}

impl From<tokio_postgres::Error> for StageError {
    fn from(e: tokio_postgres::Error) -> Self {
        StageError::Ledger(crate::telemetry::error_chain(&e))
    }
}

/// A target table as the blob step needs it: its name, columns and key column indexes.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub id: TableId,
    pub columns: Vec<String>,
    pub key: Vec<usize>,
}

/// One worker's blob step.
pub struct Stage {
    sink: String,
    stores: HashMap<String, Store>,
    connection: PostgresConnection,
    client: Option<tokio_postgres::Client>,
    tables: Vec<TableInfo>,
    /// The ledger's index among the sink's target tables.
    ledger: usize,
    /// Where uploads are counted.
    status: std::sync::Arc<crate::status::SinkStatus>,
}

/// An object a row needs, read and hashed.
struct Loaded {
    event: usize,
    work: usize,
    size: u64,
    sha_hex: String,
    key: String,
    content_type: String,
    source_path: Option<String>,
}

impl Stage {
    pub fn new(
        sink: &str,
        stores: HashMap<String, Store>,
        connection: PostgresConnection,
        tables: Vec<TableInfo>,
        ledger: usize,
    ) -> Stage {
        Stage {
            sink: sink.to_owned(),
            stores,
            connection,
            client: None,
            tables,
            ledger,
            status: crate::status::sink(sink),
        }
    }

    async fn client(&mut self) -> Result<&mut tokio_postgres::Client, StageError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let c = sluice_postgres::client::connect(&self.connection, "apply blobs")
                .await
                .map_err(|e| StageError::Ledger(crate::telemetry::error_chain(&e)))?;
            self.client = Some(c);
        }
        self.client
            .as_mut()
            .ok_or_else(|| StageError::Ledger("no connection".into()))
    }

    fn store(&self, name: &str) -> Result<&Store, StageError> {
        self.stores
            .get(name)
            .ok_or_else(|| StageError::Ledger(format!("no store named {name}")))
    }

    fn slot(&self, table: usize, target_key: &[J], spec: &BlobSpec) -> Slot {
        (
            self.tables[table].id.to_string(),
            J::Array(target_key.to_vec()).to_string(),
            spec.url_column.clone(),
        )
    }

    /// Uploads what `batch` needs and fills in its URLs and ledger rows. `waited` says how
    /// long a record's partition has been held (for the missing-file window).
    ///
    /// In four steps: find every file (a missing one holds the batch before any upload),
    /// look up what the ledger and the stores already hold, read, hash and upload, and put
    /// the URLs and ledger rows into the batch. An event whose blob cannot be made becomes a
    /// dead letter, and none of its objects goes up.
    pub async fn prepare(
        &mut self,
        batch: &mut ApplyBatch,
        work: &[(usize, Vec<BlobWork>)],
        waited: &(dyn Fn(&RecordRef) -> Duration + Sync),
    ) -> Result<Prepared, StageError> {
        let started = std::time::Instant::now();
        let (mut jobs, mut refused) = match self.find_jobs(batch, work, waited) {
            Ok(found) => found,
            Err(hold) => return Ok(hold),
        };
        jobs.retain(|j| !refused.contains_key(&j.event));
        self.dead_letter(batch, &refused);

        let mut known = self.known(work, &jobs, &refused).await?;
        let loads = self.load(&jobs, &known).await?;
        refused.extend(loads.refused);
        for (event, path) in &loads.vanished {
            let Some(j) = jobs.iter().find(|j| j.event == *event) else {
                continue;
            };
            let record = batch.events[*event].record.clone();
            let why = missing_why(path, &j.spec);
            if waited(&record) < j.spec.missing_wait {
                return Ok(Prepared::Hold(record, why));
            }
            refused.insert(*event, expired_why(&why, &j.spec));
        }
        let mut loaded: Vec<Loaded> = loads.loaded.into_iter().flatten().collect();
        loaded.retain(|l| !refused.contains_key(&l.event));
        self.dead_letter(batch, &refused);
        tracing::debug!(
            objects = loaded.len(),
            uploaded = loads.uploaded.len(),
            ms = started.elapsed().as_millis() as u64,
            "blobs ready"
        );

        let released = self
            .fill(batch, work, &refused, &loaded, &mut known.live)
            .await?;
        Ok(Prepared::Ready(Ready {
            released,
            uploaded: loads.uploaded,
        }))
    }

    /// Finds every file the batch's rows need, without reading any. Returns the jobs and the
    /// events refused (with why), or the hold of the first record whose file is missing while
    /// its partition may still wait.
    fn find_jobs(
        &self,
        batch: &ApplyBatch,
        work: &[(usize, Vec<BlobWork>)],
        waited: &(dyn Fn(&RecordRef) -> Duration + Sync),
    ) -> Result<(Vec<Job>, HashMap<usize, String>), Prepared> {
        let mut jobs: Vec<Job> = Vec::new();
        let mut refused: HashMap<usize, String> = HashMap::new();
        // Each blob column's directories, resolved once per batch rather than once per file.
        let mut real_bases: HashMap<usize, Vec<PathBuf>> = HashMap::new();
        for (event, works) in work {
            for (w, item) in works.iter().enumerate() {
                let BlobWork::Put {
                    spec,
                    input,
                    key,
                    table,
                    target_key,
                    ..
                } = item
                else {
                    continue;
                };
                let source = match input {
                    InputValue::Null => continue,
                    InputValue::Bad(why) => {
                        refused.insert(*event, why.clone());
                        continue;
                    }
                    InputValue::Bytes(b) => Source::Bytes(b.clone()),
                    InputValue::Path(p) => {
                        let bases = real_bases
                            .entry(Arc::as_ptr(spec) as usize)
                            .or_insert_with(|| canonical(&spec.base_dirs));
                        match locate(p, &spec.base_dirs, bases) {
                            Ok(path) => Source::File(path),
                            Err(ReadError::Missing(path)) => {
                                let record = batch.events[*event].record.clone();
                                let why = missing_why(&path, spec);
                                if waited(&record) < spec.missing_wait {
                                    return Err(Prepared::Hold(record, why));
                                }
                                refused.insert(*event, expired_why(&why, spec));
                                continue;
                            }
                            Err(ReadError::Refused(why)) => {
                                refused.insert(*event, why);
                                continue;
                            }
                        }
                    }
                };
                let key = match key {
                    Ok(k) => k.clone(),
                    Err(why) => {
                        refused.insert(*event, why.clone());
                        continue;
                    }
                };
                let ext = match &source {
                    Source::File(p) => p
                        .extension()
                        .and_then(|e| e.to_str())
                        .map(|e| format!(".{e}"))
                        .unwrap_or_default(),
                    Source::Bytes(_) => String::new(),
                };
                jobs.push(Job {
                    event: *event,
                    work: w,
                    slot: self.slot(*table, target_key, spec),
                    spec: spec.clone(),
                    source,
                    key,
                    ext,
                });
            }
        }
        Ok((jobs, refused))
    }

    /// What the ledger already has for the rows of `work` (but the refused events'), and,
    /// for object keys known before hashing, which objects are there already. Where a batch
    /// writes one such key twice (a report replaced twice), only the last content goes up.
    async fn known(
        &mut self,
        work: &[(usize, Vec<BlobWork>)],
        jobs: &[Job],
        refused: &HashMap<usize, String>,
    ) -> Result<Known, StageError> {
        let mut slots: Vec<Slot> = Vec::new();
        for (event, works) in work {
            if refused.contains_key(event) {
                continue;
            }
            for item in works {
                let (table, target_key, spec) = item.row();
                slots.push(self.slot(table, target_key, spec));
            }
        }
        let sink = self.sink.clone();
        let live = ledger::live(self.client().await?, &sink, &slots).await?;
        let mut last_for_key: HashMap<(String, String), usize> = HashMap::new();
        let mut by_store: HashMap<String, Vec<String>> = HashMap::new();
        for (i, j) in jobs.iter().enumerate() {
            if !j.key.has_sha256() {
                let key = j.key.finish("", &j.ext);
                by_store
                    .entry(j.spec.store.clone())
                    .or_default()
                    .push(key.clone());
                last_for_key.insert((j.spec.store.clone(), key), i);
            }
        }
        let mut present: HashSet<(String, String, String)> = HashSet::new();
        for (store, keys) in &by_store {
            let found = ledger::referenced(self.client().await?, store, keys).await?;
            for (k, sha) in found {
                present.insert((store.clone(), k, sha));
            }
        }
        Ok(Known {
            live,
            present,
            last_for_key,
        })
    }

    /// Reads, hashes and uploads the jobs' objects, a bounded number at a time (the store's
    /// limit is shared by the sink's workers), so that hashing one file overlaps uploading
    /// others.
    async fn load(&mut self, jobs: &[Job], known: &Known) -> Result<Loads, StageError> {
        let concurrency = self
            .stores
            .values()
            .map(|s| s.concurrency)
            .max()
            .unwrap_or(8);
        self.client().await?;
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| StageError::Ledger("no connection".into()))?;
        let context = JobContext {
            client,
            stores: &self.stores,
            known,
        };
        let context = &context;
        let futures: Vec<_> = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| run_job(i, j, context))
            .collect();
        let outcomes: Vec<Result<(usize, Loaded, bool), JobError>> =
            futures_util::stream::iter(futures)
                .buffer_unordered(concurrency)
                .collect()
                .await;
        let mut loads = Loads {
            loaded: (0..jobs.len()).map(|_| None).collect(),
            ..Loads::default()
        };
        for outcome in outcomes {
            match outcome {
                Ok((i, l, up)) => {
                    if up {
                        self.status.blob_uploaded(l.size);
                        loads
                            .uploaded
                            .push((jobs[i].spec.store.clone(), l.key.clone()));
                    }
                    loads.loaded[i] = Some(l);
                }
                Err(JobError::Stage(e)) => return Err(e),
                // A file that went away (or became unreadable) since it was found.
                Err(JobError::Read(event, ReadError::Missing(path))) => {
                    loads.vanished.insert(event, path);
                }
                Err(JobError::Read(event, ReadError::Refused(why))) => {
                    loads.refused.insert(event, why);
                }
            }
        }
        Ok(loads)
    }

    /// Puts the objects' URLs into the rows and the ledger rows into the batch, keeping
    /// `live` (the ledger's entries as of each event) up to date. Returns the objects the
    /// rows let go of that are to be deleted.
    async fn fill(
        &self,
        batch: &mut ApplyBatch,
        work: &[(usize, Vec<BlobWork>)],
        refused: &HashMap<usize, String>,
        loaded: &[Loaded],
        live: &mut HashMap<Slot, Entry>,
    ) -> Result<Vec<(String, String)>, StageError> {
        let now = now_s();
        let mut released: Vec<(String, String)> = Vec::new();
        let mut urls: HashMap<(String, String), (String, Option<i64>)> = HashMap::new();
        let by_work: HashMap<(usize, usize), &Loaded> =
            loaded.iter().map(|l| ((l.event, l.work), l)).collect();
        for (event, works) in work {
            if refused.contains_key(event) {
                continue;
            }
            for (w, item) in works.iter().enumerate() {
                let (table, target_key, spec) = item.row();
                let slot = self.slot(table, target_key, spec);
                let previous = match item {
                    BlobWork::Release { .. } => live.remove(&slot),
                    BlobWork::Put {
                        change,
                        url,
                        sha,
                        size,
                        ..
                    } => {
                        // The slot's entry as of this event: the ledger's, or an earlier
                        // event's in this batch.
                        let previous = live.get(&slot).cloned();
                        let l = by_work.get(&(*event, w)).copied();
                        let values = match l {
                            None => {
                                live.remove(&slot);
                                [J::Null, J::Null, J::Null]
                            }
                            Some(l) => {
                                let reused = previous.as_ref().filter(|e| {
                                    e.object_key == l.key
                                        && e.sha256 == l.sha_hex
                                        && e.expires_at.is_none_or(|x| x > now + 60)
                                });
                                let (u, expires) = match reused {
                                    Some(e) => (e.url.clone(), e.expires_at),
                                    None => self.url(&spec.store, &l.key, &mut urls).await?,
                                };
                                let ledger_row =
                                    self.ledger_row(&slot, &spec.store, l, &u, expires);
                                batch.events[*event].changes.push(ledger_row);
                                live.insert(
                                    slot.clone(),
                                    live_entry(&slot, &spec.store, l, &u, expires),
                                );
                                [J::String(u), J::String(l.sha_hex.clone()), J::from(l.size)]
                            }
                        };
                        if let Some(TargetChange::Upsert { columns, .. }) =
                            batch.events[*event].changes.get_mut(*change)
                        {
                            let [url_value, sha_value, size_value] = values;
                            columns.push((*url, url_value));
                            if let Some(c) = sha {
                                columns.push((*c, sha_value));
                            }
                            if let Some(c) = size {
                                columns.push((*c, size_value));
                            }
                        }
                        // A row that keeps its object releases nothing.
                        previous.filter(|prev| l.is_none_or(|l| l.key != prev.object_key))
                    }
                };
                if let Some(prev) = previous {
                    let release = self.release_row(&slot, &prev, spec.delete_objects);
                    batch.events[*event].changes.push(release);
                    if spec.delete_objects {
                        released.push((prev.store, prev.object_key));
                    }
                }
            }
        }
        Ok(released)
    }

    /// The URL of an object (and when it expires), made once per batch.
    async fn url(
        &self,
        store: &str,
        key: &str,
        urls: &mut HashMap<(String, String), (String, Option<i64>)>,
    ) -> Result<(String, Option<i64>), StageError> {
        let id = (store.to_owned(), key.to_owned());
        if let Some(u) = urls.get(&id) {
            return Ok(u.clone());
        }
        let u = self.store(store)?.url(key).await?;
        urls.insert(id, u.clone());
        Ok(u)
    }

    /// Turns the refused events into dead letters (once each), with the reason.
    fn dead_letter(&self, batch: &mut ApplyBatch, refused: &HashMap<usize, String>) {
        for (event, why) in refused {
            let e = &mut batch.events[*event];
            if batch.dead_letters.iter().any(|d| d.record == e.record) {
                continue;
            }
            e.changes.clear();
            batch.dead_letters.push(DeadLetter {
                record: e.record.clone(),
                key: e.key.clone(),
                value: e.value.clone(),
                error: format!("blob: {why}"),
                sqlstate: None,
            });
        }
    }

    fn ledger_row(
        &self,
        slot: &Slot,
        store: &str,
        l: &Loaded,
        url: &str,
        expires: Option<i64>,
    ) -> TargetChange {
        let values: [J; 14] = [
            J::String(self.sink.clone()),
            J::String(slot.0.clone()),
            J::String(slot.1.clone()),
            J::String(slot.2.clone()),
            J::String(l.key.clone()),
            J::String(store.to_owned()),
            J::String(l.sha_hex.clone()),
            J::from(l.size),
            J::String(l.content_type.clone()),
            l.source_path.clone().map(J::String).unwrap_or(J::Null),
            J::String(url.to_owned()),
            expires.map(utc).unwrap_or(J::Null),
            J::String("live".into()),
            utc(now_s()),
        ];
        TargetChange::Upsert {
            table: self.ledger,
            columns: self.ledger_columns(values.into_iter().enumerate()),
        }
    }

    fn release_row(&self, slot: &Slot, prev: &Entry, delete: bool) -> TargetChange {
        let key = vec![
            J::String(self.sink.clone()),
            J::String(slot.0.clone()),
            J::String(slot.1.clone()),
            J::String(slot.2.clone()),
            J::String(prev.object_key.clone()),
        ];
        let state = if delete { "released" } else { "kept" };
        TargetChange::Update {
            table: self.ledger,
            key,
            columns: self
                .ledger_columns([(12, J::String(state.into())), (13, utc(now_s()))].into_iter()),
        }
    }

    /// Ledger values by position in [`ledger::COLUMNS`] → by the ledger table's column index.
    fn ledger_columns(&self, values: impl Iterator<Item = (usize, J)>) -> Vec<(usize, J)> {
        let columns = &self.tables[self.ledger].columns;
        values
            .filter_map(|(i, v)| {
                columns
                    .iter()
                    .position(|c| c == ledger::COLUMNS[i])
                    .map(|c| (c, v))
            })
            .collect()
    }

    /// Deletes these objects where no live ledger row references them any more, and forgets
    /// their released rows. Failures are left for the next sweep.
    pub async fn delete_unreferenced(&mut self, objects: Vec<(String, String)>) {
        let mut by_store: HashMap<String, Vec<String>> = HashMap::new();
        for (s, k) in objects {
            by_store.entry(s).or_default().push(k);
        }
        for (store_name, mut keys) in by_store {
            keys.sort();
            keys.dedup();
            let Some(store) = self.stores.get(&store_name).cloned() else {
                continue;
            };
            let referenced = match self.client().await {
                Ok(c) => ledger::referenced(c, &store_name, &keys).await,
                Err(e) => {
                    tracing::warn!(error = %crate::telemetry::error_chain(&e), "blob ledger unreachable: released objects are deleted by a later sweep");
                    return;
                }
            };
            let referenced = match referenced {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %crate::telemetry::error_chain(&e), "reading the blob ledger: released objects are deleted by a later sweep");
                    self.client = None;
                    return;
                }
            };
            for key in keys.iter().filter(|k| !referenced.contains_key(*k)) {
                if let Err(e) = store.delete(key).await {
                    tracing::warn!(error = %crate::telemetry::error_chain(&e), "deleting a released object: a later sweep retries");
                    continue;
                }
                if let Ok(c) = self.client().await {
                    if let Err(e) = ledger::forget_released(c, &store_name, key).await {
                        tracing::warn!(error = %crate::telemetry::error_chain(&e), "forgetting a deleted object in the ledger");
                    }
                }
                tracing::debug!(store = %store_name, key = %key, "released object deleted");
            }
            // Objects still referenced keep their released rows out of the way.
            for key in keys.iter().filter(|k| referenced.contains_key(*k)) {
                if let Ok(c) = self.client().await {
                    let _ = ledger::forget_released(c, &store_name, key).await;
                }
            }
        }
    }

    /// Deletes objects this sink released but did not delete yet: deletions a crash
    /// interrupted, and the objects of a truncated table's rows.
    pub async fn sweep(&mut self) -> Result<(), StageError> {
        let sink = self.sink.clone();
        let released = ledger::released(self.client().await?, &sink).await?;
        if !released.is_empty() {
            tracing::info!(
                objects = released.len(),
                "deleting released objects (rows truncated, or deletions a restart interrupted)"
            );
            self.delete_unreferenced(released).await;
        }
        Ok(())
    }

    /// Renews presigned URLs that pass half their lifetime within `horizon`, in the ledger and
    /// in the target rows that still hold them. Returns how many rows were renewed.
    pub async fn renew_urls(&mut self) -> Result<usize, StageError> {
        let Some(ttl) = self
            .stores
            .values()
            .filter(|s| s.presigns())
            .map(|s| s.presign_ttl)
            .min()
        else {
            return Ok(0);
        };
        let sink = self.sink.clone();
        let due = ledger::expiring(
            self.client().await?,
            &sink,
            now_s() + (ttl.as_secs() / 2) as i64,
        )
        .await?;
        let mut renewed = 0;
        for e in due {
            let Some(store) = self.stores.get(&e.store).cloned() else {
                continue;
            };
            if !store.presigns() {
                continue;
            }
            let Some(sql) = self.renew_sql(&e.target_table, &e.url_column) else {
                continue;
            };
            let (url, expires) = store.url(&e.object_key).await?;
            let Some(expires) = expires else {
                continue;
            };
            let client = self.client().await?;
            renewed += ledger::renew_url(client, &sink, &e, &sql, &url, expires).await? as usize;
        }
        Ok(renewed)
    }

    /// `update <table> set <col> = $1 where <col> = $2 and <key> = <$3's values>`.
    fn renew_sql(&self, table: &str, column: &str) -> Option<String> {
        let t = self.tables.iter().find(|t| t.id.to_string() == table)?;
        let q = sluice_postgres::client::quote_ident;
        let qt = format!("{}.{}", q(&t.id.schema), q(&t.id.name));
        let keys: Vec<&String> = t.key.iter().map(|k| &t.columns[*k]).collect();
        let lhs: Vec<String> = keys.iter().map(|k| q(k)).collect();
        let rhs: Vec<String> = keys.iter().map(|k| format!("r.{}", q(k))).collect();
        let object: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{}, $3::text::jsonb->{i}", sql_string(k)))
            .collect();
        Some(format!(
            "update {qt} set {c} = $1 where {c} = $2 and ({}) = (select {} from jsonb_populate_record(null::{qt}, jsonb_build_object({})) r)",
            lhs.join(", "),
            rhs.join(", "),
            object.join(", "),
            c = q(column),
        ))
    }
}

fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn utc(unix_s: i64) -> J {
    J::String(sluice_core::value::utc_timestamp(unix_s, 0))
}

#[derive(Debug)]
enum ReadError {
    Missing(String),
    Refused(String),
}

/// Where a blob's bytes are.
enum Source {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// One object to read, hash and perhaps upload.
struct Job {
    event: usize,
    work: usize,
    slot: Slot,
    spec: Arc<BlobSpec>,
    source: Source,
    key: PartialKey,
    ext: String,
}

enum JobError {
    Stage(StageError),
    Read(usize, ReadError),
}

/// What the ledger and the stores hold already for a batch.
struct Known {
    /// The ledger's live entries of the batch's rows.
    live: HashMap<Slot, Entry>,
    /// (store, object key, SHA-256) of objects whose key is known before hashing.
    present: HashSet<(String, String, String)>,
    /// The last job to write each such key.
    last_for_key: HashMap<(String, String), usize>,
}

/// What reading and uploading a batch's objects did.
#[derive(Default)]
struct Loads {
    /// Each job's object (by job index), `None` where it could not be read.
    loaded: Vec<Option<Loaded>>,
    /// Objects uploaded, (store, key) each.
    uploaded: Vec<(String, String)>,
    /// Events whose file went away since it was found.
    vanished: HashMap<usize, String>,
    /// Events whose file became unreadable, with why.
    refused: HashMap<usize, String>,
}

/// The ledger entry of `slot` once `l` is its object.
fn live_entry(slot: &Slot, store: &str, l: &Loaded, url: &str, expires_at: Option<i64>) -> Entry {
    Entry {
        target_table: slot.0.clone(),
        target_key: slot.1.clone(),
        url_column: slot.2.clone(),
        object_key: l.key.clone(),
        store: store.to_owned(),
        sha256: l.sha_hex.clone(),
        size: l.size as i64,
        content_type: l.content_type.clone(),
        source_path: l.source_path.clone(),
        url: url.to_owned(),
        expires_at,
        state: "live".into(),
    }
}

/// What a job reads besides itself.
struct JobContext<'a> {
    client: &'a tokio_postgres::Client,
    stores: &'a HashMap<String, Store>,
    known: &'a Known,
}

/// Reads and hashes job `i`'s bytes and uploads them unless the object is there already.
/// Returns what the ledger needs and whether it uploaded.
async fn run_job(
    i: usize,
    j: &Job,
    cx: &JobContext<'_>,
) -> Result<(usize, Loaded, bool), JobError> {
    let (client, stores, live_ref, present, last_for_key) = (
        cx.client,
        cx.stores,
        &cx.known.live,
        &cx.known.present,
        &cx.known.last_for_key,
    );

    let source = match &j.source {
        Source::File(p) => Source::File(p.clone()),
        Source::Bytes(b) => Source::Bytes(b.clone()),
    };
    let store = stores.get(&j.spec.store).ok_or_else(|| {
        JobError::Stage(StageError::Ledger(format!(
            "no store named {}",
            j.spec.store
        )))
    })?;
    let stream_above = store.stream_above();
    let (body, sha_hex) = tokio::task::spawn_blocking(move || read_and_hash(source, stream_above))
        .await
        .unwrap_or_else(|e| Err(ReadError::Refused(format!("reading the file: {e}"))))
        .map_err(|e| JobError::Read(j.event, e))?;
    let key = j.key.finish(&sha_hex, &j.ext);
    let store_name = &j.spec.store;
    let same = live_ref
        .get(&j.slot)
        .is_some_and(|e| e.object_key == key && e.sha256 == sha_hex);
    let upload = if same {
        false
    } else if !j.key.has_sha256() {
        last_for_key.get(&(store_name.clone(), key.clone())) == Some(&i)
            && !present.contains(&(store_name.clone(), key.clone(), sha_hex.clone()))
    } else {
        let found = ledger::referenced(client, store_name, std::slice::from_ref(&key))
            .await
            .map_err(|e| JobError::Stage(e.into()))?;
        found.get(&key) != Some(&sha_hex)
    };
    let content_type = j
        .spec
        .content_type
        .clone()
        .unwrap_or_else(|| content_type_of(&j.ext).to_owned());
    let size = body.len();
    if upload {
        store
            .put(&key, body, &sha_hex, &content_type)
            .await
            .map_err(|e| JobError::Stage(e.into()))?;
    }
    Ok((
        i,
        Loaded {
            event: j.event,
            work: j.work,
            key,
            size,
            sha_hex,
            content_type,
            source_path: match &j.source {
                Source::File(p) => Some(p.display().to_string()),
                Source::Bytes(_) => None,
            },
        },
        upload,
    ))
}

fn missing_why(path: &str, spec: &BlobSpec) -> String {
    let column = match &spec.input {
        Input::Path(c) | Input::Bytes(c) => c,
    };
    format!("file {path} (column {column:?}) does not exist")
}

fn expired_why(why: &str, spec: &BlobSpec) -> String {
    format!(
        "{why} after waiting {} ms (missing_file_wait_ms)",
        spec.missing_wait.as_millis()
    )
}

/// A file's body and hex SHA-256 (see [`read_and_hash`]), for re-uploading it; `None` when
/// it cannot be read.
pub(super) fn read_file(path: &Path, stream_above: u64) -> Option<(Body, String)> {
    read_and_hash(Source::File(path.to_path_buf()), stream_above).ok()
}

/// The bytes and their hex SHA-256. A file larger than `stream_above` (the store uploads it
/// in parts) is only hashed here, a buffer at a time, and read again part by part as it goes
/// up.
fn read_and_hash(source: Source, stream_above: u64) -> Result<(Body, String), ReadError> {
    let path = match source {
        Source::Bytes(b) => {
            let sha_hex = hex(&Sha256::digest(&b));
            return Ok((Body::Memory(b), sha_hex));
        }
        Source::File(path) => path,
    };
    let failed = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ReadError::Missing(path.display().to_string())
        } else {
            ReadError::Refused(format!("file {}: {e}", path.display()))
        }
    };
    let mut file = std::fs::File::open(&path).map_err(failed)?;
    let size = file.metadata().map_err(failed)?.len();
    if size <= stream_above {
        let mut bytes = Vec::with_capacity(size as usize);
        std::io::Read::read_to_end(&mut file, &mut bytes).map_err(failed)?;
        let sha_hex = hex(&Sha256::digest(&bytes));
        return Ok((Body::Memory(bytes), sha_hex));
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0u64;
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).map_err(failed)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        read += n as u64;
    }
    Ok((Body::File { path, size: read }, hex(&hasher.finalize())))
}

/// Finds `path` (as the row names it) under one of `base_dirs`. A relative path is tried under
/// each directory in turn; `..` is refused, and so is a path (or a symbolic link) that leads
/// outside them.
/// `real_bases` are `base_dirs` resolved (see [`canonical`]).
fn locate(path: &str, base_dirs: &[PathBuf], real_bases: &[PathBuf]) -> Result<PathBuf, ReadError> {
    let p = Path::new(path);
    if path.is_empty() {
        return Err(ReadError::Refused("the file path is empty".into()));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(ReadError::Refused(format!(
            "file path {path:?} contains '..': refused"
        )));
    }
    let candidates: Vec<PathBuf> = if p.is_absolute() {
        if !base_dirs.iter().any(|b| p.starts_with(b)) {
            return Err(ReadError::Refused(format!(
                "file path {path:?} is outside the configured base_dirs: refused"
            )));
        }
        vec![p.to_path_buf()]
    } else {
        base_dirs.iter().map(|b| b.join(p)).collect()
    };
    for c in &candidates {
        let real = match std::fs::canonicalize(c) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ReadError::Refused(format!("file {}: {e}", c.display()))),
        };
        let inside = real_bases.iter().any(|b| real.starts_with(b));
        if !inside {
            return Err(ReadError::Refused(format!(
                "file path {path:?} leads outside the configured base_dirs (through a link): refused"
            )));
        }
        return Ok(real);
    }
    Err(ReadError::Missing(
        candidates
            .first()
            .map(|c| c.display().to_string())
            .unwrap_or_else(|| path.to_owned()),
    ))
}

/// The directories that exist, with links resolved (a file must resolve to inside one).
fn canonical(base_dirs: &[PathBuf]) -> Vec<PathBuf> {
    base_dirs
        .iter()
        .filter_map(|b| std::fs::canonicalize(b).ok())
        .collect()
}

/// Reads `path` from under `base_dirs` (see [`locate`]).
#[cfg(test)]
fn read_under(path: &str, base_dirs: &[PathBuf]) -> Result<(PathBuf, Vec<u8>), ReadError> {
    let real = locate(path, base_dirs, &canonical(base_dirs))?;
    match read_and_hash(Source::File(real.clone()), u64::MAX)? {
        (Body::Memory(bytes), _) => Ok((real, bytes)),
        (Body::File { .. }, _) => Err(ReadError::Refused("streamed".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_only_from_under_the_base_dirs() {
        let dir = std::env::temp_dir().join(format!("sluice-blobs-{}", std::process::id()));
        let base = dir.join("base");
        std::fs::create_dir_all(base.join("s")).expect("dirs");
        std::fs::write(base.join("s/a.pdf"), b"pdf").expect("file");
        std::fs::write(dir.join("secret"), b"no").expect("file");
        let bases = vec![base.clone()];
        let (path, bytes) = read_under("s/a.pdf", &bases).expect("relative");
        assert_eq!(bytes, b"pdf");
        assert!(path.ends_with("s/a.pdf"));
        let abs = base.join("s/a.pdf").display().to_string();
        assert!(read_under(&abs, &bases).is_ok());
        let refused = |p: &str| match read_under(p, &bases) {
            Err(ReadError::Refused(why)) => why,
            _ => panic!("{p} was not refused"),
        };
        assert!(refused("../secret").contains("'..'"));
        assert!(refused(&dir.join("secret").display().to_string()).contains("outside"));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.join("secret"), base.join("link")).expect("link");
            assert!(refused("link").contains("through a link"));
        }
        assert!(matches!(
            read_under("s/later.pdf", &bases),
            Err(ReadError::Missing(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
