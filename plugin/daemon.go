// Package plugin is the daemon: it serves Docker's network and IPAM driver
// calls on the plugin socket and the local API for the CLI, and it owns
// start-up, restore and shutdown. SIGTERM stops the daemon but leaves every
// container's datapath in place: maps and links are pinned.
package plugin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/api"
	"github.com/ebpfnet/ebpfnet/atomicfile"
	"github.com/ebpfnet/ebpfnet/cluster"
	"github.com/ebpfnet/ebpfnet/datapath"
	"github.com/ebpfnet/ebpfnet/dockerwatch"
	"github.com/ebpfnet/ebpfnet/driver"
	"github.com/ebpfnet/ebpfnet/endpoint"
	"github.com/ebpfnet/ebpfnet/external"
	"github.com/ebpfnet/ebpfnet/identity"
	"github.com/ebpfnet/ebpfnet/ipam"
	"github.com/ebpfnet/ebpfnet/ipcache"
	"github.com/ebpfnet/ebpfnet/metrics"
	"github.com/ebpfnet/ebpfnet/policy"
	"github.com/ebpfnet/ebpfnet/procsys"
)

// Config is everything `ebpfnet daemon` can be told. Defaults are the
// contract paths (ARCHITECTURE.md); tests move them all.
type Config struct {
	PluginSocket string // /run/docker/plugins/ebpfnet.sock
	APISocket    string // /run/ebpfnet/ebpfnet.sock
	StateDir     string // /run/ebpfnet/state
	LibDir       string // /var/lib/ebpfnet
	PinDir       string // /sys/fs/bpf/ebpfnet
	HostDevice   string // ebpfnet_host
	// DriverName is the name Docker knows the plugin by (the socket's
	// name): networks with this driver or IPAM driver are ours.
	DriverName string
	// Reconcile asks Docker after start what it still knows and removes
	// our leftovers; tests that run without Docker turn it off.
	Reconcile bool
	// WatchDocker follows Docker's events to learn containers' labels.
	WatchDocker bool
	// External programs masquerade, --internal isolation and published
	// ports in iptables chains of the node (EBPFNET-*). Off in tests that
	// run beside a production daemon: the chains are node-wide.
	External        bool
	DefaultPools    []netip.Prefix
	DefaultPoolSize int
	// DefaultPools6 is where IPv6 networks without an IPv6 --subnet take a
	// /64 from (ipam.DefaultPoolRange6).
	DefaultPools6 []netip.Prefix
	Version       string
	// MetricsAddr is the host:port Prometheus metrics are served on, at
	// /metrics; empty turns them off.
	MetricsAddr string
	// CallBound is how long a Docker call may take before it is answered
	// with an error; 0 is DefaultCallBound.
	CallBound time.Duration
	// Cluster makes the node one of several (cluster.go); off by default.
	Cluster ClusterConfig
	// DockerHost is the dockerd whose events give containers' labels
	// (unix:///run/docker.sock); empty is DOCKER_HOST or the default.
	DockerHost string
	// UI is the service map's web page (ui.go); off by default.
	UI UIConfig
	// IdentityGrace is how long a label identity is kept once no endpoint
	// holds it, on a single node (identitygc.go) and in a cluster (on no
	// node); 0 is identity.DefaultGrace.
	IdentityGrace time.Duration
}

// identityGrace is Config.IdentityGrace with its default.
func (c Config) identityGrace() time.Duration {
	if c.IdentityGrace <= 0 {
		return identity.DefaultGrace
	}
	return c.IdentityGrace
}

// DefaultConfig returns the production paths.
func DefaultConfig(version string) Config {
	return Config{
		PluginSocket:    "/run/docker/plugins/ebpfnet.sock",
		APISocket:       api.DefaultSocket,
		StateDir:        "/run/ebpfnet/state",
		LibDir:          "/var/lib/ebpfnet",
		PinDir:          "/sys/fs/bpf/ebpfnet",
		HostDevice:      "ebpfnet_host",
		DriverName:      "ebpfnet",
		Reconcile:       true,
		WatchDocker:     true,
		External:        true,
		DefaultPools:    []netip.Prefix{netip.MustParsePrefix(ipam.DefaultPoolRange)},
		DefaultPoolSize: ipam.DefaultPoolPrefixLen,
		DefaultPools6:   []netip.Prefix{netip.MustParsePrefix(ipam.DefaultPoolRange6)},
		Version:         version,
	}
}

// Daemon is a running ebpfnet daemon.
type Daemon struct {
	cfg       Config
	log       logrus.FieldLogger
	startedAt time.Time
	datapath  *datapath.Datapath
	ipam      *ipam.Driver
	driver    *driver.Driver
	// identities numbers the rules' prefixes, and on a single node the
	// label sets too (labelIdentities).
	identities *identity.FileAllocator
	rules      endpoint.Rules
	ipcache    *ipcache.Cache
	// cluster is this node's part of a cluster; nil on a single node.
	cluster   *cluster.Node
	endpoints *endpoint.Manager
	external  *external.Manager
	monitor   *monitorBroker
	restored  int
	// startState is what we held before serving, for reconcileWithDocker.
	startState ownState
	reconciled atomic.Bool
	lock       *os.File
	// pending are the containers whose identity could not be allocated
	// yet (a new label set while the cluster's store is away).
	pending pendingContainers
	// metrics and metricsLn are set when Config.MetricsAddr is: the
	// listener is opened in start, so a bad address fails the start, and
	// served from serve.
	metrics   *metrics.Metrics
	metricsLn net.Listener

	// healing is what start rebuilt of the lib directory (heal.go).
	healing *healing
	// ui serves the service map (ui.go); nil when it is off.
	ui *serviceMap
}

// Run starts the daemon and serves until ctx is cancelled.
func Run(ctx context.Context, cfg Config, log logrus.FieldLogger) error {
	d, err := start(cfg, log)
	if err != nil {
		return err
	}
	defer d.close()
	return d.serve(ctx)
}

func start(cfg Config, log logrus.FieldLogger) (_ *Daemon, err error) {
	d := &Daemon{cfg: cfg, log: log, startedAt: time.Now()}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	for _, dir := range []string{cfg.StateDir, cfg.LibDir, filepath.Dir(cfg.APISocket), filepath.Dir(cfg.PluginSocket)} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create %s: %w", dir, err)
		}
	}
	if d.lock, err = lockExclusive(filepath.Join(filepath.Dir(cfg.APISocket), "daemon.lock")); err != nil {
		return nil, err
	}
	// Before anything slow: a typo in the address should not cost a
	// datapath start to find out.
	if cfg.MetricsAddr != "" {
		if d.metricsLn, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			return nil, fmt.Errorf("listen for Prometheus metrics on %q: %w", cfg.MetricsAddr, err)
		}
		// The source is read only at scrape time, and scrapes begin in
		// serve, once start has filled every field it reads.
		if d.metrics, err = metrics.New(daemonMetrics{d}); err != nil {
			return nil, err
		}
	}
	if d.ui, err = openServiceMap(d); err != nil {
		return nil, err
	}
	// A kill -9 during a write leaves a temporary file beside the state; the
	// state itself is intact (rename is atomic), so the temporary just goes.
	if err := atomicfile.CleanTemporaries(cfg.LibDir); err != nil {
		return nil, err
	}
	if err := ensureBPFFS(filepath.Dir(cfg.PinDir)); err != nil {
		return nil, err
	}
	// A managed plugin gets /proc/sys read-only; the sysctls we write
	// (rp_filter, route_localnet, ip_forward) are the host's own.
	if remounted, err := procsys.EnsureWritable(procsys.Path); err != nil {
		return nil, err
	} else if remounted {
		log.Info("remounted /proc/sys read-write in the plugin's mount namespace")
	}
	overlay, err := d.overlayConfig()
	if err != nil {
		return nil, err
	}
	d.datapath, err = datapath.New(datapath.Config{
		StateDir: cfg.StateDir, PinDir: cfg.PinDir, HostDevice: cfg.HostDevice, Version: cfg.Version, Overlay: overlay,
	}, log.WithField("subsys", "datapath"))
	if err != nil {
		return nil, fmt.Errorf("start datapath: %w", err)
	}
	if overlay == nil && cfg.Cluster.OverlayDevice == "" {
		// A node that left its cluster owns no tunnel.
		if err := datapath.RemoveOverlay(datapath.DefaultOverlayDevice); err != nil {
			log.WithError(err).Warn("remove the overlay device of an earlier cluster")
		}
	}
	// Corrupt or lost state files are rebuilt before their owners load
	// them (heal.go).
	if d.healing, err = d.healLibDir(); err != nil {
		return nil, err
	}
	if cfg.Cluster.Enabled() {
		if err := d.connectCluster(); err != nil {
			return nil, err
		}
	}
	d.ipam, err = ipam.New(ipam.Config{
		StatePath:       filepath.Join(cfg.LibDir, ipamFile),
		VolatilePath:    d.ipamLivePath(),
		DefaultPools:    cfg.DefaultPools,
		DefaultPoolSize: cfg.DefaultPoolSize,
		DefaultPools6:   cfg.DefaultPools6,
		HostRoutes:      ipam.HostRoutesNetlink,
		Logger:          log.WithField("subsys", "ipam"),
		Blocks:          d.blocks(),
	})
	if err != nil {
		return nil, fmt.Errorf("start IPAM: %w", err)
	}
	if d.identities, err = identity.NewFileAllocator(filepath.Join(cfg.LibDir, "identities.json")); err != nil {
		return nil, fmt.Errorf("load identities: %w", err)
	}
	if d.rules, err = d.loadRules(); err != nil {
		return nil, err
	}
	// Entries pinned by the last start stay until every source has put
	// its own back (endpoint restore below; in a cluster, the first
	// listing of the other nodes), so no address falls to the world or
	// loses its tunnel in between.
	sources := []ipcache.Source{ipcache.SourceLocalEndpoint, ipcache.SourceHost, ipcache.SourceCIDR}
	if d.cluster != nil {
		sources = append(sources, ipcache.SourceRemote)
	}
	d.ipcache, err = ipcache.New(d.datapath, log.WithField("subsys", "ipcache"), sources...)
	if err != nil {
		return nil, err
	}
	var publish endpoint.Publisher
	if d.cluster != nil {
		publish = d.cluster
	}
	d.endpoints, err = endpoint.New(endpoint.Config{
		Datapath:      d.datapath,
		IPCache:       d.ipcache,
		Identities:    d.labelIdentities(),
		CIDRs:         d.identities,
		Rules:         d.rules,
		NodeAddresses: nodeAddresses,
		Publish:       publish,
		Log:           log.WithField("subsys", "endpoint"),
	})
	if err != nil {
		return nil, err
	}
	d.endpoints.Start()
	d.driver, err = driver.New(filepath.Join(cfg.LibDir, "networks.json"), d.datapath, d.endpoints, log.WithField("subsys", "driver"))
	if err != nil {
		return nil, fmt.Errorf("start network driver: %w", err)
	}
	if overlay != nil {
		d.driver.SetMaxMTU(overlay.MTU())
	}
	if d.metrics != nil {
		d.driver.ObserveBuilds(d.metrics.ObserveEndpointBuild)
	}
	if cfg.External {
		ext, err := external.New(external.Config{
			StatePath:   filepath.Join(cfg.LibDir, "external.json"),
			Log:         log.WithField("subsys", "external"),
			ChainPrefix: chainPrefix(cfg.DriverName),
		})
		if err != nil {
			return nil, fmt.Errorf("start external connectivity: %w", err)
		}
		d.external = ext
		d.driver.SetExternal(ext)
	}
	d.monitor = newMonitorBroker(d.datapath, d.labelsOf, log.WithField("subsys", "monitor"))
	restored, err := d.datapath.Restore()
	if err != nil {
		return nil, fmt.Errorf("restore endpoints: %w", err)
	}
	d.restored = len(restored)
	if d.external != nil {
		if err := d.restoreExternal(); err != nil {
			return nil, err
		}
	}
	// Pinned maps kept the datapath's state; the manager makes it match
	// what is persisted now (rules may have been imported by another
	// version), with one regeneration once it has taken over.
	if err := d.endpoints.Restore(context.Background(), restored, endpointNetworks(d.driver.Networks())); err != nil {
		return nil, fmt.Errorf("restore endpoints' policy: %w", err)
	}
	d.driver.OnNetworks(func(ns []driver.Network) { d.endpoints.SetNetworks(endpointNetworks(ns)) })
	if d.cluster != nil {
		// The restored endpoints are published again: what the lease
		// still holds beyond them is a leftover of the last run.
		d.cluster.MarkRestored()
	}
	// The file kept numbers whose references lived in memory: those the
	// restored endpoints did not take again are kept for the grace from
	// now, and the collector started in serve frees them then
	// (identity.NewFileAllocator says why not at once). In a cluster the
	// label sets the file holds are an earlier single node's, which go
	// the same way.
	d.startState = d.snapshotOwnState()
	log.WithField("endpoints", d.restored).Info("endpoints restored")
	return d, nil
}

// serve answers Docker and the CLI until ctx ends, then waits for the calls
// in flight: a half-answered CreateEndpoint is worse than a slow stop.
func (d *Daemon) serve(ctx context.Context) error {
	var inflight sync.WaitGroup
	// Not the nil *metrics.Metrics itself: as an interface it would not
	// be nil, and route would call through it.
	var observe callObserver = noObserver{}
	if d.metrics != nil {
		observe = d.metrics
	}
	docker := newDockerAPI(d.driver, d.ipam, d.log.WithField("subsys", "docker-api"), &inflight, observe, d.cfg.CallBound)
	pluginLn, err := listenUnix(d.cfg.PluginSocket, 0o600)
	if err != nil {
		return err
	}
	apiLn, err := listenUnix(d.cfg.APISocket, 0o600)
	if err != nil {
		pluginLn.Close()
		return err
	}
	apiServer := &http.Server{Handler: conntrackRoutes(newLocalAPI(d), d.datapath), ReadHeaderTimeout: 10 * time.Second}

	errs := make(chan error, 3)
	go func() { errs <- docker.handler.Serve(pluginLn) }()
	go func() { errs <- apiServer.Serve(apiLn) }()
	var metricsServer *http.Server
	if d.metricsLn != nil {
		metricsServer = &http.Server{
			Handler:           d.metrics.Handler(d.log.WithField("subsys", "metrics")),
			ReadHeaderTimeout: 10 * time.Second,
		}
		go func() { errs <- metricsServer.Serve(d.metricsLn) }()
		d.log.WithField("url", "http://"+d.metricsLn.Addr().String()+metrics.Path).Info("serving Prometheus metrics")
	}
	d.log.WithFields(logrus.Fields{"plugin": d.cfg.PluginSocket, "api": d.cfg.APISocket}).Info("serving")
	reconcileCtx, stopReconcile := context.WithCancel(ctx)
	var background sync.WaitGroup
	background.Add(2)
	go func() {
		defer background.Done()
		if d.cfg.Reconcile && d.reconcileWithDocker(reconcileCtx, d.startState) {
			d.reconciled.Store(true)
		}
	}()
	go func() {
		defer background.Done()
		d.monitor.run(reconcileCtx)
	}()
	if d.ui != nil {
		background.Add(1)
		go func() { defer background.Done(); d.ui.run(reconcileCtx) }()
	}
	// Conntrack garbage collection and its metrics (conntrack.go).
	ctgc := datapath.NewCTGC(d.datapath, 0, d.log.WithField("subsys", "ctgc"))
	if d.metrics != nil {
		if err := d.metrics.AddConntrack(conntrackMetrics{ctgc}); err != nil {
			d.log.WithError(err).Warn("no conntrack metrics")
		}
	}
	background.Add(1)
	go func() {
		defer background.Done()
		ctgc.Run(reconcileCtx)
	}()
	// Identities nobody has held for the grace (identitygc.go).
	background.Add(1)
	go func() {
		defer background.Done()
		identityCollector{alloc: d.identities, grace: d.cfg.identityGrace(), log: d.log.WithField("subsys", "identity")}.run(reconcileCtx)
	}()
	if d.cluster != nil {
		background.Add(2)
		go func() {
			defer background.Done()
			d.watchRemote(reconcileCtx)
		}()
		go func() {
			defer background.Done()
			d.pending.retry(reconcileCtx, d.cluster, d.setContainer)
		}()
	}
	if d.cfg.WatchDocker {
		watcher, err := dockerwatch.New(d.log.WithField("subsys", "dockerwatch"), d.cfg.DockerHost)
		if err != nil {
			d.log.WithError(err).Warn("no Docker events: containers keep the init identity")
		} else {
			background.Add(1)
			go func() {
				defer background.Done()
				defer watcher.Close()
				watcher.Run(reconcileCtx, d.containerJoined)
			}()
		}
	}

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errs:
	}
	// Remove the plugin socket first so Docker stops sending new calls, then
	// let the calls in flight finish.
	pluginLn.Close()
	os.Remove(d.cfg.PluginSocket)
	stopReconcile()
	background.Wait()
	// Calls in flight finish within their own deadlines; one stuck in the
	// kernel must not keep the daemon from stopping for ever.
	if !waitAtMost(&inflight, shutdownWait) {
		d.log.WithField("waited", shutdownWait).Warn("stopping with Docker calls still running")
	}
	// Endpoints accepted by CreateEndpoint may still be being built
	// (driver/creations.go): a build is bounded like a call.
	if !d.driver.WaitBuilds(shutdownWait) {
		d.log.WithField("waited", shutdownWait).Warn("stopping with endpoints still being built")
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = apiServer.Shutdown(shutdownCtx)
	os.Remove(d.cfg.APISocket)
	// Metrics go last, so the stop itself can be watched; Shutdown closes
	// the listener, so the port is free once serve returns.
	if metricsServer != nil {
		_ = metricsServer.Shutdown(shutdownCtx)
	}
	d.log.Info("stopped; container datapaths stay in place")
	if serveErr != nil && !errors.Is(serveErr, net.ErrClosed) && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", serveErr)
	}
	return nil
}

// shutdownWait is how long a stop waits for Docker calls in flight: past
// every call's own deadlines (DefaultCallBound).
const shutdownWait = 30 * time.Second

// waitAtMost waits for wg for at most d and reports whether it ended.
func waitAtMost(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// chainPrefix names our iptables chains. The production daemon's are
// EBPFNET-*; a daemon serving another plugin name (a benchmark's, beside the
// production one) gets chains of its own, so that neither flushes or
// deletes the other's. A hash keeps any name within iptables' 28 characters.
func chainPrefix(driverName string) string {
	if driverName == "" || driverName == "ebpfnet" {
		return external.DefaultChainPrefix
	}
	sum := sha256.Sum256([]byte(driverName))
	return external.DefaultChainPrefix + "-" + hex.EncodeToString(sum[:3])
}

// restoreExternal rebuilds our iptables chains for the persisted networks
// and the endpoints that survived; published ports of endpoints that went
// while the daemon was down go with them.
func (d *Daemon) restoreExternal() error {
	alive := map[string]bool{}
	for _, ep := range d.datapath.Endpoints() {
		alive[ep.DockerEndpointID] = true
	}
	if err := d.external.Restore(d.driver.ExternalNetworks(), alive); err != nil {
		return fmt.Errorf("restore external connectivity: %w", err)
	}
	return nil
}

func (d *Daemon) close() {
	if d.metricsLn != nil {
		// Already closed when serve ran; this is for a failed start.
		_ = d.metricsLn.Close()
	}
	d.ui.close()
	if d.endpoints != nil {
		// A regeneration scheduled by a deletion may still be writing
		// policy maps and identities.json: finish it while the datapath
		// is open and the daemon lock held.
		d.endpoints.Close()
	}
	if d.cluster != nil {
		// The lease is kept: a restart within its TTL disturbs nothing.
		if err := d.cluster.Close(); err != nil {
			d.log.WithError(err).Warn("close the cluster client")
		}
	}
	if d.datapath != nil {
		if err := d.datapath.Close(); err != nil {
			d.log.WithError(err).Warn("close datapath")
		}
	}
	if d.lock != nil {
		d.lock.Close()
	}
}

// listenUnix replaces a stale socket file (left by a killed daemon) and
// listens with the given mode.
func listenUnix(path string, mode os.FileMode) (net.Listener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return ln, nil
}

// lockExclusive makes sure only one daemon owns the state: two would hand
// out the same addresses and endpoint IDs.
func lockExclusive(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another ebpfnet daemon holds %s: %w", path, err)
	}
	return f, nil
}

// ensureBPFFS mounts bpffs at dir unless it is already there, as Cilium
// does: pins must live on bpffs to outlive the daemon.
func ensureBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create bpffs mount point %s: %w", dir, err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", dir, err)
	}
	return nil
}

// daemonMetrics shows the daemon's state to the metrics package; every
// method reads it afresh, at scrape time.
type daemonMetrics struct{ d *Daemon }

// EndpointsByState counts endpoints. One exists in the datapath only once
// built, so it is ready, or waiting for its identity while its container's
// labels have not arrived (it is at init, denied as soon as rules exist).
func (m daemonMetrics) EndpointsByState() map[string]int {
	out := map[string]int{}
	for _, ep := range m.d.datapath.Endpoints() {
		out[endpointState(ep)]++
	}
	return out
}

// IdentitiesByType counts the identities policy knows, reserved included.
func (m daemonMetrics) IdentitiesByType() map[string]int {
	out := map[string]int{}
	for id := range m.d.endpoints.Registry().All() {
		switch id.Kind() {
		case identity.KindReserved:
			out[metrics.IdentityReserved]++
		case identity.KindAllocated:
			out[metrics.IdentityAllocated]++
		case identity.KindCIDR:
			out[metrics.IdentityCIDR]++
		default:
			out["invalid"]++
		}
	}
	return out
}

func (m daemonMetrics) PolicyRevision() uint64 {
	_, rev := m.d.rules.Snapshot()
	return rev
}

func (m daemonMetrics) Verdicts() ([]metrics.Verdict, error) {
	counters, err := m.d.datapath.Metrics()
	if err != nil {
		return nil, err
	}
	return verdictsOf(counters), nil
}

// verdictsOf names the datapath's counters as Cilium's metrics do (reason
// "Policy denied", direction "INGRESS") and says which counter each feeds.
// A packet's fate is counted once: forwarded to a peer, to the stack, or
// answered (ARP), or dropped. An audit is a verdict on a packet whose fate
// is counted as well. REASON_POLICY is only ever an event, never counted.
func verdictsOf(counters map[datapath.MetricKey]datapath.MetricValue) []metrics.Verdict {
	out := make([]metrics.Verdict, 0, len(counters))
	for k, v := range counters {
		var kind metrics.VerdictKind
		switch {
		case k.Reason.IsDrop():
			kind = metrics.Drop
		case k.Reason == datapath.ReasonForwarded, k.Reason == datapath.ReasonToStack, k.Reason == datapath.ReasonARPReply,
			k.Reason == datapath.ReasonToOverlay:
			kind = metrics.Forward
		case k.Reason == datapath.ReasonPolicyAudit:
			kind = metrics.Audit
		default:
			continue
		}
		out = append(out, metrics.Verdict{
			Kind:      kind,
			Reason:    k.Reason.String(),
			Direction: strings.ToUpper(k.Dir.String()),
			Packets:   v.Packets,
			Bytes:     v.Bytes,
		})
	}
	return out
}

// endpointNetworks is what the endpoint manager needs of the driver's
// networks: their gateways and policy options.
func endpointNetworks(ns []driver.Network) []endpoint.Network {
	out := make([]endpoint.Network, 0, len(ns))
	for _, n := range ns {
		gw, _ := netip.ParseAddr(n.Gateway)
		gw6, _ := netip.ParseAddr(n.Gateway6)
		out = append(out, endpoint.Network{ID: n.ID, Gateway: gw, Gateway6: gw6, Mode: n.PolicyMode(), Audit: n.PolicyAudit(), Unconfirmed: n.Rebuilt})
	}
	return out
}

// nodeAddresses lists the node's own IPv4 and IPv6 addresses, which the
// ipcache maps to the host identity. Link-local IPv6 addresses are left
// out: every veth has one, and nothing routes to them.
func nodeAddresses() ([]netip.Addr, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list node addresses: %w", err)
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ip.IsLinkLocalUnicast() {
			continue
		}
		out = append(out, ip.Unmap())
	}
	return out, nil
}

// labelsOf resolves an identity to its labels for display.
func (d *Daemon) labelsOf(id uint32) []string {
	if id == 0 {
		return []string{"reserved:all"}
	}
	ls, ok := d.endpoints.Registry().Lookup(identity.ID(id))
	if !ok {
		return []string{"unknown"}
	}
	var out []string
	for _, l := range ls.Sorted() {
		out = append(out, l.String())
	}
	return out
}

// loadRules is the policy repository: the cluster's, with its last rules
// kept in the lib directory, or the node's own policy.json.
func (d *Daemon) loadRules() (endpoint.Rules, error) {
	if d.cluster != nil {
		rules, err := d.cluster.Rules(filepath.Join(d.cfg.LibDir, clusterPolicyFile))
		if err != nil {
			return nil, fmt.Errorf("load the cluster's policy: %w", err)
		}
		return rules, nil
	}
	repo, err := policy.NewRepository(filepath.Join(d.cfg.LibDir, "policy.json"))
	if err != nil {
		return nil, fmt.Errorf("load policy: %w", err)
	}
	return repo, nil
}

// blocks is where the IPAM claims this node's share of each network: the
// cluster; nil on a single node.
func (d *Daemon) blocks() ipam.Blocks {
	if d.cluster == nil {
		return nil
	}
	return d.cluster
}
