//! TLS to database servers, with libpq's `sslmode` meanings for every SQL connector.
//!
//! | `sslmode` | encrypted | server certificate checked | host name checked | plaintext if the server has no TLS |
//! |---|---|---|---|---|
//! | `disable` | no | – | – | – |
//! | `prefer` (default) | when the server offers it | no | no | yes |
//! | `require` | yes | no | no | no |
//! | `verify-ca` | yes | against `sslrootcert` | no | no |
//! | `verify-full` | yes | against `sslrootcert` | yes | no |
//!
//! Without `sslrootcert`, the verifying modes trust Mozilla's root CAs (as every client
//! library Sluice uses does): a private or cloud CA (RDS, Cloud SQL) needs `sslrootcert`. The
//! rustls configuration built here uses ring.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde::Deserialize;

/// How a connection uses TLS; see the module's table.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate chain is checked.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// A connection's TLS settings (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// PEM file of the CA certificates the server's certificate must chain to.
    pub root_cert: Option<PathBuf>,
    /// PEM files of a client certificate (chain) and its private key, for servers that ask
    /// for one (mutual TLS).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// Makes ring the process's rustls provider, for libraries that build their TLS
/// configuration from the process default (some dependencies compile a second provider in,
/// which leaves no default otherwise). Call once at start.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the certificates of a PEM file. `Err` names the file and the setting.
pub fn read_certs(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{setting} = {}: {e}", path.display()))?
        .collect();
    let certs = certs.map_err(|e| format!("{setting} = {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{setting} = {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file",
            path.display()
        ));
    }
    Ok(certs)
}

impl TlsSettings {
    /// Checks the settings hang together and their files can be read, without connecting.
    pub fn check(&self) -> Result<(), String> {
        self.client_config().map(|_| ())
    }

    /// The rustls configuration of these settings (`None` for `disable`). `Err` names the
    /// setting and the file at fault.
    pub fn client_config(&self) -> Result<Option<ClientConfig>, String> {
        if self.mode == SslMode::Disable {
            return Ok(None);
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS protocol versions: {e}"))?;
        let chain = if self.mode.verifies() {
            let mut roots = RootCertStore::empty();
            match &self.root_cert {
                Some(path) => {
                    for cert in read_certs(path, "sslrootcert")? {
                        roots
                            .add(cert)
                            .map_err(|e| format!("sslrootcert = {}: {e}", path.display()))?;
                    }
                }
                // The same roots the replication stream and the MySQL client trust.
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("sslrootcert: {e}"))?;
            Some(webpki)
        } else {
            None
        };
        let policy = Policy {
            provider: provider(),
            chain,
            names: self.mode == SslMode::VerifyFull,
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(policy));
        match (&self.client_cert, &self.client_key) {
            (None, None) => Ok(Some(builder.with_no_client_auth())),
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert, "sslcert")?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("sslkey = {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map(Some)
                    .map_err(|e| format!("sslcert and sslkey: {e}"))
            }
            _ => Err("sslcert and sslkey go together: set both (the client certificate and its private key) or neither".into()),
        }
    }
}

/// How a server's certificate is judged: `chain` checks it against the roots (none:
/// `prefer` and `require` accept any certificate, as libpq does), `names` also checks that it
/// names the host (`verify-full`). The handshake's signatures are checked in every mode.
#[derive(Debug)]
struct Policy {
    provider: Arc<CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
    names: bool,
}

impl ServerCertVerifier for Policy {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        let verified =
            chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        match verified {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.names => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What to change when a connection failed on TLS, from the error's text (each client
/// library wraps rustls' error its own way). `None` when the failure is not about TLS.
pub fn tls_hint(chain: &str, settings: &TlsSettings) -> Option<String> {
    let mode = settings.mode.as_str();
    if chain.contains("UnknownIssuer") || chain.contains("unknown issuer") {
        let root = match &settings.root_cert {
            Some(p) => format!("the CA file sslrootcert = {}", p.display()),
            None => "the system's CA store (sslrootcert is not set)".to_owned(),
        };
        return Some(format!(
            "the server's certificate is not signed by a CA in {root}: set sslrootcert to the CA file that signed it"
        ));
    }
    if chain.contains("NotValidForName") || chain.contains("not valid for name") {
        return Some(
            "the server's certificate does not name the host it was reached by: set host to a name the certificate holds, or sslmode = \"verify-ca\" to check the CA only".into(),
        );
    }
    if chain.contains("does not support TLS")
        || chain.contains("server does not support SSL")
        || chain.contains("SSLRequest rejected")
        || chain.contains("doesn't support TLS")
        || chain.contains("Server does not support SSL")
        || chain.contains("server does not have this capability")
    {
        return Some(format!(
            "the server does not accept TLS, and sslmode = \"{mode}\" requires it: turn TLS on in the server, or set sslmode = \"prefer\""
        ));
    }
    if chain.contains("CertificateRequired") || chain.contains("certificate required") {
        return Some("the server asks for a client certificate: set sslcert and sslkey".into());
    }
    if chain.contains("invalid peer certificate") {
        return Some(format!(
            "the server's certificate was refused under sslmode = \"{mode}\": check sslrootcert and host"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_as_libpq_spells_them_and_default_to_prefer() {
        #[derive(Deserialize)]
        struct T {
            #[serde(default)]
            m: SslMode,
        }
        let t: T = serde_json::from_str(r#"{"m":"verify-full"}"#).expect("parses");
        assert_eq!(t.m, SslMode::VerifyFull);
        let t: T = serde_json::from_str("{}").expect("parses");
        assert_eq!(t.m, SslMode::Prefer);
        assert!(serde_json::from_str::<T>(r#"{"m":"verify_full"}"#).is_err());
    }

    #[test]
    fn settings_name_the_file_at_fault() {
        let missing = TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: Some("/nonexistent/ca.pem".into()),
            ..TlsSettings::default()
        };
        let e = missing.check().expect_err("refused");
        assert!(e.starts_with("sslrootcert = /nonexistent/ca.pem"), "{e}");
        let half = TlsSettings {
            mode: SslMode::Require,
            client_cert: Some("c.pem".into()),
            ..TlsSettings::default()
        };
        assert!(half.check().expect_err("refused").contains("go together"));
        assert!(TlsSettings::default().check().is_ok());
    }

    #[test]
    fn hints_name_the_setting() {
        let s = TlsSettings {
            mode: SslMode::VerifyFull,
            ..TlsSettings::default()
        };
        let h = tls_hint("invalid peer certificate: UnknownIssuer", &s).expect("hint");
        assert!(h.contains("set sslrootcert"), "{h}");
        let h = tls_hint("certificate not valid for name \"x\"", &s).expect("hint");
        assert!(h.contains("verify-ca"), "{h}");
        assert_eq!(tls_hint("connection refused", &s), None);
    }
}
