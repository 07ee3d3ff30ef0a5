/* Policy lookup in the endpoint's own map (ebpfnet_policy): the one part
 * of policy that needs the endpoint's own program (bpf_lxc.c
 * handle_policy). The verdict around it is lib/verdict.h's. */
#ifndef EBPFNET_POLICY_H
#define EBPFNET_POLICY_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include "maps.h"

/* policy_has_identity looks for an entry for one remote identity, from the
 * most to the least specific port match: the port and protocol, any port of
 * the protocol (a rule with a protocol and no port), any port at all. */
static __always_inline int policy_has_identity(__u32 identity, __be16 dport,
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
	if (bpf_map_lookup_elem(&ebpfnet_policy, &key))
		return 1;
	key.proto = 0;
	return bpf_map_lookup_elem(&ebpfnet_policy, &key) != 0;
}

/* policy_allows answers whether the endpoint accepts traffic with the
 * remote identity on (dport, proto) in the given direction: an entry for
 * that identity, or one for any identity (0, the "all" entity or a rule
 * with ports and no peers). */
static __always_inline int policy_allows(__u32 identity, __be16 dport,
					 __u8 proto, __u8 dir)
{
	return policy_has_identity(identity, dport, proto, dir) ||
	       policy_has_identity(0, dport, proto, dir);
}

#endif
