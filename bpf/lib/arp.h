/* ARP for IPv4 over Ethernet. linux/if_arp.h stops at the fixed part of the
 * header, so the address part is spelled out here. */
#ifndef EBPFNET_ARP_H
#define EBPFNET_ARP_H

#include <linux/types.h>
#include <bpf/bpf_endian.h>
#include "eth.h"

#define ARP_HRD_ETHER 1
#define ARP_OP_REQUEST 1
#define ARP_OP_REPLY 2

struct arp_eth_ipv4 {
	__be16 hrd;
	__be16 pro;
	__u8 hln;
	__u8 pln;
	__be16 op;
	__u8 sha[MAC_LEN];
	__u8 spa[4];	/* byte arrays: the IPs are not 4-byte aligned */
	__u8 tha[MAC_LEN];
	__u8 tpa[4];
} __attribute__((packed));

static __always_inline __be32 arp_ip(const __u8 *p)
{
	__be32 ip;

	__builtin_memcpy(&ip, p, sizeof(ip));
	return ip;
}

static __always_inline void arp_set_ip(__u8 *p, __be32 ip)
{
	__builtin_memcpy(p, &ip, sizeof(ip));
}

/* arp_is_eth_ipv4 accepts only the one ARP flavour the container may speak. */
static __always_inline int arp_is_eth_ipv4(const struct arp_eth_ipv4 *arp)
{
	return arp->hrd == bpf_htons(ARP_HRD_ETHER) &&
	       arp->pro == bpf_htons(ETH_P_IP) &&
	       arp->hln == MAC_LEN && arp->pln == 4;
}

/* arp_make_reply turns a request into the answer "target is at mac", in
 * place, so the packet can be sent straight back to the container. */
static __always_inline void arp_make_reply(struct ethhdr *eth,
					   struct arp_eth_ipv4 *arp,
					   const volatile __u8 *mac)
{
	__be32 sender = arp_ip(arp->spa);
	__be32 target = arp_ip(arp->tpa);

	__builtin_memcpy(eth->h_dest, arp->sha, MAC_LEN);
	mac_copy(eth->h_source, mac);
	arp->op = bpf_htons(ARP_OP_REPLY);
	__builtin_memcpy(arp->tha, arp->sha, MAC_LEN);
	mac_copy(arp->sha, mac);
	arp_set_ip(arp->spa, target);
	arp_set_ip(arp->tpa, sender);
}

#endif
