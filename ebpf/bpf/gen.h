/* Shared between gen.bpf.c and its Rust mirror (ebpf/src/abi.rs). */
#ifndef LINERATE_GEN_H
#define LINERATE_GEN_H

#include <linux/types.h>

/* Written into every generated frame at gen_config.stamp_off, right after the UDP header:
 * 16 bytes, so a minimum-size (60-byte) IPv4 frame carries it. Both fields little-endian.
 * The flow is the source port minus gen_config.base_sport. */
struct gen_stamp {
	__u64 seq;   /* bits 56..63: stream (gen_config.stream); bits 0..55: per-flow sequence */
	__u64 tx_ns; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) when the frame was sent */
};

#define GEN_STREAM_SHIFT 56
#define GEN_MAX_HDR 64

struct gen_config {
	__u32 nflows;
	__u32 stamp_off;  /* offset of struct gen_stamp in the frame; stamp_off - l4_off even */
	__u32 l4_off;     /* offset of the UDP header */
	__u32 base_sum;   /* one's-complement sum (16 bits, raw memory words) of the UDP
			   * pseudo-header and datagram with source port, checksum and stamp
			   * zeroed: the part of the checksum that never changes */
	__u16 base_sport; /* flow f uses source port base_sport + f (host order) */
	__u8 stream;      /* this sender's stream id (distinct per run and thread) */
	__u8 pad;
	__u32 hdr_len;    /* 0, or l4_off: rewrite the frame's first hdr_len bytes from hdr */
	__u64 gap_ns;     /* pacing: at least this long between frames; 0 = as fast as possible */
	__u64 limit;      /* stop after this many frames (runs past it drop, uncounted) */
	__u64 max_lag_ns; /* how far behind schedule catching up may reach (bounds bursts) */
	/* Ethernet + IP headers of the template. Live-frames pages are recycled without being
	 * reset, and a receiver on the same host (a veth peer forwarding in XDP) may have
	 * rewritten MACs or decremented the TTL in place: every frame starts from these. */
	__u8 hdr[GEN_MAX_HDR];
};

#endif
