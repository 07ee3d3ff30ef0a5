/* IPv6 addresses: the one type the programs keep them in, and the tests
 * they make of them. */
#ifndef EBPFNET_V6ADDR_H
#define EBPFNET_V6ADDR_H

#include <linux/types.h>
#include <bpf/bpf_endian.h>

/* An IPv6 address, network byte order, as the programs compare it: two
 * 64-bit loads. */
union v6addr {
	__u8 b[16];
	__be32 w[4];
	__u64 d[2];
};

static __always_inline int v6_eq(const union v6addr *a, const union v6addr *b)
{
	return a->d[0] == b->d[0] && a->d[1] == b->d[1];
}

static __always_inline int v6_is_zero(const union v6addr *a)
{
	return (a->d[0] | a->d[1]) == 0;
}

/* fe80::/10, the link-local unicast scope. */
static __always_inline int v6_is_link_local(const union v6addr *a)
{
	return (a->w[0] & bpf_htonl(0xffc00000)) == bpf_htonl(0xfe800000);
}

/* ff00::/8 */
static __always_inline int v6_is_multicast(const union v6addr *a)
{
	return a->b[0] == 0xff;
}

/* v6_in reports whether (a & mask) == subnet, the three of one network. */
static __always_inline int v6_in(const union v6addr *a, const union v6addr *subnet,
				 const union v6addr *mask)
{
	return (a->d[0] & mask->d[0]) == subnet->d[0] &&
	       (a->d[1] & mask->d[1]) == subnet->d[1];
}

/* v6_copy copies b into a, two words. */
static __always_inline void v6_copy(union v6addr *a, const union v6addr *b)
{
	a->d[0] = b->d[0];
	a->d[1] = b->d[1];
}

#endif
