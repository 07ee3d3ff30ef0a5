package driver

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/datapath"
	"github.com/ebpfnet/ebpfnet/dockerid"
)

// When networks.json is lost (corrupt, or missing on a node that has
// endpoints), the networks are rebuilt in two steps (plugin/heal.go): at
// start from the endpoints' records, which carry each network's ID,
// index, subnet, gateway and MTU (WriteRebuilt); once Docker answers, with
// the options and --internal only Docker knows, and the networks that had
// no endpoint (Driver.Confirm).

// RebuiltNetwork is a network as the endpoints' records and the node's
// own iptables rules know it.
type RebuiltNetwork struct {
	ID       string
	Datapath datapath.Network
	// Internal and Options are the best guess until Docker is asked:
	// what our iptables rules show of --internal and masquerade.
	Internal bool
	Options  map[string]string
}

// WriteRebuilt writes networks to path as the network state, each marked
// rebuilt; none makes an empty state. It refuses a set that would not load
// (two networks with one ID or index, an invalid subnet).
func WriteRebuilt(path string, networks []RebuiltNetwork) error {
	s := &networkStore{path: path, networks: map[string]networkRecord{}}
	indexes := map[uint32]string{}
	for _, n := range networks {
		rec := networkRecord{ID: n.ID, Datapath: n.Datapath, Internal: n.Internal, Options: n.Options, Rebuilt: true}
		if err := rec.check(); err != nil {
			return fmt.Errorf("rebuilt network %s: %w", dockerid.Short(n.ID), err)
		}
		if _, dup := s.networks[n.ID]; dup {
			return fmt.Errorf("rebuilt network %s appears twice", dockerid.Short(n.ID))
		}
		if other, dup := indexes[n.Datapath.Index]; dup {
			return fmt.Errorf("rebuilt networks %s and %s have index %d", dockerid.Short(other), dockerid.Short(n.ID), n.Datapath.Index)
		}
		indexes[n.Datapath.Index] = n.ID
		s.networks[n.ID] = rec
	}
	return s.save()
}

// DockerNetwork is what Docker's network inspection says of a network
// whose driver is ours.
type DockerNetwork struct {
	ID      string
	Subnet  netip.Prefix
	Gateway netip.Addr
	// Subnet6 and Gateway6 are its IPv6 pool's, invalid without one.
	Subnet6  netip.Prefix
	Gateway6 netip.Addr
	Internal bool
	// Options are the network's -o options (inspect's Options).
	Options map[string]string
}

// Confirm completes the networks rebuilt at start with what Docker says:
// --internal and the options, after which their endpoints are compiled
// with them again. With adopt, a network of Docker's that this node does
// not know (networks.json was lost and it had no endpoint to rebuild it
// from) is added as CreateNetwork would. It reports whether a network's
// external side changed (the caller restores our iptables chains from
// Networks then), and what it could not take. Rebuilt networks Docker does
// not list stay rebuilt: reconcile removes them.
func (d *Driver) Confirm(docker []DockerNetwork, adopt bool) (externalChanged bool, problems []error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	changed := false
	for _, dn := range docker {
		rec, known := d.networks.get(dn.ID)
		if known && !rec.Rebuilt {
			continue
		}
		if !known && !adopt {
			continue
		}
		generic := map[string]interface{}{}
		for k, v := range dn.Options {
			generic[k] = v
		}
		options, internal, err := parseNetworkOptions(map[string]interface{}{optionGeneric: generic, optionInternal: dn.Internal})
		if err != nil {
			problems = append(problems, fmt.Errorf("network %s: Docker's options: %w", dockerid.Short(dn.ID), err))
			continue
		}
		if known {
			if rec.Datapath.Subnet != dn.Subnet.Masked() || rec.Datapath.Gateway != dn.Gateway ||
				rec.Datapath.Subnet6 != dn.Subnet6.Masked() || rec.Datapath.Gateway6 != dn.Gateway6 {
				// The records are what the endpoints run with; say so
				// rather than change them under the endpoints.
				problems = append(problems, fmt.Errorf("network %s: Docker says subnet %s gateway %s, the endpoints' records %s %s; keeping the records'",
					dockerid.Short(dn.ID), dn.Subnet, dn.Gateway, rec.Datapath.Subnet, rec.Datapath.Gateway))
			}
			before := rec.toExternal()
			rec.Internal, rec.Options, rec.Rebuilt = internal, options, false
			if err := d.networks.put(rec); err != nil {
				problems = append(problems, fmt.Errorf("confirm network %s: %w", dockerid.Short(dn.ID), err))
				continue
			}
			externalChanged = externalChanged || rec.toExternal() != before
			changed = true
			d.log.WithFields(logrus.Fields{"network": dockerid.Short(dn.ID), "internal": internal, "options": options}).Info("rebuilt network confirmed by Docker")
			continue
		}
		if err := d.adoptLocked(dn, internal, options); err != nil {
			problems = append(problems, err)
			continue
		}
		changed = true
	}
	if changed {
		d.networksChanged()
	}
	return externalChanged, problems
}

// adoptLocked adds a network Docker knows and this node had lost, with its
// host-side plumbing and external side; d.mu is held.
func (d *Driver) adoptLocked(dn DockerNetwork, internal bool, options map[string]string) error {
	dp := datapath.Network{Subnet: dn.Subnet.Masked(), Gateway: dn.Gateway, Subnet6: dn.Subnet6.Masked(), Gateway6: dn.Gateway6}
	index, err := d.networks.freeIndex()
	if err != nil {
		return fmt.Errorf("network %s: %w", dockerid.Short(dn.ID), err)
	}
	dp.Index = index
	rec := networkRecord{ID: dn.ID, Datapath: dp, Internal: internal, Options: options}
	if err := rec.check(); err != nil {
		return fmt.Errorf("network %s: Docker says subnets %v %v gateways %v %v, not a network ebpfnet can serve: %w",
			dockerid.Short(dn.ID), dn.Subnet, dn.Subnet6, dn.Gateway, dn.Gateway6, err)
	}
	if err := d.checkOverlap(dp); err != nil {
		return fmt.Errorf("network %s: %w", dockerid.Short(dn.ID), err)
	}
	if err := d.datapath.AddNetwork(rec.Datapath); err != nil {
		return fmt.Errorf("adopt network %s: %w", dockerid.Short(dn.ID), err)
	}
	var errs []error
	if d.external != nil {
		if err := d.external.AddNetwork(rec.toExternal()); err != nil {
			errs = append(errs, fmt.Errorf("external connectivity: %w", err))
		}
	}
	if len(errs) == 0 {
		if err := d.networks.put(rec); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		if d.external != nil {
			_ = d.external.RemoveNetwork(rec.ID)
		}
		if undo := d.datapath.RemoveNetwork(rec.Datapath); undo != nil {
			d.log.WithError(undo).Warn("undo the plumbing of a network that could not be adopted")
		}
		return fmt.Errorf("adopt network %s: %w", dockerid.Short(dn.ID), err)
	}
	d.log.WithFields(subnetFields(dp)).WithFields(logrus.Fields{"network": dockerid.Short(dn.ID), "index": index}).
		Info("network Docker knows and the lost networks.json held, adopted")
	return nil
}
