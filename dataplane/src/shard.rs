//! Flow sharding: which worker owns a packet, and how packets move to their owner.
//!
//! Placement is a value: [`flow_hash`] digests a packet's flow (protocol, addresses, ports)
//! and [`jump_hash`] maps it onto `n` workers with Lamping & Veach's jump consistent hash, so
//! growing from `n` to `n + 1` workers moves only `1/(n+1)` of the flows. Moving the packets is
//! a separate concern: [`Handoff`] rings copy a frame into a slot of a bounded SPSC ring to the
//! owner, which copies it into its own buffer pool (every worker owns its pool, as every AF_XDP
//! socket set owns its UMEM). A full ring hands the frame back to the caller.

use crate::batch::Batch;
use crate::frame::{BufferPool, Frame};
use crate::ring::{self, Consumer, Producer};
use crate::verdict::PortId;
use crate::wire::{Headers, L3};

/// How packets are spread over workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Every packet of a flow is processed by one worker (its jump-hash owner), so per-flow
    /// order is kept; packets that arrive elsewhere cross a handoff ring.
    Sequential,
    /// Each worker processes what it receives; flows that arrive on several queues may be
    /// reordered, but no packet crosses cores.
    Concurrent,
}

/// A flow's identity: protocol, addresses and ports, for IPv4 and IPv6 alike (IPv4 addresses
/// are stored as IPv4-mapped IPv6, so the two families never collide).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
}

impl FlowKey {
    /// The key of an IP packet; `None` for ARP and other non-IP frames.
    pub fn from_headers(h: &Headers) -> Option<FlowKey> {
        let (src, dst) = match h.l3 {
            L3::Ipv4 { src, dst, .. } => {
                (src.to_ipv6_mapped().octets(), dst.to_ipv6_mapped().octets())
            }
            L3::Ipv6 { src, dst, .. } => (src.octets(), dst.octets()),
            L3::Arp | L3::Other => return None,
        };
        Some(FlowKey {
            src,
            dst,
            src_port: h.src_port,
            dst_port: h.dst_port,
            proto: h.proto,
        })
    }

    /// The same flow seen from the other end.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            proto: self.proto,
        }
    }

    /// 64-bit digest of the key (see [`flow_hash`], which agrees with this for IP packets).
    pub fn hash64(&self) -> u64 {
        let w = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8-byte chunk"));
        let ports = (self.src_port as u64) << 24 | (self.dst_port as u64) << 8 | self.proto as u64;
        hash_words(
            w(&self.src[..8]) ^ w(&self.src[8..]),
            w(&self.dst[..8]) ^ w(&self.dst[8..]),
            ports,
        )
    }
}

#[inline]
fn mix(mut x: u64) -> u64 {
    // splitmix64's finaliser: every input bit affects every output bit.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[inline]
fn hash_words(src: u64, dst: u64, ports: u64) -> u64 {
    mix(src ^ mix(dst ^ mix(ports)))
}

/// The flow hash of a parsed packet, without building a [`FlowKey`]. Non-IP frames hash by
/// their MAC addresses (`frame[..12]`), so an L2 conversation also stays on one worker.
#[inline]
pub fn flow_hash(h: &Headers, frame: &[u8]) -> u64 {
    let ports = (h.src_port as u64) << 24 | (h.dst_port as u64) << 8 | h.proto as u64;
    match h.l3 {
        L3::Ipv4 { src, dst, .. } => {
            // The words `FlowKey::hash64` folds from an IPv4-mapped address (::ffff:a.b.c.d).
            let mapped = |a: core::net::Ipv4Addr| 0xffff_0000_0000u64 | u32::from(a) as u64;
            hash_words(mapped(src), mapped(dst), ports)
        }
        L3::Ipv6 { src, dst, .. } => {
            let fold = |a: u128| (a >> 64) as u64 ^ a as u64;
            hash_words(fold(u128::from(src)), fold(u128::from(dst)), ports)
        }
        L3::Arp | L3::Other => {
            let mut macs = [0u8; 16];
            let n = frame.len().min(12);
            macs[..n].copy_from_slice(&frame[..n]);
            let v = u128::from_be_bytes(macs);
            mix((v >> 64) as u64 ^ mix(v as u64))
        }
    }
}

/// Jump consistent hash (Lamping & Veach, 2014): maps `key` to a bucket in `0..buckets`,
/// moving only `1/(n+1)` of the keys when a bucket is added. `buckets == 0` is treated as 1.
#[inline]
pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let n = buckets.max(1) as i64;
    let (mut b, mut j) = (-1i64, 0i64);
    while j < n {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = (((b + 1) as f64) * ((1u64 << 31) as f64 / (((key >> 33) + 1) as f64))) as i64;
    }
    b as u32
}

/// One slot of a handoff ring: a copy of a packet and the port it arrived on.
pub struct HandoffSlot {
    in_port: PortId,
    len: usize,
    data: Box<[u8]>,
}

/// The sending half of a handoff ring to one other worker.
pub struct HandoffTx(Producer<HandoffSlot>);

/// The receiving half of a handoff ring from one other worker.
pub struct HandoffRx(Consumer<HandoffSlot>);

/// Namespace for building handoff rings.
pub struct Handoff;

impl Handoff {
    /// A ring of `slots` packets of at most `frame_size` bytes each; all memory is allocated
    /// here, none later.
    pub fn channel(slots: usize, frame_size: usize) -> (HandoffTx, HandoffRx) {
        let (p, c) = ring::channel(slots, || HandoffSlot {
            in_port: 0,
            len: 0,
            data: vec![0u8; frame_size].into_boxed_slice(),
        });
        (HandoffTx(p), HandoffRx(c))
    }
}

impl HandoffTx {
    /// Copies `frame` into the ring and frees it into `pool`; the owner sees it after the next
    /// [`HandoffTx::flush`]. A full ring hands the frame back untouched.
    #[inline]
    pub fn push(
        &mut self,
        pool: &mut BufferPool,
        frame: Frame,
        in_port: PortId,
    ) -> Result<(), Frame> {
        let bytes = pool.data(&frame);
        let copied = self.0.write_unpublished(|slot| {
            let n = bytes.len().min(slot.data.len());
            slot.data[..n].copy_from_slice(&bytes[..n]);
            slot.len = n;
            slot.in_port = in_port;
        });
        if copied {
            pool.free(frame);
            Ok(())
        } else {
            Err(frame)
        }
    }
}

impl HandoffTx {
    /// Makes the packets pushed since the last flush visible to the owner: the worker pushes
    /// a batch's packets for one owner, then flushes once (one shared store per batch, not
    /// per packet).
    #[inline]
    pub fn flush(&mut self) {
        self.0.publish();
    }
}

impl HandoffRx {
    /// Moves packets that arrived on one port into `batch`, copying each into a frame of
    /// `pool`; stops at the first packet from another port (so a batch has one ingress port),
    /// when the batch is full, or when the pool is empty (packets then wait in the ring).
    /// Returns the ingress port of the packets taken.
    pub fn pop_into(&mut self, pool: &mut BufferPool, batch: &mut Batch) -> Option<PortId> {
        let port = self.0.peek(|s| s.in_port)?;
        while !batch.is_full() && self.0.peek(|s| s.in_port) == Some(port) {
            let Some(mut frame) = pool.alloc() else { break };
            self.0.read_unreleased(|s| {
                pool.fill(&mut frame, &s.data[..s.len]);
            });
            // Cannot fail: we checked `is_full` above and nothing else pushes.
            if let Err(f) = batch.push(frame) {
                pool.free(f);
                break;
            }
        }
        // The slots go back to the sender once per batch.
        self.0.release();
        Some(port)
    }

    /// Packets waiting.
    pub fn ready(&mut self) -> usize {
        self.0.ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    fn v4(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16) -> Headers {
        Headers {
            l3_offset: 14,
            l4_offset: 34,
            ethertype: 0x0800,
            vlan: None,
            l3: L3::Ipv4 {
                src: Ipv4Addr::from(src),
                dst: Ipv4Addr::from(dst),
                ttl: 64,
            },
            proto: 17,
            src_port: sp,
            dst_port: dp,
        }
    }

    #[test]
    fn flow_hash_agrees_with_flow_key() {
        let h = v4([10, 0, 0, 1], [10, 0, 0, 2], 1000, 53);
        assert_eq!(
            flow_hash(&h, &[]),
            FlowKey::from_headers(&h).unwrap().hash64()
        );
    }

    #[test]
    fn protocol_is_part_of_the_flow() {
        let a = v4([10, 0, 0, 1], [10, 0, 0, 2], 1000, 53);
        let b = Headers { proto: 6, ..a };
        assert_ne!(flow_hash(&a, &[]), flow_hash(&b, &[]));
    }

    #[test]
    fn jump_hash_stays_in_range() {
        assert_eq!(jump_hash(0, 1), 0);
        for key in 0..10_000u64 {
            assert!(jump_hash(key, 7) < 7);
        }
        assert_eq!(jump_hash(7, 0), 0);
    }

    #[test]
    fn jump_hash_moves_only_a_fair_share_when_growing() {
        let keys: Vec<u64> = (0..20_000u64).map(mix).collect();
        let moved = keys
            .iter()
            .filter(|&&k| jump_hash(k, 8) != jump_hash(k, 9))
            .count();
        // Expected 1/9 of the keys; every key that moved must have moved to the new bucket.
        assert!(
            keys.iter()
                .all(|&k| jump_hash(k, 8) == jump_hash(k, 9) || jump_hash(k, 9) == 8)
        );
        let share = moved as f64 / keys.len() as f64;
        assert!((share - 1.0 / 9.0).abs() < 0.01, "moved share {share}");
    }

    #[test]
    fn jump_hash_is_balanced() {
        let mut counts = [0u32; 4];
        for k in 0..40_000u64 {
            counts[jump_hash(mix(k), 4) as usize] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn handoff_full_ring_hands_frame_back() {
        let mut pool = BufferPool::new(8, 256).unwrap();
        let (mut tx, mut rx) = Handoff::channel(2, 256);
        for i in 0..2u8 {
            let mut f = pool.alloc().unwrap();
            pool.fill(&mut f, &[i; 60]);
            tx.push(&mut pool, f, 3).unwrap();
        }
        let mut f = pool.alloc().unwrap();
        pool.fill(&mut f, &[9; 60]);
        let back = tx.push(&mut pool, f, 3).unwrap_err();
        assert_eq!(pool.data(&back)[0], 9);
        pool.free(back);
        assert_eq!(
            pool.available(),
            8,
            "copied frames were freed, the refused one returned"
        );

        let mut batch = Batch::new(64);
        assert_eq!(rx.pop_into(&mut pool, &mut batch), None, "not flushed yet");
        tx.flush();
        assert_eq!(rx.pop_into(&mut pool, &mut batch), Some(3));
        assert_eq!(batch.len(), 2);
        let firsts: Vec<u8> = batch.as_slice().iter().map(|f| pool.data(f)[0]).collect();
        assert_eq!(firsts, [0, 1]);
        for f in batch.drain() {
            pool.free(f);
        }
        assert_eq!(pool.available(), 8);
    }

    #[test]
    fn handoff_batch_has_one_ingress_port_and_waits_when_pool_empty() {
        let mut pool = BufferPool::new(4, 128).unwrap();
        let (mut tx, mut rx) = Handoff::channel(8, 128);
        for port in [1u16, 1, 2] {
            let mut f = pool.alloc().unwrap();
            pool.fill(&mut f, &[port as u8; 64]);
            tx.push(&mut pool, f, port).unwrap();
        }
        tx.flush();
        let mut batch = Batch::new(64);
        assert_eq!(rx.pop_into(&mut pool, &mut batch), Some(1));
        assert_eq!(batch.len(), 2);
        // Exhaust the pool: the next packet must stay in the ring, not vanish.
        let hold: Vec<Frame> = std::iter::from_fn(|| pool.alloc()).collect();
        let mut b2 = Batch::new(64);
        assert_eq!(rx.pop_into(&mut pool, &mut b2), Some(2));
        assert_eq!(b2.len(), 0);
        assert_eq!(rx.ready(), 1);
        for f in hold.into_iter().chain(batch.drain()) {
            pool.free(f);
        }
        assert_eq!(rx.pop_into(&mut pool, &mut b2), Some(2));
        assert_eq!(b2.len(), 1);
        for f in b2.drain() {
            pool.free(f);
        }
        assert_eq!(pool.available(), 4);
    }
}
