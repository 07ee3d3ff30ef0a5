/* Verdicts on new flows in the node programs: the endpoint's identity and
 * enforcement flags, and the report of what its policy lookup answered. */
#ifndef EBPFNET_VERDICT_H
#define EBPFNET_VERDICT_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include "global.h"
#include "maps.h"
#include "flow.h"
#include "cb.h"
#include "drop.h"
#include "notify.h"
#include "ipcache.h"

/* What an endpoint is at this moment, from its ebpfnet_endpoints entry. */
struct self_info {
	__u32 identity;
	__u32 flags;
};

/* endpoint_self reads the identity and flags of endpoint epid at addr from
 * its ebpfnet_endpoints entry. Without one (not yet published, or being
 * deleted) it is init and enforces both directions with whatever its map
 * holds: an endpoint the daemon has not described is never allow-all. An
 * entry under its address with another epid is a successor's (the address
 * was reused while this endpoint's veth was still being deleted), and does
 * not describe it either. It returns the entry when it is epid's. */
static __always_inline struct endpoint_info *
endpoint_self(__be32 addr, __u32 epid, struct self_info *s)
{
	struct endpoint_info *self;

	self = bpf_map_lookup_elem(&ebpfnet_endpoints, &addr);
	if (self && self->epid == epid) {
		s->identity = self->identity;
		s->flags = self->flags;
		return self;
	}
	s->identity = IDENTITY_INIT;
	s->flags = EP_F_ENFORCE_INGRESS | EP_F_ENFORCE_EGRESS;
	return 0;
}

/* policy_enforced tells whether flags ask for enforcement in dir. */
static __always_inline int policy_enforced(__u32 flags, __u32 dir)
{
	if (dir == POLICY_INGRESS)
		return flags & EP_F_ENFORCE_INGRESS;
	return flags & EP_F_ENFORCE_EGRESS;
}

/* policy_report turns the owner's lookup (LOOKUP_*) into the verdict on a
 * new flow in dir and reports it when enforcement was on: audit mode turns
 * a denial into a reported pass. It returns 1 to pass, 0 to drop (the
 * caller drops as DROP_POLICY). Global (lib/global.h). */
__global_func int policy_report(struct __sk_buff *skb, const struct flow *f,
				__u32 lookup, __u32 flags, __u32 dir)
{
	__u32 mdir, reason = REASON_POLICY;

	if (!f)
		return 0;
	if (lookup == LOOKUP_SKIPPED)
		return 1;
	mdir = dir == POLICY_EGRESS ? METRIC_EGRESS : METRIC_INGRESS;
	if (lookup != LOOKUP_HIT) {
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
