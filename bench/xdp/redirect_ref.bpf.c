// SPDX-License-Identifier: GPL-2.0
/* The forwarding benchmark's XDP_REDIRECT reference: the least an XDP forwarder does. Every
 * Ethernet frame that is not ARP gets the configured MACs and is redirected through a
 * one-entry devmap to the egress interface; ARP and runts go to the kernel. No parsing beyond
 * the Ethernet header, no lookup but the devmap's, so its cost is the floor that linerate's max
 * mode (which also parses and looks up a flow) is measured against. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "redirect_ref.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} tx_port SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct redirect_cfg);
} cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, REDIRECT_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline int count(__u32 which, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);

	if (c)
		(*c)++;
	return verdict;
}

SEC("xdp")
int redirect_ref(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct redirect_cfg *c;
	__u32 zero = 0;

	if ((void *)(eth + 1) > end || eth->h_proto == bpf_htons(ETH_P_ARP))
		return count(REDIRECT_PASS, XDP_PASS);
	c = bpf_map_lookup_elem(&cfg, &zero);
	if (!c)
		return count(REDIRECT_PASS, XDP_PASS);
	__builtin_memcpy(eth->h_dest, c->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, c->src_mac, ETH_ALEN);
	/* XDP_ABORTED (counted by the kernel's xdp_exception tracepoint) if the slot is empty. */
	return count(REDIRECT_OK, bpf_redirect_map(&tx_port, 0, XDP_ABORTED));
}
