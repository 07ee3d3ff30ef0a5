// Package dockerwatch learns which container sits behind an endpoint, and
// its labels, from Docker's events stream and container inspection. It never
// runs inside a driver call: a synchronous Docker API call while Docker holds
// the container's lock (as it does around CreateEndpoint and Join) would
// deadlock Docker.
package dockerwatch

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	dockerclient "github.com/docker/docker/client"
	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/dockerid"
)

// Container is what policy needs to know of a container.
type Container struct {
	ID     string
	Name   string
	Labels map[string]string
}

// Attachment says that a container joined a network. EndpointID is the
// Docker endpoint when known; the fast path (a "network connect" event)
// knows only the network, and the handler matches the endpoint itself.
type Attachment struct {
	Container  Container
	NetworkID  string
	EndpointID string
}

// Handler receives attachments. It returns false when it could not tell
// which endpoint is meant (two containers joining one network at once); the
// watcher then inspects the container, which waits until Docker has started
// it, and calls again with EndpointID set.
type Handler func(Attachment) bool

// Watcher follows Docker's events.
type Watcher struct {
	log logrus.FieldLogger
	cli *dockerclient.Client

	mu    sync.Mutex
	known map[string]Container // container ID -> labels, learnt at create
}

// NewClient connects to the Docker at host, or where the docker CLI would
// (DOCKER_HOST or the default socket) when host is empty. It negotiates the
// API version with the daemon at the first call: Docker 20.10 knows
// nothing newer than 1.41, and Docker 29.0-29.2 refuse anything older than
// 1.44, so no one version serves both.
func NewClient(host string) (*dockerclient.Client, error) {
	opts := []dockerclient.Opt{dockerclient.FromEnv, dockerclient.WithAPIVersionNegotiation()}
	if host != "" {
		opts = append(opts, dockerclient.WithHost(host))
	}
	cli, err := dockerclient.NewClientWithOpts(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	return cli, nil
}

// New follows the Docker at host (NewClient).
func New(log logrus.FieldLogger, host string) (*Watcher, error) {
	cli, err := NewClient(host)
	if err != nil {
		return nil, err
	}
	return &Watcher{log: log, cli: cli, known: map[string]Container{}}, nil
}

// Close releases the client.
func (w *Watcher) Close() error { return w.cli.Close() }

// Run follows the events until ctx ends. Each time the stream (re)starts it
// first reports every running container's attachments, so nothing that
// happened while the stream was down is missed.
func (w *Watcher) Run(ctx context.Context, handle Handler) {
	for ctx.Err() == nil {
		err := w.follow(ctx, handle)
		if ctx.Err() != nil {
			return
		}
		w.log.WithError(err).Info("Docker events stream ended; reconnecting")
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (w *Watcher) follow(ctx context.Context, handle Handler) error {
	streamCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Subscribe before the resync so that nothing falls between the two.
	msgs, errs := w.cli.Events(streamCtx, events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)),
		filters.Arg("type", string(events.NetworkEventType)),
		filters.Arg("event", string(events.ActionCreate)),
		filters.Arg("event", string(events.ActionConnect)),
		filters.Arg("event", string(events.ActionDestroy)),
	)})
	if err := w.resync(ctx, handle); err != nil {
		return err
	}
	for {
		select {
		case err := <-errs:
			if err == nil {
				err = errors.New("stream closed")
			}
			return err
		case m := <-msgs:
			w.handleEvent(ctx, m, handle)
		}
	}
}

func (w *Watcher) handleEvent(ctx context.Context, m events.Message, handle Handler) {
	switch {
	case m.Type == events.ContainerEventType && m.Action == events.ActionCreate:
		// The container exists but has not started: inspecting it now is
		// quick and takes no lock that a start holds.
		if c, err := w.inspect(ctx, m.Actor.ID); err == nil {
			w.remember(c.Container)
		} else {
			w.log.WithError(err).WithField("container", dockerid.Short(m.Actor.ID)).Debug("inspect at create")
		}
	case m.Type == events.ContainerEventType && m.Action == events.ActionDestroy:
		w.mu.Lock()
		delete(w.known, m.Actor.ID)
		w.mu.Unlock()
	case m.Type == events.NetworkEventType && m.Action == events.ActionConnect:
		containerID := m.Actor.Attributes["container"]
		w.mu.Lock()
		c, ok := w.known[containerID]
		w.mu.Unlock()
		if ok && handle(Attachment{Container: c, NetworkID: m.Actor.ID}) {
			return
		}
		// Unknown container (created before we started) or an ambiguous
		// match: inspect in the background, which waits for the start.
		go w.resolveLater(ctx, containerID, m.Actor.ID, handle)
	}
}

// resolveLater inspects the container until Docker has given it an
// endpoint on the network, then hands the exact attachment over.
func (w *Watcher) resolveLater(ctx context.Context, containerID, networkID string, handle Handler) {
	for attempt := 0; attempt < 50 && ctx.Err() == nil; attempt++ {
		info, err := w.inspect(ctx, containerID)
		if err == nil {
			for _, a := range info.Attachments {
				if a.NetworkID == networkID && a.EndpointID != "" {
					handle(a)
					return
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	w.log.WithField("container", dockerid.Short(containerID)).Warn("could not match the container to its endpoint; it keeps the init identity")
}

// resync reports every running container's attachments.
func (w *Watcher) resync(ctx context.Context, handle Handler) error {
	list, err := w.cli.ContainerList(ctx, container.ListOptions{})
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	for _, s := range list {
		info, err := w.inspect(ctx, s.ID)
		if err != nil {
			w.log.WithError(err).WithField("container", dockerid.Short(s.ID)).Debug("inspect at resync")
			continue
		}
		w.remember(info.Container)
		for _, a := range info.Attachments {
			handle(a)
		}
	}
	return nil
}

type inspected struct {
	Container   Container
	Attachments []Attachment
}

func (w *Watcher) inspect(ctx context.Context, id string) (inspected, error) {
	callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := w.cli.ContainerInspect(callCtx, id)
	if err != nil {
		return inspected{}, fmt.Errorf("inspect container %s: %w", dockerid.Short(id), err)
	}
	c := Container{ID: resp.ID}
	if resp.Config != nil {
		c.Labels = resp.Config.Labels
	}
	if len(resp.Name) > 0 {
		c.Name = resp.Name[1:] // Docker keeps a leading "/"
	}
	out := inspected{Container: c}
	if resp.NetworkSettings != nil {
		for _, n := range resp.NetworkSettings.Networks {
			if n != nil && n.NetworkID != "" {
				out.Attachments = append(out.Attachments, Attachment{Container: c, NetworkID: n.NetworkID, EndpointID: n.EndpointID})
			}
		}
	}
	return out, nil
}

func (w *Watcher) remember(c Container) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.known[c.ID] = c
}
