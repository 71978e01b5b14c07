//! `linerate relay`: a SOCKS5 server (RFC 1928/1929) on per-core io_uring workers. Max mode
//! splices the two TCP connections together inside the kernel; normal mode copies through
//! user space under per-connection and per-user rate limits.

use super::{Live, parse_duration, parse_rate};
use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use linerate_dataplane::logic::Prefix;
use linerate_relay::proto::Reply;
use linerate_relay::{Relay, RelayConfig, RelayMode, SpliceVia, Totals, parse_users};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// Splice in the kernel (io_uring): the payload never enters user space.
    Max,
    /// Copy through user space (registered buffers), with --rate / --user-rate.
    Normal,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SpliceArg {
    /// splice(2) from the worker when the io_uring poll says ready (the default).
    Syscall,
    /// IORING_OP_SPLICE requests after each poll.
    Uring,
}

#[derive(clap::Args)]
pub struct RelayArgs {
    /// Address to listen on (loopback unless told otherwise; port 0: one the kernel picks,
    /// printed on standard error and in --json).
    #[arg(long, default_value = "127.0.0.1:1080")]
    listen: SocketAddr,
    #[arg(long, value_enum, default_value = "max")]
    mode: ModeArg,
    /// Max mode: how splices are issued. splice(2) on readiness measured faster here (17.8
    /// against 15.7 Gbit/s for one stream, 0.39 against 0.44 CPU-s/GB; the kernel runs every
    /// io_uring splice on a worker thread; docs/BENCHMARKS.md).
    #[arg(long, value_enum, default_value = "syscall")]
    splice: SpliceArg,
    /// Workers, each with its own io_uring and SO_REUSEPORT listener (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Cores to pin the workers to, one per worker (default: not pinned).
    #[arg(long, value_delimiter = ',')]
    cores: Vec<usize>,
    /// Require username/password: a file of `user:password` lines.
    #[arg(long)]
    auth: Option<PathBuf>,
    /// Accept clients only from this prefix (repeatable; default: any).
    #[arg(long)]
    allow: Vec<String>,
    /// Refuse destinations in this prefix (repeatable), besides link-local and the relay's
    /// own listening address, which are always refused.
    #[arg(long)]
    deny: Vec<String>,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Close relayed connections idle this long.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Close clients that have not finished the handshake after this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// Connections open at once, in all, counted from accept (handshakes too); more are
    /// closed at accept.
    #[arg(long, default_value_t = 10_000)]
    max_conns: usize,
    /// Connections relayed at once per user; more are refused (reply 0x02).
    #[arg(long, default_value_t = 1000)]
    max_conns_per_user: usize,
    /// Normal mode: bits per second per connection and direction (e.g. 100M).
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Normal mode: bits per second per user, all connections together.
    #[arg(long, value_parser = parse_rate)]
    user_rate: Option<f64>,
    /// On SIGINT/SIGTERM: stop accepting, let open connections finish for this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain: Duration,
    /// Stop after this long (default: until a signal).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    #[arg(long)]
    json: bool,
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
fn json(t: &Totals, workers: &[Totals], secs: f64, listen: std::net::SocketAddr) -> String {
    let mut m = serde_json::Map::new();
    m.insert(
        "elapsed_s".into(),
        serde_json::json!((secs * 1e3).round() / 1e3),
    );
    m.insert("listen".into(), listen.to_string().into());
    m.extend(counts_json(t));
    let w: Vec<serde_json::Value> = workers.iter().map(|w| counts_json(w).into()).collect();
    m.insert("workers".into(), w.into());
    serde_json::Value::Object(m).to_string()
}

pub fn run(a: RelayArgs) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = a.workers.unwrap_or(cores);
    let pin = if a.cores.is_empty() {
        None
    } else {
        Some(super::cores_for(&a.cores, workers, "--cores")?)
    };
    let users = match &a.auth {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("--auth {}: cannot read it", p.display()))?;
            Some(parse_users(&text).map_err(|e| anyhow::anyhow!("--auth {}: {e}", p.display()))?)
        }
    };
    let mode = match a.mode {
        ModeArg::Max => RelayMode::Max,
        ModeArg::Normal => RelayMode::Normal,
    };
    if mode == RelayMode::Max && (a.rate.is_some() || a.user_rate.is_some()) {
        bail!(
            "--rate and --user-rate shape copies through user space: use them with --mode normal"
        );
    }
    let mut deny = RelayConfig::default_deny();
    deny.extend(prefixes("--deny", &a.deny)?);
    let cfg = RelayConfig {
        listen: a.listen,
        workers,
        mode,
        splice: match a.splice {
            SpliceArg::Uring => SpliceVia::Uring,
            SpliceArg::Syscall => SpliceVia::Syscall,
        },
        users,
        allow: prefixes("--allow", &a.allow)?,
        deny,
        connect_timeout: a.connect_timeout,
        idle_timeout: a.idle_timeout,
        handshake_timeout: a.handshake_timeout,
        max_conns: a.max_conns,
        max_conns_per_user: a.max_conns_per_user,
        rate: a.rate,
        user_rate: a.user_rate,
    };
    cfg.check().map_err(anyhow::Error::msg)?;
    let stop = super::stop_flag()?;
    let relay = Relay::start(cfg, pin, stop.clone(), a.drain)
        .with_context(|| format!("--listen {}", a.listen))?;
    let listen = relay.listen;
    // The address really listened on (the kernel's port when 0 was asked for): scripts and
    // tests read it from this line.
    eprintln!(
        "relay: SOCKS5 on {listen} ({} mode, {workers} worker(s){})",
        match mode {
            RelayMode::Max => "max",
            RelayMode::Normal => "normal",
        },
        if a.auth.is_some() {
            ", username/password"
        } else {
            ", no authentication"
        }
    );
    let live = Live::new();
    let start = Instant::now();
    let (mut before, mut last) = (Totals::default(), Instant::now());
    while !relay.finished() {
        if a.duration.is_some_and(|d| start.elapsed() >= d) {
            stop.store(true, Ordering::Relaxed);
        }
        if !stop.load(Ordering::Relaxed) && relay.worker_ended() {
            // A worker that ended on its own has failed: stop the rest and say why (join).
            eprintln!("relay: a worker stopped unexpectedly; stopping");
            stop.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(50));
        if last.elapsed() >= Duration::from_secs(1) {
            let t = relay.stats.totals();
            live.line(
                start.elapsed(),
                &line(&t, &before, last.elapsed().as_secs_f64()),
            );
            (before, last) = (t, Instant::now());
        }
    }
    live.done();
    let stats = relay.stats.clone();
    relay.join()?;
    let t = stats.totals();
    let secs = start.elapsed().as_secs_f64();
    if a.json {
        println!("{}", json(&t, &stats.per_worker(), secs, listen));
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
