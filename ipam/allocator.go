package ipam

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// The allocator below is pure bookkeeping: no I/O, no locking, no Docker
// strings. The Driver parses requests, serialises access and persists.

const (
	// MinPrefixLen and MaxPrefixLen bound the size of a pool: a /8 is the
	// largest block that still makes sense on one node, and a /30 is the
	// smallest that leaves a usable address besides network and broadcast
	// (a /31 or /32 would have no room for both a gateway and a container).
	MinPrefixLen = 8
	MaxPrefixLen = 30
	// MinPrefixLen6 and MaxPrefixLen6 bound an IPv6 pool: the allocator
	// keeps what is taken, not the range, so a /16 costs no more than a
	// /64; a /126 leaves a gateway and two containers besides the
	// subnet-router anycast address (IPv6 has no broadcast).
	MinPrefixLen6 = 16
	MaxPrefixLen6 = 126
)

// poolID builds the opaque ID Docker stores for a pool. It spells out address
// space, pool and sub-pool so that an ID is self-describing in logs and in the
// state file, and stays the same across restarts.
func poolID(space string, prefix, sub netip.Prefix) string {
	if sub.IsValid() {
		return space + "/" + prefix.String() + "/" + sub.String()
	}
	return space + "/" + prefix.String()
}

// pool is one network's address block and the addresses taken in it.
type pool struct {
	id           string
	addressSpace string
	prefix       netip.Prefix
	// subPool is the --ip-range from which dynamic addresses come; invalid
	// (zero) when the whole pool is the range.
	subPool netip.Prefix
	// gateway is the address Docker requested as the gateway; invalid until
	// then.
	gateway netip.Addr
	// block says that subPool is this node's block of a cluster network
	// (Blocks): no address outside it is handed out but the gateway,
	// which every node of the network shares.
	block bool
	// allocated is a set rather than a bitmap: a /8 holds 16M addresses,
	// an IPv6 /64 2^64, of which a node uses a handful, so memory follows
	// what is used.
	allocated addrSet
	// last is the address most recently handed out by allocateNext; the next
	// search starts after it, so a just-released address is not reused at
	// once (as Docker's own allocator does). Invalid when none yet.
	last netip.Addr
}

func newPool(space string, prefix, sub netip.Prefix) *pool {
	return &pool{
		id:           poolID(space, prefix, sub),
		addressSpace: space,
		prefix:       prefix,
		subPool:      sub,
	}
}

// checkAddress says why a cannot be reserved in p, or nil if it can. The
// first address of a pool is its network's (IPv6's subnet-router anycast
// address), the last of an IPv4 pool its broadcast address.
func (p *pool) checkAddress(a netip.Addr) error {
	if !sameFamily(a, p.prefix) || !p.prefix.Contains(a) {
		return fmt.Errorf("address %s is not in pool %s", a, p.prefix)
	}
	first, last := bounds(p.prefix)
	switch {
	case a == first:
		return fmt.Errorf("address %s is the network address of pool %s", a, p.prefix)
	case a == last && a.Is4():
		return fmt.Errorf("address %s is the broadcast address of pool %s", a, p.prefix)
	}
	if p.allocated.has(a) {
		return fmt.Errorf("address %s is already in use on pool %s", a, p.prefix)
	}
	return nil
}

// reserve takes exactly a. It returns a function that undoes the reservation.
func (p *pool) reserve(a netip.Addr) (undo func(), err error) {
	if err := p.checkAddress(a); err != nil {
		return nil, err
	}
	p.allocated.add(a)
	return func() { p.allocated.remove(a) }, nil
}

// dynamicRange is the inclusive range allocateNext draws from: the sub-pool
// (or the whole pool) without the pool's network and broadcast addresses
// (an IPv6 pool has no broadcast address). The sub-pool's own first and
// last addresses are ordinary addresses of the pool, so they are handed
// out, as Docker does; a node's block of a cluster network keeps them back
// all the same, so that no container gets a 10.90.1.0 that some tools
// would take for a network's address.
func (p *pool) dynamicRange() (first, last netip.Addr, ok bool) {
	pFirst, pLast := bounds(p.prefix)
	first, last = pFirst.Next(), pLast
	if pLast.Is4() {
		last = pLast.Prev()
	}
	if p.subPool.IsValid() {
		sFirst, sLast := bounds(p.subPool)
		if p.block && p.subPool.Bits() < p.subPool.Addr().BitLen()-1 {
			sFirst, sLast = sFirst.Next(), sLast.Prev()
		}
		first, last = maxAddr(first, sFirst), minAddr(last, sLast)
	}
	return first, last, first.Compare(last) <= 0
}

// allocateNext takes the first free address after the last one handed out,
// wrapping around at the end of the range. Every address the loop skips is an
// allocated one, so a search costs at most as many steps as there are
// allocations, never the size of the pool.
func (p *pool) allocateNext() (netip.Addr, func(), error) {
	first, last, ok := p.dynamicRange()
	if !ok {
		return netip.Addr{}, nil, p.exhausted()
	}
	start := first
	if l := p.last; l.IsValid() && sameFamily(l, p.prefix) && l.Compare(first) >= 0 && l.Less(last) {
		start = l.Next()
	}
	cand := start
	// Among len(allocated)+1 candidates one is free, unless the range is
	// smaller than that and the walk has been all round it.
	for range p.allocated.len() + 1 {
		if p.allocated.add(cand) {
			prevLast := p.last
			p.last = cand
			return cand, func() {
				p.allocated.remove(cand)
				p.last = prevLast
			}, nil
		}
		if cand == last {
			cand = first
		} else {
			cand = cand.Next()
		}
	}
	return netip.Addr{}, nil, p.exhausted()
}

func (p *pool) exhausted() error {
	if p.subPool.IsValid() {
		return fmt.Errorf("no free address left in ip-range %s of pool %s", p.subPool, p.prefix)
	}
	return fmt.Errorf("no free address left in pool %s", p.prefix)
}

// release frees a; it reports false when a was not allocated. The returned
// function undoes the release.
func (p *pool) release(a netip.Addr) (undo func(), released bool) {
	if !p.allocated.remove(a) {
		return nil, false
	}
	prevGateway := p.gateway
	if p.gateway == a {
		p.gateway = netip.Addr{}
	}
	return func() {
		p.allocated.add(a)
		p.gateway = prevGateway
	}, true
}

// has reports whether a is allocated in p.
func (p *pool) has(a netip.Addr) bool {
	return p.allocated.has(a)
}

// addresses returns the allocated addresses in ascending order.
func (p *pool) addresses() []netip.Addr { return p.allocated.all() }

// allocator holds every ebpfnet pool. Pools of both address spaces share one
// overlap check: they all end up in the one routing table of this node.
type allocator struct {
	pools map[string]*pool
	// defaultPools and defaultPoolLen describe where pools come from when
	// Docker asks for one without a subnet; defaultPools6 and
	// defaultPoolLen6 the same for IPv6.
	defaultPools    []netip.Prefix
	defaultPoolLen  int
	defaultPools6   []netip.Prefix
	defaultPoolLen6 int
}

func newAllocator(defaultPools []netip.Prefix, defaultPoolLen int) *allocator {
	return &allocator{
		pools:           make(map[string]*pool),
		defaultPools:    defaultPools,
		defaultPoolLen:  defaultPoolLen,
		defaultPools6:   []netip.Prefix{netip.MustParsePrefix(DefaultPoolRange6)},
		defaultPoolLen6: DefaultPoolPrefixLen6,
	}
}

// overlapping returns the existing pool that overlaps prefix, if any.
func (a *allocator) overlapping(prefix netip.Prefix) *pool {
	for _, p := range a.sortedPools() {
		if p.prefix.Overlaps(prefix) {
			return p
		}
	}
	return nil
}

// addPool registers a new pool; prefix and sub must already be validated.
func (a *allocator) addPool(space string, prefix, sub netip.Prefix) (*pool, func(), error) {
	if other := a.overlapping(prefix); other != nil {
		return nil, nil, fmt.Errorf("subnet %s overlaps %s of an existing ebpfnet network", prefix, other.prefix)
	}
	p := newPool(space, prefix, sub)
	a.pools[p.id] = p
	return p, func() { delete(a.pools, p.id) }, nil
}

// removePool forgets a pool and its addresses; it reports false when there is
// no such pool.
func (a *allocator) removePool(id string) (undo func(), removed bool) {
	p, ok := a.pools[id]
	if !ok {
		return nil, false
	}
	delete(a.pools, id)
	return func() { a.pools[id] = p }, true
}

// carve picks the first block of prefix length bits in the default pools of
// a family (the IPv6 ones with v6) that overlaps neither an ebpfnet pool
// nor any of hostRoutes.
func (a *allocator) carve(hostRoutes []netip.Prefix, bits int, v6 bool) (netip.Prefix, error) {
	defaults := a.defaultPools
	if v6 {
		defaults = a.defaultPools6
	}
	used := make([]netip.Prefix, 0, len(a.pools)+len(hostRoutes))
	for _, p := range a.pools {
		used = append(used, p.prefix)
	}
	for _, r := range hostRoutes {
		// A default route covers everything and says nothing about which
		// ranges are in use; honouring it would leave nothing to carve.
		if r.IsValid() && r.Bits() > 0 {
			used = append(used, r.Masked())
		}
	}
	for _, base := range defaults {
		if base.Addr().Is6() != v6 || base.Bits() > bits {
			continue
		}
		_, baseLast := bounds(base)
		for cand := base.Masked().Addr(); cand.IsValid(); {
			block := netip.PrefixFrom(cand, bits)
			_, blockLast := bounds(block)
			next := blockLast.Next() // invalid past the end of the family
			free := true
			for _, u := range used {
				if !u.Overlaps(block) {
					continue
				}
				free = false
				// Jump past a used prefix bigger than the block at once
				// instead of testing each block inside it. Its end is
				// aligned to the block size because it is at least as big.
				if _, uLast := bounds(u); next.IsValid() && !uLast.Less(next) {
					next = uLast.Next()
				}
			}
			if free {
				return block, nil
			}
			if !next.IsValid() || baseLast.Less(next) {
				break
			}
			cand = next
		}
	}
	return netip.Prefix{}, fmt.Errorf("no free /%d left in the default pools %s: every block overlaps an ebpfnet network or a host route; pass --subnet",
		bits, joinPrefixes(defaults))
}

// sortedPools returns the pools ordered by address, so that results and
// messages do not depend on map iteration order.
func (a *allocator) sortedPools() []*pool {
	out := make([]*pool, 0, len(a.pools))
	for _, p := range a.pools {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].prefix.Addr().Compare(out[j].prefix.Addr()); c != 0 {
			return c < 0
		}
		return out[i].prefix.Bits() < out[j].prefix.Bits()
	})
	return out
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// parseSubnet parses a user-supplied subnet (what names it in messages:
// "subnet", "ip-range"). It refuses a non-canonical prefix, as Docker's API
// does, rather than guess whether 10.77.0.5/16 meant 10.77.0.0/16.
func parseSubnet(what, s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid %s %q: %w", what, s, err)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("invalid %s %s: an IPv4-mapped prefix is neither an IPv4 nor an IPv6 pool", what, s)
	}
	if p != p.Masked() {
		return netip.Prefix{}, fmt.Errorf("invalid %s %s: it should be %s", what, s, p.Masked())
	}
	return p, nil
}

// checkPoolSize enforces MinPrefixLen..MaxPrefixLen on a pool, or the IPv6
// bounds on an IPv6 one.
func checkPoolSize(p netip.Prefix) error {
	lo, hi := MinPrefixLen, MaxPrefixLen
	if p.Addr().Is6() {
		lo, hi = MinPrefixLen6, MaxPrefixLen6
	}
	if p.Bits() < lo || p.Bits() > hi {
		return fmt.Errorf("subnet %s is not supported: the prefix length must be between /%d and /%d", p, lo, hi)
	}
	return nil
}

// checkSubPool checks that an --ip-range lies within its pool.
func checkSubPool(prefix, sub netip.Prefix) error {
	if sub.Addr().Is4() != prefix.Addr().Is4() || sub.Bits() < prefix.Bits() || !prefix.Contains(sub.Addr()) {
		return fmt.Errorf("ip-range %s is not within subnet %s", sub, prefix)
	}
	return nil
}
