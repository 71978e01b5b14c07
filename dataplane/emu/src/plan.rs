//! A [`Topology`] worked out into the network to build: every interface named, with its MAC
//! and address; L2 segments; each router's routes (shortest paths, ECMP, weighted, static,
//! pinned paths); each host's gateway; which worker owns which node; and whether the links'
//! bandwidth-delay products fit the memory given. Pure: no system call, so it is tested
//! without root, and a topology it refuses creates nothing.

use crate::topo::{
    self, Forward, Kind, LinkParams, PlacementHosts, PlacementMode, RoutingMode, TopoError,
    Topology, check_name, parse_cidr,
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
    /// A host inside the emulator: no namespace.
    Virtual,
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
    /// The next hops towards `prefix` (one of the plan's subnets): the longest route that
    /// covers it, else the router's default.
    pub fn hops_for(&self, prefix: (Ipv4Addr, u8)) -> Option<&[NextHop]> {
        let (net, len) = (u32::from(prefix.0), prefix.1);
        self.routes
            .iter()
            .filter(|r| r.prefix.1 <= len && u32::from(r.prefix.0) == net & mask(r.prefix.1))
            .max_by_key(|r| r.prefix.1)
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
    /// This emulator's name: the emulation's, or with `[placement]` `<emulation>.<host>`
    /// (its part). It prefixes the namespaces and names the run directory and control socket.
    pub name: String,
    /// The emulation's name, the same on every host: its controller node and database rows.
    pub emulation: String,
    pub nodes: Vec<Node>,
    pub links: Vec<Link>,
    pub segments: Vec<Segment>,
    pub by_name: HashMap<String, NodeId>,
    /// The topology's `[[flows]]`, checked.
    pub flows: Vec<crate::flows::FlowSpec>,
    pub workers: usize,
    /// Buffers the emulator gives its queues and delay lines, in bytes: what they can hold
    /// together, at most `--memory`.
    pub buffer_bytes: u64,
    /// Several hosts (`[placement]`): which builds which node, and which host this is.
    pub placement: Option<Placement>,
}

/// The emulation spread over hosts: each emulator builds its own nodes and carries the links
/// cut between hosts over its tunnel.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Host names (sorted) and their tunnels' addresses.
    pub hosts: Vec<(String, std::net::SocketAddr)>,
    /// Per node: its host.
    pub host_of: Vec<usize>,
    /// This emulator's host.
    pub local: usize,
}

impl Plan {
    /// Whether this emulator builds node `n` (always, on one host).
    pub fn is_local(&self, n: NodeId) -> bool {
        self.placement
            .as_ref()
            .is_none_or(|p| p.host_of[n] == p.local)
    }

    /// The name of the host that builds node `n`, with `[placement]`.
    pub fn host_name(&self, n: NodeId) -> Option<&str> {
        (self.placement.as_ref()).map(|p| p.hosts[p.host_of[n]].0.as_str())
    }

    /// Links with one end here and the other on another host: (link, local side, host).
    pub fn cut_links(&self) -> Vec<(LinkId, usize, usize)> {
        let Some(p) = &self.placement else {
            return Vec::new();
        };
        (self.links.iter().enumerate())
            .filter_map(|(l, link)| {
                let (ha, hb) = (p.host_of[link.ends[0].0], p.host_of[link.ends[1].0]);
                match (ha == p.local, hb == p.local) {
                    (true, false) => Some((l, 0, hb)),
                    (false, true) => Some((l, 1, ha)),
                    _ => None,
                }
            })
            .collect()
    }

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
    /// Work out the computed routes (shortest paths); without, everything is checked but the
    /// routers get only static routes and pinned paths (a check that builds nothing: the
    /// paths cannot fail, and are most of a large plan's time).
    pub paths: bool,
    /// With `[placement]`: the host this emulator is (`--host`).
    pub host: Option<String>,
    /// With `hosts = [...]`: each host's tunnel as it registered (`up --tunnel`).
    pub tunnels: std::collections::BTreeMap<String, std::net::SocketAddr>,
    /// The controller's placement (node -> host), when it made one: taken as it is.
    pub assigned: std::collections::BTreeMap<String, String>,
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
            (Kind::Virtual, Forward::Linerate) => Role::Virtual,
            (Kind::Virtual, Forward::Kernel) => {
                return err(format!(
                    "node '{}': forward applies to routers (a host is forwarded by nobody)",
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
    route(&mut nodes, &links, &segments, t, o.paths)?;
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
    let placement = place(t, &nodes, &links, o)?;
    let instance = match &placement {
        Some(p) => format!("{name}.{}", p.hosts[p.local].0),
        None => name.clone(),
    };
    let mut plan = Plan {
        name: instance,
        emulation: name,
        nodes,
        links,
        segments,
        by_name,
        flows: Vec::new(),
        workers: o.workers,
        buffer_bytes: buffer_bytes.min(o.memory),
        placement,
    };
    plan.flows = crate::flows::resolve_all(&plan, &t.flows)?;
    Ok(plan)
}

/// `[placement]` worked out, or `None` for one host. Every emulator of the emulation computes
/// the same placement from the same file.
fn place(
    t: &Topology,
    nodes: &[Node],
    links: &[Link],
    o: &Options,
) -> Result<Option<Placement>, TopoError> {
    let (host, tunnels) = (o.host.as_deref(), &o.tunnels);
    let Some(p) = &t.placement else {
        if let Some(h) = host {
            return err(format!(
                "--host {h}: the topology has no [placement] (it runs on one host)"
            ));
        }
        if let Some(n) = t.nodes.iter().find(|n| n.host.is_some()) {
            return err(format!(
                "node '{}': host = needs a [placement] section",
                n.name
            ));
        }
        return Ok(None);
    };
    let written: Vec<(String, Option<String>)> = match &p.hosts {
        PlacementHosts::Addresses(m) => m
            .iter()
            .map(|(n, a)| (n.clone(), Some(a.clone())))
            .collect(),
        PlacementHosts::Registered(v) => {
            let mut v = v.clone();
            v.sort();
            v.into_iter().map(|n| (n, None)).collect()
        }
        PlacementHosts::Count(n) => {
            if tunnels.len() != *n {
                return err(format!(
                    "[placement] hosts = {n}: {} host(s) registered",
                    tunnels.len()
                ));
            }
            tunnels.keys().map(|h| (h.clone(), None)).collect()
        }
    };
    if written.is_empty() || written.len() > 64 {
        return err(
            "[placement] hosts: 1 to 64 hosts, `{ name = \"ADDR:PORT\" }` or `[\"name\", ...]`",
        );
    }
    let mut hosts: Vec<(String, std::net::SocketAddr)> = Vec::with_capacity(written.len());
    for (name, addr) in &written {
        check_name(name, "[placement] host")?;
        if hosts.iter().any(|(n, _)| n == name) {
            return err(format!("[placement] hosts: {name} is named twice"));
        }
        let a: std::net::SocketAddr = match addr {
            Some(addr) => addr.parse().map_err(|_| {
                TopoError(format!(
                    "[placement] hosts: {name} = \"{addr}\": expected the tunnel's ADDR:PORT"
                ))
            })?,
            None => *tunnels.get(name).ok_or_else(|| {
                TopoError(format!(
                    "[placement] host {name} has not registered its tunnel (up --database URL --tunnel ADDR on that host)"
                ))
            })?,
        };
        if a.port() == 0 || a.ip().is_unspecified() {
            return err(format!(
                "[placement] hosts: {name} at {a}: the address peers send to (not 0)"
            ));
        }
        hosts.push((name.clone(), a));
    }
    let names: Vec<&str> = hosts.iter().map(|(n, _)| n.as_str()).collect();
    let Some(h) = host else {
        return err(format!(
            "the topology spans hosts {}: say which one this is with --host",
            names.join(", ")
        ));
    };
    let local = names.iter().position(|n| *n == h).ok_or_else(|| {
        TopoError(format!(
            "--host {h}: not one of the [placement] hosts ({})",
            names.join(", ")
        ))
    })?;
    if !o.assigned.is_empty() {
        // The controller's placement: every node on one of the hosts.
        let mut host_of = Vec::with_capacity(nodes.len());
        for n in nodes {
            let h = o.assigned.get(&n.name).ok_or_else(|| {
                TopoError(format!(
                    "node '{}': the controller's placement leaves it out",
                    n.name
                ))
            })?;
            host_of.push(names.iter().position(|x| x == h).ok_or_else(|| {
                TopoError(format!("node '{}': placed on unknown host {h}", n.name))
            })?);
        }
        return Ok(Some(Placement {
            hosts,
            host_of,
            local,
        }));
    }
    let mut host_of: Vec<Option<usize>> = vec![None; nodes.len()];
    for (i, spec) in t.nodes.iter().enumerate() {
        if let Some(h) = &spec.host {
            host_of[i] = Some(names.iter().position(|n| n == h).ok_or_else(|| {
                TopoError(format!(
                    "node '{}': host = \"{h}\" is not one of the [placement] hosts",
                    spec.name
                ))
            })?);
        }
    }
    let free: Vec<NodeId> = match p.mode {
        PlacementMode::Key => {
            if let Some(i) = host_of.iter().position(Option::is_none) {
                return err(format!(
                    "node '{}': [placement] mode = \"key\" needs host = on every node",
                    nodes[i].name
                ));
            }
            Vec::new()
        }
        PlacementMode::RoundRobin => (0..nodes.len()).filter(|&i| host_of[i].is_none()).collect(),
        PlacementMode::Block => {
            // Breadth-first over the nodes with several links (routers, switches), each
            // followed by the nodes hanging off it alone (its hosts): neighbours come
            // together, so contiguous blocks cut few links, and never a host from its router.
            let mut adj = vec![Vec::new(); nodes.len()];
            for l in links {
                let (a, b) = (l.ends[0].0, l.ends[1].0);
                adj[a].push(b);
                adj[b].push(a);
            }
            let leaf = |n: usize| adj[n].len() == 1 && adj[adj[n][0]].len() > 1;
            let mut seen = vec![false; nodes.len()];
            let mut order = Vec::with_capacity(nodes.len());
            for start in (0..nodes.len()).filter(|&n| !leaf(n)) {
                if seen[start] {
                    continue;
                }
                seen[start] = true;
                let mut q = std::collections::VecDeque::from([start]);
                while let Some(n) = q.pop_front() {
                    order.push(n);
                    for &m in &adj[n] {
                        if leaf(m) && !seen[m] {
                            seen[m] = true;
                            order.push(m);
                        }
                    }
                    for &m in &adj[n] {
                        if !seen[m] {
                            seen[m] = true;
                            q.push_back(m);
                        }
                    }
                }
            }
            order.extend((0..nodes.len()).filter(|&n| !seen[n]));
            order
                .into_iter()
                .filter(|&i| host_of[i].is_none())
                .collect()
        }
    };
    let per = free.len().div_ceil(hosts.len()).max(1);
    for (k, &n) in free.iter().enumerate() {
        host_of[n] = Some(match p.mode {
            PlacementMode::RoundRobin => k % hosts.len(),
            PlacementMode::Block | PlacementMode::Key => (k / per).min(hosts.len() - 1),
        });
    }
    Ok(Some(Placement {
        hosts,
        host_of: host_of.into_iter().map(|h| h.unwrap_or(0)).collect(),
        local,
    }))
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
    // A host's segment gets a /24 (room to add hosts by hand), unless there are more such
    // segments than the pool's lower half holds (a compact network of 100,000 hosts): then a
    // host alone with its router gets a /30 like a router-to-router link.
    let wants_24 = segs
        .iter()
        .filter(|s| s.subnet.is_none())
        .filter(|s| {
            let m: Vec<_> = s
                .members
                .iter()
                .filter(|&&(n, _)| nodes[n].role != Role::Switch)
                .collect();
            !m.is_empty() && (m.len() > 2 || m.iter().any(|&&(n, _)| nodes[n].kind.is_host()))
        })
        .count() as u64;
    let tight = wants_24 + 1 > half / 256;
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
        let has_host = addressable.iter().any(|&(n, _)| nodes[n].kind.is_host());
        if segs[s].subnet.is_none() {
            let p2p = (!has_host || tight) && addressable.len() <= 2;
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
        if !nodes[id].kind.is_host() {
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
    paths: bool,
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
    if mode != RoutingMode::Static && paths {
        // Destinations: a segment with one router on it (a host's link, say) is reached
        // through that router exactly as every other such segment of that router: one
        // class per router, worked out once. Every other segment (a switch's) is a class of
        // its own.
        let mut classes: Vec<(Dest, Vec<PrefixOf>)> = Vec::new();
        let mut class_of_router: HashMap<NodeId, usize> = HashMap::new();
        // Which end of a link between two routers its subnet folds into: one that is a class
        // anyway (it has hosts), else one with a twin (a class searched with its twins'),
        // else the first. In a fat tree only edge and core routers are then classes, the
        // aggregation routers none: a search per pod and per core group.
        let mut has_hosts = vec![false; nodes.len()];
        for (d, a) in attach.iter().enumerate() {
            if let [(r, ..)] = a[..]
                && segs[d].subnet.is_some()
            {
                has_hosts[r] = true;
            }
        }
        let nbrs = Twins::neighbours(nodes, &attach, segs);
        let has_twin = Twins::keyed(nodes, &nbrs);
        for (d, dseg) in segs.iter().enumerate() {
            let Some(prefix) = dseg.subnet else { continue };
            let mut routers_on = dseg.members.iter().filter(|&&(n, _)| is_router(&nodes[n]));
            let single = match (routers_on.next(), routers_on.next(), &attach[d][..]) {
                (Some(&(r, _)), None, [(a, ..)]) if r == *a => Some(r),
                // A link between two routers is reached through its first router (the
                // second is its neighbour there): a path at most one hop longer than the
                // shortest for half the network, and one class per router instead of one
                // per link, which is what keeps 100,000-node plans quadratic in routers only.
                (Some(&(r, _)), Some(&(r2, _)), [(a, ..), (b, ..)])
                    if dseg.members.len() == 2 && r == *a && r2 == *b =>
                {
                    Some(
                        if has_hosts[r] || (!has_hosts[r2] && (has_twin[r] || !has_twin[r2])) {
                            r
                        } else {
                            r2
                        },
                    )
                }
                _ => None,
            };
            match single {
                Some(r) => {
                    let c = *class_of_router.entry(r).or_insert_with(|| {
                        classes.push((Dest::Router(r), Vec::new()));
                        classes.len() - 1
                    });
                    classes[c].1.push((prefix, d));
                }
                None => classes.push((Dest::Segment(d), vec![(prefix, d)])),
            }
        }
        // Two passes: the first counts each router's next-hop sets (an emulated router's most
        // common becomes its default), the second writes out the rest. The second searches
        // again unless the (destination, router) table fitted in memory.
        let mut paths = Paths::new(nodes, &attach, mode);
        let routers = paths.routers.clone();
        // Per router: its distinct next-hop sets, numbered, and how many prefixes use each.
        let mut counts: Vec<Vec<u64>> = vec![Vec::new(); nodes.len()];
        let mut sets: Vec<hashbrown::HashMap<Vec<NextHop>, u32>> =
            vec![hashbrown::HashMap::new(); nodes.len()];
        let mut hops = Vec::new();
        // The (destination, router) -> set table, when it fits in 256 MiB: then the second
        // pass reads it instead of searching again.
        let cells = classes.len().saturating_mul(routers.len());
        let mut table: Vec<u32> = if cells <= 64 << 20 {
            vec![u32::MAX; cells]
        } else {
            Vec::new()
        };
        let twins = Twins::find(nodes, &nbrs, &classes);
        let order = twins.order(classes.len());
        let mut cp = ClassPaths::new(&mut paths, &twins);
        // Per router: the hop set of its last class and its number. Consecutive classes
        // (a pod's edge routers, taken together) mostly reach a router through the same
        // hops, and comparing is cheaper than hashing the set again.
        let mut last: Vec<(Vec<NextHop>, u32)> = vec![(Vec::new(), 0); routers.len()];
        // A group representative's set per router: a twin's class differs from it only at
        // the twin, its neighbours and the representative, so the rest is copied.
        let mut rep_ids: Vec<u32> = vec![u32::MAX; routers.len()];
        let mut ids: Vec<u32> = vec![u32::MAX; routers.len()];
        let mut redo: Vec<usize> = Vec::new();
        for &c in &order {
            let (d, prefixes) = &classes[c];
            let rep = cp.prepare(&classes, c);
            let member = match d {
                Dest::Router(r) => *r,
                Dest::Segment(_) => usize::MAX,
            };
            // The routers whose sets are worked out here (all, unless mirrored).
            redo.clear();
            match rep {
                Some(r) => {
                    ids.copy_from_slice(&rep_ids);
                    ids[cp.paths.index[member] as usize] = u32::MAX;
                    redo.push(cp.paths.index[r] as usize);
                    redo.extend(
                        twins.nbrs_of[&member]
                            .iter()
                            .map(|&y| cp.paths.index[y] as usize),
                    );
                }
                None => redo.extend(0..routers.len()),
            }
            for &k in &redo {
                let x = routers[k];
                cp.hops(x, rep, member, &mut hops);
                if hops.is_empty() {
                    ids[k] = u32::MAX;
                    continue;
                }
                ids[k] = if !last[k].0.is_empty() && last[k].0 == hops {
                    last[k].1
                } else {
                    let next = sets[x].len() as u32;
                    let id = *sets[x].entry_ref(hops.as_slice()).or_insert(next);
                    if id == next {
                        counts[x].push(0);
                    }
                    last[k].0.clone_from(&hops);
                    last[k].1 = id;
                    id
                };
            }
            if rep.is_none()
                && let Some(g) = twins.group_of[c]
                && twins.groups[g][0] == c
            {
                rep_ids.copy_from_slice(&ids);
            }
            for (k, &x) in routers.iter().enumerate() {
                let id = ids[k];
                if id == u32::MAX {
                    continue;
                }
                counts[x][id as usize] += prefixes.len() as u64;
                if let Some(cell) = table.get_mut(c * routers.len() + k) {
                    *cell = id;
                }
            }
        }
        let mut default: Vec<Option<u32>> = vec![None; nodes.len()];
        let mut default_hops: Vec<Option<Vec<NextHop>>> = vec![None; nodes.len()];
        for &x in &routers {
            if nodes[x].role != Role::Router {
                continue; // a kernel-forwarded router gets every route
            }
            let best = sets[x]
                .iter()
                .map(|(h, &id)| (h, id, counts[x][id as usize]))
                .filter(|&(_, _, n)| n >= 2)
                .max_by_key(|&(_, id, n)| (n, std::cmp::Reverse(id)));
            if let Some((h, id, _)) = best {
                default[x] = Some(id);
                default_hops[x] = Some(h.clone());
            }
        }
        // Routes as (prefix, set number); a class's prefixes aggregated once, since every
        // router reaches all of them through the same hops.
        let mut found: Vec<Vec<((Ipv4Addr, u8), u32)>> = vec![Vec::new(); nodes.len()];
        // The routers on one of a class's segments are marked with the class: looking that up
        // is one load per router, where searching their interfaces for each prefix was most
        // of a 100,000-node plan's time.
        let mut on_class: Vec<usize> = vec![usize::MAX; nodes.len()];
        for &c in &order {
            let (d, prefixes) = &classes[c];
            for &(_, seg) in prefixes {
                for &(m, _) in &segs[seg].members {
                    on_class[m] = c;
                }
            }
            let merged: Vec<(Ipv4Addr, u8)> =
                aggregated(prefixes.iter().map(|&(p, _)| (p, ())).collect())
                    .into_iter()
                    .map(|(p, ())| p)
                    .collect();
            let rep = if table.is_empty() {
                cp.prepare(&classes, c)
            } else {
                None
            };
            let member = match d {
                Dest::Router(r) => *r,
                Dest::Segment(_) => usize::MAX,
            };
            for (k, &x) in routers.iter().enumerate() {
                let id = if table.is_empty() {
                    cp.hops(x, rep, member, &mut hops);
                    if hops.is_empty() {
                        continue;
                    }
                    sets[x].get(hops.as_slice()).copied()
                } else {
                    Some(table[c * routers.len() + k]).filter(|&id| id != u32::MAX)
                };
                let Some(id) = id else {
                    continue;
                };
                if Some(id) == default[x] {
                    continue;
                }
                // A router on one of these segments (the far end of a link folded into its
                // first router's class) takes them one by one, leaving out its own.
                if on_class[x] == c {
                    for &(prefix, seg) in prefixes {
                        if !nodes[x].ifaces.iter().any(|i| i.segment == seg) {
                            found[x].push((prefix, id));
                        }
                    }
                } else {
                    found[x].extend(merged.iter().map(|&p| (p, id)));
                }
            }
        }
        drop(cp);
        drop(paths);
        for (x, d) in default_hops.into_iter().enumerate() {
            nodes[x].default = d;
        }
        for (x, entries) in found.into_iter().enumerate() {
            if entries.is_empty() {
                continue;
            }
            let mut by_id: Vec<Option<&Vec<NextHop>>> = vec![None; sets[x].len()];
            for (h, &id) in &sets[x] {
                by_id[id as usize] = Some(h);
            }
            for (prefix, id) in aggregated(entries) {
                if let Some(h) = by_id[id as usize] {
                    nodes[x].routes.push(Route {
                        prefix,
                        hops: h.clone(),
                    });
                }
            }
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

/// Merges two routes whose prefixes are the halves of one prefix and whose next hops are the
/// same into a route to that prefix, again and again: exactly the same forwarding for every
/// address, and a core router of a fat tree holds a few routes per pod instead of one per
/// subnet. Sorted by prefix after.
#[cfg(test)]
fn aggregate(routes: &mut Vec<Route>) {
    let entries = routes.drain(..).map(|r| (r.prefix, r.hops)).collect();
    routes.extend(
        aggregated(entries)
            .into_iter()
            .map(|(prefix, hops)| Route { prefix, hops }),
    );
}

/// [`aggregate`] over any next-hop value (an interned set's number, say).
fn aggregated<T: PartialEq>(entries: Vec<((Ipv4Addr, u8), T)>) -> Vec<((Ipv4Addr, u8), T)> {
    // The networks of each length, kept as merges add parents: each level is visited once,
    // where scanning the whole table per length was most of a large plan's aggregation.
    let mut by_len: Vec<Vec<u32>> = vec![Vec::new(); 33];
    let mut table: hashbrown::HashMap<(u8, u32), T> =
        hashbrown::HashMap::with_capacity(entries.len());
    for ((net, len), v) in entries {
        let key = (len, u32::from(net));
        if table.insert(key, v).is_none() {
            by_len[len as usize].push(key.1);
        }
    }
    for len in (1..=32u8).rev() {
        let nets = std::mem::take(&mut by_len[len as usize]);
        for net in nets {
            let bit = 1u32 << (32 - len);
            if net & bit != 0 {
                continue; // the upper half: merged from its lower one
            }
            let parent = (len - 1, net);
            let same = match (table.get(&(len, net)), table.get(&(len, net | bit))) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            };
            if !same || table.contains_key(&parent) {
                continue;
            }
            if let Some(v) = table.remove(&(len, net)) {
                table.remove(&(len, net | bit));
                table.insert(parent, v);
                by_len[len as usize - 1].push(net);
            }
        }
    }
    let mut out: Vec<((Ipv4Addr, u8), T)> = table
        .into_iter()
        .map(|((len, net), v)| ((Ipv4Addr::from(net), len), v))
        .collect();
    out.sort_by_key(|(p, _)| (u32::from(p.0), p.1));
    out
}

/// A subnet and its segment.
type PrefixOf = ((Ipv4Addr, u8), usize);

/// A destination of the route computation: a router (every segment only it serves), or a
/// segment.
#[derive(Debug, Clone, Copy)]
enum Dest {
    Router(NodeId),
    Segment(usize),
}

/// Shortest paths over the routers only (hosts are segments' ends, never transit), with
/// buffers kept between runs: a run per destination is O(routers + links), whatever the
/// number of hosts.
struct Paths<'a> {
    nodes: &'a [Node],
    attach: &'a [Vec<(NodeId, usize, u32, u32)>],
    mode: RoutingMode,
    /// Router node ids, and each router's index among them.
    routers: Vec<NodeId>,
    index: Vec<u32>,
    /// Per router index: the segments it shares with another router (link up), with its
    /// interface there.
    segs_of: Vec<Vec<(usize, usize)>>,
    dist: Vec<u64>,
    /// Per router index, after a run: the next hops that reach the destination at its cost
    /// (recorded while relaxing, so reading them is free).
    parents: Vec<Vec<NextHop>>,
    /// After a run: the nodes that are the destination or on it.
    on: Vec<NodeId>,
    heap: BinaryHeap<std::cmp::Reverse<(u64, u32)>>,
    /// Every link costs the same (the default): breadth-first order is shortest-first, and
    /// a queue replaces the heap (whose pops were 41% of a 100,000-node plan).
    uniform: bool,
    queue: std::collections::VecDeque<u32>,
    /// Each node's place in the order of names.
    rank: Vec<u32>,
}

impl<'a> Paths<'a> {
    fn new(
        nodes: &'a [Node],
        attach: &'a [Vec<(NodeId, usize, u32, u32)>],
        mode: RoutingMode,
    ) -> Paths<'a> {
        let routers: Vec<NodeId> = (0..nodes.len())
            .filter(|&n| nodes[n].kind == Kind::Router)
            .collect();
        let mut index = vec![u32::MAX; nodes.len()];
        for (k, &r) in routers.iter().enumerate() {
            index[r] = k as u32;
        }
        let mut segs_of = vec![Vec::new(); routers.len()];
        for (s, a) in attach.iter().enumerate() {
            // A segment with one router leads nowhere else (a host's link).
            if a.len() < 2 {
                continue;
            }
            for &(r, i, _, _) in a {
                segs_of[index[r] as usize].push((s, i));
            }
        }
        let mut costs = attach.iter().flatten().map(|&(_, _, c, _)| c);
        let first = costs.next();
        let uniform = costs.all(|c| Some(c) == first);
        let mut by_name: Vec<NodeId> = (0..nodes.len()).collect();
        by_name.sort_by(|&a, &b| nodes[a].name.cmp(&nodes[b].name));
        let mut rank = vec![0u32; nodes.len()];
        for (i, &n) in by_name.iter().enumerate() {
            rank[n] = i as u32;
        }
        Paths {
            rank,
            uniform,
            queue: std::collections::VecDeque::new(),
            nodes,
            attach,
            mode,
            dist: vec![u64::MAX; routers.len()],
            parents: vec![Vec::new(); routers.len()],
            on: Vec::new(),
            routers,
            index,
            segs_of,
            heap: BinaryHeap::new(),
        }
    }

    /// Every router's cost to reach `d` (Dijkstra from the destination: a router on a
    /// segment reaches it at its link's cost; a router reaches a segment another router on it
    /// reaches at its own link's cost more; a destination router is reached at no cost).
    fn run(&mut self, d: Dest) {
        self.dist.fill(u64::MAX);
        self.parents.iter_mut().for_each(Vec::clear);
        self.on.clear();
        let sources: Vec<(NodeId, u64)> = match d {
            Dest::Router(r) => vec![(r, 0)],
            Dest::Segment(s) => {
                self.on
                    .extend(self.nodes.iter().enumerate().filter_map(|(n, node)| {
                        node.ifaces.iter().any(|i| i.segment == s).then_some(n)
                    }));
                self.attach[s]
                    .iter()
                    .map(|&(r, _, c, _)| (r, c as u64))
                    .collect()
            }
        };
        if let Dest::Router(r) = d {
            self.on.push(r);
        }
        // Breadth-first needs every source at one distance (a segment's routers, at its
        // links' one cost; a router at zero).
        let flat = self.uniform && sources.windows(2).all(|w| w[0].1 == w[1].1);
        for (r, cost) in sources {
            let k = self.index[r] as usize;
            if cost < self.dist[k] {
                self.dist[k] = cost;
                if flat {
                    self.queue.push_back(k as u32);
                } else {
                    self.heap.push(std::cmp::Reverse((cost, k as u32)));
                }
            }
        }
        loop {
            let (c, y) = if flat {
                let Some(y) = self.queue.pop_front() else {
                    break;
                };
                (self.dist[y as usize], y as usize)
            } else {
                let Some(std::cmp::Reverse((c, y))) = self.heap.pop() else {
                    break;
                };
                (c, y as usize)
            };
            if c > self.dist[y] {
                continue;
            }
            let yn = self.routers[y];
            for &(s, yi) in &self.segs_of[y] {
                for &(x, xi, cost, weight) in &self.attach[s] {
                    if x == yn {
                        continue;
                    }
                    let k = self.index[x] as usize;
                    let nc = c + cost as u64;
                    let hop = NextHop {
                        iface: xi,
                        node: yn,
                        node_iface: yi,
                        weight,
                    };
                    if nc < self.dist[k] {
                        self.dist[k] = nc;
                        self.parents[k].clear();
                        self.parents[k].push(hop);
                        if flat {
                            self.queue.push_back(k as u32);
                        } else {
                            self.heap.push(std::cmp::Reverse((nc, k as u32)));
                        }
                    } else if nc == self.dist[k] {
                        self.parents[k].push(hop);
                    }
                }
            }
        }
    }

    /// After [`Paths::run`]: router `x`'s next hops towards the destination (none when it
    /// is the destination, is on it, or cannot reach it), in the routing mode's form.
    fn hops(&self, x: NodeId, out: &mut Vec<NextHop>) {
        out.clear();
        let k = self.index[x] as usize;
        if self.dist[k] == u64::MAX || self.on.contains(&x) {
            return;
        }
        out.extend_from_slice(&self.parents[k]);
        self.finish(out);
    }

    /// Raw next hops in the routing mode's form.
    fn finish(&self, out: &mut Vec<NextHop>) {
        // By the neighbour's name (its rank among the names: comparing strings here was most
        // of a large fat tree's plan), then interface.
        let key = |h: &NextHop| (self.rank[h.node], h.iface, h.node_iface, h.weight);
        if self.mode == RoutingMode::ShortestPath {
            // One hop: the first by name, without sorting the rest.
            if let Some(best) = out.iter().copied().min_by_key(key) {
                out.clear();
                out.push(best);
            }
            return;
        }
        out.sort_unstable_by_key(key);
        out.dedup();
        match self.mode {
            RoutingMode::ShortestPath => out.truncate(1),
            RoutingMode::Ecmp => out.iter_mut().for_each(|h| h.weight = 1),
            RoutingMode::Weighted | RoutingMode::Static => {}
        }
    }
}

/// Routers whose neighbours are the same routers over links of the same cost and weight
/// (the edge routers of one fat-tree pod, the core routers of one group): from anywhere else
/// the paths to one are the paths to another but for the last hop, so one search serves them
/// all. Such routers are never neighbours of each other (each would be its own neighbour).
struct Twins {
    /// Groups of classes (`Dest::Router`) whose routers are twins, two or more each.
    groups: Vec<Vec<usize>>,
    group_of: Vec<Option<usize>>,
    /// By node: its group.
    node_group: Vec<Option<usize>>,
    /// A twin's links, both ways: (router, neighbour) -> (its interface, the neighbour's,
    /// the link's weight).
    link: HashMap<(NodeId, NodeId), (usize, usize, u32)>,
    /// A twin's neighbours.
    nbrs_of: HashMap<NodeId, Vec<NodeId>>,
}

/// Each router's neighbours over point-to-point links between two routers (neighbour, cost,
/// weight, own interface, neighbour's interface); none for a router on a segment shared by
/// more (a switch's), which no twin may be.
type Neighbours = Vec<Option<Vec<(NodeId, u32, u32, usize, usize)>>>;

/// The key twins share: their neighbours with costs and weights, sorted (none for a router
/// that cannot be one).
fn twin_key(nbrs: &Neighbours, r: NodeId) -> Option<Vec<(NodeId, u32, u32)>> {
    let v = nbrs[r].as_ref().filter(|v| !v.is_empty())?;
    let mut key: Vec<(NodeId, u32, u32)> = v.iter().map(|e| (e.0, e.1, e.2)).collect();
    key.sort_unstable();
    // Two links to one neighbour would make the mirror ambiguous.
    key.windows(2).all(|w| w[0].0 != w[1].0).then_some(key)
}

impl Twins {
    /// By node: whether another router has the same neighbours.
    fn keyed(nodes: &[Node], nbrs: &Neighbours) -> Vec<bool> {
        let mut count: HashMap<Vec<(NodeId, u32, u32)>, u32> = HashMap::new();
        let keys: Vec<Option<Vec<(NodeId, u32, u32)>>> = (0..nodes.len())
            .map(|r| {
                (nodes[r].kind == Kind::Router)
                    .then(|| twin_key(nbrs, r))
                    .flatten()
            })
            .collect();
        for k in keys.iter().flatten() {
            *count.entry(k.clone()).or_default() += 1;
        }
        keys.iter()
            .map(|k| k.as_ref().is_some_and(|k| count[k] > 1))
            .collect()
    }

    fn neighbours(
        nodes: &[Node],
        attach: &[Vec<(NodeId, usize, u32, u32)>],
        segs: &[Segment],
    ) -> Neighbours {
        let mut nbrs: Neighbours = vec![Some(Vec::new()); nodes.len()];
        for (sg, a) in attach.iter().enumerate() {
            if a.len() < 2 {
                continue;
            }
            let p2p = a.len() == 2 && segs[sg].members.len() == 2;
            for &(r, ri, cost, weight) in a {
                if !p2p {
                    nbrs[r] = None;
                    continue;
                }
                let &(y, yi, _, _) = a.iter().find(|e| e.0 != r).unwrap_or(&a[0]);
                if let Some(v) = &mut nbrs[r] {
                    v.push((y, cost, weight, ri, yi));
                }
            }
        }
        nbrs
    }

    fn find(nodes: &[Node], nbrs: &Neighbours, classes: &[(Dest, Vec<PrefixOf>)]) -> Twins {
        let mut by_key: HashMap<Vec<(NodeId, u32, u32)>, Vec<usize>> = HashMap::new();
        for (c, (d, _)) in classes.iter().enumerate() {
            if let Dest::Router(r) = *d
                && let Some(key) = twin_key(nbrs, r)
            {
                by_key.entry(key).or_default().push(c);
            }
        }
        let mut groups: Vec<Vec<usize>> = by_key.into_values().filter(|g| g.len() > 1).collect();
        #[cfg(test)]
        if NO_TWINS.with(std::cell::Cell::get) {
            groups.clear();
        }
        groups.sort_unstable();
        let mut group_of = vec![None; classes.len()];
        let mut node_group = vec![None; nodes.len()];
        let mut link = HashMap::new();
        let mut nbrs_of: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
        for (g, members) in groups.iter().enumerate() {
            for &c in members {
                group_of[c] = Some(g);
                let Dest::Router(r) = classes[c].0 else {
                    continue;
                };
                node_group[r] = Some(g);
                nbrs_of.insert(r, nbrs[r].iter().flatten().map(|e| e.0).collect());
                for &(y, _, w, ri, yi) in nbrs[r].iter().flatten() {
                    link.insert((r, y), (ri, yi, w));
                    link.insert((y, r), (yi, ri, w));
                }
            }
        }
        Twins {
            groups,
            group_of,
            node_group,
            link,
            nbrs_of,
        }
    }

    /// The order to take classes in: each group's together (one search for all), then the
    /// others.
    fn order(&self, n: usize) -> Vec<usize> {
        let mut out: Vec<usize> = self.groups.iter().flatten().copied().collect();
        out.extend((0..n).filter(|&c| self.group_of[c].is_none()));
        out
    }
}

#[cfg(test)]
thread_local! {
    /// Tests compare plans made with and without twins.
    static NO_TWINS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Which search the paths hold now, and the class-by-class view over it.
struct ClassPaths<'p, 'a> {
    paths: &'p mut Paths<'a>,
    twins: &'p Twins,
    /// The destination searched last.
    current: Option<NodeId>,
    current_seg: Option<usize>,
    /// Per group: whether its representative's search serves the others (no path between
    /// two routers passes through a third twin of theirs), once known.
    usable: Vec<Option<bool>>,
}

impl<'p, 'a> ClassPaths<'p, 'a> {
    fn new(paths: &'p mut Paths<'a>, twins: &'p Twins) -> Self {
        ClassPaths {
            usable: vec![None; twins.groups.len()],
            paths,
            twins,
            current: None,
            current_seg: None,
        }
    }

    fn search(&mut self, d: Dest) {
        match d {
            Dest::Router(r) if self.current == Some(r) => return,
            Dest::Segment(sg) if self.current_seg == Some(sg) => return,
            _ => {}
        }
        self.paths.run(d);
        self.current = match d {
            Dest::Router(r) => Some(r),
            Dest::Segment(_) => None,
        };
        self.current_seg = match d {
            Dest::Segment(sg) => Some(sg),
            Dest::Router(_) => None,
        };
    }

    /// Makes the paths ready for class `c` (destination `d`): its group's representative's
    /// search when that serves it, else its own. Returns the representative when mirrored.
    fn prepare(&mut self, classes: &[(Dest, Vec<PrefixOf>)], c: usize) -> Option<NodeId> {
        let d = classes[c].0;
        let (Some(g), Dest::Router(member)) = (self.twins.group_of[c], d) else {
            self.search(d);
            return None;
        };
        let rep_class = self.twins.groups[g][0];
        let Dest::Router(rep) = classes[rep_class].0 else {
            self.search(d);
            return None;
        };
        if rep == member || self.usable[g] == Some(false) {
            self.search(d);
            return None;
        }
        self.search(Dest::Router(rep));
        if self.usable[g].is_none() {
            let p = &*self.paths;
            let mine = |n: NodeId| self.twins.node_group[n] == Some(g);
            let ok = p.routers.iter().enumerate().all(|(k, &x)| {
                mine(x) || p.parents[k].iter().all(|h| h.node == rep || !mine(h.node))
            });
            self.usable[g] = Some(ok);
            if !ok {
                self.search(d);
                return None;
            }
        }
        Some(rep)
    }

    /// Router `x`'s next hops for the class prepared with `prepare` (which returned `rep`),
    /// whose destination router is `member`.
    fn hops(&self, x: NodeId, rep: Option<NodeId>, member: NodeId, out: &mut Vec<NextHop>) {
        let Some(rep) = rep else {
            return self.paths.hops(x, out);
        };
        out.clear();
        if x == member {
            return;
        }
        let p = &*self.paths;
        let link = &self.twins.link;
        if x == rep {
            // The mirror of the member's hops towards the representative: the same
            // neighbours, through the representative's own links.
            let k = p.index[member] as usize;
            if p.dist[k] == u64::MAX {
                return;
            }
            for h in &p.parents[k] {
                if let Some(&(ri, yi, w)) = link.get(&(rep, h.node)) {
                    out.push(NextHop {
                        iface: ri,
                        node: h.node,
                        node_iface: yi,
                        weight: w,
                    });
                }
            }
        } else {
            let k = p.index[x] as usize;
            if p.dist[k] == u64::MAX {
                return;
            }
            for h in &p.parents[k] {
                if h.node == rep {
                    // The last hop: to the member itself.
                    if let Some(&(xi, mi, w)) = link.get(&(x, member)) {
                        out.push(NextHop {
                            iface: xi,
                            node: member,
                            node_iface: mi,
                            weight: w,
                        });
                    }
                } else {
                    out.push(*h);
                }
            }
        }
        p.finish(out);
    }
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
            paths: true,
            workers: 2,
            memory: 1 << 30,
            name: "t".into(),
            max_namespaces: 10_000,
            host: None,
            tunnels: Default::default(),
            assigned: Default::default(),
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
    fn halves_with_the_same_hops_become_their_prefix_and_nothing_else_moves() {
        let h = |node| {
            vec![NextHop {
                iface: 0,
                node,
                node_iface: 0,
                weight: 1,
            }]
        };
        let r = |a: [u8; 4], len, node| Route {
            prefix: (Ipv4Addr::from(a), len),
            hops: h(node),
        };
        let mut routes = vec![
            r([10, 0, 0, 0], 24, 1),
            r([10, 0, 1, 0], 24, 1),
            r([10, 0, 2, 0], 24, 1),
            r([10, 0, 3, 0], 24, 2), // other hops: 10.0.2.0/24 stays alone
            r([10, 0, 4, 0], 24, 1), // its half 10.0.5.0/24 is not routed here: stays
            r([10, 1, 0, 0], 30, 3),
            r([10, 1, 0, 4], 30, 3),
        ];
        aggregate(&mut routes);
        let got: Vec<(String, usize)> = routes
            .iter()
            .map(|r| (format!("{}/{}", r.prefix.0, r.prefix.1), r.hops[0].node))
            .collect();
        let want = [
            ("10.0.0.0/23", 1),
            ("10.0.2.0/24", 1),
            ("10.0.3.0/24", 2),
            ("10.0.4.0/24", 1),
            ("10.1.0.0/29", 3),
        ];
        assert_eq!(
            got,
            want.iter()
                .map(|(p, n)| (p.to_string(), *n))
                .collect::<Vec<_>>()
        );
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

    /// A router, a subnet, and its hops there (neighbour, interfaces, weight).
    type RouterHops = (String, (Ipv4Addr, u8), Vec<(String, usize, usize, u32)>);

    /// Every router's next hops towards every subnet, as the workers would use them.
    fn all_hops(p: &Plan) -> Vec<RouterHops> {
        let mut out = Vec::new();
        for n in p.nodes.iter().filter(|n| n.kind == Kind::Router) {
            for sg in &p.segments {
                let Some(prefix) = sg.subnet else { continue };
                let hops = n
                    .hops_for(prefix)
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    p.nodes[h.node].name.clone(),
                                    h.iface,
                                    h.node_iface,
                                    h.weight,
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((n.name.clone(), prefix, hops));
            }
        }
        out
    }

    #[test]
    fn twins_searched_once_route_exactly_as_searched_each() {
        let costly = r#"
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
            [[nodes]]
            name = "e"
            kind = "router"
            [[nodes]]
            name = "h1"
            kind = "host"
            [[nodes]]
            name = "h2"
            kind = "host"
            [[nodes]]
            name = "h3"
            kind = "host"
            [[links]]
            a = "h1"
            b = "a"
            [[links]]
            a = "h2"
            b = "b"
            [[links]]
            a = "h3"
            b = "e"
            # a and b are twins (both on c and d, same costs); e hangs off c and d unevenly.
            [[links]]
            a = "a"
            b = "c"
            cost = 2
            [[links]]
            a = "a"
            b = "d"
            [[links]]
            a = "b"
            b = "c"
            cost = 2
            [[links]]
            a = "b"
            b = "d"
            [[links]]
            a = "c"
            b = "e"
            [[links]]
            a = "d"
            b = "e"
            cost = 2
        "#;
        let mut cases: Vec<Topology> = [
            "fat-tree,4",
            "fat-tree,6",
            "tree,3,3",
            "ring,6",
            "mesh,4",
            "torus,3,4",
        ]
        .iter()
        .map(|spec| generate(spec, link_defaults("").unwrap()).unwrap())
        .collect();
        cases.push(parse(costly).unwrap());
        for base in cases {
            for mode in [
                RoutingMode::ShortestPath,
                RoutingMode::Ecmp,
                RoutingMode::Weighted,
            ] {
                let mut t = base.clone();
                t.routing.mode = mode;
                let with = plan(&t, &opts()).unwrap();
                NO_TWINS.with(|c| c.set(true));
                let without = plan(&t, &opts());
                NO_TWINS.with(|c| c.set(false));
                let without = without.unwrap();
                assert_eq!(all_hops(&with), all_hops(&without), "{mode:?}");
            }
        }
    }

    fn ring_with(placement: &str, extra: &str) -> String {
        let mut t = format!("{placement}\n");
        for r in ["r1", "r2", "r3", "r4"] {
            t += &format!(
                "[[nodes]]\nname = \"{r}\"\nkind = \"router\"\n{}",
                if r == "r3" { extra } else { "" }
            );
        }
        for h in ["h1", "h2", "h3", "h4"] {
            t += &format!("[[nodes]]\nname = \"{h}\"\nkind = \"host\"\n");
        }
        for (a, b) in [("r1", "r2"), ("r2", "r3"), ("r3", "r4"), ("r4", "r1")] {
            t += &format!("[[links]]\na = \"{a}\"\nb = \"{b}\"\n");
        }
        for i in 1..=4 {
            t += &format!("[[links]]\na = \"h{i}\"\nb = \"r{i}\"\n");
        }
        t
    }

    fn placed(text: &str, host: &str) -> Result<Plan, TopoError> {
        let mut o = opts();
        o.host = Some(host.into());
        plan(&parse(text)?, &o)
    }

    #[test]
    fn block_placement_halves_a_ring_and_keeps_hosts_with_their_routers() {
        let two = "[placement]\nhosts = { a = \"10.0.0.1:7100\", b = \"10.0.0.2:7100\" }";
        let p = placed(&ring_with(two, ""), "b").unwrap();
        let pl = p.placement.as_ref().unwrap();
        let on = |h: usize| -> Vec<&str> {
            (0..p.nodes.len())
                .filter(|&n| pl.host_of[n] == h)
                .map(|n| p.nodes[n].name.as_str())
                .collect()
        };
        assert_eq!(on(0), ["r1", "r2", "h1", "h2"]);
        assert_eq!(on(1), ["r3", "r4", "h3", "h4"]);
        assert_eq!(pl.local, 1);
        assert!(p.is_local(p.node("h3").unwrap()) && !p.is_local(p.node("h1").unwrap()));
        // Two ring links cut, each seen from this host's side.
        let cut: Vec<String> = p.cut_links().iter().map(|c| p.link_name(c.0)).collect();
        assert_eq!(cut.len(), 2, "{cut:?}");
        // Round-robin, and a pinned node.
        let rr = "[placement]\nmode = \"round-robin\"\nhosts = { a = \"10.0.0.1:7100\", b = \"10.0.0.2:7100\" }";
        let p = placed(&ring_with(rr, "host = \"a\"\n"), "a").unwrap();
        let pl = p.placement.as_ref().unwrap();
        assert_eq!(pl.host_of[p.node("r3").unwrap()], 0, "pinned by host =");
        assert_eq!(pl.host_of[p.node("r1").unwrap()], 0);
        assert_eq!(pl.host_of[p.node("r2").unwrap()], 1);
    }

    #[test]
    fn placement_mistakes_are_named() {
        let two = "[placement]\nhosts = { a = \"10.0.0.1:7100\", b = \"10.0.0.2:7100\" }";
        for (text, host, want) in [
            (
                ring_with(two, ""),
                None,
                "say which one this is with --host",
            ),
            (ring_with(two, ""), Some("c"), "--host c: not one of"),
            (ring_with("", ""), Some("a"), "has no [placement]"),
            (
                ring_with(two, "host = \"z\"\n"),
                Some("a"),
                "node 'r3': host = \"z\"",
            ),
            (ring_with("", "host = \"a\"\n"), None, "needs a [placement]"),
            (
                ring_with("[placement]\nhosts = { a = \"nowhere\" }", ""),
                Some("a"),
                "expected the tunnel's ADDR:PORT",
            ),
            (
                ring_with(
                    "[placement]\nmode = \"key\"\nhosts = { a = \"10.0.0.1:7100\" }",
                    "",
                ),
                Some("a"),
                "needs host = on every node",
            ),
        ] {
            let mut o = opts();
            o.host = host.map(String::from);
            let e = plan(&parse(&text).unwrap(), &o).unwrap_err();
            assert!(e.0.contains(want), "{want}: {}", e.0);
        }
    }
}
