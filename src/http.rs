//! The HTTP API of `sluice run` (`[http] listen = "…"`; off unless configured):
//!
//! - `GET /health/live`: 200 while the process serves requests;
//! - `GET /health/ready`: 200 when every source and sink of this process is running and no
//!   partition has been held longer than `stuck_after_s`, else 503 with the reasons;
//! - `GET /status`: the [`crate::status`] document, as JSON;
//! - `GET /metrics`: Prometheus' text format;
//! - `GET /`: a status page (plain HTML and JavaScript, built into the binary) that reads
//!   `/status` every two seconds.
//!
//! With `[http] token`, every endpoint but `/health/*` wants `Authorization: Bearer <token>`.

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use tokio::sync::watch;

/// `[http]`: the status, health and metrics API.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port` to listen on, e.g. `127.0.0.1:9187`.
    pub listen: String,
    /// A bearer token that every endpoint but `/health/*` requires: `env:VAR`, `file:PATH`
    /// or the token itself. Without it those endpoints are open to whoever reaches `listen`.
    pub token: Option<String>,
    /// How long a partition may wait on a row the target refuses for now (a foreign key, a
    /// file not there yet) before `/health/ready` says the process is stuck. Default 300.
    #[serde(default = "default_stuck_after_s")]
    pub stuck_after_s: u64,
}

fn default_stuck_after_s() -> u64 {
    300
}

/// Shows where the token comes from, never a token written in the config itself.
impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = self.token.as_deref().map(|t| {
            if t.starts_with("env:") || t.starts_with("file:") {
                t
            } else {
                "(set in the config)"
            }
        });
        f.debug_struct("HttpConfig")
            .field("listen", &self.listen)
            .field("token", &token)
            .field("stuck_after_s", &self.stuck_after_s)
            .finish()
    }
}

impl HttpConfig {
    /// What is wrong with the section, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            out.push(format!(
                "http.listen = {:?} is not an address to listen on: write host:port, e.g. \"127.0.0.1:9187\"",
                self.listen
            ));
        }
        if let Some(t) = &self.token {
            if let Err(e) = sluice_core::secret::resolve(t, "http.token") {
                out.push(e);
            }
        }
        out
    }
}

#[derive(Clone)]
struct Api {
    metrics: PrometheusHandle,
    token: Option<std::sync::Arc<SecretString>>,
}

/// Starts the API: binds `listen` (an error names the setting), installs the metrics recorder,
/// and serves until `stop` turns true. Call before anything reports to [`crate::status`]:
/// metrics reported earlier are not recorded.
pub async fn start(cfg: &HttpConfig, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let token = match &cfg.token {
        Some(t) => Some(std::sync::Arc::new(
            sluice_core::secret::resolve(t, "http.token").map_err(anyhow::Error::msg)?,
        )),
        None => None,
    };
    let addr: SocketAddr = cfg
        .listen
        .parse()
        .map_err(|_| anyhow::anyhow!("http.listen = {:?} is not host:port", cfg.listen))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("http.listen = {}: cannot listen there: {e}", cfg.listen))?;
    let metrics = PrometheusBuilder::new()
        .set_buckets(&[
            0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0,
            10000.0,
        ])
        .map_err(|e| anyhow::anyhow!("metrics buckets: {e}"))?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))?;
    crate::status::watch();
    crate::status::set_stuck_after(std::time::Duration::from_secs(cfg.stuck_after_s));
    let api = Api { metrics, token };
    let guarded = Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics_text))
        .route_layer(middleware::from_fn_with_state(api.clone(), bearer));
    let app = Router::new()
        .route("/", get(page))
        .route("/health/live", get(|| async { "live\n" }))
        .route("/health/ready", get(ready))
        .merge(guarded)
        .with_state(api);
    tracing::info!(listen = %addr, "http api listening");
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "the http api stopped");
        }
    });
    Ok(())
}

/// Lets a request through when it carries the configured token (or none is configured).
async fn bearer(State(api): State<Api>, request: Request, next: Next) -> Response {
    if let Some(token) = &api.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(given.as_bytes(), token.expose_secret().as_bytes()) {
            let body = Json(serde_json::json!({
                "error": "this endpoint wants the bearer token of [http] token: Authorization: Bearer <token>"
            }));
            return (StatusCode::UNAUTHORIZED, body).into_response();
        }
    }
    next.run(request).await
}

/// Compares two byte strings in time that depends on their lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The status page: no data of its own (it reads `/status`, with the token when one is set).
async fn page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("status_page.html"))
}

async fn ready() -> Response {
    let reasons = crate::status::not_ready();
    let code = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({ "ready": reasons.is_empty(), "reasons": reasons });
    (code, Json(body)).into_response()
}

async fn status() -> Json<serde_json::Value> {
    Json(crate::status::document())
}

async fn metrics_text(State(api): State<Api>) -> Response {
    crate::status::refresh();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        api.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_token_in_the_config_is_not_printed() {
        let cfg: super::HttpConfig =
            toml::from_str("listen = \"127.0.0.1:1\"\ntoken = \"s3cret-Token\"").expect("parses");
        assert!(!format!("{cfg:?}").contains("s3cret-Token"));
        let cfg: super::HttpConfig =
            toml::from_str("listen = \"127.0.0.1:1\"\ntoken = \"env:T\"").expect("parses");
        assert!(format!("{cfg:?}").contains("env:T"));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abc", b"abd"));
        assert!(!super::same(b"ab", b"abc"));
        assert!(!super::same(b"", b"a"));
    }
}
