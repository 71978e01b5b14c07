//! The dataplane side of the control agent: turns a node's configuration from the controller
//! into router logic and publishes it to the workers as one snapshot, and reads the workers'
//! counters for the metrics reports.
//!
//! Runs on the agent's thread. Workers see the new logic at their next batch through
//! [`ReloadHandle`] (one atomic load per batch); nothing here touches a worker's state.

use linerate_agent::Dataplane;
use linerate_dataplane::counters::{Counts, WorkerCounters};
use linerate_dataplane::logic::filter::{Action, Prefix, Rule};
use linerate_dataplane::logic::{Acl, AnyLogic, NextHop, NextHopId, ReloadHandle, Router};
use linerate_dataplane::port::LiveSettings;
use linerate_dataplane::sched::Discipline;
use linerate_dataplane::verdict::DropReason;
use linerate_proto::{self as proto, Config, Counter};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// What every `fwd` node applies: routes and flow pins, and it reports metrics. A node whose
/// ports have schedulers (`--sched`, `--shape`) also takes port settings
/// ([`proto::Capability::Scheduler`], [`proto::Capability::Shaper`]) for those ports.
pub const CAPABILITIES: [proto::Capability; 3] = [
    proto::Capability::Routes,
    proto::Capability::Flows,
    proto::Capability::Metrics,
];

/// Flow pins a node applies: every routed packet scans them in order, so they stay few.
pub const MAX_PINS: usize = 256;

/// The largest next-hop id a route can take (group ids start above it).
const GROUP_BASE: NextHopId = 0x8000;

/// Builds router logic from `config` for a node whose ports are `ports` (interface names)
/// with MAC addresses `macs`. Rows that cannot apply here (an unknown port, a flow on a
/// missing route) are left out and described in the returned warnings.
pub fn logic_from(
    config: &Config,
    ports: &[String],
    macs: &[[u8; 6]],
    ttl: bool,
) -> (AnyLogic, Vec<String>) {
    let mut warnings = Vec::new();
    let mut router = Router::new();
    // Route id -> next hop id; prefixes with several routes become weighted groups.
    let mut hop_of = std::collections::HashMap::new();
    let mut prefixes: BTreeMap<proto::Prefix, Vec<(NextHopId, u32)>> = BTreeMap::new();
    for (i, r) in config.routes.values().enumerate() {
        let Some(port) = ports.iter().position(|p| *p == r.port) else {
            warnings.push(format!(
                "route {} ({}): port '{}' is not one of this node's ports ({})",
                r.id,
                r.prefix,
                r.port,
                ports.join(", ")
            ));
            continue;
        };
        let id = match NextHopId::try_from(i) {
            Ok(id) if id < GROUP_BASE => id,
            _ => {
                warnings.push(format!("route {}: more than 32768 routes", r.id));
                continue;
            }
        };
        router.set_next_hop(
            id,
            NextHop {
                port: port as u16,
                dst_mac: r.next_hop.0,
                src_mac: macs[port],
            },
        );
        hop_of.insert(r.id, id);
        prefixes.entry(r.prefix).or_default().push((id, r.weight));
    }
    for (g, (prefix, members)) in prefixes.into_iter().enumerate() {
        let target = if let [(only, _)] = members[..] {
            only
        } else {
            let gid = GROUP_BASE + g as NextHopId;
            if let Err(e) = router.set_group(gid, members) {
                warnings.push(format!("routes for {prefix}: {e}"));
                continue;
            }
            gid
        };
        if let Err(e) = router.add_route(prefix.addr, prefix.len, target) {
            warnings.push(format!("route for {prefix}: {e}"));
        }
    }
    let mut pins = Vec::new();
    for f in config.flows.values() {
        if pins.len() == MAX_PINS {
            warnings.push(format!(
                "flow {} and later: more than {MAX_PINS} flow pins (each routed packet scans them)",
                f.id
            ));
            break;
        }
        let Some(&hop) = hop_of.get(&f.route) else {
            warnings.push(format!(
                "flow {}: route {} is not one of this node's usable routes",
                f.id, f.route
            ));
            continue;
        };
        let m = &f.matcher;
        // A prefix the filter refuses must not turn into "any": the pin is left out instead.
        let prefix = |p: Option<proto::Prefix>| p.map(|p| Prefix::new(p.addr, p.len)).transpose();
        let (Ok(src), Ok(dst)) = (prefix(m.src), prefix(m.dst)) else {
            warnings.push(format!("flow {}: a prefix this node cannot match", f.id));
            continue;
        };
        pins.push((
            Rule {
                proto: m.proto,
                src,
                dst,
                src_ports: m.src_port.map_or(0..=u16::MAX, |p| p..=p),
                dst_ports: m.dst_port.map_or(0..=u16::MAX, |p| p..=p),
                ..Rule::any(Action::Permit)
            },
            hop,
        ));
    }
    router.set_pins(pins);
    (AnyLogic::new(router).with_ttl_decrement(ttl), warnings)
}

/// A scheduled port's discipline and shaper (total bit/s, burst bytes) as `fwd` started it:
/// what the port returns to when the controller no longer sets it.
pub type StartupSettings = (Discipline, Option<(f64, u32)>);

/// The [`Dataplane`] a `fwd` node hands to its agent.
pub struct FwdNode {
    /// Each scheduled port: its interface, the cell its workers read, its startup settings.
    pub live: Vec<(String, Arc<LiveSettings>, StartupSettings)>,
    /// The port settings applied last, so an update that does not touch them leaves the
    /// schedulers alone.
    pub applied_ports: BTreeMap<String, proto::PortSettings>,
    /// The configuration applied last (its routes and flows decide whether the logic changes).
    pub last: Option<Arc<Config>>,
    pub handle: ReloadHandle<AnyLogic>,
    pub ports: Vec<String>,
    pub macs: Vec<[u8; 6]>,
    pub ttl: bool,
    /// `--filter`, kept in front of every logic the controller's updates build.
    pub acl: Option<Acl>,
    /// Set after each publish: the main loop invalidates flows cached in the XDP program.
    pub published: Arc<AtomicBool>,
    /// The workers' counters, once they run.
    pub counters: Arc<OnceLock<Vec<Arc<WorkerCounters>>>>,
}

impl FwdNode {
    /// Publishes each scheduled port's settings that changed; a port the configuration no
    /// longer sets goes back to its startup settings. Settings are compared without the link
    /// rate (which `fwd` does not use), and remembered whether they applied or were refused,
    /// so an unrelated update neither resets a shaper's bucket nor repeats a complaint.
    fn apply_ports(&mut self, config: &Config) {
        let unused = |p: &proto::PortSettings| proto::PortSettings {
            link_rate_bps: None,
            ..p.clone()
        };
        for p in config.ports.values() {
            let known = self.live.iter().any(|(name, _, _)| *name == p.port);
            if !known && self.applied_ports.get(&p.port) != Some(&unused(p)) {
                eprintln!(
                    "fwd: controller: port settings for '{}' ignored: it is not a port with a \
                     scheduler here (start fwd with --sched or --shape for it)",
                    p.port
                );
                self.applied_ports.insert(p.port.clone(), unused(p));
            }
        }
        for (name, cell, startup) in &self.live {
            let want = config.ports.get(name).map(unused);
            if want.as_ref() == self.applied_ports.get(name) {
                continue;
            }
            let (discipline, shaper) = match &want {
                Some(p) => (
                    match &p.scheduler {
                        // FCFS on a port with classes would leave every class but the first
                        // unserved: it means "no say on the discipline", which stays.
                        proto::Scheduler::Fcfs if cell.classes() > 1 => startup.0.clone(),
                        proto::Scheduler::Fcfs => Discipline::Fcfs,
                        proto::Scheduler::Wrr(w) => Discipline::Wrr(w.clone()),
                        proto::Scheduler::Drr(q) => Discipline::Drr(q.clone()),
                    },
                    p.shaper.map(|s| (s.rate_bps as f64, s.burst_bytes)),
                ),
                None => startup.clone(),
            };
            match cell.publish(discipline, shaper) {
                Ok(_) => eprintln!(
                    "fwd: controller: port {name}: {} applied",
                    if want.is_some() {
                        "new settings"
                    } else {
                        "startup settings"
                    }
                ),
                Err(e) => eprintln!("fwd: controller: port {name}: settings refused: {e}"),
            }
            match want {
                Some(p) => self.applied_ports.insert(name.clone(), p),
                None => self.applied_ports.remove(name),
            };
        }
    }
}

impl Dataplane for FwdNode {
    fn apply(&mut self, config: &Arc<Config>) {
        // An update that changes only port settings keeps the routes, and the flows the XDP
        // program cached under them.
        let logic_changed = self
            .last
            .as_ref()
            .is_none_or(|l| l.routes != config.routes || l.flows != config.flows);
        self.last = Some(config.clone());
        if logic_changed {
            let (logic, warnings) = logic_from(config, &self.ports, &self.macs, self.ttl);
            for w in warnings {
                eprintln!("fwd: controller: {w}");
            }
            let logic = match &self.acl {
                Some(acl) => logic.with_acl(acl.clone()),
                None => logic,
            };
            let version = self.handle.publish(logic);
            self.published.store(true, Ordering::Release);
            eprintln!(
                "fwd: controller: {} route(s), {} flow pin(s) applied (logic version {version})",
                config.routes.len(),
                config.flows.len()
            );
        }
        self.apply_ports(config);
    }

    fn metrics(&mut self) -> Vec<Counter> {
        let Some(counters) = self.counters.get() else {
            return Vec::new();
        };
        let mut c = Counts::default();
        for w in counters {
            c.add(&w.read());
        }
        let counter = |name: &str, value| Counter {
            name: name.to_string(),
            port: None,
            value,
        };
        let mut out = vec![
            counter("rx_packets", c.rx),
            counter("rx_bytes", c.rx_bytes),
            counter("tx_packets", c.tx),
            counter("tx_bytes", c.tx_bytes),
            counter("dropped", c.dropped()),
        ];
        for r in DropReason::ALL {
            out.push(counter(&format!("drop_{}", r.name()), c.drops_of(r)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linerate_dataplane::logic::Logic;
    use linerate_dataplane::logic::test_frames;
    use linerate_dataplane::verdict::Verdict;
    use linerate_proto::{Flow, FlowMatch, Mac, Route};

    fn route(id: u64, prefix: &str, port: &str, mac: u8, weight: u32) -> Route {
        Route {
            id,
            prefix: prefix.parse().unwrap(),
            port: port.into(),
            next_hop: Mac([2, 0, 0, 0, 0, mac]),
            weight,
        }
    }

    #[test]
    fn routes_groups_and_pins_become_one_router() {
        let mut c = Config::default();
        for r in [
            route(10, "10.0.0.0/8", "a", 1, 1),
            route(11, "10.9.0.0/16", "b", 2, 1),
            route(12, "10.9.0.0/16", "c", 3, 1),
            route(13, "192.168.0.0/16", "nope", 4, 1),
        ] {
            c.routes.insert(r.id, r);
        }
        c.flows.insert(
            1,
            Flow {
                id: 1,
                matcher: FlowMatch {
                    dst: Some("10.1.1.1/32".parse().unwrap()),
                    dst_port: Some(80),
                    ..FlowMatch::default()
                },
                route: 11,
            },
        );
        c.flows.insert(
            2,
            Flow {
                id: 2,
                matcher: FlowMatch::default(),
                route: 99,
            },
        );
        let ports = ["a".to_string(), "b".into(), "c".into()];
        let macs = [[0xaa; 6], [0xbb; 6], [0xcc; 6]];
        let (mut logic, warnings) = logic_from(&c, &ports, &macs, false);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("port 'nope'"));
        assert!(warnings[1].contains("flow 2"));
        let mut verdict = |dst: &str, dport: u16| {
            let (mut f, h) = test_frames::ipv4("192.0.2.1", dst, 64, 6, 1234, dport);
            let v = logic.decide(&mut f, &h, 0);
            (v, f[5], f[6])
        };
        assert_eq!(verdict("10.1.1.1", 443), (Verdict::Forward(0), 1, 0xaa));
        // Pinned to route 11 (port b) though 10/8 says port a.
        assert_eq!(verdict("10.1.1.1", 80), (Verdict::Forward(1), 2, 0xbb));
        // The /16 is a group over b and c.
        let (v, _, _) = verdict("10.9.1.1", 80);
        assert!(matches!(v, Verdict::Forward(1 | 2)), "{v:?}");
        assert!(matches!(verdict("192.168.1.1", 80).0, Verdict::Drop(_)));
    }

    #[test]
    fn port_settings_apply_once_and_keep_a_multi_class_discipline_and_the_routes() {
        let handle = ReloadHandle::new(AnyLogic::new(Router::new()));
        let cell = LiveSettings::new(2, 2);
        let startup = (Discipline::Wrr(vec![1, 2]), Some((1e8, 15_000)));
        let mut node = FwdNode {
            live: vec![("b".into(), cell.clone(), startup.clone())],
            applied_ports: BTreeMap::new(),
            last: None,
            handle: handle.clone(),
            ports: vec!["a".into(), "b".into()],
            macs: vec![[0xaa; 6], [0xbb; 6]],
            ttl: false,
            acl: None,
            published: Arc::new(AtomicBool::new(false)),
            counters: Arc::new(OnceLock::new()),
        };
        let mut c = Config::default();
        c.routes.insert(1, route(1, "10.0.0.0/8", "a", 1, 1));
        let shaped = |link| proto::PortSettings {
            port: "b".into(),
            scheduler: proto::Scheduler::Fcfs,
            shaper: Some(proto::Shaper {
                rate_bps: 200_000_000,
                burst_bytes: 30_000,
            }),
            link_rate_bps: link,
        };
        c.ports.insert("b".into(), shaped(None));
        node.apply(&Arc::new(c.clone()));
        assert_eq!(handle.version(), 1);
        // FCFS on a two-class port keeps the port's own discipline; the shaper changes.
        assert_eq!(
            cell.current(),
            (1, Discipline::Wrr(vec![1, 2]), Some((2e8, 30_000)))
        );
        // A new link rate (unused here) changes nothing: no new settings, no new logic.
        c.ports.insert("b".into(), shaped(Some(10_000_000_000)));
        node.apply(&Arc::new(c.clone()));
        assert_eq!((cell.current().0, handle.version()), (1, 1));
        // A route change republishes the logic and leaves the port alone.
        c.routes.insert(2, route(2, "10.9.0.0/16", "b", 2, 1));
        node.apply(&Arc::new(c.clone()));
        assert_eq!((cell.current().0, handle.version()), (1, 2));
        // Settings withdrawn: back to the startup ones.
        c.ports.clear();
        node.apply(&Arc::new(c));
        assert_eq!(
            cell.current(),
            (2, Discipline::Wrr(vec![1, 2]), Some((1e8, 15_000)))
        );
        assert_eq!(handle.version(), 2);
    }
}
