package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
)

// When ipam.json is lost (corrupt, or missing on a node that has
// endpoints), what it held is rebuilt in two steps (plugin/heal.go): at
// start from what the endpoints' records know (RebuiltState, pending),
// and once Docker answers from what Docker holds (Driver.Confirm). In
// between no address is handed out: one in use may be missing yet.

// ErrRebuilding answers a request for a pool or an address while the state
// is pending.
var ErrRebuilding = errors.New("the IPAM state is being rebuilt (ipam.json was lost) and Docker has not yet been asked which addresses are in use; try again in a moment")

// PoolSeed is what a source knows of one pool: the endpoints' records
// (subnet, gateway, their addresses) or Docker's network inspection (also
// the ip-range and the aux addresses, which Docker requested as addresses).
type PoolSeed struct {
	// AddressSpace is LocalAddressSpace when empty: a local-scope
	// driver's networks are in the local space.
	AddressSpace string
	Pool         netip.Prefix
	// SubPool is the --ip-range; a seed from the records has none.
	SubPool netip.Prefix
	// Gateway is reserved as the pool's gateway when valid.
	Gateway netip.Addr
	// Addresses are in use: reserved as they are.
	Addresses []netip.Addr
}

type poolAddress struct {
	poolID string
	addr   netip.Addr
}

// addSeed adds a pool from a seed and reserves what it names; addresses
// reserved already are no error. It reports what it had to leave out.
func (a *allocator) addSeed(s PoolSeed) (*pool, []error) {
	space := s.AddressSpace
	if space == "" {
		space = LocalAddressSpace
	}
	var problems []error
	pool, sub := s.Pool, s.SubPool
	switch {
	case !validAddressSpace(space):
		return nil, []error{fmt.Errorf("pool %s: unknown address space %q", pool, space)}
	case !pool.IsValid() || pool.Addr().Is4In6() || pool != pool.Masked():
		return nil, []error{fmt.Errorf("pool %v is not a canonical IPv4 or IPv6 prefix", pool)}
	}
	if err := checkPoolSize(pool); err != nil {
		return nil, []error{err}
	}
	if sub.IsValid() {
		if err := checkSubPool(pool, sub.Masked()); err != nil {
			problems = append(problems, fmt.Errorf("pool %s: %w; kept without it", pool, err))
			sub = netip.Prefix{}
		} else {
			sub = sub.Masked()
		}
	}
	p, _, err := a.addPool(space, pool, sub)
	if err != nil {
		return nil, []error{err}
	}
	for _, addr := range append(append([]netip.Addr{}, s.Addresses...), s.Gateway) {
		if !addr.IsValid() || p.has(addr) {
			continue
		}
		if _, err := p.reserve(addr); err != nil {
			problems = append(problems, err)
		}
	}
	if s.Gateway.IsValid() && p.has(s.Gateway) {
		p.gateway = s.Gateway
	}
	return p, problems
}

// continueAfterHighest makes the next dynamic allocation start after the
// highest address in use, so that an address released just before the
// state was lost is not the first one handed out again.
func (p *pool) continueAfterHighest() {
	first, last, ok := p.dynamicRange()
	if !ok {
		return
	}
	var high netip.Addr
	for _, a := range p.allocated.sorted {
		if a.Compare(first) >= 0 && a.Compare(last) <= 0 && (!high.IsValid() || high.Less(a)) {
			high = a
		}
	}
	if high.IsValid() {
		p.last = high
	}
}

// RebuiltState is the pending state of the pools seeds describe (the
// endpoints' records), to be saved in place of a lost ipam.json. Seeds it
// cannot take (overlapping another, invalid) and addresses outside their
// pool are left out and reported.
func RebuiltState(seeds []PoolSeed) (State, []error) {
	a := newAllocator(nil, DefaultPoolPrefixLen)
	var problems []error
	for _, s := range sortedSeeds(seeds) {
		p, errs := a.addSeed(s)
		problems = append(problems, errs...)
		if p != nil {
			p.continueAfterHighest()
		}
	}
	return a.snapshot(true), problems
}

// Pending says whether the state waits for Confirm: until then, no pool or
// address is handed out.
func (d *Driver) Pending() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pending
}

// Confirm ends a pending state with what Docker holds: one pool per seed
// (Docker's networks that use this IPAM driver, with their ip-ranges, so
// that the pool IDs are those Docker sends), holding Docker's addresses and
// every address the rebuilt state held in the same subnet. Pools Docker
// does not know go: nobody will ask for them. Releases that Docker sent
// meanwhile are applied again (the seeds may have been read before them).
// The state is saved, addresses are handed out again, and the pools are
// returned as they are at that moment, before any new allocation. It
// reports the seeds and addresses it had to leave out.
func (d *Driver) Confirm(docker []PoolSeed) ([]PoolInfo, []error, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.pending {
		return d.poolsLocked(), nil, nil
	}
	held := map[netip.Prefix][]netip.Addr{}
	gateways := map[netip.Prefix]netip.Addr{}
	for _, p := range d.alloc.pools {
		held[p.prefix] = append(held[p.prefix], p.addresses()...)
		if p.gateway.IsValid() {
			gateways[p.prefix] = p.gateway
		}
	}
	next := newAllocator(d.alloc.defaultPools, d.alloc.defaultPoolLen)
	var problems []error
	for _, s := range sortedSeeds(docker) {
		s.Addresses = append(append([]netip.Addr{}, s.Addresses...), held[s.Pool.Masked()]...)
		if !s.Gateway.IsValid() {
			s.Gateway = gateways[s.Pool.Masked()]
		}
		p, errs := next.addSeed(s)
		problems = append(problems, errs...)
		if p != nil {
			p.continueAfterHighest()
		}
	}
	for _, r := range d.pendingReleases {
		if p, ok := next.pools[r.poolID]; ok {
			p.release(r.addr)
		}
	}
	for _, id := range d.pendingPools {
		next.removePool(id)
	}
	prev := d.alloc
	d.alloc, d.pending = next, false
	if err := d.commit(func() { d.alloc, d.pending = prev, true }); err != nil {
		return nil, problems, fmt.Errorf("confirm the rebuilt IPAM state: %w", err)
	}
	d.pendingReleases, d.pendingPools = nil, nil
	d.log.WithField("pools", len(next.pools)).Info("IPAM state confirmed by Docker: addresses are handed out again")
	return d.poolsLocked(), problems, nil
}

// sortedSeeds orders seeds by subnet, so that which of two overlapping
// seeds is kept does not depend on the caller's order.
func sortedSeeds(seeds []PoolSeed) []PoolSeed {
	out := append([]PoolSeed(nil), seeds...)
	sort.SliceStable(out, func(i, j int) bool {
		if c := out[i].Pool.Addr().Compare(out[j].Pool.Addr()); c != 0 {
			return c < 0
		}
		return out[i].Pool.Bits() < out[j].Pool.Bits()
	})
	return out
}
