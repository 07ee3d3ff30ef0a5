/* ICMPv6 errors: the packet an error is about (lib/icmp.h for IPv4).
 *
 * Destination unreachable, packet too big, time exceeded and parameter
 * problem quote as much of the packet that caused them as fits (RFC 4443):
 * its IPv6 header, extension headers and the start of its L4 header.
 * Conntrack (lib/conntrack6.h) looks the quoted packet's flow up, so that
 * an error about an allowed flow passes as the flow's own packets do. */
#ifndef EBPFNET_ICMP6_H
#define EBPFNET_ICMP6_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include "global.h"
#include "flow.h"
#include "ipv6.h"

#define ICMP6_HDR_LEN 8

/* icmp6_is_error: the types that quote the packet they are about. */
static __always_inline int icmp6_is_error(__u8 type)
{
	return type >= ICMP6_DEST_UNREACH && type <= ICMP6_PARAMPROB;
}

/* icmp6_error_quote fills q with the tuple of the packet that f, an
 * ICMPv6 error, quotes, as flow_parse_ipv6 would have parsed that packet.
 * It returns 0, or -1 when f is no ICMPv6 error, or the quoted packet's
 * tuple cannot be read (truncated, a later fragment, another protocol
 * than TCP, UDP or ICMPv6 echo). Global (lib/global.h): only new ICMPv6
 * flows come here. */
__global_func int icmp6_error_quote(struct __sk_buff *skb, const struct flow6 *f, struct flow6 *q)
{
	struct ipv6hdr ip6;
	__u8 icmp[6];
	__be16 ports[2];
	__u32 off;

	if (!f || !q || f->proto != IPPROTO_ICMPV6 || !f->l4_off ||
	    !icmp6_is_error(f->icmp_type))
		return -1;
	off = (__u32)f->l4_off + ICMP6_HDR_LEN;
	if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0 || ip6.version != 6)
		return -1;
	__builtin_memcpy(&q->saddr, &ip6.saddr, sizeof(q->saddr));
	__builtin_memcpy(&q->daddr, &ip6.daddr, sizeof(q->daddr));
	q->sport = q->dport = 0;
	if (ipv6_is_ext(ip6.nexthdr)) {
		if (ipv6_skip_ext(skb, q, ip6.nexthdr, off + IPV6_HLEN))
			return -1;
	} else {
		q->proto = ip6.nexthdr;
		q->l4_off = off + IPV6_HLEN;
	}
	off = q->l4_off;
	if (!off)
		return -1;
	switch (q->proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return -1;
		q->sport = ports[0];
		q->dport = ports[1];
		return 0;
	case IPPROTO_ICMPV6:
		if (bpf_skb_load_bytes(skb, off, icmp, sizeof(icmp)) < 0)
			return -1;
		icmp6_echo_ports(icmp, q);
		return 0;
	}
	return -1;
}

#endif
