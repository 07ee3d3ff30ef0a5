package plugin

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	dockernetwork "github.com/docker/docker/api/types/network"
	dockerclient "github.com/docker/docker/client"
	"github.com/docker/go-plugins-helpers/ipam"
	"github.com/docker/go-plugins-helpers/network"
	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/dockerid"
	"github.com/ebpfnet/ebpfnet/dockerwatch"
)

// Docker forgets an endpoint, an address or a whole network even when our
// driver call fails (`docker rm -f` while the daemon is down). Nobody would
// ever ask us to remove those again, so after a start we ask Docker what it
// still knows and remove what it does not: no veth, pin, route or address
// outlives its owner.
//
// This runs in the background after the sockets are served: dockerd may be
// starting too and waiting for our socket, and a synchronous Docker call
// before serving would deadlock the two. Only what existed before this start
// is considered, so a container that Docker is starting right now is never
// mistaken for a leftover.

// dockerState is what Docker knows of the networks that use our drivers.
type dockerState struct {
	networks  map[string]bool
	endpoints map[string]bool
	// inUse maps each subnet that uses our IPAM to the addresses Docker holds
	// in it: gateway, aux addresses and endpoint addresses.
	inUse map[netip.Prefix]map[netip.Addr]bool
	// details is each such network as Docker describes it, for the
	// state files rebuilt at start (healFromDocker).
	details []dockerNetwork
}

// dockerNetwork is what Docker's inspection says of a network that uses
// our network driver, our IPAM driver, or both.
type dockerNetwork struct {
	id                 string
	ourDriver, ourIPAM bool
	internal           bool
	options            map[string]string
	pools              []dockerPool
	// containers are its endpoints by container ID.
	containers map[string]dockernetwork.EndpointResource
}

// dockerPool is one IPAM configuration of a Docker network, IPv4 or IPv6.
type dockerPool struct {
	subnet, ipRange netip.Prefix
	gateway         netip.Addr
	aux             []netip.Addr
}

// ownState is what we held when the daemon started.
type ownState struct {
	endpoints []string // Docker endpoint IDs
	networks  []string
	pools     []ipamPool
}

type ipamPool struct {
	id        string
	subnet    netip.Prefix
	addresses []netip.Addr
}

type poolAddress struct {
	poolID string
	addr   netip.Addr
}

// cleanupPlan lists what Docker no longer knows.
type cleanupPlan struct {
	endpoints []string
	addresses []poolAddress
	networks  []string
	pools     []string
}

func (p cleanupPlan) empty() bool {
	return len(p.endpoints)+len(p.addresses)+len(p.networks)+len(p.pools) == 0
}

// planCleanup is the pure decision: everything of ours that Docker does not
// know any more.
func planCleanup(docker dockerState, own ownState) cleanupPlan {
	var plan cleanupPlan
	for _, id := range own.endpoints {
		if !docker.endpoints[id] {
			plan.endpoints = append(plan.endpoints, id)
		}
	}
	for _, id := range own.networks {
		if !docker.networks[id] {
			plan.networks = append(plan.networks, id)
		}
	}
	for _, p := range own.pools {
		held, known := docker.inUse[p.subnet]
		if !known {
			plan.pools = append(plan.pools, p.id)
			continue
		}
		for _, a := range p.addresses {
			if !held[a] {
				plan.addresses = append(plan.addresses, poolAddress{poolID: p.id, addr: a})
			}
		}
	}
	sort.Strings(plan.endpoints)
	sort.Strings(plan.networks)
	sort.Strings(plan.pools)
	return plan
}

// snapshotOwnState records what the daemon holds at start.
func (d *Daemon) snapshotOwnState() ownState {
	var own ownState
	for _, ep := range d.datapath.Endpoints() {
		own.endpoints = append(own.endpoints, ep.DockerEndpointID)
	}
	for _, n := range d.driver.Networks() {
		own.networks = append(own.networks, n.ID)
	}
	for _, p := range d.ipam.Pools() {
		own.pools = append(own.pools, ipamPool{id: p.ID, subnet: p.Pool, addresses: p.Addresses})
	}
	return own
}

// reconcileWithDocker waits for Docker to answer, then removes what it no
// longer knows, and reports whether it got that far. It gives up quietly
// when ctx ends (daemon stopping).
func (d *Daemon) reconcileWithDocker(ctx context.Context, own ownState) bool {
	log := d.log.WithField("subsys", "reconcile")
	cli, err := dockerwatch.NewClient(d.cfg.DockerHost)
	if err != nil {
		log.WithError(err).Warn("no Docker client; leftovers of endpoints removed while the daemon was down stay")
		return false
	}
	defer cli.Close()
	var state dockerState
	for attempt := 0; ; attempt++ {
		callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		state, err = readDockerState(callCtx, cli, d.cfg.DriverName, own.networks)
		cancel()
		if err == nil {
			break
		}
		if attempt%10 == 0 {
			log.WithError(err).Info("waiting for Docker to answer before cleaning up leftovers")
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(time.Second):
		}
	}
	if d.healing.waitsForDocker() {
		// Before the plan: the pools Docker confirms are what the plan
		// must compare with.
		own = d.healFromDocker(ctx, state, own, dockerContainerPorts(cli), log)
	}
	plan := planCleanup(state, own)
	if plan.empty() {
		log.Debug("nothing left over from before the start")
		return true
	}
	d.applyCleanup(plan, log)
	return true
}

func (d *Daemon) applyCleanup(plan cleanupPlan, log logrus.FieldLogger) {
	for _, id := range plan.endpoints {
		err := d.driver.DeleteEndpoint(&network.DeleteEndpointRequest{EndpointID: id})
		log.WithError(err).WithField("endpoint", dockerid.Short(id)).Info("removed endpoint that Docker no longer knows")
	}
	for _, a := range plan.addresses {
		err := d.ipam.ReleaseAddress(&ipam.ReleaseAddressRequest{PoolID: a.poolID, Address: a.addr.String()})
		log.WithError(err).WithField("address", a.addr).Info("released address that Docker no longer holds")
	}
	for _, id := range plan.networks {
		err := d.driver.DeleteNetwork(&network.DeleteNetworkRequest{NetworkID: id})
		log.WithError(err).WithField("network", dockerid.Short(id)).Info("removed network that Docker no longer knows")
	}
	for _, id := range plan.pools {
		err := d.ipam.ReleasePool(&ipam.ReleasePoolRequest{PoolID: id})
		log.WithError(err).WithField("pool", id).Info("released pool that no Docker network uses")
	}
}

// readDockerState lists the networks that use our network or IPAM driver
// and what Docker holds in them.
func readDockerState(ctx context.Context, cli *dockerclient.Client, configuredName string, ownNetworks []string) (dockerState, error) {
	state := dockerState{networks: map[string]bool{}, endpoints: map[string]bool{}, inUse: map[netip.Prefix]map[netip.Addr]bool{}}
	list, err := cli.NetworkList(ctx, dockernetwork.ListOptions{})
	if err != nil {
		return state, fmt.Errorf("list Docker networks: %w", err)
	}
	ours := driverNames(configuredName, list, ownNetworks)
	for _, summary := range list {
		if !ours[summary.Driver] && !ours[summary.IPAM.Driver] {
			continue
		}
		n, err := cli.NetworkInspect(ctx, summary.ID, dockernetwork.InspectOptions{})
		if err != nil {
			return state, fmt.Errorf("inspect Docker network %s: %w", summary.Name, err)
		}
		if ours[n.Driver] {
			state.networks[n.ID] = true
		}
		for _, ep := range n.Containers {
			state.endpoints[ep.EndpointID] = true
		}
		dn := describeNetwork(n, ours)
		state.details = append(state.details, dn)
		if dn.ourIPAM {
			for subnet, held := range dn.inUse() {
				state.inUse[subnet] = held
			}
		}
	}
	return state, nil
}

// inUse maps each of the network's subnets to the addresses Docker holds
// in it: gateway, aux addresses and its containers'.
func (n dockerNetwork) inUse() map[netip.Prefix]map[netip.Addr]bool {
	out := map[netip.Prefix]map[netip.Addr]bool{}
	for _, p := range n.pools {
		held := map[netip.Addr]bool{}
		if p.gateway.IsValid() {
			held[p.gateway] = true
		}
		for _, a := range p.aux {
			held[a] = true
		}
		for _, ep := range n.containers {
			for _, a := range containerAddrs(ep) {
				if p.subnet.Contains(a) {
					held[a] = true
				}
			}
		}
		out[p.subnet] = held
	}
	return out
}

// describeNetwork keeps what the state files rebuilt at start need of an
// inspected network.
func describeNetwork(n dockernetwork.Inspect, ours map[string]bool) dockerNetwork {
	out := dockerNetwork{
		id: n.ID, ourDriver: ours[n.Driver], ourIPAM: ours[n.IPAM.Driver],
		internal: n.Internal, options: n.Options, containers: n.Containers,
	}
	for _, cfg := range n.IPAM.Config {
		subnet, err := netip.ParsePrefix(cfg.Subnet)
		if err != nil || subnet.Addr().Is4In6() {
			continue
		}
		p := dockerPool{subnet: subnet.Masked()}
		if r, err := netip.ParsePrefix(cfg.IPRange); err == nil {
			p.ipRange = r.Masked()
		}
		p.gateway = parseAddr(cfg.Gateway)
		if !p.gateway.IsValid() {
			// Docker (20.10) shows only the gateway the user gave;
			// otherwise it asked the IPAM driver for one, and ours,
			// as Docker's own, answers the first usable address.
			p.gateway = p.subnet.Addr().Next()
		}
		for _, a := range cfg.AuxAddress {
			if addr := parseAddr(a); addr.IsValid() {
				p.aux = append(p.aux, addr)
			}
		}
		out.pools = append(out.pools, p)
	}
	return out
}

// containerAddrs are a container's addresses on a network, of both
// families.
func containerAddrs(ep dockernetwork.EndpointResource) []netip.Addr {
	var out []netip.Addr
	for _, s := range []string{ep.IPv4Address, ep.IPv6Address} {
		if a := parseAddr(s); a.IsValid() {
			out = append(out, a)
		}
	}
	return out
}

// pool is the network's IPv6 pool (v6) or IPv4 one, the zero dockerPool
// if it has none.
func (n dockerNetwork) pool(v6 bool) dockerPool {
	for _, p := range n.pools {
		if p.subnet.Addr().Is6() == v6 {
			return p
		}
	}
	return dockerPool{}
}

// parseAddr reads an address given as "10.0.0.2" or "10.0.0.2/24"; the
// zero Addr if it is neither.
func parseAddr(s string) netip.Addr {
	if i := strings.IndexByte(s, '/'); i >= 0 {
		s = s[:i]
	}
	a, _ := netip.ParseAddr(s)
	return a
}

// driverNames are the names Docker knows our drivers by. The configured name
// is the legacy plugin's (its socket's); a managed plugin is known by the
// reference the user typed (ebpfnet/ebpfnet:v1, or without the tag), which
// only Docker knows, so the networks we created tell us. Without this, a
// managed plugin would take every one of its networks for forgotten.
func driverNames(configured string, list []dockernetwork.Summary, ownNetworks []string) map[string]bool {
	names := map[string]bool{configured: true}
	own := map[string]bool{}
	for _, id := range ownNetworks {
		own[id] = true
	}
	for _, n := range list {
		if !own[n.ID] {
			continue
		}
		names[n.Driver] = true
		// Our IPAM serves our own networks under the same name; another
		// IPAM driver (Docker's "default") is not ours.
		if n.IPAM.Driver == n.Driver {
			names[n.IPAM.Driver] = true
		}
	}
	return names
}
