/* Neighbor Discovery (RFC 4861) for the container, as lib/arp.h is ARP.
 *
 * The container's neighbour solicitations are answered here, for every
 * address but its own, as its ARP requests are: a peer of the same
 * network is at the peer's own MAC, everything else (the gateway first)
 * at the node MAC. The answer is a Neighbor Advertisement built in place
 * of the solicitation (Solicited and Override set, Router set when the
 * node answers, with the target link-layer address option), sent straight
 * back out of the veth. Duplicate address detection (a solicitation from
 * the unspecified address) is never answered: the container's address is
 * its own. The container gets its default route from Docker (Join's
 * GatewayIPv6), so no Router Advertisement is ever needed: the container's
 * Router Solicitations, like its MLD reports, unsolicited advertisements
 * and DAD probes, pass to the host, as its gratuitous ARP does; the host,
 * a router that runs no radvd, ignores them. A container that advertises
 * itself as a router or redirects is dropped. */
#ifndef EBPFNET_NDP_H
#define EBPFNET_NDP_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in6.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "global.h"
#include "eth.h"
#include "cb.h"
#include "flow.h"
#include "ipv6.h"
#include "maps6.h"

#define NDP_ANSWERED 0
#define NDP_PASS 1

#define ND_OPT_SOURCE_LL 1
#define ND_OPT_TARGET_LL 2
/* Neighbor Advertisement flags, in network order. */
#define NA_F_ROUTER bpf_htonl(0x80000000)
#define NA_F_SOLICITED bpf_htonl(0x40000000)
#define NA_F_OVERRIDE bpf_htonl(0x20000000)
#define ND_HOP_LIMIT 255

/* icmp6_is_nd tells whether an ICMPv6 type is Neighbor Discovery or
 * Multicast Listener Discovery: what the node programs handle before any
 * address check, and never submit to policy. */
static __always_inline int icmp6_is_nd(__u8 type)
{
	return (type >= ICMP6_MLD_QUERY && type <= ICMP6_REDIRECT) ||
	       type == ICMP6_MLD2_REPORT;
}

/* A Neighbor Advertisement with its IPv6 header, as it goes on the wire
 * after the Ethernet header, and the MAC it announces. */
struct ndp_na {
	struct ipv6hdr ip6;
	__u8 type;
	__u8 code;
	__sum16 csum;
	__be32 flags;
	__u8 target[16];
	__u8 opt_type;
	__u8 opt_len;		/* in units of 8 bytes */
	__u8 opt_mac[MAC_LEN];
};

#define NDP_NA_ICMP_LEN 32	/* type .. the option's end */

_Static_assert(sizeof(struct ndp_na) == IPV6_HLEN + NDP_NA_ICMP_LEN,
	       "struct ndp_na is the advertisement as it is sent");

/* The IPv6 pseudo-header of the upper-layer checksum (RFC 8200 8.1). */
struct ipv6_pseudo {
	union v6addr saddr;
	union v6addr daddr;
	__be32 len;
	__be32 nexthdr;
};

static __always_inline __u16 csum_fold32(__u32 csum)
{
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	return (__u16)~csum;
}

/* ndp_na_build fills na: the advertisement that target is at mac, from
 * target to to. */
static __always_inline void ndp_na_build(struct ndp_na *na, const union v6addr *target,
					 const union v6addr *to, const volatile __u8 *mac,
					 __u32 router)
{
	struct ipv6_pseudo ph = {};
	__s64 sum;

	na->ip6.version = 6;
	na->ip6.payload_len = bpf_htons(NDP_NA_ICMP_LEN);
	na->ip6.nexthdr = IPPROTO_ICMPV6;
	na->ip6.hop_limit = ND_HOP_LIMIT;
	__builtin_memcpy(&na->ip6.saddr, target, sizeof(*target));
	__builtin_memcpy(&na->ip6.daddr, to, sizeof(*to));
	na->type = ICMP6_NEIGH_ADVERT;
	na->code = 0;
	na->csum = 0;
	na->flags = NA_F_SOLICITED | NA_F_OVERRIDE | (router ? NA_F_ROUTER : 0);
	__builtin_memcpy(na->target, target, sizeof(na->target));
	na->opt_type = ND_OPT_TARGET_LL;
	na->opt_len = 1;
	mac_copy(na->opt_mac, mac);

	v6_copy(&ph.saddr, target);
	v6_copy(&ph.daddr, to);
	ph.len = bpf_htonl(NDP_NA_ICMP_LEN);
	ph.nexthdr = bpf_htonl(IPPROTO_ICMPV6);
	sum = bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
	if (sum >= 0)
		sum = bpf_csum_diff(0, 0, (__be32 *)&na->type, NDP_NA_ICMP_LEN, (__u32)sum);
	na->csum = sum >= 0 ? csum_fold32((__u32)sum) : 0;
}

/* ndp_source_ok tells whether f's source may speak Neighbor Discovery for
 * the endpoint epid: one of its own addresses, its link-local address (the
 * kernel solicits from it too), or, for DAD, the unspecified address. */
static __always_inline int ndp_source_ok(const struct flow6 *f, __u32 epid)
{
	struct endpoint_info *self;

	if (v6_is_zero(&f->saddr) || v6_is_link_local(&f->saddr))
		return 1;
	self = bpf_map_lookup_elem(&ebpfnet_endpoints6, &f->saddr);
	return self && self->epid == epid;
}

/* ndp_answer judges Neighbor Discovery from the container in skb (f is
 * its parse, an ICMPv6 ND or MLD message, me the endpoint's constants):
 * it fills na with the answer to a solicitation and returns NDP_ANSWERED,
 * returns NDP_PASS for what the host may see, or the DROP_* reason.
 * Global (lib/global.h): it writes nothing into the packet; the caller
 * sends na in its place. */
__global_func int ndp_answer(struct __sk_buff *skb, const struct lxc_self *me,
			     const struct flow6 *f, struct ndp_na *na)
{
	struct endpoint_info *peer;
	union v6addr target;
	__u8 ns[8], opt[8];
	__u8 hop;
	__u32 epid, answer_node;

	if (!me || !f || !na || !f->l4_off)
		return DROP_INVALID;
	epid = cb_epid(me->epid_net);
	if (!ndp_source_ok(f, epid))
		return DROP_INVALID_SIP;
	switch (f->icmp_type) {
	case ICMP6_NEIGH_SOLICIT:
		break;
	case ICMP6_ROUTER_SOLICIT:
	case ICMP6_NEIGH_ADVERT:
	case ICMP6_MLD_REPORT:
	case ICMP6_MLD_DONE:
	case ICMP6_MLD2_REPORT:
		/* Link-local business, for the host's eyes only. */
		if (!v6_is_multicast(&f->daddr) && !v6_is_link_local(&f->daddr))
			return DROP_INVALID;
		return NDP_PASS;
	default:
		/* Router advertisements, redirects, MLD queries: a
		 * router's messages, which a container does not send. */
		return DROP_INVALID;
	}

	if (bpf_skb_load_bytes(skb, ETH_HLEN + 7, &hop, 1) < 0 || hop != ND_HOP_LIMIT ||
	    bpf_skb_load_bytes(skb, f->l4_off, ns, sizeof(ns)) < 0 || ns[1] != 0 ||
	    bpf_skb_load_bytes(skb, f->l4_off + 8, &target, sizeof(target)) < 0 ||
	    v6_is_multicast(&target))
		return DROP_INVALID;
	/* The source link-layer address option, if it comes first (as the
	 * kernel writes it), must be the container's MAC. */
	if (bpf_skb_load_bytes(skb, f->l4_off + 24, opt, sizeof(opt)) == 0 &&
	    opt[0] == ND_OPT_SOURCE_LL && opt[1] == 1 && !mac_eq(&opt[2], me->lxc_mac))
		return DROP_INVALID_SMAC;
	if (v6_is_zero(&f->saddr))
		return NDP_PASS;	/* duplicate address detection */

	peer = bpf_map_lookup_elem(&ebpfnet_endpoints6, &target);
	if (peer && peer->epid == epid)
		return NDP_PASS;	/* its own address */
	answer_node = !peer || peer->network_id != cb_network(me->epid_net);
	if (answer_node)
		ndp_na_build(na, &target, &f->saddr, me->node_mac, 1);
	else
		ndp_na_build(na, &target, &f->saddr, peer->lxc_mac, 0);
	return NDP_ANSWERED;
}

#endif
