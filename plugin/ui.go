package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/ebpfnet/ebpfnet/api"
	"github.com/ebpfnet/ebpfnet/datapath"
	"github.com/ebpfnet/ebpfnet/ipcache"
	"github.com/ebpfnet/ebpfnet/servicemap"
	"github.com/ebpfnet/ebpfnet/ui"
)

// UIConfig is the service map's web page (`--ui-addr`); off by default.
type UIConfig struct {
	// Addr is the host:port to serve the page on; empty turns it off.
	Addr string
	// AllowRemote lets Addr be other than loopback. The page names
	// every container and flow and asks for no password.
	AllowRemote bool
	// Limits bound the flows remembered; zero values take the defaults.
	Limits servicemap.Limits
}

// serviceMap serves the service map: flows from the monitor's events and
// the conntrack table, identities and policy from the daemon's state. Its
// listener is opened at start, so that a bad address fails the start.
type serviceMap struct {
	d     *Daemon
	ln    net.Listener
	flows *servicemap.Flows

	mu sync.Mutex
	// resolve names the ends of conntrack flows and of events without
	// identities, made afresh for every snapshot and at most every
	// resolverAge for events.
	resolve   *servicemap.Resolver
	resolveAt time.Time
}

// resolverAge is how old a resolver may be for an event: the endpoints
// and the ipcache change, and a flood of drops must not rebuild it for
// every packet. One that does not know the reporting endpoint (a drop
// often comes right after its endpoint did) is rebuilt sooner, after
// resolverMinAge.
const (
	resolverAge    = time.Second
	resolverMinAge = 10 * time.Millisecond
)

// resolver returns a resolver of the endpoints and the ipcache of at most
// maxAge ago, or of resolverMinAge ago when it does not know endpoint
// epid.
func (m *serviceMap) resolver(maxAge time.Duration, epid uint16) *servicemap.Resolver {
	m.mu.Lock()
	defer m.mu.Unlock()
	age := time.Since(m.resolveAt)
	if m.resolve == nil || age > maxAge || (epid != 0 && !m.resolve.HasEndpoint(epid) && age > resolverMinAge) {
		byEndpoint := map[uint16]uint32{}
		for _, ep := range m.d.datapath.Endpoints() {
			byEndpoint[ep.ID] = ep.Identity
		}
		prefixes := map[netip.Prefix]uint32{}
		for p, o := range m.d.ipcache.Entries() {
			prefixes[p] = uint32(o.Identity)
		}
		m.resolve, m.resolveAt = servicemap.NewResolver(byEndpoint, prefixes), time.Now()
	}
	return m.resolve
}

// openServiceMap listens on the UI address, or returns nil when the UI is
// off.
func openServiceMap(d *Daemon) (*serviceMap, error) {
	cfg := d.cfg.UI
	if cfg.Addr == "" {
		return nil, nil
	}
	if err := ui.CheckAddr(cfg.Addr, cfg.AllowRemote); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen for the service map on %q: %w", cfg.Addr, err)
	}
	return &serviceMap{d: d, ln: ln, flows: servicemap.NewFlows(cfg.Limits, nil)}, nil
}

// Addr is where the page is served.
func (m *serviceMap) Addr() net.Addr { return m.ln.Addr() }

// close releases the listener of a daemon whose start failed; run closes
// it otherwise. Safe on nil.
func (m *serviceMap) close() {
	if m != nil {
		_ = m.ln.Close()
	}
}

// run serves the page and feeds the flows with the datapath's events until
// ctx ends. It subscribes to the monitor like `ebpfnet monitor` does, so
// the events are decoded while the UI is on.
func (m *serviceMap) run(ctx context.Context) {
	events, unsubscribe := m.d.monitor.subscribe()
	defer unsubscribe()
	log := m.d.log.WithField("subsys", "ui")
	srv := &http.Server{
		Handler:           ui.NewHandler(m, ui.Config{AllowRemote: m.d.cfg.UI.AllowRemote, Log: log}),
		ReadHeaderTimeout: 10 * time.Second,
		// Open event streams end with the daemon.
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(m.ln) }()
	log.WithField("url", "http://"+m.ln.Addr().String()+"/").Info("serving the service map")
	for {
		select {
		case ev := <-events:
			if fl, ok := flowOfEvent(ev, m.resolver(resolverAge, ev.Endpoint)); ok {
				m.flows.Observe(fl)
			}
		case err := <-served:
			if !errors.Is(err, http.ErrServerClosed) {
				log.WithError(err).Warn("the service map stopped")
			}
			return
		case <-ctx.Done():
			shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = srv.Shutdown(shutdownCtx)
			cancel()
			return
		}
	}
}

// Snapshot is ui.Source: the conntrack table's flows are taken in first,
// so that the allowed flows of endpoints that enforce nothing, which no
// verdict reports, are on the map too.
func (m *serviceMap) Snapshot(context.Context) (ui.Snapshot, error) {
	inv, err := m.d.inventory()
	if err != nil {
		return ui.Snapshot{}, err
	}
	if err := m.observeConntrack(); err != nil {
		return ui.Snapshot{}, err
	}
	return ui.Snapshot{
		Graph:  servicemap.BuildGraph(inv, m.flows.Edges(), m.flows.Limits()),
		Matrix: servicemap.BuildMatrix(inv),
	}, nil
}

// observeConntrack records every live flow of the conntrack table as
// allowed (only a flow that passed has an entry), its ends named by their
// local endpoint or the ipcache.
func (m *serviceMap) observeConntrack() error {
	resolve := m.resolver(0, 0)
	flows, err := m.d.datapath.Conntrack()
	if err != nil {
		return fmt.Errorf("read the conntrack table: %w", err)
	}
	for _, f := range flows {
		m.flows.Observe(servicemap.Flow{
			Src: f.Src, Dst: f.Dst, Proto: f.Proto,
			SrcIdentity: resolve.Identity(f.SrcEndpoint, f.Src.Addr()),
			DstIdentity: resolve.Identity(f.DstEndpoint, f.Dst.Addr()),
			Verdict:     servicemap.Allowed,
		})
	}
	return nil
}

// flowOfEvent turns a monitor event into a flow: a drop is denied, a
// verdict says what it is. An end whose identity the program had not
// learnt before it dropped the packet (0) is named by resolve: the
// reporting endpoint on its own side, the ipcache on the other.
func flowOfEvent(ev api.MonitorEvent, resolve *servicemap.Resolver) (servicemap.Flow, bool) {
	fl := servicemap.Flow{SrcIdentity: ev.SrcIdentity, DstIdentity: ev.DstIdentity, Reason: ev.Reason}
	switch {
	case ev.Type == datapath.EventDrop.String():
		fl.Verdict = servicemap.Denied
	case ev.Type == datapath.EventPolicyVerdict.String() && ev.Verdict == datapath.VerdictAllowed.String():
		fl.Verdict, fl.Reason = servicemap.Allowed, ""
	case ev.Type == datapath.EventPolicyVerdict.String() && ev.Verdict == datapath.VerdictDenied.String():
		fl.Verdict = servicemap.Denied
	case ev.Type == datapath.EventPolicyVerdict.String() && ev.Verdict == datapath.VerdictAudit.String():
		fl.Verdict = servicemap.Audit
	default:
		return fl, false
	}
	proto, ok := protocolNumber(ev.Protocol)
	if !ok {
		return fl, false
	}
	fl.Proto = proto
	var err1, err2 error
	fl.Src, err1 = parseEnd(ev.Source)
	fl.Dst, err2 = parseEnd(ev.Destination)
	if err1 != nil || err2 != nil {
		return fl, false
	}
	// Egress: the packet left the reporting endpoint, whatever its
	// source address says; ingress: it was going into it.
	var srcEP, dstEP uint16
	if ev.Direction == "egress" {
		srcEP = ev.Endpoint
	} else {
		dstEP = ev.Endpoint
	}
	if fl.SrcIdentity == 0 {
		fl.SrcIdentity = resolveEnd(resolve, srcEP, fl.Src.Addr())
	}
	if fl.DstIdentity == 0 {
		fl.DstIdentity = resolveEnd(resolve, dstEP, fl.Dst.Addr())
	}
	return fl, true
}

// resolveEnd names an end the datapath left at 0; an address the program
// did not parse (0.0.0.0) stays unknown.
func resolveEnd(resolve *servicemap.Resolver, epid uint16, addr netip.Addr) uint32 {
	if resolve == nil || (epid == 0 && (!addr.IsValid() || addr.IsUnspecified())) {
		return 0
	}
	return resolve.Identity(epid, addr)
}

// parseEnd reads an end as monitorBroker writes it: addr:port, or the
// address alone for ICMP.
func parseEnd(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(s)
	return netip.AddrPortFrom(a, 0), err
}

// protocolNumber undoes protocolName.
func protocolNumber(name string) (uint8, bool) {
	switch name {
	case "icmp":
		return servicemap.ProtoICMP, true
	case "tcp":
		return servicemap.ProtoTCP, true
	case "udp":
		return servicemap.ProtoUDP, true
	case "any":
		return 0, true
	}
	var n uint8
	if _, err := fmt.Sscanf(name, "proto-%d", &n); err == nil {
		return n, true
	}
	return 0, false
}

// inventory is what the service map and the policy matrix are made of:
// the local endpoints with their policy maps as the datapath holds them,
// the other nodes' endpoints from the ipcache.
func (d *Daemon) inventory() (servicemap.Inventory, error) {
	inv := servicemap.Inventory{Node: d.nodeName(), Labels: func(id uint32) []string {
		if id == 0 {
			// An end a dropped packet's program could not name, not
			// the "all" of a policy entry.
			return []string{"reserved:unknown"}
		}
		return d.labelsOf(id)
	}}
	for _, ep := range d.datapath.Endpoints() {
		inv.Endpoints = append(inv.Endpoints, servicemap.Endpoint{
			ID: ep.ID, Identity: ep.Identity, Container: ep.ContainerName,
			IPv4: ep.IPv4.Addr(), Node: inv.Node, Local: true,
		})
		entries, err := d.datapath.PolicyEntries(ep.ID)
		if errors.Is(err, datapath.ErrNoEndpoint) {
			continue // deleted meanwhile
		}
		if err != nil {
			return inv, fmt.Errorf("read the policy map of endpoint %d: %w", ep.ID, err)
		}
		in, eg := enforcement(ep.PolicyFlags)
		inv.Policies = append(inv.Policies, servicemap.EndpointPolicy{
			Endpoint: ep.ID, Identity: ep.Identity, Ingress: in, Egress: eg, Entries: entries,
		})
	}
	for p, o := range d.ipcache.Entries() {
		if o.Source == ipcache.SourceRemote && p.IsSingleIP() {
			inv.Endpoints = append(inv.Endpoints, servicemap.Endpoint{
				Identity: uint32(o.Identity), IPv4: p.Addr(), Node: o.Node,
			})
		}
	}
	return inv, nil
}

// nodeName is this node's name in the cluster, else the hostname.
func (d *Daemon) nodeName() string {
	if d.cluster != nil {
		return d.cluster.Name()
	}
	if h, err := os.Hostname(); err == nil {
		return h
	}
	return "this node"
}

// matrixRoutes serves GET /v1/policy/matrix (`ebpfnet policy matrix`),
// whether or not the UI is on.
func matrixRoutes(mux *http.ServeMux, d *Daemon) {
	mux.HandleFunc("GET /v1/policy/matrix", func(w http.ResponseWriter, _ *http.Request) {
		inv, err := d.inventory()
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, api.Error{Message: err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, servicemap.BuildMatrix(inv))
	})
}
