package driver

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/docker/go-plugins-helpers/network"

	"github.com/ebpfnet/ebpfnet/dockerid"
)

// An endpoint is built after CreateEndpoint has answered: Docker needs its
// interface only once Join has answered, when it moves the peer into the
// sandbox, and between the two it does work of its own (a store write, the
// sandbox), 2-3 ms on Docker 20.10 here. So CreateEndpoint checks
// Docker's request, answers, and builds the endpoint (veth, programs,
// policy) meanwhile; Join, and every other call about the endpoint, waits
// for the build and reports its error. The container cannot send a packet
// before Join has answered, so it still meets its programs first.

// errStillBuilding is a wait's error when the build outlasted it.
var errStillBuilding = errors.New("still being built")

// creation is an endpoint being built, or whose build failed.
type creation struct {
	done chan struct{}
	// resp is CreateEndpoint's answer, for a retried call.
	resp *network.CreateEndpointResponse
	// err is the build's, set before done is closed.
	err error
}

// creations are the builds under way, and the failed ones until Docker
// deletes their endpoint. A build that succeeds leaves: from then on the
// endpoint manager knows the endpoint.
type creations struct {
	mu   sync.Mutex
	byID map[string]*creation
	wg   sync.WaitGroup
}

func newCreations() *creations {
	return &creations{byID: map[string]*creation{}}
}

// start runs build in the background for the endpoint dockerEndpointID
// and returns resp, unless a build of it is under way (a retried call),
// whose answer it returns instead. A failed build is started again.
func (c *creations) start(dockerEndpointID string, resp *network.CreateEndpointResponse, build func() error) *network.CreateEndpointResponse {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cr, ok := c.byID[dockerEndpointID]; ok && !cr.failed() {
		return cr.resp
	}
	cr := &creation{done: make(chan struct{}), resp: resp}
	c.byID[dockerEndpointID] = cr
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		err := build()
		c.mu.Lock()
		defer c.mu.Unlock()
		cr.err = err
		close(cr.done)
		if err == nil && c.byID[dockerEndpointID] == cr {
			delete(c.byID, dockerEndpointID)
		}
	}()
	return resp
}

// failed tells whether the build is over and failed; the caller holds
// creations.mu.
func (cr *creation) failed() bool {
	select {
	case <-cr.done:
		return cr.err != nil
	default:
		return false
	}
}

// wait returns once no build of the endpoint is under way: the build's
// error if it failed, nil if it succeeded or there was none. It gives up
// after timeout, which is longer than a build's own bound.
func (c *creations) wait(dockerEndpointID string, timeout time.Duration) error {
	c.mu.Lock()
	cr, ok := c.byID[dockerEndpointID]
	c.mu.Unlock()
	if !ok {
		return nil
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-cr.done:
		return cr.err
	case <-t.C:
		return fmt.Errorf("endpoint %s: %w after %v", dockerid.Short(dockerEndpointID), errStillBuilding, timeout)
	}
}

// forget drops a failed build's record (DeleteEndpoint).
func (c *creations) forget(dockerEndpointID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cr, ok := c.byID[dockerEndpointID]; ok && cr.failed() {
		delete(c.byID, dockerEndpointID)
	}
}

// waitAll returns once every build has ended, or false after timeout.
func (c *creations) waitAll(timeout time.Duration) bool {
	done := make(chan struct{})
	go func() {
		c.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}
