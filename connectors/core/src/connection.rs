//! How to reach a database server: the settings every SQL connector (source or target) shares.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::tls::{SslMode, TlsSettings};
use crate::TableId;

/// A server's address, user, database, where its password comes from and how TLS is used;
/// `PORT` is the kind's default port (Postgres 5432, MySQL/MariaDB 3306). The password is
/// never in the config file itself: it is read from the environment variable named by
/// `password_env`, or from the file named by `password_file` (a Docker or Kubernetes secret).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConnection<const PORT: u16> {
    /// Host name, IP address, or (Postgres) a Unix-socket directory (starting with `/`).
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port::<PORT>")]
    pub port: u16,
    pub user: String,
    /// Name of the environment variable that holds the password (none: no password).
    #[serde(default)]
    pub password_env: Option<String>,
    /// A file whose content is the password (one trailing newline is ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    pub database: String,
    /// `disable`, `prefer` (default), `require`, `verify-ca` or `verify-full`, as libpq means
    /// them (see [`crate::tls`]); `verify-full` is the one that stops a man in the middle.
    #[serde(default)]
    pub sslmode: SslMode,
    /// PEM file of the CA certificates the server's certificate must chain to (the verifying
    /// modes; without it, the system's CA store).
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// PEM file of a client certificate, for servers that ask for one; with `sslkey`.
    #[serde(default)]
    pub sslcert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[serde(default)]
    pub sslkey: Option<PathBuf>,
}

fn default_host() -> String {
    "127.0.0.1".into()
}

fn default_port<const PORT: u16>() -> u16 {
    PORT
}

impl<const PORT: u16> ServerConnection<PORT> {
    /// The password, from the environment or a file. `Err` names what is missing.
    pub fn password(&self) -> Result<Option<SecretString>, String> {
        crate::secret::password(self.password_env.as_deref(), self.password_file.as_deref())
    }

    /// The TLS settings.
    pub fn tls(&self) -> TlsSettings {
        TlsSettings {
            mode: self.sslmode,
            root_cert: self.sslrootcert.clone(),
            client_cert: self.sslcert.clone(),
            client_key: self.sslkey.clone(),
        }
    }

    /// The password as the client library takes it. Never log or print it.
    pub fn expose_password(&self) -> Result<Option<String>, String> {
        Ok(self.password()?.map(|p| p.expose_secret().to_owned()))
    }

    /// `user@host:port/database`, for messages: never contains the password.
    pub fn describe(&self) -> String {
        format!(
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )
    }

    /// On servers whose databases are schemas (MySQL/MariaDB), the database a configured table
    /// lives in: `public` (the default schema of a table name without one) means this
    /// connection's database.
    pub fn database_of<'a>(&'a self, table: &'a TableId) -> &'a str {
        if table.schema == "public" {
            &self.database
        } else {
            &table.schema
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_default_port_and_unknown_fields_are_refused() {
        let pg: ServerConnection<5432> =
            serde_json::from_str(r#"{"user":"u","database":"d"}"#).expect("parses");
        assert_eq!((pg.host.as_str(), pg.port), ("127.0.0.1", 5432));
        let my: ServerConnection<3306> =
            serde_json::from_str(r#"{"user":"u","database":"d","port":3307}"#).expect("parses");
        assert_eq!(my.port, 3307);
        assert_eq!(my.describe(), "u@127.0.0.1:3307/d");
        let bad = serde_json::from_str::<ServerConnection<5432>>(
            r#"{"user":"u","database":"d","pasword_env":"X"}"#,
        );
        let e = bad.expect_err("a misspelt field is refused");
        assert!(e.to_string().contains("pasword_env"));
    }
}
