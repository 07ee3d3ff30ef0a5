/* IPv6 helpers: parsing into struct flow6, extension headers included. */
#ifndef EBPFNET_IPV6_H
#define EBPFNET_IPV6_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "global.h"
#include "flow.h"
#include "reason.h"

#define IPV6_HLEN 40

/* ICMPv6 message types the datapath tells apart (RFC 4443, 4861, 3810). */
#define ICMP6_DEST_UNREACH 1
#define ICMP6_PKT_TOOBIG 2
#define ICMP6_TIME_EXCEED 3
#define ICMP6_PARAMPROB 4
#define ICMP6_ECHO_REQUEST 128
#define ICMP6_ECHO_REPLY 129
#define ICMP6_MLD_QUERY 130
#define ICMP6_MLD_REPORT 131
#define ICMP6_MLD_DONE 132
#define ICMP6_ROUTER_SOLICIT 133
#define ICMP6_ROUTER_ADVERT 134
#define ICMP6_NEIGH_SOLICIT 135
#define ICMP6_NEIGH_ADVERT 136
#define ICMP6_REDIRECT 137
#define ICMP6_MLD2_REPORT 143

/* The extension headers a chain may hold before the upper-layer header,
 * and how many the parser walks (RFC 8200 recommends an order with each
 * at most once, Destination Options twice: six). */
#define IPV6_EXT_MAX 6

/* ipv6_is_ext tells whether nexthdr is an extension header the parser
 * steps over. */
static __always_inline int ipv6_is_ext(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_FRAGMENT || nexthdr == IPPROTO_DSTOPTS ||
	       nexthdr == IPPROTO_AH;
}

/* ipv6_skip_ext walks the extension headers from nexthdr at offset off
 * (from the start of the frame) and sets f's proto and l4_off to the
 * upper-layer header's, and, for a fragment, fragment, frag_id and
 * frag_off. The L4 header of a fragment past the first is in another
 * packet: l4_off stays 0. Returns 0, or DROP_INVALID for a truncated or
 * too long chain. Global (lib/global.h): packets with extension headers
 * are the rare ones, and the walk is a loop the verifier would otherwise
 * unroll into every caller. */
__global_func int ipv6_skip_ext(struct __sk_buff *skb, struct flow6 *f, __u32 nexthdr, __u32 off)
{
	__u8 hdr[8];
	int i;

	if (!f)
		return DROP_INVALID;
	f->l4_off = 0;
	for (i = 0; i < IPV6_EXT_MAX; i++) {
		__u32 nh = nexthdr & 0xff;

		if (!ipv6_is_ext(nh)) {
			f->proto = nh;
			f->l4_off = off;
			return 0;
		}
		if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
			return DROP_INVALID;
		nexthdr = hdr[0];
		switch (nh) {
		case IPPROTO_FRAGMENT: {
			__u16 field = (__u16)hdr[2] << 8 | hdr[3];

			f->fragment = (field & 0xfff9) != 0;	/* offset or M */
			f->frag_off = field >> 3;
			__builtin_memcpy(&f->frag_id, &hdr[4], sizeof(f->frag_id));
			off += 8;
			if (f->frag_off) {
				/* A later fragment: no upper-layer header. */
				f->proto = nexthdr;
				return 0;
			}
			break;
		}
		case IPPROTO_AH:
			off += ((__u32)hdr[1] + 2) * 4;
			break;
		default:
			off += ((__u32)hdr[1] + 1) * 8;
		}
	}
	return DROP_INVALID;
}

/* icmp6_echo_ports puts an ICMPv6 echo id where it stands in for a port:
 * sport of a request, dport of a reply (lib/flow.h). */
static __always_inline void icmp6_echo_ports(const __u8 *icmp, struct flow6 *f)
{
	if (icmp[0] == ICMP6_ECHO_REQUEST)
		__builtin_memcpy(&f->sport, &icmp[4], sizeof(f->sport));
	else if (icmp[0] == ICMP6_ECHO_REPLY)
		__builtin_memcpy(&f->dport, &icmp[4], sizeof(f->dport));
}

/* ipv6_fill_l4 reads what policy and conntrack need of the L4 header at
 * f->l4_off, as ipv4_fill_l4 does, and the ICMPv6 message type. */
static __always_inline void ipv6_fill_l4(struct __sk_buff *skb, struct flow6 *f)
{
	__u32 off = f->l4_off;
	__u8 tcp[14];	/* ports, seq, ack, data offset, flags */
	__be16 ports[2];
	__u8 icmp[6];	/* type, code, checksum, id */

	if (!off)
		return;
	switch (f->proto) {
	case IPPROTO_TCP:
		if (bpf_skb_load_bytes(skb, off, tcp, sizeof(tcp)) < 0)
			return;
		__builtin_memcpy(&f->sport, &tcp[0], sizeof(f->sport));
		__builtin_memcpy(&f->dport, &tcp[2], sizeof(f->dport));
		f->tcp_flags = tcp[13];
		f->policy_dport = f->dport;
		return;
	case IPPROTO_UDP:
		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return;
		f->sport = ports[0];
		f->dport = ports[1];
		f->policy_dport = f->dport;
		return;
	case IPPROTO_ICMPV6:
		if (bpf_skb_load_bytes(skb, off, icmp, sizeof(icmp)) < 0)
			return;
		f->icmp_type = icmp[0];
		icmp6_echo_ports(icmp, f);
		return;
	}
}

/* flow_parse_ipv6 fills f from the IPv6 packet in skb, behind an Ethernet
 * header: addresses, the upper-layer protocol past any extension headers,
 * ports or echo id, and where the L4 and Fragment headers are. Returns 0,
 * or DROP_INVALID for a truncated packet or a bad chain. Identities are
 * left alone; the ports of a fragment past the first are 0 until the
 * caller asks lib/frag6.h. Inlined: every packet is parsed; the walk over
 * extension headers is not (ipv6_skip_ext). */
static __always_inline int flow_parse_ipv6(struct __sk_buff *skb, struct flow6 *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	__u8 nexthdr;

	if (!f || (void *)(ip6 + 1) > data_end || ip6->version != 6)
		return DROP_INVALID;
	__builtin_memcpy(&f->saddr, &ip6->saddr, sizeof(f->saddr));
	__builtin_memcpy(&f->daddr, &ip6->daddr, sizeof(f->daddr));
	nexthdr = ip6->nexthdr;
	f->sport = f->dport = f->policy_dport = 0;
	f->tcp_flags = f->fragment = f->icmp_type = 0;
	f->frag_id = 0;
	f->frag_off = 0;
	if (ipv6_is_ext(nexthdr)) {
		if (ipv6_skip_ext(skb, f, nexthdr, ETH_HLEN + IPV6_HLEN))
			return DROP_INVALID;
	} else {
		f->proto = nexthdr;
		f->l4_off = ETH_HLEN + IPV6_HLEN;
	}
	ipv6_fill_l4(skb, f);
	return 0;
}

#endif
