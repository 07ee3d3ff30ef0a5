/* IPv6 fragments: the ports of a datagram's later fragments, as lib/frag.h
 * gives them for IPv4. A fragment carries a Fragment header (lib/ipv6.h
 * records its identification and offset in the flow); only the first
 * fragment (offset 0) carries the L4 header. */
#ifndef EBPFNET_FRAG6_H
#define EBPFNET_FRAG6_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include "global.h"
#include "flow.h"
#include "maps6.h"

/* frag6_ports gives f, a fragment (f->fragment), its datagram's ports: a
 * first fragment records the ports it carries, a later one takes those its
 * first fragment recorded. Call it once the source is known to be genuine.
 * Global (lib/global.h): only fragments come here. Returns 0. */
__global_func int frag6_ports(struct flow6 *f)
{
	struct frag6_key k = {};
	struct frag_ports *p, v;

	if (!f)
		return 0;
	k.saddr = f->saddr;
	k.daddr = f->daddr;
	k.id = f->frag_id;
	k.proto = f->proto;
	if (!f->frag_off) {
		v.sport = f->sport;
		v.dport = f->dport;
		bpf_map_update_elem(&ebpfnet_frag6, &k, &v, BPF_ANY);
		return 0;
	}
	p = bpf_map_lookup_elem(&ebpfnet_frag6, &k);
	if (!p)
		return 0;
	f->sport = p->sport;
	f->dport = p->dport;
	if (f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP)
		f->policy_dport = p->dport;
	return 0;
}

#endif
