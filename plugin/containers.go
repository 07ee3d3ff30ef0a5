package plugin

import (
	"context"
	"time"

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
	ctx, cancel := context.WithTimeout(context.Background(), containerTimeout)
	defer cancel()
	err := d.endpoints.SetContainer(ctx, ep.DockerEndpointID, endpoint.Container{
		ID: a.Container.ID, Name: a.Container.Name, Labels: a.Container.Labels,
	})
	if err != nil {
		d.log.WithError(err).WithField("epid", ep.ID).Warn("give an endpoint its container's identity; it stays as it is")
	}
	return true
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
