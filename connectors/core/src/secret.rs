//! Secrets in configs: never in the file itself. The file names an environment variable
//! (`password_env`) or a file (`password_file`, e.g. a mounted Docker or Kubernetes secret)
//! that holds the secret, and the secret is read when a connection is made.

use std::path::Path;

use secrecy::SecretString;

/// The password that `password_env` or `password_file` points to (`None`: no password). `Err`
/// names the setting, what is missing and the fix; it never contains the secret.
pub fn password(
    password_env: Option<&str>,
    password_file: Option<&Path>,
) -> Result<Option<SecretString>, String> {
    match (password_env, password_file) {
        (Some(_), Some(_)) => Err(
            "password_env and password_file are both set: keep the one that holds the password"
                .into(),
        ),
        (Some(var), None) => std::env::var(var)
            .map(|p| Some(SecretString::from(p)))
            .map_err(|_| {
                format!(
                    "environment variable {var} (named by password_env) is not set: export it with the password"
                )
            }),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|p| {
                let p = p.strip_suffix('\n').unwrap_or(&p);
                let p = p.strip_suffix('\r').unwrap_or(p);
                Some(SecretString::from(p.to_owned()))
            })
            .map_err(|e| {
                format!(
                    "password_file {}: {e}: point it at a readable file that holds the password",
                    path.display()
                )
            }),
        (None, None) => Ok(None),
    }
}

/// A secret's value: from the environment variable named after `env:`, the file named after
/// `file:`, or the text itself (for a value that is not secret). `what` names the setting in
/// errors; an error never contains the value.
pub fn resolve(value: &str, what: &str) -> Result<SecretString, String> {
    if let Some(var) = value.strip_prefix("env:") {
        password(Some(var), None)
            .map_err(|_| format!("{what}: environment variable {var} is not set: export it"))?
            .ok_or_else(|| format!("{what}: no value"))
    } else if let Some(path) = value.strip_prefix("file:") {
        password(None, Some(Path::new(path)))
            .map_err(|e| format!("{what}: {e}"))?
            .ok_or_else(|| format!("{what}: no value"))
    } else {
        Ok(SecretString::from(value.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn a_password_file_is_read_without_its_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("sluice-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("pw");
        std::fs::write(&file, "s3cr3t-value\n").expect("write");
        let p = password(None, Some(&file)).expect("read").expect("some");
        assert_eq!(p.expose_secret(), "s3cr3t-value");
        let r = resolve(&format!("file:{}", file.display()), "x").expect("read");
        assert_eq!(r.expose_secret(), "s3cr3t-value");
        let missing = password(None, Some(&dir.join("nope"))).expect_err("missing");
        assert!(missing.starts_with("password_file "), "{missing}");
        assert!(password(Some("A"), Some(&file)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn errors_never_carry_the_value() {
        let e =
            resolve("env:SLUICE_TEST_SURELY_UNSET_VAR", "kafka.sasl.password").expect_err("unset");
        assert!(e.contains("kafka.sasl.password") && e.contains("SLUICE_TEST_SURELY_UNSET_VAR"));
    }
}
