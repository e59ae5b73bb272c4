//! Errors of the Postgres connector, each with its [`ErrorClass`].

use sluice_core::{Classified, ErrorClass};

#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// `tls_hint`: TLS with the server failed, and the setting to change (see
    /// [`sluice_core::tls::tls_hint`]).
    #[error("cannot connect to postgres {target}{}", over_tls(tls_hint))]
    Connect {
        target: String,
        tls_hint: Option<String>,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{context}")]
    Query {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("replication stream from {target}")]
    Replication {
        target: String,
        #[source]
        source: pgwire_replication::PgWireError,
    },
    #[error(transparent)]
    Decode(#[from] crate::pgoutput::DecodeError),
    /// Misconfiguration the operator must fix; the message says how.
    #[error("{0}")]
    Setup(String),
    /// The capture pipeline stopped taking batches.
    #[error("capture pipeline closed")]
    Closed,
}

impl Classified for PostgresError {
    fn class(&self) -> ErrorClass {
        match self {
            PostgresError::Decode(_)
            | PostgresError::Setup(_)
            | PostgresError::Connect {
                tls_hint: Some(_), ..
            } => ErrorClass::Definite,
            PostgresError::Connect { source, .. } | PostgresError::Query { source, .. } => {
                sqlstate_class(source.code().map(|c| c.code()))
            }
            PostgresError::Replication { source, .. } => replication_class(source),
            PostgresError::Closed => ErrorClass::Transient,
        }
    }
}

impl PostgresError {
    /// Whether a query failed on what it asked, not on the connection or the server's state:
    /// SQLSTATE class 22 (data exception, e.g. a division by zero) or 42 (a column, table or
    /// function that does not exist, a syntax error). Retrying the same query cannot help.
    pub fn refused_query(&self) -> bool {
        match self {
            PostgresError::Query { source, .. } => source
                .code()
                .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("42")),
            _ => false,
        }
    }

    pub(crate) fn query(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |source| PostgresError::Query { context, source }
    }
}

/// Operator action needed: missing object, invalidated slot, authentication, privileges, syntax.
/// Everything else (connection loss, shutdown, conflicts, unknown) is worth a retry.
fn sqlstate_class(code: Option<&str>) -> ErrorClass {
    match code {
        Some("42704" | "55000" | "28P01" | "28000" | "42501" | "3D000" | "42P01" | "42601") => {
            ErrorClass::Definite
        }
        _ => ErrorClass::Transient,
    }
}

fn replication_class(e: &pgwire_replication::PgWireError) -> ErrorClass {
    use pgwire_replication::PgWireError as E;
    match e {
        E::Server(msg) => {
            // The server error text carries its SQLSTATE; classify it the same way.
            let definite = ["42704", "55000", "28P01", "28000", "42501", "3D000"]
                .iter()
                .any(|code| msg.contains(code));
            if definite {
                ErrorClass::Definite
            } else {
                ErrorClass::Transient
            }
        }
        // A certificate or TLS setting the server refuses does not fix itself.
        E::Auth(_) | E::Tls(_) => ErrorClass::Definite,
        _ => ErrorClass::Transient,
    }
}

fn over_tls(hint: &Option<String>) -> String {
    hint.as_ref()
        .map(|h| format!(" over TLS: {h}"))
        .unwrap_or_default()
}
