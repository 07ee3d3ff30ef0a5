// Package ipcache owns the datapath's IP cache, the map from address
// prefixes to security identities that the programs consult for every peer
// that is not a local endpoint. Several parts of the daemon know addresses
// (local endpoints, the node's own addresses, the prefixes rules name, and
// in a cluster the endpoints of other nodes); each writes here under its
// own Source, and the Cache alone writes the map: on one prefix the
// strongest source wins, and an entry goes only when no source holds it.
// So a remote node's event can never remove a local endpoint's entry, and a
// CIDR rule never shadows an endpoint that has that address.
package ipcache

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"sort"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/datapath"
	"github.com/ebpfnet/ebpfnet/identity"
)

// Source says who holds an entry. On the same prefix the lower value wins,
// as Cilium ranks its ipcache sources (local over kvstore over generated).
type Source int

// Sources, strongest first.
const (
	// SourceLocalEndpoint is a container on this node.
	SourceLocalEndpoint Source = iota
	// SourceHost is this node's own addresses and its networks' gateways.
	SourceHost
	// SourceRemote is an endpoint of another node of the cluster.
	SourceRemote
	// SourceCIDR is a prefix that a rule names, with its CIDR identity.
	SourceCIDR
	numSources
)

// String names the source as `ebpfnet bpf ipcache list` shows it.
func (s Source) String() string {
	switch s {
	case SourceLocalEndpoint:
		return "local"
	case SourceHost:
		return "host"
	case SourceRemote:
		return "remote"
	case SourceCIDR:
		return "cidr"
	}
	return fmt.Sprintf("source-%d", int(s))
}

// Entry is what the daemon knows of a prefix.
type Entry struct {
	Identity identity.ID
	// TunnelEndpoint is the IP of the node behind which a remote endpoint
	// or address block lives; invalid for everything on this node.
	TunnelEndpoint netip.Addr
	// Node names that node, for display; the datapath never sees it.
	Node string
}

// datapath is what the map holds of an entry.
func (e Entry) datapath() datapath.IPCacheEntry {
	return datapath.IPCacheEntry{Identity: e.Identity, TunnelEndpoint: e.TunnelEndpoint}
}

// Map is the datapath's ipcache map. *datapath.Datapath implements it;
// unit tests use a fake.
type Map interface {
	PutIPCache(netip.Prefix, datapath.IPCacheEntry) error
	DeleteIPCache(netip.Prefix) error
	IPCache() (map[netip.Prefix]datapath.IPCacheEntry, error)
}

// Owned is an entry with the source that put it in force.
type Owned struct {
	Entry
	Source Source
}

// Cache merges the sources into the map. It is safe for concurrent use.
type Cache struct {
	log logrus.FieldLogger
	m   Map

	mu sync.Mutex
	// held is every source's entry per prefix; the winner is the lowest
	// source present.
	held map[netip.Prefix]map[Source]Entry
	// written is what the map holds, as far as the Cache wrote it.
	written map[netip.Prefix]datapath.IPCacheEntry
	// restored are the entries the map held when the Cache started and no
	// source has claimed yet. Once every source in waitFor has synced
	// they go: a daemon restart must not drop entries that a source will
	// put back a moment later (cross-node flows), nor keep stale ones.
	restored map[netip.Prefix]datapath.IPCacheEntry
	waitFor  map[Source]bool
}

// New takes over m. The entries m holds already (pinned from an earlier
// start) stay until every source in waitFor has called MarkSynced; then
// those no source holds are removed.
func New(m Map, log logrus.FieldLogger, waitFor ...Source) (*Cache, error) {
	cur, err := m.IPCache()
	if err != nil {
		return nil, fmt.Errorf("read the ipcache: %w", err)
	}
	c := &Cache{
		log: log, m: m,
		held:     map[netip.Prefix]map[Source]Entry{},
		written:  map[netip.Prefix]datapath.IPCacheEntry{},
		restored: map[netip.Prefix]datapath.IPCacheEntry{},
		waitFor:  map[Source]bool{},
	}
	for p, e := range cur {
		c.restored[p] = e
		c.written[p] = e
	}
	for _, s := range waitFor {
		c.waitFor[s] = true
	}
	return c, nil
}

func validPrefix(p netip.Prefix) (netip.Prefix, error) {
	if !p.IsValid() {
		return netip.Prefix{}, fmt.Errorf("ipcache: invalid prefix %v", p)
	}
	return p.Masked(), nil
}

// Upsert sets src's entry for p.
func (c *Cache) Upsert(p netip.Prefix, src Source, e Entry) error {
	p, err := validPrefix(p)
	if err != nil {
		return err
	}
	if e.Identity == identity.Unknown {
		return fmt.Errorf("ipcache %v: identity 0 means \"any\" in policy and cannot be an address's", p)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held[p] == nil {
		c.held[p] = map[Source]Entry{}
	}
	c.held[p][src] = e
	return c.flush(p)
}

// Delete removes src's entry for p; another source's entry for p, if any,
// takes over. Deleting what src does not hold is no error.
func (c *Cache) Delete(p netip.Prefix, src Source) error {
	p, err := validPrefix(p)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.held[p][src]; !ok {
		return nil
	}
	delete(c.held[p], src)
	return c.flush(p)
}

// Replace makes src hold exactly want: entries of src that want lacks go,
// the others are set. Sources that learn their whole set at once (the
// node's addresses, a full listing of the cluster) use it.
func (c *Cache) Replace(src Source, want map[netip.Prefix]Entry) error {
	masked := make(map[netip.Prefix]Entry, len(want))
	for p, e := range want {
		mp, err := validPrefix(p)
		if err != nil {
			return err
		}
		if e.Identity == identity.Unknown {
			return fmt.Errorf("ipcache %v: identity 0 means \"any\" in policy and cannot be an address's", p)
		}
		masked[mp] = e
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for p, bySrc := range c.held {
		if _, keep := masked[p]; !keep {
			if _, ok := bySrc[src]; ok {
				delete(bySrc, src)
				errs = append(errs, c.flush(p))
			}
		}
	}
	for p, e := range masked {
		if c.held[p] == nil {
			c.held[p] = map[Source]Entry{}
		}
		if cur, ok := c.held[p][src]; ok && cur == e {
			continue
		}
		c.held[p][src] = e
		errs = append(errs, c.flush(p))
	}
	return errors.Join(errs...)
}

// MarkSynced says src has put in everything it holds. When the last source
// the Cache waits for has synced, the restored entries that no source
// claimed are removed.
func (c *Cache) MarkSynced(src Source) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.waitFor, src)
	if len(c.waitFor) > 0 || len(c.restored) == 0 {
		return nil
	}
	var errs []error
	for p := range c.restored {
		delete(c.restored, p)
		errs = append(errs, c.flush(p))
	}
	return errors.Join(errs...)
}

// Entries lists what the Cache holds in force, with the winning source.
// Restored entries not yet claimed are left out: no source vouches for
// them.
func (c *Cache) Entries() map[netip.Prefix]Owned {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[netip.Prefix]Owned, len(c.held))
	for p := range c.held {
		if o, ok := c.winner(p); ok {
			out[p] = o
		}
	}
	return out
}

// Prefixes lists the prefixes src holds, sorted.
func (c *Cache) Prefixes(src Source) []netip.Prefix {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []netip.Prefix
	for p, bySrc := range c.held {
		if _, ok := bySrc[src]; ok {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Addr().Compare(out[j].Addr()); c != 0 {
			return c < 0
		}
		return out[i].Bits() < out[j].Bits()
	})
	return out
}

// winner is the strongest source's entry for p. c.mu is held.
func (c *Cache) winner(p netip.Prefix) (Owned, bool) {
	for s := Source(0); s < numSources; s++ {
		if e, ok := c.held[p][s]; ok {
			return Owned{Entry: e, Source: s}, true
		}
	}
	return Owned{}, false
}

// flush writes p's winner to the map, or deletes p when no source (and no
// unclaimed restored entry) holds it. A claimed prefix stops being a
// restored one. c.mu is held.
func (c *Cache) flush(p netip.Prefix) error {
	var want datapath.IPCacheEntry
	o, ok := c.winner(p)
	if ok {
		delete(c.restored, p)
		want = o.datapath()
	} else {
		delete(c.held, p)
		want, ok = c.restored[p]
	}
	cur, written := c.written[p]
	switch {
	case ok && written && cur == want:
		return nil
	case ok:
		// Overwritten in place: an address never falls back to a
		// shorter prefix in between.
		if err := c.m.PutIPCache(p, want); err != nil {
			return fmt.Errorf("ipcache %v -> %d: %w", p, want.Identity, err)
		}
		c.written[p] = want
	case written:
		if err := c.m.DeleteIPCache(p); err != nil {
			return fmt.Errorf("ipcache delete %v: %w", p, err)
		}
		delete(c.written, p)
	}
	return nil
}

// Held is the entries of every source for p, for tests and diagnostics.
func (c *Cache) Held(p netip.Prefix) map[Source]Entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.held[p.Masked()])
}
