//! Max mode's user-space half: the worker decides a flow's first packets as usual, and
//! [`FlowLearner`] reports each decided flow once (a [`Learned`]) so the control thread can
//! cache the decision in the XDP program's flow map. From then on the kernel rewrites and
//! redirects that flow's packets itself and they never reach the worker.
//!
//! Only decisions that hold for every packet of a flow are reported: IPv4/IPv6 TCP, UDP and
//! port-less protocols forwarded to one port by logic that decides per flow (a static map or
//! a router, behind an optional filter and TTL decrement). A learning bridge decides on MAC
//! addresses and must see every frame to learn and age them, so its flows stay in user space.
//! The MAC addresses reported are those of the frame as the logic left it, so the kernel
//! applies exactly the rewrite user space did.
//!
//! Reporting never blocks the worker: the channel is bounded and a full channel loses the
//! report, which the flow's next packet repeats (a flow is reported again at most once a
//! second while its packets keep reaching user space).

use crate::flowtable::FlowTable;
use crate::logic::{AnyLogic, Base, Logic, Reloadable};
use crate::shard::FlowKey;
use crate::verdict::{PortId, Verdict};
use crate::wire::{Headers, L3};
use std::sync::mpsc::SyncSender;
use std::time::Duration;

/// Reports of one flow are at least this far apart (ns).
const REPEAT_NS: u64 = 1_000_000_000;
/// Reports remembered per worker (a bounded table: a flood of new flows evicts the oldest,
/// which at worst are reported again).
const RECENT: usize = 1 << 16;

/// A flow decided in user space, ready to be cached in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Learned {
    pub in_port: PortId,
    pub out_port: PortId,
    pub key: FlowKey,
    pub ipv4: bool,
    /// The frame's MAC addresses after the logic's rewrite.
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub dec_ttl: bool,
    /// The logic version that decided; the control thread ignores reports of older versions.
    pub version: u64,
}

/// Whether `logic` gives every packet of an IP flow the same verdict and rewrite.
pub fn decides_per_flow(logic: &AnyLogic) -> bool {
    !matches!(logic.base(), Base::Bridge(_))
}

/// Wraps a worker's logic; reports decided flows when it has a channel.
pub struct FlowLearner {
    inner: Reloadable<AnyLogic>,
    tx: Option<SyncSender<Learned>>,
    /// When each (ingress port, flow) was last reported, in ns of the worker's clock.
    recent: FlowTable<(PortId, FlowKey), u64>,
    seen_version: u64,
    now: Duration,
}

impl FlowLearner {
    /// `tx: None` is normal mode: the logic runs unchanged.
    pub fn new(inner: Reloadable<AnyLogic>, tx: Option<SyncSender<Learned>>) -> FlowLearner {
        FlowLearner {
            seen_version: inner.version(),
            inner,
            // Normal mode reports nothing, so it needs no memory of reports.
            recent: FlowTable::new(if tx.is_some() { RECENT } else { 1 }),
            tx,
            now: Duration::ZERO,
        }
    }

    fn learn(&mut self, pkt: &[u8], hdr: &Headers, in_port: PortId, out_port: PortId) {
        let Some(tx) = &self.tx else { return };
        let logic = self.inner.current();
        if !decides_per_flow(logic) || pkt.len() < 12 {
            return;
        }
        let ipv4 = match hdr.l3 {
            L3::Ipv4 { .. } => true,
            // The kernel's key reads the ports right after the fixed header only.
            L3::Ipv6 { .. } if hdr.l4_offset == hdr.l3_offset + 40 => false,
            _ => return,
        };
        // SCTP ports are ours only: the kernel's key has none. (Later IPv4 fragments carry no
        // ports in either key, so they stay consistent without a special case.)
        if hdr.proto == 132 {
            return;
        }
        let Some(key) = FlowKey::from_headers(hdr) else {
            return;
        };
        let now = self.now.as_nanos() as u64;
        match self.recent.get(&(in_port, key)) {
            Some(at) if now.saturating_sub(at) < REPEAT_NS => return,
            _ => {}
        }
        self.recent.insert((in_port, key), now);
        let mut dst_mac = [0u8; 6];
        let mut src_mac = [0u8; 6];
        dst_mac.copy_from_slice(&pkt[0..6]);
        src_mac.copy_from_slice(&pkt[6..12]);
        let _ = tx.try_send(Learned {
            in_port,
            out_port,
            key,
            ipv4,
            dst_mac,
            src_mac,
            dec_ttl: logic.ttl_decrement(),
            version: self.inner.version(),
        });
    }
}

impl Clone for FlowLearner {
    fn clone(&self) -> Self {
        FlowLearner::new(self.inner.clone(), self.tx.clone())
    }
}

impl Logic for FlowLearner {
    #[inline]
    fn prefetch(&self, hdr: &Headers) {
        self.inner.prefetch(hdr)
    }

    #[inline]
    fn decide(&mut self, pkt: &mut [u8], hdr: &Headers, in_port: PortId) -> Verdict {
        let v = self.inner.decide(pkt, hdr, in_port);
        if let Verdict::Forward(out) = v {
            self.learn(pkt, hdr, in_port, out);
        }
        v
    }

    fn tick(&mut self, now: Duration) {
        self.inner.tick(now);
        self.now = now;
        if self.inner.version() != self.seen_version {
            // New logic: every flow must be decided and reported again.
            self.seen_version = self.inner.version();
            self.recent.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::{LearningBridge, ReloadHandle, StaticMap};
    use crate::synthetic::udp4_frame;
    use crate::wire::parse_headers;
    use std::sync::mpsc::sync_channel;

    fn frame(sport: u16) -> Vec<u8> {
        udp4_frame(
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            sport,
            9,
            64,
            0,
        )
    }

    fn static_logic(out: PortId) -> AnyLogic {
        let mut m = StaticMap::from_pairs([(0, out)]);
        m.set_rewrite(
            out,
            Some(crate::logic::MacRewrite {
                dst: [2, 0, 0, 0, 0, 0xd],
                src: [2, 0, 0, 0, 0, 0x5],
            }),
        );
        AnyLogic::new(m).with_ttl_decrement(true)
    }

    #[test]
    fn each_flow_is_reported_once_with_the_rewrite_applied() {
        let handle = ReloadHandle::new(static_logic(1));
        let (tx, rx) = sync_channel(16);
        let mut l = FlowLearner::new(handle.reloadable(), Some(tx));
        l.tick(Duration::from_millis(1));
        for sport in [1000, 1000, 1001, 1000] {
            let mut f = frame(sport);
            let h = parse_headers(&f).unwrap();
            assert_eq!(l.decide(&mut f, &h, 0), Verdict::Forward(1));
        }
        let got: Vec<Learned> = rx.try_iter().collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].key.src_port, 1000);
        assert_eq!(got[1].key.src_port, 1001);
        assert_eq!(got[0].dst_mac, [2, 0, 0, 0, 0, 0xd]);
        assert_eq!(got[0].src_mac, [2, 0, 0, 0, 0, 0x5]);
        assert!(got[0].ipv4 && got[0].dec_ttl);
        assert_eq!((got[0].in_port, got[0].out_port, got[0].version), (0, 1, 0));
        // A second later a flow still reaching user space is reported again (its cache entry
        // may have aged out or the report may have been lost).
        l.tick(Duration::from_millis(1200));
        let mut f = frame(1000);
        let h = parse_headers(&f).unwrap();
        l.decide(&mut f, &h, 0);
        assert_eq!(rx.try_iter().count(), 1);
    }

    #[test]
    fn new_logic_reports_every_flow_again_under_its_version() {
        let handle = ReloadHandle::new(static_logic(1));
        let (tx, rx) = sync_channel(16);
        let mut l = FlowLearner::new(handle.reloadable(), Some(tx));
        let mut f = frame(1000);
        let h = parse_headers(&f).unwrap();
        l.decide(&mut f, &h, 0);
        handle.publish(static_logic(2));
        l.tick(Duration::from_millis(2));
        let mut f = frame(1000);
        assert_eq!(l.decide(&mut f, &h, 0), Verdict::Forward(2));
        let got: Vec<Learned> = rx.try_iter().collect();
        assert_eq!(got.len(), 2);
        assert_eq!((got[1].out_port, got[1].version), (2, 1));
    }

    #[test]
    fn bridged_flows_and_normal_mode_report_nothing() {
        let (tx, rx) = sync_channel(16);
        let handle = ReloadHandle::new(AnyLogic::new(LearningBridge::new()));
        let mut bridge = FlowLearner::new(handle.reloadable(), Some(tx));
        let mut normal = FlowLearner::new(ReloadHandle::new(static_logic(1)).reloadable(), None);
        for l in [&mut bridge, &mut normal] {
            let mut f = frame(1000);
            let h = parse_headers(&f).unwrap();
            l.decide(&mut f, &h, 0);
        }
        assert_eq!(rx.try_iter().count(), 0);
    }

    #[test]
    fn a_full_channel_loses_reports_without_blocking() {
        let (tx, rx) = sync_channel(1);
        let mut l = FlowLearner::new(ReloadHandle::new(static_logic(1)).reloadable(), Some(tx));
        for sport in 1000..1100 {
            let mut f = frame(sport);
            let h = parse_headers(&f).unwrap();
            assert_eq!(l.decide(&mut f, &h, 0), Verdict::Forward(1));
        }
        assert_eq!(rx.try_iter().count(), 1);
    }
}
