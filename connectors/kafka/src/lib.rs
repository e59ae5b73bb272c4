//! Sluice's Kafka connector.
//!
//! * [`KafkaPublisher`] publishes change events with an idempotent producer (`acks=all`,
//!   lz4, the Java client's murmur2 partitioner) and hands back one delivery future per
//!   message, so the capture pipeline acknowledges a source position only once Kafka confirmed
//!   every event up to it.
//! * [`CheckpointStore`] keeps each source's resume point in a compacted topic of its own.
//! * [`ensure_topics`] creates table topics explicitly (Sluice never relies on auto-creation).
//! * [`SinkConsumer`] is a consumer-group member that starts each assigned partition at the
//!   offset its target stored with the rows (not at the group's committed offset).
//!
//! Sluice does not use Kafka transactions: exactly-once effect comes from positions and
//! checkpoints (see `sluice_core`).

pub mod checkpoint;
pub mod config;
pub mod consumer;
pub mod error;
pub mod publisher;

pub use checkpoint::{CheckpointStore, CheckpointWatch, DurableMarks};
pub use config::KafkaConfig;
pub use consumer::{
    partition_counts, replay_offsets, ConsumerEvent, ConsumerSettings, ConsumerSink, Control,
    OffsetSource, Record, ReplayFrom, SinkConsumer, StoredOffset, TopicPartition,
};
pub use error::KafkaError;
pub use publisher::{
    ensure_topics, preflight, Acks, KafkaPublisher, TopicSpec, TOMBSTONE_DELETE_HEADER,
};
