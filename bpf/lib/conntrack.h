/* Connection tracking: only the first packet of a flow meets policy.
 *
 * One node-wide table of flows, each under one key for both directions: its
 * tuple with the lower (address, port) end first (ct_key_of), so every
 * packet, a reply too, needs a single lookup. An entry lives until the LRU
 * evicts it: there is no FIN/RST tracking, but a TCP SYN without ACK is
 * always a new flow, so a reused tuple meets policy again. The last-seen
 * time is for a future garbage collector.
 *
 * Earlier versions keyed a flow by the tuple of its first packet and looked
 * a reply up twice; datapath/conntrack.go rewrites such keys on restore, so
 * established flows survive an upgrade. */
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

/* ct_key_of fills k with f's tuple, ends ordered: the (address, port) that
 * compares lower, as the integers the CPU loads, goes first. For ICMP echo
 * the id is the requester's port (lib/flow.h), so a request and its reply
 * share a key. datapath/conntrack.go orders keys the same way. */
static __always_inline void ct_key_of(const struct flow *f, struct ct_key *k)
{
	__u32 sa = f->saddr, da = f->daddr;
	__u16 sp = f->sport, dp = f->dport;

	k->proto = f->proto;
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
	if (sa < da || (sa == da && sp <= dp)) {
		k->saddr = sa;
		k->daddr = da;
		k->sport = sp;
		k->dport = dp;
	} else {
		k->saddr = da;
		k->daddr = sa;
		k->sport = dp;
		k->dport = sp;
	}
}

/* ct_now is the time last_seen counts in: CLOCK_MONOTONIC at tick
 * granularity, which is plenty for a refresh once a second and costs no
 * clock read. */
static __always_inline __u64 ct_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

/* ct_is_syn: a connection request opens a new flow even over an old entry.
 * tcp_flags is 0 for anything but TCP, so proto need not be tested. */
static __always_inline int ct_is_syn(const struct flow *f)
{
	return (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

static __always_inline void ct_touch(struct ct_entry *e)
{
	__u64 now = ct_now();

	if (now - e->last_seen > CT_REFRESH_NS)
		e->last_seen = now;
}

/* ct_lookup tells whether a packet opens a flow (CT_NEW) or belongs to one
 * in either direction (CT_ESTABLISHED). Inlined: every packet looks its
 * flow up (lib/global.h). */
static __always_inline int ct_lookup(const struct flow *f)
{
	struct ct_entry *e;
	struct ct_key k;

	if (!f || ct_is_syn(f))
		return CT_NEW;
	ct_key_of(f, &k);
	e = bpf_map_lookup_elem(&ebpfnet_ct4, &k);
	if (!e)
		return CT_NEW;
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
	e.last_seen = ct_now();
	ct_key_of(f, &k);
	bpf_map_update_elem(&ebpfnet_ct4, &k, &e, BPF_ANY);
	return 0;
}

#endif
