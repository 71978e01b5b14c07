// SPDX-License-Identifier: GPL-2.0
/* linerate's kernel-side traffic generator: run with BPF_PROG_RUN in live-frames mode on a
 * prebuilt Ethernet + IP + UDP frame. Each run stamps the frame with its flow, a per-flow
 * sequence number and the send time, moves it to its flow's source port, updates the UDP
 * checksum from a precomputed constant part (constant time, any frame size, IPv4 and IPv6)
 * and sends it out of the interface with XDP_TX. Pacing happens here too: every live-frames
 * call has a large fixed cost, so user space makes long calls and iterations that are ahead
 * of the schedule (or past the frame limit) return XDP_DROP without sending. The kernel recycles pages, so every
 * field we vary is rewritten every time. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "gen.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_config);
} gen_config SEC(".maps");

/* Frames generated so far: flow = n % nflows, seq = n / nflows. Each sender thread loads its
 * own instance of this program, so the counter has one writer at a time; it is a plain
 * array, not per-CPU, so that a thread moving between CPUs keeps one sequence. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} gen_count SEC(".maps");

/* Pacing: when the next frame is due (ktime ns). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} gen_next SEC(".maps");


/* Headers and the stamp sit at the start of the frame; bounding their offsets keeps every
 * packet pointer's range provable to the verifier. */
#define MAX_OFF 256

SEC("xdp")
int linerate_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct gen_config *cfg;
	struct gen_stamp *st;
	struct udphdr *udp;
	__u32 zero = 0, off, l4, sum;
	__u64 *count, *next, n, now;
	__s64 s;

	cfg = bpf_map_lookup_elem(&gen_config, &zero);
	count = bpf_map_lookup_elem(&gen_count, &zero);
	next = bpf_map_lookup_elem(&gen_next, &zero);
	if (!cfg || !count || !next || cfg->nflows == 0)
		return XDP_ABORTED;
	/* Past the limit, or ahead of the schedule: this iteration sends nothing. */
	if (*count >= cfg->limit)
		return XDP_DROP;
	now = bpf_ktime_get_ns();
	if (cfg->gap_ns) {
		/* Catching up after a pause (between calls) is capped, so it never turns into a
		 * burst that overflows a receiver; user space corrects the average rate instead. */
		__u64 floor = now > cfg->max_lag_ns ? now - cfg->max_lag_ns : 0;

		if (*next > now)
			return XDP_DROP;
		*next = (*next > floor ? *next : floor) + cfg->gap_ns;
	}
	off = cfg->stamp_off;
	l4 = cfg->l4_off;
	if (off > MAX_OFF || l4 > MAX_OFF)
		return XDP_ABORTED;
	st = data + off;
	udp = data + l4;
	if ((void *)(st + 1) > end || (void *)(udp + 1) > end)
		return XDP_ABORTED;

	/* Constant-size copies: the two header layouts the generator builds. */
	if (cfg->hdr_len == 34) {
		if (data + 34 > end)
			return XDP_ABORTED;
		__builtin_memcpy(data, cfg->hdr, 34);
	} else if (cfg->hdr_len == 54) {
		if (data + 54 > end)
			return XDP_ABORTED;
		__builtin_memcpy(data, cfg->hdr, 54);
	} else if (cfg->hdr_len) {
		return XDP_ABORTED;
	}

	n = __sync_fetch_and_add(count, 1);
	st->seq = (__u64)cfg->stream << GEN_STREAM_SHIFT | n / cfg->nflows;
	st->tx_ns = now;
	udp->source = bpf_htons(cfg->base_sport + n % cfg->nflows);

	/* The checksum is the template's constant part plus what we just wrote, summed as raw
	 * memory words (the one's-complement sum does not care about byte order). */
	s = bpf_csum_diff(0, 0, (__be32 *)st, sizeof(*st), cfg->base_sum + udp->source);
	if (s < 0)
		return XDP_ABORTED;
	sum = (__u32)s;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	/* 0 means "no checksum" over IPv4 and is invalid over IPv6: send all ones instead. */
	udp->check = (__u16)~sum ? (__u16)~sum : 0xffff;
	return XDP_TX;
}
