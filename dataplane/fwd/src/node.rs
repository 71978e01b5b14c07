//! The dataplane side of the control agent: applies each update from the controller to the
//! node's routing state ([`crate::fib::Fib`], change by change) and publishes the result to
//! the workers as one snapshot, and reads the workers' counters for the metrics reports.
//!
//! Runs on the agent's thread. Workers see the new logic at their next batch through
//! [`ReloadHandle`] (one atomic load per batch); nothing here touches a worker's state.

use crate::fib::{Fib, Stale};
use linerate_agent::Dataplane;
use linerate_dataplane::counters::{Counts, WorkerCounters};
use linerate_dataplane::logic::{Acl, AnyLogic, ReloadHandle};
use linerate_dataplane::port::LiveSettings;
use linerate_dataplane::sched::Discipline;
use linerate_dataplane::verdict::DropReason;
use linerate_proto::{self as proto, Change, Config, Counter};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// What every `fwd` node applies: routes and flow pins, and it reports metrics. A node whose
/// ports have schedulers (`--sched`, `--shape`) also takes port settings
/// ([`proto::Capability::Scheduler`], [`proto::Capability::Shaper`]) for those ports.
pub const CAPABILITIES: [proto::Capability; 3] = [
    proto::Capability::Routes,
    proto::Capability::Flows,
    proto::Capability::Metrics,
];

pub use crate::fib::{MAX_PINS, logic_from};

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
    /// The routes and flow pins, changed update by update.
    pub fib: Fib,
    /// Whether the controller's logic has been published yet (its first update always is).
    pub published_once: bool,
    pub handle: ReloadHandle<AnyLogic>,
    /// `--filter`, kept in front of every logic the controller's updates build.
    pub acl: Option<Acl>,
    /// What the updates published since the main loop last looked made stale, and how many
    /// there were: the main loop drops the flows the XDP program cached under them.
    pub published: Arc<Mutex<(u64, Stale)>>,
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
                tracing::warn!(
                    "controller: port settings for '{}' ignored: it is not a port with a \
                     scheduler here (start fwd with --sched or --shape for it)",
                    p.port
                );
                self.applied_ports.insert(p.port.clone(), unused(p));
            }
        }
        for (name, cell, startup) in &self.live {
            // What is logged about this port carries it as a span.
            let _port = tracing::info_span!("port", port = %name).entered();
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
                Ok(_) => tracing::info!(
                    "controller: port {name}: {} applied",
                    if want.is_some() {
                        "new settings"
                    } else {
                        "startup settings"
                    }
                ),
                Err(e) => tracing::warn!("controller: port {name}: settings refused: {e}"),
            }
            match want {
                Some(p) => self.applied_ports.insert(name.clone(), p),
                None => self.applied_ports.remove(name),
            };
        }
    }
}

impl Dataplane for FwdNode {
    fn apply(&mut self, config: &Config, changes: &[Change]) {
        // An update that changes only port settings keeps the routes, and the flows the XDP
        // program cached under them.
        let routing = changes.iter().any(|c| {
            matches!(
                c,
                Change::Route(_) | Change::RouteGone(_) | Change::Flow(_) | Change::FlowGone(_)
            )
        });
        if routing || !self.published_once {
            let (mut stale, warnings) = self.fib.apply(changes, config);
            for w in warnings {
                tracing::warn!("controller: {w}");
            }
            if !self.published_once {
                // Replaces the logic fwd started with: nothing cached before holds.
                stale.all = true;
            }
            self.published_once = true;
            let logic = self.fib.logic();
            let logic = match &self.acl {
                Some(acl) => logic.with_acl(acl.clone()),
                None => logic,
            };
            let version = self.handle.publish(logic);
            {
                let mut p = self
                    .published
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                p.0 += 1;
                p.1.merge(stale);
            }
            // One line per update while it is few rows; a full table arriving at once says so
            // once, not per route.
            if changes.len() <= 16 || version <= 1 {
                tracing::info!(
                    "controller: {} change(s): {} route(s), {} flow pin(s) applied \
                     (logic version {version})",
                    changes.len(),
                    self.fib.routes(),
                    self.fib.router().pins().len()
                );
            }
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
    use crate::fib::tests::route;
    use linerate_dataplane::logic::test_frames;
    use linerate_dataplane::logic::{Logic, Router};
    use linerate_dataplane::verdict::Verdict;
    use linerate_proto::{Flow, FlowMatch};

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
        let published = Arc::new(Mutex::new((0, Stale::default())));
        let mut node = FwdNode {
            live: vec![("b".into(), cell.clone(), startup.clone())],
            applied_ports: BTreeMap::new(),
            fib: Fib::new(
                vec!["a".into(), "b".into()],
                vec![[0xaa; 6], [0xbb; 6]],
                false,
            ),
            published_once: false,
            handle: handle.clone(),
            acl: None,
            published: published.clone(),
            counters: Arc::new(OnceLock::new()),
        };
        // What the agent holds: each update hands the node the changes from it.
        let mut held = Config::default();
        let mut feed = |node: &mut FwdNode, c: &Config| {
            let changes = held.diff(c);
            held = c.clone();
            node.apply(c, &changes);
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
        feed(&mut node, &c);
        assert_eq!(handle.version(), 1);
        let take = || std::mem::take(&mut *published.lock().unwrap());
        assert_eq!(
            take(),
            (
                1,
                Stale {
                    all: true,
                    prefixes: vec![]
                }
            ),
            "the first replaces all"
        );
        // FCFS on a two-class port keeps the port's own discipline; the shaper changes.
        assert_eq!(
            cell.current(),
            (1, Discipline::Wrr(vec![1, 2]), Some((2e8, 30_000)))
        );
        // A new link rate (unused here) changes nothing: no new settings, no new logic.
        c.ports.insert("b".into(), shaped(Some(10_000_000_000)));
        feed(&mut node, &c);
        assert_eq!((cell.current().0, handle.version()), (1, 1));
        // A route change republishes the logic and leaves the port alone; only flows to the
        // new route's prefix are stale.
        c.routes.insert(2, route(2, "10.9.0.0/16", "b", 2, 1));
        feed(&mut node, &c);
        assert_eq!((cell.current().0, handle.version()), (1, 2));
        assert_eq!(
            take(),
            (
                1,
                Stale {
                    all: false,
                    prefixes: vec!["10.9.0.0/16".parse().unwrap()]
                }
            )
        );
        // Settings withdrawn: back to the startup ones.
        c.ports.clear();
        feed(&mut node, &c);
        assert_eq!(
            cell.current(),
            (2, Discipline::Wrr(vec![1, 2]), Some((1e8, 15_000)))
        );
        assert_eq!(handle.version(), 2);
    }
}
