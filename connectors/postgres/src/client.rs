//! Ordinary (non-replication) connections: catalog queries, preflight, snapshot reads.

use tokio_postgres::{Client, Config, NoTls};

use crate::config::PostgresConnection;
use crate::error::PostgresError;

/// Session settings pinned on every connection, so that values are rendered the same way in the
/// snapshot and in the stream, whatever the server's defaults.
pub const SESSION_OPTIONS: &str = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=iso_8601 \
     -c bytea_output=hex -c extra_float_digits=1 -c client_encoding=UTF8";

/// Opens a connection and drives it on the current runtime. The connection task ends when the
/// returned client is dropped.
pub async fn connect(conn: &PostgresConnection, purpose: &str) -> Result<Client, PostgresError> {
    let password = conn
        .expose_password()
        .map_err(PostgresError::Setup)?
        .unwrap_or_default();
    let mut cfg = Config::new();
    cfg.host(&conn.host)
        .port(conn.port)
        .user(&conn.user)
        .dbname(&conn.database)
        .options(SESSION_OPTIONS)
        .application_name(format!("sluice {purpose}"))
        .connect_timeout(std::time::Duration::from_secs(10));
    if !password.is_empty() {
        cfg.password(password);
    }
    let (client, connection) =
        cfg.connect(NoTls)
            .await
            .map_err(|source| PostgresError::Connect {
                target: conn.describe(),
                source,
            })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// Quotes an identifier for SQL text.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."table"`, quoted for SQL text.
pub fn quote_table(id: &sluice_core::TableId) -> String {
    format!("{}.{}", quote_ident(&id.schema), quote_ident(&id.name))
}

/// Quotes a string literal for SQL text. A text with backslashes becomes an `E'…'` literal
/// with them doubled, which reads the same whatever `standard_conforming_strings` says.
pub fn quote_literal(text: &str) -> String {
    if text.contains('\\') {
        format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", text.replace('\'', "''"))
    }
}

#[cfg(test)]
mod tests {
    use super::quote_literal;

    #[test]
    fn literals_quote_quotes_and_backslashes() {
        assert_eq!(quote_literal("a'b"), "'a''b'");
        assert_eq!(quote_literal(r"C:\dir\'x"), r"E'C:\\dir\\''x'");
        assert_eq!(quote_literal(""), "''");
    }
}
