//! The policy-delegation listener: TCP and UNIX-domain sockets, one task per
//! Postfix connection, requests answered in order on a connection that
//! Postfix keeps open and reuses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use attrelay_policy::model::{Action, Verdict};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::bytes::BytesMut;
use tokio_util::codec::Decoder;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::query::{AcceptAction, Query, action, query};
use super::request::{PolicyRequest, RequestDecoder, RequestError, RequestLimits};
use crate::clock::now;
use crate::evaluation::{Judges, Stage};
use crate::judges::ask;
use crate::smtp::ServerContext;
use crate::throttle::Throttled;

/// Where the policy service listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicydListen {
    /// `inet:host:port` on the Postfix side.
    Tcp(SocketAddr),
    /// `unix:/path` on the Postfix side.
    Unix(PathBuf),
}

impl std::fmt::Display for PolicydListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicydListen::Tcp(a) => write!(f, "{a}"),
            PolicydListen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// `[policyd]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicydSettings {
    pub listen: Vec<PolicydListen>,
    pub accept: AcceptAction,
    /// Connections served at once. A new connection past it closes the
    /// least recently active one (Postfix reconnects when it finds its
    /// cached connection closed), so clients that hold connections cannot
    /// keep Postfix out.
    pub max_connections: usize,
    /// Waiting for the next request on an open connection. Postfix closes
    /// its own idle connections after `smtpd_policy_service_max_idle` (300 s).
    pub idle_timeout: Duration,
    /// From the first byte of a request to its end: Postfix writes a request
    /// at once, so a request that trickles in is a slow client, not Postfix.
    pub request_timeout: Duration,
    pub limits: RequestLimits,
    /// Permissions of UNIX-domain sockets (the Postfix SMTP server's user
    /// must be able to connect).
    pub socket_mode: u32,
    /// The group of UNIX-domain sockets (Postfix's, so that `socket_mode`
    /// 0660 lets it and nobody else connect); `None` keeps the relay's.
    pub socket_group: Option<u32>,
    /// Connections one client may hold at once (a remote TCP client by
    /// its address, a loopback TCP client and a UNIX-socket client by the
    /// user owning its socket): one local user cannot take every
    /// connection, whatever loopback addresses it binds.
    pub max_connections_per_client: usize,
}

impl Default for PolicydSettings {
    fn default() -> Self {
        PolicydSettings {
            listen: Vec::new(),
            accept: AcceptAction::Ok,
            max_connections: 256,
            // Short: an idle connection holds a slot, and Postfix reconnects
            // when it finds its cached connection closed.
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            limits: RequestLimits::default(),
            socket_mode: 0o660,
            socket_group: None,
            max_connections_per_client: 64,
        }
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// The policy service's sockets, bound before the rest of the relay is
/// set up (and before it gives up root, `privileges.rs`).
pub struct PolicydListeners(Vec<Listener>);

/// The bound policy service.
pub struct PolicyServer {
    ctx: Arc<ServerContext>,
    settings: Arc<PolicydSettings>,
    listeners: Vec<Listener>,
}

/// Why binding failed, with the address in the message.
fn bind_error(what: &PolicydListen, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("policyd: cannot listen on {what}: {e}"))
}

impl PolicyServer {
    /// Binds every `listen` address of `settings` (a UNIX socket with its
    /// mode and group).
    pub async fn listen(settings: &PolicydSettings) -> std::io::Result<PolicydListeners> {
        let mut listeners = Vec::new();
        for l in &settings.listen {
            match l {
                PolicydListen::Tcp(a) => listeners.push(Listener::Tcp(
                    TcpListener::bind(a).await.map_err(|e| bind_error(l, e))?,
                )),
                PolicydListen::Unix(p) => {
                    remove_stale_socket(p).map_err(|e| bind_error(l, e))?;
                    let u = bind_unix(p, settings.socket_mode, settings.socket_group)
                        .map_err(|e| bind_error(l, e))?;
                    listeners.push(Listener::Unix(u, p.clone()));
                }
            }
        }
        Ok(PolicydListeners(listeners))
    }

    /// The service on `listeners`, judging with `ctx`.
    pub fn new(
        ctx: Arc<ServerContext>,
        settings: PolicydSettings,
        listeners: PolicydListeners,
    ) -> PolicyServer {
        PolicyServer {
            ctx,
            settings: Arc::new(settings),
            listeners: listeners.0,
        }
    }

    /// The bound TCP addresses (with the real port when 0 was asked for).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| match l {
                Listener::Tcp(t) => t.local_addr().ok(),
                Listener::Unix(..) => None,
            })
            .collect()
    }

    /// Serves until shutdown. Connections in flight finish the request they
    /// are answering and are then closed; Postfix reconnects elsewhere.
    pub async fn run(self) {
        let tracker = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(self.settings.max_connections));
        let per_client = Arc::new(PerClient::default());
        let live = Arc::new(Connections::default());
        let mut accepting = Vec::new();
        for listener in self.listeners {
            let (ctx, settings, tracker, slots, per_client, live) = (
                self.ctx.clone(),
                self.settings.clone(),
                tracker.clone(),
                slots.clone(),
                per_client.clone(),
                live.clone(),
            );
            accepting.push(tokio::spawn(async move {
                let (mut failures, mut refusals) = (Throttled::default(), Throttled::default());
                loop {
                    let accepted = tokio::select! {
                        r = accept(&listener) => r,
                        _ = ctx.shutdown.cancelled() => break,
                    };
                    let (stream, peer, client) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            failures.warn("policyd: accept failed", &e);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    // A client at its share that opens another gives up
                    // its own quietest connection (Postfix's new connection
                    // replaces its idle one); with none to give up, it is
                    // refused.
                    let max_own = settings.max_connections_per_client;
                    let client_slot = per_client.acquire(&client, max_own);
                    let own_room = client_slot.is_none();
                    if own_room {
                        if !live.close_least_recent(Some(&client)) {
                            refusals.warn(
                                "policyd: connection limit of one client reached; closing",
                                &client,
                            );
                            continue;
                        }
                        ctx.metrics.policyd_evicted.inc();
                    }
                    // A full service makes room in the connection's own
                    // task: the accept loop never waits for it.
                    let free = slots.clone().try_acquire_owned().ok();
                    if free.is_none() && !own_room && live.close_least_recent(None) {
                        ctx.metrics.policyd_evicted.inc();
                    }
                    let (ctx, settings, live, slots, per_client) = (
                        ctx.clone(),
                        settings.clone(),
                        live.clone(),
                        slots.clone(),
                        per_client.clone(),
                    );
                    tracker.spawn(async move {
                        let room = async {
                            let client_slot = match client_slot {
                                Some(s) => s,
                                None => loop {
                                    if let Some(s) = per_client.acquire(&client, max_own) {
                                        break s;
                                    }
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                },
                            };
                            let permit = match free {
                                Some(p) => p,
                                None => slots.acquire_owned().await.ok()?,
                            };
                            Some((client_slot, permit))
                        };
                        let Ok(Some(held)) = tokio::time::timeout(EVICTION_WAIT, room).await else {
                            debug!(client = %peer, "policyd: connection limit reached and no room made in time; closing");
                            return;
                        };
                        let (r, w) = stream;
                        let (id, this) = live.add(&client);
                        serve(ctx, settings, r, w, &peer, &this).await;
                        live.remove(id);
                        drop(held);
                    });
                }
                if let Listener::Unix(_, path) = &listener {
                    let _ = std::fs::remove_file(path);
                }
            }));
        }
        self.ctx.shutdown.cancelled().await;
        for a in accepting {
            let _ = a.await;
        }
        tracker.close();
        tracker.wait().await;
    }
}

type Halves = (
    Box<dyn AsyncRead + Send + Unpin>,
    Box<dyn AsyncWrite + Send + Unpin>,
);

/// How long a new connection waits for the one closed to make room.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// The connections being served, with when each last finished a request:
/// which one to close when a new one needs its slot.
#[derive(Default)]
struct Connections {
    next: std::sync::atomic::AtomicU64,
    live: std::sync::Mutex<HashMap<u64, Arc<Activity>>>,
}

/// One connection's last activity (a byte received, an answer sent),
/// whether it is answering a request now, and the signal that closes it.
struct Activity {
    /// The client it counts against (see [`super::peer`]).
    client: String,
    last: std::sync::Mutex<tokio::time::Instant>,
    busy: std::sync::atomic::AtomicBool,
    close: tokio_util::sync::CancellationToken,
}

impl Activity {
    fn touch(&self) {
        if let Ok(mut last) = self.last.lock() {
            *last = tokio::time::Instant::now();
        }
    }

    fn last(&self) -> tokio::time::Instant {
        self.last
            .lock()
            .map(|l| *l)
            .unwrap_or_else(|_| tokio::time::Instant::now())
    }
}

impl Connections {
    fn add(&self, client: &str) -> (u64, Arc<Activity>) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let a = Arc::new(Activity {
            client: client.to_string(),
            last: std::sync::Mutex::new(tokio::time::Instant::now()),
            busy: Default::default(),
            close: tokio_util::sync::CancellationToken::new(),
        });
        if let Ok(mut live) = self.live.lock() {
            live.insert(id, a.clone());
        }
        (id, a)
    }

    fn remove(&self, id: u64) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(&id);
        }
    }

    /// Tells the least recently active connection not already closing (of
    /// `client`, when given) to close — one between requests if there is
    /// any, so that a request being answered (Postfix's, most likely) is
    /// not cut off; whether there was one.
    fn close_least_recent(&self, client: Option<&str>) -> bool {
        use std::sync::atomic::Ordering;
        let Ok(live) = self.live.lock() else {
            return false;
        };
        let open = || {
            live.values()
                .filter(|a| !a.close.is_cancelled())
                .filter(|a| client.is_none_or(|c| a.client == c))
        };
        let oldest = open()
            .filter(|a| !a.busy.load(Ordering::Relaxed))
            .min_by_key(|a| a.last())
            .or_else(|| open().min_by_key(|a| a.last()));
        match oldest {
            Some(a) => {
                a.close.cancel();
                true
            }
            None => false,
        }
    }
}

/// Accepts a connection: its halves, a name for logs, and the client it
/// counts against (see [`super::peer`]).
async fn accept(listener: &Listener) -> std::io::Result<(Halves, String, String)> {
    Ok(match listener {
        Listener::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            let _ = s.set_nodelay(true);
            let local = s.local_addr()?;
            // One exact lookup in the kernel's socket table.
            let client = super::peer::client_of(peer, local);
            let (r, w) = s.into_split();
            ((Box::new(r), Box::new(w)), peer.to_string(), client)
        }
        Listener::Unix(l, path) => {
            let (s, _) = l.accept().await?;
            let client = s
                .peer_cred()
                .map(|c| format!("uid {}", c.uid()))
                .unwrap_or_else(|_| "uid ?".into());
            let (r, w) = s.into_split();
            (
                (Box::new(r), Box::new(w)),
                format!("unix:{} ({client})", path.display()),
                client,
            )
        }
    })
}

/// Binds a UNIX-domain socket at `path` that is never reachable with other
/// permissions than `mode` and `group`: it is bound in a new directory only
/// the relay's user can enter, given its mode and group there, and then
/// renamed into place (a rename is atomic). Binding in place and then
/// changing the mode left a moment in which any local user could connect.
fn bind_unix(path: &Path, mode: u32, group: Option<u32>) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let parent = path.parent().unwrap_or(Path::new("/"));
    let private = parent.join(format!(
        ".attrelay-policyd-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join("socket");
    let bound = (|| {
        let listener = UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(&staged, None, Some(gid))?;
        }
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    bound
}

/// Connections held per client, released when a connection ends.
#[derive(Default)]
struct PerClient {
    counts: std::sync::Mutex<HashMap<String, usize>>,
}

/// One connection's place in [`PerClient`].
struct ClientSlot {
    table: Arc<PerClient>,
    client: String,
}

impl PerClient {
    fn acquire(self: &Arc<Self>, client: &str, max: usize) -> Option<ClientSlot> {
        let mut counts = self.counts.lock().ok()?;
        let n = counts.entry(client.to_string()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            table: self.clone(),
            client: client.to_string(),
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.table.counts.lock()
            && let Some(n) = counts.get_mut(&self.client)
        {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

/// A socket file left by a previous run is removed; anything else at that
/// path is an error (we never delete an operator's file).
fn remove_stale_socket(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "a file that is not a socket is in the way",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// One Postfix connection: requests in, one `action=` per request out,
/// until the client leaves or `activity` says to close — at any point, so
/// that a connection told to close gives its slot back at once, whatever
/// it was doing.
async fn serve(
    ctx: Arc<ServerContext>,
    settings: Arc<PolicydSettings>,
    r: impl AsyncRead + Unpin,
    w: impl AsyncWrite + Unpin,
    peer: &str,
    activity: &Activity,
) {
    tokio::select! {
        _ = requests(&ctx, &settings, r, w, peer, activity) => {}
        _ = activity.close.cancelled() => {
            debug!(client = peer, "policyd: closed to make room for a new connection");
        }
    }
}

/// The requests of one connection, each answered in turn.
async fn requests(
    ctx: &ServerContext,
    settings: &PolicydSettings,
    mut r: impl AsyncRead + Unpin,
    mut w: impl AsyncWrite + Unpin,
    peer: &str,
    activity: &Activity,
) {
    use std::sync::atomic::Ordering;
    let mut decoder = RequestDecoder::new(settings.limits);
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let next = next_request(ctx, settings, &mut decoder, &mut buf, &mut r, activity).await;
        activity.busy.store(true, Ordering::Relaxed);
        let outcome = match next {
            Ok(None) => return,
            Ok(Some(request)) => answer(ctx, settings, &request, peer).await,
            Err(e) => Err(e),
        };
        let action = match outcome {
            Ok(a) => a,
            Err(e) => {
                // The protocol: in case of trouble, log, do not reply, close.
                warn!(client = peer, error = %e, "policyd: bad request; closing the connection");
                ctx.metrics.policyd_errors.inc();
                return;
            }
        };
        ctx.metrics.policyd_requests.inc();
        // Before the answer goes out: whatever the client does after
        // reading it happens later than this.
        activity.touch();
        let reply = format!("action={action}\n\n");
        // A client that does not read its answers holds its slot no longer
        // than a request may take.
        let written =
            tokio::time::timeout(settings.request_timeout, w.write_all(reply.as_bytes())).await;
        if !matches!(written, Ok(Ok(()))) {
            debug!(client = peer, "policyd: client went away or does not read");
            return;
        }
        activity.busy.store(false, Ordering::Relaxed);
        if ctx.shutdown.is_cancelled() {
            return;
        }
    }
}

/// Reads the next request: `None` when the client closed between requests,
/// the idle timeout passed, or the relay is shutting down.
async fn next_request(
    ctx: &ServerContext,
    settings: &PolicydSettings,
    decoder: &mut RequestDecoder,
    buf: &mut BytesMut,
    r: &mut (impl AsyncRead + Unpin),
    activity: &Activity,
) -> Result<Option<PolicyRequest>, RequestError> {
    // The request deadline runs from its first byte, not from when we began
    // waiting: an idle pause before a request is no fault of the request.
    let mut request_started = None;
    loop {
        if let Some(req) = decoder.decode(buf)? {
            return Ok(Some(req));
        }
        let in_request = !buf.is_empty() || decoder.in_request();
        let deadline = if in_request {
            *request_started.get_or_insert_with(tokio::time::Instant::now)
                + settings.request_timeout
        } else {
            tokio::time::Instant::now() + settings.idle_timeout
        };
        let n = tokio::select! {
            n = tokio::time::timeout_at(deadline, r.read_buf(buf)) => match n {
                Ok(n) => n?,
                Err(_) if in_request => {
                    return Err(RequestError::Io(format!(
                        "request not complete within {} s",
                        settings.request_timeout.as_secs()
                    )))
                }
                Err(_) => return Ok(None),
            },
            _ = ctx.shutdown.cancelled(), if !in_request => return Ok(None),
        };
        if n == 0 {
            return decoder.decode_eof(buf);
        }
        activity.touch();
    }
}

/// The `action=` value for one request.
async fn answer(
    ctx: &ServerContext,
    settings: &PolicydSettings,
    request: &PolicyRequest,
    peer: &str,
) -> Result<String, RequestError> {
    let (facts, sender, recipient) = match query(request, &ctx.hostname, now())? {
        Query::Pass { state } => {
            debug!(client = peer, state, "policyd: nothing to decide");
            return Ok("DUNNO".to_string());
        }
        Query::Decide {
            facts,
            sender,
            recipient,
        } => (*facts, sender, recipient),
    };
    // Every request is judged afresh with the evaluation current now, so a
    // reload applies to the next request; MAIL FROM is always asked first,
    // exactly as in an SMTP session.
    let client = facts.client_ip;
    let instance = request.value("instance").to_string();
    let judges = Judges::new(
        ctx.evaluation.load_full(),
        facts,
        &format!("policyd:{peer}"),
    );
    let (judges, v) = ask(
        judges,
        Stage::Mail(sender.clone()),
        sender.clone(),
        &ctx.metrics,
        client,
    )
    .await;
    log_decision(ctx, peer, client, &instance, "mail-from", &sender, &v);
    let (v, rcpt_stage) = match (recipient, judges) {
        (Some(r), Some(judges)) if v.action == Action::Accept => {
            let (_, v) = ask(judges, Stage::Rcpt(r.clone()), sender, &ctx.metrics, client).await;
            log_decision(ctx, peer, client, &instance, "rcpt-to", &r, &v);
            (v, true)
        }
        (r, _) => (v, r.is_some()),
    };
    Ok(action(&v, rcpt_stage, settings.accept))
}

fn log_decision(
    ctx: &ServerContext,
    peer: &str,
    client: std::net::IpAddr,
    instance: &str,
    stage: &str,
    address: &str,
    v: &Verdict,
) {
    ctx.metrics
        .decision(stage, v.reason.as_deref(), v.tenant.as_deref(), v.code);
    info!(
        target: "attrelay::decision",
        front_end = "policyd",
        postfix = peer,
        client = %client,
        instance,
        stage,
        address,
        tenant = v.tenant.as_deref().unwrap_or("-"),
        reply = ?v.reply_line(),
        reason = v.reason.as_deref().unwrap_or("-"),
        "decision"
    );
    if v.reason.as_deref() == Some("policy-failure") {
        warn!(client = %client, why = ?v.explanation, "policy failure");
    }
}
