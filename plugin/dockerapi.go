package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/docker/go-plugins-helpers/ipam"
	"github.com/docker/go-plugins-helpers/network"
	"github.com/docker/go-plugins-helpers/sdk"
	"github.com/sirupsen/logrus"
)

// manifest answers /Plugin.Activate: one socket serves both halves.
const manifest = `{"Implements": ["NetworkDriver", "IpamDriver"]}`

// dockerAPI routes Docker's calls for both drivers. go-plugins-helpers'
// own handlers each claim only their half in Activate, so we register both
// route sets on one sdk.Handler with the packages' request/response types.
type dockerAPI struct {
	log      logrus.FieldLogger
	inflight *sync.WaitGroup
	handler  sdk.Handler
	observe  callObserver
	// bound is how long Docker waits for any answer (callBound).
	bound time.Duration
}

// DefaultCallBound is how long a Docker call may take before it is
// answered with an error. Docker sets no timeout on a v1 plugin and holds
// its per-network lock meanwhile: one stuck call would stall every
// `docker run` on the network. The calls bound their own waits tighter
// (the endpoint manager 20 s, the cluster's store 10 s); this catches
// anything else that blocks, a kernel call included.
const DefaultCallBound = 25 * time.Second

// callObserver records how long each Docker call took and whether it was
// answered with an error; the daemon's metrics implement it.
type callObserver interface {
	ObserveDockerCall(call string, failed bool, took time.Duration)
}

// noObserver stands in when metrics are off, so route need not check.
type noObserver struct{}

func (noObserver) ObserveDockerCall(string, bool, time.Duration) {}

// errorResponse carries a failure to Docker. The network driver reads Err;
// the IPAM client reads Error from the body and Err from an HTTP 500, so we
// fill both and let each half take its own.
type errorResponse struct {
	Err   string
	Error string `json:"Error,omitempty"`
}

// ipamCapabilities adds RequiresRequestReplay, which the helpers lack. We
// persist pools ourselves, so Docker need not replay them.
type ipamCapabilities struct {
	RequiresMACAddress    bool
	RequiresRequestReplay bool
}

// networkCapabilities adds GwAllocChecker (Engine 28), which the helpers
// lack, to their capabilities: Docker then calls GwAllocCheck before it
// requests the network's pools. Older engines ignore the field.
type networkCapabilities struct {
	Scope             string
	ConnectivityScope string
	GwAllocChecker    bool
}

// gwAllocChecker is the network driver's answer to GwAllocCheck.
type gwAllocChecker interface {
	GwAllocCheck(options map[string]interface{}) (skipIPv4, skipIPv6 bool, err error)
}

// gwAllocCheckRequest and gwAllocCheckResponse are Engine 28's GwAllocCheck.
type gwAllocCheckRequest struct {
	Options map[string]interface{}
}

type gwAllocCheckResponse struct {
	SkipIPv4 bool
	SkipIPv6 bool
}

// newDockerAPI serves drv and ipd; observe learns every call's duration
// (noObserver when metrics are off, never nil).
func newDockerAPI(drv network.Driver, ipd ipam.Ipam, log logrus.FieldLogger, inflight *sync.WaitGroup, observe callObserver, bound time.Duration) *dockerAPI {
	if bound <= 0 {
		bound = DefaultCallBound
	}
	a := &dockerAPI{log: log, inflight: inflight, handler: sdk.NewHandler(manifest), observe: observe, bound: bound}
	a.registerNetwork(drv)
	a.registerIPAM(ipd)
	return a
}

func (a *dockerAPI) registerNetwork(d network.Driver) {
	h := a.handler
	checker, checks := d.(gwAllocChecker)
	route(a, h, "/NetworkDriver.GetCapabilities", func(*struct{}) (any, error) {
		c, err := d.GetCapabilities()
		if err != nil {
			return nil, err
		}
		return networkCapabilities{Scope: c.Scope, ConnectivityScope: c.ConnectivityScope, GwAllocChecker: checks}, nil
	})
	route(a, h, "/NetworkDriver.CreateNetwork", func(r *network.CreateNetworkRequest) (any, error) { return empty(d.CreateNetwork(r)) })
	route(a, h, "/NetworkDriver.DeleteNetwork", func(r *network.DeleteNetworkRequest) (any, error) { return empty(d.DeleteNetwork(r)) })
	route(a, h, "/NetworkDriver.AllocateNetwork", func(r *network.AllocateNetworkRequest) (any, error) { return d.AllocateNetwork(r) })
	route(a, h, "/NetworkDriver.FreeNetwork", func(r *network.FreeNetworkRequest) (any, error) { return empty(d.FreeNetwork(r)) })
	route(a, h, "/NetworkDriver.CreateEndpoint", func(r *network.CreateEndpointRequest) (any, error) { return d.CreateEndpoint(r) })
	route(a, h, "/NetworkDriver.DeleteEndpoint", func(r *network.DeleteEndpointRequest) (any, error) { return empty(d.DeleteEndpoint(r)) })
	route(a, h, "/NetworkDriver.EndpointOperInfo", func(r *network.InfoRequest) (any, error) { return d.EndpointInfo(r) })
	route(a, h, "/NetworkDriver.Join", func(r *network.JoinRequest) (any, error) { return d.Join(r) })
	route(a, h, "/NetworkDriver.Leave", func(r *network.LeaveRequest) (any, error) { return empty(d.Leave(r)) })
	route(a, h, "/NetworkDriver.DiscoverNew", func(r *network.DiscoveryNotification) (any, error) { return empty(d.DiscoverNew(r)) })
	route(a, h, "/NetworkDriver.DiscoverDelete", func(r *network.DiscoveryNotification) (any, error) { return empty(d.DiscoverDelete(r)) })
	route(a, h, "/NetworkDriver.ProgramExternalConnectivity", func(r *network.ProgramExternalConnectivityRequest) (any, error) {
		return empty(d.ProgramExternalConnectivity(r))
	})
	route(a, h, "/NetworkDriver.RevokeExternalConnectivity", func(r *network.RevokeExternalConnectivityRequest) (any, error) {
		return empty(d.RevokeExternalConnectivity(r))
	})
	route(a, h, "/NetworkDriver.GwAllocCheck", func(r *gwAllocCheckRequest) (any, error) {
		if !checks {
			return gwAllocCheckResponse{}, nil
		}
		skip4, skip6, err := checker.GwAllocCheck(r.Options)
		return gwAllocCheckResponse{SkipIPv4: skip4, SkipIPv6: skip6}, err
	})
}

func (a *dockerAPI) registerIPAM(d ipam.Ipam) {
	h := a.handler
	route(a, h, "/IpamDriver.GetCapabilities", func(*struct{}) (any, error) {
		c, err := d.GetCapabilities()
		if err != nil {
			return nil, err
		}
		return ipamCapabilities{RequiresMACAddress: c.RequiresMACAddress}, nil
	})
	route(a, h, "/IpamDriver.GetDefaultAddressSpaces", func(*struct{}) (any, error) { return d.GetDefaultAddressSpaces() })
	route(a, h, "/IpamDriver.RequestPool", func(r *ipam.RequestPoolRequest) (any, error) { return d.RequestPool(r) })
	route(a, h, "/IpamDriver.ReleasePool", func(r *ipam.ReleasePoolRequest) (any, error) { return empty(d.ReleasePool(r)) })
	route(a, h, "/IpamDriver.RequestAddress", func(r *ipam.RequestAddressRequest) (any, error) { return d.RequestAddress(r) })
	route(a, h, "/IpamDriver.ReleaseAddress", func(r *ipam.ReleaseAddressRequest) (any, error) { return empty(d.ReleaseAddress(r)) })
}

// empty turns a call with nothing to return into Docker's "{}".
func empty(err error) (any, error) { return struct{}{}, err }

// route registers one Docker call: decode the request, call, encode the
// answer or the error, and log and observe how long it took. A call that
// takes longer than the bound is answered with an error while it goes on
// in the background (its own deadlines end it). Requests in flight are
// counted so that shutdown can wait for them.
func route[Req any](a *dockerAPI, h sdk.Handler, path string, call func(*Req) (any, error)) {
	h.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		req := new(Req)
		// Some calls (GetCapabilities) arrive with an empty body or "null".
		if err := json.NewDecoder(r.Body).Decode(req); err != nil && !errors.Is(err, io.EOF) {
			a.observe.ObserveDockerCall(path, true, time.Since(start))
			a.log.WithError(err).WithField("call", path).Warn("undecodable request")
			sdk.EncodeResponse(w, errorResponse{Err: "decode request: " + err.Error()}, true)
			return
		}
		type answer struct {
			resp any
			err  error
		}
		done := make(chan answer, 1)
		a.inflight.Add(1)
		go func() {
			defer a.inflight.Done()
			resp, err := call(req)
			done <- answer{resp, err}
		}()
		var resp any
		var err error
		timer := time.NewTimer(a.bound)
		select {
		case ans := <-done:
			timer.Stop()
			resp, err = ans.resp, ans.err
		case <-timer.C:
			err = fmt.Errorf("ebpfnet did not finish %s within %s; it goes on in the background, see the daemon's log", path, a.bound)
			go func() {
				ans := <-done
				a.log.WithError(ans.err).WithFields(logrus.Fields{"call": path, "took": time.Since(start).Round(time.Millisecond)}).
					Warn("a call answered late; Docker was told it failed")
			}()
		}
		took := time.Since(start)
		a.observe.ObserveDockerCall(path, err != nil, took)
		log := a.log.WithFields(logrus.Fields{"call": path, "took": took.Round(time.Microsecond)})
		if err != nil {
			log.WithError(err).Warn("call failed")
			sdk.EncodeResponse(w, errorResponse{Err: err.Error(), Error: err.Error()}, true)
			return
		}
		if resp == nil {
			resp = struct{}{}
		}
		log.Debug("call served")
		sdk.EncodeResponse(w, resp, false)
	})
}
