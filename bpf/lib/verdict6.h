/* Verdicts on new IPv6 flows (lib/verdict.h for IPv4): the endpoint's
 * identity and flags from its ebpfnet_endpoints6 entry, and the report. */
#ifndef EBPFNET_VERDICT6_H
#define EBPFNET_VERDICT6_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include "global.h"
#include "maps6.h"
#include "flow.h"
#include "verdict.h"

/* endpoint_self6 is endpoint_self for the endpoint's IPv6 address addr:
 * without an entry of epid's there (not yet published, being deleted, or
 * addr is not the endpoint's), it is init and enforces both directions. */
static __always_inline struct endpoint_info *
endpoint_self6(const union v6addr *addr, __u32 epid, struct self_info *s)
{
	struct endpoint_info *self;

	self = bpf_map_lookup_elem(&ebpfnet_endpoints6, addr);
	if (self && self->epid == epid) {
		s->identity = self->identity;
		s->flags = self->flags;
		return self;
	}
	s->identity = IDENTITY_INIT;
	s->flags = EP_F_ENFORCE_INGRESS | EP_F_ENFORCE_EGRESS;
	return 0;
}

/* policy_report6 is policy_report for an IPv6 flow. Global
 * (lib/global.h). Returns 1 to pass, 0 to drop. */
__global_func int policy_report6(struct __sk_buff *skb, const struct flow6 *f,
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
	notify_send6(skb, NOTIFY_POLICY_VERDICT, reason, mdir, f);
	return reason != DROP_POLICY;
}

#endif
