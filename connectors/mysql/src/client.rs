//! Connections to a MySQL/MariaDB server, with the session settings Sluice relies on.

use mysql_async::{Conn, OptsBuilder};

use crate::config::MySqlConnection;
use crate::error::MySqlError;

/// Session settings: UTC for TIMESTAMP columns, utf8mb4, and strict mode, so that a value the
/// column cannot hold is an error (a dead letter), never a silent truncation.
const INIT: &[&str] = &[
    "SET time_zone = '+00:00'",
    "SET NAMES utf8mb4",
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,NO_AUTO_VALUE_ON_ZERO'",
];

pub async fn connect(conn: &MySqlConnection) -> Result<Conn, MySqlError> {
    let password = conn.expose_password().map_err(MySqlError::Setup)?;
    let opts = OptsBuilder::default()
        .ip_or_hostname(conn.host.clone())
        .tcp_port(conn.port)
        .user(Some(conn.user.clone()))
        .pass(password)
        .db_name(Some(conn.database.clone()))
        .prefer_socket(false)
        .init(INIT.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    Conn::new(opts).await.map_err(|source| MySqlError::Connect {
        target: conn.describe(),
        source,
    })
}

/// A table as SQL text, `` `db`.`name` ``.
pub fn quote_table(id: &sluice_core::TableId) -> String {
    format!("{}.{}", quote_ident(&id.schema), quote_ident(&id.name))
}

/// Quotes an identifier for MySQL SQL text.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}
