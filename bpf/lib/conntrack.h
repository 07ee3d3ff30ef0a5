/* Connection tracking: only the first packet of a flow meets policy.
 *
 * One node-wide table of tuples in the direction of the flow's first
 * packet. A packet whose own tuple is there belongs to an established flow;
 * one whose reverse tuple is there is a reply. Entries live until the LRU
 * evicts them: there is no FIN/RST tracking, but a TCP SYN without ACK is
 * always a new flow, so a reused tuple meets policy again. The last-seen
 * time is for a future garbage collector. */
#ifndef EBPFNET_CONNTRACK_H
#define EBPFNET_CONNTRACK_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include "global.h"
#include "flow.h"
#include "maps.h"

/* A reply is established too: nothing treats it differently, and one
 * value less keeps the verifier from walking the rest twice. */
#define CT_NEW 0
#define CT_ESTABLISHED 1

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

/* Refresh last_seen at most this often: a write per packet would bounce the
 * entry's cache line between CPUs for nothing a GC needs. */
#define CT_REFRESH_NS 1000000000ULL

static __always_inline void ct_tuple(const struct flow *f, struct ct_key *k)
{
	k->saddr = f->saddr;
	k->daddr = f->daddr;
	k->sport = f->sport;
	k->dport = f->dport;
	k->proto = f->proto;
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
}

static __always_inline void ct_reverse(const struct flow *f, struct ct_key *k)
{
	k->saddr = f->daddr;
	k->daddr = f->saddr;
	k->sport = f->dport;
	k->dport = f->sport;
	k->proto = f->proto;
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
}

/* ct_is_syn: a connection request opens a new flow even over an old entry.
 * tcp_flags is 0 for anything but TCP, so proto need not be tested. */
static __always_inline int ct_is_syn(const struct flow *f)
{
	return (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

static __always_inline void ct_touch(struct ct_entry *e)
{
	__u64 now = bpf_ktime_get_ns();

	if (now - e->last_seen > CT_REFRESH_NS)
		e->last_seen = now;
}

/* ct_lookup tells whether a packet opens a flow (CT_NEW) or belongs to one
 * in either direction (CT_ESTABLISHED). Global (lib/global.h). */
__global_func int ct_lookup(const struct flow *f)
{
	struct ct_entry *e;
	struct ct_key k;

	if (!f || ct_is_syn(f))
		return CT_NEW;
	ct_tuple(f, &k);
	e = bpf_map_lookup_elem(&ebpfnet_ct4, &k);
	if (!e) {
		ct_reverse(f, &k);
		e = bpf_map_lookup_elem(&ebpfnet_ct4, &k);
		if (!e)
			return CT_NEW;
	}
	ct_touch(e);
	return CT_ESTABLISHED;
}

/* ct_create records an allowed new flow. Failure (an update racing on a
 * full table) is not fatal: the flow passes, and its replies meet policy.
 * Global (lib/global.h). Returns 0. */
__global_func int ct_create(const struct flow *f)
{
	struct ct_entry e = {};
	struct ct_key k;

	if (!f)
		return 0;
	e.last_seen = bpf_ktime_get_ns();
	ct_tuple(f, &k);
	bpf_map_update_elem(&ebpfnet_ct4, &k, &e, BPF_ANY);
	return 0;
}

#endif
