package plugin

import (
	"context"
	"errors"
	"maps"
	"sync"
	"time"

	"github.com/ebpfnet/ebpfnet/cluster"
	"github.com/ebpfnet/ebpfnet/datapath"
	"github.com/ebpfnet/ebpfnet/dockerwatch"
	"github.com/ebpfnet/ebpfnet/endpoint"
)

// containerTimeout bounds one identity assignment: allocating an identity
// may wait for a cluster's store.
const containerTimeout = 10 * time.Second

// containerJoined is the handler of Docker's events (dockerwatch): it
// finds the endpoint a container joined through and hands its labels to
// the endpoint manager. It reports false when it cannot tell which
// endpoint is meant, so that the watcher inspects the container and calls
// again with the endpoint's ID.
func (d *Daemon) containerJoined(a dockerwatch.Attachment) bool {
	ep, ok := matchEndpoint(d.datapath.Endpoints(), a)
	if !ok {
		return false
	}
	if ep.ID == 0 {
		return true // not ours
	}
	d.setContainer(ep.DockerEndpointID, endpoint.Container{ID: a.Container.ID, Name: a.Container.Name, Labels: a.Container.Labels})
	return true
}

// setContainer hands a container's labels to the endpoint manager. One
// whose identity cannot be allocated for want of the cluster's store stays
// at init (denied both ways as soon as any rule exists) and is tried again
// once the store answers.
func (d *Daemon) setContainer(dockerEndpointID string, c endpoint.Container) error {
	ctx, cancel := context.WithTimeout(context.Background(), containerTimeout)
	defer cancel()
	err := d.endpoints.SetContainer(ctx, dockerEndpointID, c)
	switch {
	case err == nil:
		d.pending.remove(dockerEndpointID)
	case errors.Is(err, cluster.ErrUnreachable):
		if d.pending.add(dockerEndpointID, c) {
			d.log.WithError(err).WithField("container", c.Name).Warn("a container waits for its identity until etcd answers; meanwhile it is init: denied both ways when any rule exists")
		}
	default:
		d.log.WithError(err).WithField("container", c.Name).Warn("give an endpoint its container's identity; it stays as it is")
	}
	return err
}

// pendingContainers are containers waiting for an identity, by Docker
// endpoint ID.
type pendingContainers struct {
	mu sync.Mutex
	m  map[string]endpoint.Container
}

// add reports whether the container was not waiting already.
func (p *pendingContainers) add(dockerEndpointID string, c endpoint.Container) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[string]endpoint.Container{}
	}
	_, was := p.m[dockerEndpointID]
	p.m[dockerEndpointID] = c
	return !was
}

func (p *pendingContainers) remove(dockerEndpointID string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.m, dockerEndpointID)
}

// Len is how many containers wait.
func (p *pendingContainers) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.m)
}

func (p *pendingContainers) snapshot() map[string]endpoint.Container {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.m)
}

// connection is what the retry needs of the cluster: a channel closed
// while it is connected.
type connection interface{ Connected() <-chan struct{} }

// retry tries the waiting containers again each time the cluster is
// connected, until ctx ends. An endpoint gone meanwhile is simply
// forgotten (SetContainer ignores it).
func (p *pendingContainers) retry(ctx context.Context, conn connection, set func(string, endpoint.Container) error) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if p.Len() == 0 {
			continue
		}
		select {
		case <-conn.Connected():
		case <-ctx.Done():
			return
		}
		for id, c := range p.snapshot() {
			_ = set(id, c)
		}
	}
}

// matchEndpoint finds the endpoint an attachment is about. Without an
// endpoint ID, the one endpoint of that network that has no container yet
// is it; two such endpoints are ambiguous (ok false). ID 0 means none.
func matchEndpoint(eps []datapath.Endpoint, a dockerwatch.Attachment) (datapath.Endpoint, bool) {
	var pending []datapath.Endpoint
	for _, ep := range eps {
		if a.EndpointID != "" {
			if ep.DockerEndpointID == a.EndpointID {
				return ep, true
			}
			continue
		}
		if ep.DockerNetworkID != a.NetworkID {
			continue
		}
		if ep.ContainerID == a.Container.ID {
			return ep, true
		}
		if ep.ContainerID == "" {
			pending = append(pending, ep)
		}
	}
	switch {
	case a.EndpointID != "":
		return datapath.Endpoint{}, true
	case len(pending) == 1:
		return pending[0], true
	case len(pending) == 0:
		return datapath.Endpoint{}, true
	}
	return datapath.Endpoint{}, false
}
