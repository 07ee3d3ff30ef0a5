package datapath

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/atomicfile"
	"github.com/ebpfnet/ebpfnet/bpf"
	"github.com/ebpfnet/ebpfnet/policy"
)

// File names inside an endpoint's state directory and the pin directory.
const (
	EPConfigFile = "ep_config.h"
	ObjectFile   = "bpf_lxc.o"
	TemplatesDir = "templates"
	// legacyLinksDir held pinned TCX links before endpoints moved to tc
	// filters; Restore removes what an older version left there.
	legacyLinksDir = "links"
	progFrom       = "from_container"
	progTo         = "to_container"
	progPolicy     = "handle_policy"
	// progFromOverlay is the node program on the overlay device.
	progFromOverlay = "node_from_overlay"
	fileMode        = 0o644
	dirMode         = 0o755
	pinDirMode      = 0o700
	// policyMapKName is the template's declaration of the per-endpoint
	// policy map and its kernel object name; pins carry the epid.
	policyMapKName = "ebpfnet_policy"
	// netlinkTimeout bounds a netlink request on the datapath's own
	// socket, as vishvananda/netlink bounds its per-request ones.
	netlinkTimeout = 60 * time.Second
)

// disposableMaps are the shared maps whose contents may be lost when an
// upgrade changes their layout: counters, which Prometheus takes as a reset.
var disposableMaps = map[string]bool{MetricsMapName: true}

// Datapath owns the kernel side of every endpoint on the node. All methods
// are safe for concurrent use.
type Datapath struct {
	mu     sync.Mutex
	cfg    Config
	log    logrus.FieldLogger
	tmpl   *template
	shared map[string]*ebpf.Map // pinned maps every endpoint program uses
	// nodeMaps are the pinned maps only the node programs use: the
	// IPv6 ones (maps6.go).
	nodeMaps map[string]*ebpf.Map
	policy   *ebpf.MapSpec // shape of a per-endpoint policy map
	btf      *btf.Cache    // kernel BTF, decoded once for all loads
	eps      map[uint16]*endpointState
	closed   bool
	// overlayIfindex is the overlay device's, 0 without one.
	overlayIfindex int
	// stopEvents ends the running ReadEvents, if any (one reader only).
	stopEvents func()
	// ctLegacy is the conntrack table of an earlier layout while its
	// flows are being carried over (ctupgrade.go), else nil.
	ctLegacy *ebpf.Map
	// failAfter is a test hook: a test sets it on its own Datapath to
	// fail CreateEndpoint after a step (see after). nil in production.
	failAfter func(createStep) error
	// deleting holds the host veths DeleteEndpoint is deleting in the
	// background, by name; each channel is closed once its veth and
	// state directory are gone. delWG counts them for Close.
	delMu    sync.Mutex
	deleting map[string]chan struct{}
	delWG    sync.WaitGroup
	// nl is the netlink socket endpoint creation and deletion send
	// their requests on, opened once: a socket per request (the
	// package-level functions) took half of each request's 35 us. The
	// background veth deletions keep sockets of their own, so that no
	// creation waits behind a slow LinkDel on this one.
	nl *netlink.Handle
	// spares are empty policy maps made ahead of CreateEndpoint; veths
	// are veth pairs made ahead of it (vethspares.go).
	spares *policyMapSpares
	veths  *vethSpares
}

// endpointState is what the datapath holds for one live endpoint. Its
// programs are held by the tc filters on its veth and by
// ebpfnet_policy_lookups, not by the daemon.
type endpointState struct {
	ep     Endpoint
	policy *ebpf.Map
	// flags and entries are what the endpoint's ebpfnet_endpoints entry
	// and policy map hold, so ApplyPolicy writes only the difference
	// without reading the map back. Restore rebuilds them from the maps.
	flags   uint32
	entries map[policy.Key]struct{}
}

// snapshot is the endpoint as callers see it, with its policy state.
func (st *endpointState) snapshot() Endpoint {
	c := cloneEndpoint(&st.ep)
	c.PolicyFlags = st.flags
	c.PolicyEntries = len(st.entries)
	return c
}

// New prepares the datapath: directories, the template directory, the
// shared pinned maps (opened if pinned, created and pinned otherwise) and
// the node programs in ebpfnet_calls. It mounts nothing: bpffs must already
// be mounted at PinDir's parent.
func New(cfg Config, log logrus.FieldLogger) (*Datapath, error) {
	if cfg.StateDir == "" || cfg.PinDir == "" || cfg.HostDevice == "" {
		return nil, fmt.Errorf("datapath config needs StateDir, PinDir and HostDevice: %+v", cfg)
	}
	if log == nil {
		l := logrus.New()
		l.SetOutput(os.Stderr)
		log = l
	}
	for _, d := range []string{cfg.StateDir, filepath.Join(cfg.StateDir, TemplatesDir)} {
		if err := os.MkdirAll(d, dirMode); err != nil {
			return nil, fmt.Errorf("create state directory %s: %w", d, err)
		}
	}
	if err := os.MkdirAll(cfg.PinDir, pinDirMode); err != nil {
		return nil, fmt.Errorf("create pin directory %s (is bpffs mounted?): %w", cfg.PinDir, err)
	}
	if err := atomicfile.CleanTemporaries(cfg.StateDir); err != nil {
		return nil, fmt.Errorf("clean state directory: %w", err)
	}
	tmpl, err := parseTemplate(bpf.LXCTemplate)
	if err != nil {
		return nil, err
	}
	d := &Datapath{cfg: cfg, log: log, tmpl: tmpl, shared: map[string]*ebpf.Map{}, nodeMaps: map[string]*ebpf.Map{},
		btf: btf.NewCache(), eps: map[uint16]*endpointState{}, deleting: map[string]chan struct{}{}}
	if err := d.writeTemplate(); err != nil {
		return nil, err
	}
	spec := tmpl.spec
	for _, name := range sharedMapNames() {
		ms := spec.Maps[name]
		if ms == nil {
			d.closeMaps()
			return nil, fmt.Errorf("template lacks map %s", name)
		}
		var m *ebpf.Map
		var err error
		if name == CTMapName {
			m, err = d.openConntrack(ms)
		} else {
			m, err = ebpf.NewMapWithOptions(ms, ebpf.MapOptions{PinPath: cfg.PinDir})
		}
		if errors.Is(err, ebpf.ErrMapIncompatible) && disposableMaps[name] {
			// Pinned by an older version with another layout. The
			// programs still attached keep the old map until Restore
			// reloads them; a new one takes over the pin.
			log.WithField("map", name).Warn("pinned map has an older layout, replacing it")
			if err = removePin(filepath.Join(cfg.PinDir, name)); err == nil {
				m, err = ebpf.NewMapWithOptions(ms, ebpf.MapOptions{PinPath: cfg.PinDir})
			}
		}
		if err != nil {
			d.closeMaps()
			return nil, fmt.Errorf("open or create pinned map %s in %s: %w", name, cfg.PinDir, err)
		}
		d.shared[name] = m
	}
	pol := spec.Maps[policyMapKName]
	if pol == nil || pol.Pinning != ebpf.PinNone {
		d.closeMaps()
		return nil, fmt.Errorf("template lacks the unpinned per-endpoint map %s", policyMapKName)
	}
	d.policy = pol.Copy()
	d.spares = newPolicyMapSpares(d.policy, policyMapSparesWanted, log)
	nodeSpec, err := nodeObjectSpec()
	if err != nil {
		d.closeMaps()
		return nil, err
	}
	if err := d.openNodeMaps(nodeSpec); err != nil {
		d.closeMaps()
		return nil, err
	}
	if cfg.Overlay != nil {
		if d.overlayIfindex, err = ensureOverlayDevice(*cfg.Overlay); err != nil {
			d.closeMaps()
			return nil, err
		}
	}
	if err := d.loadNodePrograms(nodeSpec); err != nil {
		d.closeMaps()
		return nil, err
	}
	// The node programs of an earlier version are gone now; what they
	// recorded until then is carried over (ctupgrade.go).
	d.copyLegacyConntrack(false)
	if d.nl, err = newNetlinkHandle(); err != nil {
		d.closeMaps()
		return nil, err
	}
	d.veths = newVethSpares(cfg.StateDir, vethSparesWanted, log)
	d.veths.sweep()
	d.spares.refill()
	d.veths.refill()
	return d, nil
}

// writeTemplate keeps a copy of the template in the templates directory,
// keyed by its hash, as Cilium does, with an ep_config.h describing the
// all-zero constants. Both live in StateDir, written as the endpoints'
// files are (writeStateFile: atomic, no fsync).
func (d *Datapath) writeTemplate() error {
	dir := filepath.Join(d.cfg.StateDir, TemplatesDir, d.tmpl.sha)
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return fmt.Errorf("create template directory: %w", err)
	}
	if err := atomicfile.CleanTemporaries(dir); err != nil {
		return fmt.Errorf("clean template directory: %w", err)
	}
	obj := filepath.Join(dir, ObjectFile)
	if cur, err := os.ReadFile(obj); err != nil || !bytes.Equal(cur, d.tmpl.raw) {
		if err := writeStateFile(obj, d.tmpl.raw); err != nil {
			return fmt.Errorf("write template object: %w", err)
		}
	}
	hdr, err := WriteEPConfig(d.cfg.Version, &Endpoint{})
	if err != nil {
		return err
	}
	if err := writeStateFile(filepath.Join(dir, EPConfigFile), hdr); err != nil {
		return fmt.Errorf("write template header: %w", err)
	}
	return nil
}

func (d *Datapath) closeMaps() {
	for _, m := range d.shared {
		_ = m.Close()
	}
	for _, m := range d.nodeMaps {
		_ = m.Close()
	}
	if d.ctLegacy != nil {
		_ = d.ctLegacy.Close()
		d.ctLegacy = nil
	}
	if d.eps != nil {
		for _, st := range d.eps {
			st.close()
		}
	}
}

func (st *endpointState) close() {
	if st.policy != nil {
		_ = st.policy.Close()
		st.policy = nil
	}
}

// Close releases every file descriptor and keeps every pin; the programs
// stay attached to their veths (tc filters) and keep running without the
// daemon.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	// Veths of deleted endpoints go before the daemon does; Restore
	// would finish them, but a clean stop leaves nothing to finish.
	d.delWG.Wait()
	if d.stopEvents != nil {
		d.stopEvents()
	}
	d.closeMaps()
	d.spares.close()
	d.veths.close()
	d.nl.Close()
	d.eps = map[uint16]*endpointState{}
	return nil
}

// newNetlinkHandle opens a route netlink socket in the current network
// namespace, with the timeouts the package-level functions use, so that a
// kernel that never answers cannot hold a call forever.
func newNetlinkHandle() (*netlink.Handle, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink socket: %w", err)
	}
	if err := h.SetSocketTimeout(netlinkTimeout); err != nil {
		h.Close()
		return nil, fmt.Errorf("set netlink socket timeout: %w", err)
	}
	return h, nil
}

// Metrics sums ebpfnet_metrics over CPUs: packets and bytes per verdict
// reason and direction, for every endpoint of the node.
func (d *Datapath) Metrics() (map[MetricKey]MetricValue, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errors.New("datapath closed")
	}
	return readMetrics(d.shared[MetricsMapName])
}

// Endpoint returns the endpoint Docker knows by dockerEndpointID.
func (d *Datapath) Endpoint(dockerEndpointID string) (Endpoint, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if st := d.byDockerID(dockerEndpointID); st != nil {
		return st.snapshot(), true
	}
	return Endpoint{}, false
}

// EndpointByID returns the endpoint with node-local ID id.
func (d *Datapath) EndpointByID(id uint16) (Endpoint, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if st, ok := d.eps[id]; ok {
		return st.snapshot(), true
	}
	return Endpoint{}, false
}

// Endpoints lists every endpoint, sorted by ID.
func (d *Datapath) Endpoints() []Endpoint {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.snapshots()
}

// snapshots lists every endpoint, sorted by ID; d.mu is held.
func (d *Datapath) snapshots() []Endpoint {
	out := make([]Endpoint, 0, len(d.eps))
	for _, st := range d.eps {
		out = append(out, st.snapshot())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (d *Datapath) byDockerID(id string) *endpointState {
	for _, st := range d.eps {
		if st.ep.DockerEndpointID == id {
			return st
		}
	}
	return nil
}

// cloneEndpoint copies the parts a caller could mutate behind our back.
func cloneEndpoint(ep *Endpoint) Endpoint {
	c := *ep
	c.LXCMAC = append(HardwareAddr(nil), ep.LXCMAC...)
	c.NodeMAC = append(HardwareAddr(nil), ep.NodeMAC...)
	c.InitialPolicy = nil // consumed by CreateEndpoint, never handed out
	if ep.Labels != nil {
		c.Labels = make(map[string]string, len(ep.Labels))
		for k, v := range ep.Labels {
			c.Labels[k] = v
		}
	}
	return c
}

// Paths of one endpoint's files and pins.
func (d *Datapath) epDir(id uint16) string {
	return filepath.Join(d.cfg.StateDir, strconv.Itoa(int(id)))
}

func (d *Datapath) policyPin(id uint16) string {
	return filepath.Join(d.cfg.PinDir, PolicyMapName(id))
}

// claimEndpointID takes the lowest epid that is neither live nor held by a
// state directory, by creating that directory: the directory is the claim.
// A leftover directory (an endpoint Restore could not deal with, or one
// whose veth is still being deleted) makes Mkdir fail, and the next number
// is tried, so no epid is reused before its directory is gone. Listing the
// state directory instead cost every creation time in proportion to the
// endpoints on the node. d.mu is held.
func (d *Datapath) claimEndpointID() (uint16, error) {
	for n := 1; n <= MaxEndpointID; n++ {
		id := uint16(n)
		if _, live := d.eps[id]; live {
			continue
		}
		err := os.Mkdir(d.epDir(id), dirMode)
		if err == nil {
			return id, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return 0, fmt.Errorf("create endpoint directory: %w", err)
		}
	}
	return 0, ErrNoFreeEndpointID
}

// stateDirIDs lists the numeric directories of StateDir.
func (d *Datapath) stateDirIDs() ([]uint16, error) {
	entries, err := os.ReadDir(d.cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("list state directory: %w", err)
	}
	var ids []uint16
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		n, err := strconv.ParseUint(e.Name(), 10, 16)
		if err != nil || n == 0 {
			continue
		}
		ids = append(ids, uint16(n))
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids, nil
}
