/* Connection tracking: only the first packet of a flow meets policy.
 *
 * One node-wide table of flows, each under one key for both directions: its
 * tuple with the lower (address, port) end first (ct_key_of), so every
 * packet, a reply too, needs a single lookup.
 *
 * Lifetime. Every packet of a flow pushes its expiry out by the timeout of
 * the flow's state, and an entry past its expiry is no flow: the next packet
 * meets policy again. The timeouts are Cilium's defaults, ICMP's Linux's
 * (datapath/conntrack.go mirrors them):
 *   TCP before a packet without SYN (a lone SYN, a SYN-ACK)   60 s
 *   TCP established                                      8000 s (2h13m20s,
 *       longer than Linux's 2 h keepalive: an idle connection survives)
 *   TCP after an RST, or a FIN from each end                10 s
 *   UDP and any other protocol                              60 s
 *   ICMP and ICMPv6 (echo)                                  30 s
 * The programs judge expiry themselves, so a flow ends on time whatever the
 * daemon does; the daemon's garbage collector (datapath/ctgc.go) only frees
 * the space of expired entries and counts what is left.
 *
 * Owners. An entry names the local endpoints at its ends (epid). A packet
 * is established only if the endpoints that hold those addresses now are
 * the ones named: a flow of a deleted container never passes for the new
 * container that got its address, even if the entry outlived it. The
 * daemon also deletes a deleted endpoint's entries (DeleteEndpoint), before
 * its epid can be reused.
 *
 * Related. An ICMP error about a packet of a known flow (fragmentation
 * needed, time exceeded...) passes as the flow's own packets do, without
 * policy and without an entry of its own (ct_related). */
#ifndef EBPFNET_CONNTRACK_H
#define EBPFNET_CONNTRACK_H

#include <linux/types.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <bpf/bpf_helpers.h>
#include "global.h"
#include "flow.h"
#include "icmp.h"
#include "maps.h"

/* A reply is established too: nothing treats it differently, and one
 * value less keeps the verifier from walking the rest twice. */
#define CT_NEW 0
#define CT_ESTABLISHED 1

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* Timeouts in seconds (see above). */
#define CT_TIMEOUT_SYN 60
#define CT_TIMEOUT_TCP 8000
#define CT_TIMEOUT_CLOSE 10
#define CT_TIMEOUT_ANY 60
#define CT_TIMEOUT_ICMP 30

#define NSEC_PER_SEC 1000000000ULL

/* Push expires out at most this often: a write per packet would bounce the
 * entry's cache line between CPUs for a second's worth of lifetime. */
#define CT_REFRESH_NS NSEC_PER_SEC

/* ct_key_of fills k with f's tuple, ends ordered: the (address, port) that
 * compares lower, as the integers the CPU loads, goes first. For ICMP echo
 * the id is the requester's port (lib/flow.h), so a request and its reply
 * share a key. datapath/conntrack.go orders keys the same way. It returns
 * which end f's source is: 0 the first, 1 the second. */
static __always_inline __u32 ct_key_of(const struct flow *f, struct ct_key *k)
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
		return 0;
	}
	k->saddr = da;
	k->daddr = sa;
	k->sport = dp;
	k->dport = sp;
	return 1;
}

/* ct_now is the time expires counts in: CLOCK_MONOTONIC at tick
 * granularity, which is plenty for timeouts in seconds and costs no clock
 * read. */
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

/* ct_owners_match tells whether e was made for the endpoints expected at
 * f's ends now: src_epid at f's source, dst_epid at its destination, 0
 * where no local endpoint holds the address (nothing to check). src_hi is
 * ct_key_of's answer for f. */
static __always_inline int ct_owners_match(const struct ct_entry *e, __u32 src_hi,
					   __u32 src_epid, __u32 dst_epid)
{
	__u32 lo = src_hi ? dst_epid : src_epid;
	__u32 hi = src_hi ? src_epid : dst_epid;

	return (!lo || e->epid[0] == lo) && (!hi || e->epid[1] == hi);
}

/* ct_live: e is a flow at now, of the endpoints expected (ct_owners_match). */
static __always_inline int ct_live(const struct ct_entry *e, __u64 now, __u32 src_hi,
				   __u32 src_epid, __u32 dst_epid)
{
	return now <= e->expires && ct_owners_match(e, src_hi, src_epid, dst_epid);
}

/* ct_tcp_state sets the flags and timeout that a TCP packet with
 * tcp_flags, sent by the key's end src_hi (0 or 1), gives the flow in
 * *flags and *timeout. Closing (an RST, or a FIN from each end) wins over
 * established, which wins over opening. tcp_flags 0 (not TCP) changes
 * nothing. Written without branches: each branch here would make the
 * verifier walk everything after it once per outcome. */
static __always_inline void ct_tcp_state(__u32 tcp_flags, __u32 src_hi,
					 __u8 *flags, __u32 *timeout)
{
	__u32 fl = *flags, t = *timeout;
	/* 1 for a TCP packet without SYN: tcp_flags is a byte, and
	 * (x + 0xff) >> 8 is 1 for any x from 1 to 255. */
	__u32 est = ((tcp_flags + 0xff) >> 8) & (((tcp_flags & TCP_FLAG_SYN) >> 1) ^ 1);
	__u32 closing, est_mask, closing_mask;

	fl |= est * CT_F_ESTABLISHED;
	fl |= ((tcp_flags & TCP_FLAG_RST) >> 2) * CT_F_RST;
	fl |= (tcp_flags & TCP_FLAG_FIN) << (1 + (src_hi & 1));	/* CT_F_FIN_LO or _HI */
	closing = ((fl >> 3) | ((fl >> 1) & (fl >> 2))) & 1;	/* RST, or FIN_LO and FIN_HI */
	closing_mask = -closing;
	est_mask = -(fl & CT_F_ESTABLISHED) & ~closing_mask;
	t = (t & ~closing_mask & ~est_mask) | (CT_TIMEOUT_CLOSE & closing_mask) |
	    (CT_TIMEOUT_TCP & est_mask);
	*flags = fl;
	*timeout = t;
}

/* ct_changes_state: a TCP packet that moves the flow on: the first
 * without SYN, or a FIN or an RST. Anything else only refreshes. */
static __always_inline int ct_changes_state(const struct ct_entry *e, __u32 tcp_flags)
{
	if (tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		return 1;
	return !(e->flags & CT_F_ESTABLISHED) && tcp_flags && !(tcp_flags & TCP_FLAG_SYN);
}

/* ct_advance applies a state change (ct_changes_state) to e and restarts
 * its lifetime with the new state's timeout, shorter or longer. Concurrent
 * packets of the flow may race on the write; the worst outcome is a flag
 * set a packet late. Global (lib/global.h): a flow changes state a handful
 * of times. Returns 0. */
__global_func int ct_advance(struct ct_entry *e, __u32 tcp_flags, __u32 src_hi)
{
	__u8 flags;
	__u32 timeout;

	if (!e)
		return 0;
	flags = e->flags;
	timeout = e->timeout;
	ct_tcp_state(tcp_flags, src_hi, &flags, &timeout);
	e->flags = flags;
	e->timeout = timeout;
	e->expires = ct_now() + (__u64)timeout * NSEC_PER_SEC;
	return 0;
}

/* ct_refresh pushes e's expiry out by its timeout, at most once per
 * CT_REFRESH_NS. */
static __always_inline void ct_refresh(struct ct_entry *e, __u64 now)
{
	__u64 expires = now + (__u64)e->timeout * NSEC_PER_SEC;

	if ((__s64)(expires - e->expires) > (__s64)CT_REFRESH_NS)
		e->expires = expires;
}

/* ct_lookup tells whether a packet opens a flow (CT_NEW) or belongs to a
 * live one in either direction (CT_ESTABLISHED), and keeps the flow alive.
 * src_epid and dst_epid are the local endpoints that hold f's source and
 * destination now, 0 for an address that is no local endpoint's. Inlined:
 * every packet looks its flow up (lib/global.h). */
static __always_inline int ct_lookup(const struct flow *f, __u32 src_epid, __u32 dst_epid)
{
	struct ct_entry *e;
	struct ct_key k;
	__u32 src_hi;
	__u64 now;

	if (!f || ct_is_syn(f))
		return CT_NEW;
	src_hi = ct_key_of(f, &k);
	e = bpf_map_lookup_elem(&ebpfnet_ct4, &k);
	if (!e)
		return CT_NEW;
	now = ct_now();
	if (!ct_live(e, now, src_hi, src_epid, dst_epid))
		return CT_NEW;
	if (ct_changes_state(e, f->tcp_flags))
		ct_advance(e, f->tcp_flags, src_hi);
	else
		ct_refresh(e, now);
	return CT_ESTABLISHED;
}

/* ct_timeout_of is the timeout a new flow of proto starts with. */
static __always_inline __u32 ct_timeout_of(__u32 proto)
{
	switch (proto) {
	case IPPROTO_TCP:
		return CT_TIMEOUT_SYN;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		return CT_TIMEOUT_ICMP;
	default:
		return CT_TIMEOUT_ANY;
	}
}

/* ct_create records an allowed new flow of the local endpoints src_epid
 * and dst_epid (as ct_lookup takes them), replacing an entry of the same
 * tuple: expired, someone else's, or a connection the same ports open
 * again. A TCP flow starts opening, or in the state its first packet says
 * (a flow whose entry was evicted comes back established); other
 * protocols have no states. Failure (an update racing on a full
 * table) is not fatal: the flow passes, and its replies meet policy.
 * Global (lib/global.h). Returns 0. */
__global_func int ct_create(const struct flow *f, __u32 src_epid, __u32 dst_epid)
{
	struct ct_entry e = {};
	struct ct_key k;
	__u32 src_hi;

	if (!f)
		return 0;
	src_hi = ct_key_of(f, &k);
	e.timeout = ct_timeout_of(f->proto);
	ct_tcp_state(f->tcp_flags, src_hi, &e.flags, &e.timeout);
	if (src_hi) {
		e.flags |= CT_F_INIT_HI;
		e.epid[0] = dst_epid;
		e.epid[1] = src_epid;
	} else {
		e.epid[0] = src_epid;
		e.epid[1] = dst_epid;
	}
	e.expires = ct_now() + (__u64)e.timeout * NSEC_PER_SEC;
	bpf_map_update_elem(&ebpfnet_ct4, &k, &e, BPF_ANY);
	return 0;
}

/* ct_related tells whether f, a packet of no flow between the local
 * endpoints src_epid and dst_epid (as ct_lookup takes them), is an ICMP
 * error about a packet of a live flow: one its destination sent, of a flow
 * whose owners are still the endpoints at its ends. Such an error passes as
 * the flow's own packets do, creates no entry and refreshes none. Global
 * (lib/global.h): only packets of new flows come here, and all but ICMP
 * leave at once; testing the protocol here rather than at the call keeps
 * the verifier from walking the callers' rest once per outcome. Returns 1
 * or 0. */
__global_func int ct_related(struct __sk_buff *skb, const struct flow *f,
			     __u32 src_epid, __u32 dst_epid)
{
	struct flow q = {};
	struct ct_entry *e;
	struct ct_key k;
	__u32 src_hi, q_dst_epid;

	if (!f || f->proto != IPPROTO_ICMP || icmp_error_quote(skb, &q))
		return 0;
	/* An error goes back to the sender of the packet it quotes, from
	 * that packet's destination or from a hop on the way. */
	if (q.saddr != f->daddr)
		return 0;
	q_dst_epid = q.daddr == f->saddr ? src_epid : 0;
	src_hi = ct_key_of(&q, &k);
	e = bpf_map_lookup_elem(&ebpfnet_ct4, &k);
	return e && ct_live(e, ct_now(), src_hi, dst_epid, q_dst_epid);
}

#endif
