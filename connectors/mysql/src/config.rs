//! Connection settings for a MySQL or MariaDB server, shared by the source and the target.

/// How to reach a MySQL/MariaDB server (default port 3306).
pub type MySqlConnection = sluice_core::connection::ServerConnection<3306>;
