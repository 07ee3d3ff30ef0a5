package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Node states in NodeInfo.
const (
	NodeAlive = "alive" // its key exists: its lease is alive
	NodeDead  = "dead"  // it owns blocks but has no key
)

// NodeInfo is one node as `ebpfnet node list` shows it.
type NodeInfo struct {
	Name      string     `json:"name"`
	IP        netip.Addr `json:"ip,omitzero"` // a dead node's as it claimed its blocks, if known
	Blocks    []Block    `json:"blocks"`
	Heartbeat time.Time  `json:"heartbeat,omitzero"`
	Version   string     `json:"version,omitempty"`
	State     string     `json:"state"`
}

// Block is an address block of a cluster network.
type Block struct {
	Subnet netip.Prefix `json:"subnet"`
	Prefix netip.Prefix `json:"prefix"`
}

// Nodes lists every node: those alive, and the dead ones that still own
// blocks.
func (n *Node) Nodes(ctx context.Context) ([]NodeInfo, error) {
	if err := n.ready(ctx); err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	resp, err := n.cli.Txn(ctx).Then(
		clientv3.OpGet(nodesPrefix, clientv3.WithPrefix()),
		clientv3.OpGet(blocksPrefix, clientv3.WithPrefix())).Commit()
	if err != nil {
		return nil, n.etcdErr("list nodes", err)
	}
	byName := map[string]*NodeInfo{}
	get := func(name string) *NodeInfo {
		if byName[name] == nil {
			byName[name] = &NodeInfo{Name: name, State: NodeDead, Blocks: []Block{}}
		}
		return byName[name]
	}
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		var nv nodeValue
		if err := json.Unmarshal(kv.Value, &nv); err != nil {
			continue
		}
		info := get(strings.TrimPrefix(string(kv.Key), nodesPrefix))
		info.IP, info.Version, info.State = nv.IP, nv.Version, NodeAlive
		info.Heartbeat, _ = time.Parse(time.RFC3339Nano, nv.Heartbeat)
	}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		subnet, block, err := parseBlockKey(string(kv.Key))
		var bv blockValue
		if err != nil || json.Unmarshal(kv.Value, &bv) != nil {
			continue
		}
		info := get(bv.Node)
		info.Blocks = append(info.Blocks, Block{Subnet: subnet, Prefix: block})
		if info.State == NodeDead && !info.IP.IsValid() {
			info.IP = bv.NodeIP
		}
	}
	out := make([]NodeInfo, 0, len(byName))
	for _, info := range byName {
		sort.Slice(info.Blocks, func(i, j int) bool { return info.Blocks[i].Prefix.Addr().Less(info.Blocks[j].Prefix.Addr()) })
		out = append(out, *info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// RemoveNode forgets a dead node (`ebpfnet node remove NAME`): its blocks
// go back to the pool, and whatever is left of its endpoints and identity
// references (its lease took them already) is deleted. A live node, one
// whose key exists, is refused: its blocks are in use. This is the only
// way a dead node's blocks come back (Weave's automatic reclaim handed
// ranges out twice). Every delete holds only while the node has no key,
// so a node that comes back meanwhile keeps what it has.
func (n *Node) RemoveNode(ctx context.Context, name string) error {
	if err := validNodeName(name); err != nil {
		return fmt.Errorf("remove node: %w", err)
	}
	if name == n.cfg.NodeName {
		return fmt.Errorf("remove node %s: that is this node", name)
	}
	if err := n.ready(ctx); err != nil {
		return fmt.Errorf("remove node %s: %w", name, err)
	}
	resp, err := n.cli.Txn(ctx).Then(
		clientv3.OpGet(nodeKey(name)),
		clientv3.OpGet(blocksPrefix, clientv3.WithPrefix()),
		clientv3.OpGet(endpointsPrefix, clientv3.WithPrefix()),
		clientv3.OpGet(identityRefs, clientv3.WithPrefix(), clientv3.WithKeysOnly())).Commit()
	if err != nil {
		return n.etcdErr("remove node "+name, err)
	}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		var nv nodeValue
		_ = json.Unmarshal(kvs[0].Value, &nv)
		return fmt.Errorf("remove node %s: it is alive (its key exists, last heartbeat %s): stop its daemon first, then wait for its lease to expire", name, nv.Heartbeat)
	}
	type victim struct {
		key    string
		modRev int64
	}
	var victims []victim
	subnets := map[netip.Prefix]bool{}
	blocks := 0
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		var bv blockValue
		subnet, _, err := parseBlockKey(string(kv.Key))
		if err == nil && json.Unmarshal(kv.Value, &bv) == nil && bv.Node == name {
			victims = append(victims, victim{string(kv.Key), kv.ModRevision})
			subnets[subnet] = true
			blocks++
		}
	}
	for _, kv := range resp.Responses[2].GetResponseRange().Kvs {
		var ev endpointValue
		if json.Unmarshal(kv.Value, &ev) == nil && ev.Node == name {
			victims = append(victims, victim{string(kv.Key), kv.ModRevision})
		}
	}
	for _, kv := range resp.Responses[3].GetResponseRange().Kvs {
		if _, node, err := parseRefKey(string(kv.Key)); err == nil && node == name {
			victims = append(victims, victim{string(kv.Key), kv.ModRevision})
		}
	}
	if len(victims) == 0 {
		return fmt.Errorf("remove node %s: no such node in the cluster", name)
	}
	for _, v := range victims {
		txn, err := n.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(nodeKey(name)), "=", 0),
				clientv3.Compare(clientv3.ModRevision(v.key), "=", v.modRev)).
			Then(clientv3.OpDelete(v.key)).Commit()
		if err != nil {
			return n.etcdErr("remove node "+name, err)
		}
		if txn.Succeeded {
			n.writes.Add(1)
		}
	}
	for subnet := range subnets {
		if err := n.dropNetworkIfEmpty(ctx, subnet); err != nil {
			return err
		}
	}
	n.log.WithFields(map[string]any{"node": name, "blocks": blocks, "keys": len(victims)}).Info("removed a dead node")
	return nil
}
