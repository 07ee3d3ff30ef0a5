/* IPv4 helpers: parsing into struct flow. */
#ifndef EBPFNET_IPV4_H
#define EBPFNET_IPV4_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "global.h"
#include "flow.h"
#include "reason.h"

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

/* icmp_echo_ports puts an ICMP echo id where it stands in for a port: on
 * the requester's side of the tuple (lib/flow.h), sport of a request,
 * dport of a reply. Other ICMP types have no id. */
static __always_inline void icmp_echo_ports(const __u8 *icmp, struct flow *f)
{
	if (icmp[0] == ICMP_ECHO)
		__builtin_memcpy(&f->sport, &icmp[4], sizeof(f->sport));
	else if (icmp[0] == ICMP_ECHOREPLY)
		__builtin_memcpy(&f->dport, &icmp[4], sizeof(f->dport));
}

/* ipv4_fill_l4 reads what policy and conntrack need of the L4 header:
 * TCP/UDP ports (and TCP flags), or the ICMP echo id, which stands in for
 * a port on the requester's side (lib/flow.h). Non-first fragments carry no
 * L4 header: their ports come from the first fragment (lib/frag.h). The
 * helper loads keep the variable IHL out of the verifier's way. */
static __always_inline void ipv4_fill_l4(struct __sk_buff *skb,
					 const struct iphdr *iph,
					 struct flow *f)
{
	__u32 off = ETH_HLEN + iph->ihl * 4;
	__u8 tcp[14];	/* ports, seq, ack, data offset, flags */
	__be16 ports[2];
	__u8 icmp[6];	/* type, code, checksum, id */

	if (iph->frag_off & bpf_htons(IP_OFFSET))
		return;
	switch (iph->protocol) {
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
	case IPPROTO_ICMP:
		if (bpf_skb_load_bytes(skb, off, icmp, sizeof(icmp)) < 0)
			return;
		icmp_echo_ports(icmp, f);
		return;
	}
}

/* flow_parse_ipv4 fills f's addresses, protocol and L4 fields from the IPv4
 * packet in skb, behind an Ethernet header. It returns 0, or DROP_INVALID
 * for a truncated header or a bad IHL, and then writes nothing. Identities
 * are left alone. Fields the packet does not have (ports of a non-first
 * fragment) are 0 until the caller, for a fragment, asks lib/frag.h.
 * Inlined: every packet is parsed (lib/global.h). */
static __always_inline int flow_parse_ipv4(struct __sk_buff *skb, struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *iph = data + ETH_HLEN;

	if (!f || (void *)(iph + 1) > data_end || iph->ihl < 5)
		return DROP_INVALID;
	f->saddr = iph->saddr;
	f->daddr = iph->daddr;
	f->proto = iph->protocol;
	f->sport = f->dport = f->policy_dport = 0;
	f->tcp_flags = 0;
	f->fragment = (iph->frag_off & bpf_htons(IP_MF | IP_OFFSET)) != 0;
	ipv4_fill_l4(skb, iph, f);
	return 0;
}

#endif
