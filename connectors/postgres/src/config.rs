//! Connection settings for a Postgres server, shared by the source and (later) the sink.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// How to reach a Postgres server. The password is never in the config file itself: it is read
/// from the environment variable named by `password_env`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConnection {
    /// Host name, IP address, or a Unix-socket directory (starting with `/`).
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
    5432
}

impl PostgresConnection {
    /// The password from the environment. `Err` names the missing variable.
    pub fn password(&self) -> Result<Option<SecretString>, String> {
        sluice_core::secret::password_from_env(self.password_env.as_deref())
    }

    /// `user@host:port/database`, for messages: never contains the password.
    pub fn describe(&self) -> String {
        format!(
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )
    }

    pub(crate) fn expose_password(&self) -> Result<String, String> {
        Ok(self
            .password()?
            .map(|p| p.expose_secret().to_owned())
            .unwrap_or_default())
    }
}
