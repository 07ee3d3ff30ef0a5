/* Notifications to user space through the ebpfnet_events ring buffer. The
 * Go mirror is datapath/event.go; keep the layout in sync. */
#ifndef EBPFNET_NOTIFY_H
#define EBPFNET_NOTIFY_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "cb.h"
#include "global.h"
#include "flow.h"
#include "maps.h"
#include "reason.h"

enum notify_type {
	NOTIFY_DROP = 1,
	NOTIFY_POLICY_VERDICT = 2,
};

/* Policy verdicts; drops that are not a policy decision carry VERDICT_NONE. */
enum verdict {
	VERDICT_NONE = 0,
	VERDICT_ALLOWED = 1,
	VERDICT_DENIED = 2,
	VERDICT_AUDIT = 3,
};

struct notify {
	__u8 type;
	__u8 reason;
	__u8 verdict;
	__u8 dir;		/* METRIC_INGRESS or METRIC_EGRESS */
	__u32 epid;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
	__u32 src_identity;
	__u32 dst_identity;
	__u32 ifindex;
	__u32 len;
};

/* struct notify6 is an event about an IPv6 packet: struct notify with
 * 16-byte addresses. A reader tells the two apart by the record's length
 * (datapath/event.go). */
struct notify6 {
	__u8 type;
	__u8 reason;
	__u8 verdict;
	__u8 dir;
	__u32 epid;
	union v6addr saddr;
	union v6addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
	__u32 src_identity;
	__u32 dst_identity;
	__u32 ifindex;
	__u32 len;
};

/* verdict_of: a reason says which verdict an event carries. Drops that are
 * not a policy decision have none. */
static __always_inline __u8 verdict_of(__u32 reason)
{
	switch (reason) {
	case REASON_POLICY:
		return VERDICT_ALLOWED;
	case REASON_POLICY_AUDIT:
		return VERDICT_AUDIT;
	case DROP_POLICY:
		return VERDICT_DENIED;
	default:
		return VERDICT_NONE;
	}
}

/* notify_wakeup is the flag an event is submitted with: it wakes the
 * reader only once a quarter of the ring is unread. Otherwise the reader
 * finds the event at its next poll (datapath/event.go, every 100 ms): a
 * wake-up per event cost the daemon ~20 us of CPU per new flow under
 * enforcement, a quarter of a CPU at 9,000 connections per second. */
static __always_inline __u64 notify_wakeup(void)
{
	if (bpf_ringbuf_query(&ebpfnet_events, BPF_RB_AVAIL_DATA) >=
	    EVENTS_WAKEUP_BYTES)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

/* notify_send reports one event, of type NOTIFY_*, for reason (lib/reason.h)
 * in dir (METRIC_*). It is the only writer of events. A full ring buffer (no
 * reader keeping up) loses the event; the packet's fate does not depend on
 * it. Global (lib/global.h). Returns 0. */
__global_func int notify_send(struct __sk_buff *skb, __u32 type, __u32 reason,
			      __u32 dir, const struct flow *f)
{
	struct notify *n;

	if (!f)
		return 0;
	n = bpf_ringbuf_reserve(&ebpfnet_events, sizeof(*n), 0);
	if (!n)
		return 0;
	n->type = type;
	n->reason = reason;
	n->verdict = verdict_of(reason);
	n->dir = dir;
	n->epid = cb_epid(skb->cb[CB_OWNER]);
	n->saddr = f->saddr;
	n->daddr = f->daddr;
	n->sport = f->sport;
	n->dport = f->dport;
	n->proto = f->proto;
	n->pad[0] = n->pad[1] = n->pad[2] = 0;
	n->src_identity = f->src_identity;
	n->dst_identity = f->dst_identity;
	n->ifindex = skb->ifindex;
	n->len = skb->len;
	bpf_ringbuf_submit(n, notify_wakeup());
	return 0;
}

/* notify_send6 is notify_send for an IPv6 packet. Global (lib/global.h).
 * Returns 0. */
__global_func int notify_send6(struct __sk_buff *skb, __u32 type, __u32 reason,
			       __u32 dir, const struct flow6 *f)
{
	struct notify6 *n;

	if (!f)
		return 0;
	n = bpf_ringbuf_reserve(&ebpfnet_events, sizeof(*n), 0);
	if (!n)
		return 0;
	n->type = type;
	n->reason = reason;
	n->verdict = verdict_of(reason);
	n->dir = dir;
	n->epid = cb_epid(skb->cb[CB_OWNER]);
	n->saddr = f->saddr;
	n->daddr = f->daddr;
	n->sport = f->sport;
	n->dport = f->dport;
	n->proto = f->proto;
	n->pad[0] = n->pad[1] = n->pad[2] = 0;
	n->src_identity = f->src_identity;
	n->dst_identity = f->dst_identity;
	n->ifindex = skb->ifindex;
	n->len = skb->len;
	bpf_ringbuf_submit(n, notify_wakeup());
	return 0;
}

#endif
