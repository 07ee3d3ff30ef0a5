/* Metrics per reason (lib/reason.h) and direction, and drops. */
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

/* metrics_slot is the ebpfnet_metrics index of reason in dir. */
static __always_inline __u32 metrics_slot(__u32 reason, __u32 dir)
{
	return (reason & 0xff) << 1 | (dir == METRIC_EGRESS);
}

/* count adds a packet of len bytes to the metric of reason in dir.
 * Global (lib/global.h). Returns 0. */
__global_func int count(__u32 reason, __u32 dir, __u32 len)
{
	__u32 slot = metrics_slot(reason, dir);
	struct metrics_value *val;

	val = bpf_map_lookup_elem(&ebpfnet_metrics, &slot);
	if (!val)
		return 0;
	/* Per-CPU values: no other CPU writes this slot. */
	val->packets++;
	val->bytes += len;
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

#endif
