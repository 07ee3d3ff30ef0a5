/* skb->cb: what an endpoint's programs and the node programs hand each
 * other across tail calls.
 *
 * An endpoint's object (bpf_lxc.c) is its entry programs and its policy
 * lookup; everything else runs in the node programs (bpf_node.c), verified
 * once per daemon start instead of once per endpoint. The five words of
 * skb->cb survive a tail call, and they are all the node programs learn
 * of the endpoint they run for, so this layout is an ABI between objects
 * loaded at different times: change it together with the slot numbers of
 * ebpfnet_calls (lib/maps.h), so that an old endpoint object never
 * reaches a node program that reads another layout.
 *
 * Entry (from_container, to_container -> node program): the endpoint's
 * constants, struct lxc_self.
 *
 * Policy (node program -> the owner's handle_policy -> policy_verdict):
 *   CB_OWNER   epid | network << 16 of the endpoint whose map is asked
 *   CB_REMOTE  the remote identity
 *   CB_KEY     policy_dport (network order) | proto << 16 | direction << 24
 *   CB_PEER    egress: the receiving endpoint's epid, 0 for the host stack
 *              or another node; ingress: the sending endpoint's epid, 0
 *              from the host stack, CB_PEER_OVERLAY from another node
 *   CB_LOOKUP  in: the ebpfnet_calls slot handle_policy continues in;
 *              out: LOOKUP_*, whether the owner's map holds an entry for
 *              the flow; LOOKUP_SKIPPED when the owner does not enforce
 *              that direction and no lookup ran
 * CB_OWNER is word 0 in both layouts: events name the endpoint in it.
 */
#ifndef EBPFNET_CB_H
#define EBPFNET_CB_H

#include <linux/types.h>
#include <linux/bpf.h>
#include "eth.h"

#define CB_OWNER 0
#define CB_REMOTE 1
#define CB_KEY 2
#define CB_PEER 3
#define CB_LOOKUP 4
#define CB_WORDS 5

/* CB_PEER of a packet that came from another node through the overlay:
 * like a local sender's epid, it makes the verdict deliver the packet
 * straight into the receiver; no epid has the top bit. */
#define CB_PEER_OVERLAY (1U << 31)

/* cb_local_peer is CB_PEER's local endpoint, 0 when the other end is the
 * host stack or another node. */
static __always_inline __u32 cb_local_peer(__u32 peer)
{
	return peer == CB_PEER_OVERLAY ? 0 : peer;
}

#define LOOKUP_MISS 0
#define LOOKUP_HIT 1
#define LOOKUP_SKIPPED 2

/* The constants of lib/config.h, as the entry programs hand them over:
 * exactly the five words of skb->cb. epid and network index are both at
 * most 65535 (datapath validates). */
struct lxc_self {
	__u32 epid_net;		/* LXC_ID | NETWORK_ID << 16 */
	__be32 ipv4;
	__u8 lxc_mac[MAC_LEN];
	__u8 node_mac[MAC_LEN];
};

union lxc_self_words {
	struct lxc_self self;
	__u32 w[CB_WORDS];
};

_Static_assert(sizeof(struct lxc_self) == CB_WORDS * sizeof(__u32),
	       "struct lxc_self must fill skb->cb exactly");

static __always_inline __u32 cb_epid(__u32 owner)
{
	return owner & 0xffff;
}

static __always_inline __u32 cb_network(__u32 owner)
{
	return owner >> 16;
}

static __always_inline __u32 cb_owner(__u32 epid, __u32 network)
{
	return (epid & 0xffff) | network << 16;
}

/* cb_opaque_slot returns slot in a way the verifier cannot follow, once
 * skb->cb holds the words the caller wrote: two reads of the same word,
 * which the verifier takes for two unknown values, differ by zero.
 *
 * A tail call whose slot the verifier knows is patched into the program
 * as a direct jump when the program is loaded, and patching live kernel
 * text stops every CPU (text_poke, one round of IPIs per tail call): it
 * cost 0.23 ms of each endpoint's load here, a quarter of it, whenever the
 * other CPU was idle, as it is between two docker runs. An unknown slot is
 * an indirect jump, ~13 ns per packet through a retpoline. */
static __always_inline __u32 cb_opaque_slot(struct __sk_buff *skb, __u32 slot)
{
	__u32 a = *(volatile __u32 *)&skb->cb[CB_OWNER];
	__u32 b = *(volatile __u32 *)&skb->cb[CB_OWNER];

	return slot + (a - b);
}

static __always_inline __u32 cb_key(__be16 dport, __u8 proto, __u32 dir)
{
	return (__u32)dport | (__u32)proto << 16 | dir << 24;
}

/* lxc_self_from_cb reads what the entry program handed over. */
static __always_inline void lxc_self_from_cb(const struct __sk_buff *skb,
					     struct lxc_self *s)
{
	union lxc_self_words u;
	int i;

#pragma unroll
	for (i = 0; i < CB_WORDS; i++)
		u.w[i] = skb->cb[i];
	*s = u.self;
}

#endif
