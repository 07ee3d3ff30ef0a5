//go:build ignore
// The line above keeps the go tool from treating this as cgo source.

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* bpf_lxc: the per-endpoint datapath.
 *
 * from_container runs at TCX ingress of the host-side veth and sees every
 * packet the container sends; to_container runs at TCX egress of the same
 * veth and sees what the host stack sends to the container. One object is
 * compiled once; each endpoint gets a copy with the constants of
 * lib/config.h patched in.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "lib/config.h"
#include "lib/eth.h"
#include "lib/arp.h"
#include "lib/maps.h"
#include "lib/drop.h"
#include "lib/ipv4.h"
#include "lib/policy.h"

/* handle_arp answers the container's ARP requests for any address but its
 * own with NODE_MAC: every destination, peer or gateway, is reached through
 * the host veth. ARP that claims someone else's MAC or IP is spoofing. */
static __always_inline int handle_arp(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct arp_eth_ipv4 *arp = data + sizeof(*eth);
	struct flow f = {};

	if ((void *)(arp + 1) > data_end)
		return drop(skb, DROP_INVALID, METRIC_EGRESS, &f);
	f.saddr = arp_ip(arp->spa);
	f.daddr = arp_ip(arp->tpa);
	if (!arp_is_eth_ipv4(arp))
		return drop(skb, DROP_INVALID_ARP, METRIC_EGRESS, &f);
	if (!mac_eq(eth->h_source, LXC_MAC) || !mac_eq(arp->sha, LXC_MAC))
		return drop(skb, DROP_INVALID_SMAC, METRIC_EGRESS, &f);
	if (f.saddr != LXC_IPV4)
		return drop(skb, DROP_INVALID_SIP, METRIC_EGRESS, &f);

	if (arp->op == bpf_htons(ARP_OP_REQUEST) && f.daddr != LXC_IPV4) {
		arp_make_reply(eth, arp);
		count(REASON_ARP_REPLY, METRIC_EGRESS, skb->len);
		/* Out of the same veth: its peer is the container. */
		return bpf_redirect(skb->ifindex, 0);
	}
	/* Gratuitous ARP and replies: harmless, let the host see them. */
	count(REASON_TO_STACK, METRIC_EGRESS, skb->len);
	return TC_ACT_OK;
}

/* deliver_local hands a packet to a peer endpoint on this node, straight
 * into its network namespace, once both policies agree. */
static __always_inline int deliver_local(struct __sk_buff *skb,
					 const struct endpoint_info *peer,
					 struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = data + sizeof(*eth);
	struct endpoint_info *self;
	__be32 own = LXC_IPV4;
	__u32 own_flags = 0;

	self = bpf_map_lookup_elem(&ebpfnet_endpoints, &own);
	if (self)
		own_flags = self->flags;
	if (policy_enforced(own_flags, POLICY_EGRESS) &&
	    !policy_allows(LXC_ID, peer->identity, f->dport, f->proto,
			   POLICY_EGRESS))
		return drop(skb, DROP_POLICY, METRIC_EGRESS, f);
	if (policy_enforced(peer->flags, POLICY_INGRESS) &&
	    !policy_allows(peer->epid, SECLABEL, f->dport, f->proto,
			   POLICY_INGRESS))
		return drop(skb, DROP_POLICY, METRIC_EGRESS, f);

	if ((void *)(iph + 1) > data_end)
		return drop(skb, DROP_INVALID, METRIC_EGRESS, f);
	/* Let the host stack own expiry: it sends the ICMP error. */
	if (iph->ttl <= 1) {
		count(REASON_TO_STACK, METRIC_EGRESS, skb->len);
		return TC_ACT_OK;
	}
	ipv4_dec_ttl(iph);
	/* The peer sees the packet as coming from its own gateway MAC. */
	mac_copy(eth->h_dest, peer->lxc_mac);
	mac_copy(eth->h_source, peer->node_mac);

	count(REASON_FORWARDED, METRIC_EGRESS, skb->len);
	return bpf_redirect_peer(peer->ifindex, 0);
}

static __always_inline int handle_ipv4(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = data + sizeof(*eth);
	struct endpoint_info *peer;
	struct flow f = {};
	__be32 daddr;

	if ((void *)(iph + 1) > data_end || iph->ihl < 5)
		return drop(skb, DROP_INVALID, METRIC_EGRESS, &f);
	f.saddr = iph->saddr;
	f.daddr = iph->daddr;
	f.proto = iph->protocol;
	ipv4_fill_ports(skb, iph, &f);

	/* Pointers may be stale after the helper above; re-derive. */
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return drop(skb, DROP_INVALID, METRIC_EGRESS, &f);
	if (!mac_eq(eth->h_source, LXC_MAC))
		return drop(skb, DROP_INVALID_SMAC, METRIC_EGRESS, &f);
	if (f.saddr != LXC_IPV4)
		return drop(skb, DROP_INVALID_SIP, METRIC_EGRESS, &f);

	daddr = f.daddr;
	peer = bpf_map_lookup_elem(&ebpfnet_endpoints, &daddr);
	if (!peer) {
		/* Gateway, host, other networks' gateways, the outside. */
		count(REASON_TO_STACK, METRIC_EGRESS, skb->len);
		return TC_ACT_OK;
	}
	if (peer->network_id != NETWORK_ID)
		return drop(skb, DROP_NOT_SAME_NETWORK, METRIC_EGRESS, &f);
	return deliver_local(skb, peer, &f);
}

SEC("tc")
int from_container(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct flow f = {};

	if ((void *)(eth + 1) > data_end)
		return drop(skb, DROP_INVALID, METRIC_EGRESS, &f);
	switch (eth->h_proto) {
	case bpf_htons(ETH_P_ARP):
		return handle_arp(skb);
	case bpf_htons(ETH_P_IP):
		return handle_ipv4(skb);
	default:
		return drop(skb, DROP_UNKNOWN_L3, METRIC_EGRESS, &f);
	}
}

SEC("tc")
int to_container(struct __sk_buff *skb)
{
	/* Issue 3: ingress policy for traffic from the host and the world
	 * (identities 1 and 2) goes here, checked against this endpoint's
	 * policy map with POLICY_INGRESS when EP_F_ENFORCE_INGRESS is set.
	 * Until then the host stack's traffic is counted and passed. */
	count(REASON_TO_STACK, METRIC_INGRESS, skb->len);
	return TC_ACT_OK;
}

char __license[] SEC("license") = "Dual BSD/GPL";
