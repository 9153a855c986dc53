//! The operations endpoint: `GET /metrics` (Prometheus), `GET /status`
//! (JSON), `GET /queue`, `POST /reload`, `POST /queue/flush`, and one
//! message's: `GET /queue/ID`, `DELETE /queue/ID`, `POST
//! /queue/ID/{hold,release,flush,bounce}` (`?reason=` for a bounce).
//!
//! It is not an open door (docs/SECURITY.md):
//! - a request whose `Host` is not `localhost`, `127.0.0.1`, `[::1]` or the
//!   address it arrived on gets `421`, so a web page that rebinds its own
//!   DNS name to the relay's address cannot drive it from a browser;
//! - with `[admin] token_file`, `/reload`, `/queue` and `/queue/flush` need
//!   `Authorization: Bearer <token>` (`/metrics` and `/status` stay open for
//!   Prometheus); without one the endpoint must listen on loopback;
//! - connections are bounded in number, in the time to send a request header
//!   and in their whole life; request bodies are never read;
//! - a failing `accept` (no file descriptors left) backs off and is logged at
//!   most once per [`crate::throttle::WARN_INTERVAL`] instead of spinning.

use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, HOST, HeaderValue, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::delivery::control::{Action, Done, Report};
use crate::metrics::Metrics;
use crate::smtp::ServerContext;
use crate::spool::SpoolId;
use crate::throttle::Throttled;

/// Connections served at once. An operator and a Prometheus server need a
/// handful; the rest are closed as soon as accepted, so a flood cannot
/// exhaust the relay's file descriptors through this port.
pub const MAX_CONNECTIONS: usize = 32;
/// From waiting for a request to having its whole header. It also bounds an
/// idle keep-alive connection (hyper starts it whenever it waits for a head).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection's whole life: then it finishes the request in flight and
/// closes, so keep-alive cannot hold a slot for ever.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// Where the endpoint listens without `[admin] listen`: loopback only.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9725);

/// How much longer a request in flight at the deadline may take (a reload
/// compiling a new component can take a while) before the connection is
/// dropped, answer or not.
pub const IN_FLIGHT_GRACE: Duration = Duration::from_secs(60);
/// hyper's read buffer per connection: requests are a line and a few
/// headers; anything longer gets `431`. (hyper's minimum is 8 KiB.)
const MAX_BUF: usize = 16 * 1024;
/// The pause after the first failed `accept`; it doubles up to
/// [`ACCEPT_PAUSE_MAX`] while failures continue.
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(100);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);
/// Why a request was refused for its `Host`.
const MISDIRECTED: &str =
    "refused: the Host header must be localhost, 127.0.0.1, [::1] or this endpoint's address\n";

/// Why a request was refused for coming from a web page.
const FROM_A_WEB_PAGE: &str =
    "refused: requests from web pages (Origin or Sec-Fetch-Site) are not served here\n";

/// Whether a browser sent `req` on behalf of a web page. A page on any site
/// can make the browser on the relay's host send a "simple" cross-site
/// request (a form's POST, `fetch` in no-cors mode) to 127.0.0.1 with the
/// right `Host`; browsers mark such requests with `Origin` (every cross-site
/// POST) and `Sec-Fetch-Site` (`none` only for what the user typed in the
/// address bar). curl, Prometheus and scripts send neither.
fn from_a_web_page(req: &Request<Incoming>) -> bool {
    let headers = req.headers();
    headers.contains_key(hyper::header::ORIGIN)
        || headers
            .get_all("sec-fetch-site")
            .iter()
            .any(|v| v.as_bytes() != b"none")
}

/// `[admin]`: where the endpoint listens, who may change state, its bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// Required as `Authorization: Bearer` by `/reload`, `/queue` and
    /// `/queue/flush`. `None` is allowed on a loopback listener only.
    pub token: Option<AdminToken>,
    /// Where the token was read from: `attrelay queue` reads it there to
    /// act through the running relay.
    pub token_file: Option<std::path::PathBuf>,
    pub limits: AdminLimits,
}

/// The endpoint's bounds. They are not configuration keys (the defaults suit
/// an endpoint scraped by Prometheus and used by operators); the fields are
/// public so that tests and embedders can tighten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// Connections served at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// See [`HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// See [`CONNECTION_DEADLINE`].
    pub connection_deadline: Duration,
    /// See [`IN_FLIGHT_GRACE`].
    pub in_flight_grace: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
            connection_deadline: CONNECTION_DEADLINE,
            in_flight_grace: IN_FLIGHT_GRACE,
        }
    }
}

/// Whether `ip` is a loopback address (127.0.0.0/8, `::1`, or 127.x mapped
/// into IPv6): only there may the endpoint run without a token.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The admin token. Only its SHA-256 is kept: `Debug` cannot show it, and
/// comparing digests takes the same time wherever two tokens differ and
/// whatever their lengths, so response timing tells an attacker nothing.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

/// Why a token file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token: {0}")]
    Unreadable(#[from] std::io::Error),
    #[error("the file is longer than {max} bytes; it should hold one token", max = AdminToken::MAX_FILE)]
    TooLong,
    #[error(
        "the token has {0} characters; at least {min} are needed (generate one with `openssl rand -hex 32`)",
        min = AdminToken::MIN_LEN
    )]
    TooShort(usize),
    #[error(
        "the token must be printable ASCII without spaces (it is sent in an Authorization header)"
    )]
    NotPrintable,
}

impl AdminToken {
    /// Shorter tokens can be guessed; 16 characters is the floor, not advice.
    pub const MIN_LEN: usize = 16;
    /// A token file is one line; reading is capped so a path like
    /// `/dev/zero` cannot exhaust memory.
    pub const MAX_FILE: usize = 4096;

    /// A token as written in a token file: surrounding whitespace (the final
    /// newline) is ignored.
    pub fn new(text: &str) -> Result<AdminToken, TokenError> {
        let token = text.trim();
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotPrintable);
        }
        if token.len() < Self::MIN_LEN {
            return Err(TokenError::TooShort(token.len()));
        }
        Ok(AdminToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Reads and validates `[admin] token_file`.
    pub fn read(path: &Path) -> Result<AdminToken, TokenError> {
        use std::io::Read as _;
        let mut bytes = Vec::new();
        std::fs::File::open(path)?
            .take(Self::MAX_FILE as u64 + 1)
            .read_to_end(&mut bytes)?;
        if bytes.len() > Self::MAX_FILE {
            return Err(TokenError::TooLong);
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| TokenError::NotPrintable)?;
        AdminToken::new(text)
    }

    /// Whether `presented` is this token, in constant time.
    fn matches(&self, presented: &str) -> bool {
        let other: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digests_equal(&self.digest, &other)
    }
}

/// Compares without an early exit: every byte is looked at.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl PartialEq for AdminToken {
    fn eq(&self, other: &Self) -> bool {
        digests_equal(&self.digest, &other.digest)
    }
}

impl Eq for AdminToken {}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Whether a token file can be read by every user of the machine (who could
/// then use the endpoint): worth a configuration warning.
pub fn readable_by_others(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// Splits `host[:port]` (an IPv6 host in brackets); `None` when malformed.
fn split_host_port(value: &str) -> Option<(&str, Option<u16>)> {
    let host_end = if value.starts_with('[') {
        value.find(']')? + 1
    } else {
        value.find(':').unwrap_or(value.len())
    };
    let (host, rest) = value.split_at(host_end);
    let port = match rest.strip_prefix(':') {
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
        None if rest.is_empty() => None,
        None => return None,
    };
    Some((host, port))
}

/// Whether a `Host` value (or a request URI's authority) names this
/// endpoint, reached at `local`: `localhost`, `127.0.0.1`, `[::1]` or
/// `local`'s IP, with `local`'s port if a port is given. A DNS-rebinding page
/// sends its own name and is refused.
fn host_allowed(value: &str, local: SocketAddr) -> bool {
    let Some((host, port)) = split_host_port(value) else {
        return false;
    };
    if port.is_some_and(|p| p != local.port()) {
        return false;
    }
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let ip = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().map(IpAddr::V6).ok(),
        None => host.parse::<Ipv4Addr>().map(IpAddr::V4).ok(),
    };
    ip.is_some_and(|ip| {
        let ip = ip.to_canonical();
        ip == IpAddr::V4(Ipv4Addr::LOCALHOST)
            || ip == IpAddr::V6(Ipv6Addr::LOCALHOST)
            || ip == local.ip().to_canonical()
    })
}

/// Whether `req` is addressed to this endpoint: exactly one `Host` header
/// naming it, and the URI's authority (absolute form) too if it has one.
/// A request without `Host` (bare HTTP/1.0) is refused: every client that
/// matters (curl, Prometheus, browsers) sends one.
fn addressed_here(req: &Request<Incoming>, local: SocketAddr) -> bool {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host_ok = match (hosts.next(), hosts.next()) {
        (Some(h), None) => h.to_str().is_ok_and(|h| host_allowed(h, local)),
        _ => false,
    };
    host_ok
        && req
            .uri()
            .authority()
            .is_none_or(|a| host_allowed(a.as_str(), local))
}

/// The credentials of an `Authorization: Bearer <token>` value (the scheme
/// is case-insensitive, RFC 7235).
fn bearer(value: &HeaderValue) -> Option<&str> {
    let (scheme, credentials) = value.to_str().ok()?.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
}

/// The requests that need the token: they change state (`/reload`,
/// anything under `/queue`) or show queued senders, recipients and
/// headers (`/queue`). Only `/metrics` and `/status` are open.
fn needs_token(method: &Method, path: &str) -> bool {
    (method == Method::POST && path == "/reload") || path == "/queue" || path.starts_with("/queue/")
}

/// `/queue/ID` → (ID, None); `/queue/ID/ACTION` → (ID, Some(ACTION)).
fn queue_path(path: &str) -> Option<(SpoolId, Option<&str>)> {
    let rest = path.strip_prefix("/queue/")?;
    let (id, action) = match rest.split_once('/') {
        Some((id, action)) => (id, Some(action)),
        None => (rest, None),
    };
    Some((SpoolId::from(id), action))
}

/// The `reason` of a query string (`reason=...`, form-encoded).
fn reason(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "reason")
        .map(|(_, v)| v.into_owned())
}

/// The HTTP status of an action's report.
fn report_status(report: &Report) -> StatusCode {
    match report.result {
        Done::AfterAttempt => StatusCode::ACCEPTED,
        Done::NotQueued => StatusCode::NOT_FOUND,
        Done::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::OK,
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    respond(status, "text/plain", body.to_string())
}

/// `401` with the challenge RFC 6750 asks for.
fn unauthorized() -> Response<Full<Bytes>> {
    let mut r = text(
        StatusCode::UNAUTHORIZED,
        "this request needs Authorization: Bearer <the token in [admin] token_file>\n",
    );
    r.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"attrelay admin\""),
    );
    r
}

/// The pause after a failed `accept`: doubling while failures continue,
/// back to the minimum after a success.
struct AcceptPause(Duration);

impl Default for AcceptPause {
    fn default() -> Self {
        AcceptPause(ACCEPT_PAUSE_MIN)
    }
}

impl AcceptPause {
    fn next(&mut self) -> Duration {
        let pause = self.0;
        self.0 = (pause * 2).min(ACCEPT_PAUSE_MAX);
        pause
    }

    fn reset(&mut self) {
        self.0 = ACCEPT_PAUSE_MIN;
    }
}

/// What `POST /reload` runs: a reload, its outcome as JSON or why it was
/// refused. Given by the relay (`reload::Reloader`), so that the endpoint
/// does not depend on what a reload builds.
pub type ReloadFn = Arc<dyn Fn() -> Result<serde_json::Value, String> + Send + Sync>;

pub struct Admin {
    pub ctx: Arc<ServerContext>,
    pub reload: ReloadFn,
    pub metrics: Arc<Metrics>,
    pub settings: AdminSettings,
    /// The user the relay runs as, named once it has settled
    /// (`crate::privileges`): `/status` shows it without reading
    /// `/etc/passwd` at every scrape.
    pub user: String,
}

impl Admin {
    fn refresh_queue_gauges(&self) {
        let queue = self.ctx.queue.contents();
        self.metrics.queue_size.set(queue.messages as i64);
        self.metrics.queue_held.set(queue.held as i64);
        self.metrics
            .queue_oldest_age
            .set(queue.oldest.map(|t| crate::clock::now() - t).unwrap_or(0));
    }

    /// `/queue/ID...`: one message shown, or an action on it.
    async fn message(
        &self,
        method: &Method,
        id: SpoolId,
        action: Option<&str>,
        query: Option<&str>,
    ) -> Response<Full<Bytes>> {
        let action = match (method, action) {
            (&Method::GET, None) => return self.show(id).await,
            (&Method::DELETE, None) => Action::Delete,
            (&Method::POST, Some(word)) if word != "delete" => {
                match Action::named(word, reason(query).as_deref()) {
                    Some(action) => action,
                    None => {
                        return text(
                            StatusCode::NOT_FOUND,
                            "actions: POST /queue/ID/hold, /release, /flush, /bounce?reason=...; DELETE /queue/ID\n",
                        );
                    }
                }
            }
            _ => {
                return text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "GET or DELETE /queue/ID, POST /queue/ID/ACTION\n",
                );
            }
        };
        // Deleting, holding or returning someone's mail is an operator's
        // act: without a token, every local user (and anything that can be
        // made to send a request from this host) could do it.
        if self.settings.token.is_none() && !matches!(action, Action::Flush) {
            return text(
                StatusCode::FORBIDDEN,
                "deleting, holding, releasing or bouncing a message needs [admin] token_file\n",
            );
        }
        match self.ctx.queue.act(id, action).await {
            Ok(report) => respond(
                report_status(&report),
                "application/json",
                format!("{}\n", serde_json::to_string(&report).unwrap_or_default()),
            ),
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n")),
        }
    }

    /// `GET /queue/ID`: the envelope and the start of the header section.
    async fn show(&self, id: SpoolId) -> Response<Full<Bytes>> {
        let root = self.ctx.spool.root().to_path_buf();
        match tokio::task::spawn_blocking(move || crate::spool::show(&root, &id)).await {
            Ok(Ok(shown)) => respond(
                StatusCode::OK,
                "application/json",
                format!(
                    "{}\n",
                    serde_json::json!({
                        "envelope": shown.envelope,
                        "header": String::from_utf8_lossy(&shown.header),
                    })
                ),
            ),
            Ok(Err(e @ crate::spool::SpoolError::NotQueued { .. })) => {
                text(StatusCode::NOT_FOUND, &format!("{e}\n"))
            }
            Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
        }
    }

    /// Whether the request carries the token, when one is configured.
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.settings.token else {
            return true;
        };
        let mut values = req.headers().get_all(AUTHORIZATION).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => bearer(v).is_some_and(|t| token.matches(t)),
            _ => false,
        }
    }

    /// The answer refusing `req` before it is routed, if it must be refused.
    fn refusal(&self, req: &Request<Incoming>, local: SocketAddr) -> Option<Response<Full<Bytes>>> {
        if !addressed_here(req, local) {
            return Some(text(StatusCode::MISDIRECTED_REQUEST, MISDIRECTED));
        }
        if from_a_web_page(req) {
            return Some(text(StatusCode::FORBIDDEN, FROM_A_WEB_PAGE));
        }
        if needs_token(req.method(), req.uri().path()) && !self.authorized(req) {
            return Some(unauthorized());
        }
        None
    }

    async fn handle(
        self: Arc<Self>,
        local: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        if let Some(refusal) = self.refusal(&req, local) {
            return Ok(refusal);
        }
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        let query = req.uri().query().map(str::to_owned);
        // The body is never needed: dropping it now tells hyper to stop
        // reading it (it drains what is buffered, else closes the connection).
        drop(req);
        Ok(self.route(&method, &path, query.as_deref()).await)
    }

    async fn route(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
    ) -> Response<Full<Bytes>> {
        let ok = |ct: &str, b: String| respond(StatusCode::OK, ct, b);
        match (method, path) {
            (&Method::GET, "/metrics") => {
                self.refresh_queue_gauges();
                ok(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    self.metrics.render(),
                )
            }
            (&Method::GET, "/status") => {
                let eval = self.ctx.evaluation.load();
                let queue = self.ctx.queue.contents();
                let body = serde_json::json!({
                    "hostname": self.ctx.hostname,
                    // Who the relay runs as: root only when `[server] user`
                    // is not set (a warning at start says so too).
                    "user": self.user,
                    "root": crate::privileges::is_root(),
                    "generation": eval.generation,
                    "policy": eval.policy.origin(),
                    "sha256": eval.policy.sha256(),
                    "tenants": eval.directory.tenant_count(),
                    "tenant_policies": eval.tenant_policies.keys().collect::<Vec<_>>(),
                    "shadow": eval.shadow.as_ref().map(|s| s.origin()),
                    "queue": queue.messages,
                    "queue_held": queue.held,
                    "sessions_active": self.metrics.sessions_active.get(),
                });
                ok("application/json", format!("{body}\n"))
            }
            (&Method::POST, "/reload") => {
                let reload = self.reload.clone();
                match tokio::task::spawn_blocking(move || reload()).await {
                    Ok(Ok(outcome)) => ok("application/json", format!("{outcome}\n")),
                    Ok(Err(e)) => respond(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "application/json",
                        format!("{}\n", serde_json::json!({ "error": e })),
                    ),
                    Err(e) => respond(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        format!("{e}\n"),
                    ),
                }
            }
            (&Method::GET, "/queue") => {
                let spool = self.ctx.spool.clone();
                match tokio::task::spawn_blocking(move || spool.entries()).await {
                    Ok(entries) => ok(
                        "application/json",
                        format!("{}\n", serde_json::to_string(&entries).unwrap_or_default()),
                    ),
                    Err(e) => respond(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        format!("{e}\n"),
                    ),
                }
            }
            (&Method::POST, "/queue/flush") => {
                let n = self.ctx.queue.flush();
                ok(
                    "application/json",
                    format!("{}\n", serde_json::json!({ "flushed": n })),
                )
            }
            (_, "/metrics" | "/status" | "/reload" | "/queue" | "/queue/flush") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => match queue_path(path) {
                Some((id, action)) => self.message(method, id, action, query).await,
                None => text(
                    StatusCode::NOT_FOUND,
                    "try GET /metrics, /status, /queue, /queue/ID or POST /reload, /queue/flush\n",
                ),
            },
        }
    }

    /// Binds `settings.listen`. Refuses a listener off loopback without a
    /// token even when the configuration was built in code rather than
    /// parsed.
    pub async fn listen(settings: &AdminSettings) -> std::io::Result<TcpListener> {
        let addr = settings.listen;
        if settings.token.is_none() && !is_loopback(addr.ip()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("admin endpoint: {addr} is not a loopback address and no token is set"),
            ));
        }
        TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("admin endpoint: cannot listen on {addr}: {e}"),
            )
        })
    }

    /// Serves on `listener` (from [`Admin::listen`]) until shutdown;
    /// returns its address.
    pub fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<SocketAddr> {
        let local = listener.local_addr()?;
        tokio::spawn(self.accept_loop(listener, shutdown));
        Ok(local)
    }

    /// Accepts until shutdown: a connection over the limit is closed at
    /// once; a failed `accept` pauses the loop instead of spinning.
    async fn accept_loop(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let limit = self
            .settings
            .limits
            .max_connections
            .min(Semaphore::MAX_PERMITS);
        let slots = Arc::new(Semaphore::new(limit));
        let mut pause = AcceptPause::default();
        let (mut failures, mut refused) = (Throttled::default(), Throttled::default());
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = shutdown.cancelled() => return,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    pause.reset();
                    match slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            tokio::spawn(self.clone().connection(tcp, permit, shutdown.clone()));
                        }
                        // Dropping `tcp` closes it.
                        Err(_) => {
                            refused.warn("admin endpoint: connection limit reached; closing", &peer)
                        }
                    }
                }
                Err(e) => {
                    failures.warn("admin endpoint: accept failed; pausing", &e);
                    tokio::select! {
                        _ = tokio::time::sleep(pause.next()) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Serves one connection, holding its slot (`_permit`) until it ends:
    /// at the deadline or at shutdown the request in flight may finish
    /// within the grace, then the connection is dropped.
    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        _permit: OwnedSemaphorePermit,
        shutdown: CancellationToken,
    ) {
        let Ok(local) = tcp.local_addr() else {
            return;
        };
        let limits = self.settings.limits;
        let service = hyper::service::service_fn(move |req| self.clone().handle(local, req));
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(MAX_BUF);
        let conn = http.serve_connection(TokioIo::new(tcp), service);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tokio::time::sleep(limits.connection_deadline) => {}
            _ = shutdown.cancelled() => {}
        }
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(limits.in_flight_grace, conn).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), 9725);

    #[test]
    fn host_names_this_endpoint_or_loopback_only() {
        for ok in [
            "localhost",
            "LocalHost:9725",
            "127.0.0.1",
            "127.0.0.1:9725",
            "[::1]",
            "[::1]:9725",
            "192.0.2.7",
            "192.0.2.7:9725",
            "[::ffff:192.0.2.7]:9725",
        ] {
            assert!(host_allowed(ok, LOCAL), "{ok} should be allowed");
        }
        for refused in [
            "attacker.example",
            "attacker.example:9725",
            "localhost:80",
            "127.0.0.1:9726",
            "192.0.2.8",
            "::1",
            "[::1",
            "localhost:",
            "localhost:+9725",
            "localhost.",
            "127.0.0.1.nip.io",
            "user@127.0.0.1",
            "",
        ] {
            assert!(!host_allowed(refused, LOCAL), "{refused} should be refused");
        }
    }

    #[test]
    fn tokens_are_checked_and_never_shown() {
        assert!(matches!(
            AdminToken::new("short\n"),
            Err(TokenError::TooShort(5))
        ));
        assert!(matches!(
            AdminToken::new("0123456789 abcdef"),
            Err(TokenError::NotPrintable)
        ));
        let token = AdminToken::new("  0123456789abcdef\n").unwrap();
        assert!(token.matches("0123456789abcdef"));
        assert!(!token.matches("0123456789abcdeF"));
        assert!(!token.matches("0123456789abcdef0"));
        assert_eq!(token, AdminToken::new("0123456789abcdef").unwrap());
        assert!(!format!("{token:?}").contains("0123"));
    }

    #[test]
    fn bearer_credentials() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(bearer(&v("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&v("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&v("Basic abc")), None);
        assert_eq!(bearer(&v("Bearer")), None);
    }

    #[test]
    fn accept_pauses_double_to_a_ceiling() {
        let mut p = AcceptPause::default();
        let seen: Vec<_> = (0..6).map(|_| p.next()).collect();
        assert_eq!(seen[0], ACCEPT_PAUSE_MIN);
        assert_eq!(seen[1], ACCEPT_PAUSE_MIN * 2);
        assert_eq!(seen[5], ACCEPT_PAUSE_MAX);
        p.reset();
        assert_eq!(p.next(), ACCEPT_PAUSE_MIN);
    }
}
