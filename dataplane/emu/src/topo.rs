//! The topology file (`linerate up topo.toml`) and the generators (`--topo linear,4`), as
//! values: [`Topology`] is what the user wrote, before addresses, routes and placement are
//! worked out (that is [`crate::plan`]).
//!
//! Reading a file never panics and never half-succeeds: an unknown key, a bad value, a link to
//! a missing node or a duplicate name is one [`TopoError`] naming the key, the node or the link
//! (and the line, for syntax), and nothing is built.

use linerate_proto::units::{at_line, parse_mac, parse_rate};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// One sentence saying what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TopoError(pub String);

fn err<T>(s: impl Into<String>) -> Result<T, TopoError> {
    Err(TopoError(s.into()))
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(default)]
    pub network: NetworkSection,
    /// Link settings every link starts from (a link's own keys win).
    #[serde(default)]
    pub defaults: LinkSpec,
    #[serde(default)]
    pub nodes: Vec<NodeSpec>,
    #[serde(default)]
    pub links: Vec<LinkSpec>,
    #[serde(default)]
    pub routing: RoutingSection,
    /// Paths pinned by the user.
    #[serde(default)]
    pub routes: Vec<PinnedRoute>,
    /// Synthetic flows started once the network is up.
    #[serde(default)]
    pub flows: Vec<crate::flows::FlowToml>,
    /// Several hosts: which emulator builds which nodes.
    pub placement: Option<PlacementSection>,
}

/// `[placement]`: the hosts an emulation spans, each emulator's tunnel address, and how nodes
/// are spread over them (a node's `host =` key pins it).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementSection {
    pub hosts: PlacementHosts,
    #[serde(default)]
    pub mode: PlacementMode,
}

/// Which hosts, and where their tunnels are.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PlacementHosts {
    /// `{ a = "10.9.0.1:7100" }`: every host's tunnel written here.
    Addresses(std::collections::BTreeMap<String, String>),
    /// `["a", "b"]`: each host's emulator registers its tunnel with the controller's database
    /// (`up --database URL --tunnel ADDR`); the controller places the topology once they all
    /// have (`linerate controller --emulation FILE`).
    Registered(Vec<String>),
    /// `2`: the first this many emulators to register, whatever their names.
    Count(usize),
}

impl PlacementHosts {
    /// Whether the hosts register their tunnels (and the controller places the emulation).
    pub fn registered(&self) -> bool {
        !matches!(self, PlacementHosts::Addresses(_))
    }
}

impl Default for PlacementHosts {
    fn default() -> Self {
        PlacementHosts::Addresses(Default::default())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementMode {
    /// Contiguous blocks of a breadth-first walk: neighbours stay together, few links cut.
    #[default]
    Block,
    /// Node i on host i mod hosts.
    RoundRobin,
    /// Every node's own `host =` key.
    Key,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// The emulation's name: namespaces are `<name>-<node>`. Default: the file's stem.
    pub name: Option<String>,
    /// Where automatic addresses come from (default 10.0.0.0/8).
    pub subnet: Option<String>,
}

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A network namespace where applications run, one kernel interface per link.
    Host,
    /// An IP router: forwarded by the emulator (`forward = "linerate"`, the default) or by its
    /// own namespace's kernel (`forward = "kernel"`).
    Router,
    /// A learning bridge inside the emulator.
    Switch,
    /// A host that exists only inside the emulator (no namespace, no process): it answers
    /// ARP and ping for its address; its traffic comes from synthetic flows. `up --compact`
    /// makes a generated topology's hosts virtual.
    Virtual,
}

impl Kind {
    /// A host, in a namespace or virtual.
    pub fn is_host(self) -> bool {
        matches!(self, Kind::Host | Kind::Virtual)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forward {
    #[default]
    Linerate,
    Kernel,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    pub kind: Kind,
    #[serde(default)]
    pub forward: Forward,
    /// `eth0`'s address, `A.B.C.D/LEN`.
    pub ip: Option<String>,
    /// Addresses by interface: `{ eth1 = "10.0.2.1/24" }`.
    #[serde(default)]
    pub addresses: HashMap<String, String>,
    /// A host's default gateway (default: the first router on its `eth0` segment).
    pub gateway: Option<String>,
    /// Commands started inside the node once the network is up.
    #[serde(default)]
    pub run: Vec<String>,
    /// A switch's or router's MAC base is derived; a host interface's MAC can be given.
    #[serde(default)]
    pub macs: HashMap<String, String>,
    /// With `[placement]`: the host whose emulator builds this node.
    pub host: Option<String>,
}

/// A link's settings as written: every key optional, so defaults and per-direction overrides
/// layer (`a_to_b` and `b_to_a` over the link over `[defaults]`).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// `"h1:eth0"` or `"r1"` (its next free interface). Not in `[defaults]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub a: Option<String>,
    pub b: Option<String>,
    /// bit/s: `10M`, `1G`, `1500k`, or a number. Absent: as fast as the host goes.
    pub rate: Option<String>,
    /// `10ms`, `250us`, `0`.
    pub delay: Option<String>,
    pub jitter: Option<String>,
    /// With jitter, let packets overtake each other (default: order kept).
    pub reorder: Option<bool>,
    /// `1%`, or netem's Gilbert-Elliott form `gemodel P R 1-H 1-K` (percentages).
    pub loss: Option<String>,
    /// Queue bound: packets (`100`, `"100p"`), bytes (`"64KB"`), or both (`"100p,64KB"`).
    pub queue: Option<toml::Value>,
    /// `taildrop` or `red MIN,MAX,MAX_P,WEIGHT[,gentle]` (thresholds in packets).
    pub drop: Option<String>,
    /// `fcfs`, `wrr:W1,W2,...` or `drr:Q1,Q2,...`, with `classes` rules as in `fwd --class`;
    /// or `wfq[:N]`: per-flow fair queueing weighted by each flow's DSCP.
    pub sched: Option<String>,
    pub classes: Option<Vec<String>>,
    pub mtu: Option<u32>,
    pub up: Option<bool>,
    /// Shortest-path metric (default 1).
    pub cost: Option<u32>,
    /// Share of flows in weighted multipath (default 1).
    pub weight: Option<u32>,
    /// Per-direction overrides.
    pub a_to_b: Option<Box<LinkSpec>>,
    pub b_to_a: Option<Box<LinkSpec>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingMode {
    /// One shortest path per destination (fewest hops by `cost`, lowest name on ties).
    #[default]
    ShortestPath,
    /// Every equal-cost shortest path, flows spread evenly.
    Ecmp,
    /// Every equal-cost shortest path, flows spread by the links' `weight`.
    Weighted,
    /// Only the `static` routes.
    Static,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSection {
    #[serde(default)]
    pub mode: RoutingMode,
    /// Routes added in every mode: `{ node = "r1", prefix = "10.9.0.0/16", via = "r2" }`.
    #[serde(default, rename = "static")]
    pub static_routes: Vec<StaticRoute>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRoute {
    pub node: String,
    pub prefix: String,
    /// The neighbouring node packets go to.
    pub via: String,
    pub weight: Option<u32>,
}

/// A path pinned for some traffic: each router on it sends matching packets to the next node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedRoute {
    pub path: Vec<String>,
    /// Which packets: a rule as in `fwd --filter` without its action (`udp any any dport
    /// 5001`). Default: everything from the path's first node to its last.
    #[serde(rename = "match")]
    pub matcher: Option<String>,
}

/// Reads a topology from TOML text. Syntax errors name the line.
pub fn parse(text: &str) -> Result<Topology, TopoError> {
    toml::from_str(text)
        .map_err(|e| TopoError(at_line(text, e.span().map(|s| s.start), e.message())))
}

/// The settings of one link direction, resolved to numbers and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkParams {
    /// bit/s; `None`: not shaped.
    pub rate_bps: Option<u64>,
    pub delay_ns: u64,
    pub jitter_ns: u64,
    pub reorder: bool,
    pub loss: Loss,
    pub queue_packets: usize,
    pub queue_bytes: usize,
    pub drop: DropSpec,
    pub sched: SchedSpec,
    pub classes: Vec<String>,
    pub mtu: u32,
    pub up: bool,
}

/// The loss model of a link direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    None,
    /// Each packet lost with this probability.
    Random(f64),
    /// Gilbert-Elliott: P(good→bad) `p`, P(bad→good) `r`, loss in bad `1-h`, in good `1-k`
    /// (netem's `gemodel` parameters, as probabilities).
    GilbertElliott {
        p: f64,
        r: f64,
        bad_loss: f64,
        good_loss: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum DropSpec {
    TailDrop,
    Red {
        min: f64,
        max: f64,
        max_p: f64,
        weight: f64,
        gentle: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedSpec {
    Fcfs,
    Wrr(Vec<u32>),
    Drr(Vec<u32>),
    /// Per-flow queues (this many, flows hashed onto them) served by DRR in proportion to
    /// each flow's weight, its packets' DSCP (synthetic flows set it from their `weight`).
    Wfq(usize),
}

/// Queues of `sched = "wfq"` when not given.
pub const WFQ_QUEUES: usize = 64;

/// Largest settings a link takes: beyond these the numbers stop meaning anything on one host.
pub const MAX_DELAY_NS: u64 = 60_000_000_000;
pub const MIN_MTU: u32 = 68;
pub const MAX_MTU: u32 = 9000;
pub const DEFAULT_QUEUE_PACKETS: usize = 1000;
pub const MAX_QUEUE_PACKETS: usize = 1_000_000;

impl Default for LinkParams {
    fn default() -> Self {
        LinkParams {
            rate_bps: None,
            delay_ns: 0,
            jitter_ns: 0,
            reorder: false,
            loss: Loss::None,
            queue_packets: DEFAULT_QUEUE_PACKETS,
            queue_bytes: 64 << 20,
            drop: DropSpec::TailDrop,
            sched: SchedSpec::Fcfs,
            classes: Vec::new(),
            mtu: 1500,
            up: true,
        }
    }
}

/// `10ms`, `250us`, `1.5s`, `0`: a delay from 0 to 60 s.
pub fn parse_delay(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e6)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix("µs") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix("ns") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e9)
    } else if s == "0" {
        ("0", 1.0)
    } else {
        return Err(format!("'{s}' is not a delay like 10ms, 250us or 0"));
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a delay like 10ms, 250us or 0"))?;
    let ns = v * mult;
    if !ns.is_finite() || !(0.0..=MAX_DELAY_NS as f64).contains(&ns) {
        return Err(format!("delay '{s}' must be between 0 and 60s"));
    }
    Ok(ns.round() as u64)
}

/// `1%` or `0.01%`: a probability.
fn parse_percent(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let Some(n) = t.strip_suffix('%') else {
        return Err(format!("'{t}' is not a percentage like 1% or 0.5%"));
    };
    let v: f64 = n
        .trim()
        .parse()
        .map_err(|_| format!("'{t}' is not a percentage like 1% or 0.5%"))?;
    if !v.is_finite() || !(0.0..=100.0).contains(&v) {
        return Err(format!("'{t}' must be between 0% and 100%"));
    }
    Ok(v / 100.0)
}

/// `1%` (random) or `gemodel P R 1-H 1-K` (Gilbert-Elliott, netem's parameters).
pub fn parse_loss(s: &str) -> Result<Loss, String> {
    let t = s.trim();
    if let Some(rest) = t.strip_prefix("gemodel") {
        let v: Vec<&str> = rest.split([' ', ',']).filter(|x| !x.is_empty()).collect();
        if v.len() != 4 {
            return Err(format!(
                "'{t}': gemodel takes four percentages: P R 1-H 1-K (e.g. gemodel 1% 10% 70% 0.1%)"
            ));
        }
        let p = parse_percent(v[0])?;
        let r = parse_percent(v[1])?;
        if r == 0.0 && p > 0.0 {
            return Err(format!("'{t}': R 0% would never leave the bad state"));
        }
        return Ok(Loss::GilbertElliott {
            p,
            r,
            bad_loss: parse_percent(v[2])?,
            good_loss: parse_percent(v[3])?,
        });
    }
    let p = parse_percent(t)?;
    Ok(if p == 0.0 {
        Loss::None
    } else {
        Loss::Random(p)
    })
}

/// `100`, `"100p"`, `"64KB"`, `"1MB"`, `"100p,64KB"`: (packets, bytes), either optional.
fn parse_queue(v: &toml::Value) -> Result<(Option<usize>, Option<usize>), String> {
    let text = match v {
        toml::Value::Integer(n) => format!("{n}p"),
        toml::Value::String(s) => s.clone(),
        other => {
            return Err(format!(
                "'{other}' is not a queue size like 100, \"100p\" or \"64KB\""
            ));
        }
    };
    let (mut packets, mut bytes) = (None, None);
    for part in text.split(',') {
        let p = part.trim();
        let bad = || format!("'{p}' is not a queue size like 100p, 64KB or 1MB");
        let (num, mult, is_bytes) = if let Some(n) = p.strip_suffix('p') {
            (n, 1, false)
        } else if let Some(n) = p.strip_suffix("KB") {
            (n, 1 << 10, true)
        } else if let Some(n) = p.strip_suffix("MB") {
            (n, 1 << 20, true)
        } else if let Some(n) = p.strip_suffix('B') {
            (n, 1, true)
        } else {
            (p, 1, false)
        };
        let n: usize = num.trim().parse().map_err(|_| bad())?;
        let n = n.checked_mul(mult).ok_or_else(bad)?;
        if is_bytes {
            bytes = Some(n);
        } else {
            packets = Some(n);
        }
    }
    Ok((packets, bytes))
}

fn parse_sched(s: &str) -> Result<SchedSpec, String> {
    let t = s.trim();
    let nums = |w: &str| -> Result<Vec<u32>, String> {
        w.split(',')
            .map(|x| {
                x.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("'{x}' in '{t}' is not a positive number"))
            })
            .collect()
    };
    match t.split_once(':') {
        None if t == "fcfs" => Ok(SchedSpec::Fcfs),
        None if t == "wfq" => Ok(SchedSpec::Wfq(WFQ_QUEUES)),
        Some(("wfq", n)) => match n.trim().parse::<usize>() {
            Ok(n) if (1..=4096).contains(&n) => Ok(SchedSpec::Wfq(n)),
            _ => Err(format!("'{t}': wfq:N takes 1 to 4096 queues")),
        },
        Some(("wrr", w)) => Ok(SchedSpec::Wrr(nums(w)?)),
        Some(("drr", q)) => Ok(SchedSpec::Drr(nums(q)?)),
        _ => Err(format!(
            "'{t}' is not fcfs, wrr:W1,W2,..., drr:Q1,Q2,... or wfq[:N]"
        )),
    }
}

fn parse_drop(s: &str) -> Result<DropSpec, String> {
    let t = s.trim();
    if t == "taildrop" {
        return Ok(DropSpec::TailDrop);
    }
    let Some(rest) = t.strip_prefix("red") else {
        return Err(format!(
            "'{t}' is not taildrop or red MIN,MAX,MAX_P,WEIGHT[,gentle]"
        ));
    };
    let parts: Vec<&str> = rest.split(',').map(str::trim).collect();
    let num = |i: usize| -> Result<f64, String> {
        parts
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("'{t}' is not red MIN,MAX,MAX_P,WEIGHT[,gentle]"))
    };
    let gentle = match parts.get(4) {
        None => false,
        Some(&"gentle") => true,
        Some(other) => {
            return Err(format!(
                "'{t}': the fifth field can only be 'gentle', not '{other}'"
            ));
        }
    };
    let d = DropSpec::Red {
        min: num(0)?,
        max: num(1)?,
        max_p: num(2)?,
        weight: num(3)?,
        gentle,
    };
    if let DropSpec::Red {
        min,
        max,
        max_p,
        weight,
        gentle,
    } = &d
    {
        linerate_dataplane::sched::Red::new(*min, *max, *max_p, *weight, *gentle, 1)
            .map_err(|e| format!("'{t}': {e}"))?;
    }
    Ok(d)
}

impl LinkSpec {
    /// `self`'s keys over `below`'s (the endpoints and the per-direction tables are not merged).
    pub fn over(&self, below: &LinkSpec) -> LinkSpec {
        LinkSpec {
            a: None,
            b: None,
            rate: self.rate.clone().or_else(|| below.rate.clone()),
            delay: self.delay.clone().or_else(|| below.delay.clone()),
            jitter: self.jitter.clone().or_else(|| below.jitter.clone()),
            reorder: self.reorder.or(below.reorder),
            loss: self.loss.clone().or_else(|| below.loss.clone()),
            queue: self.queue.clone().or_else(|| below.queue.clone()),
            drop: self.drop.clone().or_else(|| below.drop.clone()),
            sched: self.sched.clone().or_else(|| below.sched.clone()),
            classes: self.classes.clone().or_else(|| below.classes.clone()),
            mtu: self.mtu.or(below.mtu),
            up: self.up.or(below.up),
            cost: self.cost.or(below.cost),
            weight: self.weight.or(below.weight),
            a_to_b: None,
            b_to_a: None,
        }
    }

    /// Numbers and checks; `what` names the link in errors (`link h1:eth0 - r1:eth0`).
    pub fn resolve(&self, what: &str) -> Result<LinkParams, TopoError> {
        let e = |key: &str, m: String| TopoError(format!("{what}: {key}: {m}"));
        let mut p = LinkParams::default();
        if let Some(r) = &self.rate {
            p.rate_bps = Some(parse_rate(r).map_err(|m| e("rate", m))? as u64);
        }
        if let Some(d) = &self.delay {
            p.delay_ns = parse_delay(d).map_err(|m| e("delay", m))?;
        }
        if let Some(j) = &self.jitter {
            p.jitter_ns = parse_delay(j).map_err(|m| e("jitter", m))?;
            if p.jitter_ns > p.delay_ns {
                return Err(e(
                    "jitter",
                    format!(
                        "{j} is more than the delay ({}): a packet cannot arrive before it is sent",
                        self.delay.as_deref().unwrap_or("0")
                    ),
                ));
            }
        }
        p.reorder = self.reorder.unwrap_or(false);
        if let Some(l) = &self.loss {
            p.loss = parse_loss(l).map_err(|m| e("loss", m))?;
        }
        if let Some(q) = &self.queue {
            let (packets, bytes) = parse_queue(q).map_err(|m| e("queue", m))?;
            if let Some(n) = packets {
                if !(1..=MAX_QUEUE_PACKETS).contains(&n) {
                    return Err(e(
                        "queue",
                        format!("{n} packets: must be between 1 and {MAX_QUEUE_PACKETS}"),
                    ));
                }
                p.queue_packets = n;
            }
            if let Some(b) = bytes {
                if !(1500..=(1usize << 30)).contains(&b) {
                    return Err(e(
                        "queue",
                        format!("{b} bytes: must be between 1500 (one packet) and 1GB"),
                    ));
                }
                p.queue_bytes = b;
            }
        }
        if let Some(d) = &self.drop {
            p.drop = parse_drop(d).map_err(|m| e("drop", m))?;
        }
        if let Some(s) = &self.sched {
            p.sched = parse_sched(s).map_err(|m| e("sched", m))?;
        }
        let classes = match &p.sched {
            SchedSpec::Fcfs => 1,
            SchedSpec::Wrr(w) | SchedSpec::Drr(w) => w.len(),
            SchedSpec::Wfq(_) => {
                if self.classes.as_ref().is_some_and(|c| !c.is_empty()) {
                    return Err(e(
                        "classes",
                        "wfq queues by flow: it takes no class rules".into(),
                    ));
                }
                1
            }
        };
        if classes > 8 {
            return Err(e("sched", format!("{classes} classes: at most 8")));
        }
        if let Some(rules) = &self.classes {
            for r in rules {
                let rule: linerate_dataplane::sched::ClassRule =
                    r.parse().map_err(|m| e("classes", m))?;
                if rule.class >= classes {
                    return Err(e(
                        "classes",
                        format!(
                            "'{r}' names class {}; the scheduler has classes 0..{}",
                            rule.class,
                            classes - 1
                        ),
                    ));
                }
            }
            p.classes = rules.clone();
        }
        if let Some(m) = self.mtu {
            if !(MIN_MTU..=MAX_MTU).contains(&m) {
                return Err(e(
                    "mtu",
                    format!("{m}: must be between {MIN_MTU} and {MAX_MTU}"),
                ));
            }
            p.mtu = m;
        }
        p.up = self.up.unwrap_or(true);
        if self.cost == Some(0) {
            return Err(e("cost", "must be at least 1".into()));
        }
        if self.weight == Some(0) {
            return Err(e("weight", "must be at least 1".into()));
        }
        Ok(p)
    }

    /// The two directions' settings: `a_to_b` and `b_to_a` over the link over `defaults`.
    pub fn directions(
        &self,
        defaults: &LinkSpec,
        what: &str,
    ) -> Result<[LinkParams; 2], TopoError> {
        let base = self.over(defaults);
        let dir = |d: &Option<Box<LinkSpec>>, name: &str| match d {
            Some(d) => {
                if d.a.is_some() || d.b.is_some() || d.a_to_b.is_some() || d.b_to_a.is_some() {
                    return err(format!("{what}: {name}: only link settings go here"));
                }
                d.over(&base).resolve(&format!("{what} ({name})"))
            }
            None => base.resolve(what),
        };
        Ok([dir(&self.a_to_b, "a_to_b")?, dir(&self.b_to_a, "b_to_a")?])
    }
}

/// A node name: what namespaces, interfaces and `/etc/hosts` will carry.
pub fn check_name(name: &str, what: &str) -> Result<(), TopoError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.as_bytes()[0].is_ascii_alphabetic()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        err(format!(
            "{what} '{name}': a name is 1 to 32 letters, digits, '-' or '_', starting with a letter"
        ))
    }
}

/// `A.B.C.D/LEN`.
pub fn parse_cidr(s: &str, what: &str) -> Result<(Ipv4Addr, u8), TopoError> {
    let bad = || {
        TopoError(format!(
            "{what}: '{s}' is not an IPv4 address with a length like 10.0.0.1/24"
        ))
    };
    let (a, l) = s.trim().split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
    let len: u8 = l.parse().map_err(|_| bad())?;
    if !(1..=31).contains(&len) {
        return err(format!(
            "{what}: '{s}': the length must be between 1 and 31"
        ));
    }
    Ok((addr, len))
}

/// A MAC given by the user for an interface.
pub fn parse_user_mac(s: &str, what: &str) -> Result<[u8; 6], TopoError> {
    let m = parse_mac(s.trim()).map_err(|e| TopoError(format!("{what}: {e}")))?;
    if m[0] & 1 == 1 {
        return err(format!("{what}: {s} is a multicast address"));
    }
    Ok(m)
}

/// Generators, as `mn --topo` has them: routers joined in a shape, each with hosts.
pub mod generate {
    use super::*;

    /// The link settings `--link rate=10M,delay=1ms,loss=1%` gives every generated link.
    pub fn link_defaults(spec: &str) -> Result<LinkSpec, TopoError> {
        let mut l = LinkSpec::default();
        for kv in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| TopoError(format!("--link: '{kv}' is not KEY=VALUE")))?;
            let v = v.trim().to_string();
            match k.trim() {
                "rate" => l.rate = Some(v),
                "delay" => l.delay = Some(v),
                "jitter" => l.jitter = Some(v),
                "loss" => l.loss = Some(v),
                "queue" => l.queue = Some(toml::Value::String(v)),
                "mtu" => {
                    l.mtu = Some(
                        v.parse()
                            .map_err(|_| TopoError(format!("--link: mtu '{v}' is not a number")))?,
                    )
                }
                other => {
                    return err(format!(
                        "--link: unknown key '{other}' (rate, delay, jitter, loss, queue, mtu)"
                    ));
                }
            }
        }
        // Checked now, so a bad value is reported against the flag.
        l.resolve("--link")?;
        Ok(l)
    }

    fn node(name: String, kind: Kind) -> NodeSpec {
        NodeSpec {
            name,
            kind,
            forward: Forward::Linerate,
            ip: None,
            addresses: HashMap::new(),
            gateway: None,
            run: Vec::new(),
            macs: HashMap::new(),
            host: None,
        }
    }

    fn link(a: &str, b: &str) -> LinkSpec {
        LinkSpec {
            a: Some(a.to_string()),
            b: Some(b.to_string()),
            ..LinkSpec::default()
        }
    }

    fn nums(spec: &str, want: usize, usage: &str) -> Result<Vec<usize>, TopoError> {
        let v: Vec<usize> = spec
            .split(',')
            .skip(1)
            .map(|x| x.trim().parse().ok().filter(|&n| n > 0))
            .collect::<Option<_>>()
            .ok_or_else(|| TopoError(format!("--topo {spec}: {usage}")))?;
        if v.len() != want {
            return err(format!("--topo {spec}: {usage}"));
        }
        Ok(v)
    }

    /// The most nodes a generator makes (the emulator's limit with namespaces is lower; the
    /// plan checks that).
    pub const MAX_NODES: usize = 1_000_000;

    /// `linear,N`, `ring,N`, `mesh,N`, `tree,DEPTH,FANOUT`, `fat-tree,K`, `torus,X,Y`.
    pub fn generate(spec: &str, defaults: LinkSpec) -> Result<Topology, TopoError> {
        let kind = spec.split(',').next().unwrap_or("").trim();
        let mut nodes: Vec<NodeSpec> = Vec::new();
        let mut links: Vec<LinkSpec> = Vec::new();
        let mut hosts = 0usize;
        let mut host_on = |nodes: &mut Vec<NodeSpec>, links: &mut Vec<LinkSpec>, r: &str| {
            hosts += 1;
            let h = format!("h{hosts}");
            nodes.push(node(h.clone(), Kind::Host));
            links.push(link(&h, r));
        };
        let router = |nodes: &mut Vec<NodeSpec>, i: usize| {
            let r = format!("r{i}");
            nodes.push(node(r.clone(), Kind::Router));
            r
        };
        let check = |n: usize| {
            if n > MAX_NODES {
                err(format!("--topo {spec}: {n} nodes, more than {MAX_NODES}"))
            } else {
                Ok(())
            }
        };
        match kind {
            "linear" | "ring" | "mesh" => {
                let n = nums(spec, 1, &format!("give {kind},N with N at least 1"))?[0];
                check(2 * n)?;
                if kind == "ring" && n < 3 {
                    return err(format!("--topo {spec}: a ring needs at least 3 routers"));
                }
                let rs: Vec<String> = (1..=n).map(|i| router(&mut nodes, i)).collect();
                match kind {
                    "linear" => {
                        for w in rs.windows(2) {
                            links.push(link(&w[0], &w[1]));
                        }
                    }
                    "ring" => {
                        for i in 0..n {
                            links.push(link(&rs[i], &rs[(i + 1) % n]));
                        }
                    }
                    _ => {
                        check(n * (n - 1) / 2)?;
                        for i in 0..n {
                            for j in i + 1..n {
                                links.push(link(&rs[i], &rs[j]));
                            }
                        }
                    }
                }
                for r in &rs {
                    host_on(&mut nodes, &mut links, r);
                }
            }
            "tree" => {
                let v = nums(spec, 2, "give tree,DEPTH,FANOUT with both at least 1")?;
                let (depth, fanout) = (v[0], v[1]);
                let leaves = fanout.checked_pow(depth as u32).unwrap_or(usize::MAX);
                check(leaves.saturating_mul(2))?;
                // Level by level: routers r1.., hosts under the last level.
                let mut level = vec![router(&mut nodes, 1)];
                let mut next_id = 2;
                for _ in 1..depth {
                    let mut below = Vec::new();
                    for parent in &level {
                        for _ in 0..fanout {
                            let r = router(&mut nodes, next_id);
                            next_id += 1;
                            links.push(link(parent, &r));
                            below.push(r);
                        }
                    }
                    level = below;
                }
                for r in &level {
                    for _ in 0..fanout {
                        host_on(&mut nodes, &mut links, r);
                    }
                }
            }
            "fat-tree" => {
                let k = nums(spec, 1, "give fat-tree,K with K even and at least 2")?[0];
                if k % 2 != 0 {
                    return err(format!("--topo {spec}: K must be even"));
                }
                check(k * k * k / 4 + 5 * k * k / 4)?;
                let half = k / 2;
                let mut id = 0;
                let mut next = |nodes: &mut Vec<NodeSpec>| {
                    id += 1;
                    router(nodes, id)
                };
                let core: Vec<String> = (0..half * half).map(|_| next(&mut nodes)).collect();
                for _pod in 0..k {
                    let aggs: Vec<String> = (0..half).map(|_| next(&mut nodes)).collect();
                    let edges: Vec<String> = (0..half).map(|_| next(&mut nodes)).collect();
                    for (i, a) in aggs.iter().enumerate() {
                        for c in &core[i * half..(i + 1) * half] {
                            links.push(link(a, c));
                        }
                        for e in &edges {
                            links.push(link(e, a));
                        }
                    }
                    for e in &edges {
                        for _ in 0..half {
                            host_on(&mut nodes, &mut links, e);
                        }
                    }
                }
            }
            "torus" => {
                let v = nums(spec, 2, "give torus,X,Y with both at least 3")?;
                let (x, y) = (v[0], v[1]);
                if x < 3 || y < 3 {
                    return err(format!(
                        "--topo {spec}: a torus needs X and Y of at least 3"
                    ));
                }
                check(2 * x * y)?;
                let rs: Vec<String> = (1..=x * y).map(|i| router(&mut nodes, i)).collect();
                for i in 0..x {
                    for j in 0..y {
                        let here = &rs[i * y + j];
                        links.push(link(here, &rs[i * y + (j + 1) % y]));
                        links.push(link(here, &rs[((i + 1) % x) * y + j]));
                    }
                }
                for r in &rs {
                    host_on(&mut nodes, &mut links, r);
                }
            }
            _ => {
                return err(format!(
                    "--topo {spec}: unknown shape '{kind}' (linear,N ring,N mesh,N tree,DEPTH,FANOUT \
                     fat-tree,K torus,X,Y)"
                ));
            }
        }
        Ok(Topology {
            network: NetworkSection::default(),
            defaults,
            nodes,
            links,
            routing: RoutingSection::default(),
            routes: Vec::new(),
            flows: Vec::new(),
            placement: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::generate::{generate, link_defaults};
    use super::*;

    #[test]
    fn a_file_with_every_key_parses() {
        let t = parse(
            r#"
            [network]
            name = "lab"
            subnet = "10.0.0.0/8"
            [defaults]
            rate = "100M"
            delay = "1ms"
            [[nodes]]
            name = "h1"
            kind = "host"
            ip = "10.0.1.2/24"
            run = ["iperf3 -s -D"]
            [[nodes]]
            name = "r1"
            kind = "router"
            forward = "kernel"
            [[links]]
            a = "h1:eth0"
            b = "r1"
            rate = "50M"
            delay = "10ms"
            jitter = "1ms"
            loss = "gemodel 1% 10% 70% 0.1%"
            queue = "100p,64KB"
            drop = "red 20,80,0.1,0.002,gentle"
            sched = "wrr:3,1"
            classes = ["class 1 udp any any dport 5001"]
            mtu = 1400
            [links.b_to_a]
            rate = "10M"
            [routing]
            mode = "ecmp"
            static = [{ node = "r1", prefix = "10.9.0.0/16", via = "h1" }]
            [[routes]]
            path = ["h1", "r1"]
            match = "udp any any dport 5001"
            "#,
        )
        .unwrap();
        assert_eq!(t.nodes.len(), 2);
        let [ab, ba] = t.links[0].directions(&t.defaults, "link").unwrap();
        assert_eq!(ab.rate_bps, Some(50_000_000));
        assert_eq!(ba.rate_bps, Some(10_000_000), "b_to_a wins");
        assert_eq!(
            ba.delay_ns, 10_000_000,
            "the link's key under the direction's"
        );
        assert_eq!((ab.queue_packets, ab.queue_bytes), (100, 64 << 10));
        assert!(matches!(ab.loss, Loss::GilbertElliott { .. }));
        assert_eq!(ab.sched, SchedSpec::Wrr(vec![3, 1]));
        assert_eq!(t.routing.mode, RoutingMode::Ecmp);
    }

    #[test]
    fn errors_name_the_key_and_the_line() {
        let e = parse("[[nodes]]\nname = \"h1\"\nkind = \"host\"\ncolour = \"red\"\n").unwrap_err();
        assert!(e.0.contains("line 4") && e.0.contains("colour"), "{e}");
        let e = parse("[[nodes]]\nname = \"h1\"\nkind = \"toaster\"\n").unwrap_err();
        assert!(e.0.contains("toaster"), "{e}");
        for (spec, want) in [
            (r#"rate = "fast""#, "rate"),
            (r#"rate = "1e300G""#, "rate"),
            (r#"delay = "-1ms""#, "delay"),
            (r#"delay = "2h""#, "delay"),
            (
                r#"delay = "1ms"
jitter = "2ms""#,
                "jitter",
            ),
            (r#"loss = "101%""#, "loss"),
            (r#"loss = "0.5""#, "loss"),
            (r#"loss = "gemodel 1%""#, "gemodel"),
            (r#"queue = "lots""#, "queue"),
            (r#"queue = 0"#, "queue"),
            (r#"drop = "red 80,20,0.1,0.002""#, "drop"),
            (r#"sched = "wrr:0""#, "sched"),
            (r#"sched = "lifo""#, "sched"),
            (r#"classes = ["class 3"]"#, "classes"),
            (r#"mtu = 10"#, "mtu"),
            (r#"cost = 0"#, "cost"),
        ] {
            let t = parse(&format!("[[links]]\na = \"x\"\nb = \"y\"\n{spec}\n")).unwrap();
            let e = t.links[0]
                .directions(&t.defaults, "link x - y")
                .unwrap_err();
            assert!(
                e.0.contains("link x - y") && e.0.contains(want),
                "{spec}: {e}"
            );
        }
    }

    #[test]
    fn units() {
        assert_eq!(parse_delay("10ms"), Ok(10_000_000));
        assert_eq!(parse_delay("250us"), Ok(250_000));
        assert_eq!(parse_delay("0"), Ok(0));
        assert_eq!(parse_delay("1.5s"), Ok(1_500_000_000));
        assert!(parse_delay("10").is_err());
        assert_eq!(parse_loss("1%"), Ok(Loss::Random(0.01)));
        assert_eq!(parse_loss("0%"), Ok(Loss::None));
        assert!(parse_loss("gemodel 1% 0% 70% 0%").is_err());
    }

    #[test]
    fn generators_make_the_shapes_mininet_users_know() {
        let d = link_defaults("rate=10M,delay=1ms").unwrap();
        let count = |t: &Topology, k: Kind| t.nodes.iter().filter(|n| n.kind == k).count();
        let t = generate("linear,4", d.clone()).unwrap();
        assert_eq!(
            (
                count(&t, Kind::Router),
                count(&t, Kind::Host),
                t.links.len()
            ),
            (4, 4, 7)
        );
        let t = generate("ring,5", d.clone()).unwrap();
        assert_eq!((count(&t, Kind::Router), t.links.len()), (5, 10));
        let t = generate("mesh,4", d.clone()).unwrap();
        assert_eq!(t.links.len(), 6 + 4);
        let t = generate("tree,2,3", d.clone()).unwrap();
        assert_eq!((count(&t, Kind::Router), count(&t, Kind::Host)), (4, 9));
        let t = generate("fat-tree,4", d.clone()).unwrap();
        assert_eq!((count(&t, Kind::Router), count(&t, Kind::Host)), (20, 16));
        assert_eq!(t.links.len(), 16 + 16 + 16, "core-agg, agg-edge, edge-host");
        let t = generate("torus,3,4", d.clone()).unwrap();
        assert_eq!((count(&t, Kind::Router), t.links.len()), (12, 24 + 12));
        assert_eq!(t.defaults.rate.as_deref(), Some("10M"));
        for bad in [
            "linear",
            "linear,0",
            "ring,2",
            "tree,2",
            "fat-tree,3",
            "torus,2,2",
            "blob,3",
        ] {
            assert!(generate(bad, d.clone()).is_err(), "{bad}");
        }
        assert!(link_defaults("rate=fast").is_err());
        assert!(link_defaults("colour=red").is_err());
    }

    #[test]
    fn arbitrary_text_never_panics() {
        for text in [
            "",
            "[[links]]\nqueue = 1.5",
            "\u{0}",
            "[[nodes]]\nname = 3",
            "é",
        ] {
            if let Ok(t) = parse(text) {
                for l in &t.links {
                    let _ = l.directions(&t.defaults, "l");
                }
            }
        }
    }
}
