// SPDX-License-Identifier: GPL-2.0
/* The emulator's host ports (`linerate up --host-io xdp`): attached to the emulator's end of
 * every host interface's veth pair, it hands each frame to the AF_XDP socket of the interface
 * it arrived on. One program and two maps serve every port: `ports` names the socket slot of
 * an interface (by ifindex), `xsks` holds the sockets. A frame of an interface without a
 * socket is dropped: that end of the pair belongs to the emulator, not to a kernel stack. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

#define EMU_MAX_PORTS 65536

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, EMU_MAX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
} emu_xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EMU_MAX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
} emu_ports SEC(".maps");

SEC("xdp")
int linerate_emu(struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 *slot = bpf_map_lookup_elem(&emu_ports, &ifindex);

	if (!slot)
		return XDP_DROP;
	return bpf_redirect_map(&emu_xsks, *slot, XDP_DROP);
}
