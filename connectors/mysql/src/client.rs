//! Connections to a MySQL/MariaDB server, with the session settings Sluice relies on.

use mysql_async::{ClientIdentity, Conn, OptsBuilder, SslOpts};
use sluice_core::error_chain;
use sluice_core::tls::{tls_hint, SslMode, TlsSettings};

use crate::config::MySqlConnection;
use crate::error::MySqlError;

/// Session settings: UTC for TIMESTAMP columns, utf8mb4, and strict mode, so that a value the
/// column cannot hold is an error (a dead letter), never a silent truncation.
const INIT: &[&str] = &[
    "SET time_zone = '+00:00'",
    "SET NAMES utf8mb4",
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO'",
];

/// Connects over TLS as `sslmode` says (`prefer`: TLS when the server offers it).
pub async fn connect(conn: &MySqlConnection) -> Result<Conn, MySqlError> {
    let password = conn.expose_password().map_err(MySqlError::Setup)?;
    // The config's validation has checked the TLS files (`Config::validate`).
    let tls = conn.tls();
    let opts = OptsBuilder::default()
        .ip_or_hostname(conn.host.clone())
        .tcp_port(conn.port)
        .user(Some(conn.user.clone()))
        .pass(password)
        .db_name(Some(conn.database.clone()))
        .prefer_socket(false)
        .init(INIT.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let connected = match ssl_opts(&tls) {
        None => Conn::new(opts).await,
        Some(ssl) => match Conn::new(opts.clone().ssl_opts(ssl)).await {
            Err(mysql_async::Error::Driver(
                mysql_async::DriverError::NoClientSslFlagFromServer,
            )) if tls.mode == SslMode::Prefer => Conn::new(opts).await,
            other => other,
        },
    };
    connected.map_err(|source| MySqlError::Connect {
        target: conn.describe(),
        tls_hint: tls_hint(&error_chain(&source), &tls),
        source,
    })
}

/// mysql_async's TLS options for `tls`, with sslmode's meanings (`None`: no TLS).
fn ssl_opts(tls: &TlsSettings) -> Option<SslOpts> {
    let mut ssl = SslOpts::default()
        .with_danger_accept_invalid_certs(!tls.mode.verifies())
        .with_danger_skip_domain_validation(tls.mode != SslMode::VerifyFull);
    if tls.mode == SslMode::Disable {
        return None;
    }
    if let Some(root) = &tls.root_cert {
        ssl = ssl
            .with_root_certs(vec![root.clone().into()])
            .with_disable_built_in_roots(true);
    }
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        let identity = ClientIdentity::new(cert.clone().into(), key.clone().into());
        ssl = ssl.with_client_identity(Some(identity));
    }
    Some(ssl)
}

/// A table as SQL text, `` `db`.`name` ``.
pub fn quote_table(id: &sluice_core::TableId) -> String {
    format!("{}.{}", quote_ident(&id.schema), quote_ident(&id.name))
}

/// Quotes an identifier for MySQL SQL text.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}
