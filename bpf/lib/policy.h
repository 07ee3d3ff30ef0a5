/* Policy: the endpoint's own identity and flags, the lookup in its own map
 * (ebpfnet_policy), and the verdict on a new flow. */
#ifndef EBPFNET_POLICY_H
#define EBPFNET_POLICY_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include "global.h"
#include "maps.h"
#include "flow.h"
#include "drop.h"
#include "notify.h"
#include "ipcache.h"

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

/* policy_allows answers whether this endpoint accepts traffic with the
 * remote identity on (dport, proto) in the given direction: an entry for
 * that identity, or one for any identity (0, the "all" entity or a rule
 * with ports and no peers). */
static __always_inline int policy_allows(__u32 identity, __be16 dport,
					 __u8 proto, __u8 dir)
{
	return policy_has_identity(identity, dport, proto, dir) ||
	       policy_has_identity(0, dport, proto, dir);
}

/* What this endpoint is at this moment, from its ebpfnet_endpoints entry. */
struct self_info {
	__u32 identity;
	__u32 flags;
};

/* endpoint_self reads this endpoint's identity and flags from its own
 * ebpfnet_endpoints entry. Without one (not yet published, or being
 * deleted) it is init and enforces both directions with whatever its map
 * holds: an endpoint the daemon has not described is never allow-all. An
 * entry under its address with another epid is a successor's (the address
 * was reused while this endpoint's veth was still being deleted), and does
 * not describe it either. */
static __always_inline void endpoint_self(struct self_info *s)
{
	struct endpoint_info *self;
	__be32 own = LXC_IPV4;

	self = bpf_map_lookup_elem(&ebpfnet_endpoints, &own);
	if (self && self->epid == LXC_ID) {
		s->identity = self->identity;
		s->flags = self->flags;
		return;
	}
	s->identity = IDENTITY_INIT;
	s->flags = EP_F_ENFORCE_INGRESS | EP_F_ENFORCE_EGRESS;
}

/* policy_enforced tells whether flags ask for enforcement in dir. */
static __always_inline int policy_enforced(__u32 flags, __u32 dir)
{
	if (dir == POLICY_INGRESS)
		return flags & EP_F_ENFORCE_INGRESS;
	return flags & EP_F_ENFORCE_EGRESS;
}

/* policy_check decides whether a new flow may pass this endpoint in dir
 * (POLICY_*; the remote identity is f's destination for egress, its source
 * for ingress), given the endpoint's flags, and reports the verdict when
 * enforcement is on. Audit mode turns a denial into a reported pass. The
 * caller drops on 0. Global (lib/global.h). */
__global_func int policy_check(struct __sk_buff *skb, const struct flow *f,
			       __u32 flags, __u32 dir)
{
	__u32 remote, mdir, reason = REASON_POLICY;

	if (!f)
		return 0;
	if (!policy_enforced(flags, dir))
		return 1;
	remote = dir == POLICY_EGRESS ? f->dst_identity : f->src_identity;
	mdir = dir == POLICY_EGRESS ? METRIC_EGRESS : METRIC_INGRESS;
	if (!policy_allows(remote, f->policy_dport, f->proto, dir)) {
		reason = DROP_POLICY;
		if (flags & EP_F_AUDIT) {
			reason = REASON_POLICY_AUDIT;
			count(reason, mdir, skb->len);
		}
	}
	notify_send(skb, NOTIFY_POLICY_VERDICT, reason, mdir, f);
	return reason != DROP_POLICY;
}

#endif
