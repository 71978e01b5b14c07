//! Rust mirrors of `bpf/steer.h`. Every struct is `#[repr(C)]` with its size asserted at compile
//! time against the C layout, and implements `aya::Pod` so it can be a map key or value.
//!
//! `Pod` is an unsafe trait: implementing it promises the type is plain bytes with no padding
//! that could leak or differ between user space and the kernel. Each struct below spells its
//! padding out as fields, which is what the `SAFETY` comments rely on.
#![allow(unsafe_code)]

pub const MAX_RULES: u32 = 64;
pub const MAX_QUEUES: u32 = 64;
pub const MAX_FLOWS: u32 = 65536;
pub const MAX_PORTS: u32 = 64;

/// `enum steer_action`: what the program did, and the index of its counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Action {
    /// To the AF_XDP socket of the RX queue.
    Xsk = 0,
    /// To the kernel stack.
    Pass = 1,
    /// Dropped by a rule.
    Drop = 2,
    /// Max mode: rewritten and redirected inside the kernel.
    Fastpath = 3,
    /// Wanted AF_XDP but no socket is bound on the queue: passed to the kernel.
    NoXsk = 4,
    /// Max mode: TTL would reach zero; handed on to the rules instead.
    Expired = 5,
}

impl Action {
    pub const COUNT: usize = 6;
    pub const ALL: [Action; Action::COUNT] = [
        Action::Xsk,
        Action::Pass,
        Action::Drop,
        Action::Fastpath,
        Action::NoXsk,
        Action::Expired,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Action::Xsk => "xsk",
            Action::Pass => "pass",
            Action::Drop => "drop",
            Action::Fastpath => "fastpath",
            Action::NoXsk => "no_xsk",
            Action::Expired => "expired",
        }
    }
}

pub const F_NEIGH_TO_KERNEL: u32 = 1 << 0;
pub const F_FASTPATH: u32 = 1 << 1;

/// `struct steer_config`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Config {
    pub nrules: u32,
    pub default_action: u32,
    pub flags: u32,
    pub generation: u32,
}

/// `struct steer_rule`: first match wins; zero fields match anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Rule {
    /// 0 any, 4 or 6.
    pub family: u8,
    /// 0 any, else the IP protocol number.
    pub proto: u8,
    /// Destination prefix length; 0 matches any address.
    pub prefix_len: u8,
    /// `Action::Xsk`, `Pass` or `Drop`, as u8.
    pub action: u8,
    pub dport_lo: u16,
    pub dport_hi: u16,
    pub sport_lo: u16,
    pub sport_hi: u16,
    /// Destination prefix; IPv4 in the first four bytes.
    pub dst: [u8; 16],
}

/// `struct steer_counter`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// `struct flow_key`: addresses as on the wire (IPv4 in the first four bytes), ports in
/// network byte order as read from the packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub family: u8,
    pub pad: u16,
}

/// `struct flow_entry`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FlowEntry {
    /// Egress port: the `tx_ports` slot set by `Steering::set_tx_port`.
    pub port: u32,
    pub generation: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub dec_ttl: u8,
    pub pad: [u8; 3],
    /// Counted by the program without atomics (exact while the flow arrives on one CPU);
    /// aging watches it change.
    pub packets: u64,
    pub bytes: u64,
}

/// `struct gen_stamp`: written by the generator right after the UDP header of every frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GenStamp {
    /// Bits 56..63: stream (the sender's id); bits 0..55: per-flow sequence number.
    pub seq: u64,
    /// `CLOCK_MONOTONIC` nanoseconds when the frame was sent.
    pub tx_ns: u64,
}

impl GenStamp {
    pub const LEN: usize = size_of::<GenStamp>();
    pub const STREAM_SHIFT: u32 = 56;

    /// Reads a stamp from the first `LEN` bytes of `bytes`.
    pub fn read(bytes: &[u8]) -> Option<GenStamp> {
        let b = bytes.get(..Self::LEN)?;
        Some(GenStamp {
            seq: u64::from_le_bytes(b[..8].try_into().ok()?),
            tx_ns: u64::from_le_bytes(b[8..].try_into().ok()?),
        })
    }

    pub fn stream(&self) -> u8 {
        (self.seq >> Self::STREAM_SHIFT) as u8
    }

    pub fn sequence(&self) -> u64 {
        self.seq & ((1 << Self::STREAM_SHIFT) - 1)
    }
}

/// `struct gen_config`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GenConfig {
    pub nflows: u32,
    pub stamp_off: u32,
    pub l4_off: u32,
    /// One's-complement sum (16 bits, raw memory words) of the UDP pseudo-header and datagram
    /// with source port, checksum and stamp zeroed.
    pub base_sum: u32,
    pub base_sport: u16,
    /// This sender's stream id, written into every stamp (distinct per run and thread).
    pub stream: u8,
    pub pad: u8,
    /// 0, or `l4_off` (34 for IPv4, 54 for IPv6): every frame's first `hdr_len` bytes are
    /// rewritten from `hdr` (see [`GenConfig::set_headers`]).
    pub hdr_len: u32,
    /// Pacing: at least this many ns between frames; 0 = as fast as possible.
    pub gap_ns: u64,
    /// Send at most this many frames in all (later iterations drop, uncounted).
    pub limit: u64,
    /// How far behind its schedule the sender may catch up, in ns: bounds bursts.
    pub max_lag_ns: u64,
    /// Ethernet + IP headers of the template, as bytes (u64s only so `Default` derives).
    pub hdr: [u64; 8],
}

impl GenConfig {
    /// Makes the program restore `frame`'s Ethernet and IP headers (its first `l4_off`
    /// bytes) in every frame it sends: live-frames pages are recycled without a reset, and a
    /// receiver on the same host may rewrite them in place (MACs, TTL) before they come back.
    pub fn set_headers(&mut self, frame: &[u8]) {
        let n = self.l4_off as usize;
        assert!(
            (n == 34 || n == 54) && frame.len() >= n,
            "headers of 34 (IPv4) or 54 (IPv6) bytes"
        );
        let mut bytes = [0u8; 64];
        bytes[..n].copy_from_slice(&frame[..n]);
        for (w, c) in self.hdr.iter_mut().zip(bytes.chunks_exact(8)) {
            *w = u64::from_ne_bytes(c.try_into().expect("8 bytes"));
        }
        self.hdr_len = n as u32;
    }
}

/// uapi `struct xdp_md`, the context of `BPF_PROG_TEST_RUN` for XDP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct XdpMd {
    pub data: u32,
    pub data_end: u32,
    pub data_meta: u32,
    pub ingress_ifindex: u32,
    pub rx_queue_index: u32,
    pub egress_ifindex: u32,
}

const _: () = assert!(size_of::<Config>() == 16);
const _: () = assert!(size_of::<Rule>() == 28);
const _: () = assert!(size_of::<Counter>() == 16);
const _: () = assert!(size_of::<FlowKey>() == 40);
const _: () = assert!(size_of::<FlowEntry>() == 40);
const _: () = assert!(size_of::<XdpMd>() == 24);
const _: () = assert!(size_of::<GenStamp>() == 16);
const _: () = assert!(size_of::<GenConfig>() == 112);

// SAFETY (all eight): #[repr(C)] structs of integers and byte arrays whose sizes (asserted above)
// equal the sum of their fields, so there are no implicit padding bytes; every bit pattern is a
// valid value.
unsafe impl aya::Pod for Config {}
// SAFETY: see above.
unsafe impl aya::Pod for Rule {}
// SAFETY: see above.
unsafe impl aya::Pod for Counter {}
// SAFETY: see above.
unsafe impl aya::Pod for FlowKey {}
// SAFETY: see above.
unsafe impl aya::Pod for FlowEntry {}
// SAFETY: see above.
unsafe impl aya::Pod for XdpMd {}
// SAFETY: see above.
unsafe impl aya::Pod for GenStamp {}
// SAFETY: see above.
unsafe impl aya::Pod for GenConfig {}

impl XdpMd {
    /// The context bytes for `TestRunOptions::ctx_in`.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `XdpMd` is Pod (no padding, asserted size), so viewing it as its
        // `size_of` bytes reads only initialised memory; the slice borrows `self`.
        unsafe {
            std::slice::from_raw_parts((self as *const XdpMd).cast::<u8>(), size_of::<XdpMd>())
        }
    }
}
