/* Metrics: packets and bytes per reason (lib/reason.h) and direction. */
#ifndef EBPFNET_METRICS_H
#define EBPFNET_METRICS_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include "maps.h"

/* metrics_slot is the ebpfnet_metrics index of reason in dir. */
static __always_inline __u32 metrics_slot(__u32 reason, __u32 dir)
{
	return (reason & 0xff) << 1 | (dir == METRIC_EGRESS);
}

/* metrics_add adds a packet of len bytes to the metric of reason in dir. */
static __always_inline void metrics_add(__u32 reason, __u32 dir, __u32 len)
{
	__u32 slot = metrics_slot(reason, dir);
	struct metrics_value *val;

	val = bpf_map_lookup_elem(&ebpfnet_metrics, &slot);
	if (!val)
		return;
	/* Per-CPU values: no other CPU writes this slot. */
	val->packets++;
	val->bytes += len;
}

#endif
