//! Secrets in configs: never in the file, read from the environment variable the file names.

use secrecy::SecretString;

/// The password held by the environment variable `password_env` names (`None`: no password).
/// `Err` names the missing variable and the fix.
pub fn password_from_env(password_env: Option<&str>) -> Result<Option<SecretString>, String> {
    match password_env {
        None => Ok(None),
        Some(var) => std::env::var(var)
            .map(|p| Some(SecretString::from(p)))
            .map_err(|_| {
                format!(
                    "environment variable {var} (named by password_env) is not set: export it with the password"
                )
            }),
    }
}
