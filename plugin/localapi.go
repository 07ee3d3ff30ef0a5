package plugin

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/ebpfnet/ebpfnet/api"
	"github.com/ebpfnet/ebpfnet/datapath"
)

// newLocalAPI serves the CLI's read-only views of the daemon.
func newLocalAPI(d *Daemon) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, d.status())
	})
	mux.HandleFunc("GET /v1/endpoints", func(w http.ResponseWriter, _ *http.Request) {
		eps := d.datapath.Endpoints()
		out := make([]api.Endpoint, 0, len(eps))
		for _, ep := range eps {
			out = append(out, toAPIEndpoint(ep))
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /v1/endpoints/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 16)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, api.Error{Message: fmt.Sprintf("endpoint ID %q is not a number from 1 to 65535", r.PathValue("id"))})
			return
		}
		ep, ok := d.datapath.EndpointByID(uint16(id))
		if !ok {
			writeJSON(w, http.StatusNotFound, api.Error{Message: fmt.Sprintf("endpoint %d not found", id)})
			return
		}
		writeJSON(w, http.StatusOK, toAPIEndpoint(ep))
	})
	return mux
}

func (d *Daemon) status() api.Status {
	s := api.Status{
		Version:    d.cfg.Version,
		StartedAt:  d.startedAt,
		Uptime:     time.Since(d.startedAt).Round(time.Second),
		Datapath:   "tcx",
		Endpoints:  len(d.datapath.Endpoints()),
		Restored:   d.restored,
		Reconciled: d.reconciled.Load(),
	}
	for _, n := range d.driver.Networks() {
		s.Networks = append(s.Networks, api.Network(n))
	}
	for _, p := range d.ipam.Pools() {
		ap := api.Pool{ID: p.ID, Pool: p.Pool.String(), Allocated: []string{}}
		if p.SubPool.IsValid() {
			ap.SubPool = p.SubPool.String()
		}
		for _, a := range p.Addresses {
			ap.Allocated = append(ap.Allocated, a.String())
		}
		s.Pools = append(s.Pools, ap)
	}
	return s
}

func toAPIEndpoint(ep datapath.Endpoint) api.Endpoint {
	return api.Endpoint{
		ID:               ep.ID,
		ContainerID:      ep.ContainerID,
		ContainerName:    ep.ContainerName,
		DockerNetworkID:  ep.DockerNetworkID,
		DockerEndpointID: ep.DockerEndpointID,
		IfName:           ep.IfName,
		IfIndex:          ep.IfIndex,
		IPv4:             ep.IPv4.Addr().String(),
		LXCMAC:           net.HardwareAddr(ep.LXCMAC).String(),
		NodeMAC:          net.HardwareAddr(ep.NodeMAC).String(),
		Identity:         ep.Identity,
		Labels:           ep.Labels,
		PolicyMap:        datapath.PolicyMapName(ep.ID),
		PolicyIngress:    "disabled",
		PolicyEgress:     "disabled",
		State:            "ready",
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
