/* Policy lookup in an endpoint's own map, reached through the outer map. */
#ifndef EBPFNET_POLICY_H
#define EBPFNET_POLICY_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include "maps.h"

/* policy_allows answers whether endpoint epid accepts traffic with the remote
 * identity on (dport, proto) in the given direction. Entries are tried from
 * most to least specific: exact match, the identity on any port, then any
 * identity on the port. An endpoint that enforces but has no map denies. */
static __always_inline int policy_allows(__u32 epid, __u32 identity,
					 __be16 dport, __u8 proto, __u8 dir)
{
	struct policy_key key = {
		.identity = identity,
		.dport = dport,
		.proto = proto,
		.direction = dir,
	};
	void *inner;

	inner = bpf_map_lookup_elem(&ebpfnet_policy_maps, &epid);
	if (!inner)
		return 0;
	if (bpf_map_lookup_elem(inner, &key))
		return 1;
	key.dport = 0;
	key.proto = 0;
	if (bpf_map_lookup_elem(inner, &key))
		return 1;
	key.identity = 0;
	key.dport = dport;
	key.proto = proto;
	return bpf_map_lookup_elem(inner, &key) != 0;
}

/* policy_enforced tells whether flags ask for enforcement in dir. */
static __always_inline int policy_enforced(__u32 flags, __u8 dir)
{
	if (dir == POLICY_INGRESS)
		return flags & EP_F_ENFORCE_INGRESS;
	return flags & EP_F_ENFORCE_EGRESS;
}

#endif
