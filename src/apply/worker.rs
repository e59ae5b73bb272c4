//! One apply worker: the partitions routed to it, one target connection, one batch at a time.
//!
//! Over 700 lines: one worker's loop, whose holds, truncate barriers and ordered release share its per-partition state.
//!
//! A partition always goes to the same worker, so its events are applied in Kafka order; the
//! workers run concurrently. For each partition the worker keeps what the target stored (the
//! next offset and the last source position applied) and skips records below that offset
//! (already applied) and events at or below that position (re-published by capture after a
//! crash). Every batch stores the new offsets in the same transaction as the rows, conditional
//! on the stored offsets it expected: if another consumer moved them meanwhile, nothing is
//! committed and the worker reloads them ([`ApplyOutcome::Fenced`]).
//!
//! A truncate parks its partition until every partition of the topic has reached it (see
//! [`TargetWriter::truncate_barrier`]); the other partitions keep flowing meanwhile.
//!
//! # Tables linked by target foreign keys
//!
//! Partitions apply independently, so a child row can arrive before its parent, and a parent's
//! delete before its children's. Holding a refused record and retrying settles the first case
//! while the stream flows, but not a backlog: one partition can wait on a delete whose
//! children's deletes sit behind a child insert that waits on a parent behind that delete. So
//! the topics feeding target tables that foreign keys link ([`OrderedTopics`]) all go to one
//! worker, which applies them up to consistent source states. A change is released when a
//! durable capture checkpoint covers it (capture will not publish anything before it again
//! under a new position) and every partition of those topics has been read past its source
//! transaction ([`read_bound`]; a partition read up to the end offset noted after the
//! checkpoint limits nothing). What is released is whole source transactions, every table
//! together, applied in one target transaction that the sink orders parents first for writes
//! and children first for deletes. So a backlog flows as it is read, and a partition read far
//! ahead of the others is paused until they catch up, which bounds memory. This costs latency
//! (up to a checkpoint interval), and needs every partition of those topics in one process.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::{
    ApplyBatch, ApplyOutcome, Backoff, BarrierOutcome, DeadLetter, ErrorClass, MappedEvent,
    PartitionProgress, Position, RecordRef,
};
use sluice_kafka::{CheckpointWatch, Control, DurableMarks, Record, StoredOffset, TopicPartition};
use tokio::sync::{mpsc, watch};

use super::target::SinkError;
use crate::blobs::stage::{BlobWork, Prepared, Stage};
use crate::mapping::{map_record, Mapped, Router};
use crate::telemetry::error_chain;
use sluice_core::target::{TargetWriter, TruncateAt};

/// What the consumer sends a worker.
#[derive(Debug)]
pub enum WorkerMsg {
    /// A partition is ours, from its stored offset; the number identifies the assignment.
    Assigned(TopicPartition, Option<StoredOffset>, u64),
    Revoked(TopicPartition),
    Record(Record),
}

#[derive(Debug, Default)]
struct PartitionState {
    /// The next offset the target stored (`None`: nothing stored yet).
    expected: Option<i64>,
    /// The source position of the last event applied.
    position: Option<Position>,
    /// Records waiting behind a truncate (the truncate first), while the partition is parked.
    parked: VecDeque<Record>,
    /// The parked truncate's position.
    parked_at: Option<Position>,
    /// The consumer's assignment number (for pause and resume requests).
    generation: u64,
    /// Held at a record a foreign key refused (its parent row not in the target yet) or whose
    /// blob file is not there yet.
    hold: Option<Hold>,
    /// Records of an ordered topic not yet covered by a durable capture checkpoint, with the
    /// source name and position each carries (see [`OrderedTopics`]).
    waiting: VecDeque<(Record, Option<(String, Position)>)>,
    /// One past the highest offset received from the consumer.
    received_next: Option<i64>,
    /// The highest source position of the ordered records received: every record of an
    /// earlier source transaction in this partition has been received (see
    /// [`Worker::release_durable`]).
    read_to: Option<Position>,
    /// Paused because it read far ahead of what the other ordered partitions let go.
    paused_ahead: bool,
    /// Read again from its stored offset: records are ignored until the consumer hands the
    /// partition over again (see [`Worker::reload`]).
    restarting: bool,
    /// When the record this partition is held at was first held (kept while the hold is
    /// released for a retry and taken again), and the current retry delay. Once that is
    /// `fk_wait` ago (for a foreign key) or the blob column's `missing_wait` ago (for a file),
    /// the next refusal is a dead letter.
    held_since: Option<(Instant, Duration)>,
}

/// A partition held at a record that cannot be applied yet (a foreign key refused it, or its
/// blob's file is not there yet), with the records after it.
#[derive(Debug)]
struct Hold {
    records: VecDeque<Record>,
    next_try: Instant,
}

const HOLD_FIRST_RETRY: Duration = Duration::from_millis(100);
const HOLD_MAX_RETRY: Duration = Duration::from_secs(2);

pub struct WorkerSettings {
    pub max_batch_events: usize,
    pub max_batch_delay: Duration,
    pub apply_truncates: bool,
    /// How long a record refused for a foreign key is retried before it becomes a dead
    /// letter (zero: at once).
    pub fk_wait: Duration,
}

/// Topics whose target tables are linked by foreign keys: applied by one worker, in source
/// commit order, up to durable capture checkpoints (see the module docs).
pub struct OrderedTopics {
    pub topics: std::collections::HashSet<Arc<str>>,
    /// Every partition of those topics.
    pub partitions: Vec<TopicPartition>,
    pub kafka: sluice_kafka::KafkaConfig,
}

/// How often a worker with ordered topics reads capture's durable marks while records wait.
const ORDER_POLL: Duration = Duration::from_millis(200);
/// Records an ordered partition may hold read past what the others let go before it is
/// paused until they catch up: with [`read_bound`], this bounds memory in a backlog.
const ORDER_AHEAD_MAX: usize = 10_000;
/// How many batches' worth of ordered records one release lets go at most.
const ORDER_SLICE_BATCHES: usize = 4;
/// Ordered records waiting this long without a release are logged at WARN, with the reason.
const ORDER_WAIT_SAY: Duration = Duration::from_secs(60);
/// How often a failing read of capture's durable marks is logged.
const FAILING_SAY: Duration = Duration::from_secs(30);

/// Where the worker of the ordered topics stands.
#[derive(Debug, Default)]
pub struct OrderedProgress {
    /// The checkpoints (source, position) the last release of ordered records went up to.
    released_at: Vec<(String, String)>,
    /// Whether that release left nothing waiting: a later checkpoint would add nothing read
    /// so far, so a refusal is not waited out but held as any refused row is.
    released_all: bool,
    /// A batch of ordered records a target foreign key refused: since when, and at which
    /// checkpoints. The records wait for a later checkpoint (the source state at this one did
    /// not satisfy the target's keys, e.g. a parent deleted in one transaction and its children
    /// in the next), or for `foreign_key_wait_ms`, after which they are held and retried as
    /// any refused row is. A refusal with nothing left waiting is held at once.
    stalled: Option<Stall>,
    /// When ordered records last moved (released, or none waiting), and when a wait past
    /// [`ORDER_WAIT_SAY`] was last logged.
    moved_at: Option<Instant>,
    said_wait: Option<Instant>,
    /// The sources named by the ordered records read so far, whose checkpoints are watched.
    sources: std::collections::BTreeSet<String>,
}

/// A refusal of ordered records by a target foreign key (see [`OrderedProgress::stalled`]).
#[derive(Debug)]
struct Stall {
    since: Instant,
    /// The source state the refused records ended at.
    at: Vec<(String, String)>,
    /// When the last attempt was refused.
    tried: Instant,
}

pub struct Worker<W> {
    pub id: usize,
    /// The ordered topics, for the one worker that applies them.
    pub ordered: Option<Arc<OrderedTopics>>,
    pub ordered_progress: OrderedProgress,
    pub sink: W,
    pub router: Arc<Router>,
    pub settings: WorkerSettings,
    pub rx: mpsc::Receiver<WorkerMsg>,
    pub control: std::sync::mpsc::Sender<Control>,
    pub stats: Arc<crate::status::SinkStatus>,
    pub stop: watch::Receiver<bool>,
    /// The blob step, for sinks with blob columns.
    pub blobs: Option<Stage>,
}

/// How often a worker looks for stored offsets moved back by `sluice replay`.
const OFFSET_CHECK: Duration = Duration::from_secs(3);

/// How often worker 0 looks for presigned URLs to renew and released objects to delete.
const BLOB_UPKEEP: Duration = Duration::from_secs(5);

/// A batch ready to write, and what it changes in the partitions' state once committed.
struct Plan {
    batch: ApplyBatch,
    positions: HashMap<TopicPartition, Option<Position>>,
    parks: HashMap<TopicPartition, (Position, Vec<Record>)>,
    events: usize,
    /// Blob work, by index of the event in `batch.events`.
    blobs: Vec<(usize, Vec<BlobWork>)>,
    /// Per topic, the latest source commit time (ms) of its events, for lag.
    commits: HashMap<Arc<str>, i64>,
}

const BARRIER_POLL: Duration = Duration::from_millis(200);

impl<W: TargetWriter> Worker<W> {
    /// Runs until stopped or until the consumer goes away. Returns an error only for a
    /// problem that retrying cannot fix and that stops this sink.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut states: HashMap<TopicPartition, PartitionState> = HashMap::new();
        let mut ready: Vec<Record> = Vec::new();
        let mut last_barrier_check = Instant::now();
        // Worker 0 keeps the sink's blobs: renews presigned URLs, finishes deletions.
        let mut next_upkeep = (self.id == 0 && self.blobs.is_some()).then(Instant::now);
        let mut next_offset_check = Instant::now() + OFFSET_CHECK;
        // Capture's durable marks, read in the background for the ordered topics.
        let (sources_tx, mut marks_rx) = match &self.ordered {
            Some(o) => {
                let (sources_tx, marks_rx) = watch_durable_marks(o.clone(), self.stop.clone())?;
                (Some(sources_tx), Some(marks_rx))
            }
            None => (None, None),
        };
        let mut warned_split: Option<Instant> = None;
        loop {
            if *self.stop.borrow() {
                return Ok(());
            }
            if let (Some(marks), Some(sources)) = (marks_rx.as_mut(), &sources_tx) {
                if states.values().any(|s| !s.waiting.is_empty()) {
                    let seen = &self.ordered_progress.sources;
                    sources.send_if_modified(|known| {
                        let before = known.len();
                        known.extend(
                            seen.iter()
                                .filter(|s| !known.contains(s))
                                .cloned()
                                .collect::<Vec<_>>(),
                        );
                        known.len() != before
                    });
                    let current = marks.borrow_and_update().clone();
                    self.release_durable(&current, &mut states, &mut ready, &mut warned_split);
                } else {
                    self.ordered_progress.moved_at = None;
                }
            }
            if next_offset_check <= Instant::now() {
                self.check_moved_offsets(&states).await;
                next_offset_check = Instant::now() + OFFSET_CHECK;
            }
            if let Some(at) = next_upkeep.filter(|at| *at <= Instant::now()) {
                self.blob_upkeep().await;
                next_upkeep = Some(at.max(Instant::now()) + BLOB_UPKEEP);
            }
            let parked = states.values().any(|s| !s.parked.is_empty());
            let next_fk = self.release_due_holds(&mut states, &mut ready);
            if ready.is_empty() {
                let mut wait = if parked {
                    BARRIER_POLL
                } else {
                    Duration::from_secs(3600)
                };
                if let Some(at) = next_fk {
                    wait = wait.min(at.saturating_duration_since(Instant::now()));
                }
                if let Some(at) = next_upkeep {
                    wait = wait.min(at.saturating_duration_since(Instant::now()));
                }
                if !states.is_empty() {
                    wait = wait.min(next_offset_check.saturating_duration_since(Instant::now()));
                }
                let waiting = states.values().any(|s| !s.waiting.is_empty());
                if waiting {
                    wait = wait.min(ORDER_POLL);
                }
                let marks_changed = async {
                    match marks_rx.as_mut() {
                        Some(m) if waiting => {
                            let _ = m.changed().await;
                        }
                        _ => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    msg = self.rx.recv() => match msg {
                        Some(m) => {
                            self.handle(m, &mut states, &mut ready);
                            // Take what else is queued now: ordered records wait outside
                            // `ready`, and the loop must not take them one at a time.
                            while let Ok(m) = self.rx.try_recv() {
                                self.handle(m, &mut states, &mut ready);
                            }
                        }
                        None => return Ok(()),
                    },
                    _ = marks_changed => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.stop.changed() => return Ok(()),
                }
            }
            // Gather more, up to the batch size or the batch delay.
            let deadline = tokio::time::Instant::now() + self.settings.max_batch_delay;
            let mut closed = false;
            while !ready.is_empty() && ready.len() < self.settings.max_batch_events {
                match self.rx.try_recv() {
                    Ok(m) => {
                        self.handle(m, &mut states, &mut ready);
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(m)) => self.handle(m, &mut states, &mut ready),
                    Ok(None) => {
                        closed = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if !ready.is_empty() && !self.apply_ready(&mut states, &mut ready).await? {
                return Ok(());
            }
            if closed {
                return Ok(());
            }
            if states.values().any(|s| !s.parked.is_empty())
                && last_barrier_check.elapsed() >= BARRIER_POLL
            {
                last_barrier_check = Instant::now();
                if !self.check_barriers(&mut states, &mut ready).await {
                    return Ok(());
                }
            }
        }
    }

    fn handle(
        &mut self,
        msg: WorkerMsg,
        states: &mut HashMap<TopicPartition, PartitionState>,
        ready: &mut Vec<Record>,
    ) {
        match msg {
            WorkerMsg::Assigned(tp, stored, generation) => {
                // Records of an earlier assignment are read again from the stored offset.
                ready.retain(|r| !(r.topic == tp.0 && r.partition == tp.1));
                self.stats
                    .assigned(&tp, stored.as_ref().map(|s| s.next_offset));
                let state = PartitionState {
                    expected: stored.as_ref().map(|s| s.next_offset),
                    position: stored
                        .as_ref()
                        .and_then(|s| s.position.as_deref())
                        .and_then(parse_position),
                    generation,
                    ..PartitionState::default()
                };
                states.insert(tp, state);
            }
            WorkerMsg::Revoked(tp) => {
                ready.retain(|r| !(r.topic == tp.0 && r.partition == tp.1));
                self.stats.revoked(&tp);
                states.remove(&tp);
            }
            WorkerMsg::Record(record) => {
                let tp = (record.topic.clone(), record.partition);
                let Some(state) = states.get_mut(&tp) else {
                    // Not (or no longer) ours.
                    return;
                };
                if state.restarting {
                    // From before the seek back: it comes again after the hand-over.
                    return;
                }
                let next = record.offset + 1;
                state.received_next = Some(state.received_next.map_or(next, |n| n.max(next)));
                if let Some(hold) = state.hold.as_mut() {
                    hold.records.push_back(record);
                } else if !state.parked.is_empty() {
                    state.parked.push_back(record);
                } else if state.expected.is_some_and(|e| record.offset < e) {
                    // Applied already.
                } else if self
                    .ordered
                    .as_ref()
                    .is_some_and(|o| o.topics.contains(&record.topic))
                {
                    let at = source_position(&record);
                    if let Some((source, position)) = &at {
                        if !self.ordered_progress.sources.contains(source) {
                            self.ordered_progress.sources.insert(source.clone());
                        }
                        state.read_to = state.read_to.max(Some(*position));
                    }
                    state.waiting.push_back((record, at));
                } else {
                    ready.push(record);
                }
            }
        }
    }

    /// Builds the batch from `ready` without touching the partitions' state. A partition in
    /// `stop_at` contributes only its records before that offset.
    fn plan(
        &self,
        states: &HashMap<TopicPartition, PartitionState>,
        ready: &[Record],
        stop_at: &HashMap<TopicPartition, i64>,
    ) -> Plan {
        let mut plan = Plan {
            batch: ApplyBatch {
                hold_foreign_keys: !self.settings.fk_wait.is_zero(),
                fk_expired: states
                    .iter()
                    .filter(|(_, s)| {
                        s.held_since
                            .is_some_and(|(since, _)| since.elapsed() >= self.settings.fk_wait)
                    })
                    .map(|(tp, _)| tp.clone())
                    .collect(),
                ..ApplyBatch::default()
            },
            positions: HashMap::new(),
            parks: HashMap::new(),
            commits: HashMap::new(),
            events: 0,
            blobs: Vec::new(),
        };
        let mut progress: HashMap<TopicPartition, usize> = HashMap::new();
        for r in ready {
            let tp = (r.topic.clone(), r.partition);
            let Some(state) = states.get(&tp) else {
                continue;
            };
            if stop_at.get(&tp).is_some_and(|stop| r.offset >= *stop) {
                continue;
            }
            if let Some((_, held)) = plan.parks.get_mut(&tp) {
                held.push(r.clone());
                continue;
            }
            if state.expected.is_some_and(|e| r.offset < e) {
                continue;
            }
            let last = plan.positions.entry(tp.clone()).or_insert(state.position);
            let slot = *progress.entry(tp.clone()).or_insert_with(|| {
                plan.batch.progress.push(PartitionProgress {
                    topic: tp.0.clone(),
                    partition: tp.1,
                    expected: state.expected,
                    next_offset: r.offset,
                    position: None,
                });
                plan.batch.progress.len() - 1
            });
            plan.batch.progress[slot].next_offset = r.offset + 1;
            let record_ref = RecordRef {
                topic: r.topic.clone(),
                partition: r.partition,
                offset: r.offset,
            };
            let routes = self.router.get(&r.topic);
            let mapped = match routes {
                Some(route) => map_record(
                    route,
                    r.key.as_deref(),
                    r.value.as_deref().or(r.tombstone_of.as_deref()),
                ),
                None => Err(format!("no mapping for topic {}", r.topic)),
            };
            match mapped {
                Err(error) => plan.batch.dead_letters.push(DeadLetter {
                    record: record_ref,
                    key: r.key.clone(),
                    value: r.value.clone(),
                    error,
                    sqlstate: None,
                }),
                Ok(Mapped::Tombstone) => {}
                Ok(Mapped::Truncate { position }) => {
                    if last.is_some_and(|l| position <= l) {
                        continue;
                    }
                    if !self.settings.apply_truncates {
                        *last = Some(position);
                        continue;
                    }
                    // Stop this partition here until every partition reached the truncate.
                    plan.batch.progress[slot].next_offset = r.offset;
                    plan.parks.insert(tp, (position, vec![r.clone()]));
                }
                Ok(Mapped::Changes {
                    changes,
                    position,
                    blobs,
                    commit_ms,
                }) => {
                    if let (Some(p), Some(l)) = (position, *last) {
                        if p <= l {
                            // Re-published by capture after a crash: applied already.
                            continue;
                        }
                    }
                    if position.is_some() {
                        *last = position;
                    }
                    plan.events += 1;
                    if let Some(ms) = commit_ms {
                        let latest = plan.commits.entry(r.topic.clone()).or_insert(ms);
                        *latest = (*latest).max(ms);
                    }
                    if !blobs.is_empty() {
                        plan.blobs.push((plan.batch.events.len(), blobs));
                    }
                    plan.batch.events.push(MappedEvent {
                        commit_ms,
                        record: record_ref,
                        changes,
                        key: r.key.clone(),
                        value: r.value.clone(),
                    });
                }
            }
        }
        for p in &mut plan.batch.progress {
            let tp = (p.topic.clone(), p.partition);
            p.position = plan
                .positions
                .get(&tp)
                .copied()
                .flatten()
                .map(|pos| pos.to_json());
        }
        // A partition whose only record was a parked truncate has no progress to store.
        plan.batch
            .progress
            .retain(|p| p.expected != Some(p.next_offset));
        plan
    }

    /// Applies `ready` (retrying until it commits). `false` when asked to stop meanwhile.
    async fn apply_ready(
        &mut self,
        states: &mut HashMap<TopicPartition, PartitionState>,
        ready: &mut Vec<Record>,
    ) -> anyhow::Result<bool> {
        let mut backoff = Backoff::default();
        let mut stop_at: HashMap<TopicPartition, i64> = HashMap::new();
        loop {
            let planning = Instant::now();
            let mut plan = self.plan(states, ready, &stop_at);
            let plan_us = planning.elapsed().as_micros() as u64;
            let writing = Instant::now();
            let mut ready_blobs = crate::blobs::stage::Ready::default();
            let mut hold = None;
            if let (Some(stage), false) = (self.blobs.as_mut(), plan.blobs.is_empty()) {
                let waited = |r: &RecordRef| {
                    states
                        .get(&(r.topic.clone(), r.partition))
                        .and_then(|s| s.held_since)
                        .map(|(since, _)| since.elapsed())
                        .unwrap_or_default()
                };
                match stage.prepare(&mut plan.batch, &plan.blobs, &waited).await {
                    Ok(Prepared::Ready(r)) => ready_blobs = r,
                    Ok(Prepared::Hold(record, why)) => hold = Some((record, why)),
                    Err(e) => {
                        if !self
                            .pause_after_error(&SinkError::Blob(e), &mut backoff)
                            .await
                        {
                            return Ok(false);
                        }
                        continue;
                    }
                }
            }
            let blob_held = hold.is_some();
            let outcome = if let Some((record, why)) = hold {
                if states
                    .get(&(record.topic.clone(), record.partition))
                    .is_none_or(|s| s.hold.is_none())
                {
                    tracing::info!(
                        worker = self.id,
                        topic = %record.topic,
                        partition = record.partition,
                        offset = record.offset,
                        reason = %why,
                        "a row's file is not there yet: holding this partition and retrying; other partitions go on"
                    );
                }
                ApplyOutcome::Held(record)
            } else if plan.batch.is_empty() {
                ApplyOutcome::Committed { dead_lettered: 0 }
            } else {
                match self.sink.apply(&plan.batch).await {
                    Ok(o) => o,
                    Err(e) => {
                        if !self
                            .pause_after_error(&SinkError::of::<W>(e), &mut backoff)
                            .await
                        {
                            return Ok(false);
                        }
                        continue;
                    }
                }
            };
            match outcome {
                ApplyOutcome::Committed { dead_lettered } => {
                    if self.ordered_progress.stalled.is_some()
                        && plan
                            .batch
                            .progress
                            .iter()
                            .any(|p| self.is_ordered(&p.topic))
                    {
                        let since = self
                            .ordered_progress
                            .stalled
                            .take()
                            .map_or_else(Instant::now, |s| s.since);
                        tracing::info!(
                            worker = self.id,
                            waited_ms = since.elapsed().as_millis() as u64,
                            "a later source state satisfied the target's foreign keys: applied"
                        );
                    }
                    for p in &plan.batch.progress {
                        let tp = (p.topic.clone(), p.partition);
                        self.stats.applied_through(&tp, p.next_offset);
                        if let Some(state) = states.get_mut(&tp) {
                            state.expected = Some(p.next_offset);
                            if let Some(pos) = plan.positions.get(&tp).copied().flatten() {
                                state.position = Some(pos);
                            }
                        }
                    }
                    for (tp, (position, held)) in plan.parks {
                        if let Some(state) = states.get_mut(&tp) {
                            tracing::info!(worker = self.id, topic = %tp.0, partition = tp.1, position = %position, "truncate reached: waiting for the topic's other partitions");
                            state.parked = held.into();
                            state.parked_at = Some(position);
                            let _ = self.control.send(Control::Pause(tp, state.generation));
                        }
                    }
                    for p in &plan.batch.progress {
                        let tp = (p.topic.clone(), p.partition);
                        if !stop_at.contains_key(&tp) {
                            if let Some(state) = states.get_mut(&tp) {
                                // Past the held record: the next refusal starts a new wait.
                                if let Some((since, _)) = state.held_since.take() {
                                    self.stats.released(&tp);
                                    tracing::info!(
                                        worker = self.id,
                                        topic = %tp.0,
                                        partition = tp.1,
                                        held_ms = since.elapsed().as_millis() as u64,
                                        "hold ended: the partition goes on"
                                    );
                                }
                            }
                        }
                    }
                    for (tp, stop) in &stop_at {
                        let Some(state) = states.get_mut(tp) else {
                            continue;
                        };
                        let held: VecDeque<Record> = ready
                            .iter()
                            .filter(|r| r.topic == tp.0 && r.partition == tp.1 && r.offset >= *stop)
                            .cloned()
                            .collect();
                        let now = Instant::now();
                        let (since, delay) = match state.held_since {
                            Some((since, delay)) => (since, (delay * 2).min(HOLD_MAX_RETRY)),
                            None => (now, HOLD_FIRST_RETRY),
                        };
                        state.held_since = Some((since, delay));
                        self.stats.held(tp, since);
                        state.hold = Some(Hold {
                            records: held,
                            next_try: now + delay,
                        });
                        let _ = self
                            .control
                            .send(Control::Pause(tp.clone(), state.generation));
                    }
                    let dead = plan.batch.dead_letters.len() as u64 + dead_lettered as u64;
                    self.stats.batch_applied(
                        plan.events as u64 - dead_lettered as u64,
                        dead,
                        writing.elapsed().as_secs_f64(),
                    );
                    for (topic, ms) in &plan.commits {
                        self.stats.caught_up(topic, *ms);
                    }
                    tracing::debug!(
                        worker = self.id,
                        events = plan.events,
                        dead_letters = dead,
                        plan_us,
                        write_us = writing.elapsed().as_micros() as u64,
                        "batch applied"
                    );
                    ready.clear();
                    let mut unreferenced = ready_blobs.released;
                    if dead_lettered > 0 {
                        // Rows the target refused took their ledger rows with them: their
                        // objects, uploaded already, must not stay behind as orphans.
                        unreferenced.extend(ready_blobs.uploaded);
                    }
                    if let (Some(stage), false) = (self.blobs.as_mut(), unreferenced.is_empty()) {
                        stage.delete_unreferenced(unreferenced).await;
                    }
                    return Ok(true);
                }
                ApplyOutcome::Held(record)
                    if !blob_held
                        && self.is_ordered(&record.topic)
                        && !self.ordered_progress.released_all
                        && self
                            .ordered_progress
                            .stalled
                            .as_ref()
                            .is_none_or(|s| s.since.elapsed() < self.settings.fk_wait) =>
                {
                    // The source state these records end at does not satisfy the target's
                    // foreign keys: they wait, whole, for a later one (see OrderedProgress).
                    let (back, keep): (Vec<Record>, Vec<Record>) =
                        ready.drain(..).partition(|r| self.is_ordered(&r.topic));
                    *ready = keep;
                    for r in back.into_iter().rev() {
                        if let Some(s) = states.get_mut(&(r.topic.clone(), r.partition)) {
                            let at = source_position(&r);
                            s.waiting.push_front((r, at));
                        }
                    }
                    let at = self.ordered_progress.released_at.clone();
                    match &mut self.ordered_progress.stalled {
                        Some(stall) => {
                            stall.at = at;
                            stall.tried = Instant::now();
                        }
                        None => {
                            self.log_refusal(&record, "a target foreign key refused the source state the changes read so far end at: waiting for a later one");
                            self.ordered_progress.stalled = Some(Stall {
                                since: Instant::now(),
                                at,
                                tried: Instant::now(),
                            });
                        }
                    }
                }
                ApplyOutcome::Held(record) => {
                    let tp = (record.topic.clone(), record.partition);
                    // One line when a hold starts (not at every retry of it).
                    let first = states.get(&tp).is_none_or(|s| s.held_since.is_none());
                    if first && !blob_held {
                        self.log_refusal(&record, "a target foreign key refused a change (a row whose parent is not in the target yet, or a delete of a row other rows still reference): holding this partition and retrying; other partitions go on");
                    }
                    let stop = stop_at.entry(tp).or_insert(record.offset);
                    *stop = (*stop).min(record.offset);
                }
                ApplyOutcome::Fenced(tps) => {
                    tracing::info!(
                        worker = self.id,
                        partitions = tps.len(),
                        "stored offsets moved under us (another consumer applied them): reloading"
                    );
                    if !self.reload(states, ready, &tps).await {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Moves the waiting records of ordered topics into `ready`: those a durable capture
    /// checkpoint covers, of source transactions every partition of those topics has been read
    /// past (see [`read_bound`] and the module docs). Pauses partitions read far ahead.
    fn release_durable(
        &mut self,
        marks: &Option<Arc<DurableMarks>>,
        states: &mut HashMap<TopicPartition, PartitionState>,
        ready: &mut Vec<Record>,
        warned_split: &mut Option<Instant>,
    ) {
        let Some(ordered) = self.ordered.clone() else {
            return;
        };
        let moved_at = *self
            .ordered_progress
            .moved_at
            .get_or_insert_with(Instant::now);
        if moved_at.elapsed() >= ORDER_WAIT_SAY
            && self
                .ordered_progress
                .said_wait
                .is_none_or(|t| t.elapsed() >= ORDER_WAIT_SAY)
        {
            self.ordered_progress.said_wait = Some(Instant::now());
            let why = self.ordered_wait_reason(&ordered, marks, states);
            tracing::warn!(
                worker = self.id,
                waiting_s = moved_at.elapsed().as_secs(),
                "changes to tables linked by target foreign keys have waited this long: {why}"
            );
        }
        let held = held_partitions(&ordered.partitions, states);
        if held < ordered.partitions.len() {
            if warned_split.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                *warned_split = Some(Instant::now());
                tracing::warn!(
                    worker = self.id,
                    held,
                    partitions = ordered.partitions.len(),
                    "tables linked by target foreign keys are applied only by a process that holds every partition of their topics, and this one holds some: waiting (run one apply process for this sink, or let the others stop)"
                );
            }
            return;
        }
        let Some(marks) = marks else {
            return;
        };
        let mut at: Vec<(String, String)> = marks
            .checkpoints
            .iter()
            .map(|(s, c)| (s.clone(), c.position.clone()))
            .collect();
        at.sort();
        let bound = match read_bound(&ordered.partitions, marks, states, &self.ordered_progress) {
            ReadBound::All => None,
            ReadBound::Before(bound) => Some(bound),
            ReadBound::Nothing => {
                if let Some((tp, have, end)) = first_unread(&ordered.partitions, marks, states) {
                    tracing::debug!(worker = self.id, topic = %tp.0, partition = tp.1, have, end, "ordered topics: not read up to the durable end yet");
                }
                self.pause_ahead(states, None);
                return;
            }
        };
        let releasable = |position: &Position, source: &str, bound: Option<Position>| {
            marks
                .checkpoints
                .get(source)
                .is_some_and(|cp| cp.covers(position))
                && bound.is_none_or(|b| transaction_of(position) < b)
        };
        // A backlog goes in slices of whole source transactions, each one target transaction
        // of a few batches (not all at once, nor a batch at a time: one worker applies these
        // tables, and larger transactions cost it less per change). After a refusal, the next
        // attempt goes as far as can be read: a slice may end at a source state the target's
        // keys refuse where a later one would not.
        let slice = self.settings.max_batch_events * ORDER_SLICE_BATCHES;
        let waiting: usize = states.values().map(|s| s.waiting.len()).sum();
        let slicing = self.ordered_progress.stalled.is_none() && waiting > slice;
        let mut candidates: Vec<Position> = Vec::new();
        for state in states.values().filter(|_| slicing) {
            for (_, at) in &state.waiting {
                match at {
                    None => {}
                    Some((source, position)) if releasable(position, source, bound) => {
                        candidates.push(transaction_of(position))
                    }
                    Some(_) => break,
                }
            }
        }
        let bound = slice_bound(candidates, slice).or(bound);
        at.push((
            String::new(),
            bound.map_or_else(|| "all".to_owned(), |b| b.to_string()),
        ));
        if let Some(stall) = &self.ordered_progress.stalled {
            if stall.since.elapsed() < self.settings.fk_wait
                && (stall.at == at || stall.tried.elapsed() < ORDER_POLL)
            {
                self.pause_ahead(states, bound);
                return;
            }
        }
        let mut released = 0usize;
        let mut left = false;
        for state in states.values_mut() {
            while let Some((_, at)) = state.waiting.front() {
                let go = match at {
                    None => true,
                    Some((source, position)) => releasable(position, source, bound),
                };
                if !go {
                    left = true;
                    break;
                }
                if let Some((record, _)) = state.waiting.pop_front() {
                    ready.push(record);
                    released += 1;
                }
            }
        }
        self.pause_ahead(states, bound);
        if released == 0 && left {
            return;
        }
        tracing::debug!(worker = self.id, released, checkpoints = ?marks.checkpoints.iter().map(|(s, c)| format!("{s}@{}", c.position)).collect::<Vec<_>>(), read_bound = ?bound, "ordered topics: releasing whole source transactions");
        self.ordered_progress.released_at = at;
        self.ordered_progress.released_all = !left;
        self.ordered_progress.moved_at = Some(Instant::now());
        if self.ordered_progress.said_wait.take().is_some() {
            tracing::info!(
                worker = self.id,
                "changes to tables linked by target foreign keys flow again"
            );
        }
    }

    /// Why [`Self::release_durable`] releases nothing, in words for an operator.
    fn ordered_wait_reason(
        &self,
        ordered: &OrderedTopics,
        marks: &Option<Arc<DurableMarks>>,
        states: &HashMap<TopicPartition, PartitionState>,
    ) -> String {
        let held = held_partitions(&ordered.partitions, states);
        if held < ordered.partitions.len() {
            return format!(
                "this process holds {held} of their {} partitions",
                ordered.partitions.len()
            );
        }
        let Some(marks) = marks else {
            return "no capture checkpoint read yet (see the warnings about reading them)"
                .to_owned();
        };
        if let Some(stall) = &self.ordered_progress.stalled {
            return format!(
                "the target refused the source state the changes read so far end at {} s ago and a later one is awaited",
                stall.since.elapsed().as_secs()
            );
        }
        if let Some((tp, have, end)) = first_unread(&ordered.partitions, marks, states) {
            return format!("{}[{}] is read up to offset {have} of {end}", tp.0, tp.1);
        }

        "the newest capture checkpoint covers none of the waiting changes (is capture running?)"
            .to_owned()
    }

    /// One line for a record a target foreign key refused.
    fn log_refusal(&self, record: &RecordRef, what: &str) {
        tracing::info!(
            worker = self.id,
            topic = %record.topic,
            partition = record.partition,
            offset = record.offset,
            wait_ms = self.settings.fk_wait.as_millis() as u64,
            "{what}"
        );
    }

    /// Pauses an ordered partition that holds [`ORDER_AHEAD_MAX`] records read past `bound`
    /// (the others must catch up before they can go), and resumes it once they did. The
    /// partition that sets the bound is never paused, so the bound keeps moving.
    fn pause_ahead(
        &self,
        states: &mut HashMap<TopicPartition, PartitionState>,
        bound: Option<Position>,
    ) {
        for (tp, s) in states.iter_mut() {
            if !self.is_ordered(&tp.0) {
                continue;
            }
            let ahead =
                matches!((bound, s.read_to), (Some(b), Some(to)) if transaction_of(&to) > b);
            if !s.paused_ahead && ahead && s.waiting.len() >= ORDER_AHEAD_MAX {
                s.paused_ahead = true;
                tracing::debug!(worker = self.id, topic = %tp.0, partition = tp.1, waiting = s.waiting.len(), "ordered topics: pausing a partition read far ahead of the others");
                let _ = self.control.send(Control::Pause(tp.clone(), s.generation));
            } else if s.paused_ahead && (!ahead || s.waiting.len() < ORDER_AHEAD_MAX / 2) {
                s.paused_ahead = false;
                if s.hold.is_none() {
                    let _ = self.control.send(Control::Resume(tp.clone(), s.generation));
                }
            }
        }
    }

    fn is_ordered(&self, topic: &Arc<str>) -> bool {
        self.ordered
            .as_ref()
            .is_some_and(|o| o.topics.contains(topic))
    }

    /// Renews presigned URLs due for it and deletes released objects a crash left behind.
    /// Failures are logged and retried at the next round.
    async fn blob_upkeep(&mut self) {
        let Some(stage) = self.blobs.as_mut() else {
            return;
        };
        match stage.renew_urls().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(worker = self.id, rows = n, "presigned URLs renewed"),
            Err(e) => {
                tracing::warn!(worker = self.id, error = %error_chain(&e), "renewing presigned URLs failed; retrying later")
            }
        }
        if let Err(e) = stage.sweep().await {
            tracing::warn!(worker = self.id, error = %error_chain(&e), "deleting released objects failed; retrying later");
        }
    }

    /// Reloads the stored offsets of `tps` into `states`, retrying. `false` when stopping.
    ///
    /// A partition whose stored offset moved back (a replay, or a target that lost commits it
    /// had acknowledged, as an asynchronous commit can in a crash) is read again from there:
    /// what this worker holds of it beyond that offset is dropped at once, and records still
    /// arriving from before the consumer's seek are ignored until it hands the partition over
    /// again. Applying them first would store an offset past records never applied.
    async fn reload(
        &mut self,
        states: &mut HashMap<TopicPartition, PartitionState>,
        ready: &mut Vec<Record>,
        tps: &[TopicPartition],
    ) -> bool {
        let mut backoff = Backoff::default();
        loop {
            match self.sink.load_offsets(tps).await {
                Ok(stored) => {
                    for tp in tps {
                        let Some(state) = states.get_mut(tp) else {
                            continue;
                        };
                        let (next, pos) = match stored.get(tp) {
                            Some((next, pos)) => {
                                (Some(*next), pos.as_deref().and_then(parse_position))
                            }
                            None => (None, None),
                        };
                        let moved_back = match (state.expected, next) {
                            (Some(e), Some(n)) => n < e,
                            (Some(_), None) => true,
                            _ => false,
                        };
                        if moved_back {
                            ready.retain(|r| !(r.topic == tp.0 && r.partition == tp.1));
                            state.waiting.clear();
                            // Read again from the stored offset: what was received past it
                            // no longer says how far this partition is read.
                            state.received_next = None;
                            state.read_to = None;
                            state.hold = None;
                            state.parked.clear();
                            state.parked_at = None;
                            state.restarting = true;
                            self.restart(tp, state.generation);
                        }
                        state.expected = next;
                        if let Some(next) = next {
                            self.stats.applied_through(tp, next);
                        }
                        state.position = pos;
                    }
                    return true;
                }
                Err(e) => {
                    if !self
                        .pause_after_error(&SinkError::of::<W>(e), &mut backoff)
                        .await
                    {
                        return false;
                    }
                }
            }
        }
    }

    fn restart(&self, tp: &TopicPartition, generation: u64) {
        tracing::info!(worker = self.id, topic = %tp.0, partition = tp.1, "stored offset moved back (a replay): reading the partition again from there");
        let _ = self.control.send(Control::Restart(tp.clone(), generation));
    }

    /// Notices stored offsets moved back by `sluice replay` while this worker was idle or
    /// between batches, and has those partitions read again from there.
    async fn check_moved_offsets(&mut self, states: &HashMap<TopicPartition, PartitionState>) {
        let tps: Vec<TopicPartition> = states
            .iter()
            .filter(|(_, s)| s.expected.is_some())
            .map(|(tp, _)| tp.clone())
            .collect();
        if tps.is_empty() {
            return;
        }
        match self.sink.load_offsets(&tps).await {
            Ok(stored) => {
                for tp in &tps {
                    let (Some(state), Some((next, _))) = (states.get(tp), stored.get(tp)) else {
                        continue;
                    };
                    if state.expected.is_some_and(|e| *next < e) {
                        self.restart(tp, state.generation);
                    }
                }
            }
            Err(e) => {
                self.sink.reset();
                tracing::debug!(worker = self.id, error = %error_chain(&e), "checking stored offsets failed; trying again later");
            }
        }
    }

    /// Logs an error and waits before the next attempt. `false` when asked to stop meanwhile.
    async fn pause_after_error(&mut self, e: &SinkError, backoff: &mut Backoff) -> bool {
        self.sink.reset();
        let delay = backoff.next_delay();
        match e.class() {
            ErrorClass::Transient => {
                tracing::warn!(worker = self.id, error = %error_chain(e), retry_in_ms = delay.as_millis() as u64, "target write failed; retrying")
            }
            ErrorClass::Definite => {
                tracing::error!(worker = self.id, error = %error_chain(e), retry_in_ms = delay.as_millis() as u64, "the target refuses this sink's writes: fix the target or the mapping; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => !*self.stop.borrow(),
            _ = self.stop.changed() => false,
        }
    }

    /// Puts the records of partitions whose foreign-key retry is due back into `ready`
    /// (marking those that waited long enough, so that a refusal now becomes a dead letter).
    /// Returns when the next retry is due.
    fn release_due_holds(
        &self,
        states: &mut HashMap<TopicPartition, PartitionState>,
        ready: &mut Vec<Record>,
    ) -> Option<Instant> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for (tp, state) in states.iter_mut() {
            let Some(hold) = state.hold.as_ref() else {
                continue;
            };
            if hold.next_try > now {
                next = Some(next.map_or(hold.next_try, |n| n.min(hold.next_try)));
                continue;
            }
            let Some(hold) = state.hold.take() else {
                continue;
            };
            let waited = state
                .held_since
                .map(|(since, _)| since.elapsed())
                .unwrap_or_default();
            if waited >= self.settings.fk_wait {
                tracing::warn!(
                    worker = self.id,
                    topic = %tp.0,
                    partition = tp.1,
                    waited_ms = waited.as_millis() as u64,
                    "retrying a held row after foreign_key_wait_ms: if a foreign key still refuses it, it goes to the dead letters"
                );
            }
            ready.extend(hold.records);
            state.paused_ahead = false;
            let _ = self
                .control
                .send(Control::Resume(tp.clone(), state.generation));
        }
        next
    }

    /// Moves parked partitions past their truncate once the barrier allows.
    async fn check_barriers(
        &mut self,
        states: &mut HashMap<TopicPartition, PartitionState>,
        ready: &mut Vec<Record>,
    ) -> bool {
        let parked: Vec<TopicPartition> = states
            .iter()
            .filter(|(_, s)| !s.parked.is_empty())
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in parked {
            let Some(state) = states.get(&tp) else {
                continue;
            };
            let (Some(head), Some(position)) = (state.parked.front(), state.parked_at) else {
                continue;
            };
            let Some(route) = self.router.get(&tp.0) else {
                continue;
            };
            let tables: Vec<usize> = route.routes.iter().map(|r| r.table).collect();
            let blob_columns: Vec<_> = route.routes.iter().flat_map(|r| r.blob_columns()).collect();
            let progress = PartitionProgress {
                topic: tp.0.clone(),
                partition: tp.1,
                expected: state.expected,
                next_offset: head.offset + 1,
                position: Some(position.to_json()),
            };
            let outcome = self
                .sink
                .truncate_barrier(
                    &TruncateAt {
                        topic: &tp.0,
                        position: &position.to_string(),
                        partition_count: route.partitions,
                        tables: &tables,
                        blob_columns: &blob_columns,
                    },
                    &progress,
                )
                .await;
            match outcome {
                Ok(BarrierOutcome::Waiting) => {}
                Ok(BarrierOutcome::Passed) => {
                    tracing::info!(worker = self.id, topic = %tp.0, partition = tp.1, position = %position, "truncate applied; partition resumes");
                    if blob_columns.iter().any(|b| b.delete_objects) {
                        // The truncated rows' objects were released with the truncate.
                        if let Some(stage) = self.blobs.as_mut() {
                            if let Err(e) = stage.sweep().await {
                                tracing::warn!(worker = self.id, error = %error_chain(&e), "deleting the truncated rows' objects failed; a later sweep retries");
                            }
                        }
                    }
                    self.stats.applied_through(&tp, progress.next_offset);
                    if let Some(state) = states.get_mut(&tp) {
                        state.expected = Some(progress.next_offset);
                        state.position = Some(position);
                        state.parked.pop_front();
                        state.parked_at = None;
                        ready.extend(state.parked.drain(..));
                        let _ = self.control.send(Control::Resume(tp, state.generation));
                    }
                }
                Ok(BarrierOutcome::Fenced) => {
                    if !self.reload(states, ready, std::slice::from_ref(&tp)).await {
                        return false;
                    }
                    if let Some(state) = states.get_mut(&tp) {
                        let stored = state.expected.unwrap_or(0);
                        if stored > progress.next_offset - 1 {
                            // Someone else moved this partition past the truncate.
                            state.parked_at = None;
                            let held: Vec<Record> = state.parked.drain(..).collect();
                            ready.extend(held.into_iter().filter(|r| r.offset >= stored));
                            let _ = self.control.send(Control::Resume(tp, state.generation));
                        }
                    }
                }
                Err(e) => {
                    let mut backoff = Backoff::default();
                    if !self
                        .pause_after_error(&SinkError::of::<W>(e), &mut backoff)
                        .await
                    {
                        return false;
                    }
                }
            }
        }
        true
    }
}

/// How far the waiting records of ordered topics may be released (see [`read_bound`]).
#[derive(Debug, PartialEq)]
enum ReadBound {
    /// Every partition was read up to its durable end: all the checkpoints cover may go.
    All,
    /// Only source transactions before this one (a position with sequence number 0).
    Before(Position),
    /// Nothing yet.
    Nothing,
}

/// The source transactions every ordered partition has been read past. Within a partition,
/// capture publishes changes in source order, so a partition whose highest received (or
/// applied) position lies in transaction T holds every change it will get of any transaction
/// before T. A partition read up to the end noted after the checkpoints holds every change
/// they cover, and limits nothing. The bound is the earliest such T: releasing below it
/// releases whole transactions, and a consistent source state, without waiting for the rest
/// of a backlog. Positions of different sources do not compare: with more than one, every
/// partition must be read to its end.
fn read_bound(
    partitions: &[TopicPartition],
    marks: &DurableMarks,
    states: &HashMap<TopicPartition, PartitionState>,
    progress: &OrderedProgress,
) -> ReadBound {
    let mut bound: Option<Position> = None;
    for tp in partitions {
        let Some(s) = states.get(tp) else {
            return ReadBound::Nothing;
        };
        let (have, end) = read_and_end(tp, s, marks);
        if have >= end {
            continue;
        }
        if progress.sources.len() > 1 {
            return ReadBound::Nothing;
        }
        let Some(to) = s.read_to.max(s.position) else {
            return ReadBound::Nothing;
        };
        let t = transaction_of(&to);
        bound = Some(bound.map_or(t, |b| b.min(t)));
    }
    match bound {
        None => ReadBound::All,
        Some(b) => ReadBound::Before(b),
    }
}

/// A bound that lets about `max` of the releasable records `transactions` (the transaction of
/// each) go, whole transactions only, and at least one transaction; `None` when all fit.
fn slice_bound(mut transactions: Vec<Position>, max: usize) -> Option<Position> {
    if transactions.len() <= max.max(1) {
        return None;
    }
    transactions.sort_unstable();
    let first = transactions[0];
    let at = transactions[max.max(1)];
    if at > first {
        return Some(at);
    }
    transactions.into_iter().find(|t| *t > first)
}

/// The first position of `position`'s source transaction.
fn transaction_of(position: &Position) -> Position {
    match *position {
        Position::Postgres { commit_lsn, .. } => Position::Postgres { commit_lsn, seq: 0 },
        Position::MySql { file, pos, .. } => Position::MySql { file, pos, seq: 0 },
    }
}

/// How many of `partitions` this worker holds.
fn held_partitions(
    partitions: &[TopicPartition],
    states: &HashMap<TopicPartition, PartitionState>,
) -> usize {
    partitions
        .iter()
        .filter(|tp| states.contains_key(*tp))
        .count()
}

/// The first of `partitions` (all held) not yet read up to the end `marks` noted for it:
/// the partition, how far it was read and its end.
fn first_unread<'a>(
    partitions: &'a [TopicPartition],
    marks: &DurableMarks,
    states: &HashMap<TopicPartition, PartitionState>,
) -> Option<(&'a TopicPartition, i64, i64)> {
    partitions.iter().find_map(|tp| {
        let (have, end) = read_and_end(tp, states.get(tp)?, marks);
        (have < end).then_some((tp, have, end))
    })
}

/// How far a partition has been received (or applied), and the end `marks` noted for it.
fn read_and_end(tp: &TopicPartition, s: &PartitionState, marks: &DurableMarks) -> (i64, i64) {
    let have = s.received_next.unwrap_or(0).max(s.expected.unwrap_or(0));
    (have, marks.ends.get(tp).copied().unwrap_or(0))
}

fn parse_position(json: &str) -> Option<Position> {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .as_ref()
        .and_then(Position::from_envelope_source)
}

/// The source name and position a record's envelope (or a tombstone's delete envelope)
/// carries, if any.
fn source_position(record: &Record) -> Option<(String, Position)> {
    /// Only the envelope's `source`: the row images are skipped, not built.
    #[derive(serde::Deserialize)]
    struct Source {
        source: serde_json::Value,
    }
    let bytes = record.value.as_deref().or(record.tombstone_of.as_deref())?;
    let Source { source } = serde_json::from_slice(bytes).ok()?;
    let name = source.get("name")?.as_str()?.to_owned();
    Some((name, Position::from_envelope_source(&source)?))
}

/// Reads capture's durable marks for `ordered` every [`ORDER_POLL`] on a thread of its own,
/// for the sources named on the returned sender, until `stop`. The newest marks arrive on the
/// returned receiver.
#[allow(clippy::type_complexity)]
fn watch_durable_marks(
    ordered: Arc<OrderedTopics>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(
    watch::Sender<Vec<String>>,
    watch::Receiver<Option<Arc<DurableMarks>>>,
)> {
    let mut reader = CheckpointWatch::new(&ordered.kafka)?;
    let (sources_tx, sources_rx) = watch::channel(Vec::<String>::new());
    let (marks_tx, marks_rx) = watch::channel(None);
    std::thread::Builder::new()
        .name("durable marks".into())
        .spawn(move || {
            // Since when reads fail, and when that was last said.
            let mut failing: Option<(Instant, Option<Instant>)> = None;
            while !*stop.borrow() && !marks_tx.is_closed() {
                let sources = sources_rx.borrow().clone();
                if !sources.is_empty() {
                    let started = Instant::now();
                    match reader.read(&sources, &ordered.partitions) {
                        Ok(m) => {
                            if started.elapsed() > Duration::from_millis(500) {
                                tracing::debug!(took_ms = started.elapsed().as_millis() as u64, "reading capture's durable marks was slow");
                            }
                            if let Some((since, _)) = failing.take() {
                                tracing::info!(
                                    after_ms = since.elapsed().as_millis() as u64,
                                    "reading capture checkpoints for the ordered topics works again"
                                );
                            }
                            let _ = marks_tx.send(Some(Arc::new(m)));
                        }
                        Err(e) => {
                            let (since, said) = failing.get_or_insert((Instant::now(), None));
                            if said.is_none_or(|t| t.elapsed() >= FAILING_SAY) {
                                *said = Some(Instant::now());
                                tracing::warn!(
                                    error = %error_chain(&e),
                                    failing_for_s = since.elapsed().as_secs(),
                                    "reading capture checkpoints for the ordered topics failed; the tables foreign keys link wait; retrying with a new client"
                                );
                            }
                            // A client that lost its broker can keep stale metadata for
                            // long: a new one asks afresh.
                            match CheckpointWatch::new(&ordered.kafka) {
                                Ok(fresh) => reader = fresh,
                                Err(e) => tracing::debug!(error = %error_chain(&e), "new checkpoint reader"),
                            }
                        }
                    }
                }
                std::thread::sleep(ORDER_POLL);
            }
        })?;
    Ok((sources_tx, marks_rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(commit_lsn: u64, seq: u64) -> Position {
        Position::Postgres { commit_lsn, seq }
    }

    fn tp(p: i32) -> TopicPartition {
        (Arc::from("t"), p)
    }

    /// Two partitions with durable ends 100 and 50; the states say how far each was read.
    fn bound(read: [(Option<i64>, Option<Position>); 2], sources: &[&str]) -> ReadBound {
        let partitions = vec![tp(0), tp(1)];
        let mut marks = DurableMarks::default();
        marks.ends.insert(tp(0), 100);
        marks.ends.insert(tp(1), 50);
        let mut states = HashMap::new();
        for (i, (received_next, read_to)) in read.into_iter().enumerate() {
            let state = PartitionState {
                received_next,
                read_to,
                ..PartitionState::default()
            };
            states.insert(tp(i as i32), state);
        }
        let progress = OrderedProgress {
            sources: sources.iter().map(|s| s.to_string()).collect(),
            ..OrderedProgress::default()
        };
        read_bound(&partitions, &marks, &states, &progress)
    }

    #[test]
    fn the_bound_is_the_earliest_transaction_a_partition_is_read_into() {
        let b = bound(
            [(Some(10), Some(pg(700, 3))), (Some(5), Some(pg(500, 9)))],
            &["s"],
        );
        assert_eq!(b, ReadBound::Before(pg(500, 0)));
    }

    #[test]
    fn a_partition_read_to_its_durable_end_limits_nothing() {
        let b = bound(
            [(Some(10), Some(pg(700, 3))), (Some(50), Some(pg(500, 9)))],
            &["s"],
        );
        assert_eq!(b, ReadBound::Before(pg(700, 0)));
        let b = bound([(Some(100), Some(pg(700, 3))), (Some(50), None)], &["s"]);
        assert_eq!(b, ReadBound::All);
    }

    #[test]
    fn nothing_goes_while_a_partition_short_of_its_end_has_read_nothing() {
        let b = bound([(Some(10), Some(pg(700, 3))), (None, None)], &["s"]);
        assert_eq!(b, ReadBound::Nothing);
    }

    #[test]
    fn two_sources_wait_for_every_partition_to_reach_its_end() {
        let b = bound(
            [(Some(10), Some(pg(700, 3))), (Some(5), Some(pg(500, 9)))],
            &["a", "b"],
        );
        assert_eq!(b, ReadBound::Nothing);
        let b = bound(
            [(Some(100), Some(pg(700, 3))), (Some(50), Some(pg(500, 9)))],
            &["a", "b"],
        );
        assert_eq!(b, ReadBound::All);
    }

    #[test]
    fn a_slice_is_whole_transactions_about_a_batch_long() {
        let txns = |lsns: &[u64]| lsns.iter().map(|l| pg(*l, 0)).collect::<Vec<_>>();
        assert_eq!(slice_bound(txns(&[3, 1, 2]), 3), None);
        assert_eq!(slice_bound(txns(&[1, 1, 2, 2, 3]), 2), Some(pg(2, 0)));
        assert_eq!(slice_bound(txns(&[1, 1, 1, 2, 3]), 2), Some(pg(2, 0)));
        assert_eq!(slice_bound(txns(&[1, 1, 1, 1]), 2), None);
        assert_eq!(slice_bound(txns(&[4, 1, 3, 2]), 1), Some(pg(2, 0)));
    }

    #[test]
    fn a_transaction_is_its_position_without_the_sequence_number() {
        assert_eq!(transaction_of(&pg(42, 7)), pg(42, 0));
        let my = Position::MySql {
            file: 3,
            pos: 99,
            seq: 4,
        };
        assert_eq!(
            transaction_of(&my),
            Position::MySql {
                file: 3,
                pos: 99,
                seq: 0
            }
        );
        assert!(transaction_of(&pg(41, 9)) < transaction_of(&pg(42, 0)));
    }
}
