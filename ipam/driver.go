// Package ipam is ebpfnet's IPAM driver: it answers Docker's /IpamDriver.*
// calls (the go-plugins-helpers ipam.Ipam interface) from an IPv4 address
// allocator whose state survives restarts, since Docker never replays pool
// or address requests to a remote IPAM driver.
package ipam

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sync"

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

	// RequestAddressTypeOption is the RequestAddress option that tells what
	// the address is for; GatewayAddressType is its value for the gateway.
	RequestAddressTypeOption = "RequestAddressType"
	GatewayAddressType       = "com.docker.network.gateway"
)

// Config configures a Driver.
type Config struct {
	// StatePath is the file holding pools and addresses, e.g.
	// /var/lib/ebpfnet/ipam.json. Its directory is created if missing.
	StatePath string
	// DefaultPools is where pools come from when Docker requests one without
	// a subnet; empty means DefaultPoolRange.
	DefaultPools []netip.Prefix
	// DefaultPoolSize is the prefix length of each carved pool; zero means
	// DefaultPoolPrefixLen.
	DefaultPoolSize int
	// HostRoutes lists the destinations of the host's routes, so that a
	// carved pool does not shadow a network the host already reaches. It is
	// injected to keep this package free of netlink in tests; production
	// passes HostRoutesNetlink. Nil means the host has no routes to avoid.
	HostRoutes func() ([]netip.Prefix, error)
	// Logger receives pool and address events; nil discards them.
	Logger logrus.FieldLogger
}

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
	statePath  string
	hostRoutes func() ([]netip.Prefix, error)
	log        logrus.FieldLogger
}

var _ ipamapi.Ipam = (*Driver)(nil)

// New validates cfg and loads the persisted state. A missing state file is
// an empty state; an unreadable or corrupt one is an error.
func New(cfg Config) (*Driver, error) {
	if cfg.StatePath == "" {
		return nil, errors.New("ipam: StatePath is required")
	}
	defaults := cfg.DefaultPools
	if len(defaults) == 0 {
		defaults = []netip.Prefix{netip.MustParsePrefix(DefaultPoolRange)}
	}
	size := cfg.DefaultPoolSize
	if size == 0 {
		size = DefaultPoolPrefixLen
	}
	if size < MinPrefixLen || size > MaxPrefixLen {
		return nil, fmt.Errorf("ipam: default pool size /%d must be between /%d and /%d", size, MinPrefixLen, MaxPrefixLen)
	}
	for _, p := range defaults {
		if !p.IsValid() || !p.Addr().Is4() || p != p.Masked() {
			return nil, fmt.Errorf("ipam: default pool %s must be a canonical IPv4 prefix", p)
		}
		if p.Bits() > size {
			return nil, fmt.Errorf("ipam: default pool %s is smaller than the default pool size /%d", p, size)
		}
	}
	log := cfg.Logger
	if log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		log = l
	}
	d := &Driver{
		alloc:      newAllocator(append([]netip.Prefix(nil), defaults...), size),
		statePath:  cfg.StatePath,
		hostRoutes: cfg.HostRoutes,
		log:        log.WithField("component", "ipam"),
	}
	if err := os.MkdirAll(filepath.Dir(cfg.StatePath), 0o700); err != nil {
		return nil, fmt.Errorf("ipam: create state directory: %w", err)
	}
	if err := d.alloc.load(cfg.StatePath); err != nil {
		return nil, fmt.Errorf("ipam: %w", err)
	}
	return d, nil
}

// commit persists the current state; if that fails it runs undo, so that
// memory never holds a change the file lacks.
func (d *Driver) commit(undo func()) error {
	if err := d.alloc.save(d.statePath); err != nil {
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
// carves one from the default pools when none is given, or only its size.
func (d *Driver) RequestPool(req *ipamapi.RequestPoolRequest) (*ipamapi.RequestPoolResponse, error) {
	if req.V6 {
		return nil, errors.New("IPv6 is not supported by ebpfnet yet: create the network without --ipv6")
	}
	space := req.AddressSpace
	if space == "" {
		space = LocalAddressSpace
	}
	if !validAddressSpace(space) {
		return nil, fmt.Errorf("unknown address space %q: ebpfnet serves %s and %s", space, LocalAddressSpace, GlobalAddressSpace)
	}
	var prefix, sub netip.Prefix
	// anySize is a pool of any address but this size: Docker 29 passes
	// `--subnet 0.0.0.0/24` on as it is, meaning "a /24 of the defaults".
	anySize := false
	if req.Pool != "" {
		var err error
		if prefix, err = parseSubnet("subnet", req.Pool); err != nil {
			return nil, err
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
		var err error
		if sub, err = parseSubnet("ip-range", req.SubPool); err != nil {
			return nil, err
		}
		if err := checkSubPool(prefix, sub); err != nil {
			return nil, err
		}
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if req.Pool == "" || anySize {
		bits := d.alloc.defaultPoolLen
		if anySize {
			bits = prefix.Bits()
		}
		var routes []netip.Prefix
		if d.hostRoutes != nil {
			var err error
			if routes, err = d.hostRoutes(); err != nil {
				// Carving blind could shadow a network the host uses.
				return nil, fmt.Errorf("list host routes to choose a free subnet: %w", err)
			}
		}
		var err error
		if prefix, err = d.alloc.carve(routes, bits); err != nil {
			return nil, err
		}
	}
	p, undo, err := d.alloc.addPool(space, prefix, sub)
	if err != nil {
		return nil, err
	}
	if err := d.commit(undo); err != nil {
		return nil, fmt.Errorf("request pool %s: %w", prefix, err)
	}
	d.log.WithFields(logrus.Fields{"pool": p.prefix, "ipRange": p.subPool, "id": p.id}).Info("pool created")
	return &ipamapi.RequestPoolResponse{PoolID: p.id, Pool: p.prefix.String()}, nil
}

// ReleasePool implements ipamapi.Ipam. Releasing an unknown pool succeeds:
// Docker may retry a release whose answer it did not see.
func (d *Driver) ReleasePool(req *ipamapi.ReleasePoolRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	undo, removed := d.alloc.removePool(req.PoolID)
	if !removed {
		d.log.WithField("id", req.PoolID).Debug("release of unknown pool ignored")
		return nil
	}
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
	p, ok := d.alloc.pools[req.PoolID]
	if !ok {
		return nil, fmt.Errorf("unknown pool ID %q", req.PoolID)
	}
	if isGateway && !want.IsValid() {
		// The first usable address, as the bridge driver would choose,
		// even when an --ip-range leaves it outside the dynamic range.
		first, _ := bounds(p.prefix)
		want = addrFrom(first + 1)
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
	if err := d.commit(undo); err != nil {
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
	if err := d.commit(undo); err != nil {
		return fmt.Errorf("release address %s on pool %s: %w", addr, p.prefix, err)
	}
	d.log.WithFields(logrus.Fields{"pool": p.prefix, "address": addr}).Debug("address released")
	return nil
}

// Pools returns every pool with its allocated addresses, ordered by subnet.
func (d *Driver) Pools() []PoolInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
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
