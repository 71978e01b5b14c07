//! Looking inside a running `fwd`: its routing table, the flows max mode cached in the kernel,
//! counters per worker, port and class, and the XDP program's. Asked by the metrics endpoint
//! and `linerate show` through [`Ask`]; answered by the control loop at its next round (every
//! 20 ms), which owns the steering programs and the logic handle, so nothing is shared with
//! the workers and no worker waits.
//!
//! Never: answers from a worker thread; holds a lock a worker takes.

use linerate_dataplane::counters::Counts;
use linerate_dataplane::logic::{AnyLogic, Base};
use linerate_dataplane::report::ClassReport;
use linerate_dataplane::verdict::DropReason;
use linerate_ebpf::Action;
use linerate_ebpf::abi::{FlowEntry, FlowKey};
use serde::Serialize;
use std::net::IpAddr;
use std::sync::mpsc::SyncSender;

/// What is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Counters,
    Routes,
    Flows,
}

/// A question for the control loop; the answer goes back on `reply`.
pub struct Ask {
    pub what: What,
    pub reply: SyncSender<Answer>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Counters(Counters),
    Routes(Routes),
    Flows(Vec<Flow>),
    /// The question could not be answered (a map that cannot be read): why.
    Failed {
        error: String,
    },
}

/// Counters as of now.
#[derive(Debug, Serialize, Default)]
pub struct Counters {
    pub uptime_s: f64,
    pub logic_version: u64,
    /// Logic replacements since start (SIGHUP reloads and controller updates).
    pub reloads: u64,
    pub workers: Vec<WorkerCounters>,
    pub ports: Vec<PortCounters>,
    /// Per port and class: as `ClassReport::json` writes it.
    #[serde(serialize_with = "classes_json")]
    pub classes: Vec<ClassReport>,
    /// Max mode: flows cached in the kernel now, and since start: installed, aged out,
    /// refused by a full map.
    pub flows_cached: u64,
    pub flows_installed: u64,
    pub flows_aged: u64,
    pub flows_refused: u64,
}

fn classes_json<S: serde::Serializer>(c: &[ClassReport], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(c.iter().map(ClassReport::json))
}

#[derive(Debug, Serialize, Default)]
pub struct WorkerCounters {
    pub worker: usize,
    pub rx: u64,
    pub rx_bytes: u64,
    pub tx: u64,
    pub tx_bytes: u64,
    pub handoff_out: u64,
    pub handoff_in: u64,
    /// Drops by cause (`DropReason::name`).
    pub drops: Vec<(&'static str, u64)>,
}

impl WorkerCounters {
    pub fn new(worker: usize, c: &Counts) -> WorkerCounters {
        WorkerCounters {
            worker,
            rx: c.rx,
            rx_bytes: c.rx_bytes,
            tx: c.tx,
            tx_bytes: c.tx_bytes,
            handoff_out: c.handoff_out,
            handoff_in: c.handoff_in,
            drops: (DropReason::ALL.iter())
                .map(|r| (r.name(), c.drops_of(*r)))
                .collect(),
        }
    }
}

/// One interface: what its XDP program did (by action) and what the kernel dropped on it.
#[derive(Debug, Serialize, Default)]
pub struct PortCounters {
    pub port: String,
    /// (action name, packets, bytes) per `Action`.
    pub xdp: Vec<(&'static str, u64, u64)>,
    pub kernel_rx_dropped: u64,
    pub kernel_tx_dropped: u64,
}

/// The routing table of the logic in use.
#[derive(Debug, Serialize, Default)]
pub struct Routes {
    /// `router`, `static` or `bridge` (only a router has routes).
    pub logic: &'static str,
    pub logic_version: u64,
    pub routes: Vec<Route>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Route {
    pub prefix: String,
    /// Each next hop (one, or a group's members with their weights).
    pub via: Vec<Via>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Via {
    pub port: String,
    pub dst_mac: String,
    pub src_mac: String,
    pub weight: u32,
}

/// A flow max mode cached in an XDP program.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Flow {
    /// The port it arrives on (whose program cached it) and the one it leaves by.
    pub in_port: String,
    pub out_port: String,
    pub proto: u8,
    pub src: String,
    pub dst: String,
    pub sport: u16,
    pub dport: u16,
    pub dec_ttl: bool,
    pub packets: u64,
    pub bytes: u64,
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn port_name(ports: &[String], i: usize) -> String {
    ports.get(i).cloned().unwrap_or_else(|| format!("#{i}"))
}

/// The routes of `logic` (port names from `ports`), sorted by prefix.
pub fn routes(logic: &AnyLogic, version: u64, ports: &[String]) -> Routes {
    let r = match logic.base() {
        Base::Router(r) => r,
        Base::Static(_) => {
            return Routes {
                logic: "static",
                logic_version: version,
                routes: Vec::new(),
            };
        }
        Base::Bridge(_) => {
            return Routes {
                logic: "bridge",
                logic_version: version,
                routes: Vec::new(),
            };
        }
    };
    let via = |id| -> Vec<Via> {
        let one = |id, weight| {
            r.next_hop(id).map(|nh| Via {
                port: port_name(ports, nh.port as usize),
                dst_mac: mac(nh.dst_mac),
                src_mac: mac(nh.src_mac),
                weight,
            })
        };
        match r.group(id) {
            Some(members) => members.iter().filter_map(|&(m, w)| one(m, w)).collect(),
            None => one(id, 1).into_iter().collect(),
        }
    };
    let v4 = (r.lpm4().routes()).map(|(p, len, id)| (IpAddr::from(p), len, id));
    let v6 = (r.lpm6().routes()).map(|(p, len, id)| (IpAddr::from(p), len, id));
    let mut routes: Vec<(IpAddr, u8, Route)> = (v4.chain(v6))
        .map(|(p, len, id)| {
            let prefix = format!("{p}/{len}");
            (
                p,
                len,
                Route {
                    prefix,
                    via: via(id),
                },
            )
        })
        .collect();
    routes.sort_by_key(|a| (a.0, a.1));
    Routes {
        logic: "router",
        logic_version: version,
        routes: routes.into_iter().map(|(_, _, r)| r).collect(),
    }
}

/// A cached flow as shown.
pub fn flow(ports: &[String], in_port: usize, k: &FlowKey, e: &FlowEntry) -> Flow {
    let addr = |a: [u8; 16]| -> String {
        if k.family == 4 {
            IpAddr::from([a[0], a[1], a[2], a[3]]).to_string()
        } else {
            IpAddr::from(a).to_string()
        }
    };
    Flow {
        in_port: port_name(ports, in_port),
        out_port: port_name(ports, e.port as usize),
        proto: k.proto,
        src: addr(k.src),
        dst: addr(k.dst),
        sport: u16::from_be(k.sport_be),
        dport: u16::from_be(k.dport_be),
        dec_ttl: e.dec_ttl != 0,
        packets: e.packets,
        bytes: e.bytes,
    }
}

/// The XDP program's counters of one port, by action.
pub fn xdp_counts(
    c: &[linerate_ebpf::abi::Counter; Action::COUNT],
) -> Vec<(&'static str, u64, u64)> {
    (Action::ALL.iter())
        .map(|a| (a.name(), c[*a as usize].packets, c[*a as usize].bytes))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use linerate_dataplane::logic::{NextHop, Router};

    #[test]
    fn routes_are_listed_by_prefix_with_their_next_hops() {
        let mut r = Router::new();
        r.set_next_hop(
            0,
            NextHop {
                port: 1,
                dst_mac: [2, 0, 0, 0, 0, 1],
                src_mac: [2, 0, 0, 0, 0, 2],
            },
        );
        r.add_route("10.0.0.0".parse().unwrap(), 8, 0).unwrap();
        r.add_route("2001:db8::".parse().unwrap(), 32, 0).unwrap();
        r.add_route("0.0.0.0".parse().unwrap(), 0, 0).unwrap();
        let ports = vec!["a".to_string(), "b".to_string()];
        let got = routes(&AnyLogic::new(r), 3, &ports);
        let prefixes: Vec<&str> = got.routes.iter().map(|r| r.prefix.as_str()).collect();
        assert_eq!(prefixes, ["0.0.0.0/0", "10.0.0.0/8", "2001:db8::/32"]);
        assert_eq!(got.routes[1].via[0].port, "b");
        assert_eq!(got.routes[1].via[0].dst_mac, "02:00:00:00:00:01");
        assert_eq!(got.logic_version, 3);
    }

    #[test]
    fn a_flow_key_reads_back_in_its_family() {
        let mut k = FlowKey {
            family: 4,
            proto: 17,
            sport_be: 1234u16.to_be(),
            dport_be: 9u16.to_be(),
            ..FlowKey::default()
        };
        k.src[..4].copy_from_slice(&[10, 0, 0, 1]);
        k.dst[..4].copy_from_slice(&[10, 1, 0, 2]);
        let e = FlowEntry {
            port: 1,
            packets: 5,
            ..FlowEntry::default()
        };
        let f = flow(&["a".into(), "b".into()], 0, &k, &e);
        assert_eq!((f.src.as_str(), f.dst.as_str()), ("10.0.0.1", "10.1.0.2"));
        assert_eq!(
            (f.sport, f.dport, f.in_port.as_str(), f.out_port.as_str()),
            (1234, 9, "a", "b")
        );
    }
}
