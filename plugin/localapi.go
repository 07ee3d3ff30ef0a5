package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ebpfnet/ebpfnet/api"
	"github.com/ebpfnet/ebpfnet/datapath"
	"github.com/ebpfnet/ebpfnet/endpoint"
	"github.com/ebpfnet/ebpfnet/identity"
	"github.com/ebpfnet/ebpfnet/metrics"
	"github.com/ebpfnet/ebpfnet/policy"
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
	policyRoutes(mux, d)
	nodeRoutes(mux, d)
	matrixRoutes(mux, d)
	return mux
}

// nodeRoutes are `ebpfnet node list` and `node remove`, in a cluster.
func nodeRoutes(mux *http.ServeMux, d *Daemon) {
	noCluster := func(w http.ResponseWriter) bool {
		if d.cluster != nil {
			return false
		}
		writeJSON(w, http.StatusNotFound, api.Error{Message: "this node is not in a cluster (start the daemon with --etcd-endpoints)"})
		return true
	}
	mux.HandleFunc("GET /v1/nodes", func(w http.ResponseWriter, r *http.Request) {
		if noCluster(w) {
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), clusterAPITimeout)
		defer cancel()
		nodes, err := d.cluster.Nodes(ctx)
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, api.Error{Message: "list the cluster's nodes: " + err.Error()})
			return
		}
		out := make([]api.Node, 0, len(nodes))
		for _, n := range nodes {
			an := api.Node{Name: n.Name, Heartbeat: n.Heartbeat, Version: n.Version, State: n.State, Blocks: []string{}}
			if n.IP.IsValid() {
				an.IP = n.IP.String()
			}
			for _, b := range n.Blocks {
				an.Blocks = append(an.Blocks, b.Prefix.String()+" of "+b.Subnet.String())
			}
			out = append(out, an)
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("DELETE /v1/nodes/{name}", func(w http.ResponseWriter, r *http.Request) {
		if noCluster(w) {
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), clusterAPITimeout)
		defer cancel()
		if err := d.cluster.RemoveNode(ctx, r.PathValue("name")); err != nil {
			writeJSON(w, http.StatusBadRequest, api.Error{Message: "remove node " + r.PathValue("name") + ": " + err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, struct{}{})
	})
}

// clusterAPITimeout bounds a CLI call that needs etcd.
const clusterAPITimeout = 10 * time.Second

func (d *Daemon) status() api.Status {
	s := api.Status{
		Version:    d.cfg.Version,
		StartedAt:  d.startedAt,
		Uptime:     time.Since(d.startedAt).Round(time.Second),
		Datapath:   datapath.AttachMode,
		Endpoints:  len(d.datapath.Endpoints()),
		Restored:   d.restored,
		Reconciled: d.reconciled.Load(),
	}
	for _, n := range d.driver.Networks() {
		s.Networks = append(s.Networks, api.Network(n))
	}
	if d.cluster != nil {
		cs := d.cluster.Status()
		s.Cluster = &api.ClusterStatus{
			Node: d.cluster.Name(), NodeIP: d.cfg.Cluster.NodeIP.String(), Etcd: cs.Endpoints,
			Connected: cs.Connected, Since: cs.Since, LastError: cs.LastError, LeaseID: cs.LeaseID,
			Queued: cs.Queued, WaitingForIdentity: d.pending.Len(), Writes: cs.Writes, WatchEvents: cs.WatchEvents,
		}
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
	s.Healed = d.healing.report()
	s.Problems = d.problems()
	return s
}

// addrString is p's address, "" for none.
func addrString(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.Addr().String()
}

func toAPIEndpoint(ep datapath.Endpoint) api.Endpoint {
	out := api.Endpoint{
		ID:               ep.ID,
		ContainerID:      ep.ContainerID,
		ContainerName:    ep.ContainerName,
		DockerNetworkID:  ep.DockerNetworkID,
		DockerEndpointID: ep.DockerEndpointID,
		IfName:           ep.IfName,
		IfIndex:          ep.IfIndex,
		IPv4:             addrString(ep.IPv4),
		IPv6:             addrString(ep.IPv6),
		LXCMAC:           net.HardwareAddr(ep.LXCMAC).String(),
		NodeMAC:          net.HardwareAddr(ep.NodeMAC).String(),
		Identity:         ep.Identity,
		Labels:           ep.Labels,
		PolicyMap:        datapath.PolicyMapName(ep.ID),
		PolicyEntries:    ep.PolicyEntries,
		State:            endpointState(ep),
	}
	out.PolicyIngress, out.PolicyEgress = enforcement(ep.PolicyFlags)
	return out
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// policyRoutes adds the policy, identity, bpf and monitor views.
func policyRoutes(mux *http.ServeMux, d *Daemon) {
	mux.HandleFunc("POST /v1/policy", func(w http.ResponseWriter, r *http.Request) {
		data, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
		if err != nil {
			writeJSON(w, http.StatusBadRequest, api.Error{Message: "read rules: " + err.Error()})
			return
		}
		rules, err := policy.Parse(data)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, api.Error{Message: "policy import refused, the policy in force is unchanged: " + err.Error()})
			return
		}
		rev, err := d.endpoints.ImportRules(r.Context(), rules)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, api.Error{Message: "policy import refused, the policy in force is unchanged: " + err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, api.PolicyRevision{Revision: rev})
	})
	mux.HandleFunc("GET /v1/policy", func(w http.ResponseWriter, _ *http.Request) {
		rules, rev, err := rulesJSON(d.rules)
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, api.Error{Message: err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, api.Policy{Revision: rev, Rules: rules})
	})
	mux.HandleFunc("DELETE /v1/policy", func(w http.ResponseWriter, r *http.Request) {
		rev, err := d.endpoints.DeleteAllRules(r.Context())
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, api.Error{Message: err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, api.PolicyRevision{Revision: rev})
	})
	mux.HandleFunc("GET /v1/identities", func(w http.ResponseWriter, _ *http.Request) {
		// In a cluster the file numbers no label set the endpoints use,
		// and whether another node holds one is etcd's to know.
		var unused map[identity.ID]time.Time
		if d.cluster == nil {
			unused = d.identities.Unreferenced()
		}
		out := []api.Identity{}
		for _, e := range d.endpoints.Registry().List() {
			ai := api.Identity{ID: uint32(e.ID), Labels: d.labelsOf(uint32(e.ID))}
			if since, ok := unused[e.ID]; ok {
				ai.UnusedSince = &since
			}
			out = append(out, ai)
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /v1/bpf/policy/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 16)
		ep, ok := d.datapath.EndpointByID(uint16(id))
		if err != nil || !ok {
			writeJSON(w, http.StatusNotFound, api.Error{Message: fmt.Sprintf("endpoint %q not found", r.PathValue("id"))})
			return
		}
		keys, err := d.datapath.PolicyEntries(ep.ID)
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, api.Error{Message: err.Error()})
			return
		}
		out := api.BPFPolicy{Endpoint: ep.ID, PolicyMap: datapath.PolicyMapName(ep.ID), Entries: []api.PolicyEntry{}}
		out.PolicyIngress, out.PolicyEgress = enforcement(ep.PolicyFlags)
		for _, k := range keys {
			out.Entries = append(out.Entries, api.PolicyEntry{
				Direction: k.Direction.String(), Identity: k.Identity, Labels: d.labelsOf(k.Identity),
				Port: k.Port, Protocol: strings.ToUpper(protocolName(k.Proto)),
			})
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /v1/bpf/ipcache", func(w http.ResponseWriter, _ *http.Request) {
		entries, err := d.datapath.IPCache()
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, api.Error{Message: err.Error()})
			return
		}
		owned := d.ipcache.Entries()
		out := []api.IPCacheEntry{}
		for p, e := range entries {
			ae := api.IPCacheEntry{Prefix: p.String(), Identity: uint32(e.Identity), Labels: d.labelsOf(uint32(e.Identity))}
			if e.TunnelEndpoint.IsValid() {
				ae.TunnelEndpoint = e.TunnelEndpoint.String()
			}
			if o, ok := owned[p]; ok {
				ae.Source, ae.Node = o.Source.String(), o.Node
			}
			out = append(out, ae)
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Prefix < out[j].Prefix })
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /v1/monitor", func(w http.ResponseWriter, r *http.Request) {
		only := r.URL.Query().Get("type")
		flusher, ok := w.(http.Flusher)
		if !ok {
			writeJSON(w, http.StatusInternalServerError, api.Error{Message: "streaming unsupported"})
			return
		}
		events, cancel := d.monitor.subscribe()
		defer cancel()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		flusher.Flush()
		enc := json.NewEncoder(w)
		for {
			select {
			case <-r.Context().Done():
				return
			case ev := <-events:
				if only != "" && ev.Type != only {
					continue
				}
				if enc.Encode(ev) != nil {
					return
				}
				flusher.Flush()
			}
		}
	})
}

// enforcement names the policy state per direction from the flags.
func enforcement(flags uint32) (ingress, egress string) {
	name := func(on bool) string {
		if !on {
			return "disabled"
		}
		if flags&datapath.FlagAudit != 0 {
			return "audit"
		}
		return "enabled"
	}
	return name(flags&datapath.FlagEnforceIngress != 0), name(flags&datapath.FlagEnforceEgress != 0)
}

// endpointState is what the CLI and the metrics call an endpoint's state,
// in Cilium's words: one exists only once built, so it is ready, or
// waiting for its identity while its container's labels have not arrived
// (it is at init, denied both ways as soon as any rule exists).
func endpointState(ep datapath.Endpoint) string {
	if identity.ID(ep.Identity) == identity.Init {
		return metrics.StateWaitingForIdentity
	}
	return metrics.StateReady
}

// rulesJSON returns the rules in force, in Cilium's format.
func rulesJSON(repo endpoint.Rules) (json.RawMessage, uint64, error) {
	rules, rev := repo.Snapshot()
	if rules == nil {
		rules = []policy.Rule{}
	}
	data, err := json.Marshal(rules)
	return data, rev, err
}
