/* IPv4 helpers: L4 port extraction and TTL decrement. */
#ifndef EBPFNET_IPV4_H
#define EBPFNET_IPV4_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "drop.h"

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

/* ipv4_fill_ports reads TCP/UDP ports into f. Non-first fragments carry no
 * L4 header, so their ports stay 0 (policy then only matches port 0). The
 * helper load keeps the variable IHL out of the verifier's way. */
static __always_inline void ipv4_fill_ports(struct __sk_buff *skb,
					    const struct iphdr *iph,
					    struct flow *f)
{
	__be16 ports[2];

	if (iph->protocol != IPPROTO_TCP && iph->protocol != IPPROTO_UDP)
		return;
	if (iph->frag_off & bpf_htons(IP_OFFSET))
		return;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + iph->ihl * 4, ports,
			       sizeof(ports)) < 0)
		return;
	f->sport = ports[0];
	f->dport = ports[1];
}

/* ipv4_dec_ttl lowers the TTL by one and patches the header checksum
 * incrementally: TTL is the high byte of its 16-bit word, so the one's
 * complement sum grows by 0x0100 in network order. */
static __always_inline void ipv4_dec_ttl(struct iphdr *iph)
{
	__u32 sum = (__u32)iph->check + (__u32)bpf_htons(0x0100);

	iph->check = (__sum16)(sum + (sum >= 0xffff));
	iph->ttl--;
}

#endif
