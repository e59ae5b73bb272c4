//! Connection settings for a Postgres server, shared by the source and the target.

/// How to reach a Postgres server (default port 5432).
pub type PostgresConnection = sluice_core::connection::ServerConnection<5432>;
