//! Static port map: every packet from input port `i` leaves through the port configured for
//! `i`, optionally with its MAC addresses rewritten for that output port (so that a frame
//! addressed to this box arrives addressed to the next one).
//!
//! Owns the in -> out table and the per-output rewrites. Never looks past the Ethernet header
//! and never learns: the table changes only through its setters (control plane).

use super::{Logic, set_macs};
use crate::verdict::{DropReason, PortId, Verdict};
use crate::wire::Headers;

/// MAC addresses written into every frame that leaves through a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacRewrite {
    pub dst: [u8; 6],
    pub src: [u8; 6],
}

/// `in_port -> out_port`; unmapped inputs are dropped as [`DropReason::NoRoute`].
///
/// Mapping a port to itself is allowed (a reflector); the fabric decides what hairpinning
/// means for the port.
#[derive(Debug, Clone, Default)]
pub struct StaticMap {
    /// Indexed by input port.
    out: Vec<Option<PortId>>,
    /// Indexed by output port.
    rewrite: Vec<Option<MacRewrite>>,
}

impl StaticMap {
    /// An empty map: every packet is dropped until ports are mapped.
    pub fn new() -> Self {
        Self::default()
    }

    /// A map from `(in_port, out_port)` pairs; a later pair for the same input wins.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (PortId, PortId)>) -> Self {
        let mut m = Self::new();
        for (i, o) in pairs {
            m.map(i, o);
        }
        m
    }

    /// Sends everything from `in_port` out of `out_port`.
    pub fn map(&mut self, in_port: PortId, out_port: PortId) {
        let i = in_port as usize;
        if self.out.len() <= i {
            self.out.resize(i + 1, None);
        }
        self.out[i] = Some(out_port);
    }

    /// Drops everything from `in_port` from now on; returns the port it was mapped to.
    pub fn unmap(&mut self, in_port: PortId) -> Option<PortId> {
        self.out.get_mut(in_port as usize)?.take()
    }

    /// The output port for `in_port`, if mapped.
    pub fn out_port(&self, in_port: PortId) -> Option<PortId> {
        self.out.get(in_port as usize).copied().flatten()
    }

    /// Sets (or with `None` clears) the MAC rewrite for frames leaving through `out_port`.
    pub fn set_rewrite(&mut self, out_port: PortId, rewrite: Option<MacRewrite>) {
        let o = out_port as usize;
        if self.rewrite.len() <= o {
            self.rewrite.resize(o + 1, None);
        }
        self.rewrite[o] = rewrite;
    }

    /// The MAC rewrite for `out_port`, if any.
    pub fn rewrite(&self, out_port: PortId) -> Option<MacRewrite> {
        self.rewrite.get(out_port as usize).copied().flatten()
    }
}

impl Logic for StaticMap {
    #[inline]
    fn decide(&mut self, pkt: &mut [u8], _hdr: &Headers, in_port: PortId) -> Verdict {
        let Some(out) = self.out_port(in_port) else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        if let Some(rw) = self.rewrite(out)
            && !set_macs(pkt, rw.dst, rw.src)
        {
            return Verdict::Drop(DropReason::Malformed);
        }
        Verdict::Forward(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::test_frames::{self, MAC_A, MAC_B};

    #[test]
    fn maps_ports_and_drops_unmapped() {
        let mut m = StaticMap::from_pairs([(0, 1), (1, 0), (3, 3)]);
        let (mut f, h) = test_frames::l2(MAC_B, MAC_A);
        let orig = f.clone();
        assert_eq!(m.decide(&mut f, &h, 0), Verdict::Forward(1));
        assert_eq!(m.decide(&mut f, &h, 1), Verdict::Forward(0));
        assert_eq!(m.decide(&mut f, &h, 3), Verdict::Forward(3));
        assert_eq!(m.decide(&mut f, &h, 2), Verdict::Drop(DropReason::NoRoute));
        assert_eq!(m.decide(&mut f, &h, 9), Verdict::Drop(DropReason::NoRoute));
        assert_eq!(f, orig, "no rewrite configured, frame untouched");
        assert_eq!(m.unmap(0), Some(1));
        assert_eq!(m.decide(&mut f, &h, 0), Verdict::Drop(DropReason::NoRoute));
        assert_eq!(m.unmap(42), None);
    }

    #[test]
    fn rewrites_macs_per_output_port() {
        let mut m = StaticMap::from_pairs([(0, 1), (1, 2)]);
        let rw = MacRewrite {
            dst: [0x02, 1, 1, 1, 1, 1],
            src: [0x02, 2, 2, 2, 2, 2],
        };
        m.set_rewrite(1, Some(rw));
        let (mut f, h) = test_frames::ipv4("10.0.0.1", "10.0.0.2", 64, 17, 1, 2);
        let orig = f.clone();
        assert_eq!(m.decide(&mut f, &h, 0), Verdict::Forward(1));
        assert_eq!(f[..6], rw.dst);
        assert_eq!(f[6..12], rw.src);
        assert_eq!(f[12..], orig[12..], "only the MACs change");

        let mut g = orig.clone();
        assert_eq!(m.decide(&mut g, &h, 1), Verdict::Forward(2));
        assert_eq!(g, orig, "port 2 has no rewrite");

        m.set_rewrite(1, None);
        let mut g = orig.clone();
        assert_eq!(m.decide(&mut g, &h, 0), Verdict::Forward(1));
        assert_eq!(g, orig);
    }

    #[test]
    fn runt_frame_with_rewrite_is_malformed() {
        let mut m = StaticMap::from_pairs([(0, 1)]);
        m.set_rewrite(
            1,
            Some(MacRewrite {
                dst: MAC_A,
                src: MAC_B,
            }),
        );
        let (_, h) = test_frames::l2(MAC_B, MAC_A);
        let mut runt = [0u8; 8];
        assert_eq!(
            m.decide(&mut runt, &h, 0),
            Verdict::Drop(DropReason::Malformed)
        );
    }
}
