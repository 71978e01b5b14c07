//! The emulation under the controller. An emulator is one controller node (named after the
//! emulation) with the `emulation` capability: its configuration is the rows of its link
//! directions ([`LinkDir`]) and its routers' route overrides ([`EmuRoute`]). [`seed`] is what
//! `up` writes to the store from the topology; [`EmuDataplane`] is the agent's side, turning
//! each update into live settings the workers pick up at their next round.
//!
//! Link direction ids are `2 * link + side + 1` in the plan's order (side 0: `a` to `b`). A row
//! carries rate, delay, jitter, random loss, queue length and up; what it leaves out (a
//! Gilbert-Elliott model, schedulers, RED, MTU) stays as the topology or `linerate link` set it.
//! Deleting a row takes its direction down. Route rows override the computed routes of their
//! router per prefix (several rows for one prefix: weighted multipath); a row with a rule is a
//! per-flow route, tried first; deleting a row restores the computed route.

use crate::engine::{RouterConf, Shared};
use crate::plan::{LinkId, NodeId, Plan, Role};
use crate::router::Hop;
use crate::topo::{LinkParams, Loss};
use linerate_agent::Dataplane;
use linerate_dataplane::logic::Rule;
use linerate_proto::{Change, Config, Counter, EmuFlow, EmuRoute, LinkDir, MAX_COUNTERS};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

/// Counters reported per flow.
const FLOW_COUNTERS: usize = 6;

/// The id of link `l`'s direction leaving end `side`.
pub fn dir_id(l: LinkId, side: usize) -> u64 {
    (2 * l + side + 1) as u64
}

/// `(link, side)` of direction `id`.
pub fn dir_of(id: u64) -> Option<(LinkId, usize)> {
    let i = usize::try_from(id.checked_sub(1)?).ok()?;
    Some((i / 2, i % 2))
}

/// `node:iface` of end `side` of link `l`.
pub fn end_name(plan: &Plan, l: LinkId, side: usize) -> String {
    let (n, i) = plan.links[l].ends[side];
    format!("{}:{}", plan.nodes[n].name, plan.nodes[n].ifaces[i].name)
}

fn round_us(ns: u64) -> u64 {
    ns.saturating_add(500) / 1000
}

/// `p`'s jitter as its row holds it: whole µs, never above the delay's.
fn jitter_us(p: &LinkParams) -> u64 {
    round_us(p.jitter_ns).min(round_us(p.delay_ns))
}

/// Direction `side` of link `l` with settings `p`, as a row.
pub fn link_row(plan: &Plan, l: LinkId, side: usize, p: &LinkParams) -> LinkDir {
    row_of(
        dir_id(l, side),
        end_name(plan, l, side),
        end_name(plan, l, 1 - side),
        p,
    )
}

fn row_of(id: u64, from: String, to: String, p: &LinkParams) -> LinkDir {
    LinkDir {
        id,
        from,
        to,
        rate_bps: p.rate_bps,
        delay_us: round_us(p.delay_ns),
        jitter_us: jitter_us(p),
        loss_ppm: match p.loss {
            Loss::None => Some(0),
            Loss::Random(x) => Some((x * 1e6).round().clamp(0.0, 1e6) as u32),
            Loss::GilbertElliott { .. } => None,
        },
        queue_packets: Some(p.queue_packets.clamp(1, 1_000_000) as u32),
        up: p.up,
    }
}

/// The emulator's configuration as the topology gives it: every link direction's row.
pub fn seed(plan: &Plan, dirs: &[Arc<LinkParams>]) -> Config {
    let mut c = Config::default();
    for l in 0..plan.links.len() {
        for side in 0..2 {
            let row = link_row(plan, l, side, &dirs[2 * l + side]);
            c.links.insert(row.id, row);
        }
    }
    c
}

/// `base` with what `row` says. Delay and jitter keep their sub-microsecond part when the row
/// did not change them.
pub fn params_from_row(base: &LinkParams, row: &LinkDir) -> LinkParams {
    let mut p = base.clone();
    p.rate_bps = row.rate_bps;
    if row.delay_us != round_us(base.delay_ns) {
        p.delay_ns = row.delay_us.saturating_mul(1000);
    }
    if row.jitter_us != jitter_us(base) {
        p.jitter_ns = row.jitter_us.saturating_mul(1000);
    }
    p.jitter_ns = p.jitter_ns.min(p.delay_ns);
    if let Some(ppm) = row.loss_ppm {
        p.loss = match ppm {
            0 => Loss::None,
            n => Loss::Random(f64::from(n) / 1e6),
        };
    }
    if let Some(q) = row.queue_packets {
        p.queue_packets = q as usize;
    }
    p.up = row.up;
    p
}

/// What the control side did, for `linerate status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ControlStatus {
    /// Where the controller is (`ws://...`) and which store it reads.
    pub controller: String,
    pub store: String,
    pub connected: bool,
    /// Updates applied since `up`.
    pub updates: u64,
    /// Rows the emulator could not use (logged), and the last reason.
    pub ignored: u64,
    pub last_ignored: String,
}

/// The agent's dataplane: applies the emulator's rows to the running emulation.
pub struct EmuDataplane {
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    flows: Arc<crate::flows::FlowCtl>,
    /// The routers' configuration as the plan computed it.
    computed: Vec<Option<Arc<RouterConf>>>,
    last: Config,
    pub status: Arc<Mutex<ControlStatus>>,
    /// Where the next metrics report starts (reports carry at most [`MAX_COUNTERS`]).
    cursor: usize,
    /// Per flow: its (state, bytes received) when last reported. Flows that moved are
    /// reported first, so a flow's finish reaches the store within a report or two however
    /// many links the rotation has to get through.
    flow_seen: Vec<(u8, u64)>,
}

impl EmuDataplane {
    /// `seeded`: what the store was given at `up` (what the emulation runs with now).
    pub fn new(flows: Arc<crate::flows::FlowCtl>, seeded: Config) -> EmuDataplane {
        let computed = (*flows.shared.live.routers()).clone();
        EmuDataplane {
            plan: flows.plan.clone(),
            shared: flows.shared.clone(),
            flows,
            computed,
            last: seeded,
            status: Arc::default(),
            cursor: 0,
            flow_seen: Vec::new(),
        }
    }

    fn ignore(&self, why: String) {
        tracing::warn!("control: ignoring {why}");
        let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        s.ignored += 1;
        s.last_ignored = why;
    }

    /// The direction index of `row`, if it names one of this emulation's directions by its
    /// ends (rows of another topology are not applied to this one).
    fn dir_index(&self, row: &LinkDir) -> Result<usize, String> {
        let (l, side) = dir_of(row.id)
            .filter(|&(l, _)| l < self.plan.links.len())
            .ok_or_else(|| format!("link row {}: no such link direction here", row.id))?;
        let (from, to) = (
            end_name(&self.plan, l, side),
            end_name(&self.plan, l, 1 - side),
        );
        if row.from != from || row.to != to {
            return Err(format!(
                "link row {}: it says {} -> {}, this emulation's direction {} is {from} -> {to}",
                row.id, row.from, row.to, row.id
            ));
        }
        Ok(2 * l + side)
    }

    /// Router `r`'s configuration: the computed one with `rows` (its route rows) laid over it.
    fn router_conf(&self, r: NodeId, rows: &[&EmuRoute]) -> RouterConf {
        let mut conf = (self.computed[r].as_deref().cloned()).unwrap_or_default();
        let mut by_prefix: BTreeMap<(Ipv4Addr, u8), Vec<Hop>> = BTreeMap::new();
        let mut pins = Vec::new();
        for row in rows {
            let hop = match self.hop(r, row) {
                Ok(h) => h,
                Err(why) => {
                    self.ignore(format!("route row {}: {why}", row.id));
                    continue;
                }
            };
            let IpAddr::V4(net) = row.prefix.addr else {
                self.ignore(format!(
                    "route row {}: {} is not IPv4 (the emulation is IPv4)",
                    row.id, row.prefix
                ));
                continue;
            };
            match &row.matcher {
                Some(m) => match format!("permit {m}").parse::<Rule>() {
                    Ok(rule) => pins.push((rule, hop)),
                    Err(e) => self.ignore(format!("route row {}: match '{m}': {e}", row.id)),
                },
                None => by_prefix
                    .entry((net, row.prefix.len))
                    .or_default()
                    .push(hop),
            }
        }
        conf.routes.retain(|(p, _)| !by_prefix.contains_key(p));
        conf.routes.extend(by_prefix);
        pins.extend(conf.pins);
        conf.pins = pins;
        conf
    }

    /// The next hop `row` names: the router's interface on a segment `row.via` is on.
    fn hop(&self, r: NodeId, row: &EmuRoute) -> Result<Hop, String> {
        let p = &self.plan;
        let via = p
            .node(&row.via)
            .ok_or_else(|| format!("via '{}' is no node of this emulation", row.via))?;
        for (i, iface) in p.nodes[r].ifaces.iter().enumerate() {
            if let Some(v) = p.nodes[via]
                .ifaces
                .iter()
                .find(|v| v.segment == iface.segment)
            {
                return Ok(Hop {
                    iface: i,
                    mac: v.mac,
                    weight: row.weight,
                });
            }
        }
        Err(format!(
            "via '{}' is not a neighbour of router '{}'",
            row.via, p.nodes[r].name
        ))
    }

    /// Starts the flow of row `row`.
    fn start_flow(&self, row: &EmuFlow) -> Result<(), String> {
        let toml = crate::flows::FlowToml {
            name: Some(row.flow_name()),
            src: row.src.clone(),
            dst: row.dst.clone(),
            proto: Some(row.proto.clone()),
            bytes: row
                .bytes
                .map(|b| toml::Value::Integer(i64::try_from(b).unwrap_or(i64::MAX))),
            duration: row.duration_ms.map(|d| format!("{d}ms")),
            rate: row.rate_bps.map(|r| r.to_string()),
            weight: Some(row.weight),
            start: Some(format!("{}ms", row.start_ms)).filter(|_| row.start_ms > 0),
            on: row.on_ms.map(|d| format!("{d}ms")),
            off: row
                .off_ms
                .map(|d| if d == 0 { "0".into() } else { format!("{d}ms") }),
            packet: row.packet,
            port: row.port,
            cc: row.cc.clone(),
        };
        let spec = toml
            .resolve(&self.plan, &row.flow_name())
            .map_err(|e| e.0)?;
        self.flows.add(spec, Some(row.id)).map(|_| ())
    }

    /// Every counter, in a fixed order: per link direction (by its sending end), per node.
    fn all_counters(&self) -> Vec<Counter> {
        let p = &self.plan;
        let s = &self.shared;
        let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let mut out = Vec::new();
        let mut c = |name: &str, port: &str, value: u64| {
            out.push(Counter {
                name: name.into(),
                port: Some(port.into()),
                value,
            })
        };
        for l in 0..p.links.len() {
            for side in 0..2 {
                let d = &s.dirs[2 * l + side];
                let port = end_name(p, l, side);
                c("link_tx_packets", &port, ld(&d.delivered));
                c("link_tx_bytes", &port, ld(&d.delivered_bytes));
                c("link_queue_packets", &port, ld(&d.queued));
                c("link_drop_queue", &port, ld(&d.drop_queue));
                c("link_drop_red", &port, ld(&d.drop_red));
                c("link_drop_loss", &port, ld(&d.drop_loss));
                c("link_drop_down", &port, ld(&d.drop_down));
                c("link_late", &port, ld(&d.late));
            }
        }
        for (id, n) in p.nodes.iter().enumerate() {
            let sum = |f: fn(&crate::engine::NodeStats) -> &std::sync::atomic::AtomicU64| {
                s.nodes.iter().map(|w| ld(f(&w[id]))).sum::<u64>()
            };
            if n.role == Role::Router {
                c("node_forwarded", &n.name, sum(|x| &x.forwarded));
                c("node_dropped", &n.name, sum(|x| &x.dropped));
            } else {
                c("node_sent", &n.name, sum(|x| &x.sent));
                c("node_received", &n.name, sum(|x| &x.received));
            }
        }
        out
    }
    /// The counters of flows that moved since they were last reported (`port` is the flow's
    /// name; times on the wall clock, for SQL), at most `max`.
    fn flow_counters(&mut self, max: usize) -> Vec<Counter> {
        let s = &self.shared;
        let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let mut out = Vec::new();
        let mono = linerate_dataplane::sys::monotonic_ns();
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let wall = |t: u64| {
            if t == 0 {
                0
            } else {
                unix_ms.saturating_sub(mono.saturating_sub(t) / 1_000_000)
            }
        };
        for f in s.flows.all() {
            if out.len() + FLOW_COUNTERS > max {
                break;
            }
            let st = &f.stats;
            let state = st.state();
            let now = (state as u8, ld(&st.received_bytes));
            if self.flow_seen.len() <= f.id {
                self.flow_seen.resize(f.id + 1, (u8::MAX, 0));
            }
            if self.flow_seen[f.id] == now {
                continue;
            }
            self.flow_seen[f.id] = now;
            let name = &f.spec.name;
            let mut c = |n: &str, value: u64| {
                out.push(Counter {
                    name: n.into(),
                    port: Some(name.clone()),
                    value,
                })
            };
            c("flow_state", state as u64);
            c("flow_tx_bytes", ld(&st.sent_bytes));
            c("flow_rx_bytes", now.1);
            c("flow_started_ms", wall(ld(&st.started_ns)));
            c(
                "flow_finished_ms",
                if state == crate::flows::State::Finished {
                    wall(ld(&st.finished_ns))
                } else {
                    0
                },
            );
            c("flow_fct_us", st.fct_ns().map_or(0, |n| n.div_ceil(1000)));
        }
        out
    }
}

impl Dataplane for EmuDataplane {
    fn apply(&mut self, config: &Config, _: &[Change]) {
        // Against what the emulation runs (seeded at `up`), not the agent's previous view:
        // the agent's first update is everything, most of it already running.
        let changes = self.last.diff(config);
        let mut dirs: Vec<(usize, Option<LinkDir>)> = Vec::new();
        let mut routers: BTreeSet<String> = BTreeSet::new();
        for change in changes {
            match change {
                Change::Link(row) => match self.dir_index(&row) {
                    Ok(d) => dirs.push((d, Some(row))),
                    Err(why) => self.ignore(why),
                },
                Change::LinkGone(id) => {
                    if let Some(row) = self.last.links.get(&id)
                        && let Ok(d) = self.dir_index(row)
                    {
                        dirs.push((d, None));
                    }
                }
                Change::EmuRoute(r) => {
                    if let Some(old) = self.last.emu_routes.get(&r.id) {
                        routers.insert(old.router.clone());
                    }
                    routers.insert(r.router);
                }
                Change::EmuRouteGone(id) => {
                    if let Some(old) = self.last.emu_routes.get(&id) {
                        routers.insert(old.router.clone());
                    }
                }
                Change::EmuFlow(f) => {
                    if self.last.emu_flows.contains_key(&f.id) {
                        self.ignore(format!(
                            "the change to flow row {}: a started flow is not changed (delete \
                             the row and insert another)",
                            f.id
                        ));
                    } else if let Err(why) = self.start_flow(&f) {
                        self.ignore(format!("flow row {}: {why}", f.id));
                    }
                }
                Change::EmuFlowGone(id) => {
                    if let Some(old) = self.last.emu_flows.get(&id)
                        && let Some(f) = self.shared.flows.by_name(&old.flow_name())
                        && f.row == Some(id)
                    {
                        self.flows.stop(&f);
                    }
                }
                // Not the emulator's (the controller sends none).
                _ => {}
            }
        }
        let mut confs = Vec::new();
        for name in routers {
            let Some(r) = self
                .plan
                .node(&name)
                .filter(|&r| self.plan.nodes[r].role == Role::Router)
            else {
                self.ignore(format!(
                    "routes of '{name}': no router of that name is emulated here"
                ));
                continue;
            };
            let rows: Vec<&EmuRoute> = (config.emu_routes.values())
                .filter(|e| e.router == name)
                .collect();
            confs.push((r, self.router_conf(r, &rows)));
        }
        let _ = self.shared.live.update(|live_dirs, live_routers| {
            for (d, row) in dirs {
                let p = match &row {
                    Some(row) => params_from_row(&live_dirs[d], row),
                    None => LinkParams {
                        up: false,
                        ..(*live_dirs[d]).clone()
                    },
                };
                if *live_dirs[d] != p {
                    live_dirs[d] = Arc::new(p);
                }
            }
            for (r, conf) in confs {
                live_routers[r] = Some(Arc::new(conf));
            }
            Ok::<_, ()>(())
        });
        self.shared.poke();
        self.last = config.clone();
        let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        s.updates += 1;
    }

    fn metrics(&mut self) -> Vec<Counter> {
        let mut out = self.flow_counters(MAX_COUNTERS / 2);
        let room = MAX_COUNTERS - out.len();
        let all = self.all_counters();
        if all.len() <= room {
            out.extend(all);
            return out;
        }
        let start = self.cursor % all.len();
        self.cursor = start + room;
        out.extend(all.into_iter().cycle().skip(start).take(room));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topo::{LinkSpec, parse_loss};

    fn params() -> LinkParams {
        LinkSpec {
            rate: Some("50M".into()),
            delay: Some("10.5004ms".into()),
            jitter: Some("1ms".into()),
            loss: Some("gemodel 1% 10% 70% 0.1%".into()),
            ..LinkSpec::default()
        }
        .resolve("link")
        .unwrap()
    }

    #[test]
    fn ids_round_trip() {
        for l in 0..5 {
            for side in 0..2 {
                assert_eq!(dir_of(dir_id(l, side)), Some((l, side)));
            }
        }
        assert_eq!(dir_of(0), None);
    }

    #[test]
    fn a_row_changes_what_it_names_and_keeps_the_rest() {
        let base = params();
        assert_eq!(base.delay_ns, 10_500_400);
        let seeded = row_of(1, "a:eth0".into(), "b:eth0".into(), &base);
        assert_eq!(
            (seeded.delay_us, seeded.jitter_us, seeded.loss_ppm),
            (10_500, 1_000, None)
        );
        // The row as seeded leaves everything as it was, sub-microsecond delay included.
        assert_eq!(params_from_row(&base, &seeded), base);
        let row = |delay_us, loss_ppm| LinkDir {
            delay_us,
            loss_ppm,
            ..seeded.clone()
        };
        let p = params_from_row(&base, &row(20_000, Some(10_000)));
        assert_eq!(p.delay_ns, 20_000_000);
        assert_eq!(p.loss, Loss::Random(0.01));
        assert_eq!(
            (p.sched.clone(), p.drop.clone()),
            (base.sched.clone(), base.drop.clone())
        );
        let none = params_from_row(
            &base,
            &LinkDir {
                jitter_us: 0,
                ..row(0, Some(0))
            },
        );
        assert_eq!(
            (none.delay_ns, none.jitter_ns, none.loss),
            (0, 0, Loss::None)
        );
        assert!(matches!(
            parse_loss("1%").unwrap(),
            Loss::Random(x) if (x - 0.01).abs() < 1e-12
        ));
    }
}
