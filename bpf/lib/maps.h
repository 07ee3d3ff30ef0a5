/* The maps every endpoint program shares. All are pinned by name, so the
 * first load creates them in the pin directory and every later endpoint (and
 * the daemon) reuses the same instance. The Go side mirrors these layouts in
 * datapath/maps.go; change both together. */
#ifndef EBPFNET_MAPS_H
#define EBPFNET_MAPS_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "eth.h"

#define ENDPOINTS_MAX 65536
#define POLICY_ENTRIES_MAX 16384
#define EVENTS_BYTES (256 * 1024)
/* Unread event bytes at which an event wakes the reader (lib/notify.h). */
#define EVENTS_WAKEUP_BYTES (EVENTS_BYTES / 4)
#define IPCACHE_MAX 16384
#define CT_MAX 65536
/* Datagrams being fragmented at once, as Cilium sizes its fragments map. */
#define FRAG_MAX 8192

/* endpoint_info.flags: policy enforcement per direction. With both bits
 * clear the endpoint allows everything, whatever its policy map holds.
 * EP_F_AUDIT lets a denied new flow pass, reported with verdict audit. */
enum endpoint_flags {
	EP_F_ENFORCE_INGRESS = 1U << 0,
	EP_F_ENFORCE_EGRESS = 1U << 1,
	EP_F_AUDIT = 1U << 2,
};

/* An endpoint's entry is also where its programs read their own identity
 * and flags, so the daemon changes either with one map write. */
struct endpoint_info {
	__u32 ifindex;		/* host-side veth */
	__u32 epid;
	__u32 identity;		/* security identity, from the labels */
	__u32 network_id;
	__u8 lxc_mac[MAC_LEN];
	__u8 node_mac[MAC_LEN];
	__u32 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32);
	__type(value, struct endpoint_info);
	__uint(max_entries, ENDPOINTS_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ebpfnet_endpoints SEC(".maps");

/* Policy direction as seen from the endpoint that owns the map. */
enum policy_dir {
	POLICY_INGRESS = 0,
	POLICY_EGRESS = 1,
};

struct policy_key {
	__u32 identity;		/* the remote side; 0 = any */
	__be16 dport;		/* 0 = any port */
	__u8 proto;		/* 0 = any protocol */
	__u8 direction;
};

struct policy_entry {
	__u32 flags;
	__u32 pad;
};

/* The endpoint's own policy map. Not pinned by name: every endpoint has its
 * own instance, which the daemon creates, pins as ebpfnet_policy_<epid> and
 * hands to the loader in place of this declaration. Only the endpoint's own
 * handle_policy reads it (bpf_lxc.c), reached by tail call through
 * ebpfnet_policy_lookups. There is no map-in-map: every user-space update
 * of a map-of-maps waits for an RCU grace period, which made endpoint
 * creation slow. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
	__uint(max_entries, POLICY_ENTRIES_MAX);
	/* Allocate on insert: preallocating 16k entries costs ~10 ms per
	 * endpoint and memory for rules that mostly never exist. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ebpfnet_policy SEC(".maps");

/* epid -> that endpoint's handle_policy, the lookup in its own policy map.
 * Prog array updates from user space are a pointer exchange, with no grace
 * period to wait for. (Versions before the node programs kept a whole
 * per-endpoint pipeline in ebpfnet_policy_calls, with another skb->cb
 * layout; the new name keeps old and new programs apart while Restore
 * replaces them.) */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
	__uint(max_entries, ENDPOINTS_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ebpfnet_policy_lookups SEC(".maps");

/* The node programs (bpf_node.c), loaded once per daemon start, by slot.
 * An endpoint's entry programs tail-call into them (lib/cb.h); the daemon
 * replaces a slot atomically when it starts with new code. */
#define CALL_FROM_CONTAINER 0
#define CALL_TO_CONTAINER 1
#define CALL_POLICY_VERDICT 2
/* The IPv6 verdict, where an endpoint's handle_policy returns to for an
 * IPv6 flow. The array's last slot: the other IPv6 node programs are in
 * ebpfnet_calls6 (lib/maps6.h). */
#define CALL_POLICY_VERDICT6 3
#define CALLS_MAX 4

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
	__uint(max_entries, CALLS_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ebpfnet_calls SEC(".maps");

/* ipcache: prefix -> identity of remote addresses that are not local
 * endpoints (host, world, CIDR identities, and in a cluster the endpoints
 * and address blocks of other nodes). A miss is the world. */
struct ipcache_key {
	__u32 prefixlen;	/* LPM trie: bits of addr that count */
	__be32 addr;
};

/* tunnel_endpoint is the IP of the node behind which the prefix lives,
 * for the overlay (lib/overlay.h); 0 for everything not on another node.
 * It took the place of a padding word that versions before the cluster
 * always wrote 0, so old entries read as "not tunnelled". */
struct ipcache_value {
	__u32 identity;
	__be32 tunnel_endpoint;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, IPCACHE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);	/* required for LPM tries */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ebpfnet_ipcache SEC(".maps");

/* Networks, by their node-local index (endpoint_info.network_id): the
 * subnet, so that traffic to or from another node is only carried within
 * one network (lib/overlay.h). An array: one bounds check per lookup. */
#define NETWORKS_MAX 65536

struct network_info {
	__be32 subnet;
	__be32 mask;		/* network order: addr & mask == subnet */
	__be32 gateway;		/* the host's address in the subnet */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct network_info);
	__uint(max_entries, NETWORKS_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ebpfnet_networks SEC(".maps");

/* Conntrack (lib/conntrack.h): a flow's tuple, the end with the lower
 * (address, port) first, the same key for both directions. For ICMP echo
 * the echo id takes the place of the requester's port. */
struct ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* ct_entry.flags (lib/conntrack.h) */
enum ct_flags {
	CT_F_ESTABLISHED = 1U << 0,	/* TCP: a packet without SYN was seen */
	CT_F_FIN_LO = 1U << 1,		/* TCP: FIN from the key's first end */
	CT_F_FIN_HI = 1U << 2,		/* TCP: FIN from the key's second end */
	CT_F_RST = 1U << 3,		/* TCP: RST from either end */
	CT_F_INIT_HI = 1U << 4,		/* the flow's first packet came from the key's second end */
};

/* A flow's state. The programs judge it on every packet: an entry past
 * expires is no flow at all, and one whose local ends are not the endpoints
 * that hold those addresses now is someone else's (lib/conntrack.h). The
 * daemon's garbage collector (datapath/ctgc.go) deletes what has expired.
 * Versions before this layout kept only a last-seen time (8 bytes);
 * datapath/ctupgrade.go carries their flows over. */
struct ct_entry {
	__u64 expires;		/* CLOCK_MONOTONIC ns (coarse) after which the flow is gone */
	__u32 timeout;		/* seconds each packet of the flow keeps it alive, by its state */
	__u16 epid[2];		/* endpoint at the key's first and second end; 0: not a local endpoint */
	__u8 flags;		/* CT_F_* */
	__u8 pad[7];
};

/* LRU: a full table evicts the least recently used flow instead of
 * refusing new ones; an evicted flow's next packet meets policy again. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, CT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ebpfnet_ct4 SEC(".maps");

/* IPv4 fragments (lib/frag.h): the datagram a fragment belongs to, and the
 * ports its first fragment carried. */
struct frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 proto;
	__u8 pad;
};

struct frag_ports {
	__be16 sport;
	__be16 dport;
};

/* LRU: a datagram is reassembled within milliseconds, so the oldest
 * entries are the ones nobody needs. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag_key);
	__type(value, struct frag_ports);
	__uint(max_entries, FRAG_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ebpfnet_frag4 SEC(".maps");

/* Metric direction, as Cilium counts it: from the container is egress.
 * Events carry it too. */
enum metric_dir {
	METRIC_INGRESS = 1,
	METRIC_EGRESS = 2,
};

/* Metrics: packets and bytes per reason (lib/reason.h, a byte) and
 * direction, in a per-CPU array indexed by metrics_slot (lib/metrics.h):
 * reason * 2, plus one for egress. An array lookup is a bounds check and an
 * address computation that the JIT inlines; the per-CPU hash it replaces
 * hashed a key on every packet. The Go side (datapath/maps.go) reads the
 * slots back into (reason, direction) keys. */
#define METRICS_SLOTS 512

struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct metrics_value);
	__uint(max_entries, METRICS_SLOTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ebpfnet_metrics SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ebpfnet_events SEC(".maps");

#endif
