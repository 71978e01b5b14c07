//! `linerate relay`: a SOCKS5 server (RFC 1928/1929) on per-core io_uring workers. Max mode
//! splices the two TCP connections together inside the kernel; normal mode copies through
//! user space under per-connection and per-user rate limits.

use super::{Live, metrics, parse_duration, parse_rate, round3};
use anyhow::{Context, Result, anyhow, bail};
use clap::ValueEnum;
use linerate_dataplane::logic::Prefix;
use linerate_relay::proto::Reply;
use linerate_relay::{Relay, RelayConfig, RelayMode, RelayStats, SpliceVia, Totals, parse_users};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeArg {
    /// Splice in the kernel (io_uring): the payload never enters user space.
    Max,
    /// Copy through user space (registered buffers), with --rate / --user-rate.
    Normal,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpliceArg {
    /// splice(2) from the worker when the io_uring poll says ready (the default).
    Syscall,
    /// IORING_OP_SPLICE requests after each poll.
    Uring,
}

#[derive(clap::Args)]
pub struct RelayArgs {
    /// A TOML file of settings: the flags' names without `--` (`listen`, `mode`, `auth`,
    /// `allow = [...]`, `idle-timeout = "60s"`, ...; or `[users]` name = "password"). Unknown
    /// keys are refused. A flag on the command line wins over the file. SIGHUP re-reads it
    /// and the credentials file: users, allow and deny change without dropping a connection.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:1080; port 0: one the kernel picks, printed
    /// in the log and in --json).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// (default max)
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// Max mode: how splices are issued (default syscall). splice(2) on readiness measured
    /// faster here (17.8 against 15.7 Gbit/s for one stream, 0.39 against 0.44 CPU-s/GB; the
    /// kernel runs every io_uring splice on a worker thread; docs/BENCHMARKS.md).
    #[arg(long, value_enum)]
    splice: Option<SpliceArg>,
    /// Workers, each with its own io_uring and SO_REUSEPORT listener (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Cores to pin the workers to, one per worker (default: not pinned).
    #[arg(long, value_delimiter = ',')]
    cores: Vec<usize>,
    /// Require username/password: a file of `user:password` lines (re-read on SIGHUP).
    #[arg(long)]
    auth: Option<PathBuf>,
    /// Accept clients only from this prefix (repeatable; default: any).
    #[arg(long)]
    allow: Vec<String>,
    /// Refuse destinations in this prefix (repeatable), besides link-local and the relay's
    /// own listening address, which are always refused.
    #[arg(long)]
    deny: Vec<String>,
    /// (default 5s)
    #[arg(long, value_parser = parse_duration)]
    connect_timeout: Option<Duration>,
    /// Close relayed connections idle this long (default 300s).
    #[arg(long, value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// Close clients that have not finished the handshake after this long (default 10s).
    #[arg(long, value_parser = parse_duration)]
    handshake_timeout: Option<Duration>,
    /// Connections open at once, in all, counted from accept (handshakes too); more are
    /// closed at accept (default 10000).
    #[arg(long)]
    max_conns: Option<usize>,
    /// Connections relayed at once per user; more are refused (reply 0x02; default 1000).
    #[arg(long)]
    max_conns_per_user: Option<usize>,
    /// Normal mode: bits per second per connection and direction (e.g. 100M).
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Normal mode: bits per second per user, all connections together.
    #[arg(long, value_parser = parse_rate)]
    user_rate: Option<f64>,
    /// On SIGINT/SIGTERM: stop accepting, let open connections finish for this long
    /// (default 5s).
    #[arg(long, value_parser = parse_duration)]
    drain: Option<Duration>,
    /// Stop after this long (default: until a signal).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Serve Prometheus metrics (OpenMetrics text) on http://ADDR/metrics; a port alone
    /// means loopback.
    #[arg(long, value_parser = metrics::parse_listen)]
    metrics_listen: Option<SocketAddr>,
    /// Print the report as JSON (`relay.report`).
    #[arg(long)]
    json: bool,
    /// One JSON line per second on standard output (`relay.interval`), then the report
    /// (`relay.report`): a run a tool can follow (docs/JSON.md).
    #[arg(long)]
    json_stream: bool,
}

/// `--config FILE`: every key optional; a flag given on the command line wins.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RelayFile {
    listen: Option<SocketAddr>,
    mode: Option<ModeArg>,
    splice: Option<SpliceArg>,
    workers: Option<usize>,
    cores: Option<Vec<usize>>,
    /// A credentials file, relative to this file's directory.
    auth: Option<PathBuf>,
    /// Credentials written here instead.
    users: Option<BTreeMap<String, String>>,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    connect_timeout: Option<String>,
    idle_timeout: Option<String>,
    handshake_timeout: Option<String>,
    max_conns: Option<usize>,
    max_conns_per_user: Option<usize>,
    rate: Option<Number>,
    user_rate: Option<Number>,
    drain: Option<String>,
    metrics_listen: Option<String>,
}

/// A rate written as a number (bit/s) or with a unit (`"100M"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Number {
    Plain(f64),
    Text(String),
}

/// The settings the relay runs with: the flags over the file over the defaults.
#[derive(Clone)]
struct Settings {
    cfg: RelayConfig,
    /// Destinations refused besides the default ones (what a reload passes on).
    extra_deny: Vec<Prefix>,
    cores: Vec<usize>,
    drain: Duration,
    /// Where the credentials came from, for the log.
    auth: Option<String>,
    metrics_listen: Option<SocketAddr>,
}

impl Settings {
    /// Reads `--config` (if given) and resolves everything. Errors name the file, the key or
    /// the flag.
    fn load(a: &RelayArgs) -> Result<Settings> {
        let file = match &a.config {
            None => RelayFile::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("--config {}: cannot read it", p.display()))?;
                toml::from_str(&text).map_err(|e| {
                    // One line (the log's too): where, then what.
                    let Some(r) = e.span() else {
                        return anyhow!("--config {}: {}", p.display(), e.message().trim());
                    };
                    let line = text.get(..r.start).unwrap_or(&text).matches('\n').count() + 1;
                    let src = text.lines().nth(line - 1).unwrap_or("").trim();
                    anyhow!(
                        "--config {} line {line} ({src}): {}",
                        p.display(),
                        e.message().trim()
                    )
                })?
            }
        };
        let here = a
            .config
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(Path::new(""));
        let in_file = |key: &str| match &a.config {
            Some(p) => format!("{key} in {}", p.display()),
            None => key.to_string(),
        };
        let dur = |flag: Option<Duration>, key: &str, text: &Option<String>, default: &str| match (
            flag, text,
        ) {
            (Some(d), _) => Ok(d),
            (None, Some(t)) => parse_duration(t).map_err(|e| anyhow!("{}: {e}", in_file(key))),
            (None, None) => Ok(parse_duration(default).expect("a valid default")),
        };
        let rate = |flag: Option<f64>, key: &str, n: &Option<Number>| -> Result<Option<f64>> {
            Ok(match (flag, n) {
                (Some(r), _) => Some(r),
                (None, Some(Number::Plain(r))) => Some(*r),
                (None, Some(Number::Text(t))) => {
                    Some(parse_rate(t).map_err(|e| anyhow!("{}: {e}", in_file(key)))?)
                }
                (None, None) => None,
            })
        };
        let (users, auth) = match (&a.auth, &file.auth, &file.users) {
            (Some(p), _, _) => (
                Some(read_users("--auth", p)?),
                Some(p.display().to_string()),
            ),
            (None, Some(_), Some(_)) => bail!(
                "{}: give the credentials either as a file (auth) or inline ([users]), not both",
                in_file("auth and users")
            ),
            (None, Some(p), None) => {
                let p = here.join(p);
                (
                    Some(read_users(&in_file("auth"), &p)?),
                    Some(p.display().to_string()),
                )
            }
            (None, None, Some(u)) => {
                let text: String = u.iter().map(|(u, p)| format!("{u}:{p}\n")).collect();
                let users = parse_users(&text).map_err(|e| anyhow!("{}: {e}", in_file("users")))?;
                (Some(users), Some(in_file("users")))
            }
            (None, None, None) => (None, None),
        };
        let list =
            |flag: &Vec<String>, key: &str, v: &Option<Vec<String>>| -> Result<Vec<Prefix>> {
                if !flag.is_empty() {
                    prefixes(&format!("--{key}"), flag)
                } else {
                    prefixes(&in_file(key), v.as_deref().unwrap_or(&[]))
                }
            };
        let allow = list(&a.allow, "allow", &file.allow)?;
        let extra_deny = list(&a.deny, "deny", &file.deny)?;
        let mut deny = RelayConfig::default_deny();
        deny.extend_from_slice(&extra_deny);
        let workers = (a.workers.or(file.workers))
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let mode = match a.mode.or(file.mode).unwrap_or(ModeArg::Max) {
            ModeArg::Max => RelayMode::Max,
            ModeArg::Normal => RelayMode::Normal,
        };
        let cfg = RelayConfig {
            listen: (a.listen.or(file.listen))
                .unwrap_or_else(|| "127.0.0.1:1080".parse().expect("a valid default")),
            workers,
            mode,
            splice: match a.splice.or(file.splice).unwrap_or(SpliceArg::Syscall) {
                SpliceArg::Uring => SpliceVia::Uring,
                SpliceArg::Syscall => SpliceVia::Syscall,
            },
            users,
            allow,
            deny,
            connect_timeout: dur(
                a.connect_timeout,
                "connect-timeout",
                &file.connect_timeout,
                "5s",
            )?,
            idle_timeout: dur(a.idle_timeout, "idle-timeout", &file.idle_timeout, "300s")?,
            handshake_timeout: dur(
                a.handshake_timeout,
                "handshake-timeout",
                &file.handshake_timeout,
                "10s",
            )?,
            max_conns: a.max_conns.or(file.max_conns).unwrap_or(10_000),
            max_conns_per_user: (a.max_conns_per_user.or(file.max_conns_per_user)).unwrap_or(1000),
            rate: rate(a.rate, "rate", &file.rate)?,
            user_rate: rate(a.user_rate, "user-rate", &file.user_rate)?,
        };
        if mode == RelayMode::Max && (cfg.rate.is_some() || cfg.user_rate.is_some()) {
            bail!(
                "--rate and --user-rate shape copies through user space: use them with --mode normal"
            );
        }
        cfg.check().map_err(anyhow::Error::msg)?;
        let cores = if a.cores.is_empty() {
            file.cores.clone().unwrap_or_default()
        } else {
            a.cores.clone()
        };
        Ok(Settings {
            cfg,
            extra_deny,
            cores,
            drain: dur(a.drain, "drain", &file.drain, "5s")?,
            auth,
            metrics_listen: match (a.metrics_listen, &file.metrics_listen) {
                (Some(m), _) => Some(m),
                (None, Some(t)) => Some(
                    metrics::parse_listen(t)
                        .map_err(|e| anyhow!("{}: {e}", in_file("metrics-listen")))?,
                ),
                (None, None) => None,
            },
        })
    }

    /// The settings a reload cannot change that differ in `new`.
    fn needs_restart(&self, new: &Settings) -> Vec<&'static str> {
        let (a, b) = (&self.cfg, &new.cfg);
        let mut out = Vec::new();
        let mut differ = |name, d: bool| {
            if d {
                out.push(name)
            }
        };
        differ("listen", a.listen != b.listen);
        differ("workers", a.workers != b.workers);
        differ("mode", a.mode != b.mode);
        differ("splice", a.splice != b.splice);
        differ("cores", self.cores != new.cores);
        differ("connect-timeout", a.connect_timeout != b.connect_timeout);
        differ("idle-timeout", a.idle_timeout != b.idle_timeout);
        differ(
            "handshake-timeout",
            a.handshake_timeout != b.handshake_timeout,
        );
        differ("max-conns", a.max_conns != b.max_conns);
        differ(
            "max-conns-per-user",
            a.max_conns_per_user != b.max_conns_per_user,
        );
        differ("rate", a.rate != b.rate);
        differ("user-rate", a.user_rate != b.user_rate);
        differ("drain", self.drain != new.drain);
        differ("metrics-listen", self.metrics_listen != new.metrics_listen);
        out
    }
}

fn read_users(what: &str, p: &Path) -> Result<HashMap<Vec<u8>, Vec<u8>>> {
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("{what} {}: cannot read it", p.display()))?;
    parse_users(&text).map_err(|e| anyhow!("{what} {}: {e}", p.display()))
}

fn prefixes(flag: &str, list: &[String]) -> Result<Vec<Prefix>> {
    list.iter()
        .map(|s| Prefix::parse(s).map_err(|e| anyhow::anyhow!("{flag}: {e}")))
        .collect()
}

fn line(t: &Totals, before: &Totals, dt: f64) -> String {
    let gbps = |d: usize| (t.bytes[d] - before.bytes[d]) as f64 * 8.0 / dt / 1e9;
    let failed: u64 = t.replies[1..].iter().sum();
    format!(
        "active {:>6}  new {:>7.0}/s  up {:>6.2} Gbps  down {:>6.2} Gbps  failed {failed}",
        t.active,
        (t.total - before.total) as f64 / dt,
        gbps(0),
        gbps(1),
    )
}

/// One set of counts as JSON (names, not positions: reply codes by their name).
fn counts_json(t: &Totals) -> serde_json::Map<String, serde_json::Value> {
    let replies: serde_json::Map<String, serde_json::Value> = Reply::ALL
        .iter()
        .zip(t.replies)
        .map(|(r, n)| (r.name().to_string(), n.into()))
        .collect();
    let serde_json::Value::Object(m) = serde_json::json!({
        "total": t.total,
        "active": t.active,
        "bytes_up": t.bytes[0],
        "bytes_down": t.bytes[1],
        "timeouts": t.timeouts,
        "refused_clients": t.refused_clients,
        "refused_over_limit": t.refused_over_limit,
        "udp_datagrams": t.udp_datagrams,
        "udp_dropped": t.udp_dropped,
        "replies": replies,
    }) else {
        unreachable!("json! of an object literal is an object")
    };
    m
}

/// The totals, then one object per worker (same fields) under `workers`.
fn json(
    t: &Totals,
    workers: &[Totals],
    secs: f64,
    listen: std::net::SocketAddr,
) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert(
        "elapsed_s".into(),
        serde_json::json!((secs * 1e3).round() / 1e3),
    );
    m.insert("listen".into(), listen.to_string().into());
    m.extend(counts_json(t));
    let w: Vec<serde_json::Value> = workers.iter().map(|w| counts_json(w).into()).collect();
    m.insert("workers".into(), w.into());
    serde_json::Value::Object(m)
}

pub fn run(a: RelayArgs) -> Result<()> {
    let mut settings = Settings::load(&a)?;
    let workers = settings.cfg.workers;
    let pin = if settings.cores.is_empty() {
        None
    } else {
        Some(super::cores_for(&settings.cores, workers, "--cores")?)
    };
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let stop = super::stop_flag_on(&[SIGINT, SIGTERM])?;
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(SIGHUP, hup.clone()).context("installing the SIGHUP handler")?;
    let mode = settings.cfg.mode;
    super::warn_host(
        &[],
        pin.as_deref().unwrap_or(&(0..workers).collect::<Vec<_>>()),
    );
    let relay = Relay::start(settings.cfg.clone(), pin, stop.clone(), settings.drain)
        .with_context(|| format!("--listen {}", settings.cfg.listen))?;
    let listen = relay.listen;
    let reloads = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    if let Some(addr) = settings.metrics_listen {
        let (stats, reloads) = (relay.stats.clone(), reloads.clone());
        metrics::serve(addr, Arc::new(move || relay_metrics(&stats, &reloads)))?;
    }
    // The address really listened on (the kernel's port when 0 was asked for): scripts and
    // tests read it from this line.
    tracing::info!(
        %listen,
        "relay: SOCKS5 on {listen} ({} mode, {workers} worker(s), {})",
        match mode {
            RelayMode::Max => "max",
            RelayMode::Normal => "normal",
        },
        match &settings.auth {
            Some(from) => format!("username/password from {from}"),
            None => "no authentication".into(),
        }
    );
    let live = Live::new().streaming("relay", a.json_stream);
    let start = Instant::now();
    let (mut before, mut last) = (Totals::default(), Instant::now());
    while !relay.finished() {
        if hup.swap(false, Ordering::Relaxed) {
            let ok = reload(&a, &relay, &mut settings);
            reloads[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
        }
        if a.duration.is_some_and(|d| start.elapsed() >= d) {
            stop.store(true, Ordering::Relaxed);
        }
        if !stop.load(Ordering::Relaxed) && relay.worker_ended() {
            // A worker that ended on its own has failed: stop the rest and say why (join).
            tracing::error!("relay: a worker stopped unexpectedly; stopping");
            stop.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(50));
        if last.elapsed() >= Duration::from_secs(1) {
            let t = relay.stats.totals();
            let dt = last.elapsed().as_secs_f64();
            live.line(start.elapsed(), &line(&t, &before, dt));
            live.interval(
                start.elapsed(),
                serde_json::json!({
                    "interval_s": round3(dt),
                    "active": t.active,
                    "new": t.total - before.total,
                    "bytes_up": t.bytes[0] - before.bytes[0],
                    "bytes_down": t.bytes[1] - before.bytes[1],
                    "failed": t.replies[1..].iter().sum::<u64>()
                        - before.replies[1..].iter().sum::<u64>(),
                }),
            );
            (before, last) = (t, Instant::now());
        }
    }
    live.done();
    let stats = relay.stats.clone();
    relay.join()?;
    let t = stats.totals();
    let secs = start.elapsed().as_secs_f64();
    if a.json || a.json_stream {
        super::print_document("relay.report", json(&t, &stats.per_worker(), secs, listen));
    } else {
        println!(
            "connections {} ({} still open at exit), bytes up {} down {}, timeouts {}, refused clients {}, refused over --max-conns {}",
            t.total,
            t.active,
            t.bytes[0],
            t.bytes[1],
            t.timeouts,
            t.refused_clients,
            t.refused_over_limit
        );
        if t.udp_datagrams + t.udp_dropped > 0 {
            println!(
                "  udp datagrams relayed {}, dropped {}",
                t.udp_datagrams, t.udp_dropped
            );
        }
        for (r, n) in Reply::ALL.iter().zip(t.replies) {
            if n > 0 {
                println!("  {:<28} {n}", r.name());
            }
        }
        for (i, w) in stats.per_worker().iter().enumerate() {
            println!(
                "  worker {i}: connections {}, bytes up {} down {}",
                w.total, w.bytes[0], w.bytes[1]
            );
        }
    }
    Ok(())
}

/// SIGHUP: the file and the credentials read again. Users, allow and deny take effect for
/// what comes next (open connections keep going); a setting that needs a restart is named and
/// kept; a file that does not parse leaves everything as it was.
fn reload(a: &RelayArgs, relay: &Relay, running: &mut Settings) -> bool {
    let new = match Settings::load(a) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("relay: SIGHUP: {e:#}; still running with the previous settings");
            return false;
        }
    };
    let kept = running.needs_restart(&new);
    if !kept.is_empty() {
        tracing::warn!(
            "relay: SIGHUP: {} changed: that takes a restart; keeping the running value(s)",
            kept.join(", ")
        );
    }
    relay.reload(
        new.cfg.users.clone(),
        new.cfg.allow.clone(),
        &new.extra_deny,
    );
    tracing::info!(
        users = new.cfg.users.as_ref().map_or(0, |u| u.len()),
        allow = new.cfg.allow.len(),
        deny = new.extra_deny.len(),
        "relay: SIGHUP: credentials, allow and deny lists re-read{}",
        new.auth
            .as_deref()
            .map(|f| format!(" (users from {f})"))
            .unwrap_or_default()
    );
    running.cfg.users = new.cfg.users;
    running.cfg.allow = new.cfg.allow;
    running.cfg.deny = new.cfg.deny;
    running.extra_deny = new.extra_deny;
    running.auth = new.auth;
    true
}

/// The relay's counters for Prometheus, per worker.
fn relay_metrics(stats: &RelayStats, reloads: &[AtomicU64; 2]) -> metrics::Metrics {
    let mut m = metrics::Metrics::default();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    for (i, w) in stats.workers.iter().enumerate() {
        let worker = || vec![("worker", i.to_string())];
        let with = |k: &'static str, v: &str| vec![("worker", i.to_string()), (k, v.to_string())];
        m.counter(
            "linerate_relay_connections_accepted",
            "Client connections accepted (and kept past the allow-list and --max-conns).",
            worker(),
            load(&w.total),
        );
        m.gauge(
            "linerate_relay_connections_active",
            "Client connections open now.",
            worker(),
            w.active.load(Ordering::Relaxed) as f64,
        );
        for (r, c) in Reply::ALL.iter().zip(&w.replies) {
            m.counter(
                "linerate_relay_replies",
                "SOCKS5 replies sent (and handshake failures) by their code's name.",
                with("reply", r.name()),
                load(c),
            );
        }
        for (reason, c) in [
            ("client_not_allowed", &w.refused_clients),
            ("over_max_conns", &w.refused_over_limit),
        ] {
            m.counter(
                "linerate_relay_connections_refused",
                "Client connections closed at accept, by reason.",
                with("reason", reason),
                load(c),
            );
        }
        m.counter(
            "linerate_relay_timeouts",
            "Connections closed by the handshake or idle timeout.",
            worker(),
            load(&w.timeouts),
        );
        m.counter(
            "linerate_relay_accept_errors",
            "Accepts that failed (out of descriptors, usually).",
            worker(),
            load(&w.accept_errors),
        );
        for (d, dir) in ["up", "down"].iter().enumerate() {
            m.counter(
                "linerate_relay_bytes",
                "Bytes relayed: up is client to destination, down the way back.",
                with("direction", dir),
                load(&w.bytes[d]),
            );
        }
        for (result, c) in [("relayed", &w.udp_datagrams), ("dropped", &w.udp_dropped)] {
            m.counter(
                "linerate_relay_udp_datagrams",
                "UDP ASSOCIATE datagrams, relayed or dropped.",
                with("result", result),
                load(c),
            );
        }
    }
    for (result, c) in ["ok", "failed"].iter().zip(reloads) {
        m.counter(
            "linerate_relay_reloads",
            "SIGHUP reloads of the configuration, by result.",
            vec![("result", result.to_string())],
            load(c),
        );
    }
    m
}
