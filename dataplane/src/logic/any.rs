//! The logic the CLI builds at run time: one base logic, optionally behind a filter and a TTL
//! decrement, dispatched by a `match` per packet instead of a trait object, so every stage
//! stays inlinable.
//!
//! Owns only the composition. The order is fixed and is that of
//! `Filter<TtlDecrement<base>>`: the ACL first (a denied packet is dropped as filtered
//! whatever its TTL), then the TTL, then the base. Never adds behaviour of its own.

use super::filter::Acl;
use super::{Action, LearningBridge, Logic, Router, StaticMap, ttl};
use crate::verdict::{DropReason, PortId, Verdict};
use crate::wire::Headers;
use std::time::Duration;

/// The logic that picks the output port.
#[derive(Debug, Clone)]
pub enum Base {
    Static(StaticMap),
    Bridge(LearningBridge),
    Router(Router),
}

impl From<StaticMap> for Base {
    fn from(m: StaticMap) -> Self {
        Base::Static(m)
    }
}

impl From<LearningBridge> for Base {
    fn from(b: LearningBridge) -> Self {
        Base::Bridge(b)
    }
}

impl From<Router> for Base {
    fn from(r: Router) -> Self {
        Base::Router(r)
    }
}

impl Logic for Base {
    #[inline]
    fn prefetch(&self, hdr: &Headers) {
        match self {
            Base::Static(m) => m.prefetch(hdr),
            Base::Bridge(b) => b.prefetch(hdr),
            Base::Router(r) => r.prefetch(hdr),
        }
    }

    #[inline]
    fn decide(&mut self, pkt: &mut [u8], hdr: &Headers, in_port: PortId) -> Verdict {
        match self {
            Base::Static(m) => m.decide(pkt, hdr, in_port),
            Base::Bridge(b) => b.decide(pkt, hdr, in_port),
            Base::Router(r) => r.decide(pkt, hdr, in_port),
        }
    }

    fn tick(&mut self, now: Duration) {
        match self {
            Base::Static(m) => m.tick(now),
            Base::Bridge(b) => b.tick(now),
            Base::Router(r) => r.tick(now),
        }
    }
}

/// Filter (optional) -> TTL decrement (optional) -> base.
#[derive(Debug, Clone)]
pub struct AnyLogic {
    acl: Option<Acl>,
    ttl: bool,
    base: Base,
}

impl AnyLogic {
    /// Just `base`: no filter, no TTL decrement.
    pub fn new(base: impl Into<Base>) -> Self {
        AnyLogic {
            acl: None,
            ttl: false,
            base: base.into(),
        }
    }

    /// Puts `acl` in front (replacing any previous one).
    pub fn with_acl(mut self, acl: Acl) -> Self {
        self.acl = Some(acl);
        self
    }

    /// Decrements TTL / hop limit before the base decides (routers want this).
    pub fn with_ttl_decrement(mut self, on: bool) -> Self {
        self.ttl = on;
        self
    }

    pub fn base(&self) -> &Base {
        &self.base
    }

    /// The base, for control-plane updates (routes, static mappings).
    pub fn base_mut(&mut self) -> &mut Base {
        &mut self.base
    }

    pub fn acl(&self) -> Option<&Acl> {
        self.acl.as_ref()
    }

    pub fn set_acl(&mut self, acl: Option<Acl>) {
        self.acl = acl;
    }

    pub fn ttl_decrement(&self) -> bool {
        self.ttl
    }
}

impl Logic for AnyLogic {
    #[inline]
    fn prefetch(&self, hdr: &Headers) {
        self.base.prefetch(hdr)
    }

    #[inline]
    fn decide(&mut self, pkt: &mut [u8], hdr: &Headers, in_port: PortId) -> Verdict {
        if let Some(acl) = &self.acl {
            match acl.evaluate(hdr) {
                Action::Permit => {}
                Action::Deny => return Verdict::Drop(DropReason::Filtered),
            }
        }
        if self.ttl {
            match ttl::decrement(pkt, hdr) {
                Ok(hdr) => self.base.decide(pkt, &hdr, in_port),
                Err(reason) => Verdict::Drop(reason),
            }
        } else {
            self.base.decide(pkt, hdr, in_port)
        }
    }

    fn tick(&mut self, now: Duration) {
        self.base.tick(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::test_frames;
    use crate::logic::{Filter, NextHop, Rule, TtlDecrement};

    const NH: NextHop = NextHop {
        port: 3,
        dst_mac: [0x02, 0, 0, 0, 3, 3],
        src_mac: [0x02, 0, 0, 0, 3, 0],
    };

    fn router() -> Router {
        let mut r = Router::new();
        r.set_next_hop(0, NH);
        r.add_route("10.0.0.0".parse().unwrap(), 8, 0).unwrap();
        r.add_route("2001:db8::".parse().unwrap(), 32, 0).unwrap();
        r
    }

    fn acl() -> Acl {
        Acl::new(
            vec!["deny udp any any dport 53".parse::<Rule>().unwrap()],
            Action::Permit,
        )
    }

    fn packets() -> Vec<(Vec<u8>, Headers)> {
        vec![
            test_frames::ipv4("192.0.2.1", "10.1.1.1", 64, 17, 1, 2),
            test_frames::ipv4("192.0.2.1", "10.1.1.1", 64, 17, 1, 53),
            test_frames::ipv4("192.0.2.1", "10.1.1.1", 1, 17, 1, 53),
            test_frames::ipv4("192.0.2.1", "10.1.1.1", 1, 17, 1, 2),
            test_frames::ipv4("192.0.2.1", "11.1.1.1", 9, 6, 1, 2),
            test_frames::ipv6("2001:db8::1", "2001:db8::2", 2, 17, 1, 2),
            test_frames::ipv6("2001:db8::1", "2001:db9::2", 2, 17, 1, 2),
            test_frames::arp(),
            test_frames::l2(test_frames::MAC_B, test_frames::MAC_A),
        ]
    }

    #[test]
    fn same_as_the_static_composition() {
        let mut any = AnyLogic::new(router())
            .with_acl(acl())
            .with_ttl_decrement(true);
        let mut nested = Filter::new(acl(), TtlDecrement::new(router()));
        let mut verdicts = Vec::new();
        for (pkt, hdr) in packets() {
            let (mut a, mut b) = (pkt.clone(), pkt);
            let va = any.decide(&mut a, &hdr, 0);
            assert_eq!(va, nested.decide(&mut b, &hdr, 0), "{hdr:?}");
            assert_eq!(a, b, "{hdr:?}");
            verdicts.push(va);
        }
        use DropReason::*;
        assert_eq!(
            verdicts,
            [
                Verdict::Forward(3),
                Verdict::Drop(Filtered),
                Verdict::Drop(Filtered),
                Verdict::Drop(TtlExpired),
                Verdict::Drop(NoRoute),
                Verdict::Forward(3),
                Verdict::Drop(NoRoute),
                Verdict::ToKernel,
                Verdict::Drop(NotIp),
            ]
        );
    }

    #[test]
    fn plain_base_touches_nothing_but_macs() {
        let mut any = AnyLogic::new(router());
        let (mut f, h) = test_frames::ipv4("192.0.2.1", "10.1.1.1", 1, 17, 1, 53);
        let orig = f.clone();
        assert_eq!(any.decide(&mut f, &h, 0), Verdict::Forward(3));
        assert_eq!(f[12..], orig[12..], "no TTL decrement unless asked");
        assert!(!any.ttl_decrement());
        assert!(any.acl().is_none());
    }

    #[test]
    fn tick_reaches_the_bridge() {
        let mut any = AnyLogic::new(LearningBridge::new());
        let (mut f, h) = test_frames::l2(test_frames::MAC_B, test_frames::MAC_A);
        any.tick(Duration::from_secs(1));
        any.decide(&mut f, &h, 1);
        any.tick(Duration::from_secs(1000));
        let Base::Bridge(b) = any.base() else {
            panic!("built as a bridge");
        };
        assert_eq!(
            b.lookup(&test_frames::MAC_A),
            None,
            "aged out: the tick arrived"
        );
    }

    #[test]
    fn references_and_boxes_are_logic() {
        fn run(mut l: impl Logic) -> Verdict {
            let (mut f, h) = test_frames::l2(test_frames::MAC_B, test_frames::MAC_A);
            l.tick(Duration::ZERO);
            l.decide(&mut f, &h, 0)
        }
        let mut m = StaticMap::from_pairs([(0, 2)]);
        assert_eq!(run(&mut m), Verdict::Forward(2));
        let boxed: Box<dyn Logic> = Box::new(m);
        assert_eq!(run(boxed), Verdict::Forward(2));
    }
}
