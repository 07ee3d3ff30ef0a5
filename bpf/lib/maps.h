/* The maps every endpoint program shares. All are pinned by name, so the
 * first load creates them in the pin directory and every later endpoint (and
 * the daemon) reuses the same instance. The Go side mirrors these layouts in
 * datapath/maps.go; change both together. */
#ifndef EBPFNET_MAPS_H
#define EBPFNET_MAPS_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "config.h"

#define ENDPOINTS_MAX 65536
#define POLICY_ENTRIES_MAX 16384
#define METRICS_MAX 1024
#define EVENTS_BYTES (256 * 1024)

/* endpoint_info.flags: policy enforcement per direction. With both bits
 * clear the endpoint allows everything, whatever its policy map holds. */
#define EP_F_ENFORCE_INGRESS (1U << 0)
#define EP_F_ENFORCE_EGRESS (1U << 1)

struct endpoint_info {
	__u32 ifindex;		/* host-side veth */
	__u32 epid;
	__u32 identity;
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
#define POLICY_INGRESS 0
#define POLICY_EGRESS 1

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

/* Sizes, not BTF types: clang emits only a forward declaration for types
 * reached this deep through the outer map, and loaders reject that. */
struct policy_inner {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(key_size, sizeof(struct policy_key));
	__uint(value_size, sizeof(struct policy_entry));
	__uint(max_entries, POLICY_ENTRIES_MAX);
	/* Allocate on insert: preallocating 16k entries costs ~10 ms per
	 * endpoint and memory for rules that mostly never exist. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
};

/* epid -> that endpoint's policy map (ebpfnet_policy_<epid>). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, ENDPOINTS_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct policy_inner);
} ebpfnet_policy_maps SEC(".maps");

/* Metric direction, as Cilium counts it: from the container is egress. */
#define METRIC_INGRESS 1
#define METRIC_EGRESS 2

struct metrics_key {
	__u8 reason;
	__u8 dir;
	__u16 pad;
};

struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct metrics_key);
	__type(value, struct metrics_value);
	__uint(max_entries, METRICS_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ebpfnet_metrics SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ebpfnet_events SEC(".maps");

#endif
