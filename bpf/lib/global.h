/* __global_func: steps the verifier checks once per program.
 *
 * A static __always_inline helper is copied into every call site, and the
 * verifier walks each copy again in every state that reaches it. A BPF
 * global function (non-static, never inlined, described in BTF) is
 * verified once per program on its own, from its signature; a call site
 * then costs a call. Every endpoint loads three programs, and verifying them
 * is most of an endpoint's creation time, so the heavy shared steps are
 * global functions, each defined next to its helpers:
 *
 *   count, drop        lib/drop.h       metrics; drop: count, report, shoot
 *   notify_send        lib/notify.h     the one event writer
 *   flow_parse_ipv4    lib/ipv4.h       IPv4 and L4 header into struct flow
 *   ct_lookup, ct_create  lib/conntrack.h
 *   policy_check       lib/policy.h     verdict on a new flow, and its event
 *   arp_answer         bpf_lxc.c        ARP checks and the reply, in place
 *
 * What the verifier allows of them, and so how their signatures look:
 *  - arguments are scalars, the program context (struct __sk_buff *), or
 *    pointers to memory of a known size (a struct flow on the caller's
 *    stack, which must be initialized before the call). Such a pointer may
 *    be NULL as far as the function knows, so it checks;
 *  - no packet pointers cross a call: the function derives its own from
 *    skb, and the caller re-derives its own after the call;
 *  - the return value is an unknown scalar to the caller: it carries a
 *    code, never a pointer, and the caller tests it rather than trusting
 *    its range;
 *  - they call no helper that changes packet data (bpf_skb_store_bytes,
 *    bpf_skb_change_*...): calling one would invalidate all of the
 *    caller's packet pointers.
 * Scalars are __u32 even where a byte would do: the callee cannot assume
 * the caller cleared the upper bits, and the verifier does not either.
 *
 * Static helpers stay static __always_inline: they are small, and inlined
 * they see the caller's constants, so dead branches are pruned.
 */
#ifndef EBPFNET_GLOBAL_H
#define EBPFNET_GLOBAL_H

#define __global_func __attribute__((noinline))

#endif
