//! Errors of the Kafka connector.

use sluice_core::ErrorClass;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("{context}")]
    Client {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("{0}")]
    Setup(String),
}

impl KafkaError {
    pub(crate) fn client(
        context: impl Into<String>,
    ) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        let context = context.into();
        move |source| KafkaError::Client { context, source }
    }

    /// A record librdkafka refused for its size (over `message.max.bytes`).
    pub fn is_too_large(&self) -> bool {
        matches!(self, KafkaError::Client { source, .. }
            if source.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge))
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            KafkaError::Setup(_) => ErrorClass::Definite,
            KafkaError::Client { source, .. } => match source.rdkafka_error_code() {
                Some(
                    rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed
                    | rdkafka::types::RDKafkaErrorCode::ClusterAuthorizationFailed
                    | rdkafka::types::RDKafkaErrorCode::SaslAuthenticationFailed
                    | rdkafka::types::RDKafkaErrorCode::InvalidConfig,
                ) => ErrorClass::Definite,
                _ => ErrorClass::Transient,
            },
        }
    }
}
