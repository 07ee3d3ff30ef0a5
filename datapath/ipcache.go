package datapath

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/ebpfnet/ebpfnet/identity"
)

// ipcacheKey mirrors struct ipcache_key: an LPM trie key, prefix length
// first, then the address in network byte order.
type ipcacheKey struct {
	PrefixLen uint32
	Addr      [4]byte
}

// ipcacheValue mirrors struct ipcache_value.
type ipcacheValue struct {
	Identity       uint32
	TunnelEndpoint [4]byte
}

// IPCacheEntry is what the datapath knows of a prefix: its identity, and
// for an endpoint or address block of another node, that node's IP, where
// the overlay sends its packets (invalid otherwise).
type IPCacheEntry struct {
	Identity       identity.ID
	TunnelEndpoint netip.Addr
}

func (e IPCacheEntry) value() (ipcacheValue, error) {
	v := ipcacheValue{Identity: uint32(e.Identity)}
	if e.TunnelEndpoint.IsValid() {
		if !e.TunnelEndpoint.Is4() {
			return v, fmt.Errorf("tunnel endpoint %v is not an IPv4 address", e.TunnelEndpoint)
		}
		v.TunnelEndpoint = e.TunnelEndpoint.As4()
	}
	return v, nil
}

func (v ipcacheValue) entry() IPCacheEntry {
	e := IPCacheEntry{Identity: identity.ID(v.Identity)}
	if v.TunnelEndpoint != [4]byte{} {
		e.TunnelEndpoint = netip.AddrFrom4(v.TunnelEndpoint)
	}
	return e
}

// ipcacheMapOf is the map that holds p, and its key there: ebpfnet_ipcache
// for an IPv4 prefix, ebpfnet_ipcache6 for an IPv6 one. d.mu is held.
func (d *Datapath) ipcacheMapOf(p netip.Prefix) (*ebpf.Map, any, error) {
	if p.IsValid() && p.Addr().Is6() && !p.Addr().Is4In6() {
		return d.nodeMaps[IPCache6MapName], ipcache6KeyOf(p), nil
	}
	key, err := ipcacheKeyOf(p)
	return d.shared[IPCacheMapName], key, err
}

func ipcache6KeyOf(p netip.Prefix) ipcache6Key {
	p = p.Masked()
	return ipcache6Key{PrefixLen: uint32(p.Bits()), Addr: p.Addr().As16()}
}

func ipcacheKeyOf(p netip.Prefix) (ipcacheKey, error) {
	if !p.IsValid() || !p.Addr().Is4() {
		return ipcacheKey{}, fmt.Errorf("ipcache: %v is neither an IPv4 nor an IPv6 prefix", p)
	}
	// The trie ignores bits past the length, but a masked key makes the
	// same prefix one entry however the caller spelled it.
	p = p.Masked()
	return ipcacheKey{PrefixLen: uint32(p.Bits()), Addr: p.Addr().As4()}, nil
}

// PutIPCache sets the identity of a remote prefix: from_container uses
// it for destinations that are not local endpoints, to_container for the
// sources of what the host stack sends in. Identity 0 is refused: in a
// policy key it means "any". The ipcache package decides what goes in;
// this only writes.
func (d *Datapath) PutIPCache(p netip.Prefix, e IPCacheEntry) error {
	if _, _, err := d.ipcacheMapOf(p); err != nil {
		return err
	}
	if e.Identity == identity.Unknown {
		return fmt.Errorf("ipcache %v: identity 0 is reserved for \"any\"", p)
	}
	val, err := e.value()
	if err != nil {
		return fmt.Errorf("ipcache %v: %w", p, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("datapath closed")
	}
	m, key, _ := d.ipcacheMapOf(p)
	if err := m.Put(key, val); err != nil {
		return fmt.Errorf("ipcache %v -> %d: %w", p, e.Identity, err)
	}
	return nil
}

// DeleteIPCache forgets a prefix; its addresses fall back to a shorter
// prefix or the world. Deleting a missing prefix succeeds.
func (d *Datapath) DeleteIPCache(p netip.Prefix) error {
	if _, _, err := d.ipcacheMapOf(p); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("datapath closed")
	}
	m, key, _ := d.ipcacheMapOf(p)
	if err := ignoreNotExist(m.Delete(key)); err != nil {
		return fmt.Errorf("ipcache delete %v: %w", p, err)
	}
	return nil
}

// IPCache returns every prefix with its entry, of both families.
func (d *Datapath) IPCache() (map[netip.Prefix]IPCacheEntry, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errors.New("datapath closed")
	}
	out := map[netip.Prefix]IPCacheEntry{}
	var key ipcacheKey
	var val ipcacheValue
	it := d.shared[IPCacheMapName].Iterate()
	for it.Next(&key, &val) {
		out[netip.PrefixFrom(netip.AddrFrom4(key.Addr), int(key.PrefixLen))] = val.entry()
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate %s: %w", IPCacheMapName, err)
	}
	var key6 ipcache6Key
	it = d.nodeMaps[IPCache6MapName].Iterate()
	for it.Next(&key6, &val) {
		out[netip.PrefixFrom(netip.AddrFrom16(key6.Addr), int(key6.PrefixLen))] = val.entry()
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate %s: %w", IPCache6MapName, err)
	}
	return out, nil
}
