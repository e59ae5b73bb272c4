//! A private single-node garage (an S3-compatible object store) with one key and one bucket.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{end_child, free_port, require_binary, TempDir};

const GARAGE_INSTALL: &str =
    "cargo install garage --version 2.5.0 --locked --no-default-features --features bundled-libs,sqlite";

pub const ACCESS_KEY: &str = "GK0123456789abcdef01234567";
pub const SECRET_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
pub const REGION: &str = "garage";

pub struct Garage {
    dir: TempDir,
    binary: PathBuf,
    child: Option<Child>,
    s3_port: u16,
    admin_port: u16,
    pub bucket: String,
}

impl Garage {
    /// Starts a node with bucket `bucket`, the key [`ACCESS_KEY`] / [`SECRET_KEY`] allowed on it.
    pub fn start(bucket: &str) -> Garage {
        let binary = require_binary("garage", &[], GARAGE_INSTALL);
        let dir = TempDir::new("garage");
        let (rpc, s3_port, admin_port) = (free_port(), free_port(), free_port());
        let config = format!(
            "metadata_dir = \"{d}/meta\"\n\
             data_dir = \"{d}/data\"\n\
             db_engine = \"sqlite\"\n\
             replication_factor = 1\n\
             rpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_secret = \"{secret}\"\n\n\
             [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\nroot_domain = \".s3.garage.localhost\"\n\n\
             [admin]\napi_bind_addr = \"127.0.0.1:{admin_port}\"\nadmin_token = \"sluice-test-admin\"\n",
            d = dir.path().display(),
            secret = SECRET_KEY,
        );
        std::fs::write(dir.path().join("garage.toml"), config).expect("garage config");
        let mut g = Garage {
            dir,
            binary,
            child: None,
            s3_port,
            admin_port,
            bucket: bucket.to_owned(),
        };
        g.spawn();
        g
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("garage.log"))
            .expect("garage log");
        let child = Command::new(&self.binary)
            .args(["-c"])
            .arg(self.dir.path().join("garage.toml"))
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", ACCESS_KEY)
            .env("GARAGE_DEFAULT_SECRET_KEY", SECRET_KEY)
            .env("GARAGE_DEFAULT_BUCKET", &self.bucket)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn garage");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.healthy() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                let log =
                    std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default();
                panic!("garage exited ({status}):\n{log}");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("garage did not become healthy in 30 s");
    }

    /// Whether the admin API says the node is up (and the S3 port answers).
    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.admin_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        (out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200"))
            && TcpStream::connect(("127.0.0.1", self.s3_port)).is_ok()
    }

    /// Stops the node (its data stays), e.g. to make the store unavailable for a while.
    pub fn stop(&mut self) {
        end_child(&mut self.child, false);
    }

    /// Starts the stopped node again, on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The running node's process id (0 when stopped), e.g. to read its CPU time.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// A `[stores.<name>]` section for Sluice's config (credentials from the environment
    /// variables [`Garage::env`] sets).
    pub fn store_section(&self, name: &str, extra: &str) -> String {
        format!(
            "[stores.{name}]\nendpoint = \"{}\"\nregion = \"{REGION}\"\nbucket = \"{}\"\npath_style = true\n{extra}\n",
            self.endpoint(),
            self.bucket
        )
    }

    /// The environment Sluice reads the credentials from (the default variable names).
    pub fn env() -> [(&'static str, &'static str); 2] {
        [
            ("SLUICE_S3_ACCESS_KEY_ID", ACCESS_KEY),
            ("SLUICE_S3_SECRET_ACCESS_KEY", SECRET_KEY),
        ]
    }

    /// An S3 client for checking what the bucket holds.
    pub fn client(&self) -> aws_sdk_s3::Client {
        let creds =
            aws_sdk_s3::config::Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test");
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(REGION))
            .credentials_provider(creds)
            .force_path_style(true)
            .endpoint_url(self.endpoint())
            .http_client(http)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Every object key in the bucket.
    pub async fn keys(&self) -> Vec<String> {
        let client = self.client();
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = client
                .list_objects_v2()
                .bucket(&self.bucket)
                .set_continuation_token(token)
                .send()
                .await
                .expect("list objects");
            out.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            match page.next_continuation_token() {
                Some(t) => token = Some(t.to_owned()),
                None => break,
            }
        }
        out.sort();
        out
    }

    /// An object's bytes and its `sha256` metadata, or `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Option<(Vec<u8>, Option<String>)> {
        let out = self
            .client()
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .ok()?;
        let sha = out.metadata().and_then(|m| m.get("sha256")).cloned();
        let bytes = out.body.collect().await.ok()?.into_bytes().to_vec();
        Some((bytes, sha))
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
