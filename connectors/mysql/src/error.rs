//! Errors of the MySQL connector, each with its [`ErrorClass`].

use sluice_core::sink_tx::SqlError;
use sluice_core::{Classified, ErrorClass};

#[derive(Debug, thiserror::Error)]
pub enum MySqlError {
    /// `tls_hint`: TLS with the server failed, and the setting to change (see
    /// [`sluice_core::tls::tls_hint`]).
    #[error("cannot connect to mysql {target}{}", over_tls(tls_hint))]
    Connect {
        target: String,
        tls_hint: Option<String>,
        #[source]
        source: mysql_async::Error,
    },
    #[error("{context}")]
    Query {
        context: String,
        #[source]
        source: mysql_async::Error,
    },
    /// Misconfiguration the operator must fix; the message says how.
    #[error("{0}")]
    Setup(String),
    /// A binlog event Sluice cannot decode.
    #[error("cannot decode the binlog: {0}")]
    Decode(String),
    /// The server ended the binlog stream (it is shutting down, or killed our session).
    #[error("the server ended the binlog stream")]
    Ended,
    #[error("no binlog event or heartbeat for {0:?}: the connection is presumed dead")]
    Silent(std::time::Duration),
    /// The capture pipeline stopped taking batches.
    #[error("the capture pipeline closed")]
    Closed,
}

/// Server error codes that mean "this data is refused", whatever their SQLSTATE.
const DATA_ERRORS: &[u16] = &[
    1048, // column cannot be null
    1062, // duplicate entry (a unique key other than the one upserted on)
    1264, // out of range
    1265, // data truncated
    1292, // incorrect value (dates, numbers)
    1366, // incorrect value for column
    1406, // data too long
    1411, // incorrect datetime value
    1452, // foreign key fails
    3819, // check constraint violated (MySQL)
    4025, // check constraint failed (MariaDB)
];

/// Need a person: unknown table or column, access denied, unknown database.
const DEFINITE: &[u16] = &[1044, 1045, 1049, 1054, 1142, 1143, 1146];

impl MySqlError {
    pub(crate) fn query(context: impl Into<String>) -> impl FnOnce(mysql_async::Error) -> Self {
        let context = context.into();
        move |source| MySqlError::Query { context, source }
    }

    fn server(&self) -> Option<&mysql_async::ServerError> {
        match self {
            MySqlError::Connect { source, .. } | MySqlError::Query { source, .. } => match source {
                mysql_async::Error::Server(e) => Some(e),
                _ => None,
            },
            _ => None,
        }
    }

    /// The server's SQLSTATE and error code, e.g. `23000/4025`.
    pub fn sqlstate(&self) -> Option<String> {
        self.server().map(|e| format!("{}/{}", e.state, e.code))
    }

    /// The server's message without our context (it may quote the refused value).
    pub fn server_message(&self) -> Option<&str> {
        self.server().map(|e| e.message.as_str())
    }
}

impl Classified for MySqlError {
    fn class(&self) -> ErrorClass {
        match self {
            MySqlError::Setup(_)
            | MySqlError::Decode(_)
            | MySqlError::Connect {
                tls_hint: Some(_), ..
            } => ErrorClass::Definite,
            MySqlError::Ended | MySqlError::Silent(_) | MySqlError::Closed => ErrorClass::Transient,
            _ => match self.server() {
                Some(e) if DEFINITE.contains(&e.code) => ErrorClass::Definite,
                _ => ErrorClass::Transient,
            },
        }
    }
}

impl SqlError for MySqlError {
    /// Constraint, type or range: SQLSTATE classes 22 and 23, and the codes that mean the
    /// same whatever their SQLSTATE.
    fn is_data_error(&self) -> bool {
        self.server().is_some_and(|e| {
            e.state.starts_with("22") || e.state.starts_with("23") || DATA_ERRORS.contains(&e.code)
        })
    }

    /// No parent (1452), or a parent that still has children (1451).
    fn is_foreign_key_error(&self) -> bool {
        self.server()
            .is_some_and(|e| e.code == 1452 || e.code == 1451)
    }

    fn refusal(&self) -> (String, Option<String>) {
        let message = self.server_message().unwrap_or("unknown error");
        (message.to_owned(), self.sqlstate())
    }

    fn apply_class(&self) -> ErrorClass {
        self.class()
    }
}

fn over_tls(hint: &Option<String>) -> String {
    hint.as_ref()
        .map(|h| format!(" over TLS: {h}"))
        .unwrap_or_default()
}
