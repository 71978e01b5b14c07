//! Control-plane benchmarks (issue 6).
//!
//! `latency`: the time from an SQL `UPDATE` (sent by this process through its own connection,
//! as any client would) to the change being applied in an agent: the agent applies the
//! update's changes to its routing state (`linerate_fwd::fib::Fib`, as `fwd` does) and
//! publishes the new logic to a `ReloadHandle`. Measured per update as the agent's publish
//! instant minus the instant before the statement was sent; one update at a time. Each update
//! re-points route 1 (its next-hop MAC alternates, and its weight counts the updates), so
//! every update rewrites a table entry. Also reported: the cost of the apply alone (routing
//! state plus publish, `apply_*_us`), the time to load the routes at start (`load_ms`: the
//! controller's first full configuration applied) and the process's resident memory before
//! and after the load. `--store memory` sends the same changes through the in-memory store,
//! which isolates the controller and WebSocket path.
//!
//! `fib`: the node side alone, without controller or agent: loads N routes into `fwd`'s
//! routing state (`linerate_fwd::fib::Fib`) as one update and publishes them, then re-points
//! one route per update and publishes, while a worker thread runs the published logic (it
//! picks up each new version, as `fwd`'s workers do, and looks up a destination of the
//! changed route until it sees the new next hop). Reports the load time, the resident memory
//! it added, the per-update cost of the apply plus publish, and the time until the worker
//! decided with the new route.
//!
//! `fleet`: one controller (a child process, `linerate controller`) holding N agents (threads
//! of this process) that report metrics every interval; reports the controller's CPU (user +
//! system seconds per second, from /proc) and memory (RSS, high-water mark) over the window.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use linerate_agent::{Agent, AgentOptions, Dataplane};
use linerate_controller::controller::{self, ControllerOptions};
use linerate_controller::store::MemStore;
use linerate_dataplane::logic::{AnyLogic, ReloadHandle, Router};
use linerate_fwd::fib::Fib;
use linerate_proto::{Capability, Change, Config, Counter, Mac, Route};
use linerate_store_pg::PgStore;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// SQL UPDATE (or in-memory change) to applied-in-the-agent latency.
    Latency {
        #[arg(long, value_enum, default_value = "postgres")]
        store: StoreKind,
        /// PostgreSQL URL (default $LINERATE_TEST_DATABASE_URL).
        #[arg(long)]
        database: Option<String>,
        #[arg(long, default_value_t = 1000)]
        updates: u32,
        /// Routes the node holds (each update changes one of them).
        #[arg(long, default_value_t = 100)]
        routes: u64,
    },
    /// fwd's routing state alone: load time, memory, update cost with a worker reading.
    Fib {
        #[arg(long, default_value_t = 1_000_000)]
        routes: u64,
        #[arg(long, default_value_t = 1000)]
        updates: u32,
    },
    /// One controller, N agents reporting metrics: the controller's CPU and memory.
    Fleet {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Metrics interval per agent, in milliseconds.
        #[arg(long, default_value_t = 100)]
        every_ms: u64,
        /// Measurement window, seconds (after every agent registered).
        #[arg(long, default_value_t = 30)]
        secs: u64,
        /// The `linerate` binary to run the controller with.
        #[arg(long, default_value = "target/release/linerate")]
        linerate: String,
        /// Give the controller this PostgreSQL URL (default: in-memory store).
        #[arg(long)]
        database: Option<String>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    Postgres,
    Memory,
}

const TOKEN: &str = "control-bench-token";

/// Each apply: when, route 1's weight after it, and what the apply cost.
type Applied = Arc<Mutex<Vec<(Instant, Option<u32>, Duration)>>>;

/// Applies updates to the routing state like `fwd` does and publishes; records when.
struct Publishing {
    handle: ReloadHandle<AnyLogic>,
    fib: Fib,
    applied: Applied,
}

impl Dataplane for Publishing {
    fn apply(&mut self, config: &Config, changes: &[Change]) {
        let t0 = Instant::now();
        let _ = self.fib.apply(changes, config);
        self.handle.publish(self.fib.logic());
        let now = Instant::now();
        let weight = config.routes.get(&1).map(|r| r.weight);
        self.applied.lock().unwrap().push((now, weight, now - t0));
    }
}

/// Route `id`: the `id`-th /24 from 10.0.0.0 (10.0.1.0/24 for 1; a million reach 25.66.63.0),
/// through next-hop MAC ...:01 or ...:02.
fn route(id: u64, weight: u32, mac: u8) -> Route {
    let addr = std::net::Ipv4Addr::from(0x0a00_0000u32 + ((id as u32) << 8));
    Route {
        id,
        prefix: format!("{addr}/24").parse().unwrap(),
        port: "eth0".into(),
        next_hop: Mac([2, 0, 0, 0, 0, mac]),
        weight,
    }
}

/// Update `i`'s next-hop MAC for route 1 (it alternates, so every update re-points it).
fn update_mac(i: u32) -> u8 {
    if i.is_multiple_of(2) { 2 } else { 1 }
}

/// Resident memory of this process, MiB.
fn rss_mib() -> f64 {
    proc_kib(std::process::id(), "VmRSS:").map_or(0.0, |k| k as f64 / 1024.0)
}

/// Waits (without spinning: the agent and controller need the cores) until the agent applied
/// route 1 with weight `want`, looking at applies from index `from` on; returns when.
async fn applied_at(
    applied: &Mutex<Vec<(Instant, Option<u32>, Duration)>>,
    updates: &mut tokio::sync::watch::Receiver<u64>,
    want: u32,
    from: usize,
) -> Result<(Instant, Duration)> {
    loop {
        {
            let a = applied.lock().unwrap();
            let found = a[from.min(a.len())..]
                .iter()
                .find(|(_, w, _)| *w == Some(want));
            if let Some((at, _, cost)) = found {
                return Ok((*at, *cost));
            }
        }
        tokio::time::timeout(Duration::from_secs(10), updates.changed())
            .await
            .with_context(|| format!("update to weight {want} never arrived"))??;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn latency(
    kind: StoreKind,
    database: Option<String>,
    updates: u32,
    routes: u64,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let applied = Arc::new(Mutex::new(Vec::new()));
    let dataplane = Publishing {
        handle: ReloadHandle::new(AnyLogic::new(Router::new())),
        fib: Fib::new(vec!["eth0".into()], vec![[2, 0, 0, 0, 0, 0xfe]], true),
        applied: applied.clone(),
    };
    let mut samples = Vec::with_capacity(updates as usize);
    let mut costs = Vec::with_capacity(updates as usize);
    let (load, rss_before, rss_after);
    match kind {
        StoreKind::Postgres => {
            let url = database
                .or_else(|| std::env::var("LINERATE_TEST_DATABASE_URL").ok())
                .context("--database or LINERATE_TEST_DATABASE_URL")?;
            let schema = format!("bench_{}", std::process::id());
            let store = Arc::new(PgStore::connect_in_schema(&url, &schema).await?);
            let pool = store.pool().clone();
            let mut tx = pool.begin().await?;
            for id in 1..=routes {
                sqlx::query(
                    "INSERT INTO routes (id, node, prefix, port, next_hop, weight) \
                     VALUES ($1, 'bench', $2::cidr, 'eth0', '02:00:00:00:00:01', 1)",
                )
                .bind(id as i64)
                .bind(route(id, 1, 1).prefix.to_string())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            let ctl = controller::spawn(listener, store.clone(), quiet())?;
            rss_before = rss_mib();
            let t0 = Instant::now();
            let agent = start_agent(ctl.local_addr(), "bench", dataplane)?;
            while agent.snapshot().config.routes.len() != routes as usize {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            load = t0.elapsed();
            rss_after = rss_mib();
            let mut watch = agent.watch();
            let mut conn = pool.acquire().await?;
            for i in 0..updates {
                let want = 2 + i;
                let from = applied.lock().unwrap().len();
                let t0 = Instant::now();
                sqlx::query("UPDATE routes SET weight = $1, next_hop = $2::macaddr WHERE id = 1")
                    .bind(want as i32)
                    .bind(format!("02:00:00:00:00:{:02x}", update_mac(i)))
                    .execute(&mut *conn)
                    .await?;
                let (at, cost) = applied_at(&applied, &mut watch, want, from).await?;
                samples.push(at - t0);
                costs.push(cost);
            }
            drop(agent);
            ctl.stop().await;
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&pool)
                .await?;
        }
        StoreKind::Memory => {
            let store = Arc::new(MemStore::new());
            for id in 1..=routes {
                store.apply("bench", Change::Route(route(id, 1, 1)));
            }
            let ctl = controller::spawn(listener, store.clone(), quiet())?;
            rss_before = rss_mib();
            let t0 = Instant::now();
            let agent = start_agent(ctl.local_addr(), "bench", dataplane)?;
            while agent.snapshot().config.routes.len() != routes as usize {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            load = t0.elapsed();
            rss_after = rss_mib();
            let mut watch = agent.watch();
            for i in 0..updates {
                let want = 2 + i;
                let from = applied.lock().unwrap().len();
                let t0 = Instant::now();
                store.apply("bench", Change::Route(route(1, want, update_mac(i))));
                let (at, cost) = applied_at(&applied, &mut watch, want, from).await?;
                samples.push(at - t0);
                costs.push(cost);
            }
            drop(agent);
            ctl.stop().await;
        }
    }
    samples.sort();
    costs.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let j = serde_json::json!({
        "bench": "control_latency",
        "store": match kind {
            StoreKind::Postgres => "postgres",
            StoreKind::Memory => "memory",
        },
        "updates": samples.len(),
        "routes": routes,
        "p50_us": us(percentile(&samples, 0.5)).round(),
        "p90_us": us(percentile(&samples, 0.9)).round(),
        "p99_us": us(percentile(&samples, 0.99)).round(),
        "max_us": us(samples[samples.len() - 1]).round(),
        "min_us": us(samples[0]).round(),
        "apply_p50_us": us(percentile(&costs, 0.5)).round(),
        "apply_p99_us": us(percentile(&costs, 0.99)).round(),
        "apply_max_us": us(costs[costs.len() - 1]).round(),
        "load_ms": (load.as_secs_f64() * 1e3).round(),
        "rss_before_load_mib": rss_before.round(),
        "rss_after_load_mib": rss_after.round(),
    });
    println!("{j}");
    Ok(())
}

fn quiet() -> ControllerOptions {
    let mut o = ControllerOptions::new(TOKEN);
    o.verbose = false;
    o
}

fn start_agent(addr: std::net::SocketAddr, node: &str, dp: impl Dataplane) -> Result<Agent> {
    let mut opts = AgentOptions::new(format!("ws://{addr}/"), TOKEN, node);
    opts.metrics_every = None;
    opts.verbose = false;
    Ok(Agent::start(opts, dp)?)
}

/// Reports four counters, as a small node would.
struct Reporter(Arc<AtomicU64>);

impl Dataplane for Reporter {
    fn apply(&mut self, _: &Config, _: &[Change]) {}

    fn metrics(&mut self) -> Vec<Counter> {
        let v = self.0.fetch_add(1, Ordering::Relaxed);
        ["rx_packets", "tx_packets", "rx_bytes", "dropped"]
            .iter()
            .map(|n| Counter {
                name: n.to_string(),
                port: None,
                value: v,
            })
            .collect()
    }
}

fn proc_cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // USER_HZ, the unit of these fields, is 100 on every architecture Linux supports.
    Ok(ticks / 100.0)
}

fn proc_kib(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .with_context(|| format!("{key} in /proc/{pid}/status"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context(key.to_string())?
        .parse()?)
}

fn fleet(
    agents: usize,
    every_ms: u64,
    secs: u64,
    linerate: &str,
    database: Option<String>,
) -> Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut cmd = std::process::Command::new(linerate);
    cmd.env("LINERATE_TOKEN", TOKEN)
        .args([
            "controller",
            // The controller's own work is measured: plain WebSocket on loopback.
            "--insecure-shared-token",
            "--quiet",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(std::process::Stdio::null());
    if let Some(db) = &database {
        cmd.args(["--database", db]);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {linerate} controller"))?;
    let pid = child.id();
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            bail!("the controller never listened");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rss_idle = proc_kib(pid, "VmRSS:")?;
    let reports = Arc::new(AtomicU64::new(0));
    let mut fleet = Vec::with_capacity(agents);
    for i in 0..agents {
        let mut opts = AgentOptions::new(format!("ws://127.0.0.1:{port}/"), TOKEN, format!("n{i}"));
        opts.metrics_every = Some(Duration::from_millis(every_ms));
        opts.capabilities = vec![Capability::Routes, Capability::Metrics];
        opts.verbose = false;
        fleet.push(Agent::start(opts, Reporter(reports.clone()))?);
    }
    let t = Instant::now();
    while fleet
        .iter()
        .any(|a| !a.stats().connected.load(Ordering::Relaxed))
    {
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            bail!("not every agent connected within a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let connect_secs = t.elapsed().as_secs_f64();
    // Let the first reports settle, then measure.
    std::thread::sleep(Duration::from_secs(2));
    let (cpu0, sent0, w0) = (proc_cpu_secs(pid)?, sent(&fleet), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (cpu1, sent1, dt) = (
        proc_cpu_secs(pid)?,
        sent(&fleet),
        w0.elapsed().as_secs_f64(),
    );
    let rss = proc_kib(pid, "VmRSS:")?;
    let hwm = proc_kib(pid, "VmHWM:")?;
    let disconnects: u64 = fleet
        .iter()
        .map(|a| a.stats().disconnects.load(Ordering::Relaxed))
        .sum();
    drop(fleet);
    let _ = child.kill();
    let _ = child.wait();
    let round = |v: f64, places: i32| (v * 10f64.powi(places)).round() / 10f64.powi(places);
    let j = serde_json::json!({
        "bench": "control_fleet",
        "store": if database.is_some() { "postgres" } else { "memory" },
        "agents": agents,
        "every_ms": every_ms,
        "window_s": round(dt, 1),
        "connect_all_s": round(connect_secs, 2),
        "reports_per_s": ((sent1 - sent0) as f64 / dt).round(),
        "controller_cpu": round((cpu1 - cpu0) / dt, 3),
        "rss_idle_mib": round(rss_idle as f64 / 1024.0, 1),
        "rss_mib": round(rss as f64 / 1024.0, 1),
        "hwm_mib": round(hwm as f64 / 1024.0, 1),
        "disconnects": disconnects,
    });
    println!("{j}");
    Ok(())
}

fn sent(fleet: &[Agent]) -> u64 {
    fleet
        .iter()
        .map(|a| a.stats().metrics_sent.load(Ordering::Relaxed))
        .sum()
}

fn fib_bench(routes: u64, updates: u32) -> Result<()> {
    use linerate_dataplane::logic::Logic;
    use linerate_dataplane::logic::test_frames;
    use linerate_dataplane::verdict::Verdict;
    let mut config = Config::default();
    for id in 1..=routes {
        config.routes.insert(id, route(id, 1, 1));
    }
    let changes = Config::default().diff(&config);
    let handle = ReloadHandle::new(AnyLogic::new(Router::new()));
    let rss0 = rss_mib();
    let t0 = Instant::now();
    let mut fib = Fib::new(vec!["eth0".into()], vec![[2, 0, 0, 0, 0, 0xfe]], true);
    let (_, warnings) = fib.apply(&changes, &config);
    handle.publish(fib.logic());
    let load = t0.elapsed();
    let rss1 = rss_mib();
    if !warnings.is_empty() {
        bail!("{} routes refused, first: {}", warnings.len(), warnings[0]);
    }
    drop(changes);
    // A worker: reloads every round (as an idle `fwd` worker does at least every
    // millisecond) and decides a packet to route 1's /24; reports the version at which it
    // first saw the MAC it was told to wait for.
    let want = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(Vec::<(u64, Instant)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let (want, seen, stop) = (want.clone(), seen.clone(), stop.clone());
        let mut logic = handle.reloadable();
        std::thread::spawn(move || {
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                logic.tick(Duration::ZERO);
                let (mut f, h) = test_frames::ipv4("192.0.2.1", "10.0.1.9", 64, 17, 1, 2);
                let w = want.load(Ordering::Acquire);
                if let Verdict::Forward(_) = logic.decide(&mut f, &h, 0)
                    && w != last
                    && u64::from(f[5]) == w & 0xff
                {
                    seen.lock().unwrap().push((w >> 8, Instant::now()));
                    last = w;
                }
            }
        })
    };
    let mut costs = Vec::with_capacity(updates as usize);
    let mut visible = Vec::with_capacity(updates as usize);
    for i in 0..updates {
        let mac = update_mac(i);
        want.store(u64::from(i + 1) << 8 | u64::from(mac), Ordering::Release);
        let t = Instant::now();
        config.routes.insert(1, route(1, 2 + i, mac));
        let change = [Change::Route(config.routes[&1].clone())];
        fib.apply(&change, &config);
        handle.publish(fib.logic());
        costs.push(t.elapsed());
        // Wait for the worker to decide with it (bounded: a lost update fails the run).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(&(_, at)) = seen
                .lock()
                .unwrap()
                .iter()
                .find(|(v, _)| *v == u64::from(i + 1))
            {
                visible.push(at - t);
                break;
            }
            if Instant::now() > deadline {
                bail!("update {i} never reached the worker");
            }
            std::thread::yield_now();
        }
    }
    stop.store(true, Ordering::Relaxed);
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("the worker thread panicked"))?;
    costs.sort();
    visible.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let j = serde_json::json!({
        "bench": "fib_update",
        "routes": routes,
        "updates": updates,
        "load_ms": (load.as_secs_f64() * 1e3).round(),
        "rss_added_mib": (rss1 - rss0).round(),
        "apply_publish_p50_us": (us(percentile(&costs, 0.5)) * 10.0).round() / 10.0,
        "apply_publish_p99_us": (us(percentile(&costs, 0.99)) * 10.0).round() / 10.0,
        "apply_publish_max_us": us(costs[costs.len() - 1]).round(),
        "worker_sees_p50_us": (us(percentile(&visible, 0.5)) * 10.0).round() / 10.0,
        "worker_sees_p99_us": (us(percentile(&visible, 0.99)) * 10.0).round() / 10.0,
        "table_copies": fib.copies(),
    });
    println!("{j}");
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Fib { routes, updates } => fib_bench(routes, updates),
        Cmd::Latency {
            store,
            database,
            updates,
            routes,
        } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?
            .block_on(latency(store, database, updates, routes)),
        Cmd::Fleet {
            agents,
            every_ms,
            secs,
            linerate,
            database,
        } => fleet(agents, every_ms, secs, &linerate, database),
    }
}
