//! The emulation commands (library `linerate-emu`): `up` builds a network from a topology file
//! or a generator and runs it; `down` removes it (also what a killed `up` left); `exec`,
//! `ping`, `pingall` and `iperf` run programs inside nodes; `status` shows the live counters;
//! `link` changes a link while traffic runs.

use super::emu_control::Control;
use super::{Live, parse_duration};
use anyhow::{Context, Result, anyhow, bail};
use linerate_emu::control::link_row;
use linerate_emu::ctl::{self, Answer, Request};
use linerate_emu::emulator::{self, Emulation, Options, Status};
use linerate_emu::plan::{self, Plan};
use linerate_emu::topo::{self, LinkSpec, RoutingMode, generate};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct UpArgs {
    /// Topology file (TOML; see docs/TOPOLOGY.md).
    file: Option<PathBuf>,
    /// Generate a topology instead: linear,N  ring,N  mesh,N  tree,DEPTH,FANOUT  fat-tree,K
    /// torus,X,Y (routers in that shape, each with hosts).
    #[arg(long, conflicts_with = "file")]
    topo: Option<String>,
    /// Settings of every generated link, e.g. rate=10M,delay=1ms,loss=1%.
    #[arg(long, requires = "topo")]
    link: Option<String>,
    /// Routing of a generated topology: shortest-path, ecmp, weighted or static.
    #[arg(long, value_parser = ["shortest-path", "ecmp", "weighted", "static"])]
    routing: Option<String>,
    /// The emulation's name (default: the file's stem, or `lr`).
    #[arg(long)]
    name: Option<String>,
    /// Emulator workers (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Cores to pin the workers to, one per worker (default: not pinned).
    #[arg(long, value_delimiter = ',')]
    cores: Vec<usize>,
    /// Memory the emulator may use for packet buffers, e.g. 2G (default: a quarter of the
    /// available memory, at most 8G).
    #[arg(long)]
    memory: Option<String>,
    /// Return once the network is up; it runs on in the background until `linerate down`.
    #[arg(long)]
    detach: bool,
    /// Stop after this long (default: until Ctrl-C or `linerate down`).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// With a [placement] section: the host this emulator is (it builds that host's nodes and
    /// carries the links cut to the others over its tunnel; docs/TOPOLOGY.md).
    #[arg(long)]
    host: Option<String>,
    /// With `[placement] hosts = [...]`: this host's tunnel address (UDP ADDR:PORT peers send
    /// to), registered in --database; the emulation is placed once every host has registered.
    #[arg(long, requires = "host")]
    tunnel: Option<std::net::SocketAddr>,
    /// How long to wait for the other hosts to register.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    join_timeout: Duration,
    /// Serve Prometheus metrics (OpenMetrics text) on http://ADDR/metrics: per link
    /// direction, node and flow; a port alone means loopback.
    #[arg(long, value_parser = super::metrics::parse_listen)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Check the topology and print the plan's summary; build nothing.
    #[arg(long)]
    check: bool,
    /// Keep the emulation's configuration in this PostgreSQL database (tables `links`,
    /// `emu_routes`, `emu_nodes`; see docs/CONTROL.md), e.g.
    /// postgres://user:pass@127.0.0.1/linerate. Default: an in-memory store.
    #[arg(long)]
    database: Option<String>,
    /// The database schema to use (created when missing).
    #[arg(long, default_value = "public", requires = "database")]
    database_schema: String,
    /// Compact mode: every host (`kind = "host"`) becomes `kind = "virtual"`, a host inside
    /// the emulator with no namespace: it answers ARP and ping; its traffic comes from
    /// synthetic flows.
    #[arg(long)]
    compact: bool,
    /// Synthetic flows to start once the network is up: a TOML file of `[[flows]]` entries
    /// (as in a topology file; see docs/TOPOLOGY.md), added to the topology's own. Gives a
    /// generated topology (`--topo`) its traffic.
    #[arg(long)]
    flows: Option<PathBuf>,
    /// How hosts' interfaces reach the emulator: `tap` (TAP devices through io_uring) or
    /// `xdp` (veth pairs with AF_XDP sockets; faster for bulk TCP, more memory per interface).
    /// See docs/BENCHMARKS.md for the figures.
    #[arg(long, value_enum, default_value_t = HostIoArg::Tap)]
    host_io: HostIoArg,
    /// (Internal) this process is the detached emulator.
    #[arg(long, hide = true)]
    daemon: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum HostIoArg {
    Tap,
    Xdp,
}

#[derive(clap::Args)]
pub struct NameArg {
    /// The emulation (default: the only one running).
    #[arg(long)]
    name: Option<String>,
}

#[derive(clap::Args)]
pub struct DownArgs {
    #[command(flatten)]
    name: NameArg,
}

#[derive(clap::Args)]
pub struct ExecArgs {
    /// The node to run in.
    node: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
    #[command(flatten)]
    name: NameArg,
}

#[derive(clap::Args)]
pub struct PingArgs {
    /// From this node...
    a: String,
    /// ...to this one (its first address).
    b: String,
    /// Echo requests to send.
    #[arg(short = 'c', long, default_value_t = 3)]
    count: u32,
    #[command(flatten)]
    name: NameArg,
}

#[derive(clap::Args)]
pub struct PingallArgs {
    /// Each host pings this many random peers instead of all of them.
    #[arg(long)]
    sample: Option<usize>,
    /// Seconds each ping waits for its answer.
    #[arg(long, default_value_t = 2)]
    wait: u32,
    #[command(flatten)]
    name: NameArg,
}

#[derive(clap::Args)]
pub struct IperfArgs {
    /// The client (sender).
    a: String,
    /// The server (receiver).
    b: String,
    /// Seconds to send.
    #[arg(short = 't', long, default_value_t = 5)]
    time: u32,
    /// Parallel streams.
    #[arg(short = 'P', long, default_value_t = 1)]
    parallel: u32,
    /// Print iperf3's JSON report.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    name: NameArg,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[arg(long)]
    json: bool,
    /// Redraw every second.
    #[arg(long)]
    watch: bool,
    #[command(flatten)]
    name: NameArg,
}

#[derive(clap::Args)]
pub struct LinkArgs {
    a: String,
    b: String,
    /// `set KEY=VALUE...` (rate, delay, jitter, loss, queue, drop, sched, reorder), `down`
    /// or `up`.
    #[arg(required = true)]
    action: Vec<String>,
    /// Change only the direction leaving this node.
    #[arg(long)]
    from: Option<String>,
    #[command(flatten)]
    name: NameArg,
}

#[derive(clap::Args)]
pub struct FlowArgs {
    /// `add FILE` (a TOML file of `[[flows]]` entries, see docs/TOPOLOGY.md) or `stop NAME...`.
    #[arg(required = true, num_args = 2..)]
    action: Vec<String>,
    #[command(flatten)]
    name: NameArg,
}

/// The emulation a command means: `--name`, or the only one running.
fn which(n: &NameArg) -> Result<String> {
    which_for(n, None)
}

/// The emulator `--name` means: an emulation, or with `[placement]` one host's part
/// (`lab.a`). `--name lab` finds the part running here; where several run on one machine,
/// the one that builds `node` (when a node is named), else it asks.
fn which_for(n: &NameArg, node: Option<&str>) -> Result<String> {
    if let Some(name) = &n.name {
        if emulator::state_file(name).exists() {
            return Ok(name.clone());
        }
        let parts: Vec<emulator::State> = (emulator::running().into_iter())
            .filter(|s| {
                s.name
                    .strip_prefix(name.as_str())
                    .is_some_and(|r| r.starts_with('.'))
            })
            .collect();
        let builds = |s: &emulator::State| {
            node.is_some_and(|node| s.nodes.iter().any(|x| x.name == node && x.namespace))
        };
        return match parts.as_slice() {
            [] => Ok(name.clone()),
            [one] => Ok(one.name.clone()),
            many => match many.iter().find(|s| builds(s)) {
                Some(s) => Ok(s.name.clone()),
                None => bail!(
                    "emulation '{name}' runs here in parts ({}): say which with --name",
                    many.iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        };
    }
    let running = emulator::running();
    match running.as_slice() {
        [one] => Ok(one.name.clone()),
        [] => bail!("no emulation is running (start one with `linerate up`)"),
        many => bail!(
            "several emulations are running ({}): say which with --name",
            many.iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn need_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("emulation builds namespaces and interfaces: run as root");
    }
    Ok(())
}

/// `2G`, `512M`: bytes.
fn parse_memory(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| anyhow!("--memory '{s}' is not a size like 512M or 2G"))?;
    let b = v * mult as f64;
    if !(b >= (64u64 << 20) as f64 && b <= (1u64 << 40) as f64) {
        bail!("--memory '{s}': must be between 64M and 1T");
    }
    Ok(b as u64)
}

fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or(4 << 30, |k| k * 1024)
}

/// The emulation's name when neither the file nor `--name` gives one: the file's stem, up to 8
/// letters and digits, lower case, or `lr`.
fn name_from_file(f: &std::path::Path) -> String {
    let stem: String = (f.file_stem())
        .map(|s| {
            s.to_string_lossy()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(8)
                .collect()
        })
        .unwrap_or_default();
    if stem.is_empty() || !stem.as_bytes()[0].is_ascii_alphabetic() {
        "lr".to_string()
    } else {
        stem.to_ascii_lowercase()
    }
}

/// Reads or generates the topology and plans it; with `[placement] hosts = [...]` (or a
/// count), also this host's registration with the controller's database (kept fresh until
/// dropped, then removed).
fn plan_and_registration(a: &UpArgs) -> Result<(Plan, Option<Registration>)> {
    let (mut t, default_name) = match (&a.file, &a.topo) {
        (Some(f), _) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("{}: cannot read it", f.display()))?;
            let t = topo::parse(&text).map_err(|e| anyhow!("{}: {e}", f.display()))?;
            (t, name_from_file(f))
        }
        (None, Some(spec)) => {
            let d = generate::link_defaults(a.link.as_deref().unwrap_or(""))?;
            (generate::generate(spec, d)?, "lr".to_string())
        }
        (None, None) => bail!("give a topology file or --topo SHAPE (e.g. --topo linear,4)"),
    };
    if let Some(f) = &a.flows {
        t.flows.extend(flows_in(f, "--flows")?);
    }
    if a.compact {
        // Hosts inside the emulator only: no namespace, no kernel interface.
        for n in t.nodes.iter_mut().filter(|n| n.kind == topo::Kind::Host) {
            n.kind = topo::Kind::Virtual;
        }
    }
    if let Some(r) = &a.routing {
        t.routing.mode = match r.as_str() {
            "ecmp" => RoutingMode::Ecmp,
            "weighted" => RoutingMode::Weighted,
            "static" => RoutingMode::Static,
            _ => RoutingMode::ShortestPath,
        };
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = a.workers.unwrap_or(cores);
    if !(1..=256).contains(&workers) {
        bail!("--workers {workers}: must be between 1 and 256");
    }
    let memory = match &a.memory {
        Some(m) => parse_memory(m)?,
        None => (mem_available() / 4).clamp(256 << 20, 8 << 30),
    };
    let mut o = plan::Options {
        workers,
        memory,
        name: default_name,
        max_namespaces: 20_000,
        host: a.host.clone(),
        // A `--detach` parent only checks: the emulator it starts works the paths out.
        paths: !a.detach || a.daemon,
        tunnels: Default::default(),
        assigned: Default::default(),
    };
    if let Some(n) = &a.name {
        o.name = n.clone();
        t.network.name = Some(n.clone());
    }
    let mut registration = None;
    if let Some(p) = &t.placement
        && p.hosts.registered()
    {
        if a.check || (a.detach && !a.daemon) {
            // Checking only (or a `--detach` parent): stand-in hosts and addresses; the
            // emulator that runs registers and waits for the controller's placement.
            let names: Vec<String> = match &p.hosts {
                topo::PlacementHosts::Registered(v) => v.clone(),
                topo::PlacementHosts::Count(n) => (0..*n).map(|i| format!("host{i}")).collect(),
                topo::PlacementHosts::Addresses(_) => Vec::new(),
            };
            for (i, n) in names.iter().enumerate() {
                let last = (i % 250 + 1) as u8;
                o.tunnels.insert(
                    n.clone(),
                    std::net::SocketAddr::from(([192, 0, 2, last], 7100)),
                );
            }
            if o.host.is_none() {
                o.host = names.first().cloned();
            }
        } else {
            let emulation = t.network.name.clone().unwrap_or_else(|| o.name.clone());
            let r = Registration::join(a, &emulation)?;
            o.tunnels = r.tunnels.clone();
            o.assigned = r.assigned.clone();
            registration = Some(r);
        }
    }
    Ok((plan::plan(&t, &o)?, registration))
}

/// This host's row in the controller's database (`emu_hosts`), for an emulation whose
/// `[placement]` names its hosts and lets them register their tunnels.
struct Registration {
    rt: tokio::runtime::Runtime,
    store: std::sync::Arc<linerate_store_pg::PgStore>,
    emulation: String,
    host: String,
    tunnels: std::collections::BTreeMap<String, std::net::SocketAddr>,
    /// The controller's placement: node -> host.
    assigned: std::collections::BTreeMap<String, String>,
    /// Refreshes the row every 2 s (on `rt`, with the store's own tasks) until told to stop.
    keep: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// A registration older than this is a dead emulator's.
const FRESH: Duration = Duration::from_secs(10);

impl Registration {
    /// Registers `--host` with its `--tunnel`, then waits (up to `--join-timeout`) for the
    /// controller's placement (`linerate controller --emulation FILE`); keeps the row fresh
    /// from then on.
    fn join(a: &UpArgs, emulation: &str) -> Result<Registration> {
        let (Some(host), Some(url), Some(tunnel)) = (&a.host, &a.database, a.tunnel) else {
            bail!(
                "[placement] hosts = [...] or a count: the hosts register their tunnels with the \
                 controller's database, which places the emulation: give --host, --database and \
                 --tunnel"
            );
        };
        // One thread of its own: the store's tasks and the refresh run while `up` does.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("emu-register")
            .enable_all()
            .build()
            .context("starting the registration's runtime")?;
        let store = std::sync::Arc::new(
            rt.block_on(linerate_store_pg::PgStore::connect_in_schema(
                url,
                &a.database_schema,
            ))
            .map_err(|e| anyhow!("--database: {e}"))?,
        );
        let t0 = Instant::now();
        let mut said = Instant::now() - Duration::from_secs(60);
        let (hosts, nodes) = loop {
            rt.block_on(store.register_emu_host(emulation, host, &tunnel.to_string()))
                .map_err(|e| anyhow!("--database: registering host {host}: {e}"))?;
            let plan = rt
                .block_on(store.emu_plan(emulation))
                .map_err(|e| anyhow!("--database: reading emu_plans: {e}"))?;
            if let Some(p) = plan {
                break p;
            }
            if t0.elapsed() > a.join_timeout {
                let _ = rt.block_on(store.forget_emu_host(emulation, host));
                bail!(
                    "emulation '{emulation}' was not placed within {:?}: is a controller running \
                     with --emulation for it, and have all its hosts registered?",
                    a.join_timeout
                );
            }
            if said.elapsed() >= Duration::from_secs(5) {
                let regs = rt
                    .block_on(store.emu_hosts(emulation, FRESH))
                    .map(|r| r.into_iter().map(|(h, _)| h).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default();
                tracing::info!(
                    "up: host {host} registered ({tunnel}); waiting for the controller to place \
                     '{emulation}' (registered: {regs})"
                );
                said = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let mut tunnels = std::collections::BTreeMap::new();
        for (h, t) in hosts {
            let addr = t
                .parse()
                .map_err(|_| anyhow!("emu_plans: host {h}'s tunnel '{t}' is not ADDR:PORT"))?;
            tunnels.insert(h, addr);
        }
        if !tunnels.contains_key(host) {
            let _ = rt.block_on(store.forget_emu_host(emulation, host));
            bail!(
                "the controller placed '{emulation}' on hosts {}, not on {host}",
                tunnels.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        let assigned = nodes.into_iter().collect();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let keep = {
            let store = store.clone();
            let (emulation, host, tunnel) =
                (emulation.to_string(), host.clone(), tunnel.to_string());
            rt.spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(2));
                loop {
                    // Stopped only between refreshes: one cut off after its statement went
                    // out could still commit after the row was forgotten, and bring it back.
                    tokio::select! {
                        _ = &mut stopped => return,
                        _ = every.tick() => {}
                    }
                    if let Err(e) = store.register_emu_host(&emulation, &host, &tunnel).await {
                        linerate_proto::warn_every!(
                            Duration::from_secs(30),
                            "up: refreshing host {host}'s registration: {e}"
                        );
                    }
                }
            })
        };
        Ok(Registration {
            rt,
            store,
            emulation: emulation.to_string(),
            host: host.clone(),
            tunnels,
            assigned,
            keep,
            stop: Some(stop),
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let (store, emulation, host) = (&self.store, &self.emulation, &self.host);
        let keep = &mut self.keep;
        let r = (self.rt).block_on(async {
            tokio::time::timeout(Duration::from_secs(4), async {
                // The refresh in progress, if any, ends first.
                let _ = keep.await;
                store.forget_emu_host(emulation, host).await
            })
            .await
        });
        if !matches!(r, Ok(Ok(()))) {
            tracing::warn!(
                "down: host {}'s registration stays in emu_hosts (the database did not answer)",
                self.host
            );
        }
    }
}

struct Building(Live);

impl emulator::Progress for Building {
    fn building(&mut self, done: usize, total: usize, elapsed: Duration) {
        let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
        self.0.line(
            elapsed,
            &format!("building: {done}/{total} namespace nodes ({rate:.0}/s)"),
        );
    }
}

/// `placement: a (this one): r1 h1 r2 h2; b: r3 h3 r4 h4; 2 links cut`.
fn placement_line(p: &Plan) -> Option<String> {
    let pl = p.placement.as_ref()?;
    let hosts: Vec<String> = (pl.hosts.iter().enumerate())
        .map(|(i, (name, _))| {
            let nodes: Vec<&str> = (0..p.nodes.len())
                .filter(|&n| pl.host_of[n] == i)
                .map(|n| p.nodes[n].name.as_str())
                .collect();
            let me = if i == pl.local { " (this one)" } else { "" };
            format!("{name}{me}: {}", nodes.join(" "))
        })
        .collect();
    let cut = (p.links.iter())
        .filter(|l| pl.host_of[l.ends[0].0] != pl.host_of[l.ends[1].0])
        .count();
    Some(format!(
        "placement: {}; {cut} link(s) cut",
        hosts.join("; ")
    ))
}

fn summary(p: &Plan, e: &Emulation) -> String {
    let count = |k: topo::Kind| p.nodes.iter().filter(|n| n.kind == k).count();
    format!(
        "up: '{}': {} hosts ({} virtual), {} routers, {} switches, {} links on {} worker(s), built in {:.2}s \
         ({} of buffers); `linerate status`, `linerate exec NODE -- CMD`, `linerate down`",
        p.name,
        count(topo::Kind::Host) + count(topo::Kind::Virtual),
        count(topo::Kind::Virtual),
        count(topo::Kind::Router),
        count(topo::Kind::Switch),
        p.links.len(),
        p.workers,
        e.build_time.as_secs_f64(),
        plan::human(p.buffer_bytes),
    ) + &e
        .raised
        .iter()
        .map(|r| format!("\nup: raised for this run (put back at `down`): {r}"))
        .collect::<String>()
        + &placement_line(p)
            .map(|l| format!("\nup: {l}"))
            .unwrap_or_default()
}

pub fn up(a: UpArgs) -> Result<()> {
    let (plan, _registration) = plan_and_registration(&a)?;
    if a.check {
        println!(
            "{}: {} nodes, {} links, {} segments, {} of buffers; nothing built",
            plan.name,
            plan.nodes.len(),
            plan.links.len(),
            plan.segments.len(),
            plan::human(plan.buffer_bytes)
        );
        if let Some(line) = placement_line(&plan) {
            println!("{line}");
        }
        return Ok(());
    }
    need_root()?;
    if a.detach {
        return detach(&plan.name);
    }
    let cores = if a.cores.is_empty() {
        None
    } else {
        Some(super::cores_for(&a.cores, plan.workers, "--cores")?)
    };
    let stop = super::stop_flag()?;
    let mut progress = Building(Live::new());
    let mut e = Emulation::start(
        plan,
        &Options {
            cores,
            build_threads: 4,
            host_io: match a.host_io {
                HostIoArg::Tap => linerate_emu::netns::HostIo::Tap,
                HostIoArg::Xdp => linerate_emu::netns::HostIo::Xdp,
            },
        },
        &mut progress,
    )?;
    progress.0.done();
    let control = match Control::start(&e, a.database.as_deref(), &a.database_schema) {
        Ok(c) => c,
        Err(err) => {
            let _ = e.stop();
            return Err(err);
        }
    };
    let calls = match ctl::serve(&e.plan.name)
        .and_then(|c| e.run_commands().map(|()| c))
        .and_then(|c| e.start_flows().map(|()| c))
    {
        Ok(c) => c,
        Err(err) => {
            control.stop();
            let _ = e.stop();
            return Err(err.into());
        }
    };
    if let Some(addr) = a.metrics_listen {
        let name = e.plan.name.clone();
        let served = super::metrics::serve(
            addr,
            std::sync::Arc::new(move || match ctl::call(&name, &Request::Status) {
                Ok(Answer {
                    status: Some(s), ..
                }) => emu_metrics(&s),
                Ok(a) => {
                    tracing::warn!("metrics: status: {:?}", a.error);
                    super::metrics::Metrics::default()
                }
                Err(err) => {
                    tracing::warn!("metrics: status: {err}");
                    super::metrics::Metrics::default()
                }
            }),
        );
        if let Err(err) = served {
            control.stop();
            let _ = e.stop();
            return Err(err);
        }
    }
    tracing::info!("{}", summary(&e.plan, &e));
    let c = control.status();
    tracing::info!("control: controller {} ({})", c.controller, c.store);
    let start = Instant::now();
    let mut failure = None;
    while !stop.load(Ordering::Relaxed) && a.duration.is_none_or(|d| start.elapsed() < d) {
        if e.worker_ended() {
            failure = Some(anyhow!(
                "an emulator worker stopped; stopping the emulation"
            ));
            break;
        }
        match calls.recv_timeout(Duration::from_millis(100)) {
            Ok((Request::Down, reply)) => {
                let _ = reply.send(Answer::ok());
                break;
            }
            Ok((req, reply)) => {
                let _ = reply.send(answer(&e, &control, req));
            }
            Err(_) => {}
        }
    }
    let name = e.plan.name.clone();
    control.stop();
    e.stop()?;
    tracing::info!("down: '{name}' removed");
    match failure {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

fn answer(e: &Emulation, control: &Control, req: Request) -> Answer {
    match req {
        Request::Flows { add, stop } => {
            // Checked whole before anything starts: a bad entry starts none.
            let n = e.shared.flows.len();
            let mut specs = Vec::new();
            for (i, f) in add.iter().enumerate() {
                let what = format!("flow{}", n + i + 1);
                match f.resolve(&e.plan, f.name.as_deref().unwrap_or(&what)) {
                    Ok(s) => specs.push(s),
                    Err(err) => return Answer::err(err.0),
                }
            }
            let mut names = std::collections::HashSet::new();
            if let Some(s) = specs.iter().find(|s| !names.insert(s.name.clone())) {
                return Answer::err(format!("two flows are named '{}'", s.name));
            }
            for name in &stop {
                if e.shared.flows.by_name(name).is_none() {
                    return Answer::err(format!("there is no flow named '{name}'"));
                }
            }
            for spec in specs {
                let name = spec.name.clone();
                if let Err(err) = e.flows.add(spec, None) {
                    return Answer::err(format!("flow '{name}': {err}"));
                }
            }
            for name in &stop {
                if let Some(f) = e.shared.flows.by_name(name) {
                    e.flows.stop(&f);
                }
            }
            Answer::ok()
        }
        Request::Status => {
            let mut s = e.status();
            s.control = Some(control.status());
            Answer {
                ok: true,
                error: None,
                status: Some(Box::new(s)),
            }
        }
        Request::Link {
            a,
            b,
            from,
            set,
            up,
        } => {
            let Some(l) = e.plan.link_between(&a, &b) else {
                return Answer::err(format!("there is no link between '{a}' and '{b}'"));
            };
            let side = match &from {
                None => None,
                Some(f) => {
                    let n = e.plan.node(f);
                    match e.plan.links[l].ends.iter().position(|&(x, _)| Some(x) == n) {
                        Some(s) => Some(s),
                        None => {
                            return Answer::err(format!("--from {f}: not an end of link {a} {b}"));
                        }
                    }
                }
            };
            let mut change = set.map(|b| *b).unwrap_or_default();
            if up.is_some() {
                change.up = up;
            }
            // Applied at once (keys the store has no column for take effect only this way),
            // then written to the store, which sends the same values back through the agent:
            // the store and the network never disagree.
            let changed = match e.set_link(l, side, &change) {
                Ok(c) => c,
                Err(err) => return Answer::err(err),
            };
            let rows: Vec<_> = (changed.iter())
                .map(|(d, p)| link_row(&e.plan, d / 2, d % 2, p))
                .collect();
            match control.write_links(&rows) {
                Ok(()) => Answer::ok(),
                Err(err) => Answer::err(format!("{err:#}")),
            }
        }
        Request::Down => Answer::ok(),
    }
}

/// Starts this same command again as a background emulator and returns once it is up (or
/// says why it is not).
fn detach(name: &str) -> Result<()> {
    let exe = std::env::current_exe().context("finding this program")?;
    let mut args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--detach")
        .collect();
    args.push("--daemon".into());
    std::fs::create_dir_all(linerate_emu::netns::RUN_DIR)?;
    let log_path = PathBuf::from(linerate_emu::netns::RUN_DIR).join(format!("{name}.log"));
    let log =
        std::fs::File::create(&log_path).with_context(|| format!("{}", log_path.display()))?;
    let mut child = Command::new(exe);
    child
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    let mut child = child.spawn().context("starting the background emulator")?;
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("the emulator stopped ({status}):\n{}", log.trim_end());
        }
        if let Ok(a) = ctl::call(name, &Request::Status)
            && a.ok
        {
            break;
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!(
                "the emulator is not up after 10 minutes; see {}",
                log_path.display()
            );
        }
        // A status call is cheap: a short poll keeps `--detach` from adding its own delay.
        std::thread::sleep(Duration::from_millis(5));
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    // The summary and what it raised for the run (lines the emulator wrote once up).
    for line in log.lines().filter(|l| l.starts_with("up:")) {
        println!("{line}");
    }
    println!("detached: pid {}, log {}", child.id(), log_path.display());
    Ok(())
}

pub fn down(a: DownArgs) -> Result<()> {
    need_root()?;
    let names: Vec<String> = match &a.name.name {
        Some(n) => vec![n.clone()],
        None => {
            let r = emulator::running();
            if r.is_empty() {
                println!("down: no emulation is running");
                return Ok(());
            }
            r.into_iter().map(|s| s.name).collect()
        }
    };
    for name in names {
        // A detached run's log is kept when it ended badly (killed, or dead before `down`),
        // for a post-mortem; removed when it went when asked.
        let mut clean = false;
        if let Ok(s) = emulator::read_state(&name)
            && emulator::alive(s.pid)
            && s.pid != std::process::id()
        {
            // Ask it to go, then make it go.
            let _ = ctl::call(&name, &Request::Down);
            let t = Instant::now();
            while emulator::alive(s.pid) && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if emulator::alive(s.pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(s.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            } else {
                clean = true;
            }
        }
        // Whatever is left (a killed `up` leaves its namespaces and their processes).
        let n = linerate_emu::netns::destroy(&name, Duration::from_millis(500))?;
        if clean {
            let _ = std::fs::remove_file(
                PathBuf::from(linerate_emu::netns::RUN_DIR).join(format!("{name}.log")),
            );
        }
        println!(
            "down: '{name}' removed{}",
            if n > 0 {
                format!(" ({n} leftover namespaces)")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

pub fn exec(a: ExecArgs) -> Result<()> {
    need_root()?;
    let emu = which_for(&a.name, Some(&a.node))?;
    on_this_host(&emu, &a.node)?;
    let mut c = Command::new(&a.cmd[0]);
    c.args(&a.cmd[1..]);
    emulator::inside(&mut c, &emu, &a.node)?;
    let e = c.exec();
    bail!("{}: {e}", a.cmd[0])
}

/// A node another host builds (`[placement]`) is entered on that host.
fn on_this_host(emu: &str, node: &str) -> Result<()> {
    if let Ok(state) = emulator::read_state(emu)
        && let Some(n) = state.nodes.iter().find(|n| n.name == node)
        && let Some(h) = &n.host
        && !n.namespace
        && n.kind == "host"
    {
        bail!("node '{node}' is built on host {h}: run this on that host's emulator");
    }
    Ok(())
}

fn address(state: &emulator::State, node: &str) -> Result<String> {
    let n = state
        .nodes
        .iter()
        .find(|n| n.name == node)
        .ok_or_else(|| anyhow!("emulation '{}' has no node '{node}'", state.name))?;
    n.addr
        .clone()
        .ok_or_else(|| anyhow!("node '{node}' has no address"))
}

pub fn ping(a: PingArgs) -> Result<()> {
    need_root()?;
    let emu = which_for(&a.name, Some(&a.a))?;
    let state = emulator::read_state(&emu)?;
    let to = address(&state, &a.b)?;
    on_this_host(&emu, &a.a)?;
    let mut c = Command::new("ping");
    c.args(["-c", &a.count.to_string(), &to]);
    emulator::inside(&mut c, &emu, &a.a)?;
    let status = c.status().context("running ping (iputils-ping)")?;
    if !status.success() {
        bail!("ping {} -> {} ({to}) failed", a.a, a.b);
    }
    Ok(())
}

pub fn pingall(a: PingallArgs) -> Result<()> {
    need_root()?;
    let emu = which(&a.name)?;
    let state = emulator::read_state(&emu)?;
    // Namespace hosts ping; every host (virtual ones too) answers.
    let hosts: Vec<&emulator::StateNode> = state
        .nodes
        .iter()
        .filter(|n| (n.kind == "host" || n.kind == "virtual") && n.addr.is_some())
        .collect();
    // Pairs: everyone to everyone, or `sample` random peers each.
    let mut pairs = Vec::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64 ^ std::process::id() as u64;
    for (i, h) in hosts.iter().enumerate() {
        if !h.namespace {
            continue;
        }
        let peers: Vec<usize> = match a.sample {
            None => (0..hosts.len()).filter(|&j| j != i).collect(),
            Some(k) => (0..k.min(hosts.len().saturating_sub(1)))
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let j = (rng as usize) % (hosts.len() - 1);
                    if j >= i { j + 1 } else { j }
                })
                .collect(),
        };
        for j in peers {
            pairs.push((
                h.name.clone(),
                hosts[j].name.clone(),
                hosts[j].addr.clone().unwrap_or_default(),
            ));
        }
    }
    let t = Instant::now();
    // Sent from inside each source's namespace by this process, a window at a time; a probe
    // unanswered within --wait is sent once more.
    let probes: Vec<linerate_emu::probe::Probe> = pairs
        .iter()
        .map(|(from, _, to)| {
            Ok(linerate_emu::probe::Probe {
                from: from.clone(),
                to: to
                    .parse()
                    .with_context(|| format!("node address '{to}' in the state file"))?,
            })
        })
        .collect::<Result<_>>()?;
    let ok = linerate_emu::probe::ping_all(&emu, &probes, Duration::from_secs(a.wait.into()), 2)?;
    let mut out = std::io::stdout().lock();
    for h in hosts.iter().filter(|h| h.namespace) {
        let line: Vec<String> = pairs
            .iter()
            .zip(&ok)
            .filter(|((from, _, _), _)| *from == h.name)
            .map(|((_, to, _), &good)| if good { to.clone() } else { "X".into() })
            .collect();
        writeln!(out, "{} -> {}", h.name, line.join(" "))?;
    }
    let good = ok.iter().filter(|&&g| g).count();
    let lost = pairs.len() - good;
    writeln!(
        out,
        "Results: {:.0}% dropped ({good}/{} received) in {:.2}s",
        if pairs.is_empty() {
            0.0
        } else {
            lost as f64 * 100.0 / pairs.len() as f64
        },
        pairs.len(),
        t.elapsed().as_secs_f64()
    )?;
    if lost > 0 {
        bail!("{lost} of {} pings got no answer", pairs.len());
    }
    Ok(())
}

pub fn iperf(a: IperfArgs) -> Result<()> {
    need_root()?;
    let emu = which_for(&a.name, Some(&a.a))?;
    let state = emulator::read_state(&emu)?;
    let to = address(&state, &a.b)?;
    // The server has the namespace to itself: iperf3's default port cannot collide there.
    let mut server = Command::new("iperf3");
    server
        .args(["-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    emulator::inside(&mut server, &emu, &a.b)?;
    let mut server = server.spawn().context("running iperf3 (Debian's iperf3)")?;
    let t = Instant::now();
    let out = loop {
        let mut client = Command::new("iperf3");
        client.args([
            "-c",
            &to,
            "-t",
            &a.time.to_string(),
            "-P",
            &a.parallel.to_string(),
            "-J",
        ]);
        emulator::inside(&mut client, &emu, &a.a)?;
        let out = client.output().context("running iperf3")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // The server may not listen yet: try again for a few seconds.
        if out.status.success() || t.elapsed() > Duration::from_secs(5) || !text.contains("connect")
        {
            break (out.status, text);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_str(&out.1).unwrap_or_default();
    if a.json {
        // iperf3's own report, on one line, as the `iperf` document.
        super::print_document("iperf", v.clone());
    }
    if !out.0.success() {
        bail!(
            "iperf3 {} -> {}: {}",
            a.a,
            a.b,
            v["error"].as_str().unwrap_or("failed")
        );
    }
    if !a.json {
        let rx = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0);
        let tx = v["end"]["sum_sent"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0);
        let re = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
        println!(
            "iperf {} -> {}: {:.2} Mbit/s received, {:.2} Mbit/s sent, {re} retransmits",
            a.a,
            a.b,
            rx / 1e6,
            tx / 1e6
        );
    }
    Ok(())
}

fn fetch_status(emu: &str) -> Result<Status> {
    let a = ctl::call(emu, &Request::Status)?;
    match (a.ok, a.status, a.error) {
        (true, Some(s), _) => Ok(*s),
        (_, _, Some(e)) => bail!("{e}"),
        _ => bail!("emulation '{emu}' sent no status"),
    }
}

fn rate(bps: Option<u64>) -> String {
    match bps {
        None => "-".into(),
        Some(r) if r >= 1_000_000_000 => format!("{:.1}G", r as f64 / 1e9),
        Some(r) if r >= 1_000_000 => format!("{:.1}M", r as f64 / 1e6),
        Some(r) if r >= 1_000 => format!("{:.1}k", r as f64 / 1e3),
        Some(r) => r.to_string(),
    }
}

fn table(s: &Status, before: Option<(&Status, f64)>) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "emulation '{}', up {:.0}s (built in {:.2}s)\n",
        s.name, s.uptime_s, s.build_s
    ));
    if let Some(c) = &s.control {
        out.push_str(&format!(
            "control: {} ({}), agent {}, {} updates applied{}\n",
            c.controller,
            c.store,
            if c.connected {
                "connected"
            } else {
                "DISCONNECTED"
            },
            c.updates,
            if c.ignored > 0 {
                format!(", {} rows ignored (last: {})", c.ignored, c.last_ignored)
            } else {
                String::new()
            }
        ));
    }
    for h in &s.hosts {
        let nodes: Vec<&str> = (s.nodes.iter())
            .filter(|n| n.host.as_deref() == Some(h.name.as_str()))
            .map(|n| n.name.as_str())
            .collect();
        out.push_str(&format!(
            "host {} ({}, tunnel {}): {}\n",
            h.name,
            match (h.local, h.up) {
                (true, _) => "this one",
                (false, true) => "up",
                (false, false) => "LOST",
            },
            h.tunnel,
            nodes.join(" ")
        ));
    }
    if let Some(t) = &s.tunnel {
        out.push_str(&format!(
            "tunnel: {} frames sent, {} received, {} dropped\n",
            t.frames_sent, t.frames_received, t.dropped
        ));
    }
    out.push_str(&format!(
        "{:<24} {:>6} {:>9} {:>7} {:>5} {:>8} {:>9} {:>6} {:>6} {:>6} {:>6} {:>6}  {}\n",
        "link direction",
        "state",
        "rate",
        "delay",
        "loss",
        "now",
        "delivered",
        "queue",
        "qdrop",
        "lost",
        "down",
        "nobuf",
        "late"
    ));
    for (li, l) in s.links.iter().enumerate() {
        for (side, d) in l.dirs.iter().enumerate() {
            let (from, to) = if side == 0 {
                (&l.a, &l.b)
            } else {
                (&l.b, &l.a)
            };
            let now = before.and_then(|(b, dt)| {
                let prev = b.links.get(li)?.dirs.get(side)?;
                Some((d.delivered_bytes.saturating_sub(prev.delivered_bytes)) as f64 * 8.0 / dt)
            });
            let late = if d.late > 0 {
                format!("{} (max {:.0} us): settings not met", d.late, d.max_late_us)
            } else {
                String::new()
            };
            out.push_str(&format!(
                "{:<24} {:>6} {:>9} {:>7} {:>5} {:>8} {:>9} {:>6} {:>6} {:>6} {:>6} {:>6}  {}\n",
                format!(
                    "{}>{}",
                    from.split(':').next().unwrap_or(""),
                    to.split(':').next().unwrap_or("")
                ),
                if d.up { "up" } else { "DOWN" },
                rate(d.rate_bps),
                format!("{:.1}ms", d.delay_us / 1e3),
                d.loss,
                now.map_or("-".into(), |r| rate(Some(r as u64))),
                d.delivered,
                d.queued,
                d.drop_queue + d.drop_red,
                d.drop_loss,
                d.drop_down,
                d.drop_nobuf,
                late
            ));
        }
    }
    out.push_str(&format!(
        "{:<12} {:<7} {:>3} {:<16} {:>9} {:>9} {:>9} {:>7} {:>7}\n",
        "node", "kind", "w", "address", "sent", "received", "forwarded", "replies", "dropped"
    ));
    for n in &s.nodes {
        out.push_str(&format!(
            "{:<12} {:<7} {:>3} {:<16} {:>9} {:>9} {:>9} {:>7} {:>7}\n",
            n.name,
            n.kind,
            n.worker,
            n.addr.as_deref().unwrap_or("-"),
            n.sent,
            n.received,
            n.forwarded,
            n.replies,
            // A host drops nothing itself: its column shows what was lost between it and
            // the emulator (`--host-io xdp`).
            n.dropped + n.host_dropped
        ));
    }
    if !s.flows.is_empty() {
        out.push_str(&format!(
            "{:<16} {:<12} {:<12} {:<4} {:<9} {:>12} {:>12} {:>9} {:>9}  {}\n",
            "flow", "src", "dst", "", "state", "sent", "received", "rate", "fct", ""
        ));
        for f in &s.flows {
            out.push_str(&format!(
                "{:<16} {:<12} {:<12} {:<4} {:<9} {:>12} {:>12} {:>9} {:>9}  {}\n",
                f.name,
                f.src,
                f.dst,
                f.proto,
                f.state,
                f.sent_bytes,
                f.received_bytes,
                rate(Some(f.throughput_bps as u64)),
                f.fct_s.map_or("-".into(), |t| format!("{t:.3}s")),
                f.error.as_deref().unwrap_or("")
            ));
        }
    }
    out
}

pub fn status(a: StatusArgs) -> Result<()> {
    need_root()?;
    let emu = which(&a.name)?;
    let mut before: Option<(Status, Instant)> = None;
    loop {
        let s = fetch_status(&emu)?;
        if a.json {
            super::print_document("status", serde_json::to_value(&s)?);
        } else {
            let prev = before.as_ref().map(|(b, t)| (b, t.elapsed().as_secs_f64()));
            let text = table(&s, prev);
            if a.watch {
                print!("\x1b[H\x1b[2J{text}");
            } else {
                print!("{text}");
            }
            std::io::stdout().flush()?;
        }
        if !a.watch {
            return Ok(());
        }
        before = Some((s, Instant::now()));
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The `[[flows]]` of a file (nothing else may be in it).
fn flows_in(f: &std::path::Path, what: &str) -> Result<Vec<linerate_emu::flows::FlowToml>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct FlowsFile {
        #[serde(default)]
        flows: Vec<linerate_emu::flows::FlowToml>,
    }
    let text = std::fs::read_to_string(f)
        .with_context(|| format!("{what} {}: cannot read it", f.display()))?;
    let ff: FlowsFile = toml::from_str(&text).map_err(|e| {
        anyhow!(
            "{what} {}: {}",
            f.display(),
            linerate_proto::units::at_line(&text, e.span().map(|s| s.start), e.message())
        )
    })?;
    Ok(ff.flows)
}

pub fn flow(a: FlowArgs) -> Result<()> {
    need_root()?;
    let emu = which(&a.name)?;
    let req = match a.action[0].as_str() {
        "add" if a.action.len() == 2 => Request::Flows {
            add: flows_in(std::path::Path::new(&a.action[1]), "flow add")?,
            stop: Vec::new(),
        },
        "stop" => Request::Flows {
            add: Vec::new(),
            stop: a.action[1..].to_vec(),
        },
        _ => bail!("flow: give `add FILE` or `stop NAME...`"),
    };
    let ans = ctl::call(&emu, &req)?;
    if !ans.ok {
        bail!("{}", ans.error.unwrap_or_default());
    }
    Ok(())
}

pub fn link(a: LinkArgs) -> Result<()> {
    need_root()?;
    let emu = which(&a.name)?;
    let (set, up) = match a.action[0].as_str() {
        "down" if a.action.len() == 1 => (None, Some(false)),
        "up" if a.action.len() == 1 => (None, Some(true)),
        "set" if a.action.len() > 1 => {
            let mut s = LinkSpec::default();
            for kv in &a.action[1..] {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| anyhow!("link set: '{kv}' is not KEY=VALUE"))?;
                let v = v.to_string();
                match k {
                    "rate" => s.rate = Some(v),
                    "delay" => s.delay = Some(v),
                    "jitter" => s.jitter = Some(v),
                    "loss" => s.loss = Some(v),
                    "queue" => s.queue = Some(toml::Value::String(v)),
                    "drop" => s.drop = Some(v),
                    "sched" => s.sched = Some(v),
                    "reorder" => {
                        s.reorder = Some(
                            v.parse()
                                .map_err(|_| anyhow!("link set: reorder={v}: true or false"))?,
                        )
                    }
                    other => bail!(
                        "link set: unknown key '{other}' (rate, delay, jitter, loss, queue, drop, sched, reorder)"
                    ),
                }
            }
            // Checked here too, so a bad value is refused before it travels.
            s.resolve("link set")?;
            (Some(Box::new(s)), None)
        }
        _ => bail!(
            "link {} {}: give `set KEY=VALUE...`, `down` or `up`",
            a.a,
            a.b
        ),
    };
    let ans = ctl::call(
        &emu,
        &Request::Link {
            a: a.a.clone(),
            b: a.b.clone(),
            from: a.from.clone(),
            set,
            up,
        },
    )?;
    if !ans.ok {
        bail!("{}", ans.error.unwrap_or_default());
    }
    Ok(())
}

/// An emulation's counters for Prometheus: per link direction, node and synthetic flow.
fn emu_metrics(s: &linerate_emu::emulator::Status) -> super::metrics::Metrics {
    let mut m = super::metrics::Metrics::default();
    let emu = || ("emulation", s.name.clone());
    for l in &s.links {
        for (i, d) in l.dirs.iter().enumerate() {
            let (from, to) = if i == 0 { (&l.a, &l.b) } else { (&l.b, &l.a) };
            let dl = || {
                vec![
                    emu(),
                    ("link", l.name.clone()),
                    ("from", from.clone()),
                    ("to", to.clone()),
                ]
            };
            m.counter(
                "linerate_emu_link_delivered_frames",
                "Frames a link direction delivered.",
                dl(),
                d.delivered,
            );
            m.counter(
                "linerate_emu_link_delivered_bytes",
                "Bytes a link direction delivered.",
                dl(),
                d.delivered_bytes,
            );
            m.gauge(
                "linerate_emu_link_queued_frames",
                "Frames waiting in a link direction's queue now.",
                dl(),
                d.queued as f64,
            );
            m.gauge(
                "linerate_emu_link_in_flight_frames",
                "Frames in a link direction's delay line now.",
                dl(),
                d.in_flight as f64,
            );
            m.gauge(
                "linerate_emu_link_up",
                "1 while the link direction is up.",
                dl(),
                if d.up { 1.0 } else { 0.0 },
            );
            m.counter(
                "linerate_emu_link_late_frames",
                "Frames delivered more than 50 us late.",
                dl(),
                d.late,
            );
            for (cause, n) in [
                ("queue", d.drop_queue),
                ("red", d.drop_red),
                ("loss", d.drop_loss),
                ("down", d.drop_down),
                ("no_buffer", d.drop_nobuf),
            ] {
                let mut lab = dl();
                lab.push(("cause", cause.to_string()));
                m.counter(
                    "linerate_emu_link_drops",
                    "Frames a link direction dropped, by cause.",
                    lab,
                    n,
                );
            }
        }
    }
    for n in &s.nodes {
        let nl = || vec![emu(), ("node", n.name.clone()), ("kind", n.kind.clone())];
        for (what, v) in [
            ("sent", n.sent),
            ("received", n.received),
            ("forwarded", n.forwarded),
            ("replies", n.replies),
            ("dropped", n.dropped),
            ("host_dropped", n.host_dropped),
        ] {
            let mut lab = nl();
            lab.push(("event", what.to_string()));
            m.counter(
                "linerate_emu_node_frames",
                "Frames a node sent, received, forwarded, answered or dropped.",
                lab,
                v,
            );
        }
    }
    for f in &s.flows {
        let fl = || {
            vec![
                emu(),
                ("flow", f.name.clone()),
                ("src", f.src.clone()),
                ("dst", f.dst.clone()),
            ]
        };
        m.counter(
            "linerate_emu_flow_sent_bytes",
            "Bytes a synthetic flow sent.",
            fl(),
            f.sent_bytes,
        );
        m.counter(
            "linerate_emu_flow_received_bytes",
            "Bytes a synthetic flow's receiver got.",
            fl(),
            f.received_bytes,
        );
    }
    m.gauge(
        "linerate_emu_uptime_seconds",
        "Seconds since the emulation was built.",
        vec![emu()],
        s.uptime_s,
    );
    m
}

/// `--emulation FILE` or `NAME=FILE` of `linerate controller`: the emulation's name and its
/// topology, which must let its hosts register (`hosts = [...]` or a count).
pub fn placement_spec(spec: &str) -> Result<(String, topo::Topology)> {
    let (name, file) = match spec.split_once('=') {
        Some((n, f)) => (Some(n.to_string()), std::path::PathBuf::from(f)),
        None => (None, std::path::PathBuf::from(spec)),
    };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("--emulation {}: cannot read it", file.display()))?;
    let t = topo::parse(&text).map_err(|e| anyhow!("--emulation {}: {e}", file.display()))?;
    if !t.placement.as_ref().is_some_and(|p| p.hosts.registered()) {
        bail!(
            "--emulation {}: its [placement] must let the hosts register (hosts = [\"a\", \"b\"] or hosts = N)",
            file.display()
        );
    }
    let name = name
        .or_else(|| t.network.name.clone())
        .unwrap_or_else(|| name_from_file(&file));
    Ok((name, t))
}

/// The controller's side of an emulation spanning hosts: once its hosts have registered, the
/// placement (which host builds which node) is worked out here and written for them; it stays
/// while any of them runs, and goes 30 s after the last one was heard from.
pub async fn place_emulation(
    store: std::sync::Arc<linerate_store_pg::PgStore>,
    name: String,
    mut t: topo::Topology,
) {
    t.network.name = Some(name.clone());
    let Some(wanted) = t.placement.as_ref().map(|p| p.hosts.clone()) else {
        return;
    };
    let mut silent_since: Option<Instant> = None;
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        let (regs, plan) = match (
            store.emu_hosts(&name, FRESH).await,
            store.emu_plan(&name).await,
        ) {
            (Ok(r), Ok(p)) => (r, p),
            (Err(e), _) | (_, Err(e)) => {
                linerate_proto::warn_every!(
                    Duration::from_secs(30),
                    "controller: emulation '{name}': {e}"
                );
                continue;
            }
        };
        if plan.is_some() {
            if regs.is_empty() {
                let since = *silent_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(30) {
                    if store.forget_emu_plan(&name).await.is_ok() {
                        tracing::info!(
                            "controller: emulation '{name}': every host is gone; its placement forgotten"
                        );
                    }
                    silent_since = None;
                }
            } else {
                silent_since = None;
            }
            continue;
        }
        let chosen: Vec<(String, String)> = match &wanted {
            topo::PlacementHosts::Registered(names) => {
                if !names.iter().all(|n| regs.iter().any(|(h, _)| h == n)) {
                    continue;
                }
                regs.into_iter()
                    .filter(|(h, _)| names.contains(h))
                    .collect()
            }
            topo::PlacementHosts::Count(n) => {
                if regs.len() < *n {
                    continue;
                }
                regs.into_iter().take(*n).collect()
            }
            topo::PlacementHosts::Addresses(_) => return,
        };
        let mut tunnels = std::collections::BTreeMap::new();
        for (h, tun) in &chosen {
            if let Ok(a) = tun.parse() {
                tunnels.insert(h.clone(), a);
            }
        }
        let o = plan::Options {
            workers: 1,
            memory: 1 << 40,
            name: name.clone(),
            max_namespaces: usize::MAX,
            paths: false,
            host: chosen.first().map(|(h, _)| h.clone()),
            tunnels,
            assigned: Default::default(),
        };
        let p = match plan::plan(&t, &o) {
            Ok(p) => p,
            Err(e) => {
                linerate_proto::warn_every!(
                    Duration::from_secs(30),
                    "controller: emulation '{name}': cannot place it: {e}"
                );
                continue;
            }
        };
        let Some(pl) = &p.placement else { continue };
        let nodes: Vec<(String, String)> = (p.nodes.iter().zip(&pl.host_of))
            .map(|(n, &h)| (n.name.clone(), pl.hosts[h].0.clone()))
            .collect();
        let cut = (p.links.iter())
            .filter(|l| pl.host_of[l.ends[0].0] != pl.host_of[l.ends[1].0])
            .count();
        match store.write_emu_plan(&name, &chosen, &nodes).await {
            Ok(true) => tracing::info!(
                "controller: placed emulation '{name}' over hosts {} ({cut} link(s) cut)",
                chosen
                    .iter()
                    .map(|(h, _)| h.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!("controller: emulation '{name}': writing its placement: {e}"),
        }
    }
}
