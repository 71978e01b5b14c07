//! Synthetic flows: traffic the emulator makes itself between hosts, from the topology's
//! `[[flows]]`, from `linerate flow add` or from rows of the `emu_flows` table.
//!
//! A flow is TCP (a user-space TCP with congestion control, smoltcp, on a virtual host; the
//! kernel's TCP on a namespace host) or UDP (constant bit rate, or on/off bursts). It runs for
//! a number of bytes or seconds, optionally capped at a rate, with a weight its packets carry
//! as their DSCP (what a `wfq` link shares by). Each end lives where its host does: a virtual
//! host's in the worker that owns it ([`crate::stack`]), a namespace host's as a kernel socket
//! in the host's namespace, driven by one thread for all of them ([`crate::nsflows`]). Either
//! end can be either kind.
//!
//! Every flow reports when it started and finished, bytes sent and received, and its flow
//! completion time ([`FlowStats`]); `status` and `metrics` read them.

use crate::plan::{NodeId, Plan};
use crate::topo::{Kind, TopoError};
use linerate_proto::units::{parse_duration, parse_rate};
use serde::Deserialize;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// One `[[flows]]` entry as written.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlowToml {
    /// Default: `flow<N>` (N from 1, in the file's order).
    pub name: Option<String>,
    pub src: String,
    pub dst: String,
    /// `tcp` (default) or `udp`.
    pub proto: Option<String>,
    /// Length: `10000000`, `"10MB"`, `"64KiB"` ...
    pub bytes: Option<toml::Value>,
    /// Length: `"5s"`, `"500ms"`.
    pub duration: Option<String>,
    /// bit/s: TCP's cap, UDP's sending rate (required for UDP).
    pub rate: Option<String>,
    /// 1 to 63 (default 1): the packets' DSCP, what `sched = "wfq"` shares a link by.
    pub weight: Option<u32>,
    /// When it starts, after the flow is added (default: at once).
    pub start: Option<String>,
    /// UDP on/off: sending for `on`, silent for `off`, repeated.
    pub on: Option<String>,
    pub off: Option<String>,
    /// UDP payload bytes per packet (default 1472).
    pub packet: Option<u32>,
    /// The destination's port (default: one the receiving end picks).
    pub port: Option<u16>,
    /// TCP congestion control: `cubic` (default), `reno` or `none`.
    pub cc: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cc {
    Cubic,
    Reno,
    None,
}

impl Cc {
    pub fn name(self) -> &'static str {
        match self {
            Cc::Cubic => "cubic",
            Cc::Reno => "reno",
            Cc::None => "none",
        }
    }
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A flow resolved against the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowSpec {
    pub name: String,
    pub src: NodeId,
    pub dst: NodeId,
    pub proto: Proto,
    pub bytes: Option<u64>,
    pub duration_ns: Option<u64>,
    pub rate_bps: Option<u64>,
    pub weight: u8,
    pub start_ns: u64,
    pub on_off_ns: Option<(u64, u64)>,
    pub packet: u32,
    pub port: Option<u16>,
    pub cc: Cc,
}

/// Largest UDP payload a flow's packet carries (an MTU of 9000 less the headers).
pub const MAX_PACKET: u32 = 8972;
pub const DEFAULT_PACKET: u32 = 1472;

/// `10000000`, `"10MB"` (10^6), `"64KiB"` (2^10), `"1.5GB"`: a byte count above 0.
pub fn parse_bytes(v: &toml::Value) -> Result<u64, String> {
    let text = match v {
        toml::Value::Integer(n) if *n > 0 => return Ok(*n as u64),
        toml::Value::String(s) => s.trim().to_string(),
        other => {
            return Err(format!(
                "'{other}' is not a byte count like 1000000 or \"10MB\""
            ));
        }
    };
    let bad = || format!("'{text}' is not a byte count like 1000000, \"10MB\" or \"64KiB\"");
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "k" | "K" | "KB" | "kB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "T" | "TB" => 1e12,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let b = (n * mult).round();
    if !b.is_finite() || !(1.0..=1e15).contains(&b) {
        return Err(format!("'{text}' must be between 1 byte and 1PB"));
    }
    Ok(b as u64)
}

fn dur_ns(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    parse_duration(s.trim()).map(|d| d.as_nanos() as u64)
}

impl FlowToml {
    /// Checks the entry against `plan` (`what` names it in errors).
    pub fn resolve(&self, plan: &Plan, what: &str) -> Result<FlowSpec, TopoError> {
        let e = |key: &str, m: String| TopoError(format!("{what}: {key}: {m}"));
        let name = self.name.clone().unwrap_or_else(|| what.to_string());
        crate::topo::check_name(&name, "flow")?;
        let host = |key: &str, n: &str| -> Result<NodeId, TopoError> {
            let id = plan
                .node(n)
                .ok_or_else(|| e(key, format!("no node is named '{n}'")))?;
            let node = &plan.nodes[id];
            if !node.kind.is_host() {
                return Err(e(
                    key,
                    format!("'{n}' is a {:?}; flows run between hosts", node.kind).to_lowercase(),
                ));
            }
            if node.ifaces.first().and_then(|i| i.addr).is_none() {
                return Err(e(key, format!("'{n}' has no address on eth0")));
            }
            Ok(id)
        };
        let src = host("src", &self.src)?;
        let dst = host("dst", &self.dst)?;
        if src == dst {
            return Err(e("dst", "a flow needs two different hosts".into()));
        }
        let proto = match self.proto.as_deref().map(str::trim) {
            None | Some("tcp") => Proto::Tcp,
            Some("udp") => Proto::Udp,
            Some(p) => return Err(e("proto", format!("'{p}' is not tcp or udp"))),
        };
        let bytes = self
            .bytes
            .as_ref()
            .map(parse_bytes)
            .transpose()
            .map_err(|m| e("bytes", m))?;
        let duration_ns = self
            .duration
            .as_deref()
            .map(dur_ns)
            .transpose()
            .map_err(|m| e("duration", m))?;
        if bytes.is_none() && duration_ns.is_none() {
            return Err(e(
                "bytes",
                "give the flow's length: bytes, duration, or both (it ends at the first)".into(),
            ));
        }
        let rate_bps = self
            .rate
            .as_deref()
            .map(|r| parse_rate(r.trim()).map(|v| v.round() as u64))
            .transpose()
            .map_err(|m| e("rate", m))?;
        if proto == Proto::Udp && rate_bps.is_none() {
            return Err(e("rate", "a UDP flow needs its sending rate".into()));
        }
        let weight = self.weight.unwrap_or(1);
        if !(1..=63).contains(&weight) {
            return Err(e("weight", format!("{weight}: must be 1 to 63")));
        }
        let start_ns = self
            .start
            .as_deref()
            .map(dur_ns)
            .transpose()
            .map_err(|m| e("start", m))?
            .unwrap_or(0);
        let on_off_ns = match (&self.on, &self.off) {
            (None, None) => None,
            (Some(on), Some(off)) => {
                if proto != Proto::Udp {
                    return Err(e("on", "on/off bursts are for UDP flows".into()));
                }
                Some((
                    dur_ns(on).map_err(|m| e("on", m))?,
                    dur_ns(off).map_err(|m| e("off", m))?,
                ))
            }
            _ => return Err(e("on", "give both on and off".into())),
        };
        if on_off_ns.is_some_and(|(on, _)| on == 0) {
            return Err(e("on", "must be above 0".into()));
        }
        let packet = self.packet.unwrap_or(DEFAULT_PACKET);
        if !(1..=MAX_PACKET).contains(&packet) {
            return Err(e("packet", format!("{packet}: must be 1 to {MAX_PACKET}")));
        }
        if self.packet.is_some() && proto == Proto::Tcp {
            return Err(e("packet", "TCP picks its own segment sizes".into()));
        }
        if self.port == Some(0) {
            return Err(e("port", "must be 1 to 65535".into()));
        }
        let cc = match self.cc.as_deref().map(str::trim) {
            None | Some("cubic") => Cc::Cubic,
            Some("reno") => Cc::Reno,
            Some("none") => Cc::None,
            Some(c) => return Err(e("cc", format!("'{c}' is not cubic, reno or none"))),
        };
        if self.cc.is_some() && proto == Proto::Udp {
            return Err(e("cc", "UDP has no congestion control".into()));
        }
        Ok(FlowSpec {
            name,
            src,
            dst,
            proto,
            bytes,
            duration_ns,
            rate_bps,
            weight: weight as u8,
            start_ns,
            on_off_ns,
            packet,
            port: self.port,
            cc,
        })
    }
}

/// Resolves every `[[flows]]` entry, names unique.
pub fn resolve_all(plan: &Plan, flows: &[FlowToml]) -> Result<Vec<FlowSpec>, TopoError> {
    let mut out: Vec<FlowSpec> = Vec::with_capacity(flows.len());
    let mut names = std::collections::HashSet::new();
    for (i, f) in flows.iter().enumerate() {
        let what = format!("flow{}", i + 1);
        let spec = f.resolve(plan, f.name.as_deref().unwrap_or(&what))?;
        if !names.insert(spec.name.clone()) {
            return Err(TopoError(format!(
                "flows: two flows are named '{}'",
                spec.name
            )));
        }
        out.push(spec);
    }
    Ok(out)
}

/// Where a flow is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Waiting for its start time (or its receiver).
    Waiting = 0,
    Running = 1,
    /// Every byte delivered (TCP: the receiver saw the sender's FIN), or the UDP sender done.
    Finished = 2,
    /// Reset, refused, or its host's address unreachable: `error` says why.
    Failed = 3,
    /// Removed before it finished.
    Stopped = 4,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Running,
            2 => State::Finished,
            3 => State::Failed,
            4 => State::Stopped,
            _ => State::Waiting,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::Running => "running",
            State::Finished => "finished",
            State::Failed => "failed",
            State::Stopped => "stopped",
        }
    }
}

/// A flow's counters, written by its two ends (each from one thread), read by anyone.
#[derive(Default)]
pub struct FlowStats {
    state: AtomicU8,
    /// Monotonic ns: the sender's first packet (TCP: its SYN).
    pub started_ns: AtomicU64,
    /// Monotonic ns: TCP, the receiver saw the FIN after every byte; UDP, the last packet
    /// the receiver got (final once the sender is done).
    pub finished_ns: AtomicU64,
    pub sent_bytes: AtomicU64,
    pub received_bytes: AtomicU64,
    pub sent_packets: AtomicU64,
    pub received_packets: AtomicU64,
    /// The receiving end listens (the sender starts only then).
    pub ready: AtomicBool,
    /// The port the receiver listens on, once it does.
    pub port: AtomicU64,
    /// UDP: the sender has sent its last packet.
    pub sender_done: AtomicBool,
    /// Asked to stop (its row deleted, or the emulation going down).
    pub stop: AtomicBool,
    error: Mutex<Option<String>>,
}

impl FlowStats {
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Moves to `s` unless the flow already ended.
    pub fn set_state(&self, s: State) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (State::from_u8(cur) as u8 <= State::Running as u8).then_some(s as u8)
            });
    }

    pub fn fail(&self, why: String) {
        if self.state() as u8 <= State::Running as u8 {
            *self.error.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
            self.set_state(State::Failed);
        }
    }

    pub fn error(&self) -> Option<String> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Flow completion time, ns, once finished.
    pub fn fct_ns(&self) -> Option<u64> {
        (self.state() == State::Finished).then(|| {
            self.finished_ns
                .load(Ordering::Acquire)
                .saturating_sub(self.started_ns.load(Ordering::Acquire))
        })
    }
}

/// A flow as the emulation runs it.
pub struct Flow {
    /// Index in the registry (stable for the emulation's life).
    pub id: usize,
    pub spec: FlowSpec,
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    /// Monotonic ns when it was added; it starts at `added_ns + spec.start_ns`.
    pub added_ns: u64,
    /// The `emu_flows` row it came from, if any.
    pub row: Option<u64>,
    pub stats: FlowStats,
}

/// What a rate-capped TCP sender may be ahead of its rate, bytes.
const RATE_BURST: u64 = 16 * 1024;
/// A TCP segment's payload, as far as pacing the writes goes.
const SEGMENT: u64 = 1460;

/// A UDP sender's next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpStep {
    /// Its last datagram is sent.
    Done,
    /// Nothing to send before this time.
    Wait(u64),
    /// Send a datagram of this many payload bytes now.
    Send(usize),
}

impl FlowStats {
    /// A UDP sender sent its last datagram at `now`.
    pub fn sender_finished(&self, now: u64) {
        self.sender_done.store(true, Ordering::Release);
        if self.finished_ns.load(Ordering::Acquire) == 0 {
            self.finished_ns.store(now, Ordering::Release);
        }
        self.set_state(State::Finished);
    }

    /// A datagram of `size` payload bytes left.
    pub fn count_sent(&self, size: usize) {
        self.sent_bytes.fetch_add(size as u64, Ordering::Relaxed);
        self.sent_packets.fetch_add(1, Ordering::Relaxed);
    }
}

impl Flow {
    /// A TCP sender's room under its rate cap at `now`, having written `written` bytes since
    /// `started`: how many more it may write, and, when that is less than a segment, when a
    /// segment's worth more is allowed. `None` without a cap.
    pub fn rate_room(&self, started: u64, now: u64, written: u64) -> Option<(u64, Option<u64>)> {
        let rate = self.spec.rate_bps?.max(1) as u128;
        let by_rate = ((now - started) as u128 * rate / 8_000_000_000) as u64 + RATE_BURST;
        let room = by_rate.saturating_sub(written);
        let wake = (room < SEGMENT)
            .then(|| now + ((SEGMENT - room) as u128 * 8_000_000_000 / rate) as u64 + 1);
        Some((room, wake))
    }

    /// A UDP sender's step at `now`: it started at `started`, has sent `sent` bytes and sends
    /// next at `next_ns` (moved here out of an off period).
    pub fn udp_step(&self, started: u64, next_ns: &mut u64, sent: u64, now: u64) -> UdpStep {
        let spec = &self.spec;
        let left = spec.bytes.map_or(u64::MAX, |b| b - sent);
        let end_at = self.deadline(started);
        // On/off: a send time in an off period moves to the next on period.
        if let Some((on, off)) = spec.on_off_ns {
            let phase = (*next_ns - started) % (on + off);
            if phase >= on {
                *next_ns += on + off - phase;
            }
        }
        if left == 0 || end_at.is_some_and(|d| *next_ns >= d) {
            return UdpStep::Done;
        }
        if *next_ns > now {
            return UdpStep::Wait(*next_ns);
        }
        UdpStep::Send((spec.packet as u64).min(left) as usize)
    }

    /// After a datagram of `size` payload bytes: the next send time, at the flow's rate.
    pub fn udp_sent(&self, next_ns: &mut u64, size: usize) {
        let rate = self.spec.rate_bps.unwrap_or(1).max(1) as u128;
        *next_ns += (size as u128 * 8 * 1_000_000_000 / rate).max(1) as u64;
    }

    pub fn start_at(&self) -> u64 {
        self.added_ns + self.spec.start_ns
    }

    /// When a sender stops by the clock (`None`: by bytes only).
    pub fn deadline(&self, started: u64) -> Option<u64> {
        self.spec.duration_ns.map(|d| started + d)
    }
}

/// Every flow of the emulation, in the order added.
#[derive(Default)]
pub struct Registry {
    flows: Mutex<Vec<Arc<Flow>>>,
    /// Ports handed to virtual receivers and senders, per node (the next one to try).
    ports: Mutex<std::collections::HashMap<NodeId, u16>>,
}

/// Ports a virtual host gives out to its flows' ends (they never collide within a host
/// until 16,383 flows are alive on it at once).
const PORT_BASE: u16 = 49152;

impl Registry {
    pub fn all(&self) -> Vec<Arc<Flow>> {
        self.flows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn len(&self) -> usize {
        self.flows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn by_name(&self, name: &str) -> Option<Arc<Flow>> {
        self.all().into_iter().find(|f| f.spec.name == name)
    }

    /// Adds `spec` (its name must be new) as flow `id`, for row `row`.
    pub fn add(
        &self,
        plan: &Plan,
        spec: FlowSpec,
        row: Option<u64>,
        now: u64,
    ) -> Result<Arc<Flow>, String> {
        let mut flows = self.flows.lock().unwrap_or_else(PoisonError::into_inner);
        if flows.iter().any(|f| f.spec.name == spec.name) {
            return Err(format!("a flow named '{}' exists", spec.name));
        }
        let addr = |n: NodeId| {
            plan.nodes[n]
                .ifaces
                .first()
                .and_then(|i| i.addr)
                .map(|a| a.0)
                .ok_or_else(|| format!("'{}' has no address", plan.nodes[n].name))
        };
        let flow = Arc::new(Flow {
            id: flows.len(),
            src_addr: addr(spec.src)?,
            dst_addr: addr(spec.dst)?,
            added_ns: now,
            row,
            spec,
            stats: FlowStats::default(),
        });
        flows.push(flow.clone());
        Ok(flow)
    }

    /// A port on virtual host `node` for one of its flows' ends.
    pub fn port_for(&self, node: NodeId) -> u16 {
        let mut p = self.ports.lock().unwrap_or_else(PoisonError::into_inner);
        let next = p.entry(node).or_insert(PORT_BASE);
        let port = *next;
        *next = if *next == u16::MAX {
            PORT_BASE
        } else {
            *next + 1
        };
        port
    }
}

/// Whether `node` runs its flows' ends inside the emulator (a virtual host) or in its
/// namespace's kernel.
pub fn is_virtual(plan: &Plan, node: NodeId) -> bool {
    plan.nodes[node].kind == Kind::Virtual
}

/// One flow as `status` shows it (times in seconds since the emulator started its clock:
/// monotonic, comparable with each other).
#[derive(Debug, Clone, serde::Serialize, Deserialize, PartialEq)]
pub struct FlowStatus {
    pub name: String,
    pub src: String,
    pub dst: String,
    pub proto: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<u64>,
    pub weight: u8,
    /// The receiver's port.
    pub port: u16,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub sent_packets: u64,
    pub received_packets: u64,
    /// Seconds after the flow was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_s: Option<f64>,
    /// Flow completion time, s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fct_s: Option<f64>,
    /// Received bytes over the time since the start (until the finish, once finished), bit/s.
    pub throughput_bps: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Flow {
    pub fn status(&self, plan: &Plan, now: u64) -> FlowStatus {
        let st = &self.stats;
        let ld = |a: &AtomicU64| a.load(Ordering::Acquire);
        let started = ld(&st.started_ns);
        let finished = ld(&st.finished_ns);
        let state = st.state();
        let rel = |t: u64| (t > 0).then(|| t.saturating_sub(self.added_ns) as f64 / 1e9);
        let received = ld(&st.received_bytes);
        let until = if state == State::Finished && finished > 0 {
            finished
        } else {
            now
        };
        let span = until.saturating_sub(started);
        FlowStatus {
            name: self.spec.name.clone(),
            src: plan.nodes[self.spec.src].name.clone(),
            dst: plan.nodes[self.spec.dst].name.clone(),
            proto: self.spec.proto.name().into(),
            state: state.name().into(),
            row: self.row,
            weight: self.spec.weight,
            port: ld(&st.port) as u16,
            sent_bytes: ld(&st.sent_bytes),
            received_bytes: received,
            sent_packets: ld(&st.sent_packets),
            received_packets: ld(&st.received_packets),
            started_s: rel(started),
            finished_s: if state == State::Finished {
                rel(finished)
            } else {
                None
            },
            fct_s: st.fct_ns().map(|n| n as f64 / 1e9),
            throughput_bps: if started > 0 && span > 0 {
                received as f64 * 8e9 / span as f64
            } else {
                0.0
            },
            error: st.error(),
        }
    }
}

/// Starts and stops flows: hands their ends to the workers (virtual hosts) or to the
/// namespace flows' thread, started on the first flow that needs it.
pub struct FlowCtl {
    pub shared: Arc<crate::engine::Shared>,
    pub plan: Arc<Plan>,
    ns: Mutex<Option<crate::nsflows::NsFlows>>,
}

impl FlowCtl {
    pub fn new(shared: Arc<crate::engine::Shared>, plan: Arc<Plan>) -> FlowCtl {
        FlowCtl {
            shared,
            plan,
            ns: Mutex::new(None),
        }
    }

    /// Starts `spec` (from row `row` of `emu_flows`, if any): its receiving end at once, its
    /// sending end at its start time once the receiver listens.
    pub fn add(&self, spec: FlowSpec, row: Option<u64>) -> Result<Arc<Flow>, String> {
        let now = linerate_dataplane::sys::monotonic_ns();
        let flow = self.shared.flows.add(&self.plan, spec, row, now)?;
        for side in [crate::stack::Side::Recv, crate::stack::Side::Send] {
            let node = match side {
                crate::stack::Side::Recv => flow.spec.dst,
                crate::stack::Side::Send => flow.spec.src,
            };
            if is_virtual(&self.plan, node) {
                let port = match (side, flow.spec.port) {
                    (crate::stack::Side::Recv, Some(p)) => p,
                    _ => self.shared.flows.port_for(node),
                };
                self.shared.post(
                    node,
                    crate::engine::Msg::End {
                        node,
                        flow: flow.clone(),
                        side,
                        port,
                    },
                );
            } else {
                let mut ns = self.ns.lock().unwrap_or_else(PoisonError::into_inner);
                if ns.is_none() {
                    *ns = Some(
                        crate::nsflows::NsFlows::start()
                            .map_err(|e| format!("starting the namespace flows' thread: {e}"))?,
                    );
                }
                if let Some(t) = ns.as_ref() {
                    t.send(crate::nsflows::Cmd::End {
                        flow: flow.clone(),
                        side,
                        ns: crate::netns::ns_path(&self.plan.name, &self.plan.nodes[node].name),
                    });
                }
            }
        }
        Ok(flow)
    }

    /// Stops `flow` if it still runs (both ends let go of it).
    pub fn stop(&self, flow: &Flow) {
        flow.stats.stop.store(true, Ordering::Release);
        for node in [flow.spec.src, flow.spec.dst] {
            if is_virtual(&self.plan, node) {
                self.shared.post(node, crate::engine::Msg::Poke(node));
            } else if let Some(t) = self
                .ns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
            {
                t.send(crate::nsflows::Cmd::Poke);
            }
        }
        // An end that had already gone leaves the flow as it was; one not yet ended stops.
        flow.stats.set_state(State::Stopped);
    }

    /// Closes every namespace socket (before the namespaces go).
    pub fn shutdown(&self) {
        self.ns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_like_people_write_them() {
        let s = |x: &str| parse_bytes(&toml::Value::String(x.into()));
        assert_eq!(s("10MB"), Ok(10_000_000));
        assert_eq!(s("64KiB"), Ok(65_536));
        assert_eq!(s("1.5 GB"), Ok(1_500_000_000));
        assert_eq!(parse_bytes(&toml::Value::Integer(7)), Ok(7));
        assert!(parse_bytes(&toml::Value::Integer(0)).is_err());
        assert!(s("10 furlongs").is_err());
        assert!(s("0.1B").is_err());
    }

    #[test]
    fn state_never_leaves_an_end() {
        let st = FlowStats::default();
        st.set_state(State::Running);
        st.set_state(State::Finished);
        st.fail("late".into());
        assert_eq!(st.state(), State::Finished);
        assert_eq!(st.error(), None);
    }
}
