package plugin

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	dockerclient "github.com/docker/docker/client"
	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/dockerid"
	"github.com/ebpfnet/ebpfnet/driver"
	"github.com/ebpfnet/ebpfnet/external"
	"github.com/ebpfnet/ebpfnet/ipam"
)

// containerPorts tells what Docker publishes of a container: the port
// bindings it asked for, and on how many networks the container is.
type containerPorts func(ctx context.Context, containerID string) (bindings []external.Binding, networks int, err error)

// healFromDocker completes the state files rebuilt at start with what only
// Docker knows, once it answers (reconcile): the networks' options and
// --internal and the networks that had no endpoint, the pools with their
// ip-ranges and every address Docker holds (addresses are handed out
// again from then on), the published ports whose rules were lost. It
// returns own with the confirmed pools, what reconcile must compare with
// Docker's view (no address was handed out in between).
func (d *Daemon) healFromDocker(ctx context.Context, docker dockerState, own ownState, ports containerPorts, log logrus.FieldLogger) ownState {
	h := d.healing
	h.mu.Lock()
	networks, pools, published := h.networks, h.ipam, h.external
	h.mu.Unlock()
	log = log.WithField("subsys", "heal")

	if networks {
		var list []driver.DockerNetwork
		for _, n := range docker.details {
			if !n.ourDriver || len(n.pools) == 0 {
				continue
			}
			p4, p6 := n.pool(false), n.pool(true)
			list = append(list, driver.DockerNetwork{
				ID: n.id, Subnet: p4.subnet, Gateway: p4.gateway, Subnet6: p6.subnet, Gateway6: p6.gateway,
				Internal: n.internal, Options: n.options,
			})
		}
		externalChanged, problems := d.driver.Confirm(list, true)
		if externalChanged && d.external != nil {
			if err := d.restoreExternal(); err != nil {
				problems = append(problems, err)
			}
		}
		h.dockerDone(networksFile, fmt.Sprintf("options and --internal of %d networks from Docker", len(list)), errorStrings(problems))
		log.WithField("networks", len(list)).WithField("problems", errorStrings(problems)).Info("networks confirmed by Docker")
	}

	if pools {
		var seeds []ipam.PoolSeed
		for _, n := range docker.details {
			if !n.ourIPAM {
				continue
			}
			for _, p := range n.pools {
				s := ipam.PoolSeed{Pool: p.subnet, SubPool: p.ipRange, Gateway: p.gateway, Addresses: append([]netip.Addr(nil), p.aux...)}
				for _, c := range n.containers {
					for _, a := range containerAddrs(c) {
						if p.subnet.Contains(a) {
							s.Addresses = append(s.Addresses, a)
						}
					}
				}
				seeds = append(seeds, s)
			}
		}
		confirmed, problems, err := d.ipam.Confirm(seeds)
		if err != nil {
			// Still pending: the next start's reconcile asks again.
			log.WithError(err).Warn("confirm the rebuilt IPAM state; no address is handed out until it is")
		} else {
			own.pools = own.pools[:0]
			for _, p := range confirmed {
				own.pools = append(own.pools, ipamPool{id: p.ID, subnet: p.Pool, addresses: p.Addresses})
			}
			h.dockerDone(ipamFile, fmt.Sprintf("%d pools with Docker's ip-ranges, aux and container addresses", len(confirmed)), errorStrings(problems))
			log.WithField("pools", len(confirmed)).WithField("problems", errorStrings(problems)).Info("IPAM state confirmed by Docker")
		}
	}

	if published {
		programmed, notRebuilt := d.republishPorts(ctx, docker, ports)
		h.dockerDone(externalFile, fmt.Sprintf("published ports of %d endpoints programmed again from Docker's port bindings", programmed), notRebuilt)
		log.WithField("endpoints", programmed).WithField("notRebuilt", notRebuilt).Info("published ports rebuilt from Docker")
	}
	return own
}

// republishPorts programs Docker's port bindings again for our endpoints
// that have none programmed (their rules were lost with external.json):
// only for containers on one network, the one Docker would have asked us
// to publish on.
func (d *Daemon) republishPorts(ctx context.Context, docker dockerState, ports containerPorts) (int, []string) {
	if d.external == nil {
		return 0, nil
	}
	containerOf := map[string]string{}
	for _, n := range docker.details {
		for cid, ep := range n.containers {
			containerOf[ep.EndpointID] = cid
		}
	}
	have := d.external.Mappings()
	programmed := 0
	var notRebuilt []string
	for _, ep := range d.datapath.Endpoints() {
		if len(have[ep.DockerEndpointID]) > 0 {
			continue
		}
		cid, ok := containerOf[ep.DockerEndpointID]
		if !ok {
			continue // Docker does not know it: reconcile removes it
		}
		callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		bindings, nets, err := ports(callCtx, cid)
		cancel()
		switch {
		case err != nil:
			notRebuilt = append(notRebuilt, fmt.Sprintf("published ports of container %s: %v", dockerid.Short(cid), err))
			continue
		case len(bindings) == 0:
			continue
		case nets != 1:
			notRebuilt = append(notRebuilt, fmt.Sprintf("published ports of container %s: it is on %d networks", dockerid.Short(cid), nets))
			continue
		}
		if _, err := d.external.Program(ep.DockerNetworkID, ep.DockerEndpointID, ep.IfName, ep.IPv4.Addr(), ep.IPv6.Addr(), bindings); err != nil {
			notRebuilt = append(notRebuilt, fmt.Sprintf("published ports of container %s: %v", dockerid.Short(cid), err))
			continue
		}
		programmed++
	}
	return programmed, notRebuilt
}

// dockerContainerPorts asks Docker for a container's port bindings.
func dockerContainerPorts(cli *dockerclient.Client) containerPorts {
	return func(ctx context.Context, id string) ([]external.Binding, int, error) {
		c, err := cli.ContainerInspect(ctx, id)
		if err != nil {
			return nil, 0, fmt.Errorf("inspect container: %w", err)
		}
		if c.HostConfig == nil || c.NetworkSettings == nil {
			return nil, 0, nil
		}
		specs := map[string][]portSpec{}
		for port, list := range c.HostConfig.PortBindings {
			for _, b := range list {
				specs[string(port)] = append(specs[string(port)], portSpec{hostIP: b.HostIP, hostPort: b.HostPort})
			}
		}
		if c.HostConfig.PublishAllPorts && c.Config != nil {
			for port := range c.Config.ExposedPorts {
				if _, ok := specs[string(port)]; !ok {
					specs[string(port)] = []portSpec{{}}
				}
			}
		}
		bindings, err := bindingsOf(specs)
		return bindings, len(c.NetworkSettings.Networks), err
	}
}

// portSpec is one of Docker's bindings of a container port: host address
// and port ("" for any, "8000" or "8000-8010").
type portSpec struct{ hostIP, hostPort string }

// bindingsOf turns Docker's port bindings ("80/tcp" -> host address and
// port) into what ProgramExternalConnectivity would have carried.
func bindingsOf(specs map[string][]portSpec) ([]external.Binding, error) {
	var out []external.Binding
	for port, list := range specs {
		num, proto, _ := strings.Cut(port, "/")
		var b external.Binding
		switch proto {
		case "tcp", "":
			b.Proto = external.ProtoTCP
		case "udp":
			b.Proto = external.ProtoUDP
		default:
			continue // sctp: not published by ebpfnet
		}
		p, err := strconv.ParseUint(num, 10, 16)
		if err != nil || p == 0 {
			return nil, fmt.Errorf("container port %q", port)
		}
		b.Port = uint16(p)
		for _, s := range list {
			b := b
			b.HostIP = s.hostIP
			if s.hostPort != "" {
				lo, hi, isRange := strings.Cut(s.hostPort, "-")
				l, err := strconv.ParseUint(lo, 10, 16)
				if err != nil {
					return nil, fmt.Errorf("host port %q", s.hostPort)
				}
				b.HostPort = uint16(l)
				if isRange {
					h, err := strconv.ParseUint(hi, 10, 16)
					if err != nil || h < l {
						return nil, fmt.Errorf("host port range %q", s.hostPort)
					}
					b.HostPortEnd = uint16(h)
				}
			}
			out = append(out, b)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Port != out[j].Port {
			return out[i].Port < out[j].Port
		}
		return out[i].Proto < out[j].Proto
	})
	return out, nil
}

func errorStrings(errs []error) []string {
	out := make([]string, 0, len(errs))
	for _, e := range errs {
		out = append(out, e.Error())
	}
	return out
}
