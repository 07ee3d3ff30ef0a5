/* IPv4 fragments: the ports of a datagram's later fragments.
 *
 * Only a datagram's first fragment carries the L4 header, so on their own
 * the others have no ports: conntrack would not know them, and an L4 rule
 * would never match them. As Cilium does, the first fragment leaves its
 * ports in ebpfnet_frag4 under what the fragments of one datagram share
 * (source, destination, IP id, protocol), and the later fragments take them
 * from there: every fragment then meets conntrack and policy as the first
 * one did, and passes or not with it. Nothing is reassembled. A later
 * fragment that overtakes the first finds nothing and keeps port 0, which
 * only an any-port rule matches: the datagram is lost, as a reordered
 * datagram is under Cilium. */
#ifndef EBPFNET_FRAG_H
#define EBPFNET_FRAG_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "global.h"
#include "flow.h"
#include "ipv4.h"
#include "maps.h"

/* frag_ports gives f, a fragment (f->fragment), its datagram's ports: a
 * first fragment records the ports it carries, a later one takes those its
 * first fragment recorded. Call it once the packet's source is known to be
 * genuine: a recorded first fragment speaks for the datagram. Global
 * (lib/global.h): only fragments come here. Returns 0. */
__global_func int frag_ports(struct __sk_buff *skb, struct flow *f)
{
	struct frag_key k = {};
	struct frag_ports *p, v;
	__be16 idoff[2];	/* IP id and fragment offset field */

	if (!f)
		return 0;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + 4, idoff, sizeof(idoff)) < 0)
		return 0;
	k.saddr = f->saddr;
	k.daddr = f->daddr;
	k.id = idoff[0];
	k.proto = f->proto;
	if (!(idoff[1] & bpf_htons(IP_OFFSET))) {
		v.sport = f->sport;
		v.dport = f->dport;
		bpf_map_update_elem(&ebpfnet_frag4, &k, &v, BPF_ANY);
		return 0;
	}
	p = bpf_map_lookup_elem(&ebpfnet_frag4, &k);
	if (!p)
		return 0;
	f->sport = p->sport;
	f->dport = p->dport;
	if (f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP)
		f->policy_dport = p->dport;
	return 0;
}

#endif
