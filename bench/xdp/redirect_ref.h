/* Shared between redirect_ref.bpf.c and its loader (bench/src/bin/xdp_redirect_ref.rs). */
#ifndef LINERATE_REDIRECT_REF_H
#define LINERATE_REDIRECT_REF_H

#include <linux/types.h>

/* What the program writes into every frame it redirects. The loader stores it as 12 bytes. */
struct redirect_cfg {
	__u8 dst_mac[6]; /* the next hop's MAC (the sink) */
	__u8 src_mac[6]; /* the egress interface's MAC */
};

/* Index of each per-CPU counter. */
enum redirect_counter {
	REDIRECT_OK = 0,   /* handed to the devmap */
	REDIRECT_PASS = 1, /* not for us (too short, ARP): to the kernel */
	REDIRECT_COUNTERS = 2,
};

#endif
