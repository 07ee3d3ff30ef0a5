/* The overlay: containers of one network on different nodes talk through
 * one VXLAN device per node in collect_md mode. A packet for an endpoint
 * or address block of another node (an ipcache entry with a tunnel
 * endpoint) leaves through it with the tunnel key set here: that node's
 * IP as the destination, and the sender's security identity as the VNI,
 * as Cilium's tunnel mode carries it. node_from_overlay (bpf_node.c)
 * reads the identity back on the receiving node and judges the packet by
 * the receiver's ingress policy. Only the node programs include this. */
#ifndef EBPFNET_OVERLAY_H
#define EBPFNET_OVERLAY_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "maps.h"
#include "flow.h"
#include "drop.h"
#include "ipcache.h"

/* The node's VXLAN device, which the daemon sets when it loads the node
 * programs; 0 on a node without a cluster, where no ipcache entry has a
 * tunnel endpoint either. */
volatile const __u32 OVERLAY_IFINDEX = 0;

/* network_contains tells whether addr lies in the subnet of the node's
 * network with index network. Traffic between nodes stays within one
 * network: its subnet is the same on every node. */
static __always_inline int network_contains(__u32 network, __be32 addr)
{
	struct network_info *n = bpf_map_lookup_elem(&ebpfnet_networks, &network);

	return n && n->mask && (addr & n->mask) == n->subnet;
}

/* overlay_candidate tells whether daddr may live on another node: an
 * address of the sender's own network but not its gateway (the host).
 * Without an overlay nothing does, and the verifier, which knows the frozen
 * OVERLAY_IFINDEX, drops the rest of the check from a single node's
 * programs. */
static __always_inline int overlay_candidate(__u32 network, __be32 daddr)
{
	struct network_info *n;

	if (!OVERLAY_IFINDEX)
		return 0;
	n = bpf_map_lookup_elem(&ebpfnet_networks, &network);
	return n && n->mask && (daddr & n->mask) == n->subnet && daddr != n->gateway;
}

/* overlay_tunnel returns the node behind daddr, an address of network,
 * or 0 when it is on this node or nowhere known. */
static __always_inline __be32 overlay_tunnel(__u32 network, __be32 daddr)
{
	struct ipcache_value *v;

	if (!overlay_candidate(network, daddr))
		return 0;
	v = ipcache_lookup(daddr);
	return v ? v->tunnel_endpoint : 0;
}

/* overlay_send hands a container's packet to the node at node (an IPv4
 * address, network order) with identity in the VNI, and returns the
 * redirect's verdict; it drops what cannot be sent. */
static __always_inline int overlay_send(struct __sk_buff *skb, __be32 node,
					__u32 identity, const struct flow *f)
{
	struct bpf_tunnel_key key = {};

	if (!OVERLAY_IFINDEX)
		return drop(skb, DROP_UNROUTABLE, METRIC_EGRESS, f);
	key.remote_ipv4 = bpf_ntohl(node);
	key.tunnel_id = identity;
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return drop(skb, DROP_WRITE_ERROR, METRIC_EGRESS, f);
	count(REASON_TO_OVERLAY, METRIC_EGRESS, skb->len);
	return bpf_redirect(OVERLAY_IFINDEX, 0);
}

#endif
