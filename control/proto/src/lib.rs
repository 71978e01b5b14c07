//! The control protocol: typed messages between the controller and node agents, and their
//! encoding in WebSocket binary frames.
//!
//! A frame is `"LR"`, the protocol version (`u16`, little-endian), then one message in postcard.
//! The version sits outside the postcard body so that a peer speaking another version is told
//! so in one clear refusal instead of "malformed". Frames are untrusted in both directions:
//! [`decode`] checks size, magic, version, trailing bytes and the meaning of every field
//! ([`Validate`]) and never panics; it has a fuzz target (`control/fuzz`).
//!
//! Configuration is keyed by id (routes, flows) or port name (port settings), so a change is a
//! whole new row or a removal: applying one twice is harmless, which is what lets the controller
//! replay changes that raced with a full load.

pub mod lograte;
pub mod units;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// The protocol version this build speaks.
pub const VERSION: u16 = 2;
/// The first two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"LR";
/// Magic and version.
pub const HEADER_LEN: usize = 4;
/// The largest frame [`decode`] accepts: a node's whole configuration must fit (32,768 IPv6
/// routes take about 1.5 MiB; an emulation of 100,000 nodes sends 222,220 link rows, about
/// 13 MiB).
pub const MAX_FRAME: usize = 64 << 20;
/// The largest frame a controller takes from a node (a hello, a metrics report).
pub const MAX_NODE_FRAME: usize = 1 << 20;
/// Counters one metrics report may carry.
pub const MAX_COUNTERS: usize = 256;
/// The longest name (node id, port name, counter name) a message may carry.
pub const MAX_NAME: usize = 64;

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("frame of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    Short { len: usize },
    #[error("frame of {len} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge { len: usize },
    #[error("frame does not start with the linerate magic \"LR\"")]
    BadMagic,
    #[error("peer speaks protocol version {theirs}, this build speaks version {ours}")]
    Version { theirs: u16, ours: u16 },
    #[error("frame body is not a valid message")]
    Malformed,
    #[error("message field {field} is invalid: {why}")]
    Invalid {
        field: &'static str,
        why: &'static str,
    },
}

/// An IPv4 or IPv6 prefix: host bits beyond `len` are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// A prefix, refused when `len` is too long for the family or host bits are set.
    pub fn new(addr: IpAddr, len: u8) -> Result<Prefix, ProtoError> {
        let p = Prefix { addr, len };
        p.validate()?;
        Ok(p)
    }

    fn max_len(&self) -> u8 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Prefix, String> {
        let (a, l) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("'{a}' is not an IP address"))?;
        let len = if l.is_empty() {
            if addr.is_ipv4() { 32 } else { 128 }
        } else {
            l.parse()
                .map_err(|_| format!("'{l}' is not a prefix length"))?
        };
        Prefix::new(addr, len).map_err(|e| format!("'{s}': {e}"))
    }
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Mac, String> {
        let mut m = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for b in &mut m {
            let p = parts
                .next()
                .ok_or_else(|| format!("'{s}' is not a MAC address"))?;
            *b = u8::from_str_radix(p, 16).map_err(|_| format!("'{s}' is not a MAC address"))?;
        }
        if parts.next().is_some() {
            return Err(format!("'{s}' is not a MAC address"));
        }
        Ok(Mac(m))
    }
}

/// Traffic for `prefix` leaves through `port` towards `next_hop`. Several routes for one prefix
/// form a multipath group, weighted by `weight`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub id: u64,
    pub prefix: Prefix,
    /// The node's interface name.
    pub port: String,
    pub next_hop: Mac,
    pub weight: u32,
}

/// Which packets a flow rule takes; an absent field matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowMatch {
    pub src: Option<Prefix>,
    pub dst: Option<Prefix>,
    pub proto: Option<u8>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
}

/// Packets that match `matcher` follow route `route` whatever their destination's longest
/// prefix says. Rules are tried in ascending id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    pub id: u64,
    pub matcher: FlowMatch,
    pub route: u64,
}

/// How an output port picks the next frame among its classes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scheduler {
    Fcfs,
    /// Weighted round robin, one weight per class.
    Wrr(Vec<u32>),
    /// Deficit round robin, one quantum (bytes) per class.
    Drr(Vec<u32>),
}

/// A token bucket in front of an output port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shaper {
    pub rate_bps: u64,
    pub burst_bytes: u32,
}

/// The fastest rate a message may carry, in bit/s (10 Tbit/s): the dataplane's token buckets
/// take no more.
pub const MAX_RATE_BPS: u64 = 10_000_000_000_000;

/// One output port's traffic management and the rate of the link behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSettings {
    pub port: String,
    pub scheduler: Scheduler,
    pub shaper: Option<Shaper>,
    pub link_rate_bps: Option<u64>,
}

/// One direction of an emulated link, as the store holds it (an emulator applies it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkDir {
    pub id: u64,
    /// `node:interface` of the sending end and of the receiving end.
    pub from: String,
    pub to: String,
    /// bit/s; `None`: not shaped.
    pub rate_bps: Option<u64>,
    pub delay_us: u64,
    pub jitter_us: u64,
    /// Random loss in parts per million; `None`: the loss model the topology gave.
    pub loss_ppm: Option<u32>,
    /// Queue bound in packets; `None`: as the topology gave.
    pub queue_packets: Option<u32>,
    pub up: bool,
}

/// A route of an emulated router: traffic for `prefix` goes to neighbour `via`. Several for
/// one prefix spread flows by weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmuRoute {
    pub id: u64,
    /// The emulated router.
    pub router: String,
    pub prefix: Prefix,
    /// The neighbouring node packets go to.
    pub via: String,
    pub weight: u32,
    /// Only packets matching this rule (as in `fwd --filter` without its action, e.g.
    /// `udp any any dport 5001`): a per-flow route, tried before the prefix routes. The
    /// emulator parses it; a rule it cannot read is logged and the row ignored.
    pub matcher: Option<String>,
}

/// A synthetic flow of an emulation (a row of `emu_flows`): started when it arrives, stopped
/// when it goes. Lengths, rates and times in the row's units; the emulator checks the rest
/// (that `src` and `dst` are hosts, the combination of fields) and reports what it refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmuFlow {
    pub id: u64,
    /// Default: `row<id>`.
    pub name: Option<String>,
    pub src: String,
    pub dst: String,
    /// `tcp` or `udp`.
    pub proto: String,
    pub bytes: Option<u64>,
    pub duration_ms: Option<u64>,
    pub rate_bps: Option<u64>,
    pub weight: u32,
    /// Delay after the row arrives, ms.
    pub start_ms: u64,
    pub on_ms: Option<u64>,
    pub off_ms: Option<u64>,
    pub packet: Option<u32>,
    pub port: Option<u16>,
    pub cc: Option<String>,
}

impl EmuFlow {
    /// The name the emulation knows it by.
    pub fn flow_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("row{}", self.id))
    }
}

/// Longest rule an emulated route may carry.
pub const MAX_MATCHER: usize = 256;

/// Longest delay a link direction takes (60 s), µs.
pub const MAX_DELAY_US: u64 = 60_000_000;

/// A node's whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub routes: BTreeMap<u64, Route>,
    pub flows: BTreeMap<u64, Flow>,
    pub ports: BTreeMap<String, PortSettings>,
    /// An emulator's link directions, by id.
    pub links: BTreeMap<u64, LinkDir>,
    /// An emulator's routers' routes, by id.
    pub emu_routes: BTreeMap<u64, EmuRoute>,
    /// An emulator's synthetic flows, by id.
    #[serde(default)]
    pub emu_flows: BTreeMap<u64, EmuFlow>,
}

/// One row of configuration set or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    Route(Route),
    RouteGone(u64),
    Flow(Flow),
    FlowGone(u64),
    Port(PortSettings),
    PortGone(String),
    Link(LinkDir),
    LinkGone(u64),
    EmuRoute(EmuRoute),
    EmuRouteGone(u64),
    /// Boxed: a flow row is several times the size of the other changes.
    EmuFlow(Box<EmuFlow>),
    EmuFlowGone(u64),
}

impl Config {
    /// Applies `change`; true when the configuration changed.
    pub fn apply(&mut self, change: &Change) -> bool {
        match change {
            Change::Route(r) => self.routes.insert(r.id, r.clone()).as_ref() != Some(r),
            Change::RouteGone(id) => self.routes.remove(id).is_some(),
            Change::Flow(f) => self.flows.insert(f.id, f.clone()).as_ref() != Some(f),
            Change::FlowGone(id) => self.flows.remove(id).is_some(),
            Change::Port(p) => self.ports.insert(p.port.clone(), p.clone()).as_ref() != Some(p),
            Change::PortGone(port) => self.ports.remove(port).is_some(),
            Change::Link(l) => self.links.insert(l.id, l.clone()).as_ref() != Some(l),
            Change::LinkGone(id) => self.links.remove(id).is_some(),
            Change::EmuRoute(r) => self.emu_routes.insert(r.id, r.clone()).as_ref() != Some(r),
            Change::EmuRouteGone(id) => self.emu_routes.remove(id).is_some(),
            Change::EmuFlow(f) => self.emu_flows.insert(f.id, (**f).clone()).as_ref() != Some(&**f),
            Change::EmuFlowGone(id) => self.emu_flows.remove(id).is_some(),
        }
    }

    /// The changes that turn `self` into `new`: removals first, then new and changed rows.
    pub fn diff(&self, new: &Config) -> Vec<Change> {
        let mut out = Vec::new();
        out.extend(
            (self.routes.keys())
                .filter(|id| !new.routes.contains_key(id))
                .map(|&id| Change::RouteGone(id)),
        );
        out.extend(
            (self.flows.keys())
                .filter(|id| !new.flows.contains_key(id))
                .map(|&id| Change::FlowGone(id)),
        );
        out.extend(
            (self.ports.keys())
                .filter(|p| !new.ports.contains_key(*p))
                .map(|p| Change::PortGone(p.clone())),
        );
        out.extend(
            (new.routes.values())
                .filter(|r| self.routes.get(&r.id) != Some(r))
                .map(|r| Change::Route(r.clone())),
        );
        out.extend(
            (new.flows.values())
                .filter(|f| self.flows.get(&f.id) != Some(f))
                .map(|f| Change::Flow(f.clone())),
        );
        out.extend(
            (new.ports.values())
                .filter(|p| self.ports.get(&p.port) != Some(p))
                .map(|p| Change::Port(p.clone())),
        );
        out.extend(
            (self.links.keys())
                .filter(|id| !new.links.contains_key(id))
                .map(|&id| Change::LinkGone(id)),
        );
        out.extend(
            (self.emu_routes.keys())
                .filter(|id| !new.emu_routes.contains_key(id))
                .map(|&id| Change::EmuRouteGone(id)),
        );
        out.extend(
            (new.links.values())
                .filter(|l| self.links.get(&l.id) != Some(l))
                .map(|l| Change::Link(l.clone())),
        );
        out.extend(
            (new.emu_routes.values())
                .filter(|r| self.emu_routes.get(&r.id) != Some(r))
                .map(|r| Change::EmuRoute(r.clone())),
        );
        out.extend(
            (self.emu_flows.keys())
                .filter(|id| !new.emu_flows.contains_key(id))
                .map(|&id| Change::EmuFlowGone(id)),
        );
        out.extend(
            (new.emu_flows.values())
                .filter(|f| self.emu_flows.get(&f.id) != Some(f))
                .map(|f| Change::EmuFlow(Box::new(f.clone()))),
        );
        out
    }
}

/// What a node can apply; the controller sends only what a node can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Capability {
    Routes,
    Flows,
    Scheduler,
    Shaper,
    Metrics,
    /// An emulator: it takes link directions and emulated routers' routes.
    Emulation,
}

impl Capability {
    pub const ALL: [Capability; 6] = [
        Capability::Routes,
        Capability::Flows,
        Capability::Scheduler,
        Capability::Shaper,
        Capability::Metrics,
        Capability::Emulation,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Capability::Routes => "routes",
            Capability::Flows => "flows",
            Capability::Scheduler => "scheduler",
            Capability::Shaper => "shaper",
            Capability::Metrics => "metrics",
            Capability::Emulation => "emulation",
        }
    }
}

/// A node's first message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub node: String,
    pub capabilities: Vec<Capability>,
    /// The software that speaks, for the controller's log (`linerate 0.1.0`).
    pub agent: String,
}

/// One counter reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub name: String,
    /// The port it belongs to, if any.
    pub port: Option<String>,
    pub value: u64,
}

/// Counters read at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// Milliseconds since the Unix epoch, on the node's clock.
    pub at_unix_ms: u64,
    pub counters: Vec<Counter>,
}

/// Why one side refuses the other, sent before it closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    Version,
    Malformed,
    TooLarge,
    NotHello,
    /// Another connection registered the same node id; the older one is closed.
    Replaced,
}

/// Error text carried next to a [`Refusal`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    pub refusal: Refusal,
    pub message: String,
}

/// Node to controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeMsg {
    Hello(Hello),
    Metrics(Metrics),
    Error(ErrorMsg),
}

/// Controller to node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerMsg {
    /// The whole configuration: replaces what the node holds.
    Full(Config),
    /// Changes to apply, in order, as one update.
    Diff(Vec<Change>),
    Error(ErrorMsg),
}

/// Checks the meaning of fields that postcard cannot: lengths, ranges, names.
pub trait Validate {
    fn validate(&self) -> Result<(), ProtoError>;
}

fn invalid(field: &'static str, why: &'static str) -> ProtoError {
    ProtoError::Invalid { field, why }
}

/// Node ids, port and counter names: 1 to [`MAX_NAME`] bytes of `[A-Za-z0-9._:-]`.
pub fn check_name(field: &'static str, s: &str) -> Result<(), ProtoError> {
    if s.is_empty() || s.len() > MAX_NAME {
        return Err(invalid(field, "must be 1 to 64 bytes long"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(invalid(field, "may hold only letters, digits and . _ : -"));
    }
    Ok(())
}

impl Validate for Prefix {
    fn validate(&self) -> Result<(), ProtoError> {
        if self.len > self.max_len() {
            return Err(invalid("prefix", "length exceeds the address family's"));
        }
        let host_bits_set = match self.addr {
            IpAddr::V4(a) => {
                let v = u32::from(a);
                self.len < 32 && v & (u32::MAX >> self.len) != 0
            }
            IpAddr::V6(a) => {
                let v = u128::from(a);
                self.len < 128 && v & (u128::MAX >> self.len) != 0
            }
        };
        if host_bits_set {
            return Err(invalid("prefix", "has host bits set beyond its length"));
        }
        Ok(())
    }
}

impl Validate for Route {
    fn validate(&self) -> Result<(), ProtoError> {
        self.prefix.validate()?;
        check_name("route.port", &self.port)?;
        if self.weight == 0 {
            return Err(invalid("route.weight", "must be at least 1"));
        }
        Ok(())
    }
}

impl Validate for Flow {
    fn validate(&self) -> Result<(), ProtoError> {
        let m = &self.matcher;
        for p in [m.src, m.dst].into_iter().flatten() {
            p.validate()?;
        }
        if let (Some(s), Some(d)) = (m.src, m.dst)
            && s.addr.is_ipv4() != d.addr.is_ipv4()
        {
            return Err(invalid("flow.matcher", "mixes IPv4 and IPv6 prefixes"));
        }
        Ok(())
    }
}

impl Validate for PortSettings {
    fn validate(&self) -> Result<(), ProtoError> {
        check_name("port.port", &self.port)?;
        match &self.scheduler {
            Scheduler::Fcfs => {}
            Scheduler::Wrr(w) | Scheduler::Drr(w) => {
                if w.is_empty() || w.len() > 8 {
                    return Err(invalid("port.scheduler", "needs 1 to 8 classes"));
                }
                if w.contains(&0) {
                    return Err(invalid("port.scheduler", "weights must be at least 1"));
                }
            }
        }
        if let Some(s) = self.shaper {
            if !(1..=MAX_RATE_BPS).contains(&s.rate_bps) {
                return Err(invalid(
                    "port.shaper",
                    "the rate must be between 1 bit/s and 10 Tbit/s",
                ));
            }
            if s.burst_bytes < 1514 {
                return Err(invalid(
                    "port.shaper",
                    "the burst must hold one full frame (1514 bytes)",
                ));
            }
        }
        if self
            .link_rate_bps
            .is_some_and(|r| !(1..=MAX_RATE_BPS).contains(&r))
        {
            return Err(invalid(
                "port.link_rate_bps",
                "must be between 1 bit/s and 10 Tbit/s",
            ));
        }
        Ok(())
    }
}

impl Validate for LinkDir {
    fn validate(&self) -> Result<(), ProtoError> {
        check_name("link.from", &self.from)?;
        check_name("link.to", &self.to)?;
        if self
            .rate_bps
            .is_some_and(|r| !(1..=MAX_RATE_BPS).contains(&r))
        {
            return Err(invalid(
                "link.rate_bps",
                "must be between 1 bit/s and 10 Tbit/s",
            ));
        }
        if self.delay_us > MAX_DELAY_US {
            return Err(invalid("link.delay_us", "at most 60 s"));
        }
        if self.jitter_us > self.delay_us {
            return Err(invalid("link.jitter_us", "more than the delay"));
        }
        if self.loss_ppm.is_some_and(|l| l > 1_000_000) {
            return Err(invalid("link.loss_ppm", "at most 1000000 (all)"));
        }
        if self
            .queue_packets
            .is_some_and(|q| !(1..=1_000_000).contains(&q))
        {
            return Err(invalid("link.queue_packets", "between 1 and 1000000"));
        }
        Ok(())
    }
}

impl Validate for EmuRoute {
    fn validate(&self) -> Result<(), ProtoError> {
        self.prefix.validate()?;
        check_name("emu_route.router", &self.router)?;
        check_name("emu_route.via", &self.via)?;
        if let Some(m) = &self.matcher
            && (m.is_empty() || m.len() > MAX_MATCHER || m.chars().any(|c| c.is_control()))
        {
            return Err(invalid(
                "emu_route.matcher",
                "must be 1 to 256 bytes of printable text",
            ));
        }
        if self.weight == 0 {
            return Err(invalid("emu_route.weight", "must be at least 1"));
        }
        Ok(())
    }
}

impl Validate for EmuFlow {
    fn validate(&self) -> Result<(), ProtoError> {
        if let Some(n) = &self.name {
            check_name("emu_flow.name", n)?;
        }
        check_name("emu_flow.src", &self.src)?;
        check_name("emu_flow.dst", &self.dst)?;
        if self.proto != "tcp" && self.proto != "udp" {
            return Err(invalid("emu_flow.proto", "tcp or udp"));
        }
        if self.bytes.is_none() && self.duration_ms.is_none() {
            return Err(invalid("emu_flow.bytes", "bytes, duration_ms or both"));
        }
        if !(1..=63).contains(&self.weight) {
            return Err(invalid("emu_flow.weight", "between 1 and 63"));
        }
        if let Some(c) = &self.cc {
            check_text("emu_flow.cc", c, 16)?;
        }
        Ok(())
    }
}

impl Validate for Change {
    fn validate(&self) -> Result<(), ProtoError> {
        match self {
            Change::Route(r) => r.validate(),
            Change::Flow(f) => f.validate(),
            Change::Port(p) => p.validate(),
            Change::PortGone(p) => check_name("port", p),
            Change::Link(l) => l.validate(),
            Change::EmuRoute(r) => r.validate(),
            Change::EmuFlow(f) => f.validate(),
            Change::RouteGone(_)
            | Change::FlowGone(_)
            | Change::LinkGone(_)
            | Change::EmuRouteGone(_)
            | Change::EmuFlowGone(_) => Ok(()),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ProtoError> {
        for (id, r) in &self.routes {
            if *id != r.id {
                return Err(invalid("config.routes", "key differs from the route's id"));
            }
            r.validate()?;
        }
        for (id, f) in &self.flows {
            if *id != f.id {
                return Err(invalid("config.flows", "key differs from the flow's id"));
            }
            f.validate()?;
        }
        for (port, p) in &self.ports {
            if *port != p.port {
                return Err(invalid("config.ports", "key differs from the port's name"));
            }
            p.validate()?;
        }
        for (id, l) in &self.links {
            if *id != l.id {
                return Err(invalid("config.links", "key differs from the link's id"));
            }
            l.validate()?;
        }
        for (id, r) in &self.emu_routes {
            if *id != r.id {
                return Err(invalid(
                    "config.emu_routes",
                    "key differs from the route's id",
                ));
            }
            r.validate()?;
        }
        for (id, f) in &self.emu_flows {
            if *id != f.id {
                return Err(invalid(
                    "config.emu_flows",
                    "key differs from the flow's id",
                ));
            }
            f.validate()?;
        }
        Ok(())
    }
}

impl Validate for NodeMsg {
    fn validate(&self) -> Result<(), ProtoError> {
        match self {
            NodeMsg::Hello(h) => {
                check_name("hello.node", &h.node)?;
                check_text("hello.agent", &h.agent, 256)?;
                if h.capabilities.len() > Capability::ALL.len() {
                    return Err(invalid("hello.capabilities", "lists a capability twice"));
                }
                Ok(())
            }
            NodeMsg::Metrics(m) => {
                if m.counters.len() > MAX_COUNTERS {
                    return Err(invalid("metrics.counters", "more than 256 in one report"));
                }
                for c in &m.counters {
                    check_name("metrics.name", &c.name)?;
                    if let Some(p) = &c.port {
                        check_name("metrics.port", p)?;
                    }
                }
                Ok(())
            }
            NodeMsg::Error(e) => check_error(e),
        }
    }
}

impl Validate for ControllerMsg {
    fn validate(&self) -> Result<(), ProtoError> {
        match self {
            ControllerMsg::Full(c) => c.validate(),
            ControllerMsg::Diff(changes) => changes.iter().try_for_each(Validate::validate),
            ControllerMsg::Error(e) => check_error(e),
        }
    }
}

fn check_error(e: &ErrorMsg) -> Result<(), ProtoError> {
    check_text("error.message", &e.message, 1024)
}

/// Free text that ends up in logs: bounded, and without control characters (a peer must not
/// forge log lines or terminal escapes).
fn check_text(field: &'static str, s: &str, max: usize) -> Result<(), ProtoError> {
    if s.len() > max {
        return Err(invalid(field, "too long"));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(field, "holds control characters"));
    }
    Ok(())
}

/// One frame holding `msg`.
pub fn encode<M: Serialize>(msg: &M) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    let out = postcard::to_extend(msg, out).map_err(|_| ProtoError::Malformed)?;
    if out.len() > MAX_FRAME {
        return Err(ProtoError::TooLarge { len: out.len() });
    }
    Ok(out)
}

/// The message in `frame`, checked.
pub fn decode<M: DeserializeOwned + Validate>(frame: &[u8]) -> Result<M, ProtoError> {
    if frame.len() > MAX_FRAME {
        return Err(ProtoError::TooLarge { len: frame.len() });
    }
    if frame.len() < HEADER_LEN {
        return Err(ProtoError::Short { len: frame.len() });
    }
    if frame[..2] != MAGIC {
        return Err(ProtoError::BadMagic);
    }
    let theirs = u16::from_le_bytes([frame[2], frame[3]]);
    if theirs != VERSION {
        return Err(ProtoError::Version {
            theirs,
            ours: VERSION,
        });
    }
    let (msg, rest) =
        postcard::take_from_bytes::<M>(&frame[HEADER_LEN..]).map_err(|_| ProtoError::Malformed)?;
    if !rest.is_empty() {
        return Err(ProtoError::Malformed);
    }
    msg.validate()?;
    Ok(msg)
}

/// The refusal that answers a frame `decode` rejected.
pub fn refusal_for(e: &ProtoError) -> Refusal {
    match e {
        ProtoError::Version { .. } => Refusal::Version,
        ProtoError::TooLarge { .. } => Refusal::TooLarge,
        ProtoError::Short { .. }
        | ProtoError::BadMagic
        | ProtoError::Malformed
        | ProtoError::Invalid { .. } => Refusal::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn route(id: u64, prefix: &str, port: &str) -> Route {
        Route {
            id,
            prefix: p(prefix),
            port: port.into(),
            next_hop: Mac([2, 0, 0, 0, 0, id as u8]),
            weight: 1,
        }
    }

    fn sample() -> Config {
        let mut c = Config::default();
        for r in [
            route(1, "10.0.0.0/8", "eth0"),
            route(2, "2001:db8::/32", "eth1"),
        ] {
            c.routes.insert(r.id, r);
        }
        c.flows.insert(
            7,
            Flow {
                id: 7,
                matcher: FlowMatch {
                    dst: Some(p("10.1.2.3/32")),
                    proto: Some(17),
                    dst_port: Some(53),
                    ..FlowMatch::default()
                },
                route: 2,
            },
        );
        c.ports.insert(
            "eth0".into(),
            PortSettings {
                port: "eth0".into(),
                scheduler: Scheduler::Wrr(vec![3, 1]),
                shaper: Some(Shaper {
                    rate_bps: 1_000_000_000,
                    burst_bytes: 15_000,
                }),
                link_rate_bps: Some(10_000_000_000),
            },
        );
        c
    }

    #[test]
    fn every_message_round_trips() {
        let node_msgs = [
            NodeMsg::Hello(Hello {
                node: "n1".into(),
                capabilities: Capability::ALL.to_vec(),
                agent: "linerate 0.1.0".into(),
            }),
            NodeMsg::Metrics(Metrics {
                at_unix_ms: 1_700_000_000_000,
                counters: vec![Counter {
                    name: "rx_packets".into(),
                    port: Some("eth0".into()),
                    value: u64::MAX,
                }],
            }),
            NodeMsg::Error(ErrorMsg {
                refusal: Refusal::Malformed,
                message: "x".into(),
            }),
        ];
        for m in node_msgs {
            assert_eq!(decode::<NodeMsg>(&encode(&m).unwrap()).unwrap(), m);
        }
        let c = sample();
        let ctl_msgs = [
            ControllerMsg::Full(c.clone()),
            ControllerMsg::Diff(Config::default().diff(&c)),
            ControllerMsg::Diff(vec![Change::RouteGone(1), Change::PortGone("eth0".into())]),
        ];
        for m in ctl_msgs {
            assert_eq!(decode::<ControllerMsg>(&encode(&m).unwrap()).unwrap(), m);
        }
    }

    #[test]
    fn other_versions_are_refused_by_name() {
        let mut f = encode(&ControllerMsg::Diff(vec![])).unwrap();
        f[2..4].copy_from_slice(&(VERSION + 1).to_le_bytes());
        let e = decode::<ControllerMsg>(&f).unwrap_err();
        assert_eq!(
            e,
            ProtoError::Version {
                theirs: VERSION + 1,
                ours: VERSION
            }
        );
        assert_eq!(
            e.to_string(),
            "peer speaks protocol version 3, this build speaks version 2"
        );
        // Version 1 (before emulation) is refused too: postcard has no optional fields.
        f[2..4].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(
            decode::<ControllerMsg>(&f),
            Err(ProtoError::Version {
                theirs: 1,
                ours: VERSION
            })
        );
        assert_eq!(refusal_for(&e), Refusal::Version);
    }

    #[test]
    fn short_foreign_oversized_and_trailing_frames_are_refused() {
        assert_eq!(decode::<NodeMsg>(b"LR"), Err(ProtoError::Short { len: 2 }));
        assert_eq!(
            decode::<NodeMsg>(b"GET / HTTP/1.1"),
            Err(ProtoError::BadMagic)
        );
        let big = vec![0u8; MAX_FRAME + 1];
        assert_eq!(
            decode::<NodeMsg>(&big),
            Err(ProtoError::TooLarge { len: MAX_FRAME + 1 })
        );
        let mut f = encode(&NodeMsg::Error(ErrorMsg {
            refusal: Refusal::NotHello,
            message: String::new(),
        }))
        .unwrap();
        f.push(0);
        assert_eq!(decode::<NodeMsg>(&f), Err(ProtoError::Malformed));
        // An enum tag no version defines.
        assert_eq!(
            decode::<NodeMsg>(b"LR\x02\x00\x09"),
            Err(ProtoError::Malformed)
        );
        // A length prefix far beyond the frame.
        assert_eq!(
            decode::<NodeMsg>(b"LR\x02\x00\x00\xff\xff\xff\xff\x0f"),
            Err(ProtoError::Malformed)
        );
    }

    #[test]
    fn fields_are_checked_after_decoding() {
        let bad_prefix = Route {
            prefix: Prefix {
                addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                len: 8,
            },
            ..route(1, "10.0.0.0/8", "eth0")
        };
        let f = encode(&ControllerMsg::Diff(vec![Change::Route(bad_prefix)])).unwrap();
        assert!(matches!(
            decode::<ControllerMsg>(&f),
            Err(ProtoError::Invalid {
                field: "prefix",
                ..
            })
        ));
        let too_long = Prefix {
            addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            len: 129,
        };
        assert!(too_long.validate().is_err());
        let hello = NodeMsg::Hello(Hello {
            node: "n1; DROP TABLE".into(),
            capabilities: vec![],
            agent: String::new(),
        });
        assert!(decode::<NodeMsg>(&encode(&hello).unwrap()).is_err());
        let zero_weight = Change::Route(Route {
            weight: 0,
            ..route(1, "10.0.0.0/8", "eth0")
        });
        assert!(zero_weight.validate().is_err());
        let mut c = sample();
        c.routes.insert(9, route(1, "10.0.0.0/8", "eth0"));
        assert!(c.validate().is_err(), "a key that differs from the id");
        let forged = NodeMsg::Hello(Hello {
            node: "n1".into(),
            capabilities: vec![],
            agent: "x\ncontroller: node 'n2' registered".into(),
        });
        assert!(forged.validate().is_err(), "a newline in logged text");
        let many = NodeMsg::Metrics(Metrics {
            at_unix_ms: 0,
            counters: vec![
                Counter {
                    name: "c".into(),
                    port: None,
                    value: 0
                };
                MAX_COUNTERS + 1
            ],
        });
        assert!(many.validate().is_err(), "too many counters");
    }

    #[test]
    fn diff_then_apply_reaches_the_new_config() {
        let old = sample();
        let mut new = old.clone();
        new.routes.remove(&1);
        new.routes.insert(3, route(3, "192.168.0.0/16", "eth2"));
        new.flows.get_mut(&7).unwrap().route = 3;
        new.ports.clear();
        let changes = old.diff(&new);
        assert_eq!(changes.len(), 4, "{changes:?}");
        let mut c = old.clone();
        for ch in &changes {
            assert!(c.apply(ch));
            assert!(!c.apply(ch), "applying a change twice changes nothing");
        }
        assert_eq!(c, new);
        assert!(new.diff(&new).is_empty());
    }

    #[test]
    fn text_forms_parse_and_print() {
        assert_eq!(p("10.1.0.0/16").to_string(), "10.1.0.0/16");
        assert_eq!(p("10.1.2.3").len, 32);
        assert!("10.1.0.1/16".parse::<Prefix>().is_err());
        assert!("10.1.0.0/33".parse::<Prefix>().is_err());
        let m: Mac = "02:00:00:00:00:0a".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:00:00:00:0a");
        assert!("02:00:00:00:00".parse::<Mac>().is_err());
        assert!("02:00:00:00:00:00:01".parse::<Mac>().is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<NodeMsg>(&bytes);
            let _ = decode::<ControllerMsg>(&bytes);
        }

        #[test]
        fn decode_of_valid_header_and_random_body_never_panics(
            body in proptest::collection::vec(any::<u8>(), 0..512)
        ) {
            let mut f = b"LR\x02\x00".to_vec();
            f.extend(body);
            let _ = decode::<NodeMsg>(&f);
            let _ = decode::<ControllerMsg>(&f);
        }
    }
}
