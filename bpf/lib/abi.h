/* What user space mirrors of the datapath, in BTF.
 *
 * The daemon reads and writes the maps and events in Go structs and
 * constants of its own (package datapath, policy.Key, identity). A test
 * (datapath/layout_test.go) compares them with the BTF of the committed
 * objects, so that a field moved or a value changed on one side only
 * fails the build instead of corrupting a map. Map keys and values are in
 * BTF already; the event layout and the enums are used by no map or
 * function signature, so clang would leave them out. abi_anchor names
 * them all in its signature: a global function that nothing calls, so
 * cilium/ebpf never loads it, while its BTF stays in the object. */
#ifndef EBPFNET_ABI_H
#define EBPFNET_ABI_H

#include "global.h"
#include "maps.h"
#include "notify.h"
#include "reason.h"
#include "ipcache.h"
#include "maps6.h"

/* The slots of the node programs (lib/maps.h, lib/maps6.h) are #defines,
 * which BTF does not carry: this enum does, for the test to hold
 * datapath's nodePrograms and nodePrograms6 to them. */
enum abi_call_slot {
	ABI_CALL_FROM_CONTAINER = CALL_FROM_CONTAINER,
	ABI_CALL_TO_CONTAINER = CALL_TO_CONTAINER,
	ABI_CALL_POLICY_VERDICT = CALL_POLICY_VERDICT,
	ABI_CALL_POLICY_VERDICT6 = CALL_POLICY_VERDICT6,
	ABI_CALLS_MAX = CALLS_MAX,
};

enum abi_call6_slot {
	ABI_CALL6_FROM_CONTAINER = CALL6_FROM_CONTAINER,
	ABI_CALL6_TO_CONTAINER = CALL6_TO_CONTAINER,
	ABI_CALL6_FROM_OVERLAY = CALL6_FROM_OVERLAY,
	ABI_CALLS6_MAX = CALLS6_MAX,
};

struct abi_types {
	struct notify notify;
	struct notify6 notify6;
	enum reason reason;
	enum metric_dir metric_dir;
	enum policy_dir policy_dir;
	enum verdict verdict;
	enum notify_type notify_type;
	enum endpoint_flags endpoint_flags;
	enum reserved_identity reserved_identity;
	enum ct_flags ct_flags;
	enum abi_call_slot call_slot;
	enum abi_call6_slot call6_slot;
};

__global_func int abi_anchor(struct abi_types *t)
{
	return t != 0;
}

#endif
