//! A [`Topology`] worked out into the network to build: every interface named, with its MAC
//! and address; L2 segments; each router's routes (shortest paths, ECMP, weighted, static,
//! pinned paths); each host's gateway; which worker owns which node; and whether the links'
//! bandwidth-delay products fit the memory given. Pure: no system call, so it is tested
//! without root, and a topology it refuses creates nothing.

use crate::topo::{
    self, Forward, Kind, LinkParams, RoutingMode, TopoError, Topology, check_name, parse_cidr,
};
use std::collections::{BinaryHeap, HashMap};
use std::net::Ipv4Addr;

fn err<T>(s: impl Into<String>) -> Result<T, TopoError> {
    Err(TopoError(s.into()))
}

/// Index of a node in [`Plan::nodes`].
pub type NodeId = usize;
/// Index of a link in [`Plan::links`].
pub type LinkId = usize;

/// Where a node's packets are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A namespace with kernel interfaces: a host, or a router its kernel forwards.
    Namespace,
    /// An emulated IP router inside the emulator.
    Router,
    /// An emulated learning bridge inside the emulator.
    Switch,
}

#[derive(Debug, Clone)]
pub struct Iface {
    pub name: String,
    pub mac: [u8; 6],
    /// Address and prefix length.
    pub addr: Option<(Ipv4Addr, u8)>,
    pub link: LinkId,
    /// Which end of the link (0: `a`, 1: `b`).
    pub side: usize,
    pub segment: usize,
}

/// A route of a router or a kernel-forwarded namespace: to `prefix`, through one of the
/// next hops (several: multipath, flows spread by weight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: (Ipv4Addr, u8),
    pub hops: Vec<NextHop>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NextHop {
    /// This node's interface (index into its `ifaces`).
    pub iface: usize,
    /// The neighbour packets go to, and its interface on the shared segment.
    pub node: NodeId,
    pub node_iface: usize,
    pub weight: u32,
}

/// A pinned path's rule on one router: packets matching `rule` go to `hop`.
#[derive(Debug, Clone)]
pub struct Pin {
    pub rule: String,
    pub hop: NextHop,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub kind: Kind,
    pub role: Role,
    pub ifaces: Vec<Iface>,
    /// A namespace's default gateway.
    pub gateway: Option<Ipv4Addr>,
    pub routes: Vec<Route>,
    /// An emulated router's most common next hops, taken out of `routes`: used for a
    /// destination in one of the plan's subnets that no route covers (others are
    /// unreachable, as without it). Keeps each router's table to its exceptions: in a tree,
    /// the subtree below it.
    pub default: Option<Vec<NextHop>>,
    pub pins: Vec<Pin>,
    pub run: Vec<String>,
    /// The worker that owns the node's packets.
    pub worker: usize,
}

impl Node {
    /// The next hops towards `prefix` (one of the plan's subnets): its route, else the
    /// router's default.
    pub fn hops_for(&self, prefix: (Ipv4Addr, u8)) -> Option<&[NextHop]> {
        self.routes
            .iter()
            .find(|r| r.prefix == prefix)
            .map(|r| r.hops.as_slice())
            .or(self.default.as_deref())
    }
}

#[derive(Debug, Clone)]
pub struct Link {
    /// `(node, iface index)` of each end.
    pub ends: [(NodeId, usize); 2],
    /// Settings of each direction: `[a→b, b→a]`.
    pub params: [LinkParams; 2],
    pub cost: u32,
    pub weight: u32,
}

/// An L2 broadcast domain: the interfaces joined by links and switches.
#[derive(Debug, Clone)]
pub struct Segment {
    pub subnet: Option<(Ipv4Addr, u8)>,
    /// `(node, iface)` of every interface in it.
    pub members: Vec<(NodeId, usize)>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub nodes: Vec<Node>,
    pub links: Vec<Link>,
    pub segments: Vec<Segment>,
    pub by_name: HashMap<String, NodeId>,
    pub workers: usize,
    /// Buffers the emulator gives its queues and delay lines, in bytes: what they can hold
    /// together, at most `--memory`.
    pub buffer_bytes: u64,
}

impl Plan {
    pub fn node(&self, name: &str) -> Option<NodeId> {
        self.by_name.get(name).copied()
    }

    /// `link A B`'s link: the first between the two nodes.
    pub fn link_between(&self, a: &str, b: &str) -> Option<LinkId> {
        let (a, b) = (self.node(a)?, self.node(b)?);
        self.links.iter().position(|l| {
            (l.ends[0].0 == a && l.ends[1].0 == b) || (l.ends[0].0 == b && l.ends[1].0 == a)
        })
    }

    /// `h1:eth0 - r1:eth2`.
    pub fn link_name(&self, l: LinkId) -> String {
        let e = |(n, i): (NodeId, usize)| {
            format!("{}:{}", self.nodes[n].name, self.nodes[n].ifaces[i].name)
        };
        format!(
            "{} - {}",
            e(self.links[l].ends[0]),
            e(self.links[l].ends[1])
        )
    }

    /// The address of `name` for `/etc/hosts`: its first addressed interface.
    pub fn address_of(&self, n: NodeId) -> Option<Ipv4Addr> {
        self.nodes[n]
            .ifaces
            .iter()
            .find_map(|i| i.addr.map(|a| a.0))
    }
}

/// The MAC of a node's interface: locally administered, from the node and interface index.
pub fn mac_for(node: NodeId, iface: usize) -> [u8; 6] {
    let n = node as u32;
    [
        0x02,
        0x6c,
        (n >> 16) as u8,
        (n >> 8) as u8,
        n as u8,
        iface as u8,
    ]
}

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

fn network(addr: Ipv4Addr, len: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(addr) & mask(len))
}

/// What `plan` needs besides the topology.
#[derive(Debug, Clone)]
pub struct Options {
    pub workers: usize,
    /// Memory the emulator may use for packet buffers, bytes.
    pub memory: u64,
    /// Default name when the file gives none.
    pub name: String,
    /// Largest number of namespace nodes (hosts and kernel routers).
    pub max_namespaces: usize,
}

/// Unshaped links are taken to carry this much when buffers are sized (bit/s).
const UNSHAPED_RATE: f64 = 10e9;

/// Works out `t`. Every problem is one sentence naming the key, node or link.
pub fn plan(t: &Topology, o: &Options) -> Result<Plan, TopoError> {
    let name = t.network.name.clone().unwrap_or_else(|| o.name.clone());
    check_name(&name, "network name")?;
    if name.len() > 8 {
        return err(format!(
            "network name '{name}': at most 8 characters (it prefixes every namespace)"
        ));
    }
    if t.nodes.is_empty() {
        return err("the topology has no [[nodes]]");
    }
    // Nodes.
    let mut by_name = HashMap::new();
    let mut nodes = Vec::with_capacity(t.nodes.len());
    for (i, n) in t.nodes.iter().enumerate() {
        check_name(&n.name, "node")?;
        if by_name.insert(n.name.clone(), i).is_some() {
            return err(format!("node '{}': the name is used twice", n.name));
        }
        let role = match (n.kind, n.forward) {
            (Kind::Host, Forward::Linerate) => Role::Namespace,
            (Kind::Host, Forward::Kernel) => {
                return err(format!(
                    "node '{}': forward applies to routers (a host is forwarded by nobody)",
                    n.name
                ));
            }
            (Kind::Router, Forward::Linerate) => Role::Router,
            (Kind::Router, Forward::Kernel) => Role::Namespace,
            (Kind::Switch, Forward::Linerate) => Role::Switch,
            (Kind::Switch, Forward::Kernel) => {
                return err(format!(
                    "node '{}': a switch is always forwarded by linerate",
                    n.name
                ));
            }
        };
        if role != Role::Namespace && !n.run.is_empty() {
            return err(format!(
                "node '{}': run needs a namespace (a host, or a router with forward = \"kernel\")",
                n.name
            ));
        }
        nodes.push(Node {
            name: n.name.clone(),
            kind: n.kind,
            role,
            ifaces: Vec::new(),
            gateway: None,
            routes: Vec::new(),
            default: None,
            pins: Vec::new(),
            run: n.run.clone(),
            worker: 0,
        });
    }
    let namespaces = nodes.iter().filter(|n| n.role == Role::Namespace).count();
    if namespaces > o.max_namespaces {
        return err(format!(
            "{namespaces} hosts and kernel routers: this emulator builds at most {} namespaces",
            o.max_namespaces
        ));
    }
    // Links and interfaces. Explicit interface names first, so `r1` takes the next free one.
    let mut taken: Vec<Vec<String>> = vec![Vec::new(); nodes.len()];
    let mut ends_raw = Vec::with_capacity(t.links.len());
    for (li, l) in t.links.iter().enumerate() {
        let what = format!("link {}", li + 1);
        let mut ends: [(NodeId, Option<String>); 2] = [(0, None), (0, None)];
        for (side, end) in [&l.a, &l.b].into_iter().enumerate() {
            let Some(end) = end else {
                return err(format!("{what}: needs both ends, a and b"));
            };
            let (n, i) = match end.split_once(':') {
                Some((n, i)) => (n, Some(i.to_string())),
                None => (end.as_str(), None),
            };
            let Some(&id) = by_name.get(n) else {
                return err(format!("{what} ({end}): there is no node '{n}'"));
            };
            if let Some(i) = &i {
                if i.is_empty()
                    || i.len() > 15
                    || !i
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return err(format!("{what} ({end}): '{i}' is not an interface name"));
                }
                if taken[id].contains(i) {
                    return err(format!(
                        "{what} ({end}): interface {n}:{i} is used by two links"
                    ));
                }
                taken[id].push(i.clone());
            }
            ends[side] = (id, i);
        }
        if ends[0].0 == ends[1].0 {
            return err(format!(
                "{what}: both ends are node '{}'",
                nodes[ends[0].0].name
            ));
        }
        ends_raw.push(ends);
    }
    let mut links = Vec::with_capacity(t.links.len());
    for (li, ends) in ends_raw.into_iter().enumerate() {
        let mut resolved = [(0usize, 0usize); 2];
        for (side, (id, name)) in ends.into_iter().enumerate() {
            let name = match name {
                Some(n) => n,
                None => {
                    let n = (0..)
                        .map(|k| format!("eth{k}"))
                        .find(|c| !taken[id].contains(c))
                        .unwrap_or_default();
                    taken[id].push(n.clone());
                    n
                }
            };
            let idx = nodes[id].ifaces.len();
            nodes[id].ifaces.push(Iface {
                name,
                mac: mac_for(id, idx),
                addr: None,
                link: li,
                side,
                segment: 0,
            });
            resolved[side] = (id, idx);
        }
        links.push(Link {
            ends: resolved,
            params: [LinkParams::default(), LinkParams::default()],
            cost: 1,
            weight: 1,
        });
    }
    for (li, l) in t.links.iter().enumerate() {
        let mut name = String::new();
        for (k, &(n, i)) in links[li].ends.iter().enumerate() {
            if k == 1 {
                name.push_str(" - ");
            }
            name.push_str(&format!("{}:{}", nodes[n].name, nodes[n].ifaces[i].name));
        }
        let what = format!("link {name}");
        links[li].params = l.directions(&t.defaults, &what)?;
        let base = l.over(&t.defaults);
        links[li].cost = base.cost.unwrap_or(1);
        links[li].weight = base.weight.unwrap_or(1);
        if nodes[links[li].ends[0].0].ifaces.len() > 255
            || nodes[links[li].ends[1].0].ifaces.len() > 255
        {
            return err(format!("{what}: a node has at most 255 interfaces"));
        }
    }
    // MACs the user gave for a node's interfaces, and the per-interface addresses.
    for (id, n) in t.nodes.iter().enumerate() {
        for (iface, mac) in &n.macs {
            let what = format!("node '{}': macs.{iface}", n.name);
            let m = topo::parse_user_mac(mac, &what)?;
            let Some(i) = nodes[id].ifaces.iter_mut().find(|i| i.name == *iface) else {
                return err(format!("{what}: the node has no interface {iface}"));
            };
            i.mac = m;
        }
        let mut given: Vec<(String, String)> = n
            .addresses
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(ip) = &n.ip {
            given.push(("eth0".into(), ip.clone()));
        }
        for (iface, cidr) in given {
            let what = format!("node '{}': address of {iface}", n.name);
            if nodes[id].role == Role::Switch {
                return err(format!("{what}: a switch has no addresses"));
            }
            let (a, len) = parse_cidr(&cidr, &what)?;
            let Some(i) = nodes[id].ifaces.iter_mut().find(|i| i.name == iface) else {
                return err(format!(
                    "{what}: the node has no interface {iface} (no link uses it)"
                ));
            };
            if i.addr.is_some_and(|x| x != (a, len)) {
                return err(format!("{what}: given twice (ip and addresses)"));
            }
            let host = u32::from(a) & !mask(len);
            if host == 0 || host == !mask(len) {
                return err(format!(
                    "{what}: {cidr} is the network or broadcast address"
                ));
            }
            i.addr = Some((a, len));
        }
    }
    let segments = segments(&mut nodes, &links)?;
    let mut segments = segments;
    address(&mut nodes, &mut segments, t)?;
    gateways(&mut nodes, &segments, t)?;
    route(&mut nodes, &links, &segments, t)?;
    // Placement: a pure function of the node's name, so the same file places the same way.
    for n in nodes.iter_mut() {
        n.worker = linerate_dataplane::shard::jump_hash(fnv(&n.name), o.workers as u32) as usize;
    }
    // Buffers: what each link direction can hold queued plus in flight. Frames in flight
    // (the bandwidth-delay products) must all fit; full queues everywhere at once need not
    // (the workers' pools are shared by their links: past them a frame is dropped and
    // counted as `nobuf`).
    let mut buffer_bytes = 0u64;
    let mut flight_bytes = 0u64;
    for l in &links {
        for p in &l.params {
            let frame = frame_size(p.mtu) as u64;
            let rate = p.rate_bps.map_or(UNSHAPED_RATE, |r| r as f64);
            let flight_s = (p.delay_ns + p.jitter_ns) as f64 / 1e9;
            let in_flight = (rate * flight_s / 8.0 / p.mtu as f64).ceil() as u64;
            let queued = (p.queue_packets as u64).min((p.queue_bytes as u64).div_ceil(64));
            let need = (in_flight + queued) * frame;
            buffer_bytes = buffer_bytes.saturating_add(need);
            flight_bytes = flight_bytes.saturating_add(in_flight * frame);
            if need > o.memory {
                let name = {
                    let e = |(n, i): (NodeId, usize)| {
                        format!("{}:{}", nodes[n].name, nodes[n].ifaces[i].name)
                    };
                    format!("{} - {}", e(l.ends[0]), e(l.ends[1]))
                };
                return err(format!(
                    "link {name}: its bandwidth-delay product and queue need {} of buffers, more than \
                     the {} the emulator may use (--memory); lower its rate, delay or queue",
                    human(need),
                    human(o.memory)
                ));
            }
        }
    }
    if flight_bytes > o.memory {
        return err(format!(
            "the links' bandwidth-delay products need {} of buffers together, more than the {} \
             the emulator may use (--memory)",
            human(flight_bytes),
            human(o.memory)
        ));
    }
    Ok(Plan {
        name,
        nodes,
        links,
        segments,
        by_name,
        workers: o.workers,
        buffer_bytes: buffer_bytes.min(o.memory),
    })
}

/// The buffer a frame of this MTU needs (Ethernet header and slack; a power of two).
pub fn frame_size(mtu: u32) -> usize {
    ((mtu as usize) + 14 + 4).next_power_of_two().max(2048)
}

/// `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

/// FNV-1a: a stable hash of a name (placement must not change between runs).
pub fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Joins interfaces into L2 segments: a link joins its two ends, a switch all of its
/// interfaces. Refuses loops of switches (they would storm: nothing here runs STP).
fn segments(nodes: &mut [Node], links: &[Link]) -> Result<Vec<Segment>, TopoError> {
    // Union-find over (node, iface) flattened.
    let mut base = Vec::with_capacity(nodes.len());
    let mut total = 0;
    for n in nodes.iter() {
        base.push(total);
        total += n.ifaces.len();
    }
    let mut parent: Vec<usize> = (0..total).collect();
    fn find(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    let union = |p: &mut Vec<usize>, a: usize, b: usize| {
        let (ra, rb) = (find(p, a), find(p, b));
        if ra != rb {
            p[ra] = rb;
        }
    };
    for l in links {
        let a = base[l.ends[0].0] + l.ends[0].1;
        let b = base[l.ends[1].0] + l.ends[1].1;
        union(&mut parent, a, b);
    }
    for (id, n) in nodes.iter().enumerate() {
        if n.role == Role::Switch {
            for i in 1..n.ifaces.len() {
                union(&mut parent, base[id], base[id] + i);
            }
        }
    }
    // Loops among switches: in each component of the switch-to-switch graph, a tree has one
    // link fewer than it has switches.
    let mut sw_parent: Vec<usize> = (0..nodes.len()).collect();
    for l in links {
        let (a, b) = (l.ends[0].0, l.ends[1].0);
        if nodes[a].role == Role::Switch && nodes[b].role == Role::Switch {
            let (ra, rb) = (find(&mut sw_parent, a), find(&mut sw_parent, b));
            if ra == rb {
                return err(format!(
                    "switches '{}' and '{}' close a loop of switches; nothing here runs spanning \
                     tree, so frames would circle forever: use a router, or remove a link",
                    nodes[a].name, nodes[b].name
                ));
            }
            sw_parent[ra] = rb;
        }
    }
    let mut index: HashMap<usize, usize> = HashMap::new();
    let mut segs: Vec<Segment> = Vec::new();
    for (id, n) in nodes.iter_mut().enumerate() {
        for (i, iface) in n.ifaces.iter_mut().enumerate() {
            let root = find(&mut parent, base[id] + i);
            let s = *index.entry(root).or_insert_with(|| {
                segs.push(Segment {
                    subnet: None,
                    members: Vec::new(),
                });
                segs.len() - 1
            });
            iface.segment = s;
            segs[s].members.push((id, i));
        }
    }
    Ok(segs)
}

/// Gives every segment with addressable members a subnet and every router and namespace
/// interface an address: the user's where given (checked for conflicts), the next free one
/// otherwise. Segments with hosts get /24s from the low half of the pool; router-to-router
/// segments /30s from the high half.
fn address(nodes: &mut [Node], segs: &mut [Segment], t: &Topology) -> Result<(), TopoError> {
    let pool = match &t.network.subnet {
        Some(s) => parse_cidr(s, "network.subnet")?,
        None => (Ipv4Addr::new(10, 0, 0, 0), 8),
    };
    if pool.1 > 16 {
        return err(format!(
            "network.subnet: {}/{} is too small; give a /16 or larger",
            pool.0, pool.1
        ));
    }
    let pool_base = u32::from(network(pool.0, pool.1));
    let pool_size = 1u64 << (32 - pool.1);
    // User addresses fix their segment's subnet.
    let mut used_addrs: HashMap<Ipv4Addr, (NodeId, usize)> = HashMap::new();
    for seg in segs.iter_mut() {
        for &(n, i) in &seg.members {
            let Some((a, len)) = nodes[n].ifaces[i].addr else {
                continue;
            };
            let net = (network(a, len), len);
            match seg.subnet {
                None => seg.subnet = Some(net),
                Some(other) if other != net => {
                    return err(format!(
                        "node '{}': {}'s address {a}/{len} is not in {}/{}, the subnet of the \
                         other addresses on its segment",
                        nodes[n].name, nodes[n].ifaces[i].name, other.0, other.1
                    ));
                }
                _ => {}
            }
            if let Some((m, j)) = used_addrs.insert(a, (n, i)) {
                return err(format!(
                    "address {a} is given to both {}:{} and {}:{}",
                    nodes[m].name, nodes[m].ifaces[j].name, nodes[n].name, nodes[n].ifaces[i].name
                ));
            }
        }
    }
    // Two segments' user subnets must not overlap.
    let mut ranges: Vec<(u32, u32, Ipv4Addr, u8)> = segs
        .iter()
        .filter_map(|s| s.subnet)
        .map(|(n, l)| (u32::from(n), u32::from(n) | !mask(l), n, l))
        .collect();
    ranges.sort();
    for w in ranges.windows(2) {
        if w[1].0 <= w[0].1 {
            return err(format!(
                "address conflict: {}/{} and {}/{} are the subnets of two segments",
                w[0].2, w[0].3, w[1].2, w[1].3
            ));
        }
    }
    // Which used ranges exist, for skipping: (start, end inclusive).
    let taken: Vec<(u32, u32)> = segs
        .iter()
        .filter_map(|s| s.subnet)
        .map(|(n, l)| (u32::from(n), u32::from(n) | !mask(l)))
        .collect();
    let overlaps = |lo: u32, hi: u32| taken.iter().any(|&(a, b)| a <= hi && lo <= b);
    let (mut next24, mut next30) = (1u64, 0u64);
    let half = pool_size / 2;
    #[allow(clippy::needless_range_loop)] // segs[s] is written while nodes are read
    for s in 0..segs.len() {
        let addressable: Vec<(NodeId, usize)> = segs[s]
            .members
            .iter()
            .copied()
            .filter(|&(n, _)| nodes[n].role != Role::Switch)
            .collect();
        if addressable.is_empty() {
            continue;
        }
        let has_host = addressable
            .iter()
            .any(|&(n, _)| nodes[n].kind == Kind::Host);
        if segs[s].subnet.is_none() {
            let p2p = !has_host && addressable.len() <= 2;
            let (net, len) = loop {
                let (lo, len) = if p2p {
                    let lo = pool_base as u64 + half + next30 * 4;
                    next30 += 1;
                    (lo, 30u8)
                } else {
                    let lo = pool_base as u64 + next24 * 256;
                    next24 += 1;
                    (lo, 24u8)
                };
                let end = lo + (1 << (32 - len)) - 1;
                let limit = if p2p {
                    pool_base as u64 + pool_size
                } else {
                    pool_base as u64 + half
                };
                if end >= limit {
                    return err(format!(
                        "network.subnet {}/{} has no room left for the topology's segments",
                        pool.0, pool.1
                    ));
                }
                if !overlaps(lo as u32, end as u32) {
                    break (Ipv4Addr::from(lo as u32), len);
                }
            };
            segs[s].subnet = Some((net, len));
        }
        let (net, len) = segs[s].subnet.unwrap_or((Ipv4Addr::UNSPECIFIED, 24));
        let capacity = (1u64 << (32 - len)) - 2;
        if addressable.len() as u64 > capacity {
            return err(format!(
                "segment {net}/{len} has {} interfaces, more than its {capacity} addresses",
                addressable.len()
            ));
        }
        // Routers first (so gateways get the low addresses), then namespaces, by node order.
        let mut order = addressable.clone();
        order.sort_by_key(|&(n, i)| (nodes[n].kind != Kind::Router, n, i));
        let mut host = 1u32;
        for (n, i) in order {
            if nodes[n].ifaces[i].addr.is_some() {
                continue;
            }
            let a = loop {
                let a = Ipv4Addr::from(u32::from(net) + host);
                host += 1;
                if !used_addrs.contains_key(&a) {
                    break a;
                }
            };
            used_addrs.insert(a, (n, i));
            nodes[n].ifaces[i].addr = Some((a, len));
        }
    }
    Ok(())
}

fn gateways(nodes: &mut [Node], segs: &[Segment], t: &Topology) -> Result<(), TopoError> {
    for (id, spec) in t.nodes.iter().enumerate() {
        if nodes[id].kind != Kind::Host {
            continue;
        }
        if let Some(g) = &spec.gateway {
            let what = format!("node '{}': gateway", spec.name);
            let gw: Ipv4Addr = g
                .parse()
                .map_err(|_| TopoError(format!("{what}: '{g}' is not an IPv4 address")))?;
            let on_link = nodes[id].ifaces.iter().any(|i| {
                i.addr
                    .is_some_and(|(a, len)| network(a, len) == network(gw, len))
            });
            if !on_link {
                return err(format!("{what}: {gw} is on none of the node's subnets"));
            }
            nodes[id].gateway = Some(gw);
            continue;
        }
        let Some(eth0) = nodes[id].ifaces.first() else {
            continue;
        };
        let seg = &segs[eth0.segment];
        nodes[id].gateway = seg
            .members
            .iter()
            .filter(|&&(n, _)| n != id && nodes[n].kind == Kind::Router)
            .find_map(|&(n, i)| nodes[n].ifaces[i].addr.map(|a| a.0));
    }
    Ok(())
}

/// Routes of every router (both kinds): to each segment's subnet not directly attached, by
/// the routing mode; then `static` routes; then pinned paths.
fn route(
    nodes: &mut [Node],
    links: &[Link],
    segs: &[Segment],
    t: &Topology,
) -> Result<(), TopoError> {
    let mode = t.routing.mode;
    let is_router = |n: &Node| n.kind == Kind::Router;
    // Routers adjacent to each segment, with their interface and its link's cost and weight.
    let mut attach: Vec<Vec<(NodeId, usize, u32, u32)>> = vec![Vec::new(); segs.len()];
    for (id, n) in nodes.iter().enumerate() {
        if !is_router(n) {
            continue;
        }
        for (i, iface) in n.ifaces.iter().enumerate() {
            let l = &links[iface.link];
            if l.params[iface.side].up && l.params[1 - iface.side].up {
                attach[iface.segment].push((id, i, l.cost, l.weight));
            }
        }
    }
    if mode != RoutingMode::Static {
        // Per router: its distinct next-hop sets, and (prefix, set) per destination.
        let mut sets: Vec<Vec<Vec<NextHop>>> = vec![Vec::new(); nodes.len()];
        let mut set_ids: Vec<HashMap<Vec<NextHop>, u32>> = vec![HashMap::new(); nodes.len()];
        let mut found: Vec<Vec<((Ipv4Addr, u8), u32)>> = vec![Vec::new(); nodes.len()];
        // A segment with one router on it (a host's link, say) is reached through that router
        // exactly as every other segment with only that router is: its paths are the
        // router's, worked out once.
        let mut by_single: HashMap<NodeId, Vec<(NodeId, u32)>> = HashMap::new();
        for (d, dseg) in segs.iter().enumerate() {
            let Some(prefix) = dseg.subnet else { continue };
            let routers_on: Vec<NodeId> = dseg
                .members
                .iter()
                .map(|&(n, _)| n)
                .filter(|&n| is_router(&nodes[n]))
                .collect();
            let single = match (&routers_on[..], &attach[d][..]) {
                ([r], [(a, ..)]) if r == a => Some(*r),
                _ => None,
            };
            if let Some(r) = single
                && let Some(done) = by_single.get(&r)
            {
                for &(x, id) in done {
                    found[x].push((prefix, id));
                }
                continue;
            }
            let hops = paths_to(nodes, links, segs, &attach, d, mode);
            let mut done = Vec::with_capacity(hops.len());
            for (x, h) in hops {
                let next = sets[x].len() as u32;
                let id = *set_ids[x].entry(h.clone()).or_insert_with(|| {
                    sets[x].push(h);
                    next
                });
                found[x].push((prefix, id));
                done.push((x, id));
            }
            if let Some(r) = single {
                by_single.insert(r, done);
            }
        }
        for (x, routes) in found.into_iter().enumerate() {
            if routes.is_empty() {
                continue;
            }
            // An emulated router keeps its most common set (used by two or more) as its
            // default; a kernel-forwarded one gets every route (its kernel has no such rule).
            let default = (nodes[x].role == Role::Router)
                .then(|| {
                    let mut count = vec![0u32; sets[x].len()];
                    for &(_, id) in &routes {
                        count[id as usize] += 1;
                    }
                    let best =
                        (0..count.len()).max_by_key(|&i| (count[i], std::cmp::Reverse(i)))?;
                    (count[best] >= 2).then_some(best as u32)
                })
                .flatten();
            nodes[x].routes.reserve(routes.len());
            for (prefix, id) in routes {
                if Some(id) != default {
                    nodes[x].routes.push(Route {
                        prefix,
                        hops: sets[x][id as usize].clone(),
                    });
                }
            }
            nodes[x].default = default.map(|id| sets[x][id as usize].clone());
        }
    }
    for s in &t.routing.static_routes {
        let what = format!("routing.static (node '{}', prefix {})", s.node, s.prefix);
        let Some(&r) = nodes.iter().position(|n| n.name == s.node).as_ref() else {
            return err(format!("{what}: there is no node '{}'", s.node));
        };
        if !is_router(&nodes[r]) {
            return err(format!("{what}: '{}' is not a router", s.node));
        }
        let (a, len) = parse_cidr(&s.prefix, &what)?;
        if network(a, len) != a {
            return err(format!("{what}: {} has host bits set", s.prefix));
        }
        let hop = neighbour_hop(nodes, r, &s.via, s.weight.unwrap_or(1)).ok_or_else(|| {
            TopoError(format!(
                "{what}: '{}' is not a neighbour of '{}'",
                s.via, s.node
            ))
        })?;
        let prefix = (a, len);
        match nodes[r].routes.iter_mut().find(|x| x.prefix == prefix) {
            Some(x) => {
                *x = Route {
                    prefix,
                    hops: vec![hop],
                }
            }
            None => nodes[r].routes.push(Route {
                prefix,
                hops: vec![hop],
            }),
        }
    }
    for (k, p) in t.routes.iter().enumerate() {
        let what = format!("routes[{}] ({})", k + 1, p.path.join(" "));
        if p.path.len() < 2 {
            return err(format!("{what}: a path has at least two nodes"));
        }
        let ids: Vec<NodeId> = p
            .path
            .iter()
            .map(|n| {
                nodes
                    .iter()
                    .position(|x| x.name == *n)
                    .ok_or_else(|| TopoError(format!("{what}: there is no node '{n}'")))
            })
            .collect::<Result<_, _>>()?;
        let rule = match &p.matcher {
            Some(m) => {
                let r = format!("permit {m}");
                r.parse::<linerate_dataplane::logic::Rule>()
                    .map_err(|e| TopoError(format!("{what}: match: {e}")))?;
                m.clone()
            }
            None => {
                let (src, dst) = (ids[0], ids[ids.len() - 1]);
                let addr = |n: NodeId| nodes[n].ifaces.iter().find_map(|i| i.addr.map(|a| a.0));
                match (addr(src), addr(dst)) {
                    (Some(s), Some(d)) => format!("any {s}/32 {d}/32"),
                    _ => {
                        return err(format!(
                            "{what}: give match: the path's ends have no addresses"
                        ));
                    }
                }
            }
        };
        for w in 0..ids.len() - 1 {
            let here = ids[w];
            if !is_router(&nodes[here]) {
                if w == 0 {
                    continue; // the source host sends to its gateway
                }
                return err(format!(
                    "{what}: '{}' in the middle of a path is not a router",
                    nodes[here].name
                ));
            }
            let next = &nodes[ids[w + 1]].name.clone();
            let hop = neighbour_hop(nodes, here, next, 1).ok_or_else(|| {
                TopoError(format!(
                    "{what}: '{}' and '{next}' are not neighbours",
                    nodes[here].name
                ))
            })?;
            if nodes[here].role == Role::Namespace {
                return err(format!(
                    "{what}: '{}' is forwarded by its kernel; pinned paths need forward = \"linerate\"",
                    nodes[here].name
                ));
            }
            nodes[here].pins.push(Pin {
                rule: rule.clone(),
                hop,
            });
        }
    }
    Ok(())
}

/// Every router's next hops towards segment `d` (Dijkstra from the destination), in the
/// routing mode's form; routers on `d` itself and routers that cannot reach it get none.
fn paths_to(
    nodes: &[Node],
    links: &[Link],
    segs: &[Segment],
    attach: &[Vec<(NodeId, usize, u32, u32)>],
    d: usize,
    mode: RoutingMode,
) -> Vec<(NodeId, Vec<NextHop>)> {
    let is_router = |n: &Node| n.kind == Kind::Router;
    let mut out = Vec::new();
    // Dijkstra from the destination: dist of a router = cost to reach the segment.
    let mut dist = vec![u64::MAX; nodes.len()];
    let mut seg_dist = vec![u64::MAX; segs.len()];
    let mut heap = BinaryHeap::new();
    seg_dist[d] = 0;
    heap.push(std::cmp::Reverse((0u64, false, d)));
    while let Some(std::cmp::Reverse((c, is_node, x))) = heap.pop() {
        if is_node {
            if c > dist[x] {
                continue;
            }
            // A router reaches every segment it is attached to at no further cost for
            // the segment's other routers: they go through it.
            for iface in &nodes[x].ifaces {
                let s = iface.segment;
                if c < seg_dist[s] {
                    seg_dist[s] = c;
                    heap.push(std::cmp::Reverse((c, false, s)));
                }
            }
        } else {
            if c > seg_dist[x] {
                continue;
            }
            for &(r, _, cost, _) in &attach[x] {
                let nc = c + cost as u64;
                if nc < dist[r] {
                    dist[r] = nc;
                    heap.push(std::cmp::Reverse((nc, true, r)));
                }
            }
        }
    }
    for r in 0..nodes.len() {
        if !is_router(&nodes[r]) || dist[r] == u64::MAX {
            continue;
        }
        if nodes[r].ifaces.iter().any(|i| i.segment == d) {
            continue; // directly attached
        }
        let mut hops = Vec::new();
        for (i, iface) in nodes[r].ifaces.iter().enumerate() {
            let s = iface.segment;
            let l = &links[iface.link];
            if !(l.params[0].up && l.params[1].up) || seg_dist[s] == u64::MAX {
                continue;
            }
            if l.cost as u64 + seg_dist[s] != dist[r] {
                continue;
            }
            // Every router on that segment that is that close (not r itself).
            for &(nb, nbi, _, _) in &attach[s] {
                if nb != r && dist[nb] == seg_dist[s] {
                    hops.push(NextHop {
                        iface: i,
                        node: nb,
                        node_iface: nbi,
                        weight: l.weight,
                    });
                }
            }
        }
        hops.sort_by(|a, b| {
            nodes[a.node]
                .name
                .cmp(&nodes[b.node].name)
                .then(a.iface.cmp(&b.iface))
        });
        hops.dedup();
        if hops.is_empty() {
            continue;
        }
        match mode {
            RoutingMode::ShortestPath => hops.truncate(1),
            RoutingMode::Ecmp => hops.iter_mut().for_each(|h| h.weight = 1),
            RoutingMode::Weighted | RoutingMode::Static => {}
        }
        out.push((r, hops));
    }
    out
}

/// The next hop from router `r` to its neighbour named `via` (sharing a segment).
fn neighbour_hop(nodes: &[Node], r: NodeId, via: &str, weight: u32) -> Option<NextHop> {
    let nb = nodes.iter().position(|n| n.name == via)?;
    for (i, iface) in nodes[r].ifaces.iter().enumerate() {
        for (j, other) in nodes[nb].ifaces.iter().enumerate() {
            if other.segment == iface.segment && other.addr.is_some() {
                return Some(NextHop {
                    iface: i,
                    node: nb,
                    node_iface: j,
                    weight,
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topo::generate::{generate, link_defaults};
    use crate::topo::parse;

    fn opts() -> Options {
        Options {
            workers: 2,
            memory: 1 << 30,
            name: "t".into(),
            max_namespaces: 10_000,
        }
    }

    fn plan_of(text: &str) -> Result<Plan, TopoError> {
        plan(&parse(text)?, &opts())
    }

    #[test]
    fn a_linear_network_gets_subnets_gateways_and_routes() {
        let t = generate("linear,3", link_defaults("rate=10M").unwrap()).unwrap();
        let p = plan(&t, &opts()).unwrap();
        let h1 = &p.nodes[p.node("h1").unwrap()];
        let r1 = &p.nodes[p.node("r1").unwrap()];
        let (a, len) = h1.ifaces[0].addr.unwrap();
        assert_eq!(len, 24);
        assert_eq!(
            h1.gateway,
            Some(Ipv4Addr::from(u32::from(a) - 1)),
            "the router got .1"
        );
        // r1 reaches h3's subnet through r2 only.
        let h3 = &p.nodes[p.node("h3").unwrap()];
        let (h3a, _) = h3.ifaces[0].addr.unwrap();
        let route = r1.hops_for((network(h3a, 24), 24)).unwrap();
        assert_eq!(route.len(), 1);
        assert_eq!(p.nodes[route[0].node].name, "r2");
        // Router-to-router links get /30s from the upper half.
        let r12 = r1
            .ifaces
            .iter()
            .find(|i| p.nodes[p.links[i.link].ends[1 - i.side].0].name == "r2")
            .unwrap();
        assert_eq!(r12.addr.unwrap().1, 30);
        assert!(u32::from(r12.addr.unwrap().0) >= u32::from(Ipv4Addr::new(10, 128, 0, 0)));
    }

    #[test]
    fn a_ring_has_two_equal_paths_to_the_far_side_with_ecmp() {
        let mut t = generate("ring,4", link_defaults("").unwrap()).unwrap();
        t.routing.mode = RoutingMode::Ecmp;
        let p = plan(&t, &opts()).unwrap();
        let r1 = &p.nodes[p.node("r1").unwrap()];
        let h3 = p.nodes[p.node("h3").unwrap()].ifaces[0].addr.unwrap();
        let route = r1.hops_for((network(h3.0, 24), 24)).unwrap();
        let via: Vec<&str> = route
            .iter()
            .map(|h| p.nodes[h.node].name.as_str())
            .collect();
        assert_eq!(via, ["r2", "r4"]);
        t.routing.mode = RoutingMode::ShortestPath;
        let p = plan(&t, &opts()).unwrap();
        let r1 = &p.nodes[p.node("r1").unwrap()];
        let route = r1.hops_for((network(h3.0, 24), 24)).unwrap();
        assert_eq!(route.len(), 1);
    }

    #[test]
    fn weighted_paths_carry_their_links_weights() {
        let p = plan_of(
            r#"
            [routing]
            mode = "weighted"
            [[nodes]]
            name = "h1"
            kind = "host"
            [[nodes]]
            name = "h2"
            kind = "host"
            [[nodes]]
            name = "a"
            kind = "router"
            [[nodes]]
            name = "b"
            kind = "router"
            [[nodes]]
            name = "c"
            kind = "router"
            [[nodes]]
            name = "d"
            kind = "router"
            [[links]]
            a = "h1"
            b = "a"
            [[links]]
            a = "a"
            b = "b"
            weight = 3
            [[links]]
            a = "a"
            b = "c"
            weight = 1
            [[links]]
            a = "b"
            b = "d"
            [[links]]
            a = "c"
            b = "d"
            [[links]]
            a = "d"
            b = "h2"
            "#,
        )
        .unwrap();
        let a = &p.nodes[p.node("a").unwrap()];
        let h2 = p.nodes[p.node("h2").unwrap()].ifaces[0].addr.unwrap();
        let r = a.hops_for((network(h2.0, 24), 24)).unwrap();
        let w: Vec<(String, u32)> = r
            .iter()
            .map(|h| (p.nodes[h.node].name.clone(), h.weight))
            .collect();
        assert_eq!(w, [("b".to_string(), 3), ("c".to_string(), 1)]);
    }

    #[test]
    fn each_bad_topology_gets_its_sentence() {
        for (text, want) in [
            ("", "no [[nodes]]"),
            (
                "[[nodes]]\nname = \"h1\"\nkind = \"host\"\n[[nodes]]\nname = \"h1\"\nkind = \"host\"\n",
                "node 'h1': the name is used twice",
            ),
            (
                "[[nodes]]\nname = \"h1\"\nkind = \"host\"\n[[links]]\na = \"h1\"\nb = \"h9\"\n",
                "there is no node 'h9'",
            ),
            (
                "[[nodes]]\nname = \"h1\"\nkind = \"host\"\n[[links]]\na = \"h1\"\nb = \"h1\"\n",
                "both ends",
            ),
            ("[[nodes]]\nname = \"1h\"\nkind = \"host\"\n", "node '1h'"),
            (
                "[[nodes]]\nname = \"h1\"\nkind = \"host\"\nip = \"10.0.0.1/24\"\n[[nodes]]\nname = \"h2\"\nkind = \"host\"\nip = \"10.0.0.1/24\"\n[[links]]\na = \"h1\"\nb = \"h2\"\n",
                "address 10.0.0.1 is given to both",
            ),
            (
                "[[nodes]]\nname = \"h1\"\nkind = \"host\"\nip = \"10.0.0.1/24\"\n[[nodes]]\nname = \"h2\"\nkind = \"host\"\nip = \"10.0.1.1/24\"\n[[links]]\na = \"h1\"\nb = \"h2\"\n",
                "is not in 10.0.0.0/24",
            ),
            (
                "[[nodes]]\nname = \"h1\"\nkind = \"host\"\nip = \"10.0.0.0/24\"\n[[nodes]]\nname = \"h2\"\nkind = \"host\"\n[[links]]\na = \"h1\"\nb = \"h2\"\n",
                "network or broadcast",
            ),
            (
                "[[nodes]]\nname = \"s1\"\nkind = \"switch\"\n[[nodes]]\nname = \"s2\"\nkind = \"switch\"\n[[links]]\na = \"s1\"\nb = \"s2\"\n[[links]]\na = \"s1\"\nb = \"s2\"\n",
                "loop of switches",
            ),
            (
                "[[nodes]]\nname = \"h1\"\nkind = \"host\"\n[[nodes]]\nname = \"h2\"\nkind = \"host\"\n[[links]]\na = \"h1\"\nb = \"h2\"\nrate = \"10G\"\ndelay = \"60s\"\n",
                "--memory",
            ),
            (
                "[[nodes]]\nname = \"r1\"\nkind = \"router\"\nrun = [\"sleep 1\"]\n",
                "run needs a namespace",
            ),
            (
                "[[nodes]]\nname = \"h1\"\nkind = \"host\"\n[[links]]\na = \"h1:eth0\"\nb = \"h1:eth0\"\n",
                "used by two links",
            ),
            (
                "[network]\nname = \"waytoolongname\"\n[[nodes]]\nname = \"h1\"\nkind = \"host\"\n",
                "at most 8",
            ),
            (
                "[[nodes]]\nname = \"h1\"\nkind = \"host\"\ngateway = \"1.2.3.4\"\n[[nodes]]\nname = \"h2\"\nkind = \"host\"\n[[links]]\na = \"h1\"\nb = \"h2\"\n",
                "gateway",
            ),
            (
                "[[nodes]]\nname = \"h1\"\nkind = \"host\"\n[[routes]]\npath = [\"h1\", \"zz\"]\n",
                "no node 'zz'",
            ),
        ] {
            let e = plan_of(text).map(|_| ()).unwrap_err();
            assert!(e.0.contains(want), "{text}\n=> {e}");
        }
    }

    #[test]
    fn a_fat_tree_plans_with_ecmp_towards_other_pods() {
        let mut t = generate("fat-tree,4", link_defaults("").unwrap()).unwrap();
        t.routing.mode = RoutingMode::Ecmp;
        let p = plan(&t, &opts()).unwrap();
        // An edge router reaches a host in another pod through both of its aggregation routers.
        let edge = p
            .nodes
            .iter()
            .position(|n| {
                n.kind == Kind::Router
                    && n.ifaces
                        .iter()
                        .any(|i| p.nodes[p.links[i.link].ends[1 - i.side].0].kind == Kind::Host)
            })
            .unwrap();
        let far_host = p.nodes.iter().rposition(|n| n.kind == Kind::Host).unwrap();
        let far = p.nodes[far_host].ifaces[0].addr.unwrap();
        let r = p.nodes[edge].hops_for((network(far.0, 24), 24)).unwrap();
        assert_eq!(r.len(), 2);
        assert!(p.nodes.iter().all(|n| n.worker < 2));
    }

    #[test]
    fn routers_keep_their_exceptions_and_every_subnet_is_still_reached() {
        for spec in ["tree,3,3", "fat-tree,4", "ring,6", "torus,3,4"] {
            let t = generate(spec, link_defaults("").unwrap()).unwrap();
            let p = plan(&t, &opts()).unwrap();
            let routers: Vec<NodeId> = (0..p.nodes.len())
                .filter(|&n| p.nodes[n].role == Role::Router)
                .collect();
            let subnets: Vec<(usize, (Ipv4Addr, u8))> = p
                .segments
                .iter()
                .enumerate()
                .filter_map(|(i, s)| Some((i, s.subnet?)))
                .collect();
            let written: usize = routers.iter().map(|&r| p.nodes[r].routes.len()).sum();
            assert!(
                written * 2 < routers.len() * subnets.len(),
                "{spec}: {written} routes written for {} routers and {} subnets",
                routers.len(),
                subnets.len()
            );
            // From every router, following next hops reaches a router on the subnet.
            for &from in &routers {
                for &(seg, prefix) in &subnets {
                    let mut at = from;
                    for step in 0.. {
                        assert!(step <= p.nodes.len(), "{spec}: a loop towards {prefix:?}");
                        if p.nodes[at].ifaces.iter().any(|i| i.segment == seg) {
                            break;
                        }
                        let hops = p.nodes[at].hops_for(prefix).unwrap_or_else(|| {
                            panic!("{spec}: {} has no way to {prefix:?}", p.nodes[at].name)
                        });
                        at = hops[0].node;
                    }
                }
            }
        }
    }

    #[test]
    fn placement_is_a_function_of_the_name() {
        let t = generate("linear,8", link_defaults("").unwrap()).unwrap();
        let a = plan(&t, &opts()).unwrap();
        let b = plan(&t, &opts()).unwrap();
        assert!(
            a.nodes
                .iter()
                .zip(&b.nodes)
                .all(|(x, y)| x.worker == y.worker)
        );
        assert!(a.nodes.iter().any(|n| n.worker == 0) && a.nodes.iter().any(|n| n.worker == 1));
    }
}
