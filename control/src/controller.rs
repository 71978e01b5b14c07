//! The controller: a tokio WebSocket server that registers nodes, sends each its configuration
//! (whole on registration, then as diffs), and stores the metrics they report.
//!
//! One dispatcher task reads the store's events and hands each change to the session of the
//! node it concerns, so a change reaches that node only. Each session remembers what it sent;
//! a resync (or a session that fell behind) reloads the node's configuration and sends the
//! difference, so nothing lost in between stays lost. A node that registers again replaces its
//! older session.
//!
//! The controller never trusts a peer: no bearer token, no WebSocket; the first message must be
//! a hello of our protocol version; an oversized, garbled or text frame closes that connection
//! with a reason, is logged and counted, and touches no other session.

use crate::auth::{Auth, NODE_HEADER, Verdict};
use crate::store::{Store, StoreError, StoreEvent};
use futures_util::{SinkExt, StreamExt};
use linerate_proto::{
    self as proto, Capability, Change, Config, ControllerMsg, ErrorMsg, NodeMsg, Refusal,
};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

/// Changes queued per session before it falls back to a resync.
const SESSION_QUEUE: usize = 4096;
/// How soon a resync the store failed is tried again.
const RESYNC_RETRY: Duration = Duration::from_millis(500);
/// Log lines kept in memory for [`ControllerStats::log`].
const LOG_KEPT: usize = 256;

#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Nodes must send `Authorization: Bearer <token>`: one for all, or one per node (then
    /// also `Linerate-Node: <id>`, and the hello must name that node).
    pub auth: Auth,
    /// TLS (`wss://`) when set; plain WebSocket otherwise.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How long a new connection may take to say hello.
    pub hello_timeout: Duration,
    /// The largest WebSocket message accepted from a node.
    pub max_frame: usize,
    /// Connections served at once; more are closed at once (and logged).
    pub max_connections: usize,
    /// A ping goes to every node this often...
    pub ping_every: Duration,
    /// ...and a node silent this long (not even a pong) is dropped.
    pub idle_timeout: Duration,
    /// A node that takes longer than this to take one message is dropped.
    pub send_timeout: Duration,
    /// A store call serving one node (its registration, its configuration) that takes longer
    /// fails: the node is told nothing and retries, instead of waiting on a stuck database.
    pub store_timeout: Duration,
    /// Print log lines to stderr (they are always kept in [`ControllerStats::log`]).
    pub verbose: bool,
}

impl ControllerOptions {
    /// Plain WebSocket and one token for every node (loopback tests, the emulator's own
    /// controller); see [`ControllerOptions::with_auth`].
    pub fn new(token: impl Into<String>) -> Self {
        Self::with_auth(Auth::Shared(token.into()), None)
    }

    pub fn with_auth(auth: Auth, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        ControllerOptions {
            auth,
            tls,
            hello_timeout: Duration::from_secs(5),
            max_frame: proto::MAX_NODE_FRAME,
            max_connections: 16_384,
            ping_every: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(10),
            store_timeout: Duration::from_secs(10),
            verbose: true,
        }
    }
}

/// What the controller did, for tests, logs and benchmarks.
#[derive(Debug, Default)]
pub struct ControllerStats {
    pub sessions: AtomicU64,
    pub registrations: AtomicU64,
    pub refused_auth: AtomicU64,
    /// Nodes that presented another node's token, or said hello as another node than the one
    /// their token is for.
    pub refused_wrong_node: AtomicU64,
    /// Connections that did not complete a TLS handshake (a `ws://` client, a wrong name).
    pub refused_tls: AtomicU64,
    pub refused_version: AtomicU64,
    pub refused_malformed: AtomicU64,
    pub refused_too_large: AtomicU64,
    pub refused_not_hello: AtomicU64,
    /// Connections closed because `max_connections` were open.
    pub refused_busy: AtomicU64,
    /// Nodes dropped for silence or for not reading.
    pub dropped_idle: AtomicU64,
    pub diffs_sent: AtomicU64,
    pub full_sent: AtomicU64,
    pub resyncs: AtomicU64,
    pub metrics_received: AtomicU64,
    pub store_errors: AtomicU64,
    /// How long the store took to answer the sessions' reads (registrations, reloads).
    pub store_latency: Latency,
    log: Mutex<VecDeque<String>>,
}

/// A latency histogram: counts per bucket (upper bounds in [`Latency::BOUNDS`], seconds),
/// their sum and count, kept in atomics (no lock where it is observed).
#[derive(Debug, Default)]
pub struct Latency {
    buckets: [AtomicU64; Latency::BOUNDS.len()],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Latency {
    pub const BOUNDS: [f64; 12] = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    ];

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = Self::BOUNDS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts per bound, the sum in seconds, and the count.
    pub fn read(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut total = 0;
        let buckets = (Self::BOUNDS.iter().zip(&self.buckets))
            .map(|(b, c)| {
                total += c.load(Ordering::Relaxed);
                (*b, total)
            })
            .collect();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        (buckets, sum, self.count.load(Ordering::Relaxed))
    }
}

impl ControllerStats {
    /// The last log lines, oldest first.
    pub fn log(&self) -> Vec<String> {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.iter().cloned().collect()
    }

    fn record(&self, line: String, verbose: bool) {
        // A flood of refused peers must not flood the log: 50 lines a second, then a count of
        // those held back. The in-memory tail keeps every line.
        static LOGGED: linerate_proto::lograte::Every =
            linerate_proto::lograte::Every::burst(Duration::from_secs(1), 50);
        match (LOGGED.allow(), verbose) {
            (None, _) => {}
            (Some(0), true) => tracing::info!("{line}"),
            (Some(0), false) => tracing::debug!("{line}"),
            (Some(suppressed), true) => tracing::info!(suppressed, "{line}"),
            (Some(suppressed), false) => tracing::debug!(suppressed, "{line}"),
        }
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if log.len() == LOG_KEPT {
            log.pop_front();
        }
        log.push_back(line);
    }

    fn count_refusal(&self, r: Refusal) {
        let c = match r {
            Refusal::Version => &self.refused_version,
            Refusal::Malformed => &self.refused_malformed,
            Refusal::TooLarge => &self.refused_too_large,
            Refusal::NotHello => &self.refused_not_hello,
            Refusal::Replaced => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

enum SessionEvent {
    Change(Change),
    Changes(Vec<Change>),
    Resync,
}

struct SessionSlot {
    id: u64,
    tx: mpsc::Sender<SessionEvent>,
    /// Set when an event did not fit in the queue: the session must resync.
    behind: Arc<AtomicBool>,
}

struct Shared<S> {
    store: Arc<S>,
    opts: ControllerOptions,
    stats: Arc<ControllerStats>,
    sessions: Mutex<HashMap<String, SessionSlot>>,
    next_id: AtomicU64,
}

impl<S> Shared<S> {
    fn log(&self, line: String) {
        self.stats.record(line, self.opts.verbose);
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionSlot>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self, slot: &SessionSlot, ev: SessionEvent) {
        if slot.tx.try_send(ev).is_err() {
            slot.behind.store(true, Ordering::Release);
        }
    }
}

/// A running controller; dropping it (or [`ControllerHandle::stop`]) closes every session.
pub struct ControllerHandle {
    tasks: JoinSet<()>,
    addr: SocketAddr,
    stats: Arc<ControllerStats>,
}

impl ControllerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> &Arc<ControllerStats> {
        &self.stats
    }

    /// Stops accepting and drops every connection, as a crash would.
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

/// Serves nodes on `listener` from `store`. Must be called inside a tokio runtime.
pub fn spawn<S: Store>(
    listener: TcpListener,
    store: Arc<S>,
    opts: ControllerOptions,
) -> std::io::Result<ControllerHandle> {
    let addr = listener.local_addr()?;
    let stats = Arc::new(ControllerStats::default());
    let shared = Arc::new(Shared {
        store,
        opts,
        stats: stats.clone(),
        sessions: Mutex::default(),
        next_id: AtomicU64::new(1),
    });
    let mut tasks = JoinSet::new();
    // Subscribed before the first session loads anything, so no change falls in between.
    let events = shared.store.subscribe();
    tasks.spawn(dispatch(shared.clone(), events));
    tasks.spawn(accept(shared, listener));
    Ok(ControllerHandle { tasks, addr, stats })
}

async fn dispatch<S: Store>(shared: Arc<Shared<S>>, mut events: broadcast::Receiver<StoreEvent>) {
    loop {
        match events.recv().await {
            Ok(StoreEvent::Changed { node, change }) => {
                if let Some(slot) = shared.sessions().get(&node) {
                    shared.notify(slot, SessionEvent::Change(change));
                }
            }
            Ok(StoreEvent::Changes { node, changes }) => {
                if let Some(slot) = shared.sessions().get(&node) {
                    shared.notify(slot, SessionEvent::Changes(changes));
                }
            }
            Ok(StoreEvent::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                shared.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                for slot in shared.sessions().values() {
                    shared.notify(slot, SessionEvent::Resync);
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn accept<S: Store>(shared: Arc<Shared<S>>, listener: TcpListener) {
    let mut sessions = JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(shared.opts.max_connections));
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        shared.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                        shared.log(format!(
                            "{peer}: refused: {} connections already open",
                            shared.opts.max_connections
                        ));
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    sessions.spawn(async move {
                        let span = tracing::info_span!("session", %peer);
                        tracing::Instrument::instrument(serve_conn(shared, stream, peer), span)
                            .await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    // Out of descriptors, usually: wait rather than spin.
                    shared.log(format!("accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = sessions.join_next() => {}
        }
    }
}

/// TLS first when configured (within the hello timeout), then the WebSocket session.
async fn serve_conn<S: Store>(shared: Arc<Shared<S>>, stream: TcpStream, peer: SocketAddr) {
    let Some(tls) = shared.opts.tls.clone() else {
        return session(shared, stream, peer).await;
    };
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
    match tokio::time::timeout(shared.opts.hello_timeout, accept).await {
        Ok(Ok(s)) => session(shared, s, peer).await,
        Ok(Err(e)) => {
            shared.stats.refused_tls.fetch_add(1, Ordering::Relaxed);
            shared.log(format!("{peer}: refused: TLS handshake: {e}"));
        }
        Err(_) => {
            shared.stats.refused_tls.fetch_add(1, Ordering::Relaxed);
            shared.log(format!("{peer}: refused: no TLS handshake in time"));
        }
    }
}

fn token_matches(given: &[u8], want: &[u8]) -> bool {
    // Compares every byte whatever the first difference, so timing does not reveal a prefix.
    given.len() == want.len() && given.iter().zip(want).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

fn unauthorized(msg: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(msg.to_string()));
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    r
}

/// What a node's connection runs over: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

async fn refuse<T: Io>(ws: &mut WebSocketStream<T>, refusal: Refusal, message: String) {
    let err = ControllerMsg::Error(ErrorMsg {
        refusal,
        message: message.chars().take(1000).collect(),
    });
    let limit = Duration::from_secs(1);
    if let Ok(frame) = proto::encode(&err) {
        let _ = tokio::time::timeout(limit, ws.send(Message::binary(frame))).await;
    }
    let code = match refusal {
        Refusal::TooLarge => CloseCode::Size,
        Refusal::Replaced => CloseCode::Normal,
        Refusal::Version | Refusal::Malformed | Refusal::NotHello => CloseCode::Protocol,
    };
    // A close reason must fit a control frame (123 bytes).
    let reason: String = message.chars().take(120).collect();
    let close = ws.close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    let _ = tokio::time::timeout(limit, close).await;
}

async fn send<T: Io>(
    ws: &mut WebSocketStream<T>,
    msg: &ControllerMsg,
    limit: Duration,
) -> Result<(), String> {
    let frame = proto::encode(msg).map_err(|e| format!("encoding its update: {e}"))?;
    match tokio::time::timeout(limit, ws.send(Message::binary(frame))).await {
        Ok(r) => r.map_err(|e| format!("sending: {e}")),
        Err(_) => Err(format!(
            "it took no update for {} s: dropped",
            limit.as_secs()
        )),
    }
}

/// What a node may receive, given what it said it can apply.
fn for_node(config: Config, caps: &[Capability]) -> Config {
    let mut c = Config::default();
    if caps.contains(&Capability::Routes) {
        c.routes = config.routes;
    }
    if caps.contains(&Capability::Flows) {
        c.flows = config.flows;
    }
    if caps.contains(&Capability::Scheduler) || caps.contains(&Capability::Shaper) {
        c.ports = config.ports;
        for p in c.ports.values_mut() {
            if !caps.contains(&Capability::Shaper) {
                p.shaper = None;
            }
            if !caps.contains(&Capability::Scheduler) {
                p.scheduler = proto::Scheduler::Fcfs;
            }
        }
    }
    if caps.contains(&Capability::Emulation) {
        c.links = config.links;
        c.emu_routes = config.emu_routes;
        c.emu_flows = config.emu_flows;
    }
    c
}

fn change_for_node(change: Change, caps: &[Capability]) -> Option<Change> {
    let has = |c| caps.contains(&c);
    let ports = has(Capability::Scheduler) || has(Capability::Shaper);
    match change {
        Change::Route(_) | Change::RouteGone(_) if has(Capability::Routes) => Some(change),
        Change::Flow(_) | Change::FlowGone(_) if has(Capability::Flows) => Some(change),
        Change::PortGone(_) if ports => Some(change),
        Change::Port(mut p) if ports => {
            if !has(Capability::Shaper) {
                p.shaper = None;
            }
            if !has(Capability::Scheduler) {
                p.scheduler = proto::Scheduler::Fcfs;
            }
            Some(Change::Port(p))
        }
        Change::Link(_)
        | Change::LinkGone(_)
        | Change::EmuRoute(_)
        | Change::EmuRouteGone(_)
        | Change::EmuFlow(_)
        | Change::EmuFlowGone(_)
            if has(Capability::Emulation) =>
        {
            Some(change)
        }
        Change::Route(_)
        | Change::RouteGone(_)
        | Change::Flow(_)
        | Change::FlowGone(_)
        | Change::Port(_)
        | Change::PortGone(_)
        | Change::Link(_)
        | Change::LinkGone(_)
        | Change::EmuRoute(_)
        | Change::EmuRouteGone(_)
        | Change::EmuFlow(_)
        | Change::EmuFlowGone(_) => None,
    }
}

async fn session<S: Store, T: Io>(shared: Arc<Shared<S>>, stream: T, peer: SocketAddr) {
    // The node the token was checked for (per-node tokens), and whether a refusal was for
    // presenting another node's token.
    let mut claimed: Option<String> = None;
    let mut other_node = false;
    // tungstenite's handshake callback returns its (large) HTTP response type as the error.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let token = match req.headers().get(header::AUTHORIZATION) {
            None => return Err(unauthorized("missing bearer token")),
            Some(v) => v.as_bytes(),
        };
        match &shared.opts.auth {
            Auth::Shared(want) => {
                if token_matches(token, format!("Bearer {want}").as_bytes()) {
                    Ok(resp)
                } else {
                    Err(unauthorized("wrong bearer token"))
                }
            }
            Auth::PerNode(tokens) => {
                let Some(node) = (req.headers().get(NODE_HEADER)).and_then(|v| v.to_str().ok())
                else {
                    return Err(unauthorized("missing Linerate-Node header"));
                };
                let Some(token) =
                    (std::str::from_utf8(token).ok()).and_then(|t| t.strip_prefix("Bearer "))
                else {
                    return Err(unauthorized("wrong bearer token"));
                };
                match tokens.check(node, token) {
                    Verdict::Ok => {
                        claimed = Some(node.to_string());
                        Ok(resp)
                    }
                    Verdict::Unknown => Err(unauthorized(&format!(
                        "wrong bearer token for node '{node}'"
                    ))),
                    Verdict::OtherNode(owner) => {
                        other_node = true;
                        Err(unauthorized(&format!(
                            "node '{node}' presented the token of node '{owner}'"
                        )))
                    }
                }
            }
        }
    };
    // tungstenite zero-fills its whole read buffer before each read: 128 KiB by default, which
    // was half the controller's CPU with a thousand nodes sending small reports (and 128 KiB
    // of memory per node). Node messages are small; 4 KiB reads take any of them in a few.
    let cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .max_message_size(Some(shared.opts.max_frame))
        .max_frame_size(Some(shared.opts.max_frame));
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(cfg));
    // A peer that never completes the upgrade must not hold its slot forever.
    let Ok(handshake) = tokio::time::timeout(shared.opts.hello_timeout, handshake).await else {
        shared.stats.count_refusal(Refusal::NotHello);
        shared.log(format!("{peer}: refused: no WebSocket upgrade in time"));
        return;
    };
    let mut ws = match handshake {
        Ok(ws) => ws,
        Err(tungstenite::Error::Http(resp)) if resp.status() == StatusCode::UNAUTHORIZED => {
            // Disjoint counts: a token of another node is counted as that, not as a bad token.
            if other_node {
                shared
                    .stats
                    .refused_wrong_node
                    .fetch_add(1, Ordering::Relaxed);
            } else {
                shared.stats.refused_auth.fetch_add(1, Ordering::Relaxed);
            }
            let why = (resp.body().as_deref())
                .map_or("unauthorized".into(), String::from_utf8_lossy)
                .into_owned();
            shared.log(format!("{peer}: refused: {why}"));
            return;
        }
        Err(e) => {
            shared.stats.count_refusal(Refusal::Malformed);
            shared.log(format!("{peer}: refused: WebSocket handshake: {e}"));
            return;
        }
    };

    let hello = match tokio::time::timeout(shared.opts.hello_timeout, ws.next()).await {
        Err(_) => Err((Refusal::NotHello, "no hello in time".to_string())),
        Ok(None) => return,
        Ok(Some(Err(e))) => Err(ws_error_refusal(&e)),
        Ok(Some(Ok(Message::Binary(b)))) => match proto::decode::<NodeMsg>(&b) {
            Ok(NodeMsg::Hello(h)) => Ok(h),
            Ok(_) => Err((
                Refusal::NotHello,
                "the first message must be a hello".to_string(),
            )),
            Err(e) => Err((proto::refusal_for(&e), e.to_string())),
        },
        Ok(Some(Ok(other))) => Err((
            Refusal::Malformed,
            format!(
                "expected a binary hello, got a {} frame",
                frame_kind(&other)
            ),
        )),
    };
    // A node's token is for that node only: it cannot say hello as another.
    let hello = match (hello, claimed) {
        (Ok(h), Some(c)) if h.node != c => {
            shared
                .stats
                .refused_wrong_node
                .fetch_add(1, Ordering::Relaxed);
            Err((
                Refusal::Malformed,
                format!("hello as node '{}' with the token of node '{c}'", h.node),
            ))
        }
        (h, _) => h,
    };
    let hello = match hello {
        Ok(h) => h,
        Err((refusal, why)) => {
            shared.stats.count_refusal(refusal);
            shared.log(format!("{peer}: refused: {why}"));
            refuse(&mut ws, refusal, why).await;
            return;
        }
    };
    let node = hello.node.clone();
    let caps = hello.capabilities.clone();

    // Registered before the configuration is loaded: a change committed meanwhile is queued
    // and replayed, and replaying a change already in the load is harmless.
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(SESSION_QUEUE);
    let behind = Arc::new(AtomicBool::new(false));
    let replaced = shared.sessions().insert(
        node.clone(),
        SessionSlot {
            id,
            tx,
            behind: behind.clone(),
        },
    );
    shared.stats.sessions.fetch_add(1, Ordering::Relaxed);
    shared.stats.registrations.fetch_add(1, Ordering::Relaxed);
    shared.log(format!(
        "{peer}: node '{node}' registered ({}){}; capabilities: {}",
        hello.agent,
        if replaced.is_some() {
            ", replacing its previous connection"
        } else {
            ""
        },
        caps.iter().map(|c| c.name()).collect::<Vec<_>>().join(",")
    ));
    drop(replaced);

    let why = serve_node(&shared, &mut ws, &node, &caps, &mut rx, &behind).await;

    {
        let mut sessions = shared.sessions();
        if sessions.get(&node).is_some_and(|s| s.id == id) {
            sessions.remove(&node);
        }
    }
    shared.stats.sessions.fetch_sub(1, Ordering::Relaxed);
    match why {
        End::Closed => shared.log(format!("{peer}: node '{node}' disconnected")),
        End::Replaced => {
            shared.log(format!(
                "{peer}: node '{node}' closed: a newer connection registered it"
            ));
            refuse(
                &mut ws,
                Refusal::Replaced,
                "replaced by a newer connection".into(),
            )
            .await;
        }
        End::Refused(refusal, why) => {
            shared.stats.count_refusal(refusal);
            shared.log(format!("{peer}: node '{node}': refused: {why}"));
            refuse(&mut ws, refusal, why).await;
        }
        End::Failed(why) => shared.log(format!("{peer}: node '{node}': {why}")),
    }
}

enum End {
    Closed,
    Replaced,
    Refused(Refusal, String),
    Failed(String),
}

fn frame_kind(m: &Message) -> &'static str {
    match m {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        Message::Ping(_) => "ping",
        Message::Pong(_) => "pong",
        Message::Close(_) => "close",
        Message::Frame(_) => "raw",
    }
}

fn ws_error_refusal(e: &tungstenite::Error) -> (Refusal, String) {
    match e {
        tungstenite::Error::Capacity(c) => (Refusal::TooLarge, format!("frame refused: {c}")),
        other => (Refusal::Malformed, format!("WebSocket: {other}")),
    }
}

async fn serve_node<S: Store, T: Io>(
    shared: &Shared<S>,
    ws: &mut WebSocketStream<T>,
    node: &str,
    caps: &[Capability],
    rx: &mut mpsc::Receiver<SessionEvent>,
    behind: &AtomicBool,
) -> End {
    let opts = &shared.opts;
    if let Err(e) = bounded(
        &shared.stats.store_latency,
        opts.store_timeout,
        shared.store.node_seen(node, caps),
    )
    .await
    {
        shared.stats.store_errors.fetch_add(1, Ordering::Relaxed);
        shared.log(format!("node '{node}': store: {e}"));
    }
    let mut sent = match bounded(
        &shared.stats.store_latency,
        opts.store_timeout,
        shared.store.node_config(node),
    )
    .await
    {
        Ok(c) => for_node(c, caps),
        Err(e) => {
            shared.stats.store_errors.fetch_add(1, Ordering::Relaxed);
            return End::Failed(format!("loading its configuration: {e}"));
        }
    };
    if let Err(e) = send(ws, &ControllerMsg::Full(sent.clone()), opts.send_timeout).await {
        return End::Failed(e);
    }
    shared.stats.full_sent.fetch_add(1, Ordering::Relaxed);
    let metrics = caps.contains(&Capability::Metrics);
    let mut ping = tokio::time::interval(opts.ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = tokio::time::Instant::now();
    let mut retry_timer = Box::pin(tokio::time::sleep(RESYNC_RETRY));
    let mut retry_armed = false;

    loop {
        // A resync that failed (the store was unreachable) is retried on its own, 500 ms later
        // whatever else wakes the loop meanwhile (a timer made afresh at each turn would never
        // fire for a node that reports every 100 ms).
        let retry = behind.load(Ordering::Acquire);
        if retry && !retry_armed {
            retry_timer
                .as_mut()
                .reset(tokio::time::Instant::now() + RESYNC_RETRY);
            retry_armed = true;
        }
        tokio::select! {
            msg = ws.next() => {
                heard = tokio::time::Instant::now();
                match msg {
                None | Some(Ok(Message::Close(_))) => return End::Closed,
                Some(Err(e)) => {
                    let (refusal, why) = ws_error_refusal(&e);
                    return match e {
                        tungstenite::Error::ConnectionClosed
                        | tungstenite::Error::AlreadyClosed
                        | tungstenite::Error::Io(_)
                        | tungstenite::Error::Protocol(
                            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                        ) => End::Closed,
                        _ => End::Refused(refusal, why),
                    };
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(m @ Message::Text(_))) => {
                    return End::Refused(
                        Refusal::Malformed,
                        format!("expected binary frames, got a {} frame", frame_kind(&m)),
                    );
                }
                Some(Ok(Message::Binary(b))) => match proto::decode::<NodeMsg>(&b) {
                    Ok(NodeMsg::Metrics(m)) if metrics => {
                        shared.stats.metrics_received.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = shared.store.record_metrics(node, m).await {
                            shared.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                            shared.log(format!("node '{node}': storing metrics: {e}"));
                        }
                    }
                    Ok(NodeMsg::Metrics(_)) => {
                        return End::Refused(
                            Refusal::Malformed,
                            "metrics from a node that did not announce the capability".into(),
                        );
                    }
                    Ok(NodeMsg::Hello(_)) => {
                        return End::Refused(Refusal::Malformed, "a second hello".into());
                    }
                    Ok(NodeMsg::Error(e)) => {
                        shared.log(format!("node '{node}' reports: {:?}: {}", e.refusal, e.message));
                    }
                    Err(e) => return End::Refused(proto::refusal_for(&e), e.to_string()),
                },
                }
            },
            _ = ping.tick() => {
                if heard.elapsed() >= opts.idle_timeout {
                    shared.stats.dropped_idle.fetch_add(1, Ordering::Relaxed);
                    return End::Failed(format!(
                        "silent for {} s (not even a pong): dropped",
                        heard.elapsed().as_secs()
                    ));
                }
                let ping = ws.send(Message::Ping(Default::default()));
                match tokio::time::timeout(opts.send_timeout, ping).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return End::Failed(format!("sending a ping: {e}")),
                    Err(_) => {
                        shared.stats.dropped_idle.fetch_add(1, Ordering::Relaxed);
                        return End::Failed("it takes no data: dropped".into());
                    }
                }
            }
            _ = &mut retry_timer, if retry_armed => {
                retry_armed = false;
                if let Some(changes) = resync(shared, node, caps, &mut sent, behind).await
                    && !changes.is_empty()
                {
                    if let Err(e) = send(ws, &ControllerMsg::Diff(changes), opts.send_timeout).await {
                        return End::Failed(e);
                    }
                    shared.stats.diffs_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            ev = rx.recv() => {
                let Some(ev) = ev else { return End::Replaced };
                let batch: Vec<SessionEvent> =
                    std::iter::once(ev).chain(std::iter::from_fn(|| rx.try_recv().ok())).collect();
                let must_resync = behind.swap(false, Ordering::AcqRel)
                    || batch.iter().any(|e| matches!(e, SessionEvent::Resync));
                let changes = if must_resync {
                    // The reload holds every change of the batch: diff it against what the
                    // node really has, not against the batch applied.
                    resync(shared, node, caps, &mut sent, behind).await.unwrap_or_default()
                } else {
                    let mut changes = Vec::new();
                    let every = batch.into_iter().flat_map(|ev| match ev {
                        SessionEvent::Change(c) => vec![c],
                        SessionEvent::Changes(cs) => cs,
                        SessionEvent::Resync => Vec::new(),
                    });
                    for c in every {
                        if let Some(c) = change_for_node(c, caps)
                            && sent.apply(&c)
                        {
                            changes.push(c);
                        }
                    }
                    changes
                };
                if !changes.is_empty() {
                    if let Err(e) = send(ws, &ControllerMsg::Diff(changes), opts.send_timeout).await {
                        return End::Failed(e);
                    }
                    shared.stats.diffs_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// `call` unless it takes longer than `limit`, which is a store error.
/// Observed in `latency` (a timeout as the limit).
async fn bounded<T>(
    latency: &Latency,
    limit: Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = tokio::time::Instant::now();
    let r = tokio::time::timeout(limit, call)
        .await
        .unwrap_or(Err(StoreError::Timeout(limit)));
    latency.observe(started.elapsed());
    r
}

/// Reloads `node`'s configuration and returns what differs from `sent` (which becomes the
/// reload). On a store error, logs it, marks the session behind (retried) and returns `None`.
async fn resync<S: Store>(
    shared: &Shared<S>,
    node: &str,
    caps: &[Capability],
    sent: &mut Config,
    behind: &AtomicBool,
) -> Option<Vec<Change>> {
    match bounded(
        &shared.stats.store_latency,
        shared.opts.store_timeout,
        shared.store.node_config(node),
    )
    .await
    {
        Ok(c) => {
            behind.store(false, Ordering::Release);
            let now = for_node(c, caps);
            let changes = sent.diff(&now);
            *sent = now;
            Some(changes)
        }
        Err(e) => {
            shared.stats.store_errors.fetch_add(1, Ordering::Relaxed);
            shared.log(format!("node '{node}': resync: {e}; retrying"));
            behind.store(true, Ordering::Release);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches(b"Bearer abc", b"Bearer abc"));
        assert!(!token_matches(b"Bearer abd", b"Bearer abc"));
        assert!(!token_matches(b"Bearer ab", b"Bearer abc"));
        assert!(!token_matches(b"", b"Bearer abc"));
    }

    #[test]
    fn nodes_get_only_what_they_can_apply() {
        let mut c = Config::default();
        c.ports.insert(
            "eth0".into(),
            proto::PortSettings {
                port: "eth0".into(),
                scheduler: proto::Scheduler::Wrr(vec![1, 2]),
                shaper: Some(proto::Shaper {
                    rate_bps: 1,
                    burst_bytes: 1,
                }),
                link_rate_bps: None,
            },
        );
        let only_sched = for_node(c.clone(), &[Capability::Scheduler]);
        assert_eq!(only_sched.ports["eth0"].shaper, None);
        assert!(for_node(c.clone(), &[Capability::Routes]).ports.is_empty());
        assert_eq!(
            change_for_node(Change::FlowGone(1), &[Capability::Routes]),
            None
        );
    }
}
