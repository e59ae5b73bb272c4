//! Apply: Kafka → mapping → one target database, exactly once in effect.
//!
//! ```text
//!  consumer thread ──records──► worker 0 ──► target transaction (rows + offsets + dead letters)
//!  (group member;      by       worker 1 ──► …
//!   assigns at the  partition   …
//!   target's stored offsets)
//! ```
//!
//! The consumer joins the sink's group; on every assignment it asks the target for the stored
//! offsets and starts each partition there. Each partition is routed to one worker, so its
//! events are applied in order; workers run concurrently, each with its own connection. See
//! [`worker`] for batching, de-duplication, fencing and truncates, and
//! [`sluice_core::target`] for what a target guarantees and [`sluice_core::sink_tx`] for the
//! transaction itself.

pub mod target;
pub mod worker;

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sluice_core::{topic_name, Problem, TableId};
use sluice_kafka::{
    ConsumerEvent, ConsumerSettings, ConsumerSink, KafkaConfig, KafkaError, OffsetSource,
    SinkConsumer, StoredOffset, TopicPartition,
};
use tokio::sync::{mpsc, watch};

use self::target::{on_target, prepare, TargetConnection};
use self::worker::{Worker, WorkerMsg, WorkerSettings};
use crate::config::{SinkConfig, StoreConfig, TruncateSetting};
use crate::mapping::{Router, TableRoute};
use crate::telemetry::error_chain;
use sluice_core::target::{TableShapeOf, Target, TargetWriter};

/// Resolves a sink's mappings against its target tables: the routes per topic, or every
/// problem found.
fn resolve(
    name: &str,
    sink: &SinkConfig,
    prefix: &str,
    shapes: &[TableShapeOf],
    target_ids: &[TableId],
) -> Result<Router, Vec<String>> {
    let mut problems = Vec::new();
    let mut router = Router::default();
    for (i, m) in sink.tables.iter().enumerate() {
        let at = format!("sinks.{name}.tables[{i}]");
        let (Some(source), Some(table)) = (m.source_table(), m.target_table()) else {
            continue;
        };
        let Some(index) = target_ids.iter().position(|t| *t == table) else {
            continue;
        };
        let (id, columns, key) = &shapes[index];
        match TableRoute::new(index, (id, columns, key), m, &at) {
            Ok(route) => router.add(&topic_name(prefix, &source), route),
            Err(p) => problems.push(p),
        }
    }
    if problems.is_empty() {
        Ok(router)
    } else {
        Err(problems)
    }
}

fn target_ids(sink: &SinkConfig) -> Vec<TableId> {
    let mut ids: Vec<TableId> = Vec::new();
    for m in &sink.tables {
        if let Some(t) = m.target_table() {
            if !ids.contains(&t) {
                ids.push(t);
            }
        }
    }
    ids
}

/// The sink's preflight: the target answers, every target table exists with a primary key,
/// every renamed column exists. Changes nothing in the target.
pub async fn preflight(name: &str, sink: &SinkConfig, prefix: &str) -> Vec<Problem> {
    let Some(connection) = TargetConnection::of(sink) else {
        return Vec::new();
    };
    let ids = target_ids(sink);
    on_target!(&connection, t => preflight_on(&t, name, sink, prefix, &ids, &connection).await)
}

async fn preflight_on<T: Target>(
    target: &T,
    name: &str,
    sink: &SinkConfig,
    prefix: &str,
    ids: &[TableId],
    connection: &TargetConnection,
) -> Vec<Problem> {
    let subject = format!("sink {name}");
    match prepare(target, ids, false).await {
        Ok(Ok(tables)) => match resolve(name, sink, prefix, &target::shapes::<T>(&tables), ids) {
            Ok(_) => Vec::new(),
            Err(problems) => problems
                .into_iter()
                .map(|p| Problem::new(subject.clone(), p))
                .collect(),
        },
        Ok(Err(problems)) => problems
            .into_iter()
            .map(|p| Problem::new(subject.clone(), format!("sinks.{name}: {p}")))
            .collect(),
        Err(e) => vec![Problem::of_class(
            <T::Writer as TargetWriter>::class(&e),
            subject,
            format!(
                "{}: check host, port, user, database and password_env of {}",
                error_chain(&e),
                connection.section(name)
            ),
        )],
    }
}

/// Reads stored offsets for the consumer's rebalance callback (which is synchronous).
struct TargetOffsets<T> {
    runtime: tokio::runtime::Handle,
    target: T,
    sink: String,
}

impl<T: Target> OffsetSource for TargetOffsets<T> {
    fn load(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<HashMap<TopicPartition, StoredOffset>, String> {
        let stored = self
            .runtime
            .block_on(self.target.load_offsets(&self.sink, partitions))
            .map_err(|e| error_chain(&e))?;
        Ok(stored
            .into_iter()
            .map(|(tp, (next_offset, position))| {
                (
                    tp,
                    StoredOffset {
                        next_offset,
                        position,
                    },
                )
            })
            .collect())
    }
}

/// Hands each partition's events to its worker.
struct Dispatcher {
    workers: Vec<mpsc::Sender<WorkerMsg>>,
    /// Topics applied in source order by worker 0 (see [`worker::OrderedTopics`]).
    ordered: std::collections::HashSet<Arc<str>>,
}

impl Dispatcher {
    /// A topic's partitions go to consecutive workers (from a place its name picks), so one
    /// table's partitions spread evenly instead of doubling up on a worker by chance. Ordered
    /// topics all go to worker 0.
    fn owner(&self, tp: &TopicPartition) -> &mpsc::Sender<WorkerMsg> {
        if self.ordered.contains(&tp.0) {
            return &self.workers[0];
        }
        let mut h = DefaultHasher::new();
        tp.0.hash(&mut h);
        let n = self.workers.len() as u64;
        let start = h.finish() % n;
        &self.workers[((start + tp.1.max(0) as u64) % n) as usize]
    }
}

impl ConsumerSink for Dispatcher {
    fn deliver(&self, event: ConsumerEvent) {
        // A worker that is gone (stopping) no longer needs anything.
        match event {
            ConsumerEvent::Assigned(parts, generation) => {
                for (tp, stored) in parts {
                    let _ = self
                        .owner(&tp)
                        .blocking_send(WorkerMsg::Assigned(tp, stored, generation));
                }
            }
            ConsumerEvent::Revoked(parts) => {
                for tp in parts {
                    let _ = self.owner(&tp).blocking_send(WorkerMsg::Revoked(tp));
                }
            }
            ConsumerEvent::Record(r) => {
                let tp = (r.topic.clone(), r.partition);
                let _ = self.owner(&tp).blocking_send(WorkerMsg::Record(r));
            }
        }
    }
}

/// The topics whose routes write target tables that foreign keys link, with all their
/// partitions; `None` when no such tables are mapped.
fn ordered_topics(
    kafka: &KafkaConfig,
    router: &Router,
    linked: &std::collections::HashSet<usize>,
    counts: &HashMap<String, i32>,
) -> Option<Arc<worker::OrderedTopics>> {
    if linked.is_empty() {
        return None;
    }
    let mut topics = std::collections::HashSet::new();
    let mut partitions = Vec::new();
    for topic in router.topics() {
        let writes_linked = router
            .get(&topic)
            .is_some_and(|r| r.routes.iter().any(|route| linked.contains(&route.table)));
        if writes_linked {
            let t: Arc<str> = Arc::from(topic.as_str());
            for p in 0..counts.get(&topic).copied().unwrap_or(0) {
                partitions.push((t.clone(), p));
            }
            topics.insert(t);
        }
    }
    (!topics.is_empty()).then(|| {
        Arc::new(worker::OrderedTopics {
            topics,
            partitions,
            kafka: kafka.clone(),
        })
    })
}

/// Runs one sink until `stop` turns true or a definite error occurs.
pub async fn run(
    kafka: &KafkaConfig,
    name: &str,
    sink: &SinkConfig,
    stores: &std::collections::BTreeMap<String, StoreConfig>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let connection = TargetConnection::of(sink).context("the sink has no target connection")?;
    // Blobs are a Postgres target's feature (refused for others when the config loads): their
    // ledger is written over a connection of the stage's own.
    let blob_ledger = match &connection {
        TargetConnection::Postgres(pg) => Some(pg.clone()),
        TargetConnection::MySql(_) => None,
    };
    let status = crate::status::sink(name);
    status.set_state(crate::status::State::Starting, None);
    let result =
        on_target!(&connection, t => run_on(t, blob_ledger, kafka, name, sink, stores, stop).await);
    match &result {
        Ok(()) => status.set_state(crate::status::State::Stopped, None),
        Err(e) => status.set_state(crate::status::State::Failed, Some(format!("{e:#}"))),
    }
    result
}

/// How often consumer lag is measured (while the HTTP API runs).
const LAG_INTERVAL: Duration = Duration::from_secs(2);

/// [`run`] on the sink's target.
async fn run_on<T: Target>(
    target: T,
    blob_ledger: Option<sluice_postgres::PostgresConnection>,
    kafka: &KafkaConfig,
    name: &str,
    sink: &SinkConfig,
    stores: &std::collections::BTreeMap<String, StoreConfig>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut ids = target_ids(sink);
    // The blob ledger is written like a target table, in the same transactions.
    let has_blobs = sink.tables.iter().any(|t| !t.blobs.is_empty());
    let ledger_id = TableId::new("sluice", "blobs");
    if has_blobs {
        ids.push(ledger_id.clone());
    }
    let mut opened = HashMap::new();
    if has_blobs {
        for t in &sink.tables {
            for b in t.blobs.values() {
                if opened.contains_key(&b.store) {
                    continue;
                }
                let cfg = stores
                    .get(&b.store)
                    .with_context(|| format!("no [stores.{}] section", b.store))?;
                let store = crate::blobs::store::Store::new(&b.store, cfg)
                    .map_err(|e| anyhow::anyhow!(e))?;
                opened.insert(b.store.clone(), store);
            }
        }
    }
    let tables = prepare(&target, &ids, true)
        .await?
        .map_err(|p| anyhow::anyhow!("sink {name}:\n  - {}", p.join("\n  - ")))?;
    let shapes = target::shapes::<T>(&tables);
    let mut router = resolve(name, sink, &kafka.topic_prefix, &shapes, &ids)
        .map_err(|p| anyhow::anyhow!("sink {name}:\n  - {}", p.join("\n  - ")))?;
    let topics = router.topics();

    // The topics are created by capture; with `--only apply` they may not exist yet.
    let mut waited = 0u32;
    let counts = loop {
        let (k, t) = (kafka.clone(), topics.clone());
        match tokio::task::spawn_blocking(move || sluice_kafka::partition_counts(&k, &t)).await? {
            Ok(c) => break c,
            Err(e @ KafkaError::Setup(_)) | Err(e @ KafkaError::Client { .. }) => {
                if waited.is_multiple_of(30) {
                    tracing::info!(sink = %name, reason = %error_chain(&e), "waiting for the sink's topics");
                }
                waited += 1;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return Ok(()),
                }
            }
        }
    };
    for (topic, n) in &counts {
        router.set_partitions(topic, *n);
    }
    let ordered = ordered_topics(
        kafka,
        &router,
        &target::linked_tables::<T>(&tables),
        &counts,
    );
    if let Some(o) = &ordered {
        let mut names: Vec<&str> = o.topics.iter().map(|t| &**t).collect();
        names.sort();
        tracing::info!(sink = %name, topics = %names.join(", "), "target foreign keys link these topics' tables: they are applied together, in source order, up to each durable capture checkpoint");
    }
    let router = Arc::new(router);

    let stats = crate::status::sink(name);
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..sink.workers {
        let (tx, rx) = mpsc::channel(sink.max_batch_events.max(1024));
        senders.push(tx);
        receivers.push(rx);
    }
    let consumer = SinkConsumer::start(
        kafka,
        ConsumerSettings {
            group: sink.group(name),
            topics: topics.clone(),
        },
        Arc::new(TargetOffsets {
            runtime: tokio::runtime::Handle::current(),
            target: target.clone(),
            sink: name.to_owned(),
        }),
        Arc::new(Dispatcher {
            workers: senders,
            ordered: ordered
                .as_ref()
                .map(|o| o.topics.clone())
                .unwrap_or_default(),
        }),
    )?;
    let mut workers = tokio::task::JoinSet::new();
    for (id, rx) in receivers.into_iter().enumerate() {
        let blobs = match (&blob_ledger, has_blobs) {
            (Some(pg), true) => {
                let tables: Vec<crate::blobs::stage::TableInfo> = shapes
                    .iter()
                    .cloned()
                    .map(|(id, columns, key)| crate::blobs::stage::TableInfo { id, columns, key })
                    .collect();
                let ledger = tables.iter().position(|t| t.id == ledger_id).unwrap_or(0);
                Some(crate::blobs::stage::Stage::new(
                    name,
                    opened.clone(),
                    pg.clone(),
                    tables,
                    ledger,
                ))
            }
            _ => None,
        };
        let worker = Worker {
            id,
            ordered: if id == 0 { ordered.clone() } else { None },
            ordered_progress: Default::default(),
            blobs,
            sink: target.writer(name, tables.clone(), id),
            router: router.clone(),
            settings: WorkerSettings {
                max_batch_events: sink.max_batch_events,
                max_batch_delay: Duration::from_millis(sink.max_batch_delay_ms),
                apply_truncates: sink.truncate == TruncateSetting::Apply,
                fk_wait: Duration::from_millis(sink.foreign_key_wait_ms),
            },
            rx,
            control: consumer.control(),
            stats: stats.clone(),
            stop: stop.clone(),
        };
        workers.spawn(worker.run());
    }
    tracing::info!(sink = %name, group = %sink.group(name), topics = %topics.join(", "), workers = sink.workers, "apply started");
    stats.set_state(crate::status::State::Running, None);

    let mut result = Ok(());
    let mut report = tokio::time::interval(Duration::from_secs(10));
    // Consumer lag, measured while something reads it: the end of each partition held.
    let watermarks = if crate::status::watched() {
        Some(Arc::new(sluice_kafka::consumer::Watermarks::new(kafka)?))
    } else {
        None
    };
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut lag_tick = tokio::time::interval(LAG_INTERVAL);
    let mut last_reported = 0u64;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            joined = workers.join_next() => {
                match joined {
                    Some(Ok(Ok(()))) if *stop.borrow() => break,
                    Some(Ok(Ok(()))) | None => {
                        result = Err(anyhow::anyhow!("an apply worker of sink {name} ended"));
                        break;
                    }
                    Some(Ok(Err(e))) => { result = Err(e); break; }
                    Some(Err(e)) => { result = Err(anyhow::anyhow!("an apply worker of sink {name} was lost: {e}")); break; }
                }
            }
            _ = lag_tick.tick(), if watermarks.is_some() => {
                // In the background, one measurement at a time: the broker may be slow.
                if let Some(w) = watermarks.clone() {
                    if !measuring.swap(true, std::sync::atomic::Ordering::AcqRel) {
                        let (stats, measuring) = (stats.clone(), measuring.clone());
                        tokio::task::spawn_blocking(move || {
                            for (partition, _) in stats.positions() {
                                if let Ok(high) = w.high(&partition.0, partition.1) {
                                    stats.measured(&partition, high);
                                }
                            }
                            measuring.store(false, std::sync::atomic::Ordering::Release);
                        });
                    }
                }
            }
            _ = report.tick() => {
                if consumer.is_finished() {
                    result = Err(anyhow::anyhow!("the kafka consumer of sink {name} stopped"));
                    break;
                }
                let applied = stats.applied();
                if applied != last_reported {
                    last_reported = applied;
                    tracing::info!(
                        sink = %name,
                        events_applied = applied,
                        dead_letters = stats.dead_letters(),
                        "apply progress"
                    );
                }
            }
        }
    }
    // Workers finish the batch in hand (their stop receiver fired), then the consumer leaves
    // the group. Anything not committed is read again from the stored offsets next time.
    if result.is_err() {
        workers.abort_all();
    }
    while workers.join_next().await.is_some() {}
    tokio::task::spawn_blocking(move || consumer.stop())
        .await
        .context("stopping the consumer")??;
    let dead = stats.dead_letters();
    tracing::info!(
        sink = %name,
        events_applied = stats.applied(),
        dead_letters = dead,
        "apply stopped"
    );
    if dead > 0 {
        tracing::warn!(sink = %name, count = dead, table = T::DEAD_LETTER_TABLE, "events were refused this run: see the dead-letter table in the target");
    }
    result
}
