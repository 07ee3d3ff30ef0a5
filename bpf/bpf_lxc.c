//go:build ignore
// The line above keeps the go tool from treating this as cgo source.

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* bpf_lxc: the per-endpoint datapath.
 *
 * from_container runs at tc ingress of the host-side veth and sees every
 * packet the container sends; to_container runs at tc egress of the same
 * veth and sees what the host stack sends to the container. handle_policy
 * is never attached: it sits in ebpfnet_policy_calls under the endpoint's
 * epid, and a local sender's from_container tail-calls into it on a flow's
 * first packet, so the receiver checks its own ingress policy with its own
 * constants and map; later packets of the flow the sender redirects into
 * the receiver itself (deliver_established).
 * One object is compiled once; each endpoint gets a copy with the constants
 * of lib/config.h patched in.
 *
 * Policy meets only the first packet of a flow (lib/conntrack.h). The
 * endpoint's identity and enforcement flags are read from its
 * ebpfnet_endpoints entry on every new flow, so the daemon changes them with
 * one map write; remote identities come from the peer's entry for local
 * delivery and from ebpfnet_ipcache for everything else.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <linux/if_packet.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "lib/config.h"
#include "lib/global.h"
#include "lib/eth.h"
#include "lib/arp.h"
#include "lib/maps.h"
#include "lib/drop.h"
#include "lib/ipv4.h"
#include "lib/ipcache.h"
#include "lib/conntrack.h"
#include "lib/policy.h"

/* arp_answer answers the container's ARP requests for any address but its
 * own: a container of the same network is at its own MAC, so packets to it
 * arrive addressed to the receiver already and local delivery rewrites
 * nothing (a write would copy every cloned TCP packet); everything else, the
 * gateway first, is at NODE_MAC, the host veth. Every answer comes from
 * here, and every packet still goes through this program. ARP that claims
 * someone else's MAC or IP is spoofing.
 *
 * It turns a request into its reply in place and returns ARP_ANSWERED,
 * returns ARP_PASS for what the host may see (gratuitous ARP, replies), or
 * the DROP_* reason, with f's addresses filled in for the report. Global
 * (lib/global.h): the reply is written byte by byte (the header is packed),
 * and inlined that would be verified once per path into it, for every
 * endpoint. */
#define ARP_ANSWERED 0
#define ARP_PASS 1

__global_func int arp_answer(struct __sk_buff *skb, struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct arp_eth_ipv4 *arp = data + sizeof(*eth);
	struct endpoint_info *peer;
	__u8 mac[MAC_LEN];
	__be32 target;

	if (!f)
		return DROP_INVALID;
	if ((void *)(arp + 1) > data_end)
		return DROP_INVALID;
	f->saddr = arp_ip(arp->spa);
	f->daddr = target = arp_ip(arp->tpa);
	if (!arp_is_eth_ipv4(arp))
		return DROP_INVALID_ARP;
	if (!mac_eq(eth->h_source, LXC_MAC) || !mac_eq(arp->sha, LXC_MAC))
		return DROP_INVALID_SMAC;
	if (f->saddr != LXC_IPV4)
		return DROP_INVALID_SIP;
	if (arp->op != bpf_htons(ARP_OP_REQUEST) || target == LXC_IPV4)
		return ARP_PASS;

	peer = bpf_map_lookup_elem(&ebpfnet_endpoints, &target);
	if (peer && peer->network_id == NETWORK_ID)
		__builtin_memcpy(mac, peer->lxc_mac, MAC_LEN);
	else
		mac_copy(mac, NODE_MAC);
	arp_make_reply(eth, arp, mac);
	return ARP_ANSWERED;
}

static __always_inline int handle_arp(struct __sk_buff *skb)
{
	struct flow f = {};
	int r = arp_answer(skb, &f);

	if (r == ARP_ANSWERED) {
		count(REASON_ARP_REPLY, METRIC_EGRESS, skb->len);
		/* Out of the same veth: its peer is the container. */
		return bpf_redirect(skb->ifindex, 0);
	}
	if (r == ARP_PASS) {
		/* Gratuitous ARP and replies: harmless, let the host see them. */
		count(REASON_TO_STACK, METRIC_EGRESS, skb->len);
		return TC_ACT_OK;
	}
	return drop(skb, r, METRIC_EGRESS, &f);
}

/* skb->cb slots through which the sender hands the receiver's
 * handle_policy its identity and its conntrack verdict; cb survives the tail
 * call, and the sender always writes both. The identity is 0 (unknown) on
 * an established flow, where nothing reads it. */
#define CB_SRC_IDENTITY 0
#define CB_CT_STATE 1

/* deliver_local tail-calls into the receiver's handle_policy, which checks
 * the receiver's ingress policy on a new flow and redirects into its
 * namespace. The sender's egress check is done; the packet was parsed
 * (flow_parse_ipv4), and handle_policy checks the headers it reads. */
static __always_inline int deliver_local(struct __sk_buff *skb,
					 const struct endpoint_info *peer,
					 const struct self_info *self,
					 const struct flow *f, int ct)
{
	skb->cb[CB_SRC_IDENTITY] = self->identity;
	skb->cb[CB_CT_STATE] = ct;
	bpf_tail_call(skb, &ebpfnet_policy_calls, peer->epid);
	/* Only reached when the receiver has no program in the array: it is
	 * being created or deleted. Without its policy check nothing may pass. */
	return drop(skb, DROP_MISSED_TAIL_CALL, METRIC_EGRESS, f);
}

/* deliver_established hands a packet of an established flow to a local
 * peer directly: the receiver's handle_policy would only put its MAC right,
 * count and redirect, which its ebpfnet_endpoints entry lets the sender do
 * as well, without the tail call. The flow met the receiver's ingress
 * policy on its first packet, in handle_policy. */
static __always_inline int deliver_established(struct __sk_buff *skb,
					       const struct endpoint_info *peer,
					       const struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return drop(skb, DROP_INVALID, METRIC_EGRESS, f);
	/* As in handle_policy: only a stale ARP entry needs the write. */
	if (!mac_eq(eth->h_dest, peer->lxc_mac))
		mac_copy(eth->h_dest, peer->lxc_mac);
	count(REASON_FORWARDED, METRIC_INGRESS, skb->len);
	return bpf_redirect_peer(peer->ifindex, 0);
}

/* handle_ipv4 checks the container's own packets (source MAC and IP), then
 * this endpoint's egress policy on a new flow, with the remote identity of
 * a local peer from its ebpfnet_endpoints entry and of anything else (the
 * gateway, the host, the outside) from the ipcache. Local peers get a new
 * flow's packet by tail call into their handle_policy, an established one's
 * straight from here; the rest goes to the host
 * stack, where the flow is recorded now, as nothing on our side checks it
 * again. */
static __always_inline int handle_ipv4(struct __sk_buff *skb)
{
	void *data, *data_end;
	struct ethhdr *eth;
	struct endpoint_info *peer;
	struct self_info self;
	struct flow f = {};
	__be32 daddr;
	int ct;

	if (flow_parse_ipv4(skb, &f))
		return drop(skb, DROP_INVALID, METRIC_EGRESS, &f);

	/* No packet pointer survives a call (lib/global.h); re-derive. */
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
	if (peer && peer->network_id != NETWORK_ID) {
		endpoint_self(&self);
		f.src_identity = self.identity;
		return drop(skb, DROP_NOT_SAME_NETWORK, METRIC_EGRESS, &f);
	}

	/* An established flow needs neither identity: only a new one reads
	 * this endpoint's entry and the remote's. */
	self.identity = 0;
	ct = ct_lookup(&f);
	if (ct == CT_NEW) {
		endpoint_self(&self);
		f.src_identity = self.identity;
		f.dst_identity = peer ? peer->identity : ipcache_identity(daddr);
		if (!policy_check(skb, &f, self.flags, POLICY_EGRESS))
			return drop(skb, DROP_POLICY, METRIC_EGRESS, &f);
	}
	if (peer && ct == CT_NEW)
		return deliver_local(skb, peer, &self, &f, ct);
	if (peer)
		return deliver_established(skb, peer, &f);
	if (ct == CT_NEW)
		ct_create(&f);
	/* A container that still holds the MAC of a peer that has gone sends
	 * to it; the host only takes frames addressed to NODE_MAC. */
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return drop(skb, DROP_INVALID, METRIC_EGRESS, &f);
	if (!mac_eq(eth->h_dest, NODE_MAC)) {
		mac_copy(eth->h_dest, NODE_MAC);
		/* The veth classified the frame before we ran: not for us. */
		bpf_skb_change_type(skb, PACKET_HOST);
	}
	count(REASON_TO_STACK, METRIC_EGRESS, skb->len);
	return TC_ACT_OK;
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

/* handle_policy runs as the receiving endpoint, by tail call from a local
 * sender's from_container that has already checked its egress policy and
 * the network. On a new flow it checks this endpoint's ingress policy
 * against the sender's identity and records the flow; then it delivers into
 * the container. */
SEC("tc")
int handle_policy(struct __sk_buff *skb)
{
	void *data, *data_end;
	struct ethhdr *eth;
	struct iphdr *iph;
	struct endpoint_info *self;
	struct flow f = {
		.src_identity = skb->cb[CB_SRC_IDENTITY],
	};
	__be32 own = LXC_IPV4;
	__u32 ifindex;

	/* Its own entry says where the container is (the host veth that
	 * bpf_redirect_peer goes through) and what it is. A sender reaches
	 * this program only through that entry, so without it (or with a
	 * successor's) the endpoint is being created or deleted. */
	self = bpf_map_lookup_elem(&ebpfnet_endpoints, &own);
	if (!self || self->epid != LXC_ID)
		return drop(skb, DROP_MISSED_TAIL_CALL, METRIC_INGRESS, &f);
	ifindex = self->ifindex;

	/* The sender parsed this very packet; only a new flow needs the
	 * tuple again, for policy and conntrack. (A sender of an earlier
	 * version, until Restore has replaced it, also comes here with
	 * established flows.) */
	if (skb->cb[CB_CT_STATE] == CT_NEW) {
		if (flow_parse_ipv4(skb, &f))
			return drop(skb, DROP_INVALID, METRIC_INGRESS, &f);
		f.dst_identity = self->identity;
		if (!policy_check(skb, &f, self->flags, POLICY_INGRESS))
			return drop(skb, DROP_POLICY, METRIC_INGRESS, &f);
		ct_create(&f);
	}

	/* No packet pointer survives a call (lib/global.h); derive them now. */
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	iph = data + sizeof(*eth);
	if ((void *)(iph + 1) > data_end)
		return drop(skb, DROP_INVALID, METRIC_INGRESS, &f);
	/* Containers of one network are one L2 segment, as on Docker's bridge:
	 * the frame arrives as the sender built it, TTL untouched. Only a
	 * sender whose ARP entry is older than this endpoint (its address was
	 * reused) needs its destination MAC put right. */
	if (!mac_eq(eth->h_dest, LXC_MAC))
		mac_copy(eth->h_dest, LXC_MAC);

	count(REASON_FORWARDED, METRIC_INGRESS, skb->len);
	return bpf_redirect_peer(ifindex, 0);
}

/* to_container sees what the host stack sends to the container: from the
 * host, the gateway address and, routed by the host, the outside. A new
 * flow meets this endpoint's ingress policy with the source's ipcache
 * identity. Local peers never come this way (handle_policy redirects
 * straight into the container). Policy is IPv4 only: anything else (the
 * program's own ARP replies, IPv6) passes as before. */
SEC("tc")
int to_container(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct self_info self;
	struct flow f = {};

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		goto pass;
	if (flow_parse_ipv4(skb, &f))
		return drop(skb, DROP_INVALID, METRIC_INGRESS, &f);

	if (ct_lookup(&f) == CT_NEW) {
		endpoint_self(&self);
		f.src_identity = ipcache_identity(f.saddr);
		f.dst_identity = self.identity;
		if (!policy_check(skb, &f, self.flags, POLICY_INGRESS))
			return drop(skb, DROP_POLICY, METRIC_INGRESS, &f);
		ct_create(&f);
	}
pass:
	count(REASON_TO_STACK, METRIC_INGRESS, skb->len);
	return TC_ACT_OK;
}

char __license[] SEC("license") = "Dual BSD/GPL";
