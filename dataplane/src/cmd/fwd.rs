//! `linerate fwd`: forwarding among interfaces through AF_XDP sockets owned by pinned workers.
//!
//! Worker `w` owns RX/TX queue `w` of every port: one AF_XDP socket per (interface, queue),
//! all of a worker's sockets on one UMEM (its buffer pool), so forwarding between them needs
//! no copy in user space. Our steering program on each interface sends that queue's traffic to
//! the worker's socket and ARP / neighbour discovery to the kernel. Programs are attached as
//! BPF links: they go away when `fwd` exits, however it exits.
//!
//! Max mode (`--max`): the workers report every flow they forwarded (see
//! [`linerate_dataplane::fastpath`]) and this thread caches the decision in the ingress
//! port's XDP flow map; from then on the program rewrites and redirects the flow's packets in
//! the kernel. Idle entries age out; a reload (SIGHUP with `--config`) publishes the new logic
//! to the workers and invalidates every cached flow, so no packet follows a stale route.
//!
//! Settings come from flags, from a TOML file (`--config`, keys named like the long flags),
//! or both: a flag given on the command line wins over the file.

use super::{Live, XdpModeArg, mac_of, parse_duration, parse_mac};
use anyhow::{Context, Result, anyhow, bail};
use clap::ValueEnum;
use linerate_control::agent::{Agent, AgentOptions};
use linerate_control::proto::Capability;
use linerate_dataplane::counters::Counts;
use linerate_dataplane::fastpath::{FlowLearner, Learned};
use linerate_dataplane::frame::BufferPool;
use linerate_dataplane::logic::{
    Acl, Action as AclAction, AnyLogic, LearningBridge, MacRewrite, NextHop, ReloadHandle, Router,
    Rule as AclRule, StaticMap,
};
use linerate_dataplane::node;
use linerate_dataplane::pipeline::{self, ClassReport, KernelPath, PipelineReport};
use linerate_dataplane::port::{LiveSettings, Port, SchedCounters, ScheduledPort, XskPort};
use linerate_dataplane::sched::{
    ClassRule, Classifier, Discipline, DropPolicy, QueueLimit, Red, Scheduler, TokenBucket,
};
use linerate_dataplane::shard::Mapping;
use linerate_dataplane::sys::monotonic_ns;
use linerate_dataplane::verdict::PortId;
use linerate_dataplane::worker::{self, IdlePolicy, Worker, WorkerConfig, handoff_mesh};
use linerate_dataplane::xsk::{XskConfig, XskMode};
use linerate_ebpf::abi::{FlowEntry, FlowKey as XdpFlowKey, MAX_PORTS, MAX_RULES};
use linerate_ebpf::{Action, AttachMode, Attached, Rule, Steering};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogicArg {
    /// Fixed port pairs (--map), optional MAC rewrite per output (--rewrite).
    Static,
    /// L2 learning bridge with aging.
    Bridge,
    /// IPv4/IPv6 longest-prefix-match router (--route), MACs from the next hop.
    Router,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XskModeArg {
    Auto,
    Copy,
    Zerocopy,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MappingArg {
    Sequential,
    Concurrent,
}

#[derive(clap::Args)]
pub struct FwdArgs {
    /// TOML file with any of these settings, keys named like the long flags (`port` holds a
    /// list of interfaces). Flags given here override it. SIGHUP re-reads it and applies new
    /// logic (routes, map, rewrites, filter, TTL) without stopping.
    #[arg(long)]
    config: Option<PathBuf>,
    /// An interface to forward among (two or more, in port order: the first is port 0).
    #[arg(long = "port")]
    ports: Vec<String>,
    /// Workers; worker w owns queue w of every port (default 1).
    #[arg(long)]
    workers: Option<usize>,
    /// Cores to pin the workers to, one per worker, e.g. 1 (default: 0..workers).
    #[arg(long, value_delimiter = ',')]
    cores: Vec<usize>,
    /// Switching logic (default static).
    #[arg(long, value_enum)]
    logic: Option<LogicArg>,
    /// Static map pairs IN:OUT (port numbers), e.g. 0:1,1:0 (default: 0<->1).
    #[arg(long, value_delimiter = ',')]
    map: Vec<String>,
    /// Rewrite the destination MAC of frames leaving PORT: PORT=MAC (source = the port's MAC).
    #[arg(long)]
    rewrite: Vec<String>,
    /// Router: PREFIX/LEN=PORT,NEXTHOP_MAC[,WEIGHT], e.g. 10.1.0.0/16=1,02:00:00:00:00:02. A
    /// prefix given more than once is multipath: each new flow picks one of its routes (in
    /// proportion to their weights) and keeps it.
    #[arg(long)]
    route: Vec<String>,
    /// Decrement TTL / hop limit (and drop at zero).
    #[arg(long)]
    ttl: bool,
    /// Filter rule, first match wins, e.g. "deny udp any any dport 53" (repeatable).
    #[arg(long)]
    filter: Vec<String>,
    /// Flow-to-worker mapping (default sequential: each flow on one worker, by jump hash).
    #[arg(long, value_enum)]
    mapping: Option<MappingArg>,
    /// Frames per batch, 1 to 256 (default 64).
    #[arg(long)]
    batch: Option<usize>,
    /// XDP attach mode (default auto).
    #[arg(long, value_enum)]
    xdp_mode: Option<XdpModeArg>,
    /// AF_XDP copy or zero-copy (default auto).
    #[arg(long, value_enum)]
    xsk_mode: Option<XskModeArg>,
    /// AF_XDP ring size, RX and TX; FILL and COMPLETION get twice this (default 2048).
    #[arg(long)]
    ring: Option<u32>,
    /// Buffers per worker, the UMEM size in 2 KiB frames (default 16384).
    #[arg(long)]
    frames: Option<usize>,
    /// SO_BUSY_POLL microseconds on every socket (default 0: off).
    #[arg(long)]
    busy_poll_us: Option<u32>,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Max mode: cache decided flows in the XDP program, which then forwards them in the
    /// kernel. Egress interfaces must accept XDP redirects (on veth: an XDP program on the
    /// peer).
    #[arg(long)]
    max: bool,
    /// Max mode: a cached flow idle this long is removed (default 10s).
    #[arg(long, value_parser = parse_duration)]
    flow_idle: Option<Duration>,
    /// Output scheduler of a port: PORT=fcfs, PORT=wrr:W1,W2,... (packets per round per class)
    /// or PORT=drr:Q1,Q2,... (bytes per round per class). Repeatable.
    #[arg(long)]
    sched: Vec<String>,
    /// Traffic class rule of a port, first match wins: PORT=class N [dscp D] [<proto> <src>
    /// <dst> [sport P] [dport P]], e.g. "1=class 1 udp any any dport 5001". Repeatable.
    #[arg(long)]
    class: Vec<String>,
    /// Shaper of a port: PORT=RATE[,BURST_BYTES], rate in bit/s (e.g. 1=100M). With N
    /// workers each gets RATE/N.
    #[arg(long)]
    shape: Vec<String>,
    /// RED on a port's class queues: PORT=MIN,MAX,MAX_P,WEIGHT[,gentle] (thresholds in packets).
    #[arg(long)]
    red: Vec<String>,
    /// Class queue bound of a port: PORT=PACKETS[,BYTES] (default 1024 packets, 4 MiB).
    #[arg(long)]
    queue: Vec<String>,
    #[arg(long)]
    json: bool,
    /// Take routes and flow pins from a linerate controller, e.g. ws://127.0.0.1:7878/: each
    /// update replaces the router's routes (the last ones stay while the controller is away).
    /// Excludes --logic other than router, --route, --map and --rewrite.
    #[arg(long)]
    controller: Option<String>,
    /// This node's id at the controller (default: the host name).
    #[arg(long, requires = "controller")]
    node: Option<String>,
    /// File holding the controller's bearer token (default: $LINERATE_TOKEN).
    #[arg(long, requires = "controller")]
    token_file: Option<PathBuf>,
    /// How often to report counters to the controller (default 1s).
    #[arg(long, value_parser = parse_duration, requires = "controller")]
    report_every: Option<Duration>,
}

/// The `--config` file. Unknown keys are errors that name the key.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    port: Option<Vec<String>>,
    workers: Option<usize>,
    cores: Option<Vec<usize>>,
    logic: Option<LogicArg>,
    map: Option<Vec<String>>,
    rewrite: Option<Vec<String>>,
    route: Option<Vec<String>>,
    ttl: Option<bool>,
    filter: Option<Vec<String>>,
    mapping: Option<MappingArg>,
    batch: Option<usize>,
    xdp_mode: Option<XdpModeArg>,
    xsk_mode: Option<XskModeArg>,
    ring: Option<u32>,
    frames: Option<usize>,
    busy_poll_us: Option<u32>,
    duration: Option<String>,
    max: Option<bool>,
    flow_idle: Option<String>,
    json: Option<bool>,
    sched: Option<Vec<String>>,
    class: Option<Vec<String>>,
    shape: Option<Vec<String>>,
    red: Option<Vec<String>>,
    queue: Option<Vec<String>>,
}

/// What the switching logic is built from: the part of the settings a reload applies.
#[derive(Clone, PartialEq, Eq, Debug)]
struct LogicSpec {
    logic: LogicArg,
    map: Vec<String>,
    rewrite: Vec<String>,
    route: Vec<String>,
    ttl: bool,
    filter: Vec<String>,
}

/// Every setting, resolved from flags over file over defaults, and checked.
#[derive(Clone, Debug)]
struct Settings {
    ports: Vec<String>,
    workers: usize,
    cores: Vec<usize>,
    logic: LogicSpec,
    mapping: MappingArg,
    batch: usize,
    xdp_mode: XdpModeArg,
    xsk_mode: XskModeArg,
    ring: u32,
    frames: usize,
    busy_poll_us: u32,
    duration: Option<Duration>,
    max: bool,
    flow_idle: Duration,
    json: bool,
    traffic: TrafficSpec,
}

/// Per-port traffic management, as given (`PORT=...` strings); built by [`port_traffic`].
#[derive(Clone, PartialEq, Eq, Debug, Default)]
struct TrafficSpec {
    sched: Vec<String>,
    class: Vec<String>,
    shape: Vec<String>,
    red: Vec<String>,
    queue: Vec<String>,
}

/// One port's traffic management, checked.
struct PortTraffic {
    discipline: Discipline,
    classifier: Classifier,
    policy: DropPolicy,
    limit: QueueLimit,
    shape: Option<(f64, u32)>,
}

/// The entries of `list` (`PORT=value`) for `port`, each checked to name a real port.
fn for_port<'a>(flag: &str, list: &'a [String], port: usize, ports: usize) -> Result<Vec<&'a str>> {
    let mut out = Vec::new();
    for e in list {
        let (p, v) = e
            .split_once('=')
            .with_context(|| format!("{flag}: '{e}' is not PORT=VALUE"))?;
        if port_no(p, flag, ports)? as usize == port {
            out.push(v.trim());
        }
    }
    Ok(out)
}

/// Port `port`'s traffic management, or `None` when nothing is configured for it.
fn port_traffic(
    t: &TrafficSpec,
    port: usize,
    ports: usize,
    workers: usize,
) -> Result<Option<PortTraffic>> {
    let sched = for_port("--sched", &t.sched, port, ports)?;
    let class = for_port("--class", &t.class, port, ports)?;
    let shape = for_port("--shape", &t.shape, port, ports)?;
    let red = for_port("--red", &t.red, port, ports)?;
    let queue = for_port("--queue", &t.queue, port, ports)?;
    if sched.is_empty()
        && class.is_empty()
        && shape.is_empty()
        && red.is_empty()
        && queue.is_empty()
    {
        return Ok(None);
    }
    let one = |flag: &str, v: &[&str]| -> Result<()> {
        if v.len() > 1 {
            bail!("{flag}: port {port} given twice");
        }
        Ok(())
    };
    for (flag, v) in [
        ("--sched", &sched),
        ("--shape", &shape),
        ("--red", &red),
        ("--queue", &queue),
    ] {
        one(flag, v)?;
    }
    let numbers = |flag: &str, s: &str| -> Result<Vec<u32>> {
        s.split(',')
            .map(|w| {
                w.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|&w| w > 0)
                    .with_context(|| format!("{flag}: '{w}' is not a positive number"))
            })
            .collect()
    };
    let discipline = match sched.first() {
        None | Some(&"fcfs") => Discipline::Fcfs,
        Some(s) => match s.split_once(':') {
            Some(("wrr", w)) => Discipline::Wrr(numbers("--sched", w)?),
            Some(("drr", q)) => Discipline::Drr(numbers("--sched", q)?),
            _ => bail!("--sched: '{s}' is not fcfs, wrr:W1,W2,... or drr:Q1,Q2,..."),
        },
    };
    let classes = match &discipline {
        Discipline::Fcfs => 1,
        Discipline::Wrr(w) | Discipline::Drr(w) => w.len(),
    };
    let rules = class
        .iter()
        .map(|r| r.parse::<ClassRule>().map_err(|e| anyhow!("--class: {e}")))
        .collect::<Result<Vec<_>>>()?;
    if let Some(r) = rules.iter().find(|r| r.class >= classes) {
        bail!(
            "--class: class {} on port {port}, whose scheduler has classes 0..{}",
            r.class,
            classes - 1
        );
    }
    let policy = match red.first() {
        None => DropPolicy::TailDrop,
        Some(s) => {
            let parts: Vec<&str> = s.split(',').map(str::trim).collect();
            let num = |i: usize| -> Result<f64> {
                parts
                    .get(i)
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("--red: '{s}' is not MIN,MAX,MAX_P,WEIGHT[,gentle]"))
            };
            let gentle = match parts.get(4) {
                None => false,
                Some(&"gentle") => true,
                Some(other) => bail!("--red: '{other}': the fifth field can only be 'gentle'"),
            };
            DropPolicy::Red(
                Red::new(num(0)?, num(1)?, num(2)?, num(3)?, gentle, port as u64 + 1)
                    .map_err(|e| anyhow!("--red: {e}"))?,
            )
        }
    };
    let limit = match queue.first() {
        None => QueueLimit {
            packets: 1024,
            bytes: 4 << 20,
        },
        Some(s) => {
            let n = numbers("--queue", s)?;
            QueueLimit {
                packets: n[0] as usize,
                bytes: n.get(1).map_or(4 << 20, |&b| b as usize),
            }
        }
    };
    let shape = match shape.first() {
        None => None,
        Some(s) => {
            let (rate, burst) = match s.split_once(',') {
                Some((r, b)) => (r, Some(b)),
                None => (*s, None),
            };
            let rate = super::parse_rate(rate.trim()).map_err(|e| anyhow!("--shape: {e}"))?;
            let burst = match burst {
                Some(b) => b
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|&b| b >= 1514)
                    .with_context(|| format!("--shape: burst '{b}' must be at least 1514 bytes"))?,
                None => 16 * 1024,
            };
            Some((rate / workers as f64, burst))
        }
    };
    Ok(Some(PortTraffic {
        discipline,
        classifier: Classifier { rules, default: 0 },
        policy,
        limit,
        shape,
    }))
}

fn read_config(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--config {}: cannot read it", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        // Name the line, and so the key, whatever the message says.
        let at = e.span().map_or(0, |s| s.start);
        let line_no = text[..at.min(text.len())].matches('\n').count() + 1;
        let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
        anyhow!(
            "--config {}: line {line_no} `{line}`: {}",
            path.display(),
            e.message()
        )
    })
}

/// `flag` wins when given, then `file`, then `default`.
fn pick<T>(flag: Option<T>, file: Option<T>, default: T) -> T {
    flag.or(file).unwrap_or(default)
}

fn pick_list<T>(flag: &[T], file: Option<Vec<T>>) -> Vec<T>
where
    T: Clone,
{
    if flag.is_empty() {
        file.unwrap_or_default()
    } else {
        flag.to_vec()
    }
}

fn file_duration(key: &str, s: Option<String>) -> Result<Option<Duration>> {
    s.map(|s| parse_duration(&s).map_err(|e| anyhow!("--config: {key}: {e}")))
        .transpose()
}

impl Settings {
    fn resolve(a: &FwdArgs) -> Result<Settings> {
        let f = match &a.config {
            Some(p) => read_config(p)?,
            None => FileConfig::default(),
        };
        let s = Settings {
            ports: pick_list(&a.ports, f.port),
            workers: pick(a.workers, f.workers, 1),
            cores: pick_list(&a.cores, f.cores),
            logic: LogicSpec {
                logic: pick(a.logic, f.logic, LogicArg::Static),
                map: pick_list(&a.map, f.map),
                rewrite: pick_list(&a.rewrite, f.rewrite),
                route: pick_list(&a.route, f.route),
                ttl: a.ttl || f.ttl.unwrap_or(false),
                filter: pick_list(&a.filter, f.filter),
            },
            mapping: pick(a.mapping, f.mapping, MappingArg::Sequential),
            batch: pick(a.batch, f.batch, 64),
            xdp_mode: pick(a.xdp_mode, f.xdp_mode, XdpModeArg::Auto),
            xsk_mode: pick(a.xsk_mode, f.xsk_mode, XskModeArg::Auto),
            ring: pick(a.ring, f.ring, 2048),
            frames: pick(a.frames, f.frames, 16384),
            busy_poll_us: pick(a.busy_poll_us, f.busy_poll_us, 0),
            duration: a.duration.or(file_duration("duration", f.duration)?),
            max: a.max || f.max.unwrap_or(false),
            flow_idle: a
                .flow_idle
                .or(file_duration("flow-idle", f.flow_idle)?)
                .unwrap_or(Duration::from_secs(10)),
            json: a.json || f.json.unwrap_or(false),
            traffic: TrafficSpec {
                sched: pick_list(&a.sched, f.sched),
                class: pick_list(&a.class, f.class),
                shape: pick_list(&a.shape, f.shape),
                red: pick_list(&a.red, f.red),
                queue: pick_list(&a.queue, f.queue),
            },
        };
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<()> {
        if self.ports.len() < 2 {
            bail!("--port: give at least two interfaces to forward among");
        }
        if self.ports.len() > MAX_PORTS as usize {
            bail!("--port: at most {MAX_PORTS} interfaces");
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if self.workers == 0 || self.workers > cores {
            bail!(
                "--workers {}: must be between 1 and the {cores} cores of this machine",
                self.workers
            );
        }
        if !(1..=256).contains(&self.batch) {
            bail!("--batch {}: must be between 1 and 256", self.batch);
        }
        if !self.ring.is_power_of_two() || !(64..=32768).contains(&self.ring) {
            bail!(
                "--ring {}: must be a power of two between 64 and 32768",
                self.ring
            );
        }
        for i in 0..self.ports.len() {
            port_traffic(&self.traffic, i, self.ports.len(), self.workers)?;
        }
        if self.frames < 256 * self.ports.len() || self.frames > MAX_FRAMES {
            bail!(
                "--frames {}: must be between 256 per port ({} here) and {MAX_FRAMES} (8 GiB of \
                 2 KiB buffers per worker)",
                self.frames,
                256 * self.ports.len()
            );
        }
        if self.busy_poll_us > 1_000_000 {
            bail!(
                "--busy-poll-us {}: must be between 0 (off) and 1000000 (1 s)",
                self.busy_poll_us
            );
        }
        Ok(())
    }

    /// Settings that differ from `running` and only take effect at the next start.
    fn fixed_changes(&self, running: &Settings) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut diff = |changed: bool, key| {
            if changed {
                v.push(key)
            }
        };
        diff(self.ports != running.ports, "port");
        diff(self.workers != running.workers, "workers");
        diff(self.cores != running.cores, "cores");
        diff(self.mapping != running.mapping, "mapping");
        diff(self.batch != running.batch, "batch");
        diff(self.xdp_mode != running.xdp_mode, "xdp-mode");
        diff(self.xsk_mode != running.xsk_mode, "xsk-mode");
        diff(self.ring != running.ring, "ring");
        diff(self.frames != running.frames, "frames");
        diff(self.busy_poll_us != running.busy_poll_us, "busy-poll-us");
        diff(self.max != running.max, "max");
        diff(self.flow_idle != running.flow_idle, "flow-idle");
        diff(
            self.traffic != running.traffic,
            "sched/class/shape/red/queue",
        );
        v
    }
}

/// The most buffers a worker's UMEM holds (`--frames`).
const MAX_FRAMES: usize = 1 << 22;

fn port_no(s: &str, what: &str, ports: usize) -> Result<PortId> {
    let p: usize = s
        .trim()
        .parse()
        .with_context(|| format!("{what}: '{s}' is not a port number"))?;
    if p >= ports {
        bail!(
            "{what}: port {p} does not exist (ports are 0..{})",
            ports - 1
        );
    }
    Ok(p as PortId)
}

fn build_logic(a: &LogicSpec, ports: &[String]) -> Result<AnyLogic> {
    let n = ports.len();
    let mut logic = match a.logic {
        LogicArg::Static => {
            let pairs: Vec<(PortId, PortId)> = if a.map.is_empty() {
                vec![(0, 1), (1, 0)]
            } else {
                a.map
                    .iter()
                    .map(|m| {
                        let (i, o) = m
                            .split_once(':')
                            .with_context(|| format!("--map: '{m}' is not IN:OUT"))?;
                        Ok((port_no(i, "--map", n)?, port_no(o, "--map", n)?))
                    })
                    .collect::<Result<_>>()?
            };
            let mut map = StaticMap::from_pairs(pairs);
            for r in &a.rewrite {
                let (p, mac) = r
                    .split_once('=')
                    .with_context(|| format!("--rewrite: '{r}' is not PORT=MAC"))?;
                let p = port_no(p, "--rewrite", n)?;
                let dst = parse_mac(mac).map_err(|e| anyhow!("--rewrite: {e}"))?;
                map.set_rewrite(
                    p,
                    Some(MacRewrite {
                        dst,
                        src: mac_of("--port", &ports[p as usize])?,
                    }),
                );
            }
            AnyLogic::new(map)
        }
        LogicArg::Bridge => AnyLogic::new(LearningBridge::new()),
        LogicArg::Router => {
            if a.route.is_empty() {
                bail!("--logic router needs at least one --route PREFIX/LEN=PORT,NEXTHOP_MAC");
            }
            let mut router = Router::new();
            // Next hop i for route i; a prefix given several times becomes a multipath group
            // over its routes' next hops (ids from 0x8000 up), weighted by their WEIGHT.
            type Members = Vec<(u16, u32)>;
            let mut prefixes: Vec<((IpAddr, u8), Members)> = Vec::new();
            for (i, r) in a.route.iter().enumerate() {
                let bad = || format!("--route: '{r}' is not PREFIX/LEN=PORT,NEXTHOP_MAC[,WEIGHT]");
                let (prefix, via) = r.split_once('=').with_context(bad)?;
                let (addr, len) = prefix.split_once('/').with_context(bad)?;
                let addr: IpAddr = addr.parse().with_context(bad)?;
                let len: u8 = len.parse().with_context(bad)?;
                let mut via = via.split(',');
                let port = port_no(via.next().with_context(bad)?, "--route", n)?;
                let mac = via.next().with_context(bad)?;
                let dst_mac = parse_mac(mac).map_err(|e| anyhow!("--route: {e}"))?;
                let weight: u32 = match via.next() {
                    None => 1,
                    Some(w) => w.trim().parse().ok().filter(|&w| w > 0).with_context(|| {
                        format!("--route {r}: weight '{w}' must be a positive number")
                    })?,
                };
                if via.next().is_some() {
                    bail!("{}", bad());
                }
                let id = u16::try_from(i)
                    .ok()
                    .filter(|&id| id < 0x8000)
                    .context("--route: at most 32768 routes")?;
                router.set_next_hop(
                    id,
                    NextHop {
                        port,
                        dst_mac,
                        src_mac: mac_of("--port", &ports[port as usize])?,
                    },
                );
                match prefixes.iter_mut().find(|(p, _)| *p == (addr, len)) {
                    Some((_, members)) => members.push((id, weight)),
                    None => prefixes.push(((addr, len), vec![(id, weight)])),
                }
            }
            for (g, ((addr, len), members)) in prefixes.into_iter().enumerate() {
                let target = if members.len() == 1 {
                    members[0].0
                } else {
                    let gid = 0x8000 + g as u16;
                    router
                        .set_group(gid, members)
                        .map_err(|e| anyhow!("--route {addr}/{len}: {e}"))?;
                    gid
                };
                router
                    .add_route(addr, len, target)
                    .map_err(|e| anyhow!("--route {addr}/{len}: {e}"))?;
            }
            AnyLogic::new(router)
        }
    };
    if let Some(acl) = acl_from(&a.filter)? {
        logic = logic.with_acl(acl);
    }
    Ok(logic.with_ttl_decrement(a.ttl))
}

/// The `--filter` rules as an ACL (first match wins, default permit), if there are any.
fn acl_from(filter: &[String]) -> Result<Option<Acl>> {
    if filter.is_empty() {
        return Ok(None);
    }
    let rules = filter
        .iter()
        .map(|f| {
            f.parse::<AclRule>()
                .map_err(|e| anyhow!("--filter '{f}': {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(Acl::new(rules, AclAction::Permit)))
}

/// `--controller`: checks that no flag competes with the controller for the logic, and reads
/// the node id and token.
fn controller_options(a: &FwdArgs, s: &Settings, url: &str) -> Result<AgentOptions> {
    if !matches!(s.logic.logic, LogicArg::Router | LogicArg::Static)
        || !s.logic.route.is_empty()
        || !s.logic.map.is_empty()
        || !s.logic.rewrite.is_empty()
        || a.logic.is_some_and(|l| l != LogicArg::Router)
    {
        bail!(
            "--controller {url}: the controller owns the routes; drop --logic (other than \
             router), --route, --map and --rewrite"
        );
    }
    let token = match &a.token_file {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("--token-file {}", p.display()))?
            .trim()
            .to_string(),
        None => std::env::var("LINERATE_TOKEN").unwrap_or_default(),
    };
    if token.is_empty() {
        bail!("--controller {url} needs a bearer token: --token-file FILE or LINERATE_TOKEN");
    }
    let node = match &a.node {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("reading the host name for the node id (or give --node)")?
            .trim()
            .to_string(),
    };
    linerate_control::proto::check_name("--node", &node).map_err(|e| anyhow!("{e}"))?;
    let mut opts = AgentOptions::new(url, token, node);
    opts.capabilities = linerate_dataplane::node::CAPABILITIES.to_vec();
    opts.metrics_every = Some(a.report_every.unwrap_or(Duration::from_secs(1)));
    Ok(opts)
}

/// The XDP program's key for a flow the workers decided.
fn xdp_key(l: &Learned) -> XdpFlowKey {
    let mut key = XdpFlowKey {
        sport_be: l.key.src_port.to_be(),
        dport_be: l.key.dst_port.to_be(),
        proto: l.key.proto,
        family: if l.ipv4 { 4 } else { 6 },
        ..XdpFlowKey::default()
    };
    if l.ipv4 {
        // FlowKey holds IPv4 as IPv4-mapped IPv6; the program keeps it in the first 4 bytes.
        key.src[..4].copy_from_slice(&l.key.src[12..]);
        key.dst[..4].copy_from_slice(&l.key.dst[12..]);
    } else {
        key.src = l.key.src;
        key.dst = l.key.dst;
    }
    key
}

/// Max mode's control side: installs the workers' reports, ages idle entries.
struct FlowCache {
    learned: Receiver<Learned>,
    idle: Duration,
    cached: u64,
    aged: u64,
}

impl FlowCache {
    fn install(&mut self, steering: &mut [Steering], version: u64) -> Result<()> {
        for l in self.learned.try_iter() {
            if l.version != version {
                // Decided by logic a reload replaced.
                continue;
            }
            let entry = FlowEntry {
                port: l.out_port as u32,
                dst_mac: l.dst_mac,
                src_mac: l.src_mac,
                dec_ttl: l.dec_ttl as u8,
                ..FlowEntry::default()
            };
            steering[l.in_port as usize]
                .cache_flow(xdp_key(&l), entry)
                .context("max mode: caching a flow")?;
            self.cached += 1;
        }
        Ok(())
    }

    fn age(&mut self, steering: &mut [Steering]) -> Result<()> {
        let now = monotonic_ns();
        // Aging watches each flow's packet count, so it needs no clock in the program.
        for s in steering {
            self.aged += s
                .age_flows(now, self.idle.as_nanos() as u64)
                .context("max mode: aging flows")? as u64;
        }
        Ok(())
    }
}

/// The addresses of `dev` itself: packets to them go to the host's stack, not forwarded, so
/// the forwarding host stays reachable (ping, ssh) through the ports it forwards on.
fn host_addresses(dev: &str) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().context("listing interface addresses")? {
        if ifa.interface_name != dev {
            continue;
        }
        let Some(a) = ifa.address else { continue };
        if let Some(v4) = a.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = a.as_sockaddr_in6() {
            out.push(IpAddr::V6(v6.ip()));
        }
    }
    Ok(out)
}

/// Steering rules for one port: its own addresses to the host, everything else to AF_XDP.
fn host_rules(dev: &str) -> Result<Vec<Rule>> {
    let addrs = host_addresses(dev)?;
    if addrs.len() > MAX_RULES as usize {
        bail!(
            "--port {dev}: {} addresses; the steering program holds {MAX_RULES} rules",
            addrs.len()
        );
    }
    Ok(addrs
        .into_iter()
        .map(|a| match a {
            IpAddr::V4(v4) => Rule::any(Action::Pass).dst_v4(v4, 32),
            IpAddr::V6(v6) => Rule::any(Action::Pass).dst_v6(v6, 128),
        })
        .collect())
}

/// Scheduler counters summed over workers, per (port, class).
fn class_reports(counters: &[(String, usize, std::sync::Arc<SchedCounters>)]) -> Vec<ClassReport> {
    let mut out: Vec<ClassReport> = Vec::new();
    for (port, _worker, c) in counters {
        for class in 0..c.sent.len() {
            let load = |v: &Vec<std::sync::atomic::AtomicU64>| v[class].load(Ordering::Relaxed);
            let r = match out.iter_mut().find(|r| &r.port == port && r.class == class) {
                Some(r) => r,
                None => {
                    out.push(ClassReport {
                        port: port.clone(),
                        class,
                        ..ClassReport::default()
                    });
                    out.last_mut().expect("just pushed")
                }
            };
            r.sent += load(&c.sent);
            r.sent_bytes += load(&c.sent_bytes);
            r.tail_drops += load(&c.tail_drops);
            r.red_drops += load(&c.red_drops);
        }
    }
    out
}

/// Sums the steering programs' counters of `action` over every port.
fn kernel_count(steering: &[Steering], action: Action) -> Result<(u64, u64)> {
    let mut t = (0, 0);
    for s in steering {
        let c = s.counters()?[action as usize];
        t.0 += c.packets;
        t.1 += c.bytes;
    }
    Ok(t)
}

/// Re-reads `--config` and applies what changed in the logic. Problems are reported and the
/// running configuration stays.
fn reload(
    a: &FwdArgs,
    running: &mut Settings,
    handle: &ReloadHandle<AnyLogic>,
    steering: &mut [Steering],
) -> Result<bool> {
    let path = a.config.as_deref().unwrap_or(Path::new("?"));
    let new = match Settings::resolve(a) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fwd: reload refused, still running the previous configuration: {e:#}");
            return Ok(false);
        }
    };
    for key in new.fixed_changes(running) {
        eprintln!(
            "fwd: reload: '{key}' changed in {}; it takes effect at the next start",
            path.display()
        );
    }
    if new.logic == running.logic {
        eprintln!("fwd: reloaded {}: logic unchanged", path.display());
        return Ok(false);
    }
    let logic = match build_logic(&new.logic, &running.ports) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fwd: reload refused, still running the previous configuration: {e:#}");
            return Ok(false);
        }
    };
    let version = handle.publish(logic);
    for s in steering.iter_mut() {
        s.invalidate_flows()?;
    }
    running.logic = new.logic;
    eprintln!(
        "fwd: reloaded {}: new logic (version {version}) published; cached flows invalidated",
        path.display()
    );
    Ok(true)
}

pub fn run(a: FwdArgs) -> Result<()> {
    let mut s = Settings::resolve(&a)?;
    let cores = super::cores_for(&s.cores, s.workers, "--cores")?;
    let agent_opts = match &a.controller {
        Some(url) => Some(controller_options(&a, &s, url)?),
        None => None,
    };
    let mut ifindex = Vec::with_capacity(s.ports.len());
    for dev in &s.ports {
        ifindex.push(super::ifindex("--port", dev)?);
    }
    let macs = if agent_opts.is_some() {
        (s.ports.iter())
            .map(|p| mac_of("--port", p))
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let handle = ReloadHandle::new(match agent_opts {
        // Nothing routes until the controller's first update (within milliseconds).
        Some(_) => {
            let (logic, _) = node::logic_from(&Default::default(), &s.ports, &macs, s.logic.ttl);
            match acl_from(&s.logic.filter)? {
                Some(acl) => logic.with_acl(acl),
                None => logic,
            }
        }
        None => build_logic(&s.logic, &s.ports)?,
    });
    // Before anything is attached: one interface cannot be two ports (its XDP program and
    // queues are one).
    if let Some((i, p)) = (s.ports.iter().enumerate()).find(|(i, p)| s.ports[..*i].contains(p)) {
        let first = s.ports.iter().position(|q| q == p).unwrap_or(0);
        bail!("--port {p}: given twice (as port {first} and port {i})");
    }
    let hangup = Arc::new(AtomicBool::new(false));
    let stop = if a.config.is_some() {
        use signal_hook::consts::{SIGINT, SIGTERM};
        super::stop_flag_on(&[SIGINT, SIGTERM])?
    } else {
        super::stop_flag()?
    };
    if a.config.is_some() {
        signal_hook::flag::register(signal_hook::consts::SIGHUP, hangup.clone())
            .context("installing the SIGHUP handler")?;
    }
    let mode = AttachMode::from(s.xdp_mode);
    let xsk_cfg = XskConfig {
        rx_size: s.ring,
        tx_size: s.ring,
        fill_size: s.ring * 2,
        comp_size: s.ring * 2,
        mode: match s.xsk_mode {
            XskModeArg::Auto => XskMode::Auto,
            XskModeArg::Copy => XskMode::Copy,
            XskModeArg::Zerocopy => XskMode::ZeroCopy,
        },
        need_wakeup: true,
        busy_poll_us: (s.busy_poll_us > 0).then_some(s.busy_poll_us),
    };
    // Steering first, so a bad interface fails before any socket exists.
    let mut steering = Vec::with_capacity(s.ports.len());
    for dev in &s.ports {
        let mut st = Steering::load().context("loading the steering program")?;
        let rules = host_rules(dev)?;
        if !rules.is_empty() {
            eprintln!(
                "fwd: traffic to {dev}'s {} address(es) goes to the host stack",
                rules.len()
            );
        }
        st.set_rules(&rules, Action::Xsk)?;
        if s.max {
            st.set_fastpath(true)?;
            for (port, &i) in ifindex.iter().enumerate() {
                st.set_tx_port(port as u32, i)?;
            }
        }
        match st
            .attach(dev, mode)
            .with_context(|| format!("--port {dev}"))?
        {
            Attached::Driver => eprintln!("fwd: XDP on {dev} in driver mode"),
            Attached::Skb { why } => eprintln!(
                "fwd: XDP on {dev} in skb (generic) mode{}",
                why.map(|w| format!(" because driver mode failed: {w}"))
                    .unwrap_or_default()
            ),
        }
        steering.push(st);
    }
    let mapping = match s.mapping {
        MappingArg::Sequential => Mapping::Sequential,
        MappingArg::Concurrent => Mapping::Concurrent,
    };
    let (learn_tx, learn_rx) = sync_channel(8192);
    let mut cache = FlowCache {
        learned: learn_rx,
        idle: s.flow_idle,
        cached: 0,
        aged: 0,
    };
    let (mut txs, mut rxs) = handoff_mesh(s.workers, 1024, 2048);
    let mut sched_counters: Vec<(String, usize, std::sync::Arc<SchedCounters>)> = Vec::new();
    let mut live: Vec<Option<(Arc<LiveSettings>, node::StartupSettings)>> =
        vec![None; s.ports.len()];
    let mut workers = Vec::with_capacity(s.workers);
    for w in (0..s.workers).rev() {
        let pool = BufferPool::new(s.frames, 2048)?;
        let fill = (s.frames / (2 * s.ports.len())).min(xsk_cfg.fill_size as usize) as u32;
        let mut ports: Vec<XskPort> = Vec::with_capacity(s.ports.len());
        for (i, dev) in s.ports.iter().enumerate() {
            let p = XskPort::open(&pool, ports.first(), dev, w as u32, &xsk_cfg, fill)
                .with_context(|| format!("worker {w}: AF_XDP socket on {dev} queue {w}"))?;
            steering[i].bind_xsk(w as u32, p.fd().context("socket closed")?)?;
            ports.push(p);
        }
        if w == 0 {
            eprintln!(
                "fwd: AF_XDP in {} mode{}",
                if ports[0].is_zero_copy() {
                    "zero-copy"
                } else {
                    "copy"
                },
                if s.max {
                    "; max mode: decided flows are forwarded by the XDP program"
                } else {
                    ""
                }
            );
        }
        let mut boxed: Vec<Box<dyn Port>> = Vec::with_capacity(ports.len());
        for (i, p) in ports.into_iter().enumerate() {
            match port_traffic(&s.traffic, i, s.ports.len(), s.workers)? {
                None => boxed.push(Box::new(p)),
                Some(t) => {
                    let startup = (
                        t.discipline.clone(),
                        t.shape.map(|(r, b)| (r * s.workers as f64, b)),
                    );
                    let shaper = t
                        .shape
                        .map(|(rate, burst)| TokenBucket::new(rate, burst))
                        .transpose()
                        .map_err(|e| anyhow!("--shape: {e}"))?;
                    let sched = Scheduler::new(t.discipline, t.policy, t.limit, shaper)
                        .map_err(|e| anyhow!("--sched: {e}"))?;
                    let c = SchedCounters::new(sched.classes());
                    sched_counters.push((s.ports[i].clone(), w, c.clone()));
                    // One cell per interface, shared by its workers: the controller's port
                    // settings reach every worker's scheduler through it.
                    let classes = sched.classes();
                    let (cell, _) = live[i]
                        .get_or_insert_with(|| (LiveSettings::new(classes, s.workers), startup));
                    let port =
                        ScheduledPort::new(p, sched, t.classifier, c).with_live(cell.clone());
                    boxed.push(Box::new(port));
                }
            }
        }
        let ports = boxed;
        let cfg = WorkerConfig {
            id: w,
            workers: s.workers,
            batch: s.batch,
            mapping,
            kernel_port: None,
            idle: IdlePolicy::default(),
        };
        let logic = FlowLearner::new(handle.reloadable(), s.max.then(|| learn_tx.clone()));
        let (tx, rx) = (txs.pop().unwrap_or_default(), rxs.pop().unwrap_or_default());
        workers.push(Worker::new(cfg, pool, ports, logic, tx, rx)?);
    }
    drop(learn_tx);
    workers.reverse();
    let counters: Vec<_> = workers.iter().map(Worker::counters).collect();
    let published = Arc::new(AtomicBool::new(false));
    let _agent = match agent_opts {
        Some(mut opts) => {
            // The agent's thread stays off the worker cores whenever another core exists.
            let free: Vec<usize> = (0..std::thread::available_parallelism().map_or(1, |n| n.get()))
                .filter(|c| !cores[..s.workers].contains(c))
                .collect();
            opts.on_thread_start = Some(Box::new(move || {
                if let Some(&c) = free.first() {
                    core_affinity::set_for_current(core_affinity::CoreId { id: c });
                }
            }));
            let url = opts.url.clone();
            if live.iter().any(Option::is_some) {
                opts.capabilities
                    .extend([Capability::Scheduler, Capability::Shaper]);
            }
            let dataplane = node::FwdNode {
                live: (s.ports.iter().zip(&live))
                    .filter_map(|(p, l)| {
                        l.clone().map(|(cell, startup)| (p.clone(), cell, startup))
                    })
                    .collect(),
                applied_ports: Default::default(),
                last: None,
                handle: handle.clone(),
                ports: s.ports.clone(),
                macs: macs.clone(),
                ttl: s.logic.ttl,
                acl: acl_from(&s.logic.filter)?,
                published: published.clone(),
                counters: Arc::new(counters.clone().into()),
            };
            eprintln!("fwd: node '{}' takes its routes from {url}", opts.node);
            Some(Agent::start(opts, dataplane).context("starting the control agent")?)
        }
        None => None,
    };
    // Workers stop after the steering programs stopped feeding their sockets (see below).
    let workers_stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut handles = Vec::new();
    for (i, w) in workers.into_iter().enumerate() {
        handles.push(worker::spawn(w, Some(cores[i]), workers_stop.clone())?);
    }
    eprintln!("fwd: forwarding among {}", s.ports.join(", "));
    let live = Live::new();
    let mut reloads = 0;
    let mut control = || -> Result<()> {
        let (mut before, mut last) = (Counts::default(), Instant::now());
        let mut fast_before = kernel_count(&steering, Action::Fastpath)?.0;
        while !stop.load(Ordering::Relaxed) && s.duration.is_none_or(|d| start.elapsed() < d) {
            std::thread::sleep(Duration::from_millis(20));
            if hangup.swap(false, Ordering::Relaxed) {
                if a.controller.is_some() {
                    eprintln!("fwd: SIGHUP: the controller owns the logic; nothing reloaded");
                } else if reload(&a, &mut s, &handle, &mut steering)? {
                    reloads += 1;
                }
            }
            if published.swap(false, Ordering::AcqRel) {
                // Flows the XDP program cached were decided by the logic just replaced.
                for st in steering.iter_mut() {
                    st.invalidate_flows()?;
                }
                reloads += 1;
            }
            if s.max {
                cache.install(&mut steering, handle.version())?;
            }
            if last.elapsed() >= Duration::from_secs(1) {
                let dt = last.elapsed();
                let mut now = Counts::default();
                for c in &counters {
                    now.add(&c.read());
                }
                let mut line = pipeline::live_line(&now, &before, dt);
                if s.max {
                    let fast = kernel_count(&steering, Action::Fastpath)?.0;
                    line.push_str(&format!(
                        "  kernel {:>7.2} Mpps",
                        (fast - fast_before) as f64 / dt.as_secs_f64() / 1e6
                    ));
                    fast_before = fast;
                    cache.age(&mut steering)?;
                }
                live.line(start.elapsed(), &line);
                (before, last) = (now, Instant::now());
            }
        }
        Ok(())
    };
    let outcome = control();
    // Quiesce before the sockets close: a frame the kernel is receiving into a buffer while
    // its socket closes never comes back (seen under load as one buffer short). So first stop
    // steering into AF_XDP (drop instead; ARP and neighbour discovery still reach the host, and
    // nothing leaks into its stack), give in-flight receives a moment, then stop the workers.
    for st in steering.iter_mut() {
        if let Err(e) = st.set_rules(&[], Action::Drop) {
            eprintln!("fwd: could not stop steering into AF_XDP before closing: {e}");
        }
    }
    std::thread::sleep(Duration::from_millis(20));
    workers_stop.store(true, Ordering::Relaxed);
    live.done();
    let elapsed = start.elapsed();
    let mut reports = Vec::new();
    for h in handles {
        reports.push(h.join().map_err(|_| anyhow!("a worker panicked"))??);
    }
    outcome?;
    let fast = kernel_count(&steering, Action::Fastpath)?;
    let to_kernel =
        kernel_count(&steering, Action::Pass)?.0 + kernel_count(&steering, Action::NoXsk)?.0;
    drop(steering);
    let report = PipelineReport {
        elapsed,
        workers: reports,
        kernel: Some(KernelPath {
            fastpath_packets: fast.0,
            fastpath_bytes: fast.1,
            to_kernel,
            flows_cached: cache.cached,
            flows_aged: cache.aged,
            reloads,
        }),
        classes: class_reports(&sched_counters),
    };
    if s.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    let kept: usize = report.workers.iter().map(|w| w.kernel_kept).sum();
    if kept > 0 {
        eprintln!(
            "fwd: {kept} buffer(s) not returned by the kernel at close, one per AF_XDP socket \
             whose RX ring overflowed during the run (see Port::kept_by_kernel); the UMEM is \
             ours, nothing leaked"
        );
    }
    if !report.workers.iter().all(|w| w.frames_returned()) {
        bail!("frame accounting failed: a worker ended with buffers unaccounted for");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        fwd: FwdArgs,
    }

    fn args(list: &[&str]) -> FwdArgs {
        Cli::try_parse_from(std::iter::once("fwd").chain(list.iter().copied()))
            .unwrap()
            .fwd
    }

    fn config(text: &str) -> (tempfile_path::Guard, String) {
        let g = tempfile_path::Guard::new(text);
        let p = g.0.display().to_string();
        (g, p)
    }

    /// A file removed when dropped (no tempfile crate for this one use).
    mod tempfile_path {
        pub struct Guard(pub std::path::PathBuf);
        impl Guard {
            pub fn new(text: &str) -> Guard {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "linerate-fwd-{}-{}.toml",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&p, text).unwrap();
                Guard(p)
            }
        }
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let (_g, p) = config(
            "port = [\"a\", \"b\", \"c\"]\nworkers = 1\nbatch = 32\nlogic = \"router\"\n\
             route = [\"10.0.0.0/8=1,02:00:00:00:00:01\"]\nmax = true\nflow-idle = \"3s\"\n",
        );
        let s = Settings::resolve(&args(&["--config", &p, "--batch", "16"])).unwrap();
        assert_eq!(s.ports, ["a", "b", "c"]);
        assert_eq!(s.batch, 16, "the flag wins");
        assert_eq!(s.logic.logic, LogicArg::Router);
        assert_eq!(s.logic.route.len(), 1);
        assert!(s.max);
        assert_eq!(s.flow_idle, Duration::from_secs(3));
        assert_eq!(
            (s.ring, s.frames, s.mapping),
            (2048, 16384, MappingArg::Sequential)
        );
        let s = Settings::resolve(&args(&["--config", &p, "--port", "x", "--port", "y"])).unwrap();
        assert_eq!(s.ports, ["x", "y"], "a list flag replaces the file's list");
    }

    #[test]
    fn file_errors_name_the_key() {
        let (_g, p) = config("port = [\"a\", \"b\"]\nrings = 4096\n");
        let e = Settings::resolve(&args(&["--config", &p]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rings") && e.contains(&p), "{e}");
        let (_g, p) = config("port = [\"a\", \"b\"]\nbatch = \"many\"\n");
        let e = Settings::resolve(&args(&["--config", &p]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2 `batch = \"many\"`"), "{e}");
        let (_g, p) = config("port = [\"a\", \"b\"]\nflow-idle = \"soon\"\n");
        let e = format!(
            "{:#}",
            Settings::resolve(&args(&["--config", &p])).unwrap_err()
        );
        assert!(e.contains("flow-idle"), "{e}");
        let (_g, p) = config("port = [\"a\", \"b\"]\nlogic = \"hub\"\n");
        let e = Settings::resolve(&args(&["--config", &p]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hub"), "{e}");
        let e = Settings::resolve(&args(&["--config", "/nonexistent/x.toml"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/x.toml"), "{e}");
    }

    #[test]
    fn checks_apply_to_file_values_too() {
        let (_g, p) = config("port = [\"a\", \"b\"]\nring = 1000\n");
        let e = Settings::resolve(&args(&["--config", &p]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--ring 1000"), "{e}");
        let (_g, p) = config("port = [\"a\"]\n");
        let e = Settings::resolve(&args(&["--config", &p]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least two"), "{e}");
    }

    #[test]
    fn only_logic_changes_apply_on_reload() {
        let base = Settings::resolve(&args(&["--port", "a", "--port", "b"])).unwrap();
        let mut other = base.clone();
        other.batch = 8;
        other.logic.ttl = true;
        other.max = true;
        assert_eq!(other.fixed_changes(&base), ["batch", "max"]);
    }

    #[test]
    fn ipv4_flow_keys_use_the_programs_layout() {
        let key = linerate_dataplane::shard::FlowKey {
            src: std::net::Ipv4Addr::new(10, 0, 0, 1)
                .to_ipv6_mapped()
                .octets(),
            dst: std::net::Ipv4Addr::new(10, 0, 0, 2)
                .to_ipv6_mapped()
                .octets(),
            src_port: 1000,
            dst_port: 9,
            proto: 17,
        };
        let l = Learned {
            in_port: 0,
            out_port: 1,
            key,
            ipv4: true,
            dst_mac: [0; 6],
            src_mac: [0; 6],
            dec_ttl: false,
            version: 0,
        };
        let k = xdp_key(&l);
        assert_eq!(&k.src[..4], &[10, 0, 0, 1]);
        assert_eq!(&k.src[4..], &[0; 12]);
        assert_eq!(&k.dst[..4], &[10, 0, 0, 2]);
        // Network order as the program reads it from the packet.
        assert_eq!(k.sport_be.to_ne_bytes(), 1000u16.to_be_bytes());
        assert_eq!((k.proto, k.family), (17, 4));
    }
}
