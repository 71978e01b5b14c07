//! The in-memory store's seed file (`linerate controller --config`): routes, flow pins and
//! port settings per node, as TOML. Every row is checked as the protocol checks it, ids are
//! unique across nodes, and an error names the row.

use linerate_proto::units::parse_rate;
use linerate_proto::{
    Config, Flow, FlowMatch, Mac, PortSettings, Prefix, Route, Scheduler, Shaper, Validate,
};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The `--config` file of the in-memory store.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SeedFile {
    #[serde(default)]
    route: Vec<SeedRoute>,
    #[serde(default)]
    flow: Vec<SeedFlow>,
    #[serde(default)]
    port: Vec<SeedPort>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedRoute {
    node: String,
    id: u64,
    prefix: String,
    port: String,
    next_hop: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedFlow {
    node: String,
    id: u64,
    route: u64,
    src: Option<String>,
    dst: Option<String>,
    proto: Option<u8>,
    src_port: Option<u16>,
    dst_port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedPort {
    node: String,
    port: String,
    /// `fcfs`, `wrr:W1,W2,...` or `drr:Q1,Q2,...`.
    scheduler: Option<String>,
    /// `RATE[,BURST_BYTES]`, rate in bit/s with an optional k/M/G suffix.
    shaper: Option<String>,
    /// bit/s with an optional k/M/G suffix.
    link_rate: Option<String>,
}

fn weights(what: &str, list: &str) -> Result<Vec<u32>, String> {
    list.split(',')
        .map(|w| {
            w.trim()
                .parse()
                .map_err(|_| format!("{what}: '{w}' is not a number"))
        })
        .collect()
}

/// The text of a seed file as one configuration per node, every row checked; an error is one
/// sentence naming the row (the fuzz target's entry point: never panics).
pub fn parse(text: &str) -> Result<BTreeMap<String, Config>, String> {
    let seed: SeedFile = toml::from_str(text).map_err(|e| format!("not a valid seed file: {e}"))?;
    let mut nodes: BTreeMap<String, Config> = BTreeMap::new();
    for r in seed.route {
        let what = format!("route {} of node '{}'", r.id, r.node);
        let route = Route {
            id: r.id,
            prefix: r
                .prefix
                .parse::<Prefix>()
                .map_err(|e| format!("{what}: {e}"))?,
            port: r.port,
            next_hop: r
                .next_hop
                .parse::<Mac>()
                .map_err(|e| format!("{what}: {e}"))?,
            weight: r.weight,
        };
        route.validate().map_err(|e| format!("{what}: {e}"))?;
        let c = nodes.entry(r.node).or_default();
        if c.routes.insert(route.id, route).is_some() {
            return Err(format!("{what}: the id is used twice"));
        }
    }
    for f in seed.flow {
        let what = format!("flow {} of node '{}'", f.id, f.node);
        let prefix = |p: Option<String>| -> Result<Option<Prefix>, String> {
            p.map(|p| p.parse().map_err(|e| format!("{what}: {e}")))
                .transpose()
        };
        let flow = Flow {
            id: f.id,
            matcher: FlowMatch {
                src: prefix(f.src)?,
                dst: prefix(f.dst)?,
                proto: f.proto,
                src_port: f.src_port,
                dst_port: f.dst_port,
            },
            route: f.route,
        };
        flow.validate().map_err(|e| format!("{what}: {e}"))?;
        let c = nodes.entry(f.node).or_default();
        if !c.routes.contains_key(&flow.route) {
            return Err(format!(
                "{what}: route {} is not a route of this node",
                flow.route
            ));
        }
        if c.flows.insert(flow.id, flow).is_some() {
            return Err(format!("{what}: the id is used twice"));
        }
    }
    for p in seed.port {
        let what = format!("port {} of node '{}'", p.port, p.node);
        let scheduler = match p
            .scheduler
            .as_deref()
            .map(|s| s.split_once(':').unwrap_or((s, "")))
        {
            None | Some(("fcfs", "")) => Scheduler::Fcfs,
            Some(("wrr", w)) => Scheduler::Wrr(weights(&what, w)?),
            Some(("drr", q)) => Scheduler::Drr(weights(&what, q)?),
            Some((other, _)) => {
                return Err(format!(
                    "{what}: scheduler '{other}' is not fcfs, wrr:W,.. or drr:Q,.."
                ));
            }
        };
        let shaper = match p.shaper {
            None => None,
            Some(s) => {
                let (rate, burst) = s.split_once(',').unwrap_or((&s, "15000"));
                Some(Shaper {
                    rate_bps: parse_rate(rate.trim()).map_err(|e| format!("{what}: {e}"))? as u64,
                    burst_bytes: burst
                        .trim()
                        .parse()
                        .map_err(|_| format!("{what}: burst '{burst}' is not a byte count"))?,
                })
            }
        };
        let link_rate_bps = (p.link_rate.as_deref())
            .map(|r| {
                parse_rate(r)
                    .map(|r| r as u64)
                    .map_err(|e| format!("{what}: {e}"))
            })
            .transpose()?;
        let settings = PortSettings {
            port: p.port,
            scheduler,
            shaper,
            link_rate_bps,
        };
        settings.validate().map_err(|e| format!("{what}: {e}"))?;
        let c = nodes.entry(p.node).or_default();
        if c.ports.insert(settings.port.clone(), settings).is_some() {
            return Err(format!("{what}: given twice"));
        }
    }
    // The store keys routes and flows by id across nodes: one id on two nodes would move
    // between them at every reload.
    let (mut routes, mut flows) = (BTreeMap::new(), BTreeMap::new());
    for (node, c) in &nodes {
        linerate_proto::check_name("node", node).map_err(|e| format!("node '{node}': {e}"))?;
        for id in c.routes.keys() {
            if let Some(other) = routes.insert(*id, node) {
                return Err(format!(
                    "route id {id} is used by nodes '{other}' and '{node}'"
                ));
            }
        }
        for id in c.flows.keys() {
            if let Some(other) = flows.insert(*id, node) {
                return Err(format!(
                    "flow id {id} is used by nodes '{other}' and '{node}'"
                ));
            }
        }
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(text: &str) -> Result<BTreeMap<String, Config>, String> {
        parse(text)
    }

    #[test]
    fn a_seed_file_becomes_one_config_per_node() {
        let nodes = seed(
            r#"
            [[route]]
            node = "r1"
            id = 1
            prefix = "10.0.0.0/24"
            port = "veth1"
            next_hop = "02:00:00:00:00:01"
            [[route]]
            node = "r2"
            id = 2
            prefix = "2001:db8::/64"
            port = "veth2"
            next_hop = "02:00:00:00:00:02"
            weight = 3
            [[flow]]
            node = "r1"
            id = 5
            route = 1
            dst = "10.0.0.9"
            proto = 17
            dst_port = 53
            [[port]]
            node = "r1"
            port = "veth1"
            scheduler = "wrr:3,1"
            shaper = "100M,30000"
            link_rate = "10G"
            "#,
        )
        .unwrap();
        assert_eq!(nodes.len(), 2);
        let r1 = &nodes["r1"];
        assert_eq!(r1.flows[&5].matcher.dst.unwrap().len, 32);
        assert_eq!(r1.ports["veth1"].scheduler, Scheduler::Wrr(vec![3, 1]));
        assert_eq!(r1.ports["veth1"].shaper.unwrap().rate_bps, 100_000_000);
        assert_eq!(r1.ports["veth1"].link_rate_bps, Some(10_000_000_000));
        assert_eq!(nodes["r2"].routes[&2].weight, 3);
    }

    #[test]
    fn bad_seed_rows_are_named() {
        let cases = [
            (
                "[[route]]\nnode='a'\nid=1\nprefix='10.0.0.1/8'\nport='x'\nnext_hop='02:00:00:00:00:01'",
                "host bits",
            ),
            (
                "[[route]]\nnode='a'\nid=1\nprefix='10.0.0.0/8'\nport='x'\nnext_hop='zz'",
                "not a MAC",
            ),
            (
                "[[route]]\nnode='a'\nid=1\nprefix='10.0.0.0/8'\nport='x'\nnext_hop='02:00:00:00:00:01'\nweight=0",
                "weight",
            ),
            (
                "[[flow]]\nnode='a'\nid=1\nroute=9",
                "route 9 is not a route of this node",
            ),
            (
                "[[port]]\nnode='a'\nport='x'\nscheduler='fifo'",
                "scheduler 'fifo'",
            ),
            (
                "[[route]]\nnode='a b'\nid=1\nprefix='10.0.0.0/8'\nport='x'\nnext_hop='02:00:00:00:00:01'",
                "node 'a b'",
            ),
            ("[[rout]]\nnode='a'", "unknown field"),
            (
                "[[route]]\nnode='a'\nid=1\nprefix='10.0.0.0/8'\nport='x'\nnext_hop='02:00:00:00:00:01'\n\
              [[route]]\nnode='b'\nid=1\nprefix='10.0.0.0/8'\nport='x'\nnext_hop='02:00:00:00:00:01'",
                "route id 1 is used by nodes 'a' and 'b'",
            ),
        ];
        for (text, want) in cases {
            let e = format!("{:#}", seed(text).unwrap_err());
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
