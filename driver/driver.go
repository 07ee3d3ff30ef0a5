// Package driver is the libnetwork network driver: it turns Docker's
// NetworkDriver calls into networks we persist and endpoints the datapath
// builds. It speaks Docker; the kernel work is the datapath's.
package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/datapath"
	"github.com/ebpfnet/ebpfnet/dockerid"
	"github.com/ebpfnet/ebpfnet/external"
	"github.com/ebpfnet/ebpfnet/identity"
	"github.com/ebpfnet/ebpfnet/policy"
)

// Datapath is the host-side plumbing of networks (gateway address,
// routes). *datapath.Datapath implements it; unit tests use a fake.
type Datapath interface {
	AddNetwork(datapath.Network) error
	RemoveNetwork(datapath.Network) error
}

// Endpoints builds and removes endpoints once the driver has translated
// Docker's request. *endpoint.Manager implements it; unit tests use a fake.
type Endpoints interface {
	CreateEndpoint(ctx context.Context, ep *datapath.Endpoint) error
	DeleteEndpoint(ctx context.Context, dockerEndpointID string) error
	Endpoint(dockerEndpointID string) (datapath.Endpoint, bool)
}

// External is the way off and onto the node: masquerade, --internal
// isolation and published ports. *external.Manager implements it; nil means
// none (unit tests, and daemons that do not want it).
type External interface {
	AddNetwork(external.Network) error
	RemoveNetwork(networkID string) error
	Program(networkID, endpointID, ifName string, ip, ip6 netip.Addr, bindings []external.Binding) ([]external.Mapping, error)
	Revoke(endpointID string) error
}

// Option keys that Docker puts in CreateNetwork's Options.
const (
	optionGeneric  = "com.docker.network.generic"
	optionInternal = "com.docker.network.internal"
	// optionEnableIPv4 is false for `docker network create --ipv4=false`
	// (Docker 28+, which always sends it); optionEnableIPv6 is true with
	// --ipv6 (Docker 28+; earlier versions send the IPv6 pool only).
	optionEnableIPv4 = "com.docker.network.enable_ipv4"
	optionEnableIPv6 = "com.docker.network.enable_ipv6"
	// ContainerPrefix is the DstPrefix Docker appends a number to: eth0.
	ContainerPrefix = "eth"
	// optionPrefix marks our own -o options; an unknown one is an error, so
	// that a typo never silently means "default".
	optionPrefix = "ebpfnet."
)

// EndpointCallTimeout bounds how long a Docker call waits for the endpoint
// manager. Docker sets no timeout on a v1 plugin and holds its
// per-network lock meanwhile, so one stuck call would stall every
// `docker run` on the network; an answer with an error frees it.
const EndpointCallTimeout = 20 * time.Second

// OptionMTU is the bridge driver's MTU option, which ours honours too.
const OptionMTU = "com.docker.network.driver.mtu"

// networkMTU is the MTU of a new network's containers: -o
// com.docker.network.driver.mtu, at most max when there is one (the
// overlay's), else max; 0 leaves the kernel's default.
func networkMTU(options map[string]string, max int) (int, error) {
	v, ok := options[OptionMTU]
	if !ok {
		return max, nil
	}
	mtu, err := strconv.Atoi(v)
	if err != nil || mtu < 576 || mtu > 65535 {
		return 0, fmt.Errorf("%s=%q: want a number from 576 to 65535", OptionMTU, v)
	}
	if max > 0 && mtu > max {
		return 0, fmt.Errorf("%s=%d: the overlay between nodes carries at most %d", OptionMTU, mtu, max)
	}
	return mtu, nil
}

// Network options (-o) of ours.
const (
	// OptionPolicyEnforcement is default, always or never, as Cilium's
	// --enable-policy: default enforces a direction once a rule selects the
	// endpoint in it; always enforces with no rules (deny all); never
	// allows everything whatever the rules.
	OptionPolicyEnforcement = "ebpfnet.policy-enforcement"
	// OptionPolicyAudit true reports policy verdicts without dropping.
	OptionPolicyAudit = "ebpfnet.policy-audit"
)

// knownOptions lists the ebpfnet.* network options this version understands,
// each with a check of its value.
func knownOptions() map[string]func(string) error {
	return map[string]func(string) error{
		OptionPolicyEnforcement: func(v string) error {
			switch v {
			case "default", "always", "never":
				return nil
			}
			return fmt.Errorf("%s=%q: want default, always or never", OptionPolicyEnforcement, v)
		},
		// The bridge driver's masquerade switch, under its own name: not an
		// ebpfnet.* key, so it is checked here rather than refused.
		external.OptionMasquerade: func(v string) error {
			if _, err := strconv.ParseBool(v); err != nil {
				return fmt.Errorf("%s=%q: want true or false", external.OptionMasquerade, v)
			}
			return nil
		},
		OptionPolicyAudit: func(v string) error {
			if _, err := strconv.ParseBool(v); err != nil {
				return fmt.Errorf("%s=%q: want true or false", OptionPolicyAudit, v)
			}
			return nil
		},
	}
}

// Driver implements network.Driver.
type Driver struct {
	log       logrus.FieldLogger
	datapath  Datapath
	endpoints Endpoints
	external  External

	mu       sync.Mutex // serialises every change to networks
	networks *networkStore
	// observe learns the networks after every change (OnNetworks).
	observe func([]Network)
	// maxMTU caps new networks' MTU (SetMaxMTU); 0 for none.
	maxMTU int
	// creations are the endpoints being built after CreateEndpoint
	// answered (creations.go).
	creations *creations
	// observeBuild learns each build's duration (ObserveBuilds).
	observeBuild func(failed bool, took time.Duration)
}

var _ network.Driver = (*Driver)(nil)

// New loads the persisted networks from statePath and makes sure the
// datapath has each of them (gateway address, routes) again.
func New(statePath string, dp Datapath, eps Endpoints, log logrus.FieldLogger) (*Driver, error) {
	store, err := loadNetworkStore(statePath)
	if err != nil {
		return nil, err
	}
	d := &Driver{log: log, datapath: dp, endpoints: eps, networks: store, creations: newCreations()}
	for _, n := range store.list() {
		if err := dp.AddNetwork(n.Datapath); err != nil {
			return nil, fmt.Errorf("restore network %s: %w", dockerid.Short(n.ID), err)
		}
	}
	return d, nil
}

// OnNetworks installs fn, which learns every network after each change.
// It is called under the driver's lock, so that the lists arrive in the
// order the changes happened: fn must only take note (the endpoint
// manager queues them). Call it before serving Docker.
func (d *Driver) OnNetworks(fn func([]Network)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.observe = fn
}

// networksChanged tells the observer; d.mu is held.
func (d *Driver) networksChanged() {
	if d.observe == nil {
		return
	}
	var out []Network
	for _, n := range d.networks.list() {
		out = append(out, toNetwork(n))
	}
	d.observe(out)
}

// SetExternal installs the NAT and port publishing side; call it before
// serving Docker.
func (d *Driver) SetExternal(e External) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.external = e
}

// SetMaxMTU caps the MTU of the containers of new networks: in a cluster
// the overlay's, which is smaller than the uplink's by the encapsulation.
// A network gets it unless -o com.docker.network.driver.mtu asks for less.
// Call it before serving Docker; 0 (one node) leaves the kernel's default.
func (d *Driver) SetMaxMTU(mtu int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.maxMTU = mtu
}

// network returns one network's record.
func (d *Driver) network(id string) (networkRecord, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.networks.get(id)
}

// Network is the read-only view of a network for the local API.
type Network struct {
	ID      string `json:"id"`
	Index   uint32 `json:"index"`
	Subnet  string `json:"subnet"`
	Gateway string `json:"gateway"`
	// Subnet6 and Gateway6 are empty for a network without IPv6, Subnet
	// and Gateway for one without IPv4.
	Subnet6  string            `json:"subnet6,omitempty"`
	Gateway6 string            `json:"gateway6,omitempty"`
	Internal bool              `json:"internal,omitempty"`
	Options  map[string]string `json:"options,omitempty"`
	// Rebuilt says the network was rebuilt from its endpoints' records
	// and Docker has not confirmed its options yet.
	Rebuilt bool `json:"rebuilt,omitempty"`
}

// PolicyMode is the network's enforcement mode, as -o
// ebpfnet.policy-enforcement gave it (checked at creation); empty is
// the default.
func (n Network) PolicyMode() policy.Mode {
	return policy.Mode(n.Options[OptionPolicyEnforcement])
}

// PolicyAudit reports whether -o ebpfnet.policy-audit=true was given.
func (n Network) PolicyAudit() bool {
	audit, _ := strconv.ParseBool(n.Options[OptionPolicyAudit])
	return audit
}

// Networks lists the networks, ordered by index.
func (d *Driver) Networks() []Network {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []Network
	for _, n := range d.networks.list() {
		out = append(out, toNetwork(n))
	}
	return out
}

func toNetwork(n networkRecord) Network {
	out := Network{
		ID: n.ID, Index: n.Datapath.Index,
		Internal: n.Internal, Options: n.Options, Rebuilt: n.Rebuilt,
	}
	if n.Datapath.Subnet.IsValid() {
		out.Subnet, out.Gateway = n.Datapath.Subnet.String(), n.Datapath.Gateway.String()
	}
	if n.Datapath.Subnet6.IsValid() {
		out.Subnet6, out.Gateway6 = n.Datapath.Subnet6.String(), n.Datapath.Gateway6.String()
	}
	return out
}

// GetCapabilities: endpoints are local to this node.
func (d *Driver) GetCapabilities() (*network.CapabilitiesResponse, error) {
	return &network.CapabilitiesResponse{Scope: network.LocalScope, ConnectivityScope: network.LocalScope}, nil
}

// CreateNetwork records the network and gives it its host-side plumbing:
// an IPv4 subnet, an IPv6 one (--ipv6), or only an IPv6 one (Docker 28+'s
// --ipv4=false --ipv6).
func (d *Driver) CreateNetwork(req *network.CreateNetworkRequest) error {
	if req.NetworkID == "" {
		return errors.New("create network: empty network ID")
	}
	if err := checkFamilies(req.Options); err != nil {
		return fmt.Errorf("create network: %w", err)
	}
	dp, err := subnetsOf(req)
	if err != nil {
		return fmt.Errorf("create network: %w", err)
	}
	options, internal, err := parseNetworkOptions(req.Options)
	if err != nil {
		return fmt.Errorf("create network: %w", err)
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if existing, ok := d.networks.get(req.NetworkID); ok {
		// A retried call: same network, nothing to do.
		if existing.Datapath.Subnet == dp.Subnet && existing.Datapath.Subnet6 == dp.Subnet6 {
			return nil
		}
		return fmt.Errorf("create network: network %s already exists with subnet %s", dockerid.Short(req.NetworkID), existing.Datapath.Subnet)
	}
	if err := d.checkOverlap(dp); err != nil {
		return fmt.Errorf("create network: %w", err)
	}
	index, err := d.networks.freeIndex()
	if err != nil {
		return fmt.Errorf("create network: %w", err)
	}
	mtu, err := networkMTU(options, d.maxMTU)
	if err != nil {
		return fmt.Errorf("create network: %w", err)
	}
	dp.Index, dp.MTU = index, mtu
	rec := networkRecord{
		ID:       req.NetworkID,
		Datapath: dp,
		Internal: internal,
		Options:  options,
	}
	if err := d.datapath.AddNetwork(rec.Datapath); err != nil {
		return fmt.Errorf("create network %s: %w", dockerid.Short(req.NetworkID), err)
	}
	undoPlumbing := func() {
		if undo := d.datapath.RemoveNetwork(rec.Datapath); undo != nil {
			d.log.WithError(undo).Warn("undo network plumbing after a failed create")
		}
	}
	if d.external != nil {
		if err := d.external.AddNetwork(rec.toExternal()); err != nil {
			undoPlumbing()
			return fmt.Errorf("create network %s: external connectivity: %w", dockerid.Short(req.NetworkID), err)
		}
	}
	if err := d.networks.put(rec); err != nil {
		if d.external != nil {
			if undo := d.external.RemoveNetwork(rec.ID); undo != nil {
				d.log.WithError(undo).Warn("undo external connectivity after failed persist")
			}
		}
		undoPlumbing()
		return fmt.Errorf("create network %s: %w", dockerid.Short(req.NetworkID), err)
	}
	d.log.WithFields(subnetFields(dp)).WithFields(logrus.Fields{"network": dockerid.Short(req.NetworkID), "index": index}).Info("network created")
	d.networksChanged()
	return nil
}

// subnetFields are a network's subnets and gateways for the log, of the
// families it has.
func subnetFields(n datapath.Network) logrus.Fields {
	f := logrus.Fields{}
	if n.Subnet.IsValid() {
		f["subnet"], f["gateway"] = n.Subnet, n.Gateway
	}
	if n.Subnet6.IsValid() {
		f["subnet6"], f["gateway6"] = n.Subnet6, n.Gateway6
	}
	return f
}

// subnetsOf reads a new network's subnets and gateways: at most one of
// each family, at least one.
func subnetsOf(req *network.CreateNetworkRequest) (datapath.Network, error) {
	var n datapath.Network
	if len(req.IPv4Data) > 1 || len(req.IPv6Data) > 1 {
		return n, fmt.Errorf("ebpfnet takes one subnet of each family, got %d IPv4 and %d IPv6", len(req.IPv4Data), len(req.IPv6Data))
	}
	v4, ok := req.Options[optionEnableIPv4]
	if ok && !truthy(v4) && len(req.IPv4Data) > 0 {
		return n, errors.New("--ipv4=false, but Docker sent an IPv4 pool")
	}
	var err error
	if len(req.IPv4Data) == 1 {
		if n.Subnet, n.Gateway, err = parseIPAMData(req.IPv4Data[0], false); err != nil {
			return n, err
		}
	}
	if len(req.IPv6Data) == 1 {
		if n.Subnet6, n.Gateway6, err = parseIPAMData(req.IPv6Data[0], true); err != nil {
			return n, err
		}
	}
	if !n.Subnet.IsValid() && !n.Subnet6.IsValid() {
		return n, errors.New("ebpfnet needs an IPv4 or an IPv6 subnet, got none")
	}
	return n, nil
}

// checkOverlap refuses subnets that overlap another network's; d.mu is
// held.
func (d *Driver) checkOverlap(dp datapath.Network) error {
	for _, n := range d.networks.list() {
		for _, pair := range [][2]netip.Prefix{
			{dp.Subnet, n.Datapath.Subnet}, {dp.Subnet6, n.Datapath.Subnet6},
		} {
			if pair[0].IsValid() && pair[1].IsValid() && pair[0].Overlaps(pair[1]) {
				return fmt.Errorf("subnet %s overlaps %s of ebpfnet network %s", pair[0], pair[1], dockerid.Short(n.ID))
			}
		}
	}
	return nil
}

// checkFamilies refuses a network with neither family: Docker 29 creates
// one without any address for `--ipv4=false` without --ipv6 (Docker 28+
// always sends enable_ipv4, and enable_ipv6 with --ipv6).
func checkFamilies(options map[string]interface{}) error {
	v4, ok := options[optionEnableIPv4]
	if ok && !truthy(v4) && !truthy(options[optionEnableIPv6]) {
		return errors.New("a network without IPv4 needs IPv6: add --ipv6, or drop --ipv4=false")
	}
	return nil
}

// GwAllocCheck answers Docker 28+'s question whether to skip allocating the
// network's gateway addresses: never, since the gateway is every
// container's way off the network, --internal ones included. Docker asks
// before it requests any pool, with the options CreateNetwork will get, so
// a network we cannot serve is refused here first: with --ipv4=false
// --ipv6 the IPAM driver would otherwise only complain about IPv6.
func (d *Driver) GwAllocCheck(options map[string]interface{}) (skipIPv4, skipIPv6 bool, err error) {
	if err := checkFamilies(options); err != nil {
		return false, false, fmt.Errorf("create network: %w", err)
	}
	return false, false, nil
}

// DeleteNetwork removes the network's plumbing and record. Unknown networks
// are fine: Docker may retry a delete.
func (d *Driver) DeleteNetwork(req *network.DeleteNetworkRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	rec, ok := d.networks.get(req.NetworkID)
	if !ok {
		return nil
	}
	if d.external != nil {
		if err := d.external.RemoveNetwork(rec.ID); err != nil {
			return fmt.Errorf("delete network %s: external connectivity: %w", dockerid.Short(req.NetworkID), err)
		}
	}
	if err := d.datapath.RemoveNetwork(rec.Datapath); err != nil {
		return fmt.Errorf("delete network %s: %w", dockerid.Short(req.NetworkID), err)
	}
	if err := d.networks.remove(req.NetworkID); err != nil {
		return fmt.Errorf("delete network %s: %w", dockerid.Short(req.NetworkID), err)
	}
	d.log.WithField("network", dockerid.Short(req.NetworkID)).Info("network deleted")
	d.networksChanged()
	return nil
}

// AllocateNetwork is a swarm-manager call; a local driver has nothing to do.
func (d *Driver) AllocateNetwork(*network.AllocateNetworkRequest) (*network.AllocateNetworkResponse, error) {
	return &network.AllocateNetworkResponse{}, nil
}

// FreeNetwork is a swarm-manager call; a local driver has nothing to do.
func (d *Driver) FreeNetwork(*network.FreeNetworkRequest) error { return nil }

// CreateEndpoint builds the container's veth pair and datapath. Docker's
// IPAM half (ours or another) has already chosen the addresses: one of each
// family the network has.
func (d *Driver) CreateEndpoint(req *network.CreateEndpointRequest) (*network.CreateEndpointResponse, error) {
	if req.Interface == nil || (req.Interface.Address == "" && req.Interface.AddressIPv6 == "") {
		return nil, errors.New("create endpoint: Docker sent no IPv4 address and no IPv6 address; ebpfnet needs them from the network's IPAM driver")
	}
	var (
		mac         net.HardwareAddr
		addr, addr6 netip.Prefix
		err         error
	)
	if req.Interface.MacAddress != "" {
		if mac, err = net.ParseMAC(req.Interface.MacAddress); err != nil {
			return nil, fmt.Errorf("create endpoint: MAC address %q: %w", req.Interface.MacAddress, err)
		}
	}
	rec, ok := d.network(req.NetworkID)
	if !ok {
		return nil, fmt.Errorf("create endpoint: network %s is not an ebpfnet network known to this node", dockerid.Short(req.NetworkID))
	}
	if addr, err = endpointAddress(req.Interface.Address, rec.Datapath.Subnet, false); err != nil {
		return nil, fmt.Errorf("create endpoint: %w", err)
	}
	if addr6, err = endpointAddress(req.Interface.AddressIPv6, rec.Datapath.Subnet6, true); err != nil {
		return nil, fmt.Errorf("create endpoint: %w", err)
	}
	if existing, ok := d.endpoints.Endpoint(req.EndpointID); ok {
		// A retried call: answer as the first time.
		return endpointResponse(req, existing), nil
	}
	if len(mac) == 0 {
		mac = net.HardwareAddr(datapath.LXCMACFor(req.EndpointID))
	}
	ep := &datapath.Endpoint{
		DockerNetworkID:  req.NetworkID,
		DockerEndpointID: req.EndpointID,
		LXCMAC:           datapath.HardwareAddr(mac),
		IPv4:             addr,
		IPv6:             addr6,
		Network:          rec.Datapath,
		Identity:         uint32(identity.Init),
	}
	return d.creations.start(req.EndpointID, endpointResponse(req, *ep), func() error { return d.build(ep) }), nil
}

// build makes the endpoint CreateEndpoint accepted, while Docker goes on
// (creations.go).
func (d *Driver) build(ep *datapath.Endpoint) (err error) {
	ctx, cancel := context.WithTimeout(context.Background(), EndpointCallTimeout)
	defer cancel()
	if d.observeBuild != nil {
		start := time.Now()
		defer func() { d.observeBuild(err != nil, time.Since(start)) }()
	}
	if err := d.endpoints.CreateEndpoint(ctx, ep); err != nil {
		d.log.WithError(err).WithField("endpoint", dockerid.Short(ep.DockerEndpointID)).Error("endpoint not created")
		return fmt.Errorf("create endpoint %s: %w", dockerid.Short(ep.DockerEndpointID), err)
	}
	fields := logrus.Fields{"endpoint": dockerid.Short(ep.DockerEndpointID), "epid": ep.ID, "ifname": ep.IfName}
	if ep.IPv4.IsValid() {
		fields["ipv4"] = ep.IPv4
	}
	if ep.IPv6.IsValid() {
		fields["ipv6"] = ep.IPv6
	}
	d.log.WithFields(fields).Info("endpoint created")
	return nil
}

// ObserveBuilds installs fn, which learns how long each endpoint's build
// took and whether it failed: CreateEndpoint's own call time no longer
// includes it. Call it before serving Docker.
func (d *Driver) ObserveBuilds(fn func(failed bool, took time.Duration)) {
	d.observeBuild = fn
}

// buildWait bounds how long a call waits for an endpoint's build: past the
// build's own bound, within the Docker call's (plugin.DefaultCallBound).
const buildWait = EndpointCallTimeout + 2*time.Second

// WaitBuilds returns once no endpoint is being built, or false after
// timeout: a stopping daemon lets the builds under way finish.
func (d *Driver) WaitBuilds(timeout time.Duration) bool {
	return d.creations.waitAll(timeout)
}

// endpointAddress reads the address Docker chose of one family (v6) and
// gives it the subnet's prefix length. A network without that family has
// none to give; an empty address of a family the network has is refused
// too, so that no container of a dual-stack network lacks one.
func endpointAddress(s string, subnet netip.Prefix, v6 bool) (netip.Prefix, error) {
	family := map[bool]string{false: "IPv4", true: "IPv6"}[v6]
	if s == "" {
		if subnet.IsValid() {
			return netip.Prefix{}, fmt.Errorf("no %s address from Docker, and the network has %s subnet %s", family, family, subnet)
		}
		return netip.Prefix{}, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil || p.Addr().Is6() != v6 || p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("address %q is not an %s CIDR", s, family)
	}
	if !subnet.IsValid() {
		return netip.Prefix{}, fmt.Errorf("%s address %s, but the network has no %s subnet", family, p.Addr(), family)
	}
	if !subnet.Contains(p.Addr()) {
		return netip.Prefix{}, fmt.Errorf("address %s is outside the network's subnet %s", p.Addr(), subnet)
	}
	return netip.PrefixFrom(p.Addr(), subnet.Bits()), nil
}

// endpointResponse answers CreateEndpoint. Docker refuses a response that
// sets what its request already carried, so we only fill the MAC we chose.
func endpointResponse(req *network.CreateEndpointRequest, ep datapath.Endpoint) *network.CreateEndpointResponse {
	if req.Interface.MacAddress != "" {
		return &network.CreateEndpointResponse{}
	}
	return &network.CreateEndpointResponse{Interface: &network.EndpointInterface{
		MacAddress: net.HardwareAddr(ep.LXCMAC).String(),
	}}
}

// DeleteEndpoint tears the endpoint down. Unknown endpoints are fine.
// Docker revokes published ports on leave, but not for an endpoint removed
// while the daemon was down, which reconcile deletes through
// DeleteEndpoint: so every delete revokes too.
func (d *Driver) DeleteEndpoint(req *network.DeleteEndpointRequest) error {
	// A build under way ends first; a failed one undid itself, and
	// only its record is left to drop.
	if err := d.creations.wait(req.EndpointID, buildWait); errors.Is(err, errStillBuilding) {
		return fmt.Errorf("delete endpoint: %w", err)
	}
	d.creations.forget(req.EndpointID)
	_, existed := d.endpoints.Endpoint(req.EndpointID)
	ctx, cancel := context.WithTimeout(context.Background(), EndpointCallTimeout)
	defer cancel()
	if err := d.endpoints.DeleteEndpoint(ctx, req.EndpointID); err != nil {
		return fmt.Errorf("delete endpoint %s: %w", dockerid.Short(req.EndpointID), err)
	}
	if existed && d.external != nil {
		d.mu.Lock()
		err := d.external.Revoke(req.EndpointID)
		d.mu.Unlock()
		if err != nil {
			d.log.WithError(err).Warn("revoke a deleted endpoint's published ports")
		}
	}
	d.log.WithField("endpoint", dockerid.Short(req.EndpointID)).Info("endpoint deleted")
	return nil
}

// EndpointInfo shows up in `docker network inspect`-style diagnostics.
func (d *Driver) EndpointInfo(req *network.InfoRequest) (*network.InfoResponse, error) {
	if err := d.creations.wait(req.EndpointID, buildWait); err != nil {
		return nil, fmt.Errorf("endpoint info: %w", err)
	}
	ep, ok := d.endpoints.Endpoint(req.EndpointID)
	if !ok {
		return nil, fmt.Errorf("endpoint info: unknown endpoint %s", dockerid.Short(req.EndpointID))
	}
	return &network.InfoResponse{Value: map[string]string{
		"ebpfnet.endpoint-id": strconv.Itoa(int(ep.ID)),
		"ebpfnet.ifname":      ep.IfName,
		"ebpfnet.ipv4":        prefixString(ep.IPv4),
		"ebpfnet.ipv6":        prefixString(ep.IPv6),
	}}, nil
}

// Join tells Docker which interface to move into the sandbox and which
// gateway to route through. The container process does not exist yet.
func (d *Driver) Join(req *network.JoinRequest) (*network.JoinResponse, error) {
	if err := d.creations.wait(req.EndpointID, buildWait); err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	ep, ok := d.endpoints.Endpoint(req.EndpointID)
	if !ok {
		return nil, fmt.Errorf("join: unknown endpoint %s", dockerid.Short(req.EndpointID))
	}
	resp := &network.JoinResponse{
		InterfaceName: network.InterfaceName{SrcName: ep.PeerName, DstPrefix: ContainerPrefix},
	}
	if ep.Network.Gateway.IsValid() {
		resp.Gateway = ep.Network.Gateway.String()
	}
	if ep.Network.Gateway6.IsValid() {
		resp.GatewayIPv6 = ep.Network.Gateway6.String()
	}
	return resp, nil
}

// prefixString is p, or "" for none (not "invalid Prefix").
func prefixString(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}

// Leave has nothing to undo: the datapath lives until DeleteEndpoint.
func (d *Driver) Leave(*network.LeaveRequest) error { return nil }

// DiscoverNew is for multi-host discovery, which a local driver ignores.
func (d *Driver) DiscoverNew(*network.DiscoveryNotification) error { return nil }

// DiscoverDelete is for multi-host discovery, which a local driver ignores.
func (d *Driver) DiscoverDelete(*network.DiscoveryNotification) error { return nil }

// ProgramExternalConnectivity publishes the container's ports (-p, -P).
// Docker calls it for the endpoint that gives the container its default
// gateway, after Join. The remote driver API answers only an error, so a
// port we choose (-P, -p PORT, a host port range) cannot be told back to
// Docker: the daemon log and `iptables -t nat -S EBPFNET-DNAT` show it.
func (d *Driver) ProgramExternalConnectivity(req *network.ProgramExternalConnectivityRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.external == nil {
		return nil
	}
	bindings, err := external.ParseBindings(req.Options)
	if err != nil {
		return fmt.Errorf("publish ports: %w", err)
	}
	if len(bindings) == 0 {
		return nil
	}
	ep, ok := d.endpoints.Endpoint(req.EndpointID)
	if !ok {
		return fmt.Errorf("publish ports: unknown endpoint %s", dockerid.Short(req.EndpointID))
	}
	if _, err := d.external.Program(req.NetworkID, req.EndpointID, ep.IfName, ep.IPv4.Addr(), ep.IPv6.Addr(), bindings); err != nil {
		return fmt.Errorf("publish ports: %w", err)
	}
	return nil
}

// RevokeExternalConnectivity removes the container's published ports.
// DeleteEndpoint removes them too, for the endpoints Docker never revokes
// (those removed while the daemon was down, which reconcile deletes).
func (d *Driver) RevokeExternalConnectivity(req *network.RevokeExternalConnectivityRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.external == nil {
		return nil
	}
	if err := d.external.Revoke(req.EndpointID); err != nil {
		return fmt.Errorf("revoke published ports: %w", err)
	}
	return nil
}

// ExternalNetworks lists what the external side needs of every network,
// for its restore at start.
func (d *Driver) ExternalNetworks() []external.Network {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []external.Network
	for _, n := range d.networks.list() {
		out = append(out, n.toExternal())
	}
	return out
}

// toExternal is what the external side needs of a network. Masquerade is
// on unless the bridge driver's option turns it off, as on Docker's bridge.
func (n networkRecord) toExternal() external.Network {
	masquerade := true
	if v, ok := n.Options[external.OptionMasquerade]; ok {
		masquerade, _ = strconv.ParseBool(v) // checked by knownOptions
	}
	return external.Network{ID: n.ID, Subnet: n.Datapath.Subnet, Gateway: n.Datapath.Gateway,
		Subnet6: n.Datapath.Subnet6, Gateway6: n.Datapath.Gateway6, Internal: n.Internal, Masquerade: masquerade && !n.Internal}
}

// parseIPAMData reads one pool of a family (v6) and its gateway.
func parseIPAMData(data *network.IPAMData, v6 bool) (netip.Prefix, netip.Addr, error) {
	family := map[bool]string{false: "IPv4", true: "IPv6"}[v6]
	if data == nil {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("no %s pool", family)
	}
	subnet, err := netip.ParsePrefix(data.Pool)
	if err != nil || subnet.Addr().Is6() != v6 || subnet.Addr().Is4In6() {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("pool %q is not an %s CIDR", data.Pool, family)
	}
	subnet = subnet.Masked()
	if data.Gateway == "" {
		return netip.Prefix{}, netip.Addr{}, errors.New("no gateway: use --ipam-driver ebpfnet or give --gateway")
	}
	gw, err := netip.ParsePrefix(data.Gateway)
	if err != nil {
		// Some IPAM drivers answer the gateway without a prefix length.
		addr, aerr := netip.ParseAddr(data.Gateway)
		if aerr != nil {
			return netip.Prefix{}, netip.Addr{}, fmt.Errorf("gateway %q is not an %s address", data.Gateway, family)
		}
		gw = netip.PrefixFrom(addr, subnet.Bits())
	}
	if !subnet.Contains(gw.Addr()) {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("gateway %s is outside subnet %s", gw.Addr(), subnet)
	}
	return subnet, gw.Addr(), nil
}

// parseNetworkOptions returns the -o options as strings and whether the
// network is --internal. Unknown ebpfnet.* options are refused.
func parseNetworkOptions(opts map[string]interface{}) (map[string]string, bool, error) {
	internal := truthy(opts[optionInternal])
	out := map[string]string{}
	generic, _ := opts[optionGeneric].(map[string]interface{})
	known := knownOptions()
	var unknown []string
	for k, v := range generic {
		s := fmt.Sprint(v)
		out[k] = s
		if k == optionInternal {
			internal = internal || truthy(v)
		}
		check, ok := known[k]
		if !ok && strings.HasPrefix(k, optionPrefix) {
			unknown = append(unknown, k)
			continue
		}
		if ok {
			if err := check(s); err != nil {
				return nil, false, err
			}
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, false, fmt.Errorf("unknown option %s (known ebpfnet options: %s)", strings.Join(unknown, ", "), knownOptionNames(known))
	}
	if len(out) == 0 {
		out = nil
	}
	return out, internal, nil
}

func knownOptionNames(known map[string]func(string) error) string {
	if len(known) == 0 {
		return "none"
	}
	names := make([]string, 0, len(known))
	for k := range known {
		names = append(names, k)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func truthy(v interface{}) bool {
	switch t := v.(type) {
	case bool:
		return t
	case string:
		b, _ := strconv.ParseBool(t)
		return b
	}
	return false
}
