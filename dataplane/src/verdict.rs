//! What switching logic decides for a packet, and why packets are dropped.

/// Index of a port among a worker's ports (its position in the worker's port list).
pub type PortId = u16;

/// The decision for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send out of this port.
    Forward(PortId),
    /// Send out of every port except the one it came in on.
    Broadcast,
    /// Discard, counted under the reason.
    Drop(DropReason),
    /// Hand to the host's network stack.
    ToKernel,
}

/// Why a packet was dropped. Each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// A header was short or inconsistent (bad lengths, bad IPv4 header checksum...).
    Malformed = 0,
    /// Logic that routes on IP received something that is not IPv4 or IPv6.
    NotIp,
    /// TTL or hop limit reached zero.
    TtlExpired,
    /// No route or no port matched the destination.
    NoRoute,
    /// A filter rule denied the packet.
    Filtered,
    /// The packet would leave through the port it arrived on.
    SamePort,
    /// The output port's transmit ring was full.
    TxFull,
    /// The handoff ring to the flow's owner worker was full.
    HandoffFull,
    /// The verdict was "to kernel" but this worker has no path to the host stack.
    NoKernelPath,
    /// No free buffer to copy a broadcast or handed-off packet into.
    PoolExhausted,
}

impl DropReason {
    pub const COUNT: usize = 10;
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Malformed,
        DropReason::NotIp,
        DropReason::TtlExpired,
        DropReason::NoRoute,
        DropReason::Filtered,
        DropReason::SamePort,
        DropReason::TxFull,
        DropReason::HandoffFull,
        DropReason::NoKernelPath,
        DropReason::PoolExhausted,
    ];

    /// Stable snake_case name used in tables, JSON and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NotIp => "not_ip",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::NoRoute => "no_route",
            DropReason::Filtered => "filtered",
            DropReason::SamePort => "same_port",
            DropReason::TxFull => "tx_full",
            DropReason::HandoffFull => "handoff_full",
            DropReason::NoKernelPath => "no_kernel_path",
            DropReason::PoolExhausted => "pool_exhausted",
        }
    }

    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{}", r.name());
        }
    }
}
