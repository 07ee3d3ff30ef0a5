/* Policy lookup in the endpoint's own map (ebpfnet_policy). */
#ifndef EBPFNET_POLICY_H
#define EBPFNET_POLICY_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include "maps.h"

/* policy_allows answers whether this endpoint accepts traffic with the
 * remote identity on (dport, proto) in the given direction. Entries are tried
 * from most to least specific: exact match, the identity on any port, then
 * any identity on the port. */
static __always_inline int policy_allows(__u32 identity, __be16 dport,
					 __u8 proto, __u8 dir)
{
	struct policy_key key = {
		.identity = identity,
		.dport = dport,
		.proto = proto,
		.direction = dir,
	};

	if (bpf_map_lookup_elem(&ebpfnet_policy, &key))
		return 1;
	key.dport = 0;
	key.proto = 0;
	if (bpf_map_lookup_elem(&ebpfnet_policy, &key))
		return 1;
	key.identity = 0;
	key.dport = dport;
	key.proto = proto;
	return bpf_map_lookup_elem(&ebpfnet_policy, &key) != 0;
}

/* own_flags reads this endpoint's enforcement flags from its own
 * ebpfnet_endpoints entry. No entry (not yet published, or being deleted)
 * means flags clear: allow, as for an endpoint no rule selects. */
static __always_inline __u32 own_flags(void)
{
	struct endpoint_info *self;
	__be32 own = LXC_IPV4;

	self = bpf_map_lookup_elem(&ebpfnet_endpoints, &own);
	return self ? self->flags : 0;
}

/* policy_enforced tells whether flags ask for enforcement in dir. */
static __always_inline int policy_enforced(__u32 flags, __u8 dir)
{
	if (dir == POLICY_INGRESS)
		return flags & EP_F_ENFORCE_INGRESS;
	return flags & EP_F_ENFORCE_EGRESS;
}

#endif
