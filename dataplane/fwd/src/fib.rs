//! A `fwd` node's routing state from the controller's rows, kept between updates and changed
//! row by row: one route change costs the table entries it writes, not a rebuild.
//!
//! Routes that share a prefix become one weighted multipath group; routes that share a port
//! and a next-hop MAC address share one next hop; prefixes whose members are the same share
//! one group. Next hops and groups are reference-counted, so a full table (a million routes
//! over a few neighbours) holds a few next hops. Ids run to 32,768 of each.
//!
//! Two routers take the changes in turn (left-right): an update edits the router the workers
//! stopped using (the one published two updates ago), first replaying the previous update's
//! edits on it, then publishes it. The published router's tables are shared with the workers'
//! copies, never written while shared, and stay flat arrays (DIR-24-8 on huge pages), so
//! lookups pay nothing for cheap updates. Each edit is made twice and the tables are held
//! twice; a side a worker still holds after a short wait is copied instead (counted in
//! [`Fib::copies`]).
//!
//! Each update also says which destinations' decisions may have changed ([`Stale`]): the
//! prefixes whose route changed, or everything when flow pins changed. `fwd` drops only the
//! flows the XDP program cached inside those prefixes.

use linerate_dataplane::logic::filter::{Action, Prefix as FilterPrefix, Rule};
use linerate_dataplane::logic::{AnyLogic, NextHop, NextHopId, Router};
use linerate_proto::{self as proto, Change, Config, Prefix};
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Flow pins a node applies: every routed packet scans them in order, so they stay few.
pub const MAX_PINS: usize = 256;

/// Group ids start here; next hops take the ids below.
const GROUP_BASE: NextHopId = 0x8000;

/// Past this many stale prefixes, invalidating every cached flow is cheaper than matching.
const MAX_STALE_PREFIXES: usize = 4096;

/// Which cached decisions an update may have changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stale {
    /// Every decision (flow pins changed, or too many prefixes to list).
    pub all: bool,
    /// Destinations inside these prefixes.
    pub prefixes: Vec<Prefix>,
}

impl Stale {
    pub fn is_empty(&self) -> bool {
        !self.all && self.prefixes.is_empty()
    }

    /// Adds `other` (a later update's) to these.
    pub fn merge(&mut self, other: Stale) {
        self.all |= other.all;
        self.prefixes.extend(other.prefixes);
        self.cap();
    }

    /// Everything, once more prefixes are listed than are worth matching one by one.
    fn cap(&mut self) {
        if self.all || self.prefixes.len() > MAX_STALE_PREFIXES {
            self.all = true;
            self.prefixes = Vec::new();
        }
    }

    /// Whether a destination's decision may have changed.
    pub fn covers(&self, dst: std::net::IpAddr) -> bool {
        self.all || self.prefixes.iter().any(|p| contains(p, dst))
    }
}

/// Whether `p` contains `addr` (families must agree).
pub fn contains(p: &Prefix, addr: std::net::IpAddr) -> bool {
    use std::net::IpAddr::{V4, V6};
    match (p.addr, addr) {
        (V4(n), V4(a)) => {
            let m = u32::MAX.checked_shl(32 - p.len as u32).unwrap_or(0);
            (u32::from(n) ^ u32::from(a)) & m == 0
        }
        (V6(n), V6(a)) => {
            let m = u128::MAX.checked_shl(128 - p.len as u32).unwrap_or(0);
            (u128::from(n) ^ u128::from(a)) & m == 0
        }
        _ => false,
    }
}

/// Ids handed out per distinct key, reference-counted. An id whose count drops to zero stays
/// reserved until [`Interner::reap`], so nothing reuses it while a route still points at it
/// within one update.
struct Interner<K> {
    ids: HashMap<K, (NextHopId, u32)>,
    free: Vec<NextHopId>,
    next: NextHopId,
    end: NextHopId,
    unused: Vec<K>,
}

impl<K: Hash + Eq + Clone> Interner<K> {
    fn new(start: NextHopId, end: NextHopId) -> Self {
        Interner {
            ids: HashMap::new(),
            free: Vec::new(),
            next: start,
            end,
            unused: Vec::new(),
        }
    }

    /// The id of `key`, one more reference; `Some((id, true))` when the caller must define
    /// it; `None` when every id is taken.
    fn acquire(&mut self, key: &K) -> Option<(NextHopId, bool)> {
        if let Some((id, refs)) = self.ids.get_mut(key) {
            *refs += 1;
            return Some((*id, false));
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None if self.next < self.end => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        self.ids.insert(key.clone(), (id, 1));
        Some((id, true))
    }

    fn release(&mut self, key: &K) {
        if let Some((_, refs)) = self.ids.get_mut(key) {
            *refs -= 1;
            if *refs == 0 {
                self.unused.push(key.clone());
            }
        }
    }

    /// Frees the ids no reference came back to; returns them for the caller to undefine.
    fn reap(&mut self) -> Vec<NextHopId> {
        let mut gone = Vec::new();
        for k in std::mem::take(&mut self.unused) {
            if let Some(&(id, 0)) = self.ids.get(&k) {
                self.ids.remove(&k);
                self.free.push(id);
                gone.push(id);
            }
        }
        gone
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
}

/// A route as installed: its prefix and the next hop it shares.
struct Installed {
    prefix: Prefix,
    hop_key: (u16, [u8; 6]),
    hop: NextHopId,
}

/// A multipath group's members: (next hop, weight), sorted.
type GroupKey = Vec<(NextHopId, u32)>;
/// What a prefix points at: a next hop, or a group (with its members).
type Target = (NextHopId, Option<GroupKey>);

/// A prefix's routes and what the table points it at.
#[derive(Default)]
struct PrefixState {
    /// (route id, next hop, weight), in the order the routes arrived.
    members: Vec<(u64, NextHopId, u32)>,
    /// The next hop or group in the table, and the group's key when it is a group.
    target: Option<Target>,
}

/// One change to a router, kept to replay on the other side.
enum Edit {
    NextHop(NextHopId, NextHop),
    Group(NextHopId, GroupKey),
    Unhop(NextHopId),
    Route(Prefix, NextHopId),
    Unroute(Prefix),
    Pins(Vec<(Rule, NextHopId)>),
}

impl Edit {
    fn run(&self, r: &mut Router) -> Result<(), String> {
        match self {
            Edit::NextHop(id, nh) => r.set_next_hop(*id, *nh),
            Edit::Group(id, members) => r.set_group(*id, members.clone())?,
            Edit::Unhop(id) => _ = r.remove_next_hop(*id),
            Edit::Route(p, id) => r.add_route(p.addr, p.len, *id).map_err(|e| e.to_string())?,
            Edit::Unroute(p) => _ = r.remove_route(p.addr, p.len).map_err(|e| e.to_string())?,
            Edit::Pins(pins) => r.set_pins(pins.clone()),
        }
        Ok(())
    }
}

/// How long an update waits for the workers to let go of the side it edits before copying
/// it instead (an idle worker picks up a new logic within a millisecond).
const RELEASE_WAIT: Duration = Duration::from_millis(5);

/// The routing state; see the module documentation.
pub struct Fib {
    /// The two routers; `sides[edit]` is the one the next update edits.
    sides: [Router; 2],
    edit: usize,
    /// The previous update's edits, which `sides[edit]` has not seen.
    behind: Vec<Edit>,
    /// This update's edits so far.
    log: Vec<Edit>,
    copies: u64,
    /// Built once and dropped ([`logic_from`]): the other side is never brought up to date.
    one_shot: bool,
    ports: Vec<String>,
    macs: Vec<[u8; 6]>,
    ttl: bool,
    routes: HashMap<u64, Installed>,
    prefixes: HashMap<Prefix, PrefixState>,
    hops: Interner<(u16, [u8; 6])>,
    groups: Interner<GroupKey>,
}

impl Fib {
    /// No routes, for a node whose ports are `ports` (interface names) with MAC addresses
    /// `macs`; `ttl`: decrement TTL / hop limit in the logic it publishes.
    pub fn new(ports: Vec<String>, macs: Vec<[u8; 6]>, ttl: bool) -> Fib {
        Fib {
            sides: [Router::new(), Router::new()],
            edit: 0,
            behind: Vec::new(),
            log: Vec::new(),
            copies: 0,
            one_shot: false,
            ports,
            macs,
            ttl,
            routes: HashMap::new(),
            prefixes: HashMap::new(),
            hops: Interner::new(0, GROUP_BASE),
            groups: Interner::new(GROUP_BASE, NextHopId::MAX),
        }
    }

    /// The logic to publish now: a clone of the router the last update edited (sharing its
    /// tables).
    pub fn logic(&self) -> AnyLogic {
        AnyLogic::new(self.router().clone()).with_ttl_decrement(self.ttl)
    }

    /// The router with every update applied.
    pub fn router(&self) -> &Router {
        &self.sides[self.edit ^ 1]
    }

    /// Updates that found their side still held by a worker and copied its tables.
    pub fn copies(&self) -> u64 {
        self.copies
    }

    /// Makes `sides[edit]` current: waits briefly for the workers to let go of it, then
    /// replays the edits it missed.
    fn catch_up(&mut self) {
        let side = &mut self.sides[self.edit];
        let deadline = Instant::now() + RELEASE_WAIT;
        while side.tables_shared() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(20));
        }
        if side.tables_shared() && !self.behind.is_empty() {
            self.copies += 1;
        }
        for e in self.behind.drain(..) {
            // The other side took these already; an error there was reported then.
            let _ = e.run(side);
        }
    }

    /// Applies `e` to the side being edited and logs it for the other.
    fn edit(&mut self, e: Edit) -> Result<(), String> {
        let r = e.run(&mut self.sides[self.edit]);
        self.log.push(e);
        r
    }

    /// Routes installed (rows on an unknown port or past the id limits are not).
    pub fn routes(&self) -> usize {
        self.routes.len()
    }

    /// Distinct next hops and multipath groups in use.
    pub fn next_hops(&self) -> (usize, usize) {
        (self.hops.len(), self.groups.len())
    }

    /// Applies one update's `changes`; `config` is the whole configuration after them (flow
    /// pins are rebuilt from it when they may have changed). Rows that cannot apply here are
    /// left out and described in the returned warnings.
    pub fn apply(&mut self, changes: &[Change], config: &Config) -> (Stale, Vec<String>) {
        self.catch_up();
        let mut warnings = Vec::new();
        let mut touched = Vec::new();
        let mut changed_routes = HashSet::new();
        let mut flows_changed = false;
        for change in changes {
            match change {
                Change::Route(r) => {
                    self.unlink(r.id, &mut touched);
                    self.link(r, &mut touched, &mut warnings);
                    changed_routes.insert(r.id);
                }
                Change::RouteGone(id) => {
                    self.unlink(*id, &mut touched);
                    changed_routes.insert(*id);
                }
                Change::Flow(_) | Change::FlowGone(_) => flows_changed = true,
                _ => {}
            }
        }
        let mut stale = Stale::default();
        let mut seen = HashSet::new();
        for p in touched {
            if seen.insert(p) && self.retarget(p, &mut warnings) {
                stale.prefixes.push(p);
            }
        }
        for id in self.groups.reap().into_iter().chain(self.hops.reap()) {
            let _ = self.edit(Edit::Unhop(id));
        }
        let pins_depend = || (config.flows.values()).any(|f| changed_routes.contains(&f.route));
        if flows_changed || (!changed_routes.is_empty() && pins_depend()) {
            self.set_pins(config, &mut warnings);
            // A pin decides ahead of every prefix.
            stale.all = true;
        }
        stale.cap();
        self.behind = std::mem::take(&mut self.log);
        self.edit ^= 1;
        if !self.one_shot && !self.sides[self.edit].tables_shared() {
            // Nobody holds the other side (the first table, or no workers yet): bring it up to
            // date now rather than in the next update (a full table's worth of edits).
            for e in self.behind.drain(..) {
                let _ = e.run(&mut self.sides[self.edit]);
            }
        }
        (stale, warnings)
    }

    /// Installs route `r` (not present) into its prefix's members.
    fn link(&mut self, r: &proto::Route, touched: &mut Vec<Prefix>, warnings: &mut Vec<String>) {
        let Some(port) = self.ports.iter().position(|p| *p == r.port) else {
            warnings.push(format!(
                "route {} ({}): port '{}' is not one of this node's ports ({})",
                r.id,
                r.prefix,
                r.port,
                self.ports.join(", ")
            ));
            return;
        };
        let hop_key = (port as u16, r.next_hop.0);
        let Some((hop, new)) = self.hops.acquire(&hop_key) else {
            warnings.push(format!(
                "route {} ({}): more than {GROUP_BASE} distinct next hops (port and MAC \
                 address pairs)",
                r.id, r.prefix
            ));
            return;
        };
        if new {
            let nh = NextHop {
                port: port as u16,
                dst_mac: r.next_hop.0,
                src_mac: self.macs[port],
            };
            let _ = self.edit(Edit::NextHop(hop, nh));
        }
        self.routes.insert(
            r.id,
            Installed {
                prefix: r.prefix,
                hop_key,
                hop,
            },
        );
        let st = self.prefixes.entry(r.prefix).or_default();
        st.members.push((r.id, hop, r.weight));
        touched.push(r.prefix);
    }

    /// Takes route `id` out of its prefix's members, if it is installed.
    fn unlink(&mut self, id: u64, touched: &mut Vec<Prefix>) {
        let Some(inst) = self.routes.remove(&id) else {
            return;
        };
        if let Some(st) = self.prefixes.get_mut(&inst.prefix) {
            st.members.retain(|&(r, _, _)| r != id);
        }
        self.hops.release(&inst.hop_key);
        touched.push(inst.prefix);
    }

    /// Points prefix `p` at what its members now say; returns whether the table changed.
    fn retarget(&mut self, p: Prefix, warnings: &mut Vec<String>) -> bool {
        let Some(st) = self.prefixes.get_mut(&p) else {
            return false;
        };
        let want: Option<Target> = match &st.members[..] {
            [] => None,
            [(_, hop, _)] => Some((*hop, None)),
            many => {
                let mut key: Vec<(NextHopId, u32)> = many.iter().map(|&(_, h, w)| (h, w)).collect();
                key.sort_unstable();
                match self.groups.acquire(&key) {
                    Some((gid, new)) => {
                        if new && let Err(e) = self.edit(Edit::Group(gid, key.clone())) {
                            warnings.push(format!("routes for {p}: {e}"));
                        }
                        Some((gid, Some(key)))
                    }
                    None => {
                        warnings.push(format!(
                            "routes for {p}: more than {} multipath groups",
                            NextHopId::MAX - GROUP_BASE
                        ));
                        None
                    }
                }
            }
        };
        let st = match self.prefixes.get_mut(&p) {
            Some(st) => st,
            None => unreachable!("looked up above"),
        };
        if st.target.as_ref().map(|t| t.0) == want.as_ref().map(|t| t.0) {
            // The same next hop or group: give back the reference just taken.
            if let Some((_, Some(key))) = &want {
                self.groups.release(key);
            }
            if st.members.is_empty() {
                self.prefixes.remove(&p);
            }
            return false;
        }
        let old = st.target.take();
        let mut installed = None;
        match &want {
            Some((id, _)) => match self.edit(Edit::Route(p, *id)) {
                Ok(()) => installed = want.clone(),
                Err(e) => {
                    warnings.push(format!("route for {p}: {e}"));
                    if old.is_some() {
                        let _ = self.edit(Edit::Unroute(p));
                    }
                    if let Some((_, Some(key))) = &want {
                        self.groups.release(key);
                    }
                }
            },
            None => {
                let _ = self.edit(Edit::Unroute(p));
            }
        }
        if let Some((_, Some(key))) = &old {
            self.groups.release(key);
        }
        match self.prefixes.get_mut(&p) {
            Some(st) if st.members.is_empty() => {
                self.prefixes.remove(&p);
            }
            Some(st) => st.target = installed,
            None => {}
        }
        true
    }

    /// Rebuilds the flow pins from `config`'s flows.
    fn set_pins(&mut self, config: &Config, warnings: &mut Vec<String>) {
        let mut pins = Vec::new();
        for f in config.flows.values() {
            if pins.len() == MAX_PINS {
                warnings.push(format!(
                    "flow {} and later: more than {MAX_PINS} flow pins (each routed packet \
                     scans them)",
                    f.id
                ));
                break;
            }
            let Some(hop) = self.routes.get(&f.route).map(|r| r.hop) else {
                warnings.push(format!(
                    "flow {}: route {} is not one of this node's usable routes",
                    f.id, f.route
                ));
                continue;
            };
            let m = &f.matcher;
            // A prefix the filter refuses must not turn into "any": the pin is left out.
            let prefix =
                |p: Option<proto::Prefix>| p.map(|p| FilterPrefix::new(p.addr, p.len)).transpose();
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
        let _ = self.edit(Edit::Pins(pins));
    }
}

/// Builds router logic from a whole configuration (the first update of a new [`Fib`]).
pub fn logic_from(
    config: &Config,
    ports: &[String],
    macs: &[[u8; 6]],
    ttl: bool,
) -> (AnyLogic, Vec<String>) {
    let mut fib = Fib::new(ports.to_vec(), macs.to_vec(), ttl);
    fib.one_shot = true;
    let changes = Config::default().diff(config);
    let (_, warnings) = fib.apply(&changes, config);
    (fib.logic(), warnings)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use linerate_dataplane::synthetic::splitmix64;
    use linerate_proto::{Flow, FlowMatch, Mac, Route};
    use std::collections::BTreeSet;
    use std::net::IpAddr;

    fn ports() -> (Vec<String>, Vec<[u8; 6]>) {
        (
            vec!["a".into(), "b".into(), "c".into()],
            vec![[0xaa; 6], [0xbb; 6], [0xcc; 6]],
        )
    }

    /// Route `id`: `prefix` out of `port` to next-hop MAC 02:00:00:00:00:`mac`.
    pub(crate) fn route(id: u64, prefix: &str, port: &str, mac: u8, weight: u32) -> Route {
        Route {
            id,
            prefix: prefix.parse().unwrap(),
            port: port.into(),
            next_hop: Mac([2, 0, 0, 0, 0, mac]),
            weight,
        }
    }

    /// What a router does for `dst`: the (port, next-hop MAC, weight) choices, weights
    /// normalised away for a single hop.
    fn answer(r: &Router, dst: IpAddr) -> BTreeSet<(u16, [u8; 6], u32)> {
        let id = match dst {
            IpAddr::V4(a) => r.lpm4().lookup(a),
            IpAddr::V6(a) => r.lpm6().lookup(a),
        };
        let Some(id) = id else {
            return BTreeSet::new();
        };
        match r.group(id) {
            Some(members) => (members.iter())
                .map(|&(m, w)| {
                    let h = r.next_hop(m).expect("a member is a next hop");
                    (h.port, h.dst_mac, w)
                })
                .collect(),
            None => {
                let h = r.next_hop(id).expect("a route's next hop is defined");
                [(h.port, h.dst_mac, 0)].into()
            }
        }
    }

    fn router_of(l: &AnyLogic) -> &Router {
        match l.base() {
            linerate_dataplane::logic::Base::Router(r) => r,
            _ => unreachable!("a fib publishes a router"),
        }
    }

    #[test]
    fn changes_applied_one_by_one_match_a_rebuild_and_leave_published_copies_alone() {
        let (ports, macs) = ports();
        let mut fib = Fib::new(ports.clone(), macs.clone(), false);
        let mut config = Config::default();
        let mut rng = 0x51b_0001u64;
        let prefixes = [
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.0/24",
            "10.1.2.128/25",
            "10.1.2.7/32",
            "10.128.0.0/9",
            "2001:db8::/32",
            "2001:db8:1::/48",
        ];
        let probes: Vec<IpAddr> = [
            "10.9.9.9",
            "10.1.9.9",
            "10.1.2.1",
            "10.1.2.200",
            "10.1.2.7",
            "11.0.0.1",
            "2001:db8::1",
            "2001:db8:1::1",
            "2001:db9::1",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        for step in 0..400 {
            let r = splitmix64(&mut rng);
            let id = r % 24;
            let before = config.clone();
            if r >> 8 & 3 == 0 {
                config.routes.remove(&id);
            } else {
                let port = ["a", "b", "c", "nope"][(r >> 16) as usize % 4];
                let prefix = prefixes[(r >> 24) as usize % prefixes.len()];
                let mac = (r >> 32) as u8 % 3;
                let w = 1 + (r >> 40) as u32 % 3;
                config.routes.insert(id, route(id, prefix, port, mac, w));
            }
            let changes = before.diff(&config);
            let published = fib.logic();
            let snapshot: Vec<_> = probes.iter().map(|&p| answer(fib.router(), p)).collect();
            let (stale, _) = fib.apply(&changes, &config);
            let (rebuilt, _) = logic_from(&config, &ports, &macs, false);
            let rebuilt = router_of(&rebuilt);
            for (i, &p) in probes.iter().enumerate() {
                let now = answer(fib.router(), p);
                assert_eq!(now, answer(rebuilt, p), "step {step}: {p}");
                // The copy published before the change still answers as before.
                let old = answer(router_of(&published), p);
                assert_eq!(
                    old, snapshot[i],
                    "step {step}: published copy changed for {p}"
                );
                if now != old {
                    assert!(stale.covers(p), "step {step}: {p} changed but is not stale");
                }
            }
        }
        // Everything withdrawn: no next hop or group is left behind.
        let changes = config.diff(&Config::default());
        fib.apply(&changes, &Config::default());
        assert_eq!((fib.routes(), fib.next_hops()), (0, (0, 0)));
        assert!(fib.router().lpm4().is_empty() && fib.router().lpm6().is_empty());
    }

    #[test]
    fn routes_share_next_hops_and_a_weight_change_of_a_lone_route_touches_nothing() {
        let (ports, macs) = ports();
        let mut fib = Fib::new(ports, macs, false);
        let mut c = Config::default();
        for id in 0..1000u64 {
            let p = format!("10.{}.{}.0/24", id / 256, id % 256);
            c.routes.insert(id, route(id, &p, "a", (id % 2) as u8, 1));
        }
        let (stale, w) = fib.apply(&Config::default().diff(&c), &c);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(stale.prefixes.len(), 1000);
        assert_eq!((fib.routes(), fib.next_hops()), (1000, (2, 0)));
        let mut c2 = c.clone();
        c2.routes.get_mut(&5).unwrap().weight = 9;
        let (stale, _) = fib.apply(&c.diff(&c2), &c2);
        assert!(stale.is_empty(), "{stale:?}");
        // A second route on a prefix makes a group; the same members elsewhere share it.
        let mut c3 = c2.clone();
        c3.routes.get_mut(&5).unwrap().weight = 1;
        c3.routes
            .insert(5000, route(5000, "10.0.5.0/24", "b", 1, 1));
        c3.routes
            .insert(5001, route(5001, "10.0.9.0/24", "b", 1, 1));
        let (stale, _) = fib.apply(&c2.diff(&c3), &c3);
        assert_eq!(stale.prefixes.len(), 2, "{stale:?}");
        assert_eq!(
            fib.next_hops(),
            (3, 1),
            "10.0.5/24 and 10.0.9/24: the same group"
        );
    }

    #[test]
    fn a_copy_still_held_two_updates_later_is_copied_not_written() {
        let (ports, macs) = ports();
        let mut fib = Fib::new(ports, macs, false);
        let dst: IpAddr = "10.1.2.3".parse().unwrap();
        let mut c = Config::default();
        c.routes.insert(1, route(1, "10.0.0.0/8", "a", 1, 1));
        fib.apply(&Config::default().diff(&c), &c);
        let held = fib.logic();
        let mut c2 = c.clone();
        c2.routes.insert(1, route(1, "10.0.0.0/8", "b", 2, 1));
        fib.apply(&c.diff(&c2), &c2);
        assert_eq!(fib.copies(), 0, "the other side was free");
        let mut c3 = c2.clone();
        c3.routes.insert(1, route(1, "10.0.0.0/8", "c", 3, 1));
        fib.apply(&c2.diff(&c3), &c3);
        assert_eq!(fib.copies(), 1, "the held side was copied");
        assert_eq!(
            answer(router_of(&held), dst),
            [(0, [2, 0, 0, 0, 0, 1], 0)].into()
        );
        assert_eq!(
            answer(fib.router(), dst),
            [(2, [2, 0, 0, 0, 0, 3], 0)].into()
        );
    }

    #[test]
    fn pins_follow_their_route_and_make_every_decision_stale() {
        let (ports, macs) = ports();
        let mut fib = Fib::new(ports, macs, false);
        let mut c = Config::default();
        c.routes.insert(1, route(1, "10.0.0.0/8", "a", 1, 1));
        c.routes.insert(2, route(2, "10.9.0.0/16", "b", 2, 1));
        fib.apply(&Config::default().diff(&c), &c);
        let mut c2 = c.clone();
        c2.flows.insert(
            7,
            Flow {
                id: 7,
                matcher: FlowMatch {
                    dst_port: Some(80),
                    ..FlowMatch::default()
                },
                route: 2,
            },
        );
        let (stale, w) = fib.apply(&c.diff(&c2), &c2);
        assert!(stale.all && w.is_empty(), "{stale:?} {w:?}");
        assert_eq!(fib.router().pins().len(), 1);
        // The pinned route moves to another port: the pin follows.
        let mut c3 = c2.clone();
        c3.routes.insert(2, route(2, "10.9.0.0/16", "c", 3, 1));
        let (stale, _) = fib.apply(&c2.diff(&c3), &c3);
        assert!(stale.all);
        let hop = fib.router().pins()[0].1;
        assert_eq!(fib.router().next_hop(hop).unwrap().port, 2);
        // Its route gone: the pin goes, with a warning.
        let mut c4 = c3.clone();
        c4.routes.remove(&2);
        let (_, w) = fib.apply(&c3.diff(&c4), &c4);
        assert!(fib.router().pins().is_empty());
        assert!(w[0].contains("flow 7"), "{w:?}");
    }
}
