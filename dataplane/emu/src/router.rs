//! An emulated IPv4 router: what a router node is inside the emulator. It costs kilobytes —
//! a compact longest-prefix table (one hash probe per prefix length in use), a neighbour
//! table for its connected segments (the emulator knows every address and MAC it built, so no
//! ARP is needed to reach them), pinned-path rules and weighted multipath with per-flow
//! affinity.
//!
//! It answers what a router answers: ARP for its addresses, ping of its addresses, ICMP time
//! exceeded when a TTL runs out (so `traceroute` works) and net unreachable without a route.
//! Replies are written over the frame that caused them, in its buffer, and leave by the
//! interface it came in on. IPv6 and VLAN-tagged frames are dropped and counted.

use linerate_dataplane::flowtable::FlowTable;
use linerate_dataplane::logic::Rule;
use linerate_dataplane::shard::FlowKey;
use linerate_dataplane::wire::{Headers, L3, checksum, parse_headers};
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send it (rewritten) out of this interface.
    Forward(usize),
    /// It was replaced by a reply of this length: send it back out of this interface.
    Reply {
        iface: usize,
        len: usize,
    },
    Drop(Why),
}

/// Why a router dropped a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Malformed,
    /// IPv6, VLAN or another protocol this router does not route.
    NotIpv4,
    /// Addressed to the router and not something it answers.
    ToRouter,
    /// No route, and the unreachable could not be sent (e.g. in answer to ICMP).
    NoRoute,
    /// TTL ran out and the time-exceeded could not be sent.
    TtlExpired,
    /// A virtual host got a packet for someone else.
    NotForUs,
}

/// A next hop: out of `iface` to the neighbour with MAC `mac`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hop {
    pub iface: usize,
    pub mac: [u8; 6],
    pub weight: u32,
}

struct Group {
    hops: Vec<Hop>,
    /// Smooth weighted round robin state, per hop.
    current: Vec<i64>,
    total: i64,
}

impl Group {
    /// The next new flow's hop: smooth weighted round robin, so any run of flows is split as
    /// close to the weights as whole flows allow (12 of 16 for weights 3:1).
    fn next(&mut self) -> usize {
        let mut best = 0;
        for (i, h) in self.hops.iter().enumerate() {
            self.current[i] += h.weight as i64;
            if self.current[i] > self.current[best] {
                best = i;
            }
        }
        self.current[best] -= self.total;
        best
    }
}

/// The router's interfaces, as built.
#[derive(Debug, Clone, Copy)]
pub struct Port {
    pub mac: [u8; 6],
    pub addr: Option<(Ipv4Addr, u8)>,
}

/// The emulation's subnets, one table shared by every router: a router's default route
/// (its most common next hops, see `plan`) serves only destinations in one of them, so an
/// address nobody has stays unreachable, as with every route written out.
#[derive(Debug, Default)]
pub struct Subnets {
    lens: Vec<u8>,
    nets: std::collections::HashSet<(u8, u32)>,
}

impl Subnets {
    pub fn new(subnets: impl IntoIterator<Item = (Ipv4Addr, u8)>) -> Subnets {
        let mut s = Subnets::default();
        for (net, len) in subnets {
            s.nets.insert((len, u32::from(net) & mask(len)));
            if !s.lens.contains(&len) {
                s.lens.push(len);
            }
        }
        s.lens.sort_unstable_by(|a, b| b.cmp(a));
        s
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        let a = u32::from(a);
        self.lens
            .iter()
            .any(|&len| self.nets.contains(&(len, a & mask(len))))
    }
}

/// Flows remembered per router for multipath affinity.
const FLOWS: usize = 4096;

pub struct Router {
    ports: Vec<Port>,
    /// Prefix lengths in use, longest first, and the routes: (length, network) -> group.
    lens: Vec<u8>,
    table: HashMap<(u8, u32), usize>,
    /// Next-hop groups, one per distinct set of hops (routes through the same hops share
    /// one), and the default's.
    groups: Vec<Group>,
    default: Option<usize>,
    subnets: std::sync::Arc<Subnets>,
    /// Addresses on connected segments: address -> (interface, MAC).
    neighbours: HashMap<Ipv4Addr, (usize, [u8; 6])>,
    pins: Vec<(Rule, Hop)>,
    /// Multipath affinity: a flow keeps the hop it was given (allocated with the first group
    /// of more than one hop).
    flows: Option<FlowTable<FlowKey, u8>>,
    /// A virtual host: answers for its addresses and forwards nothing.
    host: bool,
    /// A virtual host's default gateway.
    gateway: Option<Ipv4Addr>,
    pub counters: RouterCounters,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterCounters {
    pub forwarded: u64,
    pub replies: u64,
    pub dropped: u64,
}

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

impl Router {
    /// A router with interfaces `ports` in an emulation whose subnets are `subnets`.
    pub fn new(ports: Vec<Port>, subnets: std::sync::Arc<Subnets>) -> Router {
        Router {
            ports,
            lens: Vec::new(),
            table: HashMap::new(),
            groups: Vec::new(),
            default: None,
            subnets,
            neighbours: HashMap::new(),
            pins: Vec::new(),
            flows: None,
            host: false,
            gateway: None,
            counters: RouterCounters::default(),
        }
    }

    /// A virtual host on `ports`: ARP and ping for its addresses answered, nothing forwarded.
    pub fn host(ports: Vec<Port>, subnets: std::sync::Arc<Subnets>) -> Router {
        Router {
            host: true,
            ..Router::new(ports, subnets)
        }
    }

    pub fn ports(&self) -> &[Port] {
        &self.ports
    }

    /// A virtual host's default gateway (one of its neighbours).
    pub fn set_gateway(&mut self, gw: Option<Ipv4Addr>) {
        self.gateway = gw;
    }

    /// Where a virtual host sends a packet for `dst`: the neighbour itself on a connected
    /// segment, else its gateway. `(interface, MAC)`.
    pub fn next_hop(&self, dst: Ipv4Addr) -> Option<(usize, [u8; 6])> {
        self.neighbours
            .get(&dst)
            .or_else(|| self.neighbours.get(&self.gateway?))
            .copied()
    }

    /// A neighbour on a connected segment.
    pub fn add_neighbour(&mut self, addr: Ipv4Addr, iface: usize, mac: [u8; 6]) {
        self.neighbours.insert(addr, (iface, mac));
    }

    /// Replaces the routes: `(prefix, hops)`; a route with several hops spreads flows by
    /// weight, each flow keeping its hop.
    pub fn set_routes(&mut self, routes: &[((Ipv4Addr, u8), Vec<Hop>)], default: Option<&[Hop]>) {
        self.table.clear();
        self.groups.clear();
        self.default = None;
        let mut by_hops: HashMap<Vec<Hop>, usize> = HashMap::new();
        let mut lens: Vec<u8> = Vec::new();
        let mut group_of = |groups: &mut Vec<Group>, hops: &[Hop]| -> usize {
            if let Some(&g) = by_hops.get(hops) {
                return g;
            }
            groups.push(Group {
                total: hops.iter().map(|h| h.weight.max(1) as i64).sum(),
                current: vec![0; hops.len()],
                hops: hops.to_vec(),
            });
            by_hops.insert(hops.to_vec(), groups.len() - 1);
            groups.len() - 1
        };
        for ((net, len), hops) in routes {
            if hops.is_empty() {
                continue;
            }
            let key = (*len, u32::from(*net) & mask(*len));
            let g = group_of(&mut self.groups, hops);
            self.table.insert(key, g);
            if !lens.contains(len) {
                lens.push(*len);
            }
        }
        if let Some(hops) = default.filter(|h| !h.is_empty()) {
            self.default = Some(group_of(&mut self.groups, hops));
        }
        if self.groups.iter().any(|g| g.hops.len() > 1) && self.flows.is_none() {
            self.flows = Some(FlowTable::new(FLOWS));
        }
        lens.sort_unstable_by(|a, b| b.cmp(a));
        self.lens = lens;
        if let Some(f) = &mut self.flows {
            f.clear();
        }
    }

    /// Replaces the pinned-path rules (tried in order before the routes).
    pub fn set_pins(&mut self, pins: Vec<(Rule, Hop)>) {
        self.pins = pins;
    }

    fn lookup(&self, dst: Ipv4Addr) -> Option<usize> {
        let d = u32::from(dst);
        self.lens
            .iter()
            .find_map(|&len| self.table.get(&(len, d & mask(len))).copied())
            .or_else(|| self.default.filter(|_| self.subnets.contains(dst)))
    }

    fn own(&self, a: Ipv4Addr) -> bool {
        self.ports
            .iter()
            .any(|p| p.addr.is_some_and(|(x, _)| x == a))
    }

    /// Decides for the frame in `buf[..len]` that arrived on `in_iface`, rewriting it in
    /// place (MACs, TTL, checksum) or replacing it with a reply. `buf` is the frame's whole
    /// buffer: a reply may be longer than the frame (ICMP quotes the original header).
    pub fn handle(&mut self, buf: &mut [u8], len: usize, in_iface: usize) -> Action {
        let a = self.decide(buf, len, in_iface);
        match a {
            Action::Forward(_) => self.counters.forwarded += 1,
            Action::Reply { .. } => self.counters.replies += 1,
            Action::Drop(_) => self.counters.dropped += 1,
        }
        a
    }

    fn decide(&mut self, buf: &mut [u8], len: usize, in_iface: usize) -> Action {
        let Some(frame) = buf.get(..len) else {
            return Action::Drop(Why::Malformed);
        };
        let Ok(hdr) = parse_headers(frame) else {
            return Action::Drop(Why::Malformed);
        };
        if hdr.vlan.is_some() {
            return Action::Drop(Why::NotIpv4);
        }
        if hdr.ethertype == 0x0806 {
            return self.arp(buf, len, in_iface);
        }
        let L3::Ipv4 { src, dst, ttl, .. } = hdr.l3 else {
            return Action::Drop(Why::NotIpv4);
        };
        if self.own(dst) {
            return self.to_me(buf, len, in_iface, &hdr);
        }
        if self.host {
            return Action::Drop(Why::NotForUs);
        }
        if ttl <= 1 {
            return self
                .icmp_error(buf, len, in_iface, 11, 0, src)
                .unwrap_or(Action::Drop(Why::TtlExpired));
        }
        let hop = match self.route(&hdr, buf, dst) {
            Some(h) => h,
            None => {
                return self
                    .icmp_error(buf, len, in_iface, 3, 0, src)
                    .unwrap_or(Action::Drop(Why::NoRoute));
            }
        };
        let l3 = hdr.l3_offset as usize;
        buf[0..6].copy_from_slice(&hop.mac);
        buf[6..12].copy_from_slice(&self.ports[hop.iface].mac);
        // TTL - 1 with the checksum updated incrementally (RFC 1624).
        let c = u16::from_be_bytes([buf[l3 + 10], buf[l3 + 11]]);
        buf[l3 + 8] -= 1;
        let c = checksum::update_high_byte_decrement(c);
        buf[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        Action::Forward(hop.iface)
    }

    fn route(&mut self, hdr: &Headers, pkt: &[u8], dst: Ipv4Addr) -> Option<Hop> {
        if !self.pins.is_empty()
            && let Some((_, h)) = self.pins.iter().find(|(r, _)| r.matches(hdr))
        {
            return Some(*h);
        }
        if let Some(&(iface, mac)) = self.neighbours.get(&dst) {
            return Some(Hop {
                iface,
                mac,
                weight: 1,
            });
        }
        let g = self.lookup(dst)?;
        let group = &mut self.groups[g];
        if group.hops.len() == 1 {
            return Some(group.hops[0]);
        }
        let _ = pkt;
        let Some(key) = FlowKey::from_headers(hdr) else {
            return Some(group.hops[0]);
        };
        let flows = self.flows.as_mut()?;
        let i = match flows.get(&key) {
            Some(i) if (i as usize) < group.hops.len() => i as usize,
            _ => {
                let i = group.next();
                flows.insert(key, i as u8);
                i
            }
        };
        Some(group.hops[i])
    }

    /// ARP: a request for one of our addresses on `in_iface` becomes its reply, in place.
    fn arp(&self, buf: &mut [u8], len: usize, in_iface: usize) -> Action {
        if len < 42 || buf[14..22] != [0, 1, 8, 0, 6, 4, 0, 1] {
            return Action::Drop(Why::ToRouter);
        }
        let target = Ipv4Addr::new(buf[38], buf[39], buf[40], buf[41]);
        let me = self.ports[in_iface];
        if me.addr.is_none_or(|(a, _)| a != target) {
            return Action::Drop(Why::ToRouter);
        }
        let mut sender = [0u8; 10];
        sender.copy_from_slice(&buf[22..32]); // sender MAC + IP
        buf[21] = 2; // reply
        buf[32..42].copy_from_slice(&sender); // target = the asker
        buf[22..28].copy_from_slice(&me.mac);
        buf[28..32].copy_from_slice(&target.octets());
        buf[0..6].copy_from_slice(&sender[..6]);
        buf[6..12].copy_from_slice(&me.mac);
        Action::Reply {
            iface: in_iface,
            len: 42,
        }
    }

    /// Addressed to us: ping gets its echo; the rest is dropped.
    fn to_me(&self, buf: &mut [u8], len: usize, in_iface: usize, hdr: &Headers) -> Action {
        let l3 = hdr.l3_offset as usize;
        let l4 = hdr.l4_offset as usize;
        if hdr.proto != 1 || len < l4 + 8 || buf[l4] != 8 {
            return Action::Drop(Why::ToRouter);
        }
        let total = u16::from_be_bytes([buf[l3 + 2], buf[l3 + 3]]) as usize;
        if l3 + total > len || l3 + total < l4 + 8 {
            return Action::Drop(Why::Malformed);
        }
        // Echo request -> reply: swap addresses, type 0, checksums fixed.
        let mut src = [0u8; 4];
        src.copy_from_slice(&buf[l3 + 12..l3 + 16]);
        buf.copy_within(l3 + 16..l3 + 20, l3 + 12);
        buf[l3 + 16..l3 + 20].copy_from_slice(&src);
        buf[l3 + 8] = 64;
        buf[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&buf[l3..l4]);
        buf[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        buf[l4] = 0;
        buf[l4 + 2..l4 + 4].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&buf[l4..l3 + total]);
        buf[l4 + 2..l4 + 4].copy_from_slice(&c.to_be_bytes());
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&buf[6..12]);
        buf[0..6].copy_from_slice(&mac);
        buf[6..12].copy_from_slice(&self.ports[in_iface].mac);
        Action::Reply {
            iface: in_iface,
            len: l3 + total,
        }
    }

    /// Replaces the frame with ICMP `kind`/`code` to `to`, quoting its IP header and 8
    /// bytes, from `in_iface`'s address. `None` where RFC 1812 says not to answer (ICMP
    /// errors, fragments past the first, no address to answer from).
    fn icmp_error(
        &self,
        buf: &mut [u8],
        len: usize,
        in_iface: usize,
        kind: u8,
        code: u8,
        to: Ipv4Addr,
    ) -> Option<Action> {
        let l3 = 14;
        let ihl = ((buf[l3] & 0x0f) as usize) * 4;
        let frag_offset = u16::from_be_bytes([buf[l3 + 6], buf[l3 + 7]]) & 0x1fff;
        let proto = buf[l3 + 9];
        if frag_offset != 0 || to.is_broadcast() || to.is_multicast() || to.is_unspecified() {
            return None;
        }
        if proto == 1 && len > l3 + ihl && ![0u8, 8, 13, 15, 17].contains(&buf[l3 + ihl]) {
            return None; // never an error about an error
        }
        let (me, _) = self.ports[in_iface].addr?;
        let quote = (ihl + 8).min(len - l3);
        let total = 20 + 8 + quote;
        if buf.len() < l3 + total {
            return None;
        }
        buf.copy_within(l3..l3 + quote, l3 + 28);
        let mut peer = [0u8; 6];
        peer.copy_from_slice(&buf[6..12]);
        buf[0..6].copy_from_slice(&peer);
        buf[6..12].copy_from_slice(&self.ports[in_iface].mac);
        buf[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut buf[l3..l3 + 20];
        ip.copy_from_slice(&[
            0x45, 0xc0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ]);
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[12..16].copy_from_slice(&me.octets());
        ip[16..20].copy_from_slice(&to.octets());
        let c = checksum::checksum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let icmp = &mut buf[l3 + 20..l3 + total];
        icmp[..8].copy_from_slice(&[kind, code, 0, 0, 0, 0, 0, 0]);
        let c = checksum::checksum(icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        Some(Action::Reply {
            iface: in_iface,
            len: l3 + total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linerate_dataplane::synthetic::udp4_frame;

    const R0: [u8; 6] = [2, 0, 0, 0, 0, 0x10];
    const R1: [u8; 6] = [2, 0, 0, 0, 0, 0x11];
    const H: [u8; 6] = [2, 0, 0, 0, 0, 0x99];

    fn hop(iface: usize, mac: [u8; 6]) -> Hop {
        Hop {
            iface,
            mac,
            weight: 1,
        }
    }

    fn router() -> Router {
        let mut r = Router::new(
            vec![
                Port {
                    mac: R0,
                    addr: Some((Ipv4Addr::new(10, 0, 1, 1), 24)),
                },
                Port {
                    mac: R1,
                    addr: Some((Ipv4Addr::new(10, 0, 2, 1), 24)),
                },
            ],
            std::sync::Arc::new(Subnets::new([
                (Ipv4Addr::new(10, 0, 1, 0), 24),
                (Ipv4Addr::new(10, 0, 2, 0), 24),
                (Ipv4Addr::new(10, 7, 0, 0), 16),
            ])),
        );
        r.add_neighbour(Ipv4Addr::new(10, 0, 2, 2), 1, H);
        r
    }

    fn frame(dst: [u8; 4], ttl: u8) -> Vec<u8> {
        let mut f = udp4_frame(
            Ipv4Addr::new(10, 0, 1, 2),
            Ipv4Addr::from(dst),
            1234,
            33434,
            100,
            0,
        );
        f[0..6].copy_from_slice(&R0);
        f[22] = ttl;
        let c = checksum::checksum(&{
            let mut h = f[14..34].to_vec();
            h[10] = 0;
            h[11] = 0;
            h
        });
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f.resize(2048, 0);
        f
    }

    #[test]
    fn a_connected_host_is_reached_with_its_mac_and_the_ttl_goes_down() {
        let mut r = router();
        let mut f = frame([10, 0, 2, 2], 64);
        assert_eq!(r.handle(&mut f, 100, 0), Action::Forward(1));
        assert_eq!(&f[0..6], &H);
        assert_eq!(&f[6..12], &R1);
        assert_eq!(f[22], 63);
        assert_eq!(
            checksum::checksum(&f[14..34]),
            0,
            "header checksum still valid"
        );
    }

    #[test]
    fn routes_take_the_longest_prefix() {
        let mut r = router();
        r.set_routes(
            &[
                (
                    (Ipv4Addr::new(10, 9, 0, 0), 16),
                    vec![hop(1, [2, 0, 0, 0, 0, 0xa])],
                ),
                (
                    (Ipv4Addr::new(10, 9, 9, 0), 24),
                    vec![hop(0, [2, 0, 0, 0, 0, 0xb])],
                ),
            ],
            None,
        );
        let mut f = frame([10, 9, 1, 1], 64);
        assert_eq!(r.handle(&mut f, 100, 0), Action::Forward(1));
        let mut f = frame([10, 9, 9, 1], 64);
        assert_eq!(r.handle(&mut f, 100, 0), Action::Forward(0));
        assert_eq!(f[5], 0xb);
    }

    #[test]
    fn the_default_serves_the_emulations_subnets_only() {
        let mut r = router();
        r.set_routes(
            &[(
                (Ipv4Addr::new(10, 7, 9, 0), 24),
                vec![hop(0, [2, 0, 0, 0, 0, 0xb])],
            )],
            Some(&[hop(1, [2, 0, 0, 0, 0, 0xa])]),
        );
        // In a subnet of the emulation, no route: the default.
        let mut f = frame([10, 7, 1, 1], 64);
        assert_eq!(r.handle(&mut f, 100, 0), Action::Forward(1));
        assert_eq!(f[5], 0xa);
        // A route is still more specific than the default.
        let mut f = frame([10, 7, 9, 1], 64);
        assert_eq!(r.handle(&mut f, 100, 0), Action::Forward(0));
        // An address no subnet holds: unreachable, answered with ICMP.
        let mut f = frame([192, 168, 1, 1], 64);
        let a = r.handle(&mut f, 100, 0);
        assert!(matches!(a, Action::Reply { .. }), "{a:?}");
    }

    #[test]
    fn multipath_splits_new_flows_by_weight_and_each_flow_keeps_its_hop() {
        let mut r = router();
        r.set_routes(
            &[(
                (Ipv4Addr::new(10, 9, 0, 0), 16),
                vec![
                    Hop {
                        iface: 0,
                        mac: [2, 0, 0, 0, 0, 0xa],
                        weight: 3,
                    },
                    Hop {
                        iface: 1,
                        mac: [2, 0, 0, 0, 0, 0xb],
                        weight: 1,
                    },
                ],
            )],
            None,
        );
        let mut first = Vec::new();
        for sport in 0..16u16 {
            let mut f = frame([10, 9, 1, 1], 64);
            f[34..36].copy_from_slice(&(40000 + sport).to_be_bytes());
            let Action::Forward(i) = r.handle(&mut f, 100, 0) else {
                panic!()
            };
            first.push(i);
        }
        assert_eq!(first.iter().filter(|&&i| i == 0).count(), 12);
        for (sport, want) in first.iter().enumerate() {
            let mut f = frame([10, 9, 1, 1], 64);
            f[34..36].copy_from_slice(&(40000 + sport as u16).to_be_bytes());
            assert_eq!(r.handle(&mut f, 100, 0), Action::Forward(*want));
        }
    }

    #[test]
    fn the_router_answers_arp_and_ping_for_its_addresses() {
        let mut r = router();
        let mut arp = vec![0u8; 2048];
        arp[0..6].copy_from_slice(&[0xff; 6]);
        arp[6..12].copy_from_slice(&H);
        arp[12..14].copy_from_slice(&[8, 6]);
        arp[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp[22..28].copy_from_slice(&H);
        arp[28..32].copy_from_slice(&[10, 0, 1, 2]);
        arp[38..42].copy_from_slice(&[10, 0, 1, 1]);
        assert_eq!(
            r.handle(&mut arp, 60, 0),
            Action::Reply { iface: 0, len: 42 }
        );
        assert_eq!((arp[21], &arp[22..28], &arp[32..38]), (2, &R0[..], &H[..]));
        // A request for someone else is not ours to answer.
        arp[21] = 1;
        arp[38..42].copy_from_slice(&[10, 0, 1, 7]);
        assert_eq!(r.handle(&mut arp, 60, 0), Action::Drop(Why::ToRouter));

        let mut ping = frame([10, 0, 1, 1], 64);
        ping[23] = 1; // ICMP
        ping[34] = 8; // echo request
        ping[35] = 0;
        ping[36..38].copy_from_slice(&[0, 0]);
        let ip_len = u16::from_be_bytes([ping[16], ping[17]]) as usize;
        let c = checksum::checksum(&ping[34..14 + ip_len]);
        ping[36..38].copy_from_slice(&c.to_be_bytes());
        let c = checksum::checksum(&{
            let mut h = ping[14..34].to_vec();
            h[10] = 0;
            h[11] = 0;
            h
        });
        ping[24..26].copy_from_slice(&c.to_be_bytes());
        let Action::Reply { iface, len } = r.handle(&mut ping, 100, 0) else {
            panic!()
        };
        assert_eq!(iface, 0);
        assert_eq!(ping[34], 0, "echo reply");
        assert_eq!(&ping[26..30], &[10, 0, 1, 1]);
        assert_eq!(&ping[30..34], &[10, 0, 1, 2]);
        assert_eq!(checksum::checksum(&ping[14..34]), 0);
        assert_eq!(checksum::checksum(&ping[34..len]), 0);
    }

    #[test]
    fn an_expiring_ttl_and_a_missing_route_get_icmp_errors_quoting_the_packet() {
        let mut r = router();
        for (dst, ttl, kind) in [([10, 0, 2, 2], 1, 11), ([192, 0, 2, 1], 64, 3)] {
            let mut f = frame(dst, ttl);
            let orig: Vec<u8> = f[14..42].to_vec();
            let Action::Reply { iface, len } = r.handle(&mut f, 100, 0) else {
                panic!()
            };
            assert_eq!((iface, len), (0, 14 + 20 + 8 + 28));
            assert_eq!(f[34], kind);
            assert_eq!(&f[26..30], &[10, 0, 1, 1], "from the ingress address");
            assert_eq!(&f[30..34], &[10, 0, 1, 2]);
            assert_eq!(&f[42..70], &orig[..], "the original header and 8 bytes");
            assert_eq!(checksum::checksum(&f[14..34]), 0);
            assert_eq!(checksum::checksum(&f[34..len]), 0);
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut r = router();
        let mut buf = vec![0u8; 2048];
        let mut x = 1u64;
        for len in 0..200 {
            for b in buf.iter_mut().take(len) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            buf[12..14].copy_from_slice(if len % 2 == 0 { &[8, 0] } else { &[8, 6] });
            if len > 14 {
                buf[14] = 0x45;
            }
            let _ = r.handle(&mut buf, len, 0);
        }
    }
}
