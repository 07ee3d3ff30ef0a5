// Package ipam is ebpfnet's IPAM driver: it answers Docker's /IpamDriver.*
// calls (the go-plugins-helpers ipam.Ipam interface) from an IPv4 and IPv6
// address allocator whose state survives restarts, since Docker never
// replays pool or address requests to a remote IPAM driver.
package ipam

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"
	"github.com/sirupsen/logrus"
)

const (
	// LocalAddressSpace and GlobalAddressSpace are the address space names
	// returned by GetDefaultAddressSpaces.
	LocalAddressSpace  = "ebpfnet-local"
	GlobalAddressSpace = "ebpfnet-global"

	// DefaultPoolRange is the range pools are carved from when a network is
	// created without --subnet and Config.DefaultPools is empty.
	DefaultPoolRange = "10.200.0.0/16"
	// DefaultPoolPrefixLen is the prefix length of a carved pool when
	// Config.DefaultPoolSize is zero.
	DefaultPoolPrefixLen = 24
	// DefaultPoolRange6 is where IPv6 pools are carved from when a network
	// is created with --ipv6 and no IPv6 --subnet, and
	// Config.DefaultPools6 is empty: a unique local /48 (RFC 4193).
	DefaultPoolRange6 = "fd00:ebbf::/48"
	// DefaultPoolPrefixLen6 is the prefix length of a carved IPv6 pool
	// when Config.DefaultPoolSize6 is zero: a /64, the subnet size IPv6
	// expects.
	DefaultPoolPrefixLen6 = 64

	// RequestAddressTypeOption is the RequestAddress option that tells what
	// the address is for; GatewayAddressType is its value for the gateway.
	RequestAddressTypeOption = "RequestAddressType"
	GatewayAddressType       = "com.docker.network.gateway"
)

// Config configures a Driver.
type Config struct {
	// StatePath is the file holding pools and addresses, e.g.
	// /var/lib/ebpfnet/ipam.json, when Store is nil. Its directory is
	// created if missing.
	StatePath string
	// VolatilePath, when set, is the live copy of the state, in the run
	// directory: a MirrorStore keeps it and StatePath (mirror.go).
	VolatilePath string
	// Store, if set, keeps the state instead of a FileStore at StatePath.
	Store Store
	// DefaultPools is where pools come from when Docker requests one without
	// a subnet; empty means DefaultPoolRange.
	DefaultPools []netip.Prefix
	// DefaultPoolSize is the prefix length of each carved pool; zero means
	// DefaultPoolPrefixLen.
	DefaultPoolSize int
	// DefaultPools6 and DefaultPoolSize6 are the same for IPv6 pools
	// (DefaultPoolRange6, DefaultPoolPrefixLen6).
	DefaultPools6    []netip.Prefix
	DefaultPoolSize6 int
	// HostRoutes lists the destinations of the host's routes, so that a
	// carved pool does not shadow a network the host already reaches. It is
	// injected to keep this package free of netlink in tests; production
	// passes HostRoutesNetlink. Nil means the host has no routes to avoid.
	HostRoutes func() ([]netip.Prefix, error)
	// Logger receives pool and address events; nil discards them.
	Logger logrus.FieldLogger
	// Blocks, in a cluster, makes every pool a cluster network whose
	// addresses this node hands out from its own block; nil on one node.
	Blocks Blocks
}

// Blocks hands this node its share of a cluster network. In a cluster the
// same subnet on every node is one network, and each node allocates from a
// block of it that it has claimed, so no address is handed out twice and
// address requests stay local and fast. *cluster.Node implements it.
type Blocks interface {
	// ClaimBlock registers subnet as a cluster network, refusing one
	// that overlaps another without being equal to it, and returns this
	// node's block in it, claiming one the first time.
	ClaimBlock(ctx context.Context, subnet netip.Prefix) (netip.Prefix, error)
	// ReleaseBlock gives this node's block of subnet back.
	ReleaseBlock(ctx context.Context, subnet netip.Prefix) error
	// Networks lists the cluster networks, which a carved pool avoids.
	Networks(ctx context.Context) ([]netip.Prefix, error)
}

// clusterCallTimeout bounds a call to the cluster's store: Docker waits for
// our answer while it holds its own locks.
const clusterCallTimeout = 10 * time.Second

// PoolInfo describes one pool for the local API and tests.
type PoolInfo struct {
	ID           string       `json:"id"`
	AddressSpace string       `json:"addressSpace"`
	Pool         netip.Prefix `json:"pool"`
	// SubPool is the --ip-range; the zero Prefix when there is none.
	SubPool netip.Prefix `json:"subPool"`
	// Gateway is the zero Addr until Docker has requested the gateway.
	Gateway netip.Addr `json:"gateway"`
	// Addresses holds every allocated address, gateway included, ascending.
	Addresses []netip.Addr `json:"addresses"`
}

// Driver implements ipamapi.Ipam. It is safe for concurrent use: Docker
// calls it concurrently for different containers.
type Driver struct {
	// mu serialises every request, including the state write, so that the
	// file always reflects the order in which changes were made.
	mu         sync.Mutex
	alloc      *allocator
	store      Store
	hostRoutes func() ([]netip.Prefix, error)
	blocks     Blocks
	log        logrus.FieldLogger
	// pending is State.Pending: no address or pool is handed out until
	// Confirm. The releases Docker sends meanwhile are kept, to be applied
	// again to the confirmed state.
	pending         bool
	pendingReleases []poolAddress
	pendingPools    []string
}

var _ ipamapi.Ipam = (*Driver)(nil)

// poolFamily is what defaultPools checks the default pools of one address
// family against.
type poolFamily struct {
	word           string // in errors: "" or "IPv6 "
	is6            bool
	fallback       string // the default range when none is given
	prefixLen      int    // the default pool size when none is given
	minLen, maxLen int
}

var (
	family4 = poolFamily{word: "", fallback: DefaultPoolRange, prefixLen: DefaultPoolPrefixLen, minLen: MinPrefixLen, maxLen: MaxPrefixLen}
	family6 = poolFamily{word: "IPv6 ", is6: true, fallback: DefaultPoolRange6, prefixLen: DefaultPoolPrefixLen6, minLen: MinPrefixLen6, maxLen: MaxPrefixLen6}
)

// defaultPools returns the default pools and pool size of family f, as
// given or f's own, once they hold together.
func defaultPools(f poolFamily, given []netip.Prefix, size int) ([]netip.Prefix, int, error) {
	if len(given) == 0 {
		given = []netip.Prefix{netip.MustParsePrefix(f.fallback)}
	}
	if size == 0 {
		size = f.prefixLen
	}
	if size < f.minLen || size > f.maxLen {
		return nil, 0, fmt.Errorf("ipam: default %spool size /%d must be between /%d and /%d", f.word, size, f.minLen, f.maxLen)
	}
	ipv := map[bool]string{false: "IPv4", true: "IPv6"}[f.is6]
	for _, p := range given {
		if !p.IsValid() || p.Addr().Is6() != f.is6 || p.Addr().Is4In6() || p != p.Masked() {
			return nil, 0, fmt.Errorf("ipam: default %spool %s must be a canonical %s prefix", f.word, p, ipv)
		}
		if p.Bits() > size {
			return nil, 0, fmt.Errorf("ipam: default %spool %s is smaller than the default %spool size /%d", f.word, p, f.word, size)
		}
	}
	return given, size, nil
}

// New validates cfg and loads the persisted state. A missing state file is
// an empty state; an unreadable or corrupt one is an error.
func New(cfg Config) (*Driver, error) {
	if cfg.StatePath == "" && cfg.Store == nil {
		return nil, errors.New("ipam: StatePath or Store is required")
	}
	defaults, size, err := defaultPools(family4, cfg.DefaultPools, cfg.DefaultPoolSize)
	if err != nil {
		return nil, err
	}
	defaults6, size6, err := defaultPools(family6, cfg.DefaultPools6, cfg.DefaultPoolSize6)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		log = l
	}
	alloc := newAllocator(append([]netip.Prefix(nil), defaults...), size)
	alloc.defaultPools6, alloc.defaultPoolLen6 = append([]netip.Prefix(nil), defaults6...), size6
	d := &Driver{
		alloc:      alloc,
		store:      cfg.Store,
		blocks:     cfg.Blocks,
		hostRoutes: cfg.HostRoutes,
		log:        log.WithField("component", "ipam"),
	}
	if d.store == nil {
		if err := os.MkdirAll(filepath.Dir(cfg.StatePath), 0o700); err != nil {
			return nil, fmt.Errorf("ipam: create state directory: %w", err)
		}
		d.store = FileStore{Path: cfg.StatePath}
		if cfg.VolatilePath != "" {
			if err := os.MkdirAll(filepath.Dir(cfg.VolatilePath), 0o700); err != nil {
				return nil, fmt.Errorf("ipam: create run directory: %w", err)
			}
			d.store = &MirrorStore{Durable: cfg.StatePath, Volatile: cfg.VolatilePath}
		}
	}
	if d.pending, err = d.alloc.load(d.store); err != nil {
		return nil, fmt.Errorf("ipam: %w", err)
	}
	return d, nil
}

// commit persists the current state durably; if that fails it runs undo,
// so that memory never holds a change the file lacks.
func (d *Driver) commit(undo func()) error {
	return d.persist(undo, d.store.Save)
}

// commitAddress persists an address change: without waiting for the disk
// where the store can (VolatileSaver), since a power loss costs nothing
// that a restart does not recover. One flush less per docker run and per
// container removal.
func (d *Driver) commitAddress(undo func()) error {
	if v, ok := d.store.(VolatileSaver); ok {
		return d.persist(undo, v.SaveVolatile)
	}
	return d.commit(undo)
}

func (d *Driver) persist(undo func(), save func(State) error) error {
	if err := save(d.alloc.snapshot(d.pending)); err != nil {
		undo()
		return err
	}
	return nil
}

// GetCapabilities implements ipamapi.Ipam.
func (d *Driver) GetCapabilities() (*ipamapi.CapabilitiesResponse, error) {
	return &ipamapi.CapabilitiesResponse{RequiresMACAddress: false}, nil
}

// GetDefaultAddressSpaces implements ipamapi.Ipam.
func (d *Driver) GetDefaultAddressSpaces() (*ipamapi.AddressSpacesResponse, error) {
	return &ipamapi.AddressSpacesResponse{
		LocalDefaultAddressSpace:  LocalAddressSpace,
		GlobalDefaultAddressSpace: GlobalAddressSpace,
	}, nil
}

func validAddressSpace(s string) bool {
	return s == LocalAddressSpace || s == GlobalAddressSpace
}

// RequestPool implements ipamapi.Ipam: it registers the requested subnet, or
// carves one from the default pools of its family (IPv6's with req.V6) when
// none is given, or only its size.
func (d *Driver) RequestPool(req *ipamapi.RequestPoolRequest) (*ipamapi.RequestPoolResponse, error) {
	space := req.AddressSpace
	if space == "" {
		space = LocalAddressSpace
	}
	if !validAddressSpace(space) {
		return nil, fmt.Errorf("unknown address space %q: ebpfnet serves %s and %s", space, LocalAddressSpace, GlobalAddressSpace)
	}
	var prefix, sub netip.Prefix
	// anySize is a pool of any address but this size: Docker 29 passes
	// `--subnet 0.0.0.0/24` on as it is, meaning "a /24 of the defaults",
	// and `::/64` for IPv6.
	anySize := false
	if req.Pool != "" {
		var err error
		if prefix, err = parseSubnet("subnet", req.Pool); err != nil {
			return nil, err
		}
		if prefix.Addr().Is6() != req.V6 {
			family := map[bool]string{false: "IPv4", true: "IPv6"}[req.V6]
			return nil, fmt.Errorf("subnet %s is not an %s subnet, which Docker asked for", prefix, family)
		}
		if err := checkPoolSize(prefix); err != nil {
			return nil, err
		}
		anySize = prefix.Addr().IsUnspecified()
	}
	if req.SubPool != "" {
		if req.Pool == "" || anySize {
			return nil, fmt.Errorf("ip-range %s needs a subnet", req.SubPool)
		}
		if d.blocks != nil {
			return nil, fmt.Errorf("ip-range %s: a network of the cluster has no ip-range, each node hands out addresses from a block of its own", req.SubPool)
		}
		var err error
		if sub, err = parseSubnet("ip-range", req.SubPool); err != nil {
			return nil, err
		}
		if err := checkSubPool(prefix, sub); err != nil {
			return nil, err
		}
	}

	var avoid []netip.Prefix
	if (req.Pool == "" || anySize) && d.blocks != nil {
		// Outside the lock: the store may be slow, address requests
		// of other networks must not wait for it.
		ctx, cancel := context.WithTimeout(context.Background(), clusterCallTimeout)
		nets, err := d.blocks.Networks(ctx)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("list the cluster's networks to choose a free subnet: %w", err)
		}
		avoid = nets
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pending {
		return nil, fmt.Errorf("request pool: %w", ErrRebuilding)
	}
	if req.Pool == "" || anySize {
		bits := d.alloc.defaultPoolLen
		if req.V6 {
			bits = d.alloc.defaultPoolLen6
		}
		if anySize {
			bits = prefix.Bits()
		}
		routes := avoid
		if d.hostRoutes != nil {
			hr, err := d.hostRoutes()
			if err != nil {
				// Carving blind could shadow a network the host uses.
				return nil, fmt.Errorf("list host routes to choose a free subnet: %w", err)
			}
			routes = append(routes, hr...)
		}
		var err error
		if prefix, err = d.alloc.carve(routes, bits, req.V6); err != nil {
			return nil, err
		}
	}
	block := false
	if d.blocks != nil {
		if other := d.alloc.overlapping(prefix); other != nil {
			return nil, fmt.Errorf("subnet %s overlaps %s of an existing ebpfnet network", prefix, other.prefix)
		}
		var err error
		if sub, err = d.claimBlock(prefix); err != nil {
			return nil, err
		}
		block = true
	}
	p, undo, err := d.alloc.addPool(space, prefix, sub)
	if err != nil {
		if block {
			d.releaseBlock(prefix)
		}
		return nil, err
	}
	p.block = block
	if err := d.commit(undo); err != nil {
		if block {
			d.releaseBlock(prefix)
		}
		return nil, fmt.Errorf("request pool %s: %w", prefix, err)
	}
	d.log.WithFields(logrus.Fields{"pool": p.prefix, "ipRange": p.subPool, "id": p.id, "block": block}).Info("pool created")
	return &ipamapi.RequestPoolResponse{PoolID: p.id, Pool: p.prefix.String()}, nil
}

// claimBlock asks the cluster for this node's block of subnet.
func (d *Driver) claimBlock(subnet netip.Prefix) (netip.Prefix, error) {
	ctx, cancel := context.WithTimeout(context.Background(), clusterCallTimeout)
	defer cancel()
	block, err := d.blocks.ClaimBlock(ctx, subnet)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("claim this node's block of cluster network %s: %w", subnet, err)
	}
	if !subnet.Contains(block.Addr()) || block.Bits() < subnet.Bits() {
		d.releaseBlock(subnet)
		return netip.Prefix{}, fmt.Errorf("the cluster gave block %s, outside network %s", block, subnet)
	}
	return block, nil
}

// releaseBlock gives this node's block of subnet back, logging a failure:
// the block stays this node's until the pool is released again (reconcile
// at the next start) or the node is removed.
func (d *Driver) releaseBlock(subnet netip.Prefix) {
	ctx, cancel := context.WithTimeout(context.Background(), clusterCallTimeout)
	defer cancel()
	if err := d.blocks.ReleaseBlock(ctx, subnet); err != nil {
		d.log.WithError(err).WithField("subnet", subnet).Warn("give this node's block back to the cluster")
	}
}

// ReleasePool implements ipamapi.Ipam. Releasing an unknown pool succeeds:
// Docker may retry a release whose answer it did not see.
func (d *Driver) ReleasePool(req *ipamapi.ReleasePoolRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pending {
		d.pendingPools = append(d.pendingPools, req.PoolID)
	}
	p, ok := d.alloc.pools[req.PoolID]
	if !ok {
		d.log.WithField("id", req.PoolID).Debug("release of unknown pool ignored")
		return nil
	}
	if p.block && d.blocks != nil {
		// The block first: if the cluster cannot take it back now, the
		// pool stays, and the release is tried again (by Docker, or by
		// reconcile at the next start) rather than the block leaking.
		ctx, cancel := context.WithTimeout(context.Background(), clusterCallTimeout)
		err := d.blocks.ReleaseBlock(ctx, p.prefix)
		cancel()
		if err != nil {
			return fmt.Errorf("release pool %s: give this node's block back to the cluster: %w", req.PoolID, err)
		}
	}
	undo, _ := d.alloc.removePool(req.PoolID)
	if err := d.commit(undo); err != nil {
		return fmt.Errorf("release pool %s: %w", req.PoolID, err)
	}
	d.log.WithField("id", req.PoolID).Info("pool released")
	return nil
}

// parseAddress accepts a bare address, as Docker sends it, or an address in
// CIDR form, since that is what RequestAddress answers.
func parseAddress(s string) (netip.Addr, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return a, nil
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr(), nil
	}
	return netip.Addr{}, fmt.Errorf("invalid address %q", s)
}

// RequestAddress implements ipamapi.Ipam. The answer carries the pool's
// prefix length (10.77.0.2/16), which Docker requires.
func (d *Driver) RequestAddress(req *ipamapi.RequestAddressRequest) (*ipamapi.RequestAddressResponse, error) {
	isGateway := req.Options[RequestAddressTypeOption] == GatewayAddressType
	var want netip.Addr
	if req.Address != "" {
		var err error
		if want, err = parseAddress(req.Address); err != nil {
			return nil, err
		}
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pending {
		return nil, fmt.Errorf("request address: %w", ErrRebuilding)
	}
	p, ok := d.alloc.pools[req.PoolID]
	if !ok {
		return nil, fmt.Errorf("unknown pool ID %q", req.PoolID)
	}
	if isGateway && !want.IsValid() {
		// The first usable address, as the bridge driver would choose,
		// even when an --ip-range leaves it outside the dynamic range.
		first, _ := bounds(p.prefix)
		want = first.Next()
	}
	if p.block && want.IsValid() && !isGateway && !p.subPool.Contains(want) {
		// Another node's block, or one nobody has claimed yet: an
		// address in it could be handed out twice.
		return nil, fmt.Errorf("address %s is outside this node's block %s of cluster network %s: choose one in the block", want, p.subPool, p.prefix)
	}
	var (
		addr netip.Addr
		undo func()
		err  error
	)
	if want.IsValid() {
		addr = want
		undo, err = p.reserve(want)
	} else {
		addr, undo, err = p.allocateNext()
	}
	if err != nil {
		return nil, err
	}
	if isGateway {
		prevGateway, undoReserve := p.gateway, undo
		p.gateway = addr
		undo = func() {
			p.gateway = prevGateway
			undoReserve()
		}
	}
	// The gateway is part of the network, which Docker never asks for
	// again: durable. A container's address: see commitAddress.
	commit := d.commitAddress
	if isGateway {
		commit = d.commit
	}
	if err := commit(undo); err != nil {
		return nil, fmt.Errorf("request address %s on pool %s: %w", addr, p.prefix, err)
	}
	d.log.WithFields(logrus.Fields{"pool": p.prefix, "address": addr, "gateway": isGateway}).Debug("address allocated")
	return &ipamapi.RequestAddressResponse{Address: netip.PrefixFrom(addr, p.prefix.Bits()).String()}, nil
}

// ReleaseAddress implements ipamapi.Ipam. Releasing an address that is not
// allocated, or one of an unknown pool, succeeds: Docker releases the gateway
// and retries releases, and the end state is what it asked for.
func (d *Driver) ReleaseAddress(req *ipamapi.ReleaseAddressRequest) error {
	addr, err := parseAddress(req.Address)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pending {
		d.pendingReleases = append(d.pendingReleases, poolAddress{poolID: req.PoolID, addr: addr})
	}
	p, ok := d.alloc.pools[req.PoolID]
	if !ok {
		d.log.WithFields(logrus.Fields{"id": req.PoolID, "address": addr}).Debug("release on unknown pool ignored")
		return nil
	}
	undo, released := p.release(addr)
	if !released {
		d.log.WithFields(logrus.Fields{"pool": p.prefix, "address": addr}).Debug("release of unallocated address ignored")
		return nil
	}
	if err := d.commitAddress(undo); err != nil {
		return fmt.Errorf("release address %s on pool %s: %w", addr, p.prefix, err)
	}
	d.log.WithFields(logrus.Fields{"pool": p.prefix, "address": addr}).Debug("address released")
	return nil
}

// Pools returns every pool with its allocated addresses, ordered by subnet.
func (d *Driver) Pools() []PoolInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.poolsLocked()
}

func (d *Driver) poolsLocked() []PoolInfo {
	out := []PoolInfo{}
	for _, p := range d.alloc.sortedPools() {
		out = append(out, PoolInfo{
			ID:           p.id,
			AddressSpace: p.addressSpace,
			Pool:         p.prefix,
			SubPool:      p.subPool,
			Gateway:      p.gateway,
			Addresses:    p.addresses(),
		})
	}
	return out
}
