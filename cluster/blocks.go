package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ClaimBlock returns this node's address block in the cluster network
// subnet, registering the network first if it is new: the block the node
// owns already (so a restart keeps it), else the first free one, taken
// with a transaction that fails if another node took it meanwhile. A
// subnet that overlaps a cluster network without being equal to it is
// refused. A subnet smaller than a block is one block. Blocks are never
// handed out again while their node lives or is dead: only RemoveNode
// gives a dead node's back.
func (n *Node) ClaimBlock(ctx context.Context, subnet netip.Prefix) (netip.Prefix, error) {
	subnet, err := clusterSubnet(subnet)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("claim block: %w", err)
	}
	n.blockMu.Lock()
	defer n.blockMu.Unlock()
	if err := n.ready(ctx); err != nil {
		return netip.Prefix{}, fmt.Errorf("claim block in %s: %w", subnet, err)
	}
	for range 16 {
		bits, err := n.registerNetwork(ctx, subnet)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("claim block in %s: %w", subnet, err)
		}
		resp, err := n.cli.Get(ctx, blocksOf(subnet), clientv3.WithPrefix())
		if err != nil {
			return netip.Prefix{}, n.etcdErr("claim block in "+subnet.String(), err)
		}
		owned := map[netip.Prefix]bool{}
		for _, kv := range resp.Kvs {
			_, block, err := parseBlockKey(string(kv.Key))
			if err != nil {
				continue
			}
			var bv blockValue
			if json.Unmarshal(kv.Value, &bv) == nil && bv.Node == n.cfg.NodeName {
				return block, nil
			}
			owned[block] = true
		}
		block, ok := firstFree(subnet, bits, owned)
		if !ok {
			return netip.Prefix{}, fmt.Errorf("claim block in %s: every /%d block is owned (ebpfnet node list shows by whom; ebpfnet node remove frees a dead node's)", subnet, bits)
		}
		txn, err := n.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(blockKey(subnet, block)), "=", 0),
				clientv3.Compare(clientv3.CreateRevision(networkKey(subnet)), ">", 0)).
			Then(clientv3.OpPut(blockKey(subnet, block), mustJSON(blockValue{Node: n.cfg.NodeName, NodeIP: n.cfg.NodeIP}))).Commit()
		if err != nil {
			return netip.Prefix{}, n.etcdErr("claim block in "+subnet.String(), err)
		}
		if txn.Succeeded {
			n.writes.Add(1)
			n.log.WithFields(map[string]any{"subnet": subnet, "block": block}).Info("claimed an address block")
			return block, nil
		}
		// Taken meanwhile, or the network was released: look again.
	}
	return netip.Prefix{}, fmt.Errorf("claim block in %s: the blocks kept changing; try again", subnet)
}

// clusterSubnet checks and masks a cluster network's subnet, IPv4 or IPv6.
func clusterSubnet(subnet netip.Prefix) (netip.Prefix, error) {
	if !subnet.IsValid() || subnet.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("subnet %q: cluster networks are IPv4 or IPv6 prefixes", subnet)
	}
	return subnet.Masked(), nil
}

// registerNetwork makes subnet a cluster network unless it is one, and
// returns its block length. The transaction fails if any network was
// registered since the overlap check read them.
func (n *Node) registerNetwork(ctx context.Context, subnet netip.Prefix) (int, error) {
	for range 16 {
		resp, err := n.cli.Get(ctx, networksPrefix, clientv3.WithPrefix())
		if err != nil {
			return 0, n.etcdErr("read cluster networks", err)
		}
		for _, kv := range resp.Kvs {
			var nv networkValue
			if err := json.Unmarshal(kv.Value, &nv); err != nil || !nv.Subnet.IsValid() {
				n.log.WithField("key", string(kv.Key)).Warn("ignoring a malformed network key")
				continue
			}
			if nv.Subnet == subnet {
				return nv.BlockBits, nil
			}
			if nv.Subnet.Overlaps(subnet) {
				return 0, fmt.Errorf("subnet %s overlaps the cluster network %s: a cluster network takes the same subnet on every node, and distinct ones must not overlap", subnet, nv.Subnet)
			}
		}
		blockBits := n.cfg.BlockBits
		if subnet.Addr().Is6() {
			blockBits = n.cfg.BlockBits6
		}
		bits := max(blockBits, subnet.Bits())
		txn, err := n.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(networkKey(subnet)), "=", 0),
				clientv3.Compare(clientv3.ModRevision(networksPrefix), "<", resp.Header.Revision+1).WithPrefix()).
			Then(clientv3.OpPut(networkKey(subnet), mustJSON(networkValue{Subnet: subnet, BlockBits: bits}))).Commit()
		if err != nil {
			return 0, n.etcdErr("register cluster network", err)
		}
		if txn.Succeeded {
			n.writes.Add(1)
			n.log.WithFields(map[string]any{"subnet": subnet, "blockBits": bits}).Info("registered a cluster network")
			return bits, nil
		}
	}
	return 0, fmt.Errorf("the cluster networks kept changing; try again")
}

// firstFree returns the lowest block of subnet that is not owned. Every
// block it passes is an owned one, so it takes at most len(owned)+1 steps,
// whatever the size of the subnet (an IPv6 /64 holds 2^48 /112 blocks).
func firstFree(subnet netip.Prefix, bits int, owned map[netip.Prefix]bool) (netip.Prefix, bool) {
	cand := subnet.Masked().Addr()
	for range len(owned) + 1 {
		block := netip.PrefixFrom(cand, bits)
		if !owned[block] {
			return block, true
		}
		next, ok := blockAfter(block)
		if !ok || !subnet.Contains(next) {
			break
		}
		cand = next
	}
	return netip.Prefix{}, false
}

// blockAfter is the first address after block; false past the end of the
// address family.
func blockAfter(block netip.Prefix) (netip.Addr, bool) {
	b := block.Masked().Addr().AsSlice()
	for i := block.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	last, _ := netip.AddrFromSlice(b)
	next := last.Next()
	return next, next.IsValid()
}

// ReleaseBlock gives this node's block of subnet back, and the network's
// registration with the last block. Releasing what the node does not own
// is no error.
func (n *Node) ReleaseBlock(ctx context.Context, subnet netip.Prefix) error {
	subnet, err := clusterSubnet(subnet)
	if err != nil {
		return fmt.Errorf("release block: %w", err)
	}
	n.blockMu.Lock()
	defer n.blockMu.Unlock()
	if err := n.ready(ctx); err != nil {
		return fmt.Errorf("release block in %s: %w", subnet, err)
	}
	resp, err := n.cli.Get(ctx, blocksOf(subnet), clientv3.WithPrefix())
	if err != nil {
		return n.etcdErr("release block in "+subnet.String(), err)
	}
	for _, kv := range resp.Kvs {
		var bv blockValue
		if json.Unmarshal(kv.Value, &bv) != nil || bv.Node != n.cfg.NodeName {
			continue
		}
		txn, err := n.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision)).
			Then(clientv3.OpDelete(string(kv.Key))).Commit()
		if err != nil {
			return n.etcdErr("release block in "+subnet.String(), err)
		}
		if txn.Succeeded {
			n.writes.Add(1)
		}
	}
	return n.dropNetworkIfEmpty(ctx, subnet)
}

// dropNetworkIfEmpty deletes subnet's registration if no block of it is
// left, in one transaction with that check.
func (n *Node) dropNetworkIfEmpty(ctx context.Context, subnet netip.Prefix) error {
	txn, err := n.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(blocksOf(subnet)), "=", 0).WithPrefix(),
			clientv3.Compare(clientv3.CreateRevision(networkKey(subnet)), ">", 0)).
		Then(clientv3.OpDelete(networkKey(subnet))).Commit()
	if err != nil {
		return n.etcdErr("release cluster network "+subnet.String(), err)
	}
	if txn.Succeeded {
		n.writes.Add(1)
		n.log.WithField("subnet", subnet).Info("released a cluster network: no node holds a block of it")
	}
	return nil
}

// Networks lists the cluster networks, so that the IPAM carves its
// default pools around them.
func (n *Node) Networks(ctx context.Context) ([]netip.Prefix, error) {
	if err := n.ready(ctx); err != nil {
		return nil, fmt.Errorf("list cluster networks: %w", err)
	}
	resp, err := n.cli.Get(ctx, networksPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, n.etcdErr("list cluster networks", err)
	}
	out := []netip.Prefix{}
	for _, kv := range resp.Kvs {
		var nv networkValue
		if json.Unmarshal(kv.Value, &nv) == nil && nv.Subnet.IsValid() {
			out = append(out, nv.Subnet)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr().Less(out[j].Addr()) })
	return out, nil
}
