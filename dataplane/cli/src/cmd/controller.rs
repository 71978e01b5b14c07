//! `linerate controller`: the control plane's server. Nodes (`linerate fwd --controller`)
//! register over WebSocket with a bearer token and receive their routes, flow pins and port
//! settings, whole at first and then as diffs; their metrics are stored.
//!
//! State lives in memory (the default: routes come from `--config`, re-read on SIGHUP) or in
//! PostgreSQL (`--database`), where any SQL client changes routes live through triggers.

use super::{parse_duration, parse_rate};
use anyhow::{Context, Result, anyhow, bail};
use linerate_controller::controller::{self, ControllerOptions};
use linerate_controller::store::MemStore;
use linerate_proto::{
    Config, Flow, FlowMatch, Mac, PortSettings, Prefix, Route, Scheduler, Shaper, Validate,
};
use linerate_store_pg::PgStore;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
}

/// The `--config` file of the in-memory store.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SeedFile {
    #[serde(default)]
    route: Vec<SeedRoute>,
    #[serde(default)]
    flow: Vec<SeedFlow>,
    #[serde(default)]
    port: Vec<SeedPort>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedRoute {
    node: String,
    id: u64,
    prefix: String,
    port: String,
    next_hop: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedFlow {
    node: String,
    id: u64,
    route: u64,
    src: Option<String>,
    dst: Option<String>,
    proto: Option<u8>,
    src_port: Option<u16>,
    dst_port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedPort {
    node: String,
    port: String,
    /// `fcfs`, `wrr:W1,W2,...` or `drr:Q1,Q2,...`.
    scheduler: Option<String>,
    /// `RATE[,BURST_BYTES]`, rate in bit/s with an optional k/M/G suffix.
    shaper: Option<String>,
    /// bit/s with an optional k/M/G suffix.
    link_rate: Option<String>,
}

fn weights(what: &str, list: &str) -> Result<Vec<u32>> {
    list.split(',')
        .map(|w| {
            w.trim()
                .parse()
                .map_err(|_| anyhow!("{what}: '{w}' is not a number"))
        })
        .collect()
}

/// Reads the seed file into one configuration per node, every row checked.
fn read_seed(path: &Path) -> Result<BTreeMap<String, Config>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let seed: SeedFile =
        toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
    let mut nodes: BTreeMap<String, Config> = BTreeMap::new();
    for r in seed.route {
        let what = format!("{}: route {} of node '{}'", path.display(), r.id, r.node);
        let route = Route {
            id: r.id,
            prefix: r
                .prefix
                .parse::<Prefix>()
                .map_err(|e| anyhow!("{what}: {e}"))?,
            port: r.port,
            next_hop: r
                .next_hop
                .parse::<Mac>()
                .map_err(|e| anyhow!("{what}: {e}"))?,
            weight: r.weight,
        };
        route.validate().map_err(|e| anyhow!("{what}: {e}"))?;
        let c = nodes.entry(r.node).or_default();
        if c.routes.insert(route.id, route).is_some() {
            bail!("{what}: the id is used twice");
        }
    }
    for f in seed.flow {
        let what = format!("{}: flow {} of node '{}'", path.display(), f.id, f.node);
        let prefix = |p: Option<String>| -> Result<Option<Prefix>> {
            p.map(|p| p.parse().map_err(|e| anyhow!("{what}: {e}")))
                .transpose()
        };
        let flow = Flow {
            id: f.id,
            matcher: FlowMatch {
                src: prefix(f.src)?,
                dst: prefix(f.dst)?,
                proto: f.proto,
                src_port: f.src_port,
                dst_port: f.dst_port,
            },
            route: f.route,
        };
        flow.validate().map_err(|e| anyhow!("{what}: {e}"))?;
        let c = nodes.entry(f.node).or_default();
        if !c.routes.contains_key(&flow.route) {
            bail!("{what}: route {} is not a route of this node", flow.route);
        }
        if c.flows.insert(flow.id, flow).is_some() {
            bail!("{what}: the id is used twice");
        }
    }
    for p in seed.port {
        let what = format!("{}: port {} of node '{}'", path.display(), p.port, p.node);
        let scheduler = match p
            .scheduler
            .as_deref()
            .map(|s| s.split_once(':').unwrap_or((s, "")))
        {
            None | Some(("fcfs", "")) => Scheduler::Fcfs,
            Some(("wrr", w)) => Scheduler::Wrr(weights(&what, w)?),
            Some(("drr", q)) => Scheduler::Drr(weights(&what, q)?),
            Some((other, _)) => {
                bail!("{what}: scheduler '{other}' is not fcfs, wrr:W,.. or drr:Q,..")
            }
        };
        let shaper = match p.shaper {
            None => None,
            Some(s) => {
                let (rate, burst) = s.split_once(',').unwrap_or((&s, "15000"));
                Some(Shaper {
                    rate_bps: parse_rate(rate.trim()).map_err(|e| anyhow!("{what}: {e}"))? as u64,
                    burst_bytes: burst
                        .trim()
                        .parse()
                        .map_err(|_| anyhow!("{what}: burst '{burst}' is not a byte count"))?,
                })
            }
        };
        let link_rate_bps = (p.link_rate.as_deref())
            .map(|r| {
                parse_rate(r)
                    .map(|r| r as u64)
                    .map_err(|e| anyhow!("{what}: {e}"))
            })
            .transpose()?;
        let settings = PortSettings {
            port: p.port,
            scheduler,
            shaper,
            link_rate_bps,
        };
        settings.validate().map_err(|e| anyhow!("{what}: {e}"))?;
        let c = nodes.entry(p.node).or_default();
        if c.ports.insert(settings.port.clone(), settings).is_some() {
            bail!("{what}: given twice");
        }
    }
    // The store keys routes and flows by id across nodes: one id on two nodes would move
    // between them at every reload.
    let (mut routes, mut flows) = (BTreeMap::new(), BTreeMap::new());
    for (node, c) in &nodes {
        linerate_proto::check_name("node", node)
            .map_err(|e| anyhow!("{}: node '{node}': {e}", path.display()))?;
        for id in c.routes.keys() {
            if let Some(other) = routes.insert(*id, node) {
                bail!(
                    "{}: route id {id} is used by nodes '{other}' and '{node}'",
                    path.display()
                );
            }
        }
        for id in c.flows.keys() {
            if let Some(other) = flows.insert(*id, node) {
                bail!(
                    "{}: flow id {id} is used by nodes '{other}' and '{node}'",
                    path.display()
                );
            }
        }
    }
    Ok(nodes)
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
                eprintln!(
                    "controller: listening on ws://{}/ (PostgreSQL store)",
                    ctl.local_addr()
                );
                loop {
                    tokio::select! {
                        _ = &mut deadline => break,
                        _ = signals.stop() => break,
                        _ = hup.recv() => eprintln!(
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
                eprintln!(
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
                            None => eprintln!("controller: SIGHUP: no --config to re-read"),
                            Some(p) => match read_seed(p) {
                                Ok(seed) => {
                                    apply_seed(&store, seed, &mut configured);
                                    eprintln!("controller: re-read {}", p.display());
                                }
                                Err(e) => eprintln!(
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
        eprintln!("controller: could not raise the descriptor limit from {soft}: {e}");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(text: &str) -> Result<BTreeMap<String, Config>> {
        let dir = std::env::temp_dir().join(format!("linerate-seed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("{}.toml", text.len()));
        std::fs::write(&p, text).unwrap();
        let r = read_seed(&p);
        let _ = std::fs::remove_file(&p);
        r
    }

    #[test]
    fn a_seed_file_becomes_one_config_per_node() {
        let nodes = seed(
            r#"
            [[route]]
            node = "r1"
            id = 1
            prefix = "10.0.0.0/24"
            port = "veth1"
            next_hop = "02:00:00:00:00:01"
            [[route]]
            node = "r2"
            id = 2
            prefix = "2001:db8::/64"
            port = "veth2"
            next_hop = "02:00:00:00:00:02"
            weight = 3
            [[flow]]
            node = "r1"
            id = 5
            route = 1
            dst = "10.0.0.9"
            proto = 17
            dst_port = 53
            [[port]]
            node = "r1"
            port = "veth1"
            scheduler = "wrr:3,1"
            shaper = "100M,30000"
            link_rate = "10G"
            "#,
        )
        .unwrap();
        assert_eq!(nodes.len(), 2);
        let r1 = &nodes["r1"];
        assert_eq!(r1.flows[&5].matcher.dst.unwrap().len, 32);
        assert_eq!(r1.ports["veth1"].scheduler, Scheduler::Wrr(vec![3, 1]));
        assert_eq!(r1.ports["veth1"].shaper.unwrap().rate_bps, 100_000_000);
        assert_eq!(r1.ports["veth1"].link_rate_bps, Some(10_000_000_000));
        assert_eq!(nodes["r2"].routes[&2].weight, 3);
    }

    #[test]
    fn bad_seed_rows_are_named() {
        let cases = [
            (
                "[[route]]\nnode='a'\nid=1\nprefix='10.0.0.1/8'\nport='x'\nnext_hop='02:00:00:00:00:01'",
                "host bits",
            ),
            (
                "[[route]]\nnode='a'\nid=1\nprefix='10.0.0.0/8'\nport='x'\nnext_hop='zz'",
                "not a MAC",
            ),
            (
                "[[route]]\nnode='a'\nid=1\nprefix='10.0.0.0/8'\nport='x'\nnext_hop='02:00:00:00:00:01'\nweight=0",
                "weight",
            ),
            (
                "[[flow]]\nnode='a'\nid=1\nroute=9",
                "route 9 is not a route of this node",
            ),
            (
                "[[port]]\nnode='a'\nport='x'\nscheduler='fifo'",
                "scheduler 'fifo'",
            ),
            (
                "[[route]]\nnode='a b'\nid=1\nprefix='10.0.0.0/8'\nport='x'\nnext_hop='02:00:00:00:00:01'",
                "node 'a b'",
            ),
            ("[[rout]]\nnode='a'", "unknown field"),
            (
                "[[route]]\nnode='a'\nid=1\nprefix='10.0.0.0/8'\nport='x'\nnext_hop='02:00:00:00:00:01'\n\
              [[route]]\nnode='b'\nid=1\nprefix='10.0.0.0/8'\nport='x'\nnext_hop='02:00:00:00:00:01'",
                "route id 1 is used by nodes 'a' and 'b'",
            ),
        ];
        for (text, want) in cases {
            let e = format!("{:#}", seed(text).unwrap_err());
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
