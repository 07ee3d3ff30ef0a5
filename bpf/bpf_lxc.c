//go:build ignore
// The line above keeps the go tool from treating this as cgo source.

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* bpf_lxc: what each endpoint loads of its own.
 *
 * from_container runs at tc ingress of the host-side veth and sees every
 * packet the container sends; to_container runs at tc egress of the same
 * veth and sees what the host stack sends to the container. Both hand the
 * endpoint's constants (lib/config.h) to the node programs (bpf_node.c)
 * through skb->cb (lib/cb.h) and tail-call into them. handle_policy is
 * never attached: it sits in ebpfnet_policy_lookups under the endpoint's
 * epid, and the node programs tail-call into it on a flow's first packet
 * to look the flow up in this endpoint's own policy map.
 *
 * That is all an endpoint needs of its own, and it is small on purpose:
 * every endpoint's programs are verified and JIT-compiled when it is
 * created, in proportion to their instructions, while the node programs
 * are loaded once per daemon start. One object is compiled once; each
 * endpoint gets a copy with the constants patched in.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "lib/config.h"
#include "lib/maps.h"
#include "lib/metrics.h"
#include "lib/reason.h"
#include "lib/cb.h"
#include "lib/policy.h"

/* hand_over writes this endpoint's constants into skb->cb and tail-calls
 * the node program in slot call. It returns only when that slot is empty
 * (no daemon has loaded the node programs yet): the packet is dropped and
 * counted. There is no event: events are the node programs' to write.
 * The slot is hidden from the verifier (cb_opaque_slot): an indirect
 * jump per packet instead of a direct one patched into the kernel's text
 * when each endpoint is created. */
static __always_inline int hand_over(struct __sk_buff *skb, __u32 call,
				     __u32 dir)
{
	union lxc_self_words u;
	int i;

	u.self.epid_net = cb_owner(LXC_ID, NETWORK_ID);
	u.self.ipv4 = LXC_IPV4;
#pragma unroll
	for (i = 0; i < MAC_LEN; i++) {
		u.self.lxc_mac[i] = LXC_MAC[i];
		u.self.node_mac[i] = NODE_MAC[i];
	}
#pragma unroll
	for (i = 0; i < CB_WORDS; i++)
		skb->cb[i] = u.w[i];
	bpf_tail_call(skb, &ebpfnet_calls, cb_opaque_slot(skb, call));
	metrics_add(DROP_MISSED_TAIL_CALL, dir, skb->len);
	return TC_ACT_SHOT;
}

SEC("tc")
int from_container(struct __sk_buff *skb)
{
	return hand_over(skb, CALL_FROM_CONTAINER, METRIC_EGRESS);
}

SEC("tc")
int to_container(struct __sk_buff *skb)
{
	return hand_over(skb, CALL_TO_CONTAINER, METRIC_INGRESS);
}

/* handle_policy answers, for a node program, whether this endpoint's
 * policy map holds an entry for the flow in CB_KEY with the identity in
 * CB_REMOTE, and tail-calls the node program whose slot CB_LOOKUP named
 * with the answer in its place. A caller that asks it for another endpoint
 * (a stale array entry) gets a miss.
 *
 * The slot comes from the caller rather than from a constant here on
 * purpose: a tail call with a constant index is patched into the program
 * as a direct jump when it is loaded, and patching live kernel text costs
 * every endpoint's creation ~0.15 ms. This one runs on new flows only, so
 * the indirect jump costs nothing that matters. */
SEC("tc")
int handle_policy(struct __sk_buff *skb)
{
	__u32 key = skb->cb[CB_KEY];
	__u32 next = skb->cb[CB_LOOKUP];
	__u32 lookup = LOOKUP_MISS;

	if (cb_epid(skb->cb[CB_OWNER]) == LXC_ID &&
	    policy_allows(skb->cb[CB_REMOTE], key & 0xffff, (key >> 16) & 0xff,
			  key >> 24))
		lookup = LOOKUP_HIT;
	skb->cb[CB_LOOKUP] = lookup;
	bpf_tail_call(skb, &ebpfnet_calls, next);
	metrics_add(DROP_MISSED_TAIL_CALL, (key >> 24) == POLICY_EGRESS ?
		    METRIC_EGRESS : METRIC_INGRESS, skb->len);
	return TC_ACT_SHOT;
}

char __license[] SEC("license") = "Dual BSD/GPL";
