/* Verdict reasons, metrics and drop notifications.
 *
 * Reasons below 128 are non-drop verdicts, 128 and above are drops, so a
 * reader can tell them apart without a table. The Go mirror is
 * datapath/reason.go; keep the numbers in sync. */
#ifndef EBPFNET_DROP_H
#define EBPFNET_DROP_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "maps.h"
#include "flow.h"
#include "notify.h"

enum {
	REASON_FORWARDED = 0,		/* delivered to a local peer by redirect */
	REASON_TO_STACK = 1,		/* handed to the host stack */
	REASON_ARP_REPLY = 2,		/* ARP answered by the program */
	REASON_POLICY = 3,		/* new flow allowed by policy (verdict events) */
	REASON_POLICY_AUDIT = 4,	/* denied, passed in audit mode */

	DROP_INVALID = 130,		/* malformed or truncated packet */
	DROP_INVALID_SMAC = 131,	/* source MAC is not the container's */
	DROP_INVALID_SIP = 132,		/* source IP is not the container's */
	DROP_POLICY = 133,		/* denied by policy */
	DROP_UNKNOWN_L3 = 134,		/* neither IPv4 nor ARP */
	DROP_NOT_SAME_NETWORK = 135,	/* peer endpoint in another network */
	DROP_INVALID_ARP = 136,		/* ARP that is not Ethernet/IPv4 */
	DROP_WRITE_ERROR = 137,		/* packet rewrite failed */
	DROP_MISSED_TAIL_CALL = 138,	/* receiver has no policy program */
};

static __always_inline void count(__u8 reason, __u8 dir, __u32 len)
{
	struct metrics_key key = { .reason = reason, .dir = dir };
	struct metrics_value *val, zero = {};

	val = bpf_map_lookup_elem(&ebpfnet_metrics, &key);
	if (!val) {
		/* First packet of this kind: create the slot. A concurrent
		 * creator on another CPU makes NOEXIST fail, which is fine. */
		bpf_map_update_elem(&ebpfnet_metrics, &key, &zero, BPF_NOEXIST);
		val = bpf_map_lookup_elem(&ebpfnet_metrics, &key);
		if (!val)
			return;
	}
	/* Per-CPU values: no other CPU writes this slot. */
	val->packets++;
	val->bytes += len;
}

static __always_inline int drop(struct __sk_buff *skb, __u8 reason, __u8 dir,
				const struct flow *f)
{
	count(reason, dir, skb->len);
	notify_send(skb, NOTIFY_DROP, reason,
		    reason == DROP_POLICY ? VERDICT_DENIED : VERDICT_NONE, dir, f);
	return TC_ACT_SHOT;
}

#endif
