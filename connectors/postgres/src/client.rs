//! Ordinary (non-replication) connections: catalog queries, preflight, snapshot reads.

use sluice_core::error_chain;
use sluice_core::tls::{tls_hint, SslMode};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::PostgresConnection;
use crate::error::PostgresError;

/// Session settings pinned on every connection, so that values are rendered the same way in the
/// snapshot and in the stream, whatever the server's defaults.
pub const SESSION_OPTIONS: &str = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=iso_8601 \
     -c bytea_output=hex -c extra_float_digits=1 -c client_encoding=UTF8";

/// Opens a connection (over TLS as `sslmode` says) and drives it on the current runtime. The
/// connection task ends when the returned client is dropped.
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
    let tls = conn.tls();
    // libpq does not use TLS over a Unix socket, whatever sslmode says.
    let config = match conn.host.starts_with('/') {
        true => None,
        false => tls.client_config().map_err(PostgresError::Setup)?,
    };
    let connected = match config {
        None => {
            cfg.ssl_mode(PgSslMode::Disable);
            start(&cfg, NoTls).await
        }
        Some(config) => {
            cfg.ssl_mode(match tls.mode {
                SslMode::Prefer => PgSslMode::Prefer,
                _ => PgSslMode::Require,
            });
            start(&cfg, MakeRustlsConnect::new(config)).await
        }
    };
    connected.map_err(|source| PostgresError::Connect {
        target: conn.describe(),
        tls_hint: tls_hint(&error_chain(&source), &tls),
        source,
    })
}

/// Connects with `tls` and drives the connection on a task of its own.
async fn start<T>(cfg: &Config, tls: T) -> Result<Client, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = cfg.connect(tls).await?;
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
