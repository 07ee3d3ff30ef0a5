/* Counting and dropping in the node programs. */
#ifndef EBPFNET_DROP_H
#define EBPFNET_DROP_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "global.h"
#include "maps.h"
#include "flow.h"
#include "reason.h"
#include "notify.h"
#include "metrics.h"

/* count adds a packet of len bytes to the metric of reason in dir.
 * Inlined: every packet is counted (lib/global.h). Returns 0. */
static __always_inline int count(__u32 reason, __u32 dir, __u32 len)
{
	metrics_add(reason, dir, len);
	return 0;
}

/* drop counts and reports a dropped packet; the caller returns what it
 * returns, TC_ACT_SHOT. Global (lib/global.h): every program has many drop
 * sites, and each one is now a call. */
__global_func int drop(struct __sk_buff *skb, __u32 reason, __u32 dir,
		       const struct flow *f)
{
	count(reason, dir, skb->len);
	notify_send(skb, NOTIFY_DROP, reason, dir, f);
	return TC_ACT_SHOT;
}

/* drop6 is drop for an IPv6 packet. Global (lib/global.h). */
__global_func int drop6(struct __sk_buff *skb, __u32 reason, __u32 dir,
			const struct flow6 *f)
{
	count(reason, dir, skb->len);
	notify_send6(skb, NOTIFY_DROP, reason, dir, f);
	return TC_ACT_SHOT;
}

#endif
