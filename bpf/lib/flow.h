/* struct flow: what policy, conntrack and notifications know of a packet. */
#ifndef EBPFNET_FLOW_H
#define EBPFNET_FLOW_H

#include <linux/types.h>
#include "v6addr.h"

struct flow {
	__be32 saddr;
	__be32 daddr;
	/* TCP/UDP ports. For ICMP echo the echo id stands in for a port, on
	 * the requester's side of the tuple: a request carries it as sport,
	 * a reply as dport, so a reply's reverse tuple is its request's. */
	__be16 sport;
	__be16 dport;
	/* The port policy matches: dport for TCP and UDP, else 0 (an echo id
	 * is no port). Kept apart so that nothing after parsing branches on
	 * proto: the verifier would then walk the rest of the program once
	 * per protocol, which makes endpoint creation slower. */
	__be16 policy_dport;
	__u8 proto;
	__u8 tcp_flags;		/* TCP only: byte 13 of the header, else 0 */
	/* 1 for a fragment of a larger datagram (IP MF or offset set): its
	 * ports are the first fragment's (lib/frag.h). */
	__u8 fragment;
	__u8 pad[3];
	/* Filled in as they become known; 0 in a notification means unknown. */
	__u32 src_identity;
	__u32 dst_identity;
};

/* struct flow6: what the IPv6 pipeline knows of a packet, as struct flow
 * is for IPv4, and where its parser (lib/ipv6.h) found what it needs
 * again: the L4 header, and the Fragment header of a fragment. */
struct flow6 {
	union v6addr saddr;
	union v6addr daddr;
	__be16 sport;		/* as in struct flow; ICMPv6 echo ids too */
	__be16 dport;
	__be16 policy_dport;
	__u8 proto;		/* the upper-layer protocol, past extension headers */
	__u8 tcp_flags;
	__u8 fragment;		/* 1: a fragment (offset or M set in a Fragment header) */
	__u8 icmp_type;		/* ICMPv6 only: the message type, else 0 */
	__u16 l4_off;		/* from the start of the frame; 0: no L4 header here */
	__be32 frag_id;		/* the Fragment header's identification */
	__u16 frag_off;		/* its offset field (host order, 8-byte units) */
	__u8 pad[2];
	__u32 src_identity;
	__u32 dst_identity;
};

#endif
