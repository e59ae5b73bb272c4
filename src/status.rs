//! What Sluice is doing, in one place. Each capture and each apply reports its events to its
//! entry here ([`source`], [`sink`]); each report moves the entry's counters, its Prometheus
//! metrics (`/metrics`) and its state in the `/status` document together, so the three never
//! disagree. Readiness (`/health/ready`) is read from the same entries.
//!
//! Metrics (labels `source` or `sink`):
//! - `sluice_source_up`, `sluice_sink_up`: 1 while running;
//! - `sluice_events_published_total`: change events Kafka confirmed;
//! - `sluice_checkpoints_total`, `sluice_checkpoint_age_seconds` (since the last checkpoint);
//! - `sluice_source_lag_bytes`: the server's log (WAL, binlog) past the checkpoint;
//! - `sluice_source_behind_seconds`: at Kafka's confirmation of the latest streamed change,
//!   the time since its source commit; `sluice_source_last_commit_age_seconds`: since that
//!   commit, now (it grows while the source is idle);
//! - `sluice_events_applied_total`, `sluice_dead_letters_total`, `sluice_apply_batches_total`;
//! - `sluice_apply_batch_events`, `sluice_apply_batch_seconds`: histograms per batch;
//! - `sluice_consumer_lag_records` (labels `sink`, `topic`, `partition`): records in Kafka the
//!   sink has not applied yet, per partition it holds;
//! - `sluice_apply_lag_seconds` (labels `sink`, `topic`): from the source commit of the latest
//!   event applied to the target commit that applied it, end to end;
//! - `sluice_blob_uploads_total`, `sluice_blob_upload_bytes_total` (label `sink`): objects
//!   uploaded to the stores (an object already there is not counted).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use serde_json::{json, Value as J};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Starting,
    /// A source reading its initial snapshot (streaming comes after).
    Snapshot,
    Running,
    /// Retrying after a failure that retrying can fix (the error says which).
    Retrying,
    Stopped,
    Failed,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Snapshot => "snapshot",
            State::Running => "running",
            State::Retrying => "retrying",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }
}

/// A capture's or an apply's state, the error it failed with, and its `*_up` gauge.
struct Lifecycle {
    state: Mutex<(State, Option<String>)>,
    up: Gauge,
}

impl Lifecycle {
    fn new(up: Gauge) -> Lifecycle {
        Lifecycle {
            state: Mutex::new((State::Starting, None)),
            up,
        }
    }

    fn set(&self, state: State, error: Option<String>) {
        self.up.set(if state == State::Running { 1.0 } else { 0.0 });
        if let Ok(mut s) = self.state.lock() {
            *s = (state, error);
        }
    }

    fn get(&self) -> (State, Option<String>) {
        self.state
            .lock()
            .map(|s| s.clone())
            .unwrap_or((State::Failed, None))
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// One source's capture.
pub struct SourceStatus {
    life: Lifecycle,
    position: Mutex<Option<String>>,
    checkpoint_ms: AtomicI64,
    published: AtomicU64,
    published_total: Counter,
    checkpoints_total: Counter,
    checkpoint_age: Gauge,
    /// Bytes of the server's log past the checkpoint, when measured (-1: not yet).
    log_behind: AtomicI64,
    /// Source commit time (ms) of the latest streamed change Kafka confirmed, and how far
    /// behind it was then (ms); 0: none yet.
    last_commit_ms: AtomicI64,
    behind_ms: AtomicI64,
    lag_bytes: Gauge,
    behind_seconds: Gauge,
    last_commit_age: Gauge,
}

impl SourceStatus {
    fn new(name: &str) -> SourceStatus {
        let label = [("source", name.to_owned())];
        SourceStatus {
            life: Lifecycle::new(gauge!("sluice_source_up", &label)),
            position: Mutex::new(None),
            checkpoint_ms: AtomicI64::new(0),
            published: AtomicU64::new(0),
            published_total: counter!("sluice_events_published_total", &label),
            checkpoints_total: counter!("sluice_checkpoints_total", &label),
            checkpoint_age: gauge!("sluice_checkpoint_age_seconds", &label),
            log_behind: AtomicI64::new(-1),
            last_commit_ms: AtomicI64::new(0),
            behind_ms: AtomicI64::new(0),
            lag_bytes: gauge!("sluice_source_lag_bytes", &label),
            behind_seconds: gauge!("sluice_source_behind_seconds", &label),
            last_commit_age: gauge!("sluice_source_last_commit_age_seconds", &label),
        }
    }

    /// The server's log holds `bytes` past the checkpoint.
    pub fn log_behind(&self, bytes: u64) {
        self.log_behind.store(bytes as i64, Ordering::Relaxed);
        self.lag_bytes.set(bytes as f64);
    }

    /// Kafka confirmed a streamed change committed at `commit_us` in the source.
    pub fn confirmed_commit(&self, commit_us: i64) {
        let commit_ms = commit_us.div_euclid(1000);
        let behind = (now_ms() - commit_ms).max(0);
        self.last_commit_ms.store(commit_ms, Ordering::Relaxed);
        self.behind_ms.store(behind, Ordering::Relaxed);
        self.behind_seconds.set(behind as f64 / 1000.0);
    }

    /// `error`: why it failed.
    pub fn set_state(&self, state: State, error: Option<String>) {
        self.life.set(state, error);
    }

    /// Kafka confirmed `n` more change events.
    pub fn published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
        self.published_total.increment(n);
    }

    /// A checkpoint at `position` was written: with `snapshot_done`, the source streams.
    pub fn checkpointed(&self, position: &str, snapshot_done: bool) {
        if snapshot_done && matches!(self.life.get().0, State::Snapshot | State::Retrying) {
            self.life.set(State::Running, None);
        }
        self.checkpoints_total.increment(1);
        self.checkpoint_ms.store(now_ms(), Ordering::Relaxed);
        if let Ok(mut p) = self.position.lock() {
            *p = Some(position.to_owned());
        }
    }

    fn state(&self) -> (State, Option<String>) {
        self.life.get()
    }

    fn document(&self) -> J {
        let (state, error) = self.state();
        let at = self.checkpoint_ms.load(Ordering::Relaxed);
        let bytes = self.log_behind.load(Ordering::Relaxed);
        let commit = self.last_commit_ms.load(Ordering::Relaxed);
        json!({
            "state": state.name(),
            "error": error,
            "lag_bytes": (bytes >= 0).then_some(bytes),
            "behind_s": (commit > 0).then(|| self.behind_ms.load(Ordering::Relaxed) as f64 / 1000.0),
            "last_commit_age_s": (commit > 0).then(|| (now_ms() - commit) as f64 / 1000.0),
            "events_published": self.published.load(Ordering::Relaxed),
            "checkpoint": {
                "position": self.position.lock().ok().and_then(|p| p.clone()),
                "age_s": (at > 0).then(|| (now_ms() - at) as f64 / 1000.0),
            },
        })
    }

    fn refresh(&self) {
        let at = self.checkpoint_ms.load(Ordering::Relaxed);
        if at > 0 {
            self.checkpoint_age.set((now_ms() - at) as f64 / 1000.0);
        }
        let commit = self.last_commit_ms.load(Ordering::Relaxed);
        if commit > 0 {
            self.last_commit_age
                .set((now_ms() - commit) as f64 / 1000.0);
        }
    }
}

/// The latest event of a topic applied: its source commit time, the end-to-end lag then
/// (ms), when it was applied (ms since the epoch), and the topic's lag gauge (made once).
struct TopicLag {
    commit_ms: i64,
    lag_ms: i64,
    applied_ms: i64,
    gauge: Gauge,
}

/// A partition: topic and number.
type Partition = (Arc<str>, i32);

/// A partition held: the next offset to apply (`None`: from the beginning), and the lag last
/// measured.
type Held = (Option<i64>, Option<i64>);

/// One sink's apply.
pub struct SinkStatus {
    name: String,
    life: Lifecycle,
    /// The partitions this process holds.
    partitions: Mutex<BTreeMap<Partition, Held>>,
    /// Partitions waiting on a row the target refuses for now (a foreign key, a file not
    /// there yet), and since when (ms since the epoch).
    holds: Mutex<BTreeMap<Partition, i64>>,
    held_partitions: Gauge,
    blob_uploads: AtomicU64,
    blob_bytes: AtomicU64,
    blob_uploads_total: Counter,
    blob_bytes_total: Counter,
    /// Per topic, its latest event applied.
    topics: Mutex<BTreeMap<Arc<str>, TopicLag>>,
    applied: AtomicU64,
    dead_letters: AtomicU64,
    batches: AtomicU64,
    last_batch_ms: AtomicI64,
    applied_total: Counter,
    dead_letters_total: Counter,
    batches_total: Counter,
    batch_events: Histogram,
    batch_seconds: Histogram,
}

impl SinkStatus {
    fn new(name: &str) -> SinkStatus {
        let label = [("sink", name.to_owned())];
        SinkStatus {
            name: name.to_owned(),
            life: Lifecycle::new(gauge!("sluice_sink_up", &label)),
            partitions: Mutex::new(BTreeMap::new()),
            holds: Mutex::new(BTreeMap::new()),
            topics: Mutex::new(BTreeMap::new()),
            blob_uploads: AtomicU64::new(0),
            blob_bytes: AtomicU64::new(0),
            blob_uploads_total: counter!("sluice_blob_uploads_total", &label),
            blob_bytes_total: counter!("sluice_blob_upload_bytes_total", &label),
            held_partitions: gauge!("sluice_held_partitions", &label),
            applied: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            last_batch_ms: AtomicI64::new(0),
            applied_total: counter!("sluice_events_applied_total", &label),
            dead_letters_total: counter!("sluice_dead_letters_total", &label),
            batches_total: counter!("sluice_apply_batches_total", &label),
            batch_events: histogram!("sluice_apply_batch_events", &label),
            batch_seconds: histogram!("sluice_apply_batch_seconds", &label),
        }
    }

    pub fn set_state(&self, state: State, error: Option<String>) {
        self.life.set(state, error);
    }

    /// A batch committed in the target: `applied` events written, `dead_letters` refused and
    /// recorded, in `seconds`.
    pub fn batch_applied(&self, applied: u64, dead_letters: u64, seconds: f64) {
        self.applied.fetch_add(applied, Ordering::Relaxed);
        self.dead_letters.fetch_add(dead_letters, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.last_batch_ms.store(now_ms(), Ordering::Relaxed);
        self.applied_total.increment(applied);
        self.dead_letters_total.increment(dead_letters);
        self.batches_total.increment(1);
        self.batch_events.record((applied + dead_letters) as f64);
        self.batch_seconds.record(seconds);
    }

    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// This process now applies `partition`, from offset `next` (`None`: the beginning).
    pub fn assigned(&self, partition: &Partition, next: Option<i64>) {
        if let Ok(mut p) = self.partitions.lock() {
            p.insert(partition.clone(), (next, None));
        }
    }

    /// It no longer does.
    pub fn revoked(&self, partition: &Partition) {
        if let Ok(mut p) = self.partitions.lock() {
            p.remove(partition);
        }
        self.released(partition);
        self.lag_gauge(partition).set(0.0);
    }

    /// Everything before offset `next` of `partition` is in the target.
    pub fn applied_through(&self, partition: &Partition, next: i64) {
        if let Ok(mut p) = self.partitions.lock() {
            if let Some(entry) = p.get_mut(partition) {
                entry.0 = Some(next);
            }
        }
    }

    /// An object of `bytes` was uploaded to a store.
    pub fn blob_uploaded(&self, bytes: u64) {
        self.blob_uploads.fetch_add(1, Ordering::Relaxed);
        self.blob_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.blob_uploads_total.increment(1);
        self.blob_bytes_total.increment(bytes);
    }

    /// Events of `topic` up to a source commit at `commit_ms` are in the target now.
    pub fn caught_up(&self, topic: &Arc<str>, commit_ms: i64) {
        let now = now_ms();
        let lag = (now - commit_ms).max(0);
        let Ok(mut topics) = self.topics.lock() else {
            return;
        };
        let entry = topics.entry(topic.clone()).or_insert_with(|| TopicLag {
            commit_ms,
            lag_ms: lag,
            applied_ms: now,
            gauge: gauge!("sluice_apply_lag_seconds", "sink" => self.name.clone(), "topic" => topic.to_string()),
        });
        entry.commit_ms = commit_ms;
        entry.lag_ms = lag;
        entry.applied_ms = now;
        entry.gauge.set(lag as f64 / 1000.0);
    }

    /// `partition` waits on a row the target refuses for now, since `since`.
    pub fn held(&self, partition: &Partition, since: std::time::Instant) {
        let at = now_ms() - since.elapsed().as_millis() as i64;
        if let Ok(mut h) = self.holds.lock() {
            h.insert(partition.clone(), at);
            self.held_partitions.set(h.len() as f64);
        }
    }

    /// It goes on.
    pub fn released(&self, partition: &Partition) {
        if let Ok(mut h) = self.holds.lock() {
            if h.remove(partition).is_some() {
                self.held_partitions.set(h.len() as f64);
            }
        }
    }

    /// The held partitions and for how long, in seconds.
    fn holds(&self) -> Vec<(Partition, f64)> {
        let now = now_ms();
        self.holds
            .lock()
            .map(|h| {
                h.iter()
                    .map(|(p, at)| (p.clone(), (now - at) as f64 / 1000.0))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The partitions held and the next offset of each.
    pub fn positions(&self) -> Vec<(Partition, Option<i64>)> {
        self.partitions
            .lock()
            .map(|p| p.iter().map(|(k, v)| (k.clone(), v.0)).collect())
            .unwrap_or_default()
    }

    /// `partition` ends at `high` (the offset its next record will get): its lag is what lies
    /// between the next offset to apply and there.
    pub fn measured(&self, partition: &Partition, high: i64) {
        let Ok(mut p) = self.partitions.lock() else {
            return;
        };
        let Some(entry) = p.get_mut(partition) else {
            return;
        };
        // Before anything is applied, a partition read from its beginning lags by all it
        // holds (retention may have removed some: an upper bound).
        let lag = (high - entry.0.unwrap_or(0)).max(0);
        entry.1 = Some(lag);
        drop(p);
        self.lag_gauge(partition).set(lag as f64);
    }

    fn lag_gauge(&self, (topic, partition): &Partition) -> Gauge {
        gauge!(
            "sluice_consumer_lag_records",
            "sink" => self.name.clone(),
            "topic" => topic.to_string(),
            "partition" => partition.to_string()
        )
    }

    fn lag_document(&self) -> (J, Option<i64>) {
        let p = self.partitions.lock();
        let Ok(p) = p else {
            return (J::Null, None);
        };
        let mut total = Some(0);
        let per: Vec<J> = p
            .iter()
            .map(|((topic, partition), (next, lag))| {
                total = total.zip(*lag).map(|(a, b)| a + b);
                json!({"topic": topic.as_ref(), "partition": partition, "next_offset": next, "lag_records": lag})
            })
            .collect();
        (J::Array(per), total)
    }

    pub fn dead_letters(&self) -> u64 {
        self.dead_letters.load(Ordering::Relaxed)
    }

    fn state(&self) -> (State, Option<String>) {
        self.life.get()
    }

    fn document(&self) -> J {
        let (state, error) = self.state();
        let at = self.last_batch_ms.load(Ordering::Relaxed);
        let (partitions, lag) = self.lag_document();
        json!({
            "state": state.name(),
            "error": error,
            "lag_records": lag,
            "partitions": partitions,
            "topics": self.topics.lock().map(|t| t.iter().map(|(topic, l)| {
                (topic.to_string(), json!({
                    "last_source_commit": sluice_core::value::utc_timestamp(l.commit_ms.div_euclid(1000), (l.commit_ms.rem_euclid(1000) * 1000) as u32),
                    "lag_s": l.lag_ms as f64 / 1000.0,
                    "applied_age_s": (now_ms() - l.applied_ms) as f64 / 1000.0,
                }))
            }).collect::<serde_json::Map<_, _>>()).unwrap_or_default(),
            "held": self.holds().into_iter().map(|((topic, partition), s)| {
                json!({"topic": topic.as_ref(), "partition": partition, "held_s": s})
            }).collect::<Vec<_>>(),
            "events_applied": self.applied(),
            "dead_letters": self.dead_letters(),
            "batches": self.batches.load(Ordering::Relaxed),
            "blob_uploads": self.blob_uploads.load(Ordering::Relaxed),
            "blob_upload_bytes": self.blob_bytes.load(Ordering::Relaxed),
            "last_batch_age_s": (at > 0).then(|| (now_ms() - at) as f64 / 1000.0),
        })
    }
}

#[derive(Default)]
struct Registry {
    sources: Mutex<BTreeMap<String, Arc<SourceStatus>>>,
    sinks: Mutex<BTreeMap<String, Arc<SinkStatus>>>,
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::default);

/// Whether anything reads the status (the HTTP API runs): what costs broker requests to
/// measure, consumer lag, is measured only then.
static WATCHED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn watch() {
    WATCHED.store(true, Ordering::Relaxed);
}

pub fn watched() -> bool {
    WATCHED.load(Ordering::Relaxed)
}

/// The entry of source `name` (made on first use; a restarted capture keeps its counts).
pub fn source(name: &str) -> Arc<SourceStatus> {
    let mut sources = REGISTRY.sources.lock().unwrap_or_else(|e| e.into_inner());
    sources
        .entry(name.to_owned())
        .or_insert_with(|| Arc::new(SourceStatus::new(name)))
        .clone()
}

/// The entry of sink `name`.
pub fn sink(name: &str) -> Arc<SinkStatus> {
    let mut sinks = REGISTRY.sinks.lock().unwrap_or_else(|e| e.into_inner());
    sinks
        .entry(name.to_owned())
        .or_insert_with(|| Arc::new(SinkStatus::new(name)))
        .clone()
}

fn sources() -> Vec<(String, Arc<SourceStatus>)> {
    let sources = REGISTRY.sources.lock().unwrap_or_else(|e| e.into_inner());
    sources
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn sinks() -> Vec<(String, Arc<SinkStatus>)> {
    let sinks = REGISTRY.sinks.lock().unwrap_or_else(|e| e.into_inner());
    sinks.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The `/status` document.
pub fn document() -> J {
    let sources: serde_json::Map<String, J> = sources()
        .into_iter()
        .map(|(name, s)| (name, s.document()))
        .collect();
    let sinks: serde_json::Map<String, J> = sinks()
        .into_iter()
        .map(|(name, s)| (name, s.document()))
        .collect();
    json!({ "sources": sources, "sinks": sinks })
}

/// How long a partition may be held before the process is not ready (`[http] stuck_after_s`).
static STUCK_AFTER_MS: AtomicI64 = AtomicI64::new(300_000);

pub fn set_stuck_after(after: std::time::Duration) {
    STUCK_AFTER_MS.store(after.as_millis() as i64, Ordering::Relaxed);
}

/// Why this process is not ready (empty: ready): a source or sink not running, none yet, or a
/// partition held longer than `[http] stuck_after_s`.
pub fn not_ready() -> Vec<String> {
    let mut reasons = Vec::new();
    let (sources, sinks) = (sources(), sinks());
    if sources.is_empty() && sinks.is_empty() {
        reasons.push("nothing started yet".to_owned());
    }
    for (name, s) in sources {
        let (state, error) = s.state();
        if state != State::Running {
            reasons.push(format!(
                "source {name} is {}{}",
                state.name(),
                error.map(|e| format!(": {e}")).unwrap_or_default()
            ));
        }
    }
    for (name, s) in sinks {
        let (state, error) = s.state();
        if state != State::Running {
            reasons.push(format!(
                "sink {name} is {}{}",
                state.name(),
                error.map(|e| format!(": {e}")).unwrap_or_default()
            ));
        }
        let stuck_after = STUCK_AFTER_MS.load(Ordering::Relaxed) as f64 / 1000.0;
        for ((topic, partition), held_s) in s.holds() {
            if held_s >= stuck_after {
                reasons.push(format!(
                    "sink {name}: partition {partition} of {topic} has been held for {held_s:.0} s (a row the target refuses for now: see the log), longer than http.stuck_after_s = {stuck_after:.0}"
                ));
            }
        }
    }
    reasons
}

/// Brings the gauges that are a function of time up to now (before a scrape).
pub fn refresh() {
    for (_, s) in sources() {
        s.refresh();
    }
}
