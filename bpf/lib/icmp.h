/* ICMP errors: the packet an error is about.
 *
 * A destination unreachable (fragmentation needed among them), time
 * exceeded or parameter problem message quotes the IP header and the first
 * 8 bytes of the packet that caused it. Conntrack (lib/conntrack.h)
 * looks the quoted packet's flow up, so that an error belonging to an
 * allowed flow passes as the flow's own packets do: what the kernel's
 * conntrack calls RELATED. */
#ifndef EBPFNET_ICMP_H
#define EBPFNET_ICMP_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "global.h"
#include "flow.h"
#include "ipv4.h"

#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMP_HDR_LEN 8

/* icmp_is_error: the types that quote the packet they are about. */
static __always_inline int icmp_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
	       type == ICMP_PARAMETERPROB;
}

/* icmp_error_quote fills q with the tuple of the packet that the ICMP error
 * in skb (IPv4 behind Ethernet) quotes, as flow_parse_ipv4 would have
 * parsed that packet: addresses, protocol, ports or echo id. It returns 0,
 * or -1 when skb is no ICMP error, or quotes a packet whose tuple cannot be
 * read (truncated, a non-first fragment, another protocol than TCP, UDP or
 * ICMP echo). Global (lib/global.h): only new ICMP flows come here. */
__global_func int icmp_error_quote(struct __sk_buff *skb, struct flow *q)
{
	struct iphdr ip;
	__u8 icmp[6];	/* type, code, checksum, id (of a quoted echo) */
	__be16 ports[2];
	__u32 off = ETH_HLEN;

	if (!q)
		return -1;
	if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0 ||
	    ip.protocol != IPPROTO_ICMP || ip.ihl < 5 ||
	    (ip.frag_off & bpf_htons(IP_OFFSET)))
		return -1;
	off += ip.ihl * 4;
	if (bpf_skb_load_bytes(skb, off, icmp, sizeof(icmp)) < 0 ||
	    !icmp_is_error(icmp[0]))
		return -1;
	off += ICMP_HDR_LEN;
	if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0 || ip.ihl < 5 ||
	    (ip.frag_off & bpf_htons(IP_OFFSET)))
		return -1;
	q->saddr = ip.saddr;
	q->daddr = ip.daddr;
	q->proto = ip.protocol;
	q->sport = q->dport = 0;
	off += ip.ihl * 4;
	switch (ip.protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return -1;
		q->sport = ports[0];
		q->dport = ports[1];
		return 0;
	case IPPROTO_ICMP:
		if (bpf_skb_load_bytes(skb, off, icmp, sizeof(icmp)) < 0)
			return -1;
		icmp_echo_ports(icmp, q);
		return 0;
	}
	return -1;
}

#endif
