/* ipcache for IPv6: the identity of a remote IPv6 address that is not a
 * local endpoint (lib/ipcache.h for IPv4). */
#ifndef EBPFNET_IPCACHE6_H
#define EBPFNET_IPCACHE6_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include "maps6.h"
#include "ipcache.h"

/* ipcache6_lookup returns the entry of the longest prefix holding addr,
 * or NULL when the daemon has not described it. */
static __always_inline struct ipcache_value *ipcache6_lookup(const union v6addr *addr)
{
	struct ipcache6_key key = { .prefixlen = 128 };

	__builtin_memcpy(key.addr, addr, sizeof(key.addr));
	return bpf_map_lookup_elem(&ebpfnet_ipcache6, &key);
}

/* ipcache6_identity: an address the daemon has not described is the
 * world. */
static __always_inline __u32 ipcache6_identity(const union v6addr *addr)
{
	struct ipcache_value *v = ipcache6_lookup(addr);

	return v ? v->identity : IDENTITY_WORLD;
}

#endif
