/* Per-endpoint constants.
 *
 * They live in .rodata as volatile const globals, all zero in the committed
 * template. The daemon instantiates an endpoint by patching these bytes in a
 * copy of the object file (no compiler at run time); "volatile" keeps clang
 * from folding the template's zeros into the code, and "const" lets the
 * kernel treat the frozen .rodata as known values. The entry programs hand
 * them to the node programs in skb->cb (lib/cb.h), which is why LXC_ID and
 * NETWORK_ID must fit in 16 bits each.
 */
#ifndef EBPFNET_CONFIG_H
#define EBPFNET_CONFIG_H

#include <linux/types.h>
#include "eth.h"

/* The container's IPv4 address, network byte order. */
volatile const __be32 LXC_IPV4 = 0;
/* MAC of the container's eth0. */
volatile const __u8 LXC_MAC[MAC_LEN] = {};
/* MAC of the host-side veth: the answer to the container's ARP for anything
 * that is not a peer of its network (the gateway first). */
volatile const __u8 NODE_MAC[MAC_LEN] = {};
/* Node-local endpoint ID (epid). */
volatile const __u32 LXC_ID = 0;
/* Index of the Docker network; endpoints of different networks never talk. */
volatile const __u32 NETWORK_ID = 0;
/* There is no SECLABEL constant: the endpoint's identity is read from its
 * ebpfnet_endpoints entry (lib/verdict.h), so learning a container's labels
 * is one map write, not a reload. */
/* There is no ifindex constant either: local delivery goes into the
 * container through the host veth of its ebpfnet_endpoints entry, so the
 * object does not depend on the veth and the daemon loads it while the
 * veth is being created. */

#endif
