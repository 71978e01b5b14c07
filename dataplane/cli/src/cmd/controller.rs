//! `linerate controller`: the control plane's server. Nodes (`linerate fwd --controller`)
//! register over WebSocket with a bearer token and receive their routes, flow pins and port
//! settings, whole at first and then as diffs; their metrics are stored.
//!
//! State lives in memory (the default: routes come from `--config`, re-read on SIGHUP) or in
//! PostgreSQL (`--database`), where any SQL client changes routes live through triggers.

use super::parse_duration;
use anyhow::{Context, Result, anyhow, bail};
use linerate_controller::controller::{self, ControllerOptions, ControllerStats};
use linerate_controller::store::MemStore;
use linerate_proto::Config;
use linerate_store_pg::PgStore;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Reads the seed file into one configuration per node, every row checked.
fn read_seed(path: &Path) -> Result<BTreeMap<String, Config>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    linerate_controller::seed::parse(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

#[derive(clap::Args)]
pub struct ControllerArgs {
    /// Address to listen on. Loopback by default: expose it on purpose.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// File holding the bearer token nodes must present (default: $LINERATE_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Keep state in PostgreSQL (postgres://USER:PASS@HOST/DB; default $LINERATE_DATABASE_URL);
    /// without it, state lives in memory.
    #[arg(long)]
    database: Option<String>,
    /// In-memory store: routes, flows and port settings per node, as TOML (see
    /// docs/CONTROL.md). SIGHUP re-reads it and sends each node what changed.
    #[arg(long, conflicts_with = "database")]
    config: Option<PathBuf>,
    /// Threads of the controller's runtime (default 1).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Print only refusals and errors, not every registration.
    #[arg(long)]
    quiet: bool,
    /// Serve Prometheus metrics (OpenMetrics text) on http://ADDR/metrics; a port alone
    /// means loopback.
    #[arg(long, value_parser = super::metrics::parse_listen)]
    metrics_listen: Option<SocketAddr>,
}

fn token(a: &ControllerArgs) -> Result<String> {
    let t = match &a.token_file {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("--token-file {}", p.display()))?
            .trim()
            .to_string(),
        None => std::env::var("LINERATE_TOKEN").unwrap_or_default(),
    };
    if t.len() < 8 {
        bail!(
            "the controller needs a bearer token of at least 8 characters: --token-file FILE or \
             LINERATE_TOKEN"
        );
    }
    if t.bytes().any(|b| !b.is_ascii_graphic()) {
        bail!("the bearer token may hold only visible ASCII characters");
    }
    Ok(t)
}

pub fn run(a: ControllerArgs) -> Result<()> {
    if !(1..=256).contains(&a.threads) {
        bail!("--threads {}: must be between 1 and 256", a.threads);
    }
    let token = token(&a)?;
    raise_fd_limit();
    let database = a
        .database
        .clone()
        .or_else(|| std::env::var("LINERATE_DATABASE_URL").ok())
        .filter(|_| a.config.is_none());
    let seed = a.config.as_deref().map(read_seed).transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads)
        .enable_all()
        .build()
        .context("starting the controller's runtime")?;
    rt.block_on(async move {
        // Every handler is in place before "listening" is printed: a signal sent the moment
        // the controller says it is up must not kill it with the default action.
        let (mut signals, mut hup) = Signals::new()?;
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("--listen {}", a.listen))?;
        let mut opts = ControllerOptions::new(token);
        opts.verbose = !a.quiet;
        let deadline = async {
            match a.duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        match database {
            Some(url) => {
                let store = Arc::new(
                    PgStore::connect(&url)
                        .await
                        .map_err(|e| anyhow!("--database: {e}"))?,
                );
                let ctl = controller::spawn(listener, store, opts)?;
                serve_metrics(a.metrics_listen, ctl.stats())?;
                tracing::info!(
                    "controller: listening on ws://{}/ (PostgreSQL store)",
                    ctl.local_addr()
                );
                loop {
                    tokio::select! {
                        _ = &mut deadline => break,
                        _ = signals.stop() => break,
                        _ = hup.recv() => tracing::info!(
                            "controller: SIGHUP: nothing to re-read: the database is the \
                             configuration, and its changes apply as they commit"
                        ),
                    }
                }
                ctl.stop().await;
            }
            None => {
                let store = Arc::new(MemStore::new());
                let mut configured: BTreeSet<String> = BTreeSet::new();
                if let Some(seed) = seed {
                    apply_seed(&store, seed, &mut configured);
                }
                let ctl = controller::spawn(listener, store.clone(), opts)?;
                serve_metrics(a.metrics_listen, ctl.stats())?;
                tracing::info!(
                    "controller: listening on ws://{}/ (in-memory store{})",
                    ctl.local_addr(),
                    a.config
                        .as_ref()
                        .map(|p| format!(", {} nodes from {}", configured.len(), p.display()))
                        .unwrap_or_default()
                );
                loop {
                    tokio::select! {
                        _ = &mut deadline => break,
                        _ = signals.stop() => break,
                        _ = hup.recv() => match a.config.as_deref() {
                            None => tracing::info!("controller: SIGHUP: no --config to re-read"),
                            Some(p) => match read_seed(p) {
                                Ok(seed) => {
                                    apply_seed(&store, seed, &mut configured);
                                    tracing::info!("controller: re-read {}", p.display());
                                }
                                Err(e) => tracing::warn!(
                                    "controller: SIGHUP: {e:#}; still serving the previous configuration"
                                ),
                            },
                        },
                    }
                }
                ctl.stop().await;
            }
        }
        Ok(())
    })
}

/// SIGINT and SIGTERM, which stop the controller.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// The stop signals and SIGHUP (which re-reads `--config`).
    fn new() -> Result<(Signals, tokio::signal::unix::Signal)> {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("installing the {name} handler"))
        };
        let stop = Signals {
            int: install(SignalKind::interrupt(), "SIGINT")?,
            term: install(SignalKind::terminate(), "SIGTERM")?,
        };
        Ok((stop, install(SignalKind::hangup(), "SIGHUP")?))
    }

    async fn stop(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// One descriptor per node: lifts the soft limit to the hard one (often 1024 -> 1M), so a
/// thousand nodes do not exhaust it.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!("controller: could not raise the descriptor limit from {soft}: {e}");
    }
}

/// Replaces each node's configuration with the seed's; nodes the seed no longer names are
/// emptied.
fn apply_seed(store: &MemStore, seed: BTreeMap<String, Config>, configured: &mut BTreeSet<String>) {
    for gone in configured.iter().filter(|n| !seed.contains_key(*n)) {
        store.set_config(gone, Config::default());
    }
    configured.clear();
    for (node, config) in seed {
        store.set_config(&node, config);
        configured.insert(node);
    }
}

fn serve_metrics(addr: Option<SocketAddr>, stats: &Arc<ControllerStats>) -> Result<()> {
    if let Some(addr) = addr {
        let stats = stats.clone();
        super::metrics::serve(addr, Arc::new(move || controller_metrics(&stats)))?;
    }
    Ok(())
}

/// The controller's counters for Prometheus.
fn controller_metrics(s: &ControllerStats) -> super::metrics::Metrics {
    use std::sync::atomic::Ordering::Relaxed;
    let mut m = super::metrics::Metrics::default();
    m.gauge(
        "linerate_controller_sessions",
        "Nodes connected now.",
        vec![],
        s.sessions.load(Relaxed) as f64,
    );
    let counters = [
        (
            "linerate_controller_registrations",
            "Nodes registered (hello accepted).",
            &s.registrations,
        ),
        (
            "linerate_controller_full_sent",
            "Whole configurations sent.",
            &s.full_sent,
        ),
        (
            "linerate_controller_diffs_sent",
            "Configuration differences sent.",
            &s.diffs_sent,
        ),
        (
            "linerate_controller_resyncs",
            "Sessions reloaded from the store (behind, or told to).",
            &s.resyncs,
        ),
        (
            "linerate_controller_metrics_reports",
            "Metrics reports received from nodes.",
            &s.metrics_received,
        ),
        (
            "linerate_controller_store_errors",
            "Store calls that failed or timed out.",
            &s.store_errors,
        ),
        (
            "linerate_controller_dropped_idle",
            "Nodes dropped for silence or for not reading.",
            &s.dropped_idle,
        ),
    ];
    for (name, help, c) in counters {
        m.counter(name, help, vec![], c.load(Relaxed));
    }
    for (reason, c) in [
        ("auth", &s.refused_auth),
        ("version", &s.refused_version),
        ("malformed", &s.refused_malformed),
        ("too_large", &s.refused_too_large),
        ("not_hello", &s.refused_not_hello),
        ("busy", &s.refused_busy),
    ] {
        m.counter(
            "linerate_controller_refusals",
            "Connections refused, by reason.",
            vec![("reason", reason.to_string())],
            c.load(Relaxed),
        );
    }
    let (buckets, sum, count) = s.store_latency.read();
    m.histogram(
        "linerate_controller_store_latency_seconds",
        "How long the store took to answer a session's read.",
        vec![],
        buckets,
        sum,
        count,
    );
    m
}
