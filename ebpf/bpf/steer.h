/* Shared between steer.bpf.c and its Rust mirror (ebpf/src/abi.rs): constants, the rule,
 * config, counter and flow-cache layouts. Every struct has a fixed size that the Rust side
 * asserts; change both together. */
#ifndef LINERATE_STEER_H
#define LINERATE_STEER_H

#include <linux/types.h>

#define STEER_MAX_RULES 64
#define STEER_MAX_QUEUES 64
#define STEER_MAX_FLOWS 65536
#define STEER_MAX_PORTS 64

/* What the program does with a packet. Also the index of its counter. */
enum steer_action {
	STEER_XSK = 0,      /* to the AF_XDP socket bound to the RX queue */
	STEER_PASS = 1,     /* to the kernel stack */
	STEER_DROP = 2,     /* dropped by a rule */
	STEER_FASTPATH = 3, /* max mode: rewritten and redirected in the kernel */
	STEER_NO_XSK = 4,   /* wanted AF_XDP but no socket on this queue: passed to the kernel */
	STEER_EXPIRED = 5,  /* max mode: TTL would reach zero, handed to user space instead */
	STEER_COUNTERS = 6,
};

/* config.flags */
#define STEER_F_NEIGH_TO_KERNEL (1u << 0) /* ARP and IPv6 neighbour discovery pass */
#define STEER_F_FASTPATH (1u << 1)        /* consult the flow cache */

struct steer_config {
	__u32 nrules;         /* rules[0..nrules) are live */
	__u32 default_action; /* enum steer_action for packets no rule matches */
	__u32 flags;
	__u32 generation;     /* flow entries of an older generation are stale */
};

/* First-match rule; zero fields match anything. Ports are host order, inclusive ranges. */
struct steer_rule {
	__u8 family;     /* 0 any, 4, 6 */
	__u8 proto;      /* 0 any, else IP protocol number */
	__u8 prefix_len; /* destination prefix length; 0 matches any address */
	__u8 action;     /* enum steer_action (XSK, PASS or DROP) */
	__u16 dport_lo;
	__u16 dport_hi;
	__u16 sport_lo;
	__u16 sport_hi;
	__u8 dst[16];    /* IPv4 in the first four bytes */
};

struct steer_counter {
	__u64 packets;
	__u64 bytes;
};

/* Flow cache key: addresses as on the wire (IPv4 in the first four bytes), ports in network
 * order as read from the packet. */
struct flow_key {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

struct flow_entry {
	__u32 port;      /* egress port: index into tx_ports */
	__u32 generation;
	__u8 dst_mac[6];
	__u8 src_mac[6];
	__u8 dec_ttl;    /* decrement TTL / hop limit (routed flows) */
	__u8 pad[3];
	/* Updated by the program without atomics: exact while a flow arrives on one CPU (RSS),
	 * approximate otherwise. User space ages a flow out when its count stops changing. */
	__u64 packets;
	__u64 bytes;
};

#endif
