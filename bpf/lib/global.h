/* __global_func: steps the verifier checks once per program, for the cold
 * paths of the node programs.
 *
 * A static __always_inline helper is copied into every call site, and the
 * verifier walks each copy again in every state that reaches it. A BPF
 * global function (non-static, never inlined, described in BTF) is
 * verified once per program on its own, from its signature; a call site
 * then costs a call.
 *
 * Only the node programs (bpf_node.c) use them. They are loaded once per
 * daemon start, so their size is start-up time, not endpoint creation
 * (an endpoint's own object, bpf_lxc.c, is a few dozen instructions). The
 * split follows the packet:
 *  - what every packet runs is inlined, for speed: parsing
 *    (flow_parse_ipv4), the conntrack lookup (ct_lookup), counting (count);
 *  - what only some packets run, or only the first of a flow, is global,
 *    so the many sites do not multiply the verifier's work:
 *      drop                lib/drop.h       count, report, shoot
 *      notify_send         lib/notify.h     the one event writer
 *      ct_create           lib/conntrack.h
 *      policy_report       lib/verdict.h    verdict on a new flow, and its event
 *      arp_answer          bpf_node.c       ARP checks and the reply, in place
 *
 * What the verifier allows of them, and so how their signatures look:
 *  - arguments are scalars, the program context (struct __sk_buff *), or
 *    pointers to memory of a known size (a struct on the caller's stack,
 *    which must be initialized before the call). Such a pointer may be
 *    NULL as far as the function knows, so it checks;
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
 */
#ifndef EBPFNET_GLOBAL_H
#define EBPFNET_GLOBAL_H

#define __global_func __attribute__((noinline))

#endif
