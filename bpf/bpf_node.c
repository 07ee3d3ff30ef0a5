//go:build ignore
// The line above keeps the go tool from treating this as cgo source.

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* bpf_node: the datapath every endpoint shares, loaded once per daemon
 * start into ebpfnet_calls (lib/maps.h).
 *
 * An endpoint's from_container and to_container (bpf_lxc.c) tail-call into
 * node_from_container and node_to_container with the endpoint's constants
 * in skb->cb (lib/cb.h). On a flow's first packet, policy takes two more
 * tail calls per direction: into the policy owner's handle_policy, which
 * looks the flow up in its own map, and back into node_policy_verdict,
 * which reports the verdict and carries the packet on. Local delivery
 * checks the sender's egress and then the receiver's ingress policy that
 * way before the packet goes straight into the receiver
 * (bpf_redirect_peer). Later packets of the flow meet conntrack only
 * (lib/conntrack.h).
 *
 * The endpoint's identity and enforcement flags are read from its
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

#include "lib/global.h"
#include "lib/eth.h"
#include "lib/arp.h"
#include "lib/maps.h"
#include "lib/cb.h"
#include "lib/drop.h"
#include "lib/ipv4.h"
#include "lib/ipcache.h"
#include "lib/frag.h"
#include "lib/conntrack.h"
#include "lib/verdict.h"
#include "lib/overlay.h"
#include "lib/maps6.h"
#include "lib/ipv6.h"
#include "lib/ipcache6.h"
#include "lib/frag6.h"
#include "lib/conntrack6.h"
#include "lib/verdict6.h"
#include "lib/overlay6.h"
#include "lib/ndp.h"
#include "lib/abi.h"

/* arp_answer answers the container's ARP requests for any address but its
 * own: a container of the same network is at its own MAC, so packets to it
 * arrive addressed to the receiver already and local delivery rewrites
 * nothing (a write would copy every cloned TCP packet); everything else, the
 * gateway first, is at the node MAC, the host veth's. Every answer comes
 * from here, and every packet still goes through this program. ARP that
 * claims someone else's MAC or IP is spoofing.
 *
 * It turns a request into its reply in place and returns ARP_ANSWERED,
 * returns ARP_PASS for what the host may see (gratuitous ARP, replies), or
 * the DROP_* reason, with f's addresses filled in for the report. Global
 * (lib/global.h): the reply is written byte by byte (the header is
 * packed). */
#define ARP_ANSWERED 0
#define ARP_PASS 1

__global_func int arp_answer(struct __sk_buff *skb, const struct lxc_self *me,
			     struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct arp_eth_ipv4 *arp = data + sizeof(*eth);
	struct endpoint_info *peer;
	__u8 mac[MAC_LEN];
	__be32 target;

	if (!f || !me)
		return DROP_INVALID;
	if ((void *)(arp + 1) > data_end)
		return DROP_INVALID;
	f->saddr = arp_ip(arp->spa);
	f->daddr = target = arp_ip(arp->tpa);
	if (!arp_is_eth_ipv4(arp))
		return DROP_INVALID_ARP;
	if (!mac_eq(eth->h_source, me->lxc_mac) || !mac_eq(arp->sha, me->lxc_mac))
		return DROP_INVALID_SMAC;
	/* An endpoint without IPv4 (0) has no ARP to speak either. */
	if (f->saddr != me->ipv4 || !me->ipv4)
		return DROP_INVALID_SIP;
	if (arp->op != bpf_htons(ARP_OP_REQUEST) || target == me->ipv4)
		return ARP_PASS;

	peer = bpf_map_lookup_elem(&ebpfnet_endpoints, &target);
	if (peer && peer->network_id == cb_network(me->epid_net))
		__builtin_memcpy(mac, peer->lxc_mac, MAC_LEN);
	else
		__builtin_memcpy(mac, me->node_mac, MAC_LEN);
	arp_make_reply(eth, arp, mac);
	return ARP_ANSWERED;
}

static __always_inline int handle_arp(struct __sk_buff *skb,
				      const struct lxc_self *me)
{
	struct flow f = {};
	int r = arp_answer(skb, me, &f);

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

/* ask_policy hands a new flow to the policy owner's handle_policy (which
 * returns through node_policy_verdict), or, when the owner does not
 * enforce dir, straight to node_policy_verdict. The owner and the rest of
 * the policy words (lib/cb.h) are the caller's to write first. */
static __always_inline int ask_policy(struct __sk_buff *skb, __u32 owner_epid,
				      __u32 flags, __u32 dir,
				      const struct flow *f)
{
	__u32 mdir = dir == POLICY_EGRESS ? METRIC_EGRESS : METRIC_INGRESS;

	if (policy_enforced(flags, dir)) {
		skb->cb[CB_LOOKUP] = CALL_POLICY_VERDICT;
		bpf_tail_call(skb, &ebpfnet_policy_lookups, owner_epid);
		/* The owner has no program in the array: it is being
		 * created or deleted. Without its policy nothing passes. */
		return drop(skb, DROP_MISSED_TAIL_CALL, mdir, f);
	}
	skb->cb[CB_LOOKUP] = LOOKUP_SKIPPED;
	bpf_tail_call(skb, &ebpfnet_calls, CALL_POLICY_VERDICT);
	return drop(skb, DROP_MISSED_TAIL_CALL, mdir, f);
}

/* deliver_local puts a packet straight into a local peer's container,
 * once the flow has met the peer's ingress policy (on its first packet). */
static __always_inline int deliver_local(struct __sk_buff *skb,
					 const struct endpoint_info *peer,
					 const struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return drop(skb, DROP_INVALID, METRIC_INGRESS, f);
	/* Containers of one network are one L2 segment, as on Docker's
	 * bridge: the frame arrives as the sender built it, TTL untouched.
	 * Only a sender whose ARP entry is older than the receiver (its
	 * address was reused) needs the destination MAC put right. */
	if (!mac_eq(eth->h_dest, peer->lxc_mac))
		mac_copy(eth->h_dest, peer->lxc_mac);
	count(REASON_FORWARDED, METRIC_INGRESS, skb->len);
	return bpf_redirect_peer(peer->ifindex, 0);
}

/* handle_ipv4 checks the container's own packets (source MAC and IP) and
 * the network of a local peer. An established flow goes on at once: to the
 * peer, to another node through the overlay, or to the host stack. A new
 * one meets this endpoint's egress policy, with the remote identity of a
 * local peer from its ebpfnet_endpoints entry and of anything else (another
 * node's endpoint, the gateway, the host, the outside) from the ipcache,
 * then node_policy_verdict carries it on. Only an address of the sender's
 * own subnet is looked for on other nodes: a network's subnet is the same
 * everywhere, so nothing crosses between networks that way. A packet for
 * the host stack is addressed to the node MAC first: a container that
 * still holds the MAC of a peer that has gone sends to it, and the host
 * only takes frames addressed to the veth. */
static __always_inline int handle_ipv4(struct __sk_buff *skb,
				       const struct lxc_self *me)
{
	void *data, *data_end;
	struct ethhdr *eth;
	struct endpoint_info *peer;
	struct ipcache_value *remote = 0;
	struct self_info self;
	struct flow f = {};
	__u32 epid = cb_epid(me->epid_net);
	__u32 net = cb_network(me->epid_net);
	__u32 peer_epid;
	__be32 daddr, tunnel = 0;

	if (flow_parse_ipv4(skb, &f))
		return drop(skb, DROP_INVALID, METRIC_EGRESS, &f);

	/* The source checks need the Ethernet header too. */
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return drop(skb, DROP_INVALID, METRIC_EGRESS, &f);
	if (!mac_eq(eth->h_source, me->lxc_mac))
		return drop(skb, DROP_INVALID_SMAC, METRIC_EGRESS, &f);
	if (f.saddr != me->ipv4)
		return drop(skb, DROP_INVALID_SIP, METRIC_EGRESS, &f);

	daddr = f.daddr;
	peer = bpf_map_lookup_elem(&ebpfnet_endpoints, &daddr);
	if (!peer && overlay_candidate(net, daddr)) {
		remote = ipcache_lookup(daddr);
		if (remote)
			tunnel = remote->tunnel_endpoint;
	}
	if (peer && peer->network_id != net) {
		endpoint_self(me->ipv4, epid, &self);
		f.src_identity = self.identity;
		return drop(skb, DROP_NOT_SAME_NETWORK, METRIC_EGRESS, &f);
	}
	if (!peer && !mac_eq(eth->h_dest, me->node_mac)) {
		mac_copy(eth->h_dest, me->node_mac);
		/* The veth classified the frame before we ran: not for us. */
		bpf_skb_change_type(skb, PACKET_HOST);
	}

	if (f.fragment)
		frag_ports(skb, &f);
	peer_epid = peer ? peer->epid : 0;
	if (ct_lookup(&f, epid, peer_epid) == CT_ESTABLISHED ||
	    ct_related(skb, &f, epid, peer_epid)) {
		if (peer)
			return deliver_local(skb, peer, &f);
		if (tunnel) {
			/* The VNI carries the identity on every packet: a
			 * receiver that lost the flow judges it anew. */
			endpoint_self(me->ipv4, epid, &self);
			return overlay_send(skb, tunnel, self.identity, &f);
		}
		count(REASON_TO_STACK, METRIC_EGRESS, skb->len);
		return TC_ACT_OK;
	}

	/* A new flow: only now are the identities needed. An endpoint
	 * without IPv4 has no IPv4 flow to open, from 0.0.0.0 either (the
	 * source check above lets that through; no established flow can
	 * have it, since every flow starts here). */
	if (!me->ipv4)
		return drop(skb, DROP_INVALID_SIP, METRIC_EGRESS, &f);
	endpoint_self(me->ipv4, epid, &self);
	f.src_identity = self.identity;
	if (peer)
		f.dst_identity = peer->identity;
	else if (remote)
		f.dst_identity = remote->identity;
	else
		f.dst_identity = ipcache_identity(daddr);
	skb->cb[CB_OWNER] = me->epid_net;
	skb->cb[CB_REMOTE] = f.dst_identity;
	skb->cb[CB_KEY] = cb_key(f.policy_dport, f.proto, POLICY_EGRESS);
	skb->cb[CB_PEER] = peer ? peer->epid : 0;
	return ask_policy(skb, epid, self.flags, POLICY_EGRESS, &f);
}

SEC("tc")
int node_from_container(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct lxc_self me;
	struct flow f = {};

	lxc_self_from_cb(skb, &me);
	if ((void *)(eth + 1) > data_end)
		return drop(skb, DROP_INVALID, METRIC_EGRESS, &f);
	switch (eth->h_proto) {
	case bpf_htons(ETH_P_ARP):
		return handle_arp(skb, &me);
	case bpf_htons(ETH_P_IP):
		return handle_ipv4(skb, &me);
	case bpf_htons(ETH_P_IPV6):
		/* skb->cb still holds the entry layout (lib/cb.h). */
		bpf_tail_call(skb, &ebpfnet_calls6, CALL6_FROM_CONTAINER);
		return drop(skb, DROP_MISSED_TAIL_CALL, METRIC_EGRESS, &f);
	default:
		return drop(skb, DROP_UNKNOWN_L3, METRIC_EGRESS, &f);
	}
}

/* node_to_container sees what the host stack sends to the container: from
 * the host, the gateway address and, routed by the host, the outside. A new
 * flow meets this endpoint's ingress policy with the source's ipcache
 * identity. Local peers never come this way (they are redirected straight
 * into the container). IPv6 goes on in node_to_container6; anything else
 * (the program's own ARP replies) passes. */
SEC("tc")
int node_to_container(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct self_info self;
	struct lxc_self me;
	struct flow f = {};
	__u32 epid;

	lxc_self_from_cb(skb, &me);
	epid = cb_epid(me.epid_net);
	if ((void *)(eth + 1) > data_end)
		goto pass;
	if (eth->h_proto != bpf_htons(ETH_P_IP)) {
		if (eth->h_proto != bpf_htons(ETH_P_IPV6))
			goto pass;
		bpf_tail_call(skb, &ebpfnet_calls6, CALL6_TO_CONTAINER);
		return drop(skb, DROP_MISSED_TAIL_CALL, METRIC_INGRESS, &f);
	}
	if (flow_parse_ipv4(skb, &f))
		return drop(skb, DROP_INVALID, METRIC_INGRESS, &f);
	if (f.fragment)
		frag_ports(skb, &f);
	if (ct_lookup(&f, 0, epid) == CT_ESTABLISHED ||
	    ct_related(skb, &f, 0, epid))
		goto pass;

	endpoint_self(me.ipv4, epid, &self);
	f.src_identity = ipcache_identity(f.saddr);
	f.dst_identity = self.identity;
	skb->cb[CB_OWNER] = me.epid_net;
	skb->cb[CB_REMOTE] = f.src_identity;
	skb->cb[CB_KEY] = cb_key(f.policy_dport, f.proto, POLICY_INGRESS);
	skb->cb[CB_PEER] = 0;
	return ask_policy(skb, epid, self.flags, POLICY_INGRESS, &f);
pass:
	count(REASON_TO_STACK, METRIC_INGRESS, skb->len);
	return TC_ACT_OK;
}

/* node_policy_verdict carries a new flow on once its policy owner's lookup
 * is in (lib/cb.h). After the sender's egress verdict, a flow to the host
 * stack or to another node is recorded and goes there; one to a local peer
 * meets the receiver's ingress policy next, by the receiver's handle_policy
 * and this program again. After an ingress verdict the flow is recorded
 * and goes into the container: redirected into a receiver whose sender is
 * local or on another node, or passed on to it by the host stack's veth. */
SEC("tc")
int node_policy_verdict(struct __sk_buff *skb)
{
	struct endpoint_info *rcv;
	struct self_info self;
	struct flow f = {};
	__u32 egress = (skb->cb[CB_KEY] >> 24) == POLICY_EGRESS;
	__u32 epid = cb_epid(skb->cb[CB_OWNER]);
	/* Ingress from a local sender, or egress to a local receiver. */
	__u32 local = skb->cb[CB_PEER] != 0;

	/* The packet was parsed and checked before; only the tuple is
	 * needed again, for the report and conntrack. */
	if (flow_parse_ipv4(skb, &f))
		return drop(skb, DROP_INVALID, egress ? METRIC_EGRESS : METRIC_INGRESS, &f);
	if (f.fragment)
		frag_ports(skb, &f);

	if (egress) {
		endpoint_self(f.saddr, epid, &self);
		f.src_identity = self.identity;
		f.dst_identity = skb->cb[CB_REMOTE];
		if (!policy_report(skb, &f, skb->cb[CB_LOOKUP], self.flags, POLICY_EGRESS))
			return drop(skb, DROP_POLICY, METRIC_EGRESS, &f);
		if (!local) {
			__be32 tunnel = overlay_tunnel(cb_network(skb->cb[CB_OWNER]), f.daddr);

			ct_create(&f, epid, 0);
			if (tunnel)
				return overlay_send(skb, tunnel, self.identity, &f);
			count(REASON_TO_STACK, METRIC_EGRESS, skb->len);
			return TC_ACT_OK;
		}
		/* To a local peer: its ingress policy next. */
		rcv = bpf_map_lookup_elem(&ebpfnet_endpoints, &f.daddr);
		if (!rcv || rcv->epid != skb->cb[CB_PEER])
			return drop(skb, DROP_MISSED_TAIL_CALL, METRIC_EGRESS, &f);
		skb->cb[CB_OWNER] = cb_owner(rcv->epid, rcv->network_id);
		skb->cb[CB_REMOTE] = self.identity;
		skb->cb[CB_KEY] = cb_key(f.policy_dport, f.proto, POLICY_INGRESS);
		skb->cb[CB_PEER] = epid;
		if (policy_enforced(rcv->flags, POLICY_INGRESS)) {
			skb->cb[CB_LOOKUP] = CALL_POLICY_VERDICT;
			bpf_tail_call(skb, &ebpfnet_policy_lookups, rcv->epid);
			return drop(skb, DROP_MISSED_TAIL_CALL, METRIC_INGRESS, &f);
		}
		skb->cb[CB_LOOKUP] = LOOKUP_SKIPPED;
		epid = rcv->epid;
	}

	/* Ingress into endpoint epid: from a local sender or from the host
	 * stack. */
	rcv = endpoint_self(f.daddr, epid, &self);
	f.src_identity = skb->cb[CB_REMOTE];
	f.dst_identity = self.identity;
	if (!policy_report(skb, &f, skb->cb[CB_LOOKUP], self.flags, POLICY_INGRESS))
		return drop(skb, DROP_POLICY, METRIC_INGRESS, &f);
	/* The sender is the local endpoint in CB_PEER, or none (the host
	 * stack, another node). */
	ct_create(&f, cb_local_peer(skb->cb[CB_PEER]), epid);
	if (!local) {
		count(REASON_TO_STACK, METRIC_INGRESS, skb->len);
		return TC_ACT_OK;
	}
	/* A local receiver is reached through its own entry: without it
	 * (being created or deleted) nothing is delivered. */
	if (!rcv)
		return drop(skb, DROP_MISSED_TAIL_CALL, METRIC_INGRESS, &f);
	return deliver_local(skb, rcv, &f);
}

/* node_from_overlay runs at tc ingress of the node's VXLAN device and sees
 * what other nodes send to this node's endpoints, decapsulated, with the
 * sender's identity in the tunnel key's VNI. A packet must be for a local
 * endpoint and come from an address of that endpoint's subnet (one
 * network, the same subnet on every node). An established flow goes
 * straight into the container; a new one meets the receiver's ingress
 * policy with the sender's identity first, by the receiver's handle_policy
 * and node_policy_verdict, which delivers it the same way. Nothing from
 * the overlay reaches the host stack. */
SEC("tc")
int node_from_overlay(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct bpf_tunnel_key key = {};
	struct endpoint_info *rcv;
	struct flow f = {};
	__be32 daddr;

	skb->cb[CB_OWNER] = 0;
	if ((void *)(eth + 1) > data_end)
		return drop(skb, DROP_INVALID, METRIC_INGRESS, &f);
	if (eth->h_proto != bpf_htons(ETH_P_IP)) {
		if (eth->h_proto == bpf_htons(ETH_P_IPV6))
			bpf_tail_call(skb, &ebpfnet_calls6, CALL6_FROM_OVERLAY);
		return drop(skb, DROP_UNKNOWN_L3, METRIC_INGRESS, &f);
	}
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return drop(skb, DROP_INVALID, METRIC_INGRESS, &f);
	if (flow_parse_ipv4(skb, &f))
		return drop(skb, DROP_INVALID, METRIC_INGRESS, &f);
	f.src_identity = key.tunnel_id;

	daddr = f.daddr;
	rcv = bpf_map_lookup_elem(&ebpfnet_endpoints, &daddr);
	if (!rcv)
		return drop(skb, DROP_UNROUTABLE, METRIC_INGRESS, &f);
	skb->cb[CB_OWNER] = cb_owner(rcv->epid, rcv->network_id);
	f.dst_identity = rcv->identity;
	if (!network_contains(rcv->network_id, f.saddr))
		return drop(skb, DROP_NOT_SAME_NETWORK, METRIC_INGRESS, &f);
	if (f.fragment)
		frag_ports(skb, &f);
	/* The sender is no local endpoint: its end of the flow is 0. */
	if (ct_lookup(&f, 0, rcv->epid) == CT_ESTABLISHED ||
	    ct_related(skb, &f, 0, rcv->epid))
		return deliver_local(skb, rcv, &f);

	skb->cb[CB_REMOTE] = f.src_identity;
	skb->cb[CB_KEY] = cb_key(f.policy_dport, f.proto, POLICY_INGRESS);
	skb->cb[CB_PEER] = CB_PEER_OVERLAY;
	return ask_policy(skb, rcv->epid, rcv->flags, POLICY_INGRESS, &f);
}

/* ---------------------------------------------------------------------
 * IPv6. The programs below sit in ebpfnet_calls6 (CALL6_*, lib/maps6.h),
 * reached from the IPv4 node programs above for ETH_P_IPV6 with skb->cb
 * as the entry programs wrote it, and node_policy_verdict6 in
 * ebpfnet_calls (CALL_POLICY_VERDICT6), where an endpoint's
 * handle_policy returns for an IPv6 flow. They are the IPv4 pipeline over
 * IPv6's own maps, with one difference: the container's IPv6 address is
 * not among the endpoint's constants (skb->cb has no room for it, and the
 * endpoint's object stays small), so a packet's source is the
 * container's only if the ebpfnet_endpoints6 entry of that address names
 * the sender. The same lookup gives the sender's identity and flags. */

/* handle_ndp answers or passes the container's Neighbor Discovery
 * (lib/ndp.h): an advertisement goes straight back out of the veth in
 * place of the solicitation. */
static __always_inline int handle_ndp(struct __sk_buff *skb, const struct lxc_self *me,
				      const struct flow6 *f)
{
	struct ndp_na na = {};
	__u8 macs[2 * MAC_LEN];
	int r = ndp_answer(skb, me, f, &na);
	int i;

	if (r == NDP_ANSWERED) {
#pragma unroll
		for (i = 0; i < MAC_LEN; i++) {
			macs[i] = me->lxc_mac[i];
			macs[MAC_LEN + i] = na.opt_mac[i];
		}
		if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(na), 0) < 0 ||
		    bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0) < 0 ||
		    bpf_skb_store_bytes(skb, ETH_HLEN, &na, sizeof(na), 0) < 0)
			return drop6(skb, DROP_WRITE_ERROR, METRIC_EGRESS, f);
		count(REASON_NDP_REPLY, METRIC_EGRESS, skb->len);
		/* Out of the same veth: its peer is the container. */
		return bpf_redirect(skb->ifindex, 0);
	}
	if (r == NDP_PASS) {
		count(REASON_TO_STACK, METRIC_EGRESS, skb->len);
		return TC_ACT_OK;
	}
	return drop6(skb, r, METRIC_EGRESS, f);
}

/* icmp6_never_denied: Packet Too Big, without which path MTU discovery
 * fails, is never judged by policy (RFC 4890), whatever flow it quotes;
 * one about a live flow passes as related anyway. It opens no flow. */
static __always_inline int icmp6_never_denied(const struct flow6 *f)
{
	return f->proto == IPPROTO_ICMPV6 && f->icmp_type == ICMP6_PKT_TOOBIG;
}

/* ask_policy6 is ask_policy for an IPv6 flow: the owner's lookup returns
 * to node_policy_verdict6. */
static __always_inline int ask_policy6(struct __sk_buff *skb, __u32 owner_epid,
				       __u32 flags, __u32 dir, const struct flow6 *f)
{
	__u32 mdir = dir == POLICY_EGRESS ? METRIC_EGRESS : METRIC_INGRESS;

	if (policy_enforced(flags, dir)) {
		skb->cb[CB_LOOKUP] = CALL_POLICY_VERDICT6;
		bpf_tail_call(skb, &ebpfnet_policy_lookups, owner_epid);
		return drop6(skb, DROP_MISSED_TAIL_CALL, mdir, f);
	}
	skb->cb[CB_LOOKUP] = LOOKUP_SKIPPED;
	bpf_tail_call(skb, &ebpfnet_calls, CALL_POLICY_VERDICT6);
	return drop6(skb, DROP_MISSED_TAIL_CALL, mdir, f);
}

/* deliver_local6 is deliver_local for an IPv6 packet. */
static __always_inline int deliver_local6(struct __sk_buff *skb,
					  const struct endpoint_info *peer,
					  const struct flow6 *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return drop6(skb, DROP_INVALID, METRIC_INGRESS, f);
	if (!mac_eq(eth->h_dest, peer->lxc_mac))
		mac_copy(eth->h_dest, peer->lxc_mac);
	count(REASON_FORWARDED, METRIC_INGRESS, skb->len);
	return bpf_redirect_peer(peer->ifindex, 0);
}

/* node_from_container6 is handle_ipv4 for IPv6: Neighbor Discovery first
 * (lib/ndp.h), then the source (MAC, and the address by its
 * ebpfnet_endpoints6 entry), a local peer's network, conntrack, and for a
 * new flow the endpoint's egress policy, then node_policy_verdict6. */
SEC("tc")
int node_from_container6(struct __sk_buff *skb)
{
	void *data, *data_end;
	struct ethhdr *eth;
	struct endpoint_info *self, *peer;
	struct ipcache_value *remote = 0;
	struct lxc_self me;
	struct flow6 f = {};
	union v6addr daddr;
	__u32 epid, net, peer_epid;
	__be32 tunnel = 0;

	lxc_self_from_cb(skb, &me);
	epid = cb_epid(me.epid_net);
	net = cb_network(me.epid_net);
	if (flow_parse_ipv6(skb, &f))
		return drop6(skb, DROP_INVALID, METRIC_EGRESS, &f);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return drop6(skb, DROP_INVALID, METRIC_EGRESS, &f);
	if (!mac_eq(eth->h_source, me.lxc_mac))
		return drop6(skb, DROP_INVALID_SMAC, METRIC_EGRESS, &f);
	if (f.proto == IPPROTO_ICMPV6 && icmp6_is_nd(f.icmp_type))
		return handle_ndp(skb, &me, &f);
	self = bpf_map_lookup_elem(&ebpfnet_endpoints6, &f.saddr);
	if (!self || self->epid != epid)
		return drop6(skb, DROP_INVALID_SIP, METRIC_EGRESS, &f);

	daddr = f.daddr;
	peer = bpf_map_lookup_elem(&ebpfnet_endpoints6, &daddr);
	if (!peer && overlay_candidate6(net, &daddr)) {
		remote = ipcache6_lookup(&daddr);
		if (remote)
			tunnel = remote->tunnel_endpoint;
	}
	if (peer && peer->network_id != net) {
		f.src_identity = self->identity;
		return drop6(skb, DROP_NOT_SAME_NETWORK, METRIC_EGRESS, &f);
	}
	if (!peer && !mac_eq(eth->h_dest, me.node_mac)) {
		mac_copy(eth->h_dest, me.node_mac);
		bpf_skb_change_type(skb, PACKET_HOST);
	}

	if (f.fragment)
		frag6_ports(&f);
	peer_epid = peer ? peer->epid : 0;
	if (ct6_lookup(&f, epid, peer_epid) == CT_ESTABLISHED ||
	    ct6_related(skb, &f, epid, peer_epid) || icmp6_never_denied(&f)) {
		if (peer)
			return deliver_local6(skb, peer, &f);
		if (tunnel)
			return overlay_send6(skb, tunnel, self->identity, &f);
		count(REASON_TO_STACK, METRIC_EGRESS, skb->len);
		return TC_ACT_OK;
	}

	f.src_identity = self->identity;
	if (peer)
		f.dst_identity = peer->identity;
	else if (remote)
		f.dst_identity = remote->identity;
	else
		f.dst_identity = ipcache6_identity(&daddr);
	skb->cb[CB_OWNER] = me.epid_net;
	skb->cb[CB_REMOTE] = f.dst_identity;
	skb->cb[CB_KEY] = cb_key(f.policy_dport, f.proto, POLICY_EGRESS);
	skb->cb[CB_PEER] = peer_epid;
	return ask_policy6(skb, epid, self->flags, POLICY_EGRESS, &f);
}

/* node_to_container6 is node_to_container for IPv6. Neighbor Discovery
 * and Packet Too Big pass without policy; an endpoint judges everything
 * else by the entry of the packet's destination, or, when that is not one
 * of its addresses, as init, enforcing both ways. */
SEC("tc")
int node_to_container6(struct __sk_buff *skb)
{
	struct self_info self;
	struct lxc_self me;
	struct flow6 f = {};
	__u32 epid;

	lxc_self_from_cb(skb, &me);
	epid = cb_epid(me.epid_net);
	if (flow_parse_ipv6(skb, &f))
		return drop6(skb, DROP_INVALID, METRIC_INGRESS, &f);
	if (f.proto == IPPROTO_ICMPV6 && (icmp6_is_nd(f.icmp_type) || icmp6_never_denied(&f)))
		goto pass;
	if (f.fragment)
		frag6_ports(&f);
	if (ct6_lookup(&f, 0, epid) == CT_ESTABLISHED ||
	    ct6_related(skb, &f, 0, epid))
		goto pass;

	endpoint_self6(&f.daddr, epid, &self);
	f.src_identity = ipcache6_identity(&f.saddr);
	f.dst_identity = self.identity;
	skb->cb[CB_OWNER] = me.epid_net;
	skb->cb[CB_REMOTE] = f.src_identity;
	skb->cb[CB_KEY] = cb_key(f.policy_dport, f.proto, POLICY_INGRESS);
	skb->cb[CB_PEER] = 0;
	return ask_policy6(skb, epid, self.flags, POLICY_INGRESS, &f);
pass:
	count(REASON_TO_STACK, METRIC_INGRESS, skb->len);
	return TC_ACT_OK;
}

/* node_policy_verdict6 is node_policy_verdict for an IPv6 flow. */
SEC("tc")
int node_policy_verdict6(struct __sk_buff *skb)
{
	struct endpoint_info *rcv;
	struct self_info self;
	struct flow6 f = {};
	__u32 egress = (skb->cb[CB_KEY] >> 24) == POLICY_EGRESS;
	__u32 epid = cb_epid(skb->cb[CB_OWNER]);
	__u32 local = skb->cb[CB_PEER] != 0;

	if (flow_parse_ipv6(skb, &f))
		return drop6(skb, DROP_INVALID, egress ? METRIC_EGRESS : METRIC_INGRESS, &f);
	if (f.fragment)
		frag6_ports(&f);

	if (egress) {
		endpoint_self6(&f.saddr, epid, &self);
		f.src_identity = self.identity;
		f.dst_identity = skb->cb[CB_REMOTE];
		if (!policy_report6(skb, &f, skb->cb[CB_LOOKUP], self.flags, POLICY_EGRESS))
			return drop6(skb, DROP_POLICY, METRIC_EGRESS, &f);
		if (!local) {
			__be32 tunnel = overlay_tunnel6(cb_network(skb->cb[CB_OWNER]), &f.daddr);

			ct6_create(&f, epid, 0);
			if (tunnel)
				return overlay_send6(skb, tunnel, self.identity, &f);
			count(REASON_TO_STACK, METRIC_EGRESS, skb->len);
			return TC_ACT_OK;
		}
		/* To a local peer: its ingress policy next. */
		rcv = bpf_map_lookup_elem(&ebpfnet_endpoints6, &f.daddr);
		if (!rcv || rcv->epid != skb->cb[CB_PEER])
			return drop6(skb, DROP_MISSED_TAIL_CALL, METRIC_EGRESS, &f);
		skb->cb[CB_OWNER] = cb_owner(rcv->epid, rcv->network_id);
		skb->cb[CB_REMOTE] = self.identity;
		skb->cb[CB_KEY] = cb_key(f.policy_dport, f.proto, POLICY_INGRESS);
		skb->cb[CB_PEER] = epid;
		if (policy_enforced(rcv->flags, POLICY_INGRESS)) {
			skb->cb[CB_LOOKUP] = CALL_POLICY_VERDICT6;
			bpf_tail_call(skb, &ebpfnet_policy_lookups, rcv->epid);
			return drop6(skb, DROP_MISSED_TAIL_CALL, METRIC_INGRESS, &f);
		}
		skb->cb[CB_LOOKUP] = LOOKUP_SKIPPED;
		epid = rcv->epid;
	}

	rcv = endpoint_self6(&f.daddr, epid, &self);
	f.src_identity = skb->cb[CB_REMOTE];
	f.dst_identity = self.identity;
	if (!policy_report6(skb, &f, skb->cb[CB_LOOKUP], self.flags, POLICY_INGRESS))
		return drop6(skb, DROP_POLICY, METRIC_INGRESS, &f);
	ct6_create(&f, cb_local_peer(skb->cb[CB_PEER]), epid);
	if (!local) {
		count(REASON_TO_STACK, METRIC_INGRESS, skb->len);
		return TC_ACT_OK;
	}
	if (!rcv)
		return drop6(skb, DROP_MISSED_TAIL_CALL, METRIC_INGRESS, &f);
	return deliver_local6(skb, rcv, &f);
}

/* node_from_overlay6 is node_from_overlay for an IPv6 packet, which
 * node_from_overlay hands over (the inner frame is IPv6, the underlay
 * IPv4). */
SEC("tc")
int node_from_overlay6(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct endpoint_info *rcv;
	struct flow6 f = {};

	skb->cb[CB_OWNER] = 0;
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return drop6(skb, DROP_INVALID, METRIC_INGRESS, &f);
	if (flow_parse_ipv6(skb, &f))
		return drop6(skb, DROP_INVALID, METRIC_INGRESS, &f);
	f.src_identity = key.tunnel_id;

	rcv = bpf_map_lookup_elem(&ebpfnet_endpoints6, &f.daddr);
	if (!rcv)
		return drop6(skb, DROP_UNROUTABLE, METRIC_INGRESS, &f);
	skb->cb[CB_OWNER] = cb_owner(rcv->epid, rcv->network_id);
	f.dst_identity = rcv->identity;
	if (!network6_contains(rcv->network_id, &f.saddr))
		return drop6(skb, DROP_NOT_SAME_NETWORK, METRIC_INGRESS, &f);
	if (f.fragment)
		frag6_ports(&f);
	if (ct6_lookup(&f, 0, rcv->epid) == CT_ESTABLISHED ||
	    ct6_related(skb, &f, 0, rcv->epid) || icmp6_never_denied(&f))
		return deliver_local6(skb, rcv, &f);

	skb->cb[CB_REMOTE] = f.src_identity;
	skb->cb[CB_KEY] = cb_key(f.policy_dport, f.proto, POLICY_INGRESS);
	skb->cb[CB_PEER] = CB_PEER_OVERLAY;
	return ask_policy6(skb, rcv->epid, rcv->flags, POLICY_INGRESS, &f);
}

char __license[] SEC("license") = "Dual BSD/GPL";
