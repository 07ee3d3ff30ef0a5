/* The overlay for IPv6 containers (lib/overlay.h): the same VXLAN device
 * and IPv4 underlay carry their frames, the inner packet being IPv6. The
 * tunnel endpoint of an IPv6 prefix is its node's IPv4 address, in
 * ebpfnet_ipcache6. */
#ifndef EBPFNET_OVERLAY6_H
#define EBPFNET_OVERLAY6_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "maps6.h"
#include "flow.h"
#include "drop.h"
#include "ipcache6.h"
#include "overlay.h"

/* network6_contains tells whether addr lies in the IPv6 subnet of the
 * node's network with index network. */
static __always_inline int network6_contains(__u32 network, const union v6addr *addr)
{
	struct network6_info *n = bpf_map_lookup_elem(&ebpfnet_networks6, &network);

	return n && !v6_is_zero(&n->mask) && v6_in(addr, &n->subnet, &n->mask);
}

/* overlay_candidate6 is overlay_candidate for IPv6: an address of the
 * sender's network but not its gateway; nothing without an overlay. */
static __always_inline int overlay_candidate6(__u32 network, const union v6addr *daddr)
{
	struct network6_info *n;

	if (!OVERLAY_IFINDEX)
		return 0;
	n = bpf_map_lookup_elem(&ebpfnet_networks6, &network);
	return n && !v6_is_zero(&n->mask) && v6_in(daddr, &n->subnet, &n->mask) &&
	       !v6_eq(daddr, &n->gateway);
}

/* overlay_tunnel6 returns the node behind daddr, an address of network,
 * or 0 when it is on this node or nowhere known. */
static __always_inline __be32 overlay_tunnel6(__u32 network, const union v6addr *daddr)
{
	struct ipcache_value *v;

	if (!overlay_candidate6(network, daddr))
		return 0;
	v = ipcache6_lookup(daddr);
	return v ? v->tunnel_endpoint : 0;
}

/* overlay_send6 is overlay_send for an IPv6 packet. */
static __always_inline int overlay_send6(struct __sk_buff *skb, __be32 node,
					 __u32 identity, const struct flow6 *f)
{
	struct bpf_tunnel_key key = {};

	if (!OVERLAY_IFINDEX)
		return drop6(skb, DROP_UNROUTABLE, METRIC_EGRESS, f);
	key.remote_ipv4 = bpf_ntohl(node);
	key.tunnel_id = identity;
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return drop6(skb, DROP_WRITE_ERROR, METRIC_EGRESS, f);
	count(REASON_TO_OVERLAY, METRIC_EGRESS, skb->len);
	return bpf_redirect(OVERLAY_IFINDEX, 0);
}

#endif
