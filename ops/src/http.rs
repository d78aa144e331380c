//! The small HTTP listener both binaries run when asked (`--http-addr`): `/healthz` (liveness),
//! `/readyz` (readiness) and `/metrics` (Prometheus text). Probes read state the process keeps
//! anyway; no handler talks to the broker, so a scrape or a probe costs microseconds and a
//! probe cannot hang on a broker that hangs.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// A probe's answer: healthy or not, and a line saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// 200 when true, 503 when false.
    pub ok: bool,
    /// The response body (one line).
    pub detail: String,
}

impl Verdict {
    /// Healthy, because of `detail`.
    pub fn ok(detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            detail: detail.into(),
        }
    }

    /// Unhealthy, because of `detail`.
    pub fn failing(detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// What the endpoints ask the process.
pub trait Probes: Send + Sync + 'static {
    /// Liveness: is the process making progress (or idle by choice)?
    fn live(&self) -> Verdict;
    /// Readiness: is it connected and doing its work?
    fn ready(&self) -> Verdict;
    /// Called before each `/metrics` render, to set gauges that are cheap to read now.
    fn before_scrape(&self) {}
}

/// The listener could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The address is not `host:port`.
    #[error("--http-addr {addr:?}: not a host:port address ({reason})")]
    Address {
        /// As given.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Binding failed (in use, not permitted).
    #[error("--http-addr {addr}: cannot listen: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A bound listener, not yet serving. Binding happens at startup (outside the runtime) so a
/// taken port is a configuration error, reported before anything connects.
#[derive(Debug)]
pub struct Listener {
    inner: std::net::TcpListener,
}

impl Listener {
    /// Binds `addr` (`host:port`; port 0 picks a free one).
    pub fn bind(addr: &str) -> Result<Self, HttpError> {
        let bad = |reason: String| HttpError::Address {
            addr: addr.to_owned(),
            reason,
        };
        let resolved = addr
            .to_socket_addrs()
            .map_err(|e| bad(e.to_string()))?
            .next()
            .ok_or_else(|| bad("it resolves to no address".into()))?;
        let inner = std::net::TcpListener::bind(resolved).map_err(|source| HttpError::Bind {
            addr: resolved,
            source,
        })?;
        inner
            .set_nonblocking(true)
            .map_err(|source| HttpError::Bind {
                addr: resolved,
                source,
            })?;
        Ok(Self { inner })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.local_addr().ok()
    }

    /// Serves the endpoints until `stop` fires. Call inside a tokio runtime.
    pub fn serve(
        self,
        probes: Arc<dyn Probes>,
        metrics: Option<PrometheusHandle>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let addr = self.local_addr();
        let app = router(probes, metrics);
        tokio::spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(self.inner) {
                Ok(l) => l,
                Err(e) => {
                    error!(error = %e, "cannot serve /healthz, /readyz and /metrics");
                    return;
                }
            };
            if let Some(addr) = addr {
                info!("serving /healthz, /readyz and /metrics on http://{addr}");
            }
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                error!(error = %e, "the health and metrics listener stopped");
            }
        })
    }
}

#[derive(Clone)]
struct App {
    probes: Arc<dyn Probes>,
    metrics: Option<PrometheusHandle>,
}

fn router(probes: Arc<dyn Probes>, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(App { probes, metrics })
}

fn answer(v: Verdict) -> Response {
    let status = if v.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, format!("{}\n", v.detail)).into_response()
}

async fn healthz(State(app): State<App>) -> Response {
    answer(app.probes.live())
}

async fn readyz(State(app): State<App>) -> Response {
    answer(app.probes.ready())
}

async fn render_metrics(State(app): State<App>) -> Response {
    let Some(handle) = &app.metrics else {
        return (StatusCode::NOT_FOUND, "metrics are off\n").into_response();
    };
    app.probes.before_scrape();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Probes for Flag {
        fn live(&self) -> Verdict {
            if self.0.load(Ordering::Relaxed) {
                Verdict::ok("alive")
            } else {
                Verdict::failing("stuck")
            }
        }
        fn ready(&self) -> Verdict {
            Verdict::ok("ready")
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn probes_answer_200_or_503_and_unknown_paths_404() {
        let flag = Arc::new(Flag::default());
        let listener = Listener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let served = listener.serve(flag.clone(), None, stop.clone());
        let stuck = get(addr, "/healthz").await;
        assert!(stuck.starts_with("HTTP/1.1 503"), "{stuck}");
        assert!(stuck.ends_with("stuck\n"), "{stuck}");
        flag.0.store(true, Ordering::Relaxed);
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.ends_with("ready\n"));
        assert!(get(addr, "/metrics").await.starts_with("HTTP/1.1 404"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        stop.cancel();
        served.await.expect("stops");
    }

    #[test]
    fn bad_addresses_are_configuration_errors() {
        assert!(matches!(
            Listener::bind("no-port"),
            Err(HttpError::Address { .. })
        ));
        let taken = Listener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr").to_string();
        assert!(matches!(Listener::bind(&addr), Err(HttpError::Bind { .. })));
    }
}
