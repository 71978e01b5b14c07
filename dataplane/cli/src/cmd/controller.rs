//! `linerate controller`: the control plane's server. Nodes (`linerate fwd --controller`)
//! register over WebSocket with a bearer token and receive their routes, flow pins and port
//! settings, whole at first and then as diffs; their metrics are stored.
//!
//! State lives in memory (the default: routes come from `--config`, re-read on SIGHUP) or in
//! PostgreSQL (`--database`), where any SQL client changes routes live through triggers.

use super::parse_duration;
use anyhow::{Context, Result, anyhow, bail};
use linerate_controller::auth::{self, Auth, NodeTokens};
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
    /// TLS certificate chain (PEM) nodes see at wss://; with --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Use DIR/cert.pem and DIR/key.pem, first generating a self-signed pair there if missing
    /// (for localhost, 127.0.0.1, ::1 and the --listen address). Nodes trust it with
    /// `fwd --controller-ca DIR/cert.pem`.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    tls_self_signed: Option<PathBuf>,
    /// Per-node tokens: `NODE TOKEN` lines (a node may have several while rotating). Re-read
    /// when the file changes (checked every 2 s) and on SIGHUP. With --database and no file,
    /// tokens come from the table node_tokens (see docs/CONTROL.md).
    #[arg(long)]
    node_tokens: Option<PathBuf>,
    /// The plain mode: ws:// and one token for every node (--token-file or $LINERATE_TOKEN),
    /// whose hello is taken on trust. Loopback only.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "tls_self_signed", "node_tokens"])]
    insecure_shared_token: bool,
    /// --insecure-shared-token: the file holding the one token (default: $LINERATE_TOKEN).
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
    /// Place this emulation over the hosts that register for it (its `[placement]` names
    /// them, `hosts = ["a", "b"]`, or counts them, `hosts = 2`): `FILE` or `NAME=FILE` (the
    /// name as `up --name` gives it; default the file's [network] name or stem). With
    /// --database (the registrations and the placement are rows). Repeatable.
    #[arg(long)]
    emulation: Vec<String>,
    /// The database schema (created when missing), as `up --database-schema`.
    #[arg(long, default_value = "public", requires = "database")]
    database_schema: String,
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

/// Where per-node tokens come from.
enum TokenSource {
    File(PathBuf),
    Database,
}

/// How nodes are authenticated and whether TLS is spoken: the flags checked together.
fn security(
    a: &ControllerArgs,
    database: bool,
) -> Result<(Auth, Option<Arc<rustls::ServerConfig>>, Option<TokenSource>)> {
    if a.insecure_shared_token {
        if !a.listen.ip().is_loopback() {
            bail!(
                "--insecure-shared-token --listen {}: the plain mode sends tokens in clear and \
                 trusts every hello, so it listens on loopback only",
                a.listen
            );
        }
        return Ok((Auth::Shared(token(a)?), None, None));
    }
    if a.token_file.is_some() {
        bail!(
            "--token-file is the shared-token mode: add --insecure-shared-token (loopback only), \
             or give each node its own token with --node-tokens FILE"
        );
    }
    if a.tls_cert.is_none() && a.tls_self_signed.is_none() {
        bail!(
            "the controller speaks TLS (wss://): give --tls-cert FILE --tls-key FILE, or \
             --tls-self-signed DIR; the plain mode needs --insecure-shared-token (loopback only)"
        );
    }
    // Tokens before the certificate: a refused start writes nothing.
    let (tokens, source) = match &a.node_tokens {
        Some(p) => (read_tokens(p)?, TokenSource::File(p.clone())),
        None if database => (Default::default(), TokenSource::Database),
        None => bail!(
            "nodes need their own tokens: --node-tokens FILE (NODE TOKEN lines), or --database \
             (the node_tokens table)"
        ),
    };
    let (cert, key) = match (&a.tls_cert, &a.tls_key, &a.tls_self_signed) {
        (Some(c), Some(k), _) => (c.clone(), k.clone()),
        (_, _, Some(dir)) => self_signed(dir, a.listen)?,
        _ => unreachable!("checked above: a certificate and key, or a directory"),
    };
    let read = |flag: &str, p: &Path| {
        std::fs::read(p).with_context(|| format!("{flag} {}: cannot read it", p.display()))
    };
    let tls =
        auth::tls_server(&read("--tls-cert", &cert)?, &read("--tls-key", &key)?).map_err(|e| {
            anyhow!(
                "--tls-cert {} / --tls-key {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
    let tokens = Arc::new(NodeTokens::new(tokens));
    Ok((Auth::PerNode(tokens), Some(tls), Some(source)))
}

fn read_tokens(p: &Path) -> Result<std::collections::HashMap<[u8; 32], String>> {
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("--node-tokens {}: cannot read it", p.display()))?;
    auth::parse_token_file(&text).map_err(|e| anyhow!("--node-tokens {}: {e}", p.display()))
}

/// DIR/cert.pem and DIR/key.pem, made (self-signed, mode 0600 for the key) if missing.
fn self_signed(dir: &Path, listen: SocketAddr) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--tls-self-signed {}: making it", dir.display()))?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if !listen.ip().is_unspecified() && !names.contains(&listen.ip().to_string()) {
        names.push(listen.ip().to_string());
    }
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| anyhow!("--tls-self-signed: generating the pair: {e}"))?;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key)
        .with_context(|| format!("writing {}", key.display()))?;
    std::io::Write::write_all(&mut f, made.signing_key.serialize_pem().as_bytes())
        .with_context(|| format!("writing {}", key.display()))?;
    std::fs::write(&cert, made.cert.pem())
        .with_context(|| format!("writing {}", cert.display()))?;
    tracing::info!(
        "controller: a self-signed certificate in {}",
        cert.display()
    );
    Ok((cert, key))
}

/// Keeps per-node tokens current: the file when it changes (or on `reload`), the table every
/// 2 s. A file or table that cannot be read keeps the tokens as they were.
async fn watch_tokens(
    source: TokenSource,
    tokens: Arc<NodeTokens>,
    store: Option<Arc<PgStore>>,
    mut reload: tokio::sync::watch::Receiver<()>,
) {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = match &source {
        TokenSource::File(p) => mtime(p),
        TokenSource::Database => None,
    };
    let mut first = true;
    loop {
        let at_start = first;
        let forced = if first {
            first = false;
            true
        } else {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => false,
                r = reload.changed() => {
                    if r.is_err() {
                        return;
                    }
                    true
                }
            }
        };
        match &source {
            TokenSource::File(p) => {
                let now = mtime(p);
                if !forced && now == seen {
                    continue;
                }
                seen = now;
                match read_tokens(p) {
                    Ok(t) => {
                        let n = t.len();
                        tokens.replace(t);
                        let how = if at_start { "read" } else { "reloaded" };
                        tracing::info!(
                            tokens = n,
                            "controller: node tokens {how} from {}",
                            p.display()
                        );
                    }
                    Err(e) => tracing::error!("controller: {e:#}; keeping the tokens in use"),
                }
            }
            TokenSource::Database => {
                let Some(store) = &store else { return };
                match store.node_tokens().await {
                    Ok(t) => {
                        if forced {
                            tracing::info!(
                                tokens = t.len(),
                                "controller: node tokens from the node_tokens table"
                            );
                        }
                        tokens.replace(t);
                    }
                    Err(e) => linerate_proto::warn_every!(
                        Duration::from_secs(30),
                        "controller: reading node_tokens: {e}; keeping the tokens in use"
                    ),
                }
            }
        }
    }
}

pub fn run(a: ControllerArgs) -> Result<()> {
    if !(1..=256).contains(&a.threads) {
        bail!("--threads {}: must be between 1 and 256", a.threads);
    }
    raise_fd_limit();
    let database = a
        .database
        .clone()
        .or_else(|| std::env::var("LINERATE_DATABASE_URL").ok())
        .filter(|_| a.config.is_none());
    let (auth, tls, token_source) = security(&a, database.is_some())?;
    if !a.emulation.is_empty() && database.is_none() {
        bail!("--emulation: the hosts register and the placement is written in --database");
    }
    let emulations = (a.emulation.iter())
        .map(|spec| super::emu::placement_spec(spec))
        .collect::<Result<Vec<_>>>()?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
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
        let tokens = match &auth {
            Auth::PerNode(t) => Some(t.clone()),
            Auth::Shared(_) => None,
        };
        let mut opts = ControllerOptions::with_auth(auth, tls);
        let (reload_tokens, reload_rx) = tokio::sync::watch::channel(());
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
                    PgStore::connect_in_schema(&url, &a.database_schema)
                        .await
                        .map_err(|e| anyhow!("--database: {e}"))?,
                );
                if let (Some(src), Some(t)) = (token_source, tokens) {
                    let rx = reload_rx.clone();
                    tokio::spawn(watch_tokens(src, t, Some(store.clone()), rx));
                }
                for (name, topo) in emulations {
                    tokio::spawn(super::emu::place_emulation(store.clone(), name, topo));
                }
                let ctl = controller::spawn(listener, store, opts)?;
                serve_metrics(a.metrics_listen, ctl.stats())?;
                tracing::info!(
                    "controller: listening on {scheme}://{}/ (PostgreSQL store)",
                    ctl.local_addr()
                );
                loop {
                    tokio::select! {
                        _ = &mut deadline => break,
                        _ = signals.stop() => break,
                        _ = hup.recv() => {
                            let _ = reload_tokens.send(());
                            tracing::info!(
                                "controller: SIGHUP: node tokens re-read; the configuration is \
                                 the database's, and its changes apply as they commit"
                            )
                        }
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
                if let (Some(src), Some(t)) = (token_source, tokens) {
                    tokio::spawn(watch_tokens(src, t, None, reload_rx.clone()));
                }
                let ctl = controller::spawn(listener, store.clone(), opts)?;
                serve_metrics(a.metrics_listen, ctl.stats())?;
                tracing::info!(
                    "controller: listening on {scheme}://{}/ (in-memory store{})",
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
                        _ = hup.recv() => match (reload_tokens.send(()), a.config.as_deref()) {
                            (_, None) => tracing::info!("controller: SIGHUP: no --config to re-read"),
                            (_, Some(p)) => match read_seed(p) {
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
        ("wrong_node", &s.refused_wrong_node),
        ("tls", &s.refused_tls),
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
