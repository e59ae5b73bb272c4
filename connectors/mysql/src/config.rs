//! Connection settings for a MySQL or MariaDB server.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// How to reach a MySQL/MariaDB server. The password is read from the environment variable
/// named by `password_env`, never from the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MySqlConnection {
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub user: String,
    /// Name of the environment variable that holds the password (none: no password).
    #[serde(default)]
    pub password_env: Option<String>,
    pub database: String,
}

fn default_host() -> String {
    "127.0.0.1".into()
}

fn default_port() -> u16 {
    3306
}

impl MySqlConnection {
    /// The password from the environment. `Err` names the missing variable.
    pub fn password(&self) -> Result<Option<SecretString>, String> {
        sluice_core::secret::password_from_env(self.password_env.as_deref())
    }

    /// The database a configured table lives in: `public` (the default schema of a table
    /// name without one) means this connection's database.
    pub fn database_of<'a>(&'a self, table: &'a sluice_core::TableId) -> &'a str {
        if table.schema == "public" {
            &self.database
        } else {
            &table.schema
        }
    }

    /// `user@host:port/database`, for messages: never contains the password.
    pub fn describe(&self) -> String {
        format!(
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )
    }

    pub(crate) fn expose_password(&self) -> Result<Option<String>, String> {
        Ok(self.password()?.map(|p| p.expose_secret().to_owned()))
    }
}
