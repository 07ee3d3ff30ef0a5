/* Connection tracking for IPv6: lib/conntrack.h's flows, states,
 * timeouts, owners and related errors, in ebpfnet_ct6 under a key of
 * 16-byte addresses. Only the key and the ICMPv6 error quote differ; the
 * entry and everything judged of it are IPv4's. */
#ifndef EBPFNET_CONNTRACK6_H
#define EBPFNET_CONNTRACK6_H

#include <linux/types.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <bpf/bpf_helpers.h>
#include "global.h"
#include "flow.h"
#include "conntrack.h"
#include "icmp6.h"
#include "maps6.h"

/* ct6_key_of fills k with f's tuple, the lower (address, port) end first:
 * addresses compare as their two 64-bit words, as the CPU loads them,
 * first word first (datapath/conntrack6.go orders keys the same way). It
 * returns which end f's source is: 0 the first, 1 the second. */
static __always_inline __u32 ct6_key_of(const struct flow6 *f, struct ct6_key *k)
{
	__u64 s0 = f->saddr.d[0], s1 = f->saddr.d[1];
	__u64 d0 = f->daddr.d[0], d1 = f->daddr.d[1];
	__u16 sp = f->sport, dp = f->dport;
	int lo = s0 < d0 || (s0 == d0 && (s1 < d1 || (s1 == d1 && sp <= dp)));

	k->proto = f->proto;
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
	if (lo) {
		k->saddr = f->saddr;
		k->daddr = f->daddr;
		k->sport = sp;
		k->dport = dp;
		return 0;
	}
	k->saddr = f->daddr;
	k->daddr = f->saddr;
	k->sport = dp;
	k->dport = sp;
	return 1;
}

/* ct6_lookup is ct_lookup for IPv6. Inlined: every packet looks its flow
 * up (lib/global.h). */
static __always_inline int ct6_lookup(const struct flow6 *f, __u32 src_epid, __u32 dst_epid)
{
	struct ct_entry *e;
	struct ct6_key k;
	__u32 src_hi;
	__u64 now;

	if (!f || (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
		return CT_NEW;
	src_hi = ct6_key_of(f, &k);
	e = bpf_map_lookup_elem(&ebpfnet_ct6, &k);
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

/* ct6_create is ct_create for IPv6. Global (lib/global.h). Returns 0. */
__global_func int ct6_create(const struct flow6 *f, __u32 src_epid, __u32 dst_epid)
{
	struct ct_entry e = {};
	struct ct6_key k;
	__u32 src_hi;

	if (!f)
		return 0;
	src_hi = ct6_key_of(f, &k);
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
	bpf_map_update_elem(&ebpfnet_ct6, &k, &e, BPF_ANY);
	return 0;
}

/* ct6_related is ct_related for IPv6: f, a packet of no flow between
 * src_epid and dst_epid, is an ICMPv6 error (packet too big among them)
 * about a packet of a live flow, one its destination sent. Global
 * (lib/global.h). Returns 1 or 0. */
__global_func int ct6_related(struct __sk_buff *skb, const struct flow6 *f,
			      __u32 src_epid, __u32 dst_epid)
{
	struct flow6 q = {};
	struct ct_entry *e;
	struct ct6_key k;
	__u32 src_hi, q_dst_epid;

	if (!f || f->proto != IPPROTO_ICMPV6 || icmp6_error_quote(skb, f, &q))
		return 0;
	if (!v6_eq(&q.saddr, &f->daddr))
		return 0;
	q_dst_epid = v6_eq(&q.daddr, &f->saddr) ? src_epid : 0;
	src_hi = ct6_key_of(&q, &k);
	e = bpf_map_lookup_elem(&ebpfnet_ct6, &k);
	return e && ct_live(e, ct_now(), src_hi, dst_epid, q_dst_epid);
}

#endif
