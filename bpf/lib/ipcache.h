/* ipcache: the identity of a remote address that is not a local endpoint. */
#ifndef EBPFNET_IPCACHE_H
#define EBPFNET_IPCACHE_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include "maps.h"

/* Reserved identities, numbered as Cilium numbers them (Go: identity). */
enum reserved_identity {
	IDENTITY_HOST = 1,
	IDENTITY_WORLD = 2,
	IDENTITY_INIT = 5,
};

/* ipcache_lookup returns the entry of the longest prefix holding addr,
 * or NULL when the daemon has not described it. */
static __always_inline struct ipcache_value *ipcache_lookup(__be32 addr)
{
	struct ipcache_key key = { .prefixlen = 32, .addr = addr };

	return bpf_map_lookup_elem(&ebpfnet_ipcache, &key);
}

/* ipcache_identity returns the identity of the longest prefix holding
 * addr; an address the daemon has not described is the world. */
static __always_inline __u32 ipcache_identity(__be32 addr)
{
	struct ipcache_value *v = ipcache_lookup(addr);

	return v ? v->identity : IDENTITY_WORLD;
}

#endif
