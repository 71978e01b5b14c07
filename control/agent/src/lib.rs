//! The node agent: keeps a node connected to its controller and hands configuration to the
//! dataplane.
//!
//! The agent runs on its own thread with a single-threaded tokio runtime, never on a worker:
//! [`AgentOptions::on_thread_start`] lets the dataplane pin it away from worker cores. It
//! reconnects with exponential backoff and jitter, keeps the last configuration while the
//! controller is away (the dataplane goes on forwarding with it), and calls
//! [`Dataplane::apply`] once per update with the new configuration and the changes that made
//! it, on the agent thread. The dataplane publishes that as one snapshot its workers pick up
//! between batches.
//!
//! An update costs what it changes: the configuration is changed in place (not copied per
//! update), and a dataplane that keeps its own state applies just the changes (a router with a
//! million routes takes one route change in microseconds).

use futures_util::{SinkExt, StreamExt};
use linerate_proto::{
    self as proto, Capability, Change, Config, ControllerMsg, Counter, ErrorMsg, Hello, Metrics,
    NodeMsg, Refusal,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

/// What the agent drives. Both methods run on the agent thread.
pub trait Dataplane: Send + 'static {
    /// Takes one update: `config` is the node's whole configuration after it, `changes` what
    /// changed from the configuration of the previous call (from an empty one at the first
    /// call), rows removed or replaced first. Every change in `changes` changed something.
    fn apply(&mut self, config: &Config, changes: &[Change]);

    /// Counters to report, read when a report is due.
    fn metrics(&mut self) -> Vec<Counter> {
        Vec::new()
    }
}

pub struct AgentOptions {
    /// `wss://host:port/` of the controller (`ws://` only to a loopback address).
    pub url: String,
    pub token: String,
    pub node: String,
    pub capabilities: Vec<Capability>,
    /// How often to report metrics; `None` reports none.
    pub metrics_every: Option<Duration>,
    /// First retry delay; it doubles per failure up to `backoff_max`, each with jitter.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// The controller pings every few seconds: silence this long means it is gone (a half-open
    /// connection), and the agent reconnects.
    pub idle_timeout: Duration,
    /// Dialling, TLS and the WebSocket upgrade together may take this long; then the attempt
    /// counts as failed and the agent backs off (a controller that accepts and says nothing
    /// must not hold it forever).
    pub connect_timeout: Duration,
    /// Runs first on the agent's thread (to pin it, name it in logs...).
    pub on_thread_start: Option<Box<dyn FnOnce() + Send>>,
    /// Print log lines to stderr (they are always kept in [`AgentStats::last_error`]).
    pub verbose: bool,
    /// For `wss://`: whom to trust ([`tls_client`]).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// A TLS client configuration trusting the certificates in `ca_pem` (the controller's own, or
/// the CA that signed it).
pub fn tls_client(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        let c = c.map_err(|e| format!("the CA file: {e}"))?;
        roots
            .add(c)
            .map_err(|e| format!("the CA file: a certificate rustls refuses: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA file holds no certificate".into());
    }
    // *ring*, as the controller (see linerate_controller::auth::ring_provider).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Whether `url` may be used: `wss://` with a trust configuration, or `ws://` to loopback
/// (the token would cross a network in clear otherwise).
pub fn check_url(url: &str, tls: bool) -> Result<(), String> {
    let req = url
        .into_client_request()
        .map_err(|e| format!("controller URL '{url}': {e}"))?;
    let uri = req.uri();
    match uri.scheme_str() {
        Some("wss") if tls => Ok(()),
        Some("wss") => Err(format!(
            "controller URL '{url}': wss:// needs the certificate to trust (the controller's or its CA's)"
        )),
        Some("ws") => {
            let host = uri
                .host()
                .unwrap_or("")
                .trim_matches(|c| c == '[' || c == ']');
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "controller URL '{url}': ws:// would send the token in clear beyond this host; use wss://"
                ))
            }
        }
        _ => Err(format!("controller URL '{url}': expected ws:// or wss://")),
    }
}

impl AgentOptions {
    pub fn new(url: impl Into<String>, token: impl Into<String>, node: impl Into<String>) -> Self {
        AgentOptions {
            url: url.into(),
            token: token.into(),
            node: node.into(),
            capabilities: Capability::ALL.to_vec(),
            metrics_every: Some(Duration::from_secs(1)),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            on_thread_start: None,
            verbose: true,
            tls: None,
        }
    }
}

/// The configuration the dataplane holds, numbered per update.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// 0 before the first configuration arrived; +1 per update applied.
    pub version: u64,
    pub config: Arc<Config>,
    pub applied_at: Instant,
}

#[derive(Debug, Default)]
pub struct AgentStats {
    pub connected: AtomicBool,
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    pub updates: AtomicU64,
    pub metrics_sent: AtomicU64,
    pub refusals: AtomicU64,
    last_error: Mutex<String>,
}

impl AgentStats {
    pub fn last_error(&self) -> String {
        (self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
        .clone()
    }
}

/// A running agent; dropping it stops the thread.
pub struct Agent {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    held: Arc<Mutex<Snapshot>>,
    versions: watch::Receiver<u64>,
    stats: Arc<AgentStats>,
}

impl Agent {
    /// Starts the agent thread.
    pub fn start(mut opts: AgentOptions, dataplane: impl Dataplane) -> std::io::Result<Agent> {
        let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
        proto::check_name("node", &opts.node).map_err(|e| bad(e.to_string()))?;
        check_url(&opts.url, opts.tls.is_some()).map_err(bad)?;
        if HeaderValue::from_str(&format!("Bearer {}", opts.token)).is_err() {
            return Err(bad(
                "the token holds characters an HTTP header cannot".into()
            ));
        }
        if opts
            .metrics_every
            .is_some_and(|p| p < Duration::from_millis(1))
        {
            return Err(bad("the metrics interval must be at least 1 ms".into()));
        }
        if opts.backoff_min.is_zero() || opts.backoff_max < opts.backoff_min {
            return Err(bad("backoff needs 0 < min <= max".into()));
        }
        if opts.idle_timeout.is_zero() || opts.connect_timeout.is_zero() {
            return Err(bad("the idle and connect timeouts must be positive".into()));
        }
        let (stop, stop_rx) = oneshot::channel();
        let held = Arc::new(Mutex::new(Snapshot {
            version: 0,
            config: Arc::new(Config::default()),
            applied_at: Instant::now(),
        }));
        let (tx, versions) = watch::channel(0);
        let h = held.clone();
        let stats = Arc::new(AgentStats::default());
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name(format!("agent-{}", opts.node))
            .spawn(move || {
                if let Some(f) = opts.on_thread_start.take() {
                    f();
                }
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(node = %opts.node, "agent: cannot start its runtime: {e}");
                        return;
                    }
                };
                let span = tracing::info_span!("agent", node = %opts.node);
                rt.block_on(tracing::Instrument::instrument(
                    run(opts, dataplane, h, tx, st, stop_rx),
                    span,
                ));
            })?;
        Ok(Agent {
            stop: Some(stop),
            thread: Some(thread),
            held,
            versions,
            stats,
        })
    }

    /// The configuration applied last. While the returned snapshot is held, the next update
    /// copies the configuration instead of changing it in place: look and let go.
    pub fn snapshot(&self) -> Snapshot {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Wakes on every update; holds the version applied last.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.versions.clone()
    }

    pub fn stats(&self) -> &Arc<AgentStats> {
        &self.stats
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The delay before retry number `attempt` (0-based): `min · 2^attempt`, capped at `max`, then
/// drawn uniformly from its upper half so that agents cut off together do not return together.
pub fn backoff(min: Duration, max: Duration, attempt: u32, random: u64) -> Duration {
    let ceiling = min.saturating_mul(1u32 << attempt.min(20)).min(max);
    let half = ceiling / 2;
    let nanos = half.as_nanos() as u64;
    half + Duration::from_nanos(if nanos == 0 { 0 } else { random % (nanos + 1) })
}

struct Rng(u64);

impl Rng {
    fn seeded(node: &str) -> Rng {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let h = node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        Rng((t ^ h) | 1)
    }

    fn next(&mut self) -> u64 {
        // xorshift64*: jitter needs spread, not secrecy.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

struct Node<D> {
    opts: AgentOptions,
    dataplane: D,
    /// The configuration held (kept across disconnections), its version and when it applied;
    /// [`Agent::snapshot`] reads it.
    held: Arc<Mutex<Snapshot>>,
    versions: watch::Sender<u64>,
    stats: Arc<AgentStats>,
}

impl<D: Dataplane> Node<D> {
    fn log(&self, line: String) {
        if self.opts.verbose {
            tracing::info!("{line}");
        } else {
            tracing::debug!("{line}");
        }
        *self
            .stats
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = line;
    }

    /// Applies one update: `changes` (rows set or removed, in order), or the whole
    /// configuration `full` when the controller sent one. Nothing happens when nothing
    /// changed, except that the first configuration always applies.
    fn update(&mut self, changes: Vec<Change>, full: Option<Config>) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let held = &mut *held;
        let first = held.version == 0;
        // In place unless a snapshot someone still holds shares it.
        let config = Arc::make_mut(&mut held.config);
        let applied = match full {
            Some(full) => {
                let diff = config.diff(&full);
                *config = full;
                diff
            }
            None => changes.into_iter().filter(|c| config.apply(c)).collect(),
        };
        if applied.is_empty() && !first {
            return;
        }
        self.dataplane.apply(config, &applied);
        held.version += 1;
        held.applied_at = Instant::now();
        self.stats.updates.fetch_add(1, Ordering::Relaxed);
        self.versions.send_replace(held.version);
    }
}

async fn run<D: Dataplane>(
    opts: AgentOptions,
    dataplane: D,
    held: Arc<Mutex<Snapshot>>,
    versions: watch::Sender<u64>,
    stats: Arc<AgentStats>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut rng = Rng::seeded(&opts.node);
    let mut node = Node {
        opts,
        dataplane,
        held,
        versions,
        stats,
    };
    let mut attempt = 0u32;
    loop {
        let outcome = tokio::select! {
            r = connected(&mut node, &mut attempt) => r,
            _ = &mut stop => return,
        };
        if node.stats.connected.swap(false, Ordering::Relaxed) {
            node.stats.disconnects.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(why) = outcome {
            node.log(why);
        }
        let delay = backoff(
            node.opts.backoff_min,
            node.opts.backoff_max,
            attempt,
            rng.next(),
        );
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut stop => return,
        }
    }
}

/// One connection, from dialling to its end. `Ok` when the controller closed it cleanly.
async fn connected<D: Dataplane>(node: &mut Node<D>, attempt: &mut u32) -> Result<(), String> {
    let mut req = (node.opts.url.as_str())
        .into_client_request()
        .map_err(|e| format!("controller URL '{}': {e}", node.opts.url))?;
    let auth = HeaderValue::from_str(&format!("Bearer {}", node.opts.token))
        .map_err(|_| "the token holds characters a header cannot".to_string())?;
    req.headers_mut().insert("authorization", auth);
    // The node this token is for: a controller with per-node tokens checks the pair.
    let id =
        HeaderValue::from_str(&node.opts.node).map_err(|_| "node id in a header".to_string())?;
    req.headers_mut().insert("linerate-node", id);
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(proto::MAX_FRAME))
        .max_frame_size(Some(proto::MAX_FRAME));
    let connector = node
        .opts
        .tls
        .clone()
        .map(tokio_tungstenite::Connector::Rustls);
    let dial = tokio_tungstenite::connect_async_tls_with_config(req, Some(cfg), true, connector);
    let (mut ws, _) = tokio::time::timeout(node.opts.connect_timeout, dial)
        .await
        .map_err(|_| {
            format!(
                "connecting to {}: no WebSocket upgrade within {:?}",
                node.opts.url, node.opts.connect_timeout
            )
        })?
        .map_err(|e| match e {
            tungstenite::Error::Http(r) => format!(
                "controller {} refused us: HTTP {}",
                node.opts.url,
                r.status()
            ),
            e => format!("connecting to {}: {e}", node.opts.url),
        })?;
    let hello = NodeMsg::Hello(Hello {
        node: node.opts.node.clone(),
        capabilities: node.opts.capabilities.clone(),
        agent: concat!("linerate ", env!("CARGO_PKG_VERSION")).to_string(),
    });
    let frame = proto::encode(&hello).map_err(|e| format!("encoding hello: {e}"))?;
    let limit = node.opts.idle_timeout;
    match tokio::time::timeout(limit, ws.send(Message::binary(frame))).await {
        Ok(r) => r.map_err(|e| format!("sending hello: {e}"))?,
        Err(_) => return Err("the controller takes no data: reconnecting".into()),
    }
    node.stats.connected.store(true, Ordering::Relaxed);
    node.stats.connects.fetch_add(1, Ordering::Relaxed);

    let period = node.opts.metrics_every.unwrap_or(Duration::from_secs(3600));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle = Box::pin(tokio::time::sleep(node.opts.idle_timeout));
    loop {
        tokio::select! {
            _ = &mut idle => {
                return Err(format!(
                    "nothing from the controller for {} s: reconnecting",
                    node.opts.idle_timeout.as_secs()
                ));
            }
            msg = ws.next() => {
                idle.as_mut().reset(tokio::time::Instant::now() + node.opts.idle_timeout);
                let msg = match msg {
                    None => return Err("controller went away".into()),
                    Some(Err(e)) => return Err(format!("connection lost: {e}")),
                    Some(Ok(m)) => m,
                };
                let b = match msg {
                    Message::Binary(b) => b,
                    Message::Close(f) => {
                        return match f {
                            Some(f) if f.code != tungstenite::protocol::frame::coding::CloseCode::Normal => {
                                node.stats.refusals.fetch_add(1, Ordering::Relaxed);
                                Err(format!("controller closed the connection: {}", f.reason))
                            }
                            _ => Ok(()),
                        };
                    }
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                    Message::Text(_) => {
                        let why = "controller sent a text frame".to_string();
                        refuse(&mut ws, Refusal::Malformed, &why).await;
                        return Err(why);
                    }
                };
                match proto::decode::<ControllerMsg>(&b) {
                    Ok(ControllerMsg::Full(c)) => {
                        *attempt = 0;
                        // A reconnection that brings what we hold changes nothing downstream.
                        node.update(Vec::new(), Some(c));
                    }
                    Ok(ControllerMsg::Diff(changes)) => node.update(changes, None),
                    Ok(ControllerMsg::Error(e)) if e.refusal == Refusal::Replaced => {
                        // Another live connection holds our node id: two nodes share one id,
                        // or an old process still runs. Retrying at once would only take the
                        // id back and forth; retry at the slowest pace instead.
                        node.stats.refusals.fetch_add(1, Ordering::Relaxed);
                        *attempt = u32::MAX;
                        return Err(format!(
                            "another connection registered as node '{}': two nodes with one id?",
                            node.opts.node
                        ));
                    }
                    Ok(ControllerMsg::Error(e)) => {
                        node.stats.refusals.fetch_add(1, Ordering::Relaxed);
                        node.log(format!("controller refused us: {:?}: {}", e.refusal, e.message));
                    }
                    Err(e) => {
                        let why = format!("bad frame from the controller: {e}");
                        refuse(&mut ws, proto::refusal_for(&e), &why).await;
                        return Err(why);
                    }
                }
            }
            _ = tick.tick(), if node.opts.metrics_every.is_some() => {
                let at_unix_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let counters = node.dataplane.metrics();
                let frame = proto::encode(&NodeMsg::Metrics(Metrics { at_unix_ms, counters }))
                    .map_err(|e| format!("encoding metrics: {e}"))?;
                // A controller that stopped reading (a half-open connection) must not hold
                // the agent longer than the idle limit.
                match tokio::time::timeout(limit, ws.send(Message::binary(frame))).await {
                    Ok(r) => r.map_err(|e| format!("sending metrics: {e}"))?,
                    Err(_) => return Err("the controller takes no data: reconnecting".into()),
                }
                node.stats.metrics_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn refuse<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, refusal: Refusal, why: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let msg = NodeMsg::Error(ErrorMsg {
        refusal,
        message: why.chars().take(1000).collect(),
    });
    if let Ok(f) = proto::encode(&msg) {
        let _ = ws.send(Message::binary(f)).await;
    }
    let _ = ws.close(None).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jitters_in_the_upper_half() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for attempt in 0..40 {
            let ceiling = (min * 2u32.pow(attempt.min(20))).min(max);
            for r in [0, 1, u64::MAX / 3, u64::MAX] {
                let d = backoff(min, max, attempt, r);
                assert!(d >= ceiling / 2 && d <= ceiling, "{attempt} {r} {d:?}");
            }
        }
        assert_eq!(backoff(min, max, 0, 0), Duration::from_millis(50));
        let mut rng = Rng::seeded("n1");
        let spread: std::collections::HashSet<_> =
            (0..100).map(|_| backoff(min, max, 3, rng.next())).collect();
        assert!(spread.len() > 90, "jitter spreads retries");
    }
}
