package servicemap

import (
	"net/netip"
	"sort"
)

// Reserved identities, as the identity package numbers them (Cilium's).
const (
	IdentityHost  = 1
	IdentityWorld = 2
)

// Resolver names the identity at an end of a conntrack flow: the local
// endpoint's when the flow records one, else that of the longest prefix of
// the ipcache that holds the address, else world, as the datapath decides.
type Resolver struct {
	byEndpoint map[uint16]uint32
	// byLength holds the ipcache per prefix length, the lengths longest
	// first: a lookup costs one map access per length present.
	lengths  []int
	byLength map[int]map[netip.Prefix]uint32
}

// NewResolver takes the local endpoints' identities by epid and the
// ipcache's prefixes.
func NewResolver(byEndpoint map[uint16]uint32, ipcache map[netip.Prefix]uint32) *Resolver {
	r := &Resolver{byEndpoint: byEndpoint, byLength: map[int]map[netip.Prefix]uint32{}}
	for p, id := range ipcache {
		p = p.Masked()
		m, ok := r.byLength[p.Bits()]
		if !ok {
			m = map[netip.Prefix]uint32{}
			r.byLength[p.Bits()] = m
			r.lengths = append(r.lengths, p.Bits())
		}
		m[p] = id
	}
	sort.Sort(sort.Reverse(sort.IntSlice(r.lengths)))
	return r
}

// Identity resolves one end: epid is the flow's local endpoint at that
// end, 0 for none.
func (r *Resolver) Identity(epid uint16, addr netip.Addr) uint32 {
	if id, ok := r.byEndpoint[epid]; ok && epid != 0 {
		return id
	}
	for _, bits := range r.lengths {
		p, err := addr.Prefix(bits)
		if err != nil {
			continue // another family
		}
		if id, ok := r.byLength[bits][p]; ok {
			return id
		}
	}
	return IdentityWorld
}

// HasEndpoint reports whether the resolver knows local endpoint epid.
func (r *Resolver) HasEndpoint(epid uint16) bool {
	_, ok := r.byEndpoint[epid]
	return ok
}
