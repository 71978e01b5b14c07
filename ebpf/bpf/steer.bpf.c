// SPDX-License-Identifier: GPL-2.0
/* linerate's XDP steering program.
 *
 * For each received frame: ARP and IPv6 neighbour discovery go to the kernel (so the host stays
 * reachable); in max mode a flow-cache hit is rewritten (MACs, TTL) and redirected out of its
 * egress port through tx_ports without reaching user space; otherwise the first matching rule
 * decides between the AF_XDP socket of this RX queue, the kernel, and drop. Every decision is
 * counted per CPU. Nothing here allocates or loops unboundedly. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/icmpv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "steer.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, STEER_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct steer_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, STEER_MAX_RULES);
	__type(key, __u32);
	__type(value, struct steer_rule);
} rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STEER_COUNTERS);
	__type(key, __u32);
	__type(value, struct steer_counter);
} counters SEC(".maps");

/* Max mode: decided flows. LRU so a full cache evicts the coldest flow, never fails. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, STEER_MAX_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct flow_entry);
} flows SEC(".maps");

/* Egress ports for max mode, by port number (an array: cheaper per packet than a hash). */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, STEER_MAX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
} tx_ports SEC(".maps");

#define VLAN_HLEN 4
#define ETH_P_8021AD_ 0x88A8

struct parsed {
	struct flow_key key;
	void *l3;
	__u16 l3_proto; /* host order */
};

static __always_inline int count(__u32 action, __u64 bytes, int verdict)
{
	struct steer_counter *c = bpf_map_lookup_elem(&counters, &action);

	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
	return verdict;
}

/* Fills p from the frame; returns 0, or -1 for frames we do not look into. */
static __always_inline int parse(void *data, void *end, struct parsed *p)
{
	struct ethhdr *eth = data;
	void *cur = eth + 1;
	__u16 proto;

	if (cur > end)
		return -1;
	proto = bpf_ntohs(eth->h_proto);
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto != ETH_P_8021Q && proto != ETH_P_8021AD_)
			break;
		if (cur + VLAN_HLEN > end)
			return -1;
		proto = bpf_ntohs(*(__be16 *)(cur + 2));
		cur += VLAN_HLEN;
	}
	p->l3 = cur;
	p->l3_proto = proto;
	if (proto == ETH_P_IP) {
		struct iphdr *ip = cur;

		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return -1;
		__builtin_memcpy(p->key.src, &ip->saddr, 4);
		__builtin_memcpy(p->key.dst, &ip->daddr, 4);
		p->key.proto = ip->protocol;
		p->key.family = 4;
		/* Later fragments carry no ports. */
		if (ip->frag_off & bpf_htons(0x1fff))
			return 0;
		cur += ip->ihl * 4;
	} else if (proto == ETH_P_IPV6) {
		struct ipv6hdr *ip6 = cur;

		if ((void *)(ip6 + 1) > end)
			return -1;
		__builtin_memcpy(p->key.src, &ip6->saddr, 16);
		__builtin_memcpy(p->key.dst, &ip6->daddr, 16);
		p->key.proto = ip6->nexthdr;
		p->key.family = 6;
		cur = ip6 + 1;
	} else {
		return 0;
	}
	if (p->key.proto == IPPROTO_TCP || p->key.proto == IPPROTO_UDP) {
		__be16 *ports = cur;

		if ((void *)(ports + 2) > end)
			return -1;
		p->key.sport = ports[0];
		p->key.dport = ports[1];
	}
	return 0;
}

static __always_inline int is_neighbour_discovery(struct parsed *p, void *end)
{
	if (p->l3_proto == ETH_P_ARP)
		return 1;
	if (p->key.family == 6 && p->key.proto == IPPROTO_ICMPV6) {
		struct icmp6hdr *icmp = p->l3 + sizeof(struct ipv6hdr);

		if ((void *)(icmp + 1) > end)
			return 0;
		/* Router/neighbour solicitation/advertisement and redirect: 133..137. */
		return icmp->icmp6_type >= 133 && icmp->icmp6_type <= 137;
	}
	return 0;
}

static __always_inline int prefix_match(const __u8 *rule, const __u8 *addr, __u32 len)
{
#pragma unroll
	for (int i = 0; i < 16; i++) {
		__u32 bits = len > (__u32)i * 8 ? len - i * 8 : 0;
		__u8 mask;

		if (bits == 0)
			break;
		mask = bits >= 8 ? 0xff : (__u8)(0xff << (8 - bits));
		if ((rule[i] ^ addr[i]) & mask)
			return 0;
	}
	return 1;
}

static __always_inline __u32 classify(struct steer_config *cfg, struct parsed *p)
{
	__u16 sport = bpf_ntohs(p->key.sport), dport = bpf_ntohs(p->key.dport);

	for (__u32 i = 0; i < STEER_MAX_RULES; i++) {
		struct steer_rule *r;
		__u32 k = i;

		if (i >= cfg->nrules)
			break;
		r = bpf_map_lookup_elem(&rules, &k);
		if (!r)
			break;
		if (r->family && r->family != p->key.family)
			continue;
		if (r->proto && r->proto != p->key.proto)
			continue;
		if (dport < r->dport_lo || dport > r->dport_hi)
			continue;
		if (sport < r->sport_lo || sport > r->sport_hi)
			continue;
		if (r->prefix_len && !prefix_match(r->dst, p->key.dst, r->prefix_len))
			continue;
		return r->action;
	}
	return cfg->default_action;
}

/* RFC 1624 incremental update of the IPv4 header checksum for a TTL decrement. */
static __always_inline void ipv4_dec_ttl(struct iphdr *ip)
{
	__u32 sum = (__u32)(__u16)~bpf_ntohs(ip->check) + (__u32)(__u16)~0x0100u;

	ip->ttl--;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	ip->check = bpf_htons((__u16)~sum);
}

/* Max mode. Returns the XDP verdict, or -1 when the packet is not for the fast path. */
static __always_inline int fastpath(struct xdp_md *ctx, struct steer_config *cfg,
				    struct parsed *p, void *end, __u64 len)
{
	struct flow_entry *f = bpf_map_lookup_elem(&flows, &p->key);
	struct ethhdr *eth = (void *)(long)ctx->data;

	if (!f)
		return -1;
	if (f->generation != cfg->generation) {
		/* A route changed since this flow was decided: user space decides again. */
		bpf_map_delete_elem(&flows, &p->key);
		return -1;
	}
	if ((void *)(eth + 1) > end)
		return -1;
	if (f->dec_ttl) {
		if (p->key.family == 4) {
			struct iphdr *ip = p->l3;

			if ((void *)(ip + 1) > end)
				return -1;
			if (ip->ttl <= 1)
				return count(STEER_EXPIRED, len, -1);
			ipv4_dec_ttl(ip);
		} else {
			struct ipv6hdr *ip6 = p->l3;

			if ((void *)(ip6 + 1) > end)
				return -1;
			if (ip6->hop_limit <= 1)
				return count(STEER_EXPIRED, len, -1);
			ip6->hop_limit--;
		}
	}
	__builtin_memcpy(eth->h_dest, f->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, f->src_mac, ETH_ALEN);
	f->packets++;
	f->bytes += len;
	return count(STEER_FASTPATH, len, bpf_redirect_map(&tx_ports, f->port, 0));
}

SEC("xdp")
int linerate_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u64 len = end - data;
	struct parsed p = {};
	struct steer_config *cfg;
	__u32 zero = 0, action;

	cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return XDP_PASS;
	if (parse(data, end, &p) < 0)
		/* Too short or malformed to classify: the kernel drops or handles it. */
		return count(STEER_PASS, len, XDP_PASS);
	if ((cfg->flags & STEER_F_NEIGH_TO_KERNEL) && is_neighbour_discovery(&p, end))
		return count(STEER_PASS, len, XDP_PASS);
	if ((cfg->flags & STEER_F_FASTPATH) && p.key.family) {
		int v = fastpath(ctx, cfg, &p, end, len);

		if (v >= 0)
			return v;
	}
	action = classify(cfg, &p);
	switch (action) {
	case STEER_XSK: {
		/* Falls back to the kernel when no socket is bound to this queue. */
		int v = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);

		return count(v == XDP_REDIRECT ? STEER_XSK : STEER_NO_XSK, len, v);
	}
	case STEER_DROP:
		return count(STEER_DROP, len, XDP_DROP);
	default:
		return count(STEER_PASS, len, XDP_PASS);
	}
}

/* For the peer of a veth that receives XDP_REDIRECT frames: veth delivers redirected frames
 * only to a peer with an XDP program attached. */
SEC("xdp")
int linerate_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
