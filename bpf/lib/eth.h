/* Ethernet helpers: MAC comparison and copy. */
#ifndef EBPFNET_ETH_H
#define EBPFNET_ETH_H

#include <linux/types.h>
#include <linux/if_ether.h>

#define MAC_LEN 6

/* mac_eq compares a packet MAC with another byte by byte: a .rodata
 * constant is volatile, so a plain memcmp cannot be used. */
static __always_inline int mac_eq(const __u8 *pkt, const volatile __u8 *cst)
{
	int i;

#pragma unroll
	for (i = 0; i < MAC_LEN; i++)
		if (pkt[i] != cst[i])
			return 0;
	return 1;
}

/* mac_copy writes a MAC (constant or map value) into the packet. */
static __always_inline void mac_copy(__u8 *dst, const volatile __u8 *src)
{
	int i;

#pragma unroll
	for (i = 0; i < MAC_LEN; i++)
		dst[i] = src[i];
}

#endif
