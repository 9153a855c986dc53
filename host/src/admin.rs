//! The operations endpoint: `GET /metrics` (Prometheus), `GET /status`
//! (JSON), `POST /reload`. It listens on loopback by default and has no
//! authentication of its own: whoever can reach it can reload the relay, so
//! it belongs on loopback or a management network only (docs/SECURITY.md).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::smtp::ServerContext;

pub struct Admin {
    pub ctx: Arc<ServerContext>,
    pub reloader: Arc<Reloader>,
    pub metrics: Arc<Metrics>,
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

impl Admin {
    fn refresh_queue_gauges(&self) {
        let (size, oldest) = self.ctx.queue.contents();
        self.metrics.queue_size.set(size as i64);
        self.metrics
            .queue_oldest_age
            .set(oldest.map(|t| crate::spool::now() - t).unwrap_or(0));
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let ok = |ct: &str, b: String| Ok(respond(StatusCode::OK, ct, b));
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => {
                self.refresh_queue_gauges();
                ok(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    self.metrics.render(),
                )
            }
            (&Method::GET, "/status") => {
                let eval = self.ctx.evaluation.load();
                let body = serde_json::json!({
                    "hostname": self.ctx.hostname,
                    "generation": eval.generation,
                    "policy": eval.policy.origin(),
                    "sha256": eval.policy.sha256(),
                    "tenants": eval.directory.tenant_count(),
                    "tenant_policies": eval.tenant_policies.keys().collect::<Vec<_>>(),
                    "shadow": eval.shadow.as_ref().map(|s| s.origin()),
                    "queue": self.ctx.queue.contents().0,
                    "sessions_active": self.metrics.sessions_active.get(),
                });
                ok("application/json", format!("{body}\n"))
            }
            (&Method::POST, "/reload") => {
                let reloader = self.reloader.clone();
                match tokio::task::spawn_blocking(move || reloader.reload()).await {
                    Ok(Ok(outcome)) => ok(
                        "application/json",
                        format!("{}\n", serde_json::to_string(&outcome).unwrap_or_default()),
                    ),
                    Ok(Err(e)) => Ok(respond(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "application/json",
                        format!("{}\n", serde_json::json!({ "error": e })),
                    )),
                    Err(e) => Ok(respond(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        format!("{e}\n"),
                    )),
                }
            }
            (&Method::GET, "/queue") => {
                let spool = self.ctx.spool.clone();
                match tokio::task::spawn_blocking(move || crate::spool::listing(&spool)).await {
                    Ok(entries) => ok(
                        "application/json",
                        format!("{}\n", serde_json::to_string(&entries).unwrap_or_default()),
                    ),
                    Err(e) => Ok(respond(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        format!("{e}\n"),
                    )),
                }
            }
            (&Method::POST, "/queue/flush") => {
                let n = self.ctx.queue.flush();
                ok(
                    "application/json",
                    format!("{}\n", serde_json::json!({ "flushed": n })),
                )
            }
            (_, "/metrics" | "/status" | "/reload" | "/queue" | "/queue/flush") => Ok(respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "method not allowed\n".into(),
            )),
            _ => Ok(respond(
                StatusCode::NOT_FOUND,
                "text/plain",
                "try GET /metrics, /status, /queue or POST /reload, /queue/flush\n".into(),
            )),
        }
    }

    /// Serves until shutdown; returns the bound address.
    pub async fn serve(
        self: Arc<Self>,
        addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("admin endpoint: cannot listen on {addr}: {e}"),
            )
        })?;
        let local = listener.local_addr()?;
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(e) => { warn!(error = %e, "admin accept failed"); continue; } },
                    _ = shutdown.cancelled() => return,
                };
                let admin = self.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| admin.clone().handle(req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(local)
    }
}
