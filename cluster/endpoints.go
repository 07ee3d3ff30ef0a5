package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ebpfnet/ebpfnet/identity"
)

// PublishEndpoint tells the other nodes that ip is a local endpoint with
// identity id. It never blocks: the write is queued, retried while etcd
// is away, and made again if the lease is lost. Only bad input is an
// error.
func (n *Node) PublishEndpoint(ip netip.Addr, id identity.ID) error {
	ip = ip.Unmap()
	if !ip.IsValid() || ip.IsUnspecified() || ip.IsMulticast() || ip.IsLinkLocalUnicast() {
		return fmt.Errorf("publish endpoint: %q is not a unicast IPv4 or IPv6 address", ip)
	}
	if id == identity.Unknown || id.Kind() == identity.KindInvalid || id.Kind() == identity.KindCIDR {
		return fmt.Errorf("publish endpoint %s: identity %d cannot be an endpoint's", ip, id)
	}
	n.own.put(endpointKey(ip), mustJSON(endpointValue{Identity: id, Node: n.cfg.NodeName, NodeIP: n.cfg.NodeIP}), nil)
	return nil
}

// WithdrawEndpoint takes ip back; like PublishEndpoint it never blocks.
func (n *Node) WithdrawEndpoint(ip netip.Addr) {
	n.own.remove(endpointKey(ip.Unmap()))
}

// RemoteEntry is what the datapath learns of another node's prefix.
type RemoteEntry struct {
	Identity identity.ID
	Node     string
	NodeIP   netip.Addr
}

// RemoteSink receives the remote view. Calls come from one goroutine, in
// order, and must not call back into the Node.
type RemoteSink interface {
	// Replace gives the whole remote set: first at start, then after a
	// relist.
	Replace(map[netip.Prefix]RemoteEntry)
	Upsert(netip.Prefix, RemoteEntry)
	Delete(netip.Prefix)
}

// WatchRemote keeps sink equal to what the other nodes publish: each
// endpoint as a /32 (IPv4) or /128 (IPv6) with its identity, and each live node's address
// block with identity World (an address of the block whose endpoint is
// not known yet still routes to its node, judged as the world). The
// node's own entries are never delivered. An explicit withdrawal goes at
// once; the entries of a node whose lease expired stay for
// Config.RemoteGrace first, so that a node that comes straight back does
// not disturb its flows. It lists, then watches; after a compaction it
// lists again and calls Replace. It returns when ctx ends or the node
// closes.
func (n *Node) WatchRemote(ctx context.Context, sink RemoteSink) error {
	v := &remoteView{
		n: n, sink: sink,
		nodes:     map[string]nodeValue{},
		blocks:    map[netip.Prefix]string{},
		endpoints: map[netip.Prefix]endpointValue{},
		shown:     map[netip.Prefix]RemoteEntry{},
		lingering: map[netip.Prefix]time.Time{},
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(n.ctx, cancel)
	defer stop()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		v.expire(ctx)
	}()
	// One watch over net/, so that the keys a lease takes with it
	// arrive in one revision and their node's death is seen with them.
	n.listWatch(ctx, netPrefix, []clientv3.OpOption{clientv3.WithPrefix()}, v)
	wg.Wait()
	if err := n.ctx.Err(); err != nil {
		return errors.New("the cluster node closed")
	}
	return ctx.Err()
}

// remoteView is the state WatchRemote reads and what it has shown.
type remoteView struct {
	n    *Node
	sink RemoteSink

	mu        sync.Mutex
	nodes     map[string]nodeValue // live nodes (their key exists)
	blocks    map[netip.Prefix]string
	endpoints map[netip.Prefix]endpointValue
	// shown is what the sink holds; lingering are the shown prefixes
	// whose node died, with when they go.
	shown     map[netip.Prefix]RemoteEntry
	lingering map[netip.Prefix]time.Time
}

// want is the remote set the state calls for.
func (v *remoteView) want() map[netip.Prefix]RemoteEntry {
	out := map[netip.Prefix]RemoteEntry{}
	self := v.n.cfg.NodeName
	for block, node := range v.blocks {
		if nv, alive := v.nodes[node]; alive && node != self {
			out[block] = RemoteEntry{Identity: identity.World, Node: node, NodeIP: nv.IP}
		}
	}
	for p, ev := range v.endpoints {
		if ev.Node != self {
			out[p] = RemoteEntry(ev)
		}
	}
	return out
}

// sync brings the sink to the state: replace for a full list, else one
// call per change. v.mu is held.
func (v *remoteView) sync(replace bool) {
	want := v.want()
	now := time.Now()
	var deletes []netip.Prefix
	for p, e := range v.shown {
		if _, ok := want[p]; ok {
			continue
		}
		if _, ok := v.lingering[p]; ok {
			continue
		}
		if _, alive := v.nodes[e.Node]; alive {
			deletes = append(deletes, p) // withdrawn by a live node
			continue
		}
		v.lingering[p] = now.Add(v.n.cfg.RemoteGrace)
	}
	for _, p := range deletes {
		delete(v.shown, p)
	}
	var upserts []netip.Prefix
	for p, e := range want {
		delete(v.lingering, p)
		if cur, ok := v.shown[p]; !ok || cur != e {
			v.shown[p] = e
			upserts = append(upserts, p)
		}
	}
	if replace {
		v.sink.Replace(maps.Clone(v.shown))
		return
	}
	for _, p := range deletes {
		v.sink.Delete(p)
	}
	for _, p := range upserts {
		v.sink.Upsert(p, v.shown[p])
	}
}

func (v *remoteView) reset(kvs []*mvccpb.KeyValue, _ int64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	clear(v.nodes)
	clear(v.blocks)
	clear(v.endpoints)
	for _, kv := range kvs {
		v.apply(clientv3.EventTypePut, kv, nil)
	}
	v.sync(true)
}

// events applies each revision's events together: a lease's keys all go
// in one revision, with the node key.
func (v *remoteView) events(evs []*clientv3.Event) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for i, ev := range evs {
		v.apply(ev.Type, ev.Kv, ev.PrevKv)
		if i == len(evs)-1 || evs[i+1].Kv.ModRevision != ev.Kv.ModRevision {
			v.sync(false)
		}
	}
}

// apply changes the state by one key.
func (v *remoteView) apply(typ mvccpb.Event_EventType, kv, prev *mvccpb.KeyValue) {
	key := string(kv.Key)
	put := typ == clientv3.EventTypePut
	var err error
	switch {
	case strings.HasPrefix(key, nodesPrefix):
		name := strings.TrimPrefix(key, nodesPrefix)
		if !put {
			delete(v.nodes, name)
			return
		}
		var nv nodeValue
		if err = json.Unmarshal(kv.Value, &nv); err == nil {
			v.nodes[name] = nv
		}
	case strings.HasPrefix(key, blocksPrefix):
		var block netip.Prefix
		if _, block, err = parseBlockKey(key); err != nil {
			break
		}
		if !put {
			delete(v.blocks, block)
			return
		}
		var bv blockValue
		if err = json.Unmarshal(kv.Value, &bv); err == nil {
			v.blocks[block] = bv.Node
		}
	case strings.HasPrefix(key, endpointsPrefix):
		var ip netip.Addr
		if ip, err = netip.ParseAddr(strings.TrimPrefix(key, endpointsPrefix)); err != nil {
			break
		}
		p := netip.PrefixFrom(ip, ip.BitLen())
		if !put {
			delete(v.endpoints, p)
			return
		}
		var ev endpointValue
		if err = json.Unmarshal(kv.Value, &ev); err == nil {
			v.endpoints[p] = ev
		}
	}
	if err != nil {
		v.n.log.WithError(err).WithField("key", key).Warn("ignoring a malformed key")
	}
}

// expire removes lingering entries once their grace is over.
func (v *remoteView) expire(ctx context.Context) {
	t := time.NewTicker(max(v.n.cfg.RemoteGrace/10, 50*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		v.mu.Lock()
		now := time.Now()
		for p, at := range v.lingering {
			if now.Before(at) {
				continue
			}
			delete(v.lingering, p)
			delete(v.shown, p)
			v.sink.Delete(p)
		}
		v.mu.Unlock()
	}
}
