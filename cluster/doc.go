// Package cluster is ebpfnet's control plane across hosts: the nodes of a
// cluster share identities, address blocks, the IP -> identity cache and
// policy through etcd (go.etcd.io/etcd/client/v3), as Cilium's kvstore
// mode does. Everything the daemon needs is reached from a *Node
// (Connect): Identities (an identity.Allocator), Rules (endpoint.Rules),
// PublishEndpoint/WithdrawEndpoint and WatchRemote (the remote ipcache),
// ClaimBlock/ReleaseBlock/Networks (address blocks), Nodes/RemoveNode
// (`ebpfnet node list|remove`) and Status.
//
// # Keys
//
// Every key lives under ebpfnet/v1/. Values are JSON, so `etcdctl get`
// reads them. "leased" keys are bound to their node's lease and go with
// it; the others stay until deleted.
//
//	net/nodes/<name>                 {name, ip, heartbeat, version}   leased
//	net/networks/<10.90.0.0_16>      {subnet, blockBits}
//	net/blocks/<subnet>/<block>      {node, nodeIP}
//	net/endpoints/<ip>               {identity, node, nodeIP}         leased
//	identities/id/<N>                [labels, sorted]
//	identities/labels/<sha256 hex>   N (the hash of the canonical label string)
//	identities/ref/<N>/<node>        ""                               leased
//	policy                           {revision, rules}
//
// A prefix is written 10.90.0.0_16 (fd00:90::_64) because "/" separates
// segments; an IPv6 endpoint's key is its address (net/endpoints/fd00:90::5).
// IPv6 networks are cluster networks as IPv4 ones are, with blocks of
// Config.BlockBits6 (/112 by default); every node's tunnel endpoint stays
// its IPv4 NodeIP, the underlay. What
// the remote view reads sits under net/, so that one watch sees it and
// sees a lease's keys go in the same revision as its node key.
//
// # Lease
//
// One lease per node (Config.LeaseTTL, default 60 s), kept alive, its ID
// kept in Config.StatePath: a daemon restarted while etcd still has the
// lease reuses it, and since every write of a node's own key compares
// value and lease first, writing back what it restored changes nothing
// in etcd (Cilium PR #7214). The keys the previous run left and the new
// one does not claim again are deleted once the daemon calls
// MarkRestored. If the lease is lost (revoked, or expired while the node
// was cut off), the node grants another and writes every key of its own
// again, from its in-memory record (Cilium PR #42709). The node key's
// heartbeat is rewritten every TTL/3. Close does not revoke the lease.
//
// The node's own keys have one writer: while etcd is away their writes
// queue (Status.Queued) and land on reconnection; callers never block on
// them, except Allocate, which waits (within its ctx) for the reference
// of a first allocation when etcd is there.
//
// # Identities
//
// The same label set gets the same number on every node. A new set is
// numbered with one transaction that creates identities/id/<N> and
// identities/labels/<hash> only if neither exists; when the labels key
// exists another node numbered the set first, and its number is the
// answer. Numbers run from identity.MinAllocated to MaxAllocated, searched
// from a cursor that starts at a random point per node (kept in the state
// file), so nodes rarely race for a number and a freed number comes back
// late. A node holds one leased reference key per identity it uses,
// written in a transaction that holds only while the identity's key still
// has its labels; an identity freed meanwhile is created again with the
// same number, or, if the number went to other labels, reported in
// Status.Conflicts. Any node collects: an identity without any reference
// key for Config.IdentityGrace (default 5 min) is deleted in a
// transaction that fails if its key changed or a reference appeared (a
// CreateRevision = 0 compare over the reference prefix holds only on an
// empty range). A list-then-watch cache of identities/id/, kept in
// Config.IdentityCachePath, answers Lookup, All and Allocate of known
// sets even while etcd is away; a new set then fails at once with an
// error wrapping ErrUnreachable.
//
// # Policy
//
// One key holds the rules and their revision; Import and DeleteAll read
// it, merge as policy.Merge does, and write revision+1 only if the key's
// mod revision is unchanged (else again). A watch keeps a local
// policy.Repository (the cache file) current; it answers Snapshot and
// Subscribe, also when the daemon starts without etcd.
//
// # Remote view
//
// WatchRemote lists then watches net/ and gives a RemoteSink every other
// node's endpoints (/32 or /128 with their identity) and every other live node's
// blocks (identity World), relisting (Replace) after a compaction. An
// explicit withdrawal applies at once; the entries of a node whose lease
// expired stay for Config.RemoteGrace (default 10 s).
//
// # Blocks
//
// ClaimBlock registers a subnet (refusing one that overlaps another
// without being equal) and claims the node's block in it, the one it has
// or the first free, with create-only transactions. A dead node's blocks
// stay its own until RemoveNode frees them: never automatically (Weave's
// automatic reclaim handed ranges out twice).
package cluster
