//! `linerate fwd`'s settings: one table of keys that are both the long flags and the keys of
//! the `--config` TOML file, one merge rule (a key given as a flag wins over the file, the
//! file over the default), and the checks and builders that turn the merged settings into
//! logic and per-port traffic management.
//!
//! Every key is optional at both layers, so a flag can also turn a file's setting off:
//! booleans take `--max=false`, lists are replaced whole by a flag that gives them.

use crate::node::logic_from;
use anyhow::{Context, Result, anyhow, bail};
use clap::ValueEnum;
use linerate_dataplane::logic::{
    Acl, Action as AclAction, AnyLogic, LearningBridge, MacRewrite, Rule as AclRule, StaticMap,
};
use linerate_dataplane::sched::{ClassRule, Classifier, Discipline, DropPolicy, QueueLimit, Red};
use linerate_dataplane::units::{mac_of, parse_duration, parse_mac, parse_rate};
use linerate_dataplane::verdict::PortId;
use linerate_ebpf::AttachMode;
use linerate_ebpf::abi::MAX_PORTS;
use linerate_proto as proto;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// A TOML string read as a duration (`"10s"`, `"500ms"`).
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// Declares the one table: each key once, as a flag (clap) and as a file key (serde), both
/// optional, and the merge of two layers.
macro_rules! options {
    ($( $(#[$meta:meta])* $key:ident : $ty:ty ),* $(,)?) => {
        /// Every `fwd` setting as given in one layer (the flags, or the file); `None` where
        /// that layer does not say.
        #[derive(clap::Args, Deserialize, Default, Clone, Debug)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        pub struct Options {
            $( $(#[$meta])* pub $key: Option<$ty>, )*
        }

        impl Options {
            /// `self` over `below`: each key `self` gives wins.
            pub fn over(self, below: Options) -> Options {
                Options { $( $key: self.$key.or(below.$key), )* }
            }
        }
    };
}

options! {
    /// An interface to forward among (two or more, in port order: the first is port 0).
    #[arg(long = "port")]
    port: Vec<String>,
    /// Workers; worker w owns queue w of every port (default 1).
    #[arg(long)]
    workers: usize,
    /// Cores to pin the workers to, one per worker, e.g. 1 (default: 0..workers).
    #[arg(long, value_delimiter = ',')]
    cores: Vec<usize>,
    /// Switching logic (default static).
    #[arg(long, value_enum)]
    logic: LogicArg,
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
    /// Decrement TTL / hop limit (and drop at zero); --ttl=false turns a file's off.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    ttl: bool,
    /// Filter rule, first match wins, e.g. "deny udp any any dport 53" (repeatable).
    #[arg(long)]
    filter: Vec<String>,
    /// Flow-to-worker mapping (default sequential: each flow on one worker, by jump hash).
    #[arg(long, value_enum)]
    mapping: MappingArg,
    /// Frames per batch, 1 to 256 (default 64).
    #[arg(long)]
    batch: usize,
    /// XDP attach mode (default auto).
    #[arg(long, value_enum)]
    xdp_mode: AttachMode,
    /// AF_XDP copy or zero-copy (default auto).
    #[arg(long, value_enum)]
    xsk_mode: XskModeArg,
    /// AF_XDP ring size, RX and TX; FILL and COMPLETION get twice this (default 2048).
    #[arg(long)]
    ring: u32,
    /// Buffers per worker, the UMEM size in 2 KiB frames (default 16384).
    #[arg(long)]
    frames: usize,
    /// SO_BUSY_POLL microseconds on every socket (default 0: off).
    #[arg(long)]
    busy_poll_us: u32,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    duration: Duration,
    /// Max mode: cache decided flows in the XDP program, which then forwards them in the
    /// kernel. Egress interfaces must accept XDP redirects (on veth: an XDP program on the
    /// peer). --max=false turns a file's off.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    max: bool,
    /// Max mode: a cached flow idle this long is removed (default 10s).
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    flow_idle: Duration,
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
    /// Print the final report as JSON; --json=false turns a file's off.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    json: bool,
    /// Take routes and flow pins from a linerate controller, e.g. wss://ctl.example:7878/
    /// (ws:// only to a loopback address): each
    /// update replaces the router's routes (the last ones stay while the controller is away).
    /// Excludes --logic other than router, --route, --map and --rewrite.
    #[arg(long)]
    controller: String,
    /// This node's id at the controller (default: the host name).
    #[arg(long)]
    node: String,
    /// File holding this node's bearer token at the controller (default: $LINERATE_TOKEN).
    #[arg(long)]
    token_file: PathBuf,
    /// For wss://: the certificate to trust (PEM): the controller's own (e.g. the one
    /// `controller --tls-self-signed DIR` made) or its CA's.
    #[arg(long)]
    controller_ca: PathBuf,
    /// How often to report counters to the controller (default 1s).
    #[arg(long, value_parser = parse_duration)]
    #[serde(default, deserialize_with = "duration")]
    report_every: Duration,
}

/// Reads a `--config` file. Unknown keys and bad values are errors naming the file, the line
/// and the key.
pub fn read_file(path: &Path) -> Result<Options> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--config {}: cannot read it", path.display()))?;
    parse_file(&text).map_err(|e| anyhow!("--config {}: {e}", path.display()))
}

/// The text of a `--config` file as [`Options`] (the fuzz target's entry point): never
/// panics; an error names the line and its text.
pub fn parse_file(text: &str) -> Result<Options, String> {
    // Name the line, and so the key, whatever the message says.
    toml::from_str(text)
        .map_err(|e| linerate_proto::units::at_line(text, e.span().map(|s| s.start), e.message()))
}

/// What the switching logic is built from: the part of the settings a reload applies.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LogicSpec {
    pub logic: LogicArg,
    pub map: Vec<String>,
    pub rewrite: Vec<String>,
    pub route: Vec<String>,
    pub ttl: bool,
    pub filter: Vec<String>,
}

/// The controller a node takes its logic from (`--controller` and its companions).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ControllerSpec {
    pub url: String,
    pub node: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub report_every: Duration,
}

/// Every setting, resolved from flags over file over defaults, and checked.
#[derive(Clone, Debug)]
pub struct Settings {
    pub ports: Vec<String>,
    pub workers: usize,
    pub cores: Vec<usize>,
    pub logic: LogicSpec,
    pub mapping: MappingArg,
    pub batch: usize,
    pub xdp_mode: AttachMode,
    pub xsk_mode: XskModeArg,
    pub ring: u32,
    pub frames: usize,
    pub busy_poll_us: u32,
    pub duration: Option<Duration>,
    pub max: bool,
    pub flow_idle: Duration,
    pub json: bool,
    pub traffic: TrafficSpec,
    pub controller: Option<ControllerSpec>,
}

/// The most buffers a worker's UMEM holds (`--frames`).
const MAX_FRAMES: usize = 1 << 22;

impl Settings {
    /// `flags` over the file at `file` (if any) over the defaults, checked.
    pub fn resolve(flags: &Options, file: Option<&Path>) -> Result<Settings> {
        let below = match file {
            Some(p) => read_file(p)?,
            None => Options::default(),
        };
        Settings::from_options(flags.clone().over(below))
    }

    /// Merged options with the defaults filled in, checked.
    pub fn from_options(o: Options) -> Result<Settings> {
        if let Some(url) = &o.controller {
            linerate_agent::check_url(url, o.controller_ca.is_some())
                .map_err(|e| anyhow!("--controller: {e}"))?;
        }
        let controller = match o.controller {
            Some(url) => Some(ControllerSpec {
                url,
                node: o.node,
                token_file: o.token_file,
                ca: o.controller_ca,
                report_every: o.report_every.unwrap_or(Duration::from_secs(1)),
            }),
            None => {
                for (key, given) in [
                    ("node", o.node.is_some()),
                    ("token-file", o.token_file.is_some()),
                    ("controller-ca", o.controller_ca.is_some()),
                    ("report-every", o.report_every.is_some()),
                ] {
                    if given {
                        bail!("--{key}: only with --controller");
                    }
                }
                None
            }
        };
        let s = Settings {
            ports: o.port.unwrap_or_default(),
            workers: o.workers.unwrap_or(1),
            cores: o.cores.unwrap_or_default(),
            logic: LogicSpec {
                logic: o.logic.unwrap_or(LogicArg::Static),
                map: o.map.unwrap_or_default(),
                rewrite: o.rewrite.unwrap_or_default(),
                route: o.route.unwrap_or_default(),
                ttl: o.ttl.unwrap_or(false),
                filter: o.filter.unwrap_or_default(),
            },
            mapping: o.mapping.unwrap_or(MappingArg::Sequential),
            batch: o.batch.unwrap_or(64),
            xdp_mode: o.xdp_mode.unwrap_or(AttachMode::Auto),
            xsk_mode: o.xsk_mode.unwrap_or(XskModeArg::Auto),
            ring: o.ring.unwrap_or(2048),
            frames: o.frames.unwrap_or(16384),
            busy_poll_us: o.busy_poll_us.unwrap_or(0),
            duration: o.duration,
            max: o.max.unwrap_or(false),
            flow_idle: o.flow_idle.unwrap_or(Duration::from_secs(10)),
            json: o.json.unwrap_or(false),
            traffic: TrafficSpec {
                sched: o.sched.unwrap_or_default(),
                class: o.class.unwrap_or_default(),
                shape: o.shape.unwrap_or_default(),
                red: o.red.unwrap_or_default(),
                queue: o.queue.unwrap_or_default(),
            },
            controller,
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
        if let Some(c) = &self.controller {
            let l = &self.logic;
            if l.logic != LogicArg::Router && l.logic != LogicArg::Static
                || !l.route.is_empty()
                || !l.map.is_empty()
                || !l.rewrite.is_empty()
            {
                bail!(
                    "--controller {}: the controller owns the routes; drop --logic (other than \
                     router), --route, --map and --rewrite",
                    c.url
                );
            }
        }
        Ok(())
    }

    /// Settings that differ from `running` and only take effect at the next start.
    pub fn fixed_changes(&self, running: &Settings) -> Vec<&'static str> {
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
        diff(self.controller != running.controller, "controller");
        v
    }
}

/// Per-port traffic management, as given (`PORT=...` strings); built by [`port_traffic`].
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct TrafficSpec {
    pub sched: Vec<String>,
    pub class: Vec<String>,
    pub shape: Vec<String>,
    pub red: Vec<String>,
    pub queue: Vec<String>,
}

/// One port's traffic management, checked.
pub struct PortTraffic {
    pub discipline: Discipline,
    pub classifier: Classifier,
    pub policy: DropPolicy,
    pub limit: QueueLimit,
    /// Per worker: bit/s, burst bytes.
    pub shape: Option<(f64, u32)>,
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
pub fn port_traffic(
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
        // Not offered by `fwd` (its ports classify by rules only).
        Discipline::Wfq(n) => *n,
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
            let rate = parse_rate(rate.trim()).map_err(|e| anyhow!("--shape: {e}"))?;
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

/// The switching logic `a` describes, for ports `ports` (interface names).
pub fn build_logic(a: &LogicSpec, ports: &[String]) -> Result<AnyLogic> {
    let n = ports.len();
    let mac = |p: usize| mac_of("--port", &ports[p]).map_err(anyhow::Error::msg);
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
                let (p, m) = r
                    .split_once('=')
                    .with_context(|| format!("--rewrite: '{r}' is not PORT=MAC"))?;
                let p = port_no(p, "--rewrite", n)?;
                let dst = parse_mac(m).map_err(|e| anyhow!("--rewrite: {e}"))?;
                map.set_rewrite(
                    p,
                    Some(MacRewrite {
                        dst,
                        src: mac(p as usize)?,
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
            // The flags become the configuration a controller would send, so routes are
            // grouped into multipath groups in one place (`node::logic_from`).
            let mut config = proto::Config::default();
            for (i, r) in a.route.iter().enumerate() {
                let route = parse_route(r, i as u64, ports)?;
                config.routes.insert(route.id, route);
            }
            let macs = (0..n).map(mac).collect::<Result<Vec<_>>>()?;
            let (logic, problems) = logic_from(&config, ports, &macs, false);
            if let Some(p) = problems.first() {
                bail!("--route: {p}");
            }
            logic
        }
    };
    if let Some(acl) = acl_from(&a.filter)? {
        logic = logic.with_acl(acl);
    }
    Ok(logic.with_ttl_decrement(a.ttl))
}

/// One `--route PREFIX/LEN=PORT,NEXTHOP_MAC[,WEIGHT]` as route `id`.
fn parse_route(r: &str, id: u64, ports: &[String]) -> Result<proto::Route> {
    let bad = || format!("--route: '{r}' is not PREFIX/LEN=PORT,NEXTHOP_MAC[,WEIGHT]");
    let (prefix, via) = r.split_once('=').with_context(bad)?;
    let (addr, len) = prefix.split_once('/').with_context(bad)?;
    let addr: std::net::IpAddr = addr.trim().parse().with_context(bad)?;
    let len: u8 = len.trim().parse().with_context(bad)?;
    let prefix = proto::Prefix::new(addr, len).map_err(|e| anyhow!("--route {r}: {e}"))?;
    let mut via = via.split(',');
    let port = port_no(via.next().with_context(bad)?, "--route", ports.len())?;
    let next_hop =
        parse_mac(via.next().with_context(bad)?.trim()).map_err(|e| anyhow!("--route: {e}"))?;
    let weight: u32 = match via.next() {
        None => 1,
        Some(w) => w
            .trim()
            .parse()
            .ok()
            .filter(|&w| w > 0)
            .with_context(|| format!("--route {r}: weight '{w}' must be a positive number"))?,
    };
    if via.next().is_some() {
        bail!("{}", bad());
    }
    Ok(proto::Route {
        id,
        prefix,
        port: ports[port as usize].clone(),
        next_hop: proto::Mac(next_hop),
        weight,
    })
}

/// The `--filter` rules as an ACL (first match wins, default permit), if there are any.
pub fn acl_from(filter: &[String]) -> Result<Option<Acl>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        fwd: Options,
    }

    fn flags(list: &[&str]) -> Options {
        Cli::try_parse_from(std::iter::once("fwd").chain(list.iter().copied()))
            .unwrap()
            .fwd
    }

    /// A file removed when dropped.
    struct File(PathBuf);
    impl File {
        fn new(text: &str) -> File {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "linerate-fwd-{}-{}.toml",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&p, text).unwrap();
            File(p)
        }
    }
    impl Drop for File {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn resolve(f: &File, list: &[&str]) -> Result<Settings> {
        Settings::resolve(&flags(list), Some(&f.0))
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let f = File::new(
            "port = [\"a\", \"b\", \"c\"]\nworkers = 1\nbatch = 32\nlogic = \"router\"\n\
             route = [\"10.0.0.0/8=1,02:00:00:00:00:01\"]\nmax = true\nflow-idle = \"3s\"\n",
        );
        let s = resolve(&f, &["--batch", "16"]).unwrap();
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
        let s = resolve(&f, &["--port", "x", "--port", "y"]).unwrap();
        assert_eq!(s.ports, ["x", "y"], "a list flag replaces the file's list");
    }

    #[test]
    fn a_flag_turns_a_files_boolean_off() {
        let f = File::new("port = [\"a\", \"b\"]\nmax = true\nttl = true\njson = true\n");
        let s = resolve(&f, &[]).unwrap();
        assert!(s.max && s.logic.ttl && s.json);
        let s = resolve(&f, &["--max=false", "--ttl=false", "--json=false"]).unwrap();
        assert!(!s.max && !s.logic.ttl && !s.json);
        let s = Settings::resolve(&flags(&["--port", "a", "--port", "b", "--max"]), None).unwrap();
        assert!(s.max, "a bare --max still turns it on");
    }

    #[test]
    fn the_controller_keys_live_in_the_file_too() {
        let f = File::new(
            "port = [\"a\", \"b\"]\ncontroller = \"ws://127.0.0.1:7878/\"\nnode = \"r1\"\n\
             token-file = \"/etc/linerate.token\"\nreport-every = \"250ms\"\n",
        );
        let s = resolve(&f, &[]).unwrap();
        let c = s.controller.unwrap();
        assert_eq!(c.url, "ws://127.0.0.1:7878/");
        assert_eq!(c.node.as_deref(), Some("r1"));
        assert_eq!(c.token_file, Some(PathBuf::from("/etc/linerate.token")));
        assert_eq!(c.report_every, Duration::from_millis(250));
        let e = Settings::resolve(
            &flags(&["--port", "a", "--port", "b", "--node", "r1"]),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--node: only with --controller"), "{e}");
    }

    #[test]
    fn file_errors_name_the_key() {
        let f = File::new("port = [\"a\", \"b\"]\nrings = 4096\n");
        let e = resolve(&f, &[]).unwrap_err().to_string();
        assert!(
            e.contains("rings") && e.contains(&f.0.display().to_string()),
            "{e}"
        );
        let f = File::new("port = [\"a\", \"b\"]\nbatch = \"many\"\n");
        let e = resolve(&f, &[]).unwrap_err().to_string();
        assert!(e.contains("line 2 `batch = \"many\"`"), "{e}");
        let f = File::new("port = [\"a\", \"b\"]\nflow-idle = \"soon\"\n");
        let e = format!("{:#}", resolve(&f, &[]).unwrap_err());
        assert!(e.contains("flow-idle"), "{e}");
        let f = File::new("port = [\"a\", \"b\"]\nlogic = \"hub\"\n");
        let e = resolve(&f, &[]).unwrap_err().to_string();
        assert!(e.contains("hub"), "{e}");
        let e = Settings::resolve(&flags(&[]), Some(Path::new("/nonexistent/x.toml")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/x.toml"), "{e}");
    }

    #[test]
    fn checks_apply_to_file_values_too() {
        let f = File::new("port = [\"a\", \"b\"]\nring = 1000\n");
        let e = resolve(&f, &[]).unwrap_err().to_string();
        assert!(e.contains("--ring 1000"), "{e}");
        let f = File::new("port = [\"a\"]\n");
        let e = resolve(&f, &[]).unwrap_err().to_string();
        assert!(e.contains("at least two"), "{e}");
    }

    #[test]
    fn only_logic_changes_apply_on_reload() {
        let base = Settings::resolve(&flags(&["--port", "a", "--port", "b"]), None).unwrap();
        let mut other = base.clone();
        other.batch = 8;
        other.logic.ttl = true;
        other.max = true;
        assert_eq!(other.fixed_changes(&base), ["batch", "max"]);
    }

    #[test]
    fn routes_group_into_multipath_once() {
        let ports = vec!["lo".to_string(), "lo".to_string()];
        let r = parse_route("10.0.0.0/8=1,02:00:00:00:00:01,3", 0, &ports).unwrap();
        assert_eq!((r.port.as_str(), r.weight), ("lo", 3));
        for bad in [
            "10.0.0.0/33=1,02:00:00:00:00:01",
            "10.0.0.1/8=1,02:00:00:00:00:01",
            "10.0.0.0/8=2,02:00:00:00:00:01",
            "10.0.0.0/8=1,02:00:00:00:00:01,0",
            "10.0.0.0/8",
        ] {
            assert!(parse_route(bad, 0, &ports).is_err(), "{bad}");
        }
    }

    #[test]
    fn arbitrary_file_text_never_panics() {
        for text in [
            "",
            "port = [",
            "\u{0}\u{ffff}",
            "[[x]]\ny = 1",
            "ttl = \"yes\"",
            "é = 1",
        ] {
            let _ = parse_file(text);
        }
    }
}
