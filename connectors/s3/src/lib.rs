//! Sluice's S3 connector: one S3-compatible bucket (AWS S3, DigitalOcean Spaces, MinIO,
//! garage) with its `[stores.<name>]` config: verified uploads (single or multipart), heads,
//! deletes, listing and URLs.

use std::time::Duration;

use aws_runtime::auth::PayloadSigningOverride;
use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_s3::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RuntimeComponents,
};
use aws_sdk_s3::error::BoxError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// An object as the bucket describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub size: u64,
    /// The hex SHA-256 Sluice stored in the object's metadata (absent for objects it did not
    /// upload).
    pub sha256: Option<String>,
}

/// An object's bytes: in memory, or a large file that is read one part at a time while it goes
/// up, so that it is never held whole.
#[derive(Debug)]
pub enum Body {
    Memory(Vec<u8>),
    /// A file whose SHA-256 a first pass computed. Its parts are hashed again as they are
    /// read, so a file changed between the two passes fails the upload instead of storing
    /// bytes that do not match the recorded hash.
    File {
        path: std::path::PathBuf,
        size: u64,
    },
}

impl Body {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> u64 {
        match self {
            Body::Memory(b) => b.len() as u64,
            Body::File { size, .. } => *size,
        }
    }
}

/// A bucket, with the settings of its `[stores.<name>]`.
#[derive(Clone)]
pub struct Store {
    pub name: String,
    client: Client,
    bucket: String,
    public_url: Option<String>,
    pub presign_ttl: Duration,
    pub concurrency: usize,
    /// Uploads in flight, shared by every clone (one sink's workers): the store sees at most
    /// `concurrency` at once from a sink.
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    multipart_threshold: u64,
    part_size: u64,
    pub prefix: String,
}

/// Why a store operation failed: the message names the store, the bucket and the key.
#[derive(Debug, thiserror::Error)]
#[error("object store {store} (bucket {bucket}): {action} {key}: {message}")]
pub struct StoreError {
    pub store: String,
    pub bucket: String,
    pub action: &'static str,
    pub key: String,
    pub message: String,
}

impl Store {
    /// Builds the client. Credentials come from the environment variables the config names;
    /// a missing one is an error naming it.
    pub fn new(name: &str, cfg: &StoreConfig) -> Result<Store, String> {
        let var = |v: &str| {
            std::env::var(v).map_err(|_| {
                format!("stores.{name}: environment variable {v} is not set (it holds the store's credentials; the setting is {})",
                    if v == cfg.access_key_id_env { "access_key_id_env" } else { "secret_access_key_env" })
            })
        };
        let credentials = Credentials::new(
            var(&cfg.access_key_id_env)?,
            var(&cfg.secret_access_key_env)?,
            None,
            None,
            "sluice-environment",
        );
        use aws_smithy_http_client::tls;
        let mut trust = tls::TrustStore::default();
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                format!(
                    "stores.{name}.ca_file = {}: {e}: point it at the CA's PEM file",
                    ca.display()
                )
            })?;
            trust = trust.with_pem_certificate(pem);
        }
        let context = tls::TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|e| format!("stores.{name}.ca_file: {e}"))?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .tls_context(context)
            .build_https();
        let retry = aws_sdk_s3::config::retry::RetryConfig::standard()
            .with_max_attempts(4)
            .with_initial_backoff(Duration::from_millis(200))
            .with_max_backoff(Duration::from_secs(5));
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            // A stalled request is given up and retried, not waited on for minutes.
            .read_timeout(Duration::from_secs(20))
            .operation_attempt_timeout(Duration::from_secs(60))
            .build();
        let mut builder = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(cfg.path_style)
            .http_client(http)
            .retry_config(retry)
            .timeout_config(timeouts);
        if let Some(endpoint) = &cfg.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        Ok(Store {
            name: name.to_owned(),
            client: Client::from_conf(builder.build()),
            bucket: cfg.bucket.clone(),
            public_url: cfg.public_url.clone(),
            presign_ttl: Duration::from_secs(cfg.presign_ttl_s),
            concurrency: cfg.upload_concurrency.max(1),
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(
                cfg.upload_concurrency.max(1),
            )),
            multipart_threshold: cfg.multipart_threshold_mb * 1024 * 1024,
            part_size: cfg.multipart_part_mb.max(5) * 1024 * 1024,
            prefix: cfg.prefix.clone(),
        })
    }

    /// Whether URLs are presigned (and so expire).
    pub fn presigns(&self) -> bool {
        self.public_url.is_none()
    }

    fn error(&self, action: &'static str, key: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError {
            store: self.name.clone(),
            bucket: self.bucket.clone(),
            action,
            key: key.to_owned(),
            message: e.to_string(),
        }
    }

    /// Uploads `bytes` as `key`, sending its SHA-256 so that the store verifies what it
    /// received (and keeping the hex form in the object's metadata). Large objects go up in
    /// parts, each verified the same way.
    pub async fn put(
        &self,
        key: &str,
        body: Body,
        sha256_hex: &str,
        content_type: &str,
    ) -> Result<(), StoreError> {
        let _permit = self.permits.acquire().await.ok();
        let bytes = match body {
            Body::Memory(bytes) if bytes.len() as u64 <= self.multipart_threshold => bytes,
            body => {
                return self
                    .put_multipart(key, body, sha256_hex, content_type)
                    .await
            }
        };
        let digest: Vec<u8> = (0..sha256_hex.len() / 2)
            .filter_map(|i| u8::from_str_radix(&sha256_hex[2 * i..2 * i + 2], 16).ok())
            .collect();
        let checksum = base64::engine::general_purpose::STANDARD.encode(digest);
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .metadata("sha256", sha256_hex)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(&checksum)
            .body(ByteStream::from(bytes))
            .customize()
            .interceptor(ChecksumSignsBody)
            .send()
            .await
            .map_err(|e| self.error("uploading", key, sdk_message(&e)))?;
        if let Some(echo) = out.checksum_sha256() {
            if echo != checksum {
                return Err(self.error(
                    "uploading",
                    key,
                    format!("the store computed SHA-256 {echo}, not {checksum}"),
                ));
            }
        }
        Ok(())
    }

    /// Objects above this size (`multipart_threshold_mb`) go up in parts; files larger than
    /// that are read from disk one part at a time (see [`Body::File`]).
    pub fn stream_above(&self) -> u64 {
        self.multipart_threshold
    }

    async fn put_multipart(
        &self,
        key: &str,
        body: Body,
        sha256_hex: &str,
        content_type: &str,
    ) -> Result<(), StoreError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .metadata("sha256", sha256_hex)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|e| self.error("starting the multipart upload of", key, sdk_message(&e)))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let size = body.len();
        let mut parts_of = Parts::new(body).map_err(|e| self.error("reading", key, e))?;
        let result = async {
            let mut parts = Vec::new();
            let part = self.part_size;
            for (i, start) in (0..size).step_by(part as usize).enumerate() {
                let number = i as i32 + 1;
                let bytes = parts_of
                    .read(start, part.min(size - start))
                    .await
                    .map_err(|e| self.error("reading a part of", key, e))?;
                let checksum =
                    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&bytes));
                let out = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .checksum_algorithm(ChecksumAlgorithm::Sha256)
                    .checksum_sha256(&checksum)
                    .body(ByteStream::from(bytes))
                    .customize()
                    .interceptor(ChecksumSignsBody)
                    .send()
                    .await
                    .map_err(|e| self.error("uploading a part of", key, sdk_message(&e)))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_owned))
                        .checksum_sha256(checksum)
                        .build(),
                );
            }
            if let Some(read) = parts_of.finish() {
                if read != sha256_hex {
                    return Err(self.error(
                        "uploading",
                        key,
                        format!("the file changed while it went up (SHA-256 {read}, first read as {sha256_hex}); the batch is retried"),
                    ));
                }
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| {
                    self.error("completing the multipart upload of", key, sdk_message(&e))
                })?;
            // The parts were verified one by one; check the whole by its size and metadata.
            match self.head(key).await? {
                Some(h) if h.size == size => Ok(()),
                other => Err(self.error(
                    "verifying",
                    key,
                    format!(
                        "expected {size} bytes after the multipart upload, found {other:?}"
                    ),
                )),
            }
        }
        .await;
        if result.is_err() {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    /// The object's size and stored SHA-256, or `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<Head>, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(Head {
                size: out.content_length().unwrap_or(0).max(0) as u64,
                sha256: out.metadata().and_then(|m| m.get("sha256")).cloned(),
            })),
            Err(e) => {
                if e.as_service_error().is_some_and(|s| s.is_not_found())
                    || e.raw_response().is_some_and(|r| r.status().as_u16() == 404)
                {
                    Ok(None)
                } else {
                    Err(self.error("reading", key, sdk_message(&e)))
                }
            }
        }
    }

    /// Whether the bucket answers to these credentials (for `sluice check`).
    pub async fn check(&self) -> Result<(), StoreError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| self.error("reaching", "the bucket", sdk_message(&e)))?;
        Ok(())
    }

    /// Deletes the object (deleting one that is gone is not an error).
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error("deleting", key, sdk_message(&e)))?;
        Ok(())
    }

    /// Every object under the store's prefix: key, size and age in seconds.
    pub async fn list(&self) -> Result<Vec<(String, u64, i64)>, StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&self.prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.error("listing", &self.prefix, sdk_message(&e)))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    let modified = o.last_modified().map(|t| t.secs()).unwrap_or(now);
                    out.push((
                        k.to_owned(),
                        o.size().unwrap_or(0).max(0) as u64,
                        now - modified,
                    ));
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated().unwrap_or(false) => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// The URL written into target rows for `key`, and when it expires (unix seconds) if it
    /// is presigned.
    pub async fn url(&self, key: &str) -> Result<(String, Option<i64>), StoreError> {
        if let Some(template) = &self.public_url {
            return Ok((template.replace("{key}", key), None));
        }
        let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(self.presign_ttl)
            .map_err(|e| self.error("presigning", key, e))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| self.error("presigning", key, sdk_message(&e)))?;
        Ok((
            request.uri().to_string(),
            Some(now + self.presign_ttl.as_secs() as i64),
        ))
    }
}

/// Where a multipart upload's parts come from: slices of one buffer (not copies), or reads of
/// a file, hashed as a whole along the way.
enum Parts {
    Memory(bytes::Bytes),
    File {
        file: std::sync::Arc<std::fs::File>,
        whole: Sha256,
    },
}

impl Parts {
    fn new(body: Body) -> Result<Parts, String> {
        Ok(match body {
            Body::Memory(b) => Parts::Memory(bytes::Bytes::from(b)),
            Body::File { path, .. } => Parts::File {
                file: std::sync::Arc::new(
                    std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?,
                ),
                whole: Sha256::new(),
            },
        })
    }

    /// `len` bytes from `start`; parts are read in order.
    async fn read(&mut self, start: u64, len: u64) -> Result<bytes::Bytes, String> {
        match self {
            Parts::Memory(b) => Ok(b.slice(start as usize..(start + len) as usize)),
            Parts::File { file, whole } => {
                let file = file.clone();
                let part = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len as usize];
                    std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf, start).map(|()| buf)
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => {
                        "the file got shorter while it went up".to_owned()
                    }
                    _ => e.to_string(),
                })?;
                whole.update(&part);
                Ok(bytes::Bytes::from(part))
            }
        }
    }

    /// The hex SHA-256 of a file's parts as read (`None` for a buffer).
    fn finish(&self) -> Option<String> {
        match self {
            Parts::Memory(_) => None,
            Parts::File { whole, .. } => Some(hex(&whole.clone().finalize())),
        }
    }
}

/// Signs an upload without a second SHA-256 pass over its body: the SDK would otherwise hash
/// the body for the signature (`x-amz-content-sha256`) although Sluice has hashed it already,
/// and the store would hash it twice to check both. The body stays bound to the signature
/// through the signed `x-amz-checksum-sha256` header, which the store verifies (the scheme
/// AWS's SDKs use over TLS), so one hash on each side checks every byte.
#[derive(Debug)]
struct ChecksumSignsBody;

impl Intercept for ChecksumSignsBody {
    fn name(&self) -> &'static str {
        "ChecksumSignsBody"
    }

    fn modify_before_signing(
        &self,
        _context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(PayloadSigningOverride::UnsignedPayload);
        Ok(())
    }
}

/// The useful part of an SDK error: the service's code and message, or the transport's
/// error chain (never the request, which carries the signature).
fn sdk_message<E, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_s3::error::SdkError;
    match e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            match (err.code(), err.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.to_owned(),
                _ => sluice_core::error_chain(err),
            }
        }
        other => sluice_core::error_chain(other),
    }
}

/// `[stores.<name>]`: an S3-compatible bucket (AWS S3, DigitalOcean Spaces, MinIO, garage).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The service's URL, e.g. `https://nyc3.digitaloceanspaces.com`; default: AWS S3.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Address the bucket in the path (`endpoint/bucket/key`), as MinIO and garage need.
    #[serde(default)]
    pub path_style: bool,
    /// Environment variables holding the credentials (never the values in the file).
    #[serde(default = "default_access_key_env")]
    pub access_key_id_env: String,
    #[serde(default = "default_secret_key_env")]
    pub secret_access_key_env: String,
    /// The URL written into target rows: a template over `{key}` (e.g.
    /// `https://cdn.example.com/{key}`). Without it, a presigned GET URL valid for
    /// `presign_ttl_s`, which Sluice renews in the target rows before it expires.
    pub public_url: Option<String>,
    #[serde(default = "default_presign_ttl_s")]
    pub presign_ttl_s: u64,
    /// Uploads running at once per sink (its workers share them).
    #[serde(default = "default_upload_concurrency")]
    pub upload_concurrency: usize,
    /// Objects larger than this go up in parts of `multipart_part_mb`.
    #[serde(default = "default_multipart_threshold_mb")]
    pub multipart_threshold_mb: u64,
    #[serde(default = "default_multipart_part_mb")]
    pub multipart_part_mb: u64,
    /// Keys Sluice owns start with this: `sluice blobs verify` reports other objects under it
    /// as orphans. Empty: the whole bucket.
    #[serde(default)]
    pub prefix: String,
    /// PEM file of a CA that signed a private endpoint's certificate, trusted besides the
    /// system's CA store.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials are only ever named by their variables; still, keep Debug explicit.
        f.debug_struct("StoreConfig")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("path_style", &self.path_style)
            .field("access_key_id_env", &self.access_key_id_env)
            .field("public_url", &self.public_url)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

fn default_access_key_env() -> String {
    "SLUICE_S3_ACCESS_KEY_ID".into()
}

fn default_secret_key_env() -> String {
    "SLUICE_S3_SECRET_ACCESS_KEY".into()
}

fn default_presign_ttl_s() -> u64 {
    7 * 24 * 3600
}

fn default_upload_concurrency() -> usize {
    16
}

fn default_multipart_threshold_mb() -> u64 {
    16
}

fn default_multipart_part_mb() -> u64 {
    8
}

/// The hex form of a digest.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_changed_between_hashing_and_upload_is_caught() {
        let path = std::env::temp_dir().join(format!("sluice-parts-{}", std::process::id()));
        std::fs::write(&path, b"0123456789").expect("file");
        let first = super::hex(&Sha256::digest(b"0123456789"));
        let read_all = |body| async {
            let mut parts = Parts::new(body).expect("parts");
            let mut got = Vec::new();
            for start in [0, 4, 8] {
                got.extend_from_slice(&parts.read(start, 4.min(10 - start)).await.expect("part"));
            }
            (got, parts.finish())
        };
        let body = || Body::File {
            path: path.clone(),
            size: 10,
        };
        let (got, hash) = read_all(body()).await;
        assert_eq!(got, b"0123456789");
        assert_eq!(
            hash.as_deref(),
            Some(first.as_str()),
            "unchanged: the hashes agree"
        );
        std::fs::write(&path, b"0123X56789").expect("change");
        let (_, hash) = read_all(body()).await;
        assert_ne!(hash.as_deref(), Some(first.as_str()), "changed: caught");
        std::fs::write(&path, b"01234").expect("shorten");
        let mut parts = Parts::new(body()).expect("parts");
        assert!(parts.read(0, 4).await.is_ok());
        assert!(
            parts.read(4, 4).await.is_err(),
            "a shortened file fails its read"
        );
        let _ = std::fs::remove_file(&path);
    }
}
