/* The IPv6 maps. Only the node programs (bpf_node.c) include this: an
 * endpoint's own object (bpf_lxc.c) hands its packets to the node programs
 * whatever their family, so it neither declares nor loads these, and stays
 * byte for byte what it was before IPv6 (an object pinned by an earlier
 * version is the current one). Every map is pinned by name, created by the
 * first daemon that knows it: additive to what earlier versions pinned.
 * The Go side mirrors the layouts in datapath/maps6.go; change both
 * together. */
#ifndef EBPFNET_MAPS6_H
#define EBPFNET_MAPS6_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "maps.h"
#include "v6addr.h"

/* IPv6 address -> endpoint: the container's own addresses (a packet's
 * IPv6 source is the container's only if its entry names the sender's
 * epid: anti-spoofing and the sender's identity and flags in one lookup),
 * and local peers by destination. The value is ebpfnet_endpoints' own
 * type: a dual-stack endpoint has one entry per family, each the whole
 * truth for its family's packets (datapath/endpoint6.go writes both). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, union v6addr);
	__type(value, struct endpoint_info);
	__uint(max_entries, ENDPOINTS_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ebpfnet_endpoints6 SEC(".maps");

/* ipcache for IPv6 prefixes (lib/ipcache.h): the value is the IPv4
 * ipcache's, whose tunnel endpoint is the IPv4 underlay address of the
 * node behind the prefix. */
struct ipcache6_key {
	__u32 prefixlen;	/* LPM trie: bits of addr that count */
	__be32 addr[4];		/* right after prefixlen: no union's 8-byte alignment */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache6_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, IPCACHE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);	/* required for LPM tries */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ebpfnet_ipcache6 SEC(".maps");

/* A network's IPv6 subnet by its node-local index, as ebpfnet_networks
 * holds the IPv4 one: traffic between nodes stays within one network
 * (lib/overlay.h). All zeroes (mask 0): the network has no IPv6. */
struct network6_info {
	union v6addr subnet;
	union v6addr mask;
	union v6addr gateway;	/* the host's address in the subnet */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct network6_info);
	__uint(max_entries, NETWORKS_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ebpfnet_networks6 SEC(".maps");

/* Conntrack for IPv6 (lib/conntrack6.h): the IPv4 table's logic and entry,
 * under a key of 16-byte addresses, ends ordered as there. */
struct ct6_key {
	union v6addr saddr;
	union v6addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct6_key);
	__type(value, struct ct_entry);
	__uint(max_entries, CT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ebpfnet_ct6 SEC(".maps");

/* IPv6 fragments (lib/frag6.h): the datagram a fragment belongs to (its
 * Fragment header's 32-bit identification), and the ports its first
 * fragment carried (struct frag_ports, as for IPv4). */
struct frag6_key {
	union v6addr saddr;
	union v6addr daddr;
	__be32 id;
	__u8 proto;
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag6_key);
	__type(value, struct frag_ports);
	__uint(max_entries, FRAG_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ebpfnet_frag6 SEC(".maps");

/* The IPv6 node programs, by slot. ebpfnet_calls cannot grow: its size is
 * part of the pinned map every endpoint object of every version holds,
 * and its one free slot went to CALL_POLICY_VERDICT6 (which an endpoint's
 * handle_policy must reach there). The node programs of ebpfnet_calls
 * tail-call into these for ETH_P_IPV6, with the entry layout of skb->cb
 * (lib/cb.h) unchanged; node_from_overlay does the same. */
#define CALL6_FROM_CONTAINER 0
#define CALL6_TO_CONTAINER 1
#define CALL6_FROM_OVERLAY 2
#define CALLS6_MAX 8

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
	__uint(max_entries, CALLS6_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ebpfnet_calls6 SEC(".maps");

#endif
