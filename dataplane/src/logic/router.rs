//! IPv4 + IPv6 router: longest-prefix match on the destination address, then the next hop's
//! output port and MAC addresses.
//!
//! Owns the two LPM tables and the next-hop table. Never touches TTL or hop limit (wrap it in
//! [`super::TtlDecrement`]), never answers ARP or neighbour discovery itself (ARP goes to the
//! kernel when `arp_to_kernel` is set), and never allocates in `decide`.

use super::{Logic, Lpm4, Lpm6, LpmError, NextHopId};
use crate::verdict::{DropReason, PortId, Verdict};
use crate::wire::{Headers, L3};
use core::net::IpAddr;
use std::sync::Arc;

/// Where a route leads: the output port and the Ethernet addresses to write on the way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    pub port: PortId,
    /// The next router's (or the destination host's) MAC address.
    pub dst_mac: [u8; 6],
    /// Our MAC address on `port`.
    pub src_mac: [u8; 6],
}

/// A next hop as `decide` reads it: both MAC addresses in frame order, ready to copy.
#[derive(Debug, Clone, Copy)]
#[repr(align(16))]
struct Hop {
    /// Destination then source MAC, the first 12 bytes of the rewritten frame.
    macs: [u8; 12],
    port: PortId,
    defined: bool,
    /// A multipath group: the flow table picks one of its members.
    group: bool,
}

impl Hop {
    const UNDEFINED: Hop = Hop {
        macs: [0; 12],
        port: 0,
        defined: false,
        group: false,
    };
}

/// Every [`NextHopId`] indexes the dense table, so a lookup has no length to check.
const HOPS: usize = 1 << NextHopId::BITS;

/// Why a route could not be added or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    #[error("route {prefix}/{len}: next hop {id} is not defined; define it first")]
    UnknownNextHop {
        prefix: IpAddr,
        len: u8,
        id: NextHopId,
    },
    #[error("route {prefix}/{len}: {source}")]
    Lpm {
        prefix: IpAddr,
        len: u8,
        #[source]
        source: LpmError,
    },
}

/// Routes IPv4 and IPv6 packets by destination.
///
/// A route whose next hop was removed afterwards drops its packets as
/// [`DropReason::NoRoute`] until the next hop is defined again.
#[derive(Debug, Clone)]
pub struct Router {
    // The tables are shared between the workers' copies (a reload clones the router once per
    // worker: it must not copy 64 MiB of tbl24 each time); a change copies them only if they
    // are shared, which happens on the control side while building.
    v4: Arc<Lpm4>,
    v6: Arc<Lpm6>,
    /// Indexed by [`NextHopId`].
    next_hops: Vec<Option<NextHop>>,
    /// `next_hops` as `decide` reads it: an entry for every possible id (1 MiB, so a lookup
    /// needs neither a length check nor an `Option`; only the entries in use get cached).
    hops: Arc<[Hop; HOPS]>,
    arp_to_kernel: bool,
    /// Multipath groups: group id -> (member next hop, weight).
    groups: hashbrown::HashMap<NextHopId, Vec<(NextHopId, u32)>>,
    /// Flow pins, tried in order before the lookup: a packet a rule matches takes its next
    /// hop (or group) whatever its destination's longest prefix says.
    pins: Vec<(super::filter::Rule, NextHopId)>,
}

/// A next-hop table on the heap (1 MiB: never on the stack), `old`'s entries then `fill`.
fn new_hops(old: &[Hop], fill: Hop) -> Arc<[Hop; HOPS]> {
    let mut v = Vec::with_capacity(HOPS);
    v.extend_from_slice(&old[..old.len().min(HOPS)]);
    v.resize(HOPS, fill);
    let b: Box<[Hop; HOPS]> = match v.into_boxed_slice().try_into() {
        Ok(b) => b,
        Err(_) => unreachable!("the vector has HOPS entries"),
    };
    Arc::from(b)
}

impl Default for Router {
    fn default() -> Self {
        Self::new()
    }
}

impl Router {
    /// A router with no routes that hands ARP to the kernel.
    pub fn new() -> Self {
        Self::with_tables(Lpm4::new(), Lpm6::new())
    }

    /// A router over tables built elsewhere (e.g. with other tbl8 limits). Their routes are
    /// kept; their next hops must be defined with [`Router::set_next_hop`] before they
    /// forward.
    pub fn with_tables(v4: Lpm4, v6: Lpm6) -> Self {
        Router {
            v4: Arc::new(v4),
            v6: Arc::new(v6),
            next_hops: Vec::new(),
            groups: hashbrown::HashMap::new(),
            pins: Vec::new(),
            hops: new_hops(&[Hop::UNDEFINED; 0], Hop::UNDEFINED),
            arp_to_kernel: true,
        }
    }

    /// Whether ARP frames go to the host stack (`true`, the default, keeps the machine's
    /// own addresses reachable) or are dropped as [`DropReason::NotIp`].
    pub fn set_arp_to_kernel(&mut self, on: bool) {
        self.arp_to_kernel = on;
    }

    pub fn arp_to_kernel(&self) -> bool {
        self.arp_to_kernel
    }

    /// Replaces the flow pins: the first rule (its action is ignored) that matches a packet
    /// sends it to next hop or group `id`. Kept short: every routed packet scans them.
    pub fn set_pins(&mut self, pins: Vec<(super::filter::Rule, NextHopId)>) {
        self.pins = pins;
    }

    pub fn pins(&self) -> &[(super::filter::Rule, NextHopId)] {
        &self.pins
    }

    /// The next-hop table to change, copied first if a worker's copy shares it.
    fn hops_mut(&mut self) -> &mut [Hop; HOPS] {
        if Arc::get_mut(&mut self.hops).is_none() {
            self.hops = new_hops(&self.hops[..], Hop::UNDEFINED);
        }
        match Arc::get_mut(&mut self.hops) {
            Some(h) => h,
            None => unreachable!("just made unique"),
        }
    }

    /// Defines or replaces next hop `id`.
    pub fn set_next_hop(&mut self, id: NextHopId, nh: NextHop) {
        let i = id as usize;
        if self.next_hops.len() <= i {
            self.next_hops.resize(i + 1, None);
        }
        self.next_hops[i] = Some(nh);
        self.groups.remove(&id);
        let mut macs = [0; 12];
        macs[..6].copy_from_slice(&nh.dst_mac);
        macs[6..].copy_from_slice(&nh.src_mac);
        self.hops_mut()[i] = Hop {
            macs,
            port: nh.port,
            defined: true,
            group: false,
        };
    }

    /// Makes `id` a multipath group over `members` (defined next hops, with weights): each
    /// new flow routed to `id` picks a member in proportion to the weights, from its flow
    /// hash, and keeps it for its life. The member is a function of the flow's hash and the
    /// group alone, so it needs no per-flow state: nothing grows on the per-packet path, and
    /// every worker (and every copy after a reload with the same group) picks the same.
    pub fn set_group(
        &mut self,
        id: NextHopId,
        members: Vec<(NextHopId, u32)>,
    ) -> Result<(), String> {
        if members.is_empty() || members.iter().any(|&(_, w)| w == 0) {
            return Err(format!("group {id}: give members with positive weights"));
        }
        if let Some(&(m, _)) = members.iter().find(|&&(m, _)| self.next_hop(m).is_none()) {
            return Err(format!("group {id}: next hop {m} is not defined"));
        }
        self.groups.insert(id, members);
        if let Some(nh) = self.next_hops.get_mut(id as usize) {
            // No longer a plain next hop.
            *nh = None;
        }
        self.hops_mut()[id as usize] = Hop {
            macs: [0; 12],
            port: 0,
            defined: true,
            group: true,
        };
        Ok(())
    }

    fn pick(&self, group: NextHopId, pkt: &[u8], hdr: &Headers) -> Option<NextHopId> {
        // A frame that is not IP has no flow, so no member.
        crate::shard::FlowKey::from_headers(hdr)?;
        let members = self.groups.get(&group)?;
        let total: u64 = members.iter().map(|&(_, w)| w as u64).sum();
        let mut r = crate::shard::flow_hash(hdr, pkt) % total;
        let mut chosen = members[0].0;
        for &(m, w) in members {
            if r < w as u64 {
                chosen = m;
                break;
            }
            r -= w as u64;
        }
        Some(chosen)
    }

    /// Removes next hop `id`; routes through it drop packets until it is defined again.
    pub fn remove_next_hop(&mut self, id: NextHopId) -> Option<NextHop> {
        self.hops_mut()[id as usize] = Hop::UNDEFINED;
        self.groups.remove(&id);
        self.next_hops.get_mut(id as usize)?.take()
    }

    pub fn next_hop(&self, id: NextHopId) -> Option<&NextHop> {
        self.next_hops.get(id as usize)?.as_ref()
    }

    /// The members of multipath group `id`, if it is one.
    pub fn group(&self, id: NextHopId) -> Option<&[(NextHopId, u32)]> {
        self.groups.get(&id).map(Vec::as_slice)
    }

    /// Whether another copy (a worker's, or the published snapshot) shares this router's
    /// tables, so that a change would first copy them (64 MiB for IPv4).
    pub fn tables_shared(&self) -> bool {
        Arc::strong_count(&self.v4) > 1
            || Arc::strong_count(&self.v6) > 1
            || Arc::strong_count(&self.hops) > 1
    }

    /// Adds (or re-points) the route `prefix/len` through next hop `nh`, which must exist.
    pub fn add_route(&mut self, prefix: IpAddr, len: u8, nh: NextHopId) -> Result<(), RouterError> {
        if self.next_hop(nh).is_none() && !self.groups.contains_key(&nh) {
            return Err(RouterError::UnknownNextHop {
                prefix,
                len,
                id: nh,
            });
        }
        let r = match prefix {
            IpAddr::V4(p) => Arc::make_mut(&mut self.v4).insert(p, len, nh),
            IpAddr::V6(p) => Arc::make_mut(&mut self.v6).insert(p, len, nh),
        };
        r.map_err(|source| RouterError::Lpm {
            prefix,
            len,
            source,
        })
    }

    /// Removes the route `prefix/len`; returns the next hop it used, `None` if there was none.
    pub fn remove_route(
        &mut self,
        prefix: IpAddr,
        len: u8,
    ) -> Result<Option<NextHopId>, RouterError> {
        let r = match prefix {
            IpAddr::V4(p) => Arc::make_mut(&mut self.v4).remove(p, len),
            IpAddr::V6(p) => Arc::make_mut(&mut self.v6).remove(p, len),
        };
        r.map_err(|source| RouterError::Lpm {
            prefix,
            len,
            source,
        })
    }

    /// The next hop for a destination, as `decide` would pick it.
    #[inline]
    pub fn route(&self, dst: IpAddr) -> Option<&NextHop> {
        let id = match dst {
            IpAddr::V4(a) => self.v4.lookup(a),
            IpAddr::V6(a) => self.v6.lookup(a),
        }?;
        self.next_hop(id)
    }

    pub fn lpm4(&self) -> &Lpm4 {
        &self.v4
    }

    pub fn lpm6(&self) -> &Lpm6 {
        &self.v6
    }
}

impl Logic for Router {
    #[inline]
    fn prefetch(&self, hdr: &Headers) {
        match hdr.l3 {
            L3::Ipv4 { dst, .. } => self.v4.prefetch(dst),
            L3::Ipv6 { dst, .. } => self.v6.prefetch(dst),
            L3::Arp | L3::Other => {}
        }
    }

    #[inline]
    fn decide(&mut self, pkt: &mut [u8], hdr: &Headers, _in_port: PortId) -> Verdict {
        let pinned = match self.pins.is_empty() {
            true => None,
            false => self.pins.iter().find(|(r, _)| r.matches(hdr)).map(|p| p.1),
        };
        let id = match hdr.l3 {
            _ if pinned.is_some() => pinned,
            L3::Ipv4 { dst, .. } => self.v4.lookup(dst),
            L3::Ipv6 { dst, .. } => self.v6.lookup(dst),
            L3::Arp if self.arp_to_kernel => return Verdict::ToKernel,
            L3::Arp | L3::Other => return Verdict::Drop(DropReason::NotIp),
        };
        let Some(id) = id else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        let mut hop = &self.hops[id as usize];
        if hop.group {
            let Some(m) = self.pick(id, pkt, hdr) else {
                return Verdict::Drop(DropReason::NoRoute);
            };
            hop = &self.hops[m as usize];
        }
        if !hop.defined {
            return Verdict::Drop(DropReason::NoRoute);
        }
        let Some(eth) = pkt.first_chunk_mut::<12>() else {
            return Verdict::Drop(DropReason::Malformed);
        };
        *eth = hop.macs;
        Verdict::Forward(hop.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::test_frames;

    const NH1: NextHop = NextHop {
        port: 1,
        dst_mac: [0x02, 0, 0, 0, 1, 1],
        src_mac: [0x02, 0, 0, 0, 1, 0],
    };
    const NH2: NextHop = NextHop {
        port: 2,
        dst_mac: [0x02, 0, 0, 0, 2, 2],
        src_mac: [0x02, 0, 0, 0, 2, 0],
    };

    fn router() -> Router {
        let mut r = Router::new();
        r.set_next_hop(1, NH1);
        r.set_next_hop(2, NH2);
        r.add_route("10.0.0.0".parse().unwrap(), 8, 1).unwrap();
        r.add_route("10.2.0.0".parse().unwrap(), 16, 2).unwrap();
        r.add_route("2001:db8::".parse().unwrap(), 32, 2).unwrap();
        r
    }

    #[test]
    fn a_pinned_flow_takes_its_next_hop_whatever_the_lookup_says() {
        use crate::logic::filter::{Action, Prefix, Rule};
        let mut r = router();
        let pin = Rule {
            proto: Some(17),
            dst: Some(Prefix::parse("10.1.2.3/32").unwrap()),
            dst_ports: 53..=53,
            ..Rule::any(Action::Permit)
        };
        r.set_pins(vec![(pin, 2)]);
        let (mut f, h) = test_frames::ipv4("192.0.2.1", "10.1.2.3", 64, 17, 1000, 53);
        assert_eq!(r.decide(&mut f, &h, 0), Verdict::Forward(2));
        assert_eq!(&f[..6], &NH2.dst_mac);
        // Another port of the same host: the longest prefix, 10/8 via next hop 1.
        let (mut f, h) = test_frames::ipv4("192.0.2.1", "10.1.2.3", 64, 17, 1000, 54);
        assert_eq!(r.decide(&mut f, &h, 0), Verdict::Forward(1));
        // A pin to a next hop that is not defined drops rather than falls through.
        r.set_pins(vec![(Rule::any(Action::Permit), 7)]);
        let (mut f, h) = test_frames::ipv4("192.0.2.1", "10.1.2.3", 64, 17, 1000, 54);
        assert_eq!(r.decide(&mut f, &h, 0), Verdict::Drop(DropReason::NoRoute));
    }

    #[test]
    fn multipath_spreads_flows_by_weight_and_keeps_each_on_its_route() {
        let mut r = Router::new();
        r.set_next_hop(1, NH1);
        r.set_next_hop(2, NH2);
        r.set_group(100, vec![(1, 1), (2, 3)]).unwrap();
        r.add_route("10.0.0.0".parse().unwrap(), 8, 100).unwrap();
        let mut ports = [0u32; 3];
        for sport in 0..4000u16 {
            let (mut f, h) = test_frames::ipv4("192.0.2.1", "10.1.2.3", 64, 17, 1000 + sport, 80);
            let Verdict::Forward(p) = r.decide(&mut f, &h, 0) else {
                panic!("routed")
            };
            ports[p as usize] += 1;
            // The same flow again: the same route.
            assert_eq!(r.decide(&mut f, &h, 0), Verdict::Forward(p));
        }
        let share = ports[2] as f64 / 4000.0;
        assert!((share - 0.75).abs() < 0.05, "{ports:?}");
        assert!(r.set_group(101, vec![(7, 1)]).is_err());
        assert!(r.set_group(101, vec![(1, 0)]).is_err());
    }

    #[test]
    fn forwards_ipv4_by_longest_prefix_and_rewrites_macs() {
        let mut r = router();
        let (mut f, h) = test_frames::ipv4("192.0.2.1", "10.2.3.4", 64, 17, 1, 2);
        let orig = f.clone();
        assert_eq!(r.decide(&mut f, &h, 0), Verdict::Forward(2));
        assert_eq!(f[..6], NH2.dst_mac);
        assert_eq!(f[6..12], NH2.src_mac);
        assert_eq!(f[12..], orig[12..], "TTL and the rest untouched");

        let (mut f, h) = test_frames::ipv4("192.0.2.1", "10.3.0.1", 64, 17, 1, 2);
        assert_eq!(r.decide(&mut f, &h, 0), Verdict::Forward(1));
        assert_eq!(f[..6], NH1.dst_mac);
    }

    #[test]
    fn forwards_ipv6() {
        let mut r = router();
        let (mut f, h) = test_frames::ipv6("2001:db8::1", "2001:db8:5::1", 64, 6, 1, 2);
        assert_eq!(r.decide(&mut f, &h, 0), Verdict::Forward(2));
        assert_eq!(f[..6], NH2.dst_mac);
        let (mut f, h) = test_frames::ipv6("2001:db8::1", "2001:db9::1", 64, 6, 1, 2);
        assert_eq!(r.decide(&mut f, &h, 0), Verdict::Drop(DropReason::NoRoute));
    }

    #[test]
    fn no_route_leaves_the_frame_alone() {
        let mut r = router();
        let (mut f, h) = test_frames::ipv4("192.0.2.1", "11.0.0.1", 64, 17, 1, 2);
        let orig = f.clone();
        assert_eq!(r.decide(&mut f, &h, 0), Verdict::Drop(DropReason::NoRoute));
        assert_eq!(f, orig);
    }

    #[test]
    fn arp_goes_to_the_kernel_unless_disabled_and_other_is_not_ip() {
        let mut r = router();
        let (mut f, h) = test_frames::arp();
        assert_eq!(r.decide(&mut f, &h, 0), Verdict::ToKernel);
        r.set_arp_to_kernel(false);
        assert_eq!(r.decide(&mut f, &h, 0), Verdict::Drop(DropReason::NotIp));
        let (mut f, h) = test_frames::l2(test_frames::MAC_B, test_frames::MAC_A);
        assert_eq!(r.decide(&mut f, &h, 0), Verdict::Drop(DropReason::NotIp));
    }

    #[test]
    fn next_hops_must_exist_and_can_be_withdrawn() {
        let mut r = router();
        let e = r
            .add_route("192.168.0.0".parse().unwrap(), 16, 9)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "route 192.168.0.0/16: next hop 9 is not defined; define it first"
        );
        let e = r.add_route("10.0.0.1".parse().unwrap(), 8, 1).unwrap_err();
        assert!(matches!(
            e,
            RouterError::Lpm {
                source: LpmError::HostBitsSet { .. },
                ..
            }
        ));
        assert_eq!(r.remove_next_hop(2), Some(NH2));
        let (mut f, h) = test_frames::ipv4("192.0.2.1", "10.2.3.4", 64, 17, 1, 2);
        assert_eq!(r.decide(&mut f, &h, 0), Verdict::Drop(DropReason::NoRoute));
        r.set_next_hop(2, NH1);
        assert_eq!(r.decide(&mut f, &h, 0), Verdict::Forward(1));
        assert_eq!(r.remove_route("10.2.0.0".parse().unwrap(), 16), Ok(Some(2)));
        assert_eq!(r.route("10.2.3.4".parse().unwrap()), Some(&NH1));
    }
}
