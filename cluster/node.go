package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/ebpfnet/ebpfnet/atomicfile"
	"github.com/ebpfnet/ebpfnet/identity"
)

// Defaults of Config.
const (
	DefaultLeaseTTL  = 60 * time.Second
	DefaultBlockBits = 24
	// DefaultBlockBits6 is the prefix length of a node's block of an IPv6
	// cluster network: 65536 addresses, Cilium's default per-node IPv6
	// pool size (cluster-pool-ipv6-mask-size).
	DefaultBlockBits6     = 112
	DefaultIdentityGrace  = identity.DefaultGrace
	DefaultRemoteGrace    = 10 * time.Second
	DefaultRequestTimeout = 10 * time.Second
	// connectWait is how long a call that needs etcd waits for a node
	// that is not connected (just started, or reconnecting) before it
	// fails as unreachable.
	connectWait = 2 * time.Second
)

// Config is what a Node works with.
type Config struct {
	// Endpoints are etcd's client URLs (http://host:2379).
	Endpoints []string
	// NodeName names this node in every key it owns.
	NodeName string
	// NodeIP is the tunnel endpoint peers send to.
	NodeIP netip.Addr
	// LeaseTTL is the TTL of the node's lease, in whole seconds; 0 is
	// DefaultLeaseTTL. A node's leased keys outlive it by up to this.
	LeaseTTL time.Duration
	// StatePath is the file that keeps the lease ID (and the identity
	// cursor) across restarts, so that a quick restart reuses the lease
	// and changes nothing in etcd.
	StatePath string
	// IdentityCachePath, when set, keeps the last identities seen, so
	// that a daemon started while etcd is unreachable still knows them.
	IdentityCachePath string
	// BlockBits is the prefix length of a node's address block in a
	// cluster network; 0 is DefaultBlockBits. BlockBits6 is the same for
	// IPv6 networks; 0 is DefaultBlockBits6.
	BlockBits  int
	BlockBits6 int
	// IdentityGrace is how long an identity must have had no reference
	// on any node before it is freed; 0 is DefaultIdentityGrace.
	IdentityGrace time.Duration
	// RemoteGrace is how long another node's entries stay in the remote
	// view once its lease has expired; 0 is DefaultRemoteGrace.
	RemoteGrace time.Duration
	// RequestTimeout bounds the calls that take no context (the Rules
	// interface's); 0 is DefaultRequestTimeout.
	RequestTimeout time.Duration
	// Version is the daemon's version, shown in the node key.
	Version string
	Log     logrus.FieldLogger
}

func (c *Config) validate() error {
	if len(c.Endpoints) == 0 {
		return errors.New("cluster: no etcd endpoints given")
	}
	for _, e := range c.Endpoints {
		if strings.TrimSpace(e) == "" {
			return errors.New("cluster: an etcd endpoint is empty")
		}
	}
	if err := validNodeName(c.NodeName); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	if !c.NodeIP.IsValid() || !c.NodeIP.Is4() || c.NodeIP.IsUnspecified() {
		return fmt.Errorf("cluster: node IP %q must be a unicast IPv4 address", c.NodeIP)
	}
	if c.StatePath == "" {
		return errors.New("cluster: no state path given (where the lease ID is kept across restarts)")
	}
	if c.LeaseTTL < 0 || c.IdentityGrace < 0 || c.RemoteGrace < 0 || c.RequestTimeout < 0 {
		return errors.New("cluster: durations must not be negative")
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.LeaseTTL < 2*time.Second {
		return fmt.Errorf("cluster: lease TTL %s is below etcd's minimum of 2s", c.LeaseTTL)
	}
	if c.BlockBits == 0 {
		c.BlockBits = DefaultBlockBits
	}
	if c.BlockBits < 8 || c.BlockBits > 32 {
		return fmt.Errorf("cluster: block prefix length /%d must be within /8../32", c.BlockBits)
	}
	if c.BlockBits6 == 0 {
		c.BlockBits6 = DefaultBlockBits6
	}
	if c.BlockBits6 < 16 || c.BlockBits6 > 126 {
		return fmt.Errorf("cluster: IPv6 block prefix length /%d must be within /16../126", c.BlockBits6)
	}
	if c.IdentityGrace == 0 {
		c.IdentityGrace = DefaultIdentityGrace
	}
	if c.RemoteGrace == 0 {
		c.RemoteGrace = DefaultRemoteGrace
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.Log == nil {
		c.Log = logrus.New()
	}
	return nil
}

func (c *Config) leaseSeconds() int64 {
	return int64((c.LeaseTTL + time.Second - 1) / time.Second)
}

// ErrUnreachable is what errors.Is finds in every error of a call that
// could not reach etcd.
var ErrUnreachable = errors.New("etcd is unreachable")

// UnreachableError says which etcd could not be reached, and why.
type UnreachableError struct {
	Endpoints []string
	Err       error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("etcd at %s is unreachable: %v", strings.Join(e.Endpoints, ","), e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrUnreachable) true.
func (e *UnreachableError) Is(target error) bool { return target == ErrUnreachable }

// NameTakenError says that another live node holds this node's name.
// Two hosts under one name (cloned machines, a distribution's default
// hostname) would share the name's address blocks and hand out the same
// addresses twice, so the second one stays out of the cluster until the
// other is gone or it is renamed.
type NameTakenError struct {
	Name string
	// IP is the other node's node IP, from its node key.
	IP netip.Addr
}

func (e *NameTakenError) Error() string {
	return fmt.Sprintf("node name %q is in use by the live node at %s: start this daemon with another --node-name "+
		"(EBPFNET_NODE_NAME), or stop that node and wait for its lease to expire; until then this node stays out of the cluster",
		e.Name, e.IP)
}

// Status is the node's view of its link to etcd, for `ebpfnet status`.
type Status struct {
	Endpoints []string `json:"endpoints"`
	Connected bool     `json:"connected"`
	// Since is when Connected last changed.
	Since     time.Time `json:"since"`
	LastError string    `json:"lastError,omitempty"`
	LeaseID   int64     `json:"leaseID"`
	// Queued counts writes of the node's own keys not yet in etcd.
	Queued int `json:"queued"`
	// Writes and WatchEvents count etcd writes made and watch events
	// received since Connect (for benchmarks).
	Writes      uint64 `json:"writes"`
	WatchEvents uint64 `json:"watchEvents"`
	// Conflicts lists identities this node holds whose number went to
	// other labels while it was away; their endpoints need new labels.
	Conflicts []identity.ID `json:"conflicts,omitempty"`
}

// Node is this daemon's membership of the cluster: its lease, its keys,
// and every view of etcd the daemon needs. Its methods are safe for
// concurrent use.
type Node struct {
	cfg Config
	log logrus.FieldLogger
	cli *clientv3.Client

	ctx       context.Context // ends at Close
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error

	mu          sync.Mutex
	transportUp bool
	lease       clientv3.LeaseID // the lease in use, confirmed or not
	leaseOK     bool             // etcd confirmed the lease and keeps it alive
	connected   bool
	since       time.Time
	lastErr     error
	connCh      chan struct{} // closed while connected
	conflicts   map[identity.ID]bool

	stateMu sync.Mutex // serialises state file writes
	state   stateFile

	own        *ownKeys
	identities *Identities
	blockMu    sync.Mutex // one ClaimBlock/ReleaseBlock at a time on this node
	rulesMu    sync.Mutex
	rules      *Rules

	writes      atomic.Uint64
	watchEvents atomic.Uint64

	hooks testHooks
}

// testHooks let tests stop the node at a chosen point; nil in production.
type testHooks struct {
	beforeCollect atomic.Pointer[func(identity.ID)]
}

// stateFile is the persisted node state.
type stateFile struct {
	Version int    `json:"version"`
	Node    string `json:"node"`
	// LeaseID is the lease last granted; a restart reuses it while etcd
	// still has it.
	LeaseID int64 `json:"leaseID"`
	// Cursor is where the search for a free identity number starts.
	Cursor identity.ID `json:"cursor,omitempty"`
}

const stateVersion = 1

// Connect starts the node. It does not wait for etcd: an unreachable etcd
// is reported by Status and retried in the background, so the daemon
// starts and keeps its local endpoints. Only a bad configuration (or an
// unreadable state file) is an error.
func Connect(ctx context.Context, cfg Config) (*Node, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	st, err := readState(cfg.StatePath)
	if errors.Is(err, atomicfile.ErrCorrupt) {
		// It kept the lease ID only: a new lease takes its place, the
		// node's keys are written again under it, and the old
		// lease's go when it expires.
		moved, mvErr := atomicfile.MoveAside(cfg.StatePath, time.Now())
		if mvErr != nil {
			return nil, fmt.Errorf("%w; and moving it aside failed: %v", err, mvErr)
		}
		cfg.Log.WithError(err).WithField("movedTo", moved).Warn("cluster: node state moved aside; the node takes a new lease and writes its keys again")
		st, err = stateFile{}, nil
	}
	if err != nil {
		return nil, err
	}
	if st.Node != cfg.NodeName {
		// Another node's lease would keep that node's keys alive.
		st = stateFile{Cursor: st.Cursor}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		Logger:               zap.NewNop(),
		// gRPC's default reconnection backoff grows to two minutes:
		// a node would stay away that long after etcd came back.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 3 * time.Second,
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: etcd client for %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	bg, cancel := context.WithCancel(context.Background())
	n := &Node{
		cfg: cfg, log: cfg.Log.WithField("subsys", "cluster"), cli: cli,
		ctx: bg, cancel: cancel,
		lease:     clientv3.LeaseID(st.LeaseID),
		since:     time.Now(),
		lastErr:   errors.New("not connected yet"),
		connCh:    make(chan struct{}),
		conflicts: map[identity.ID]bool{},
		state:     st,
	}
	n.own = newOwnKeys(n)
	n.identities, err = newIdentities(n)
	if err != nil {
		cancel()
		_ = cli.Close()
		return nil, err
	}
	n.putNodeKey()
	n.goRun(n.watchTransport)
	n.goRun(n.runSession)
	n.goRun(n.own.run)
	n.goRun(n.heartbeat)
	n.goRun(n.identities.watch)
	n.goRun(n.identities.collect)
	return n, nil
}

func (n *Node) goRun(fn func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		fn()
	}()
}

func readState(path string) (stateFile, error) {
	var st stateFile
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("cluster: read node state: %w", err)
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return st, atomicfile.Corrupt(fmt.Errorf("cluster: node state %s is corrupt: %w", path, err))
	}
	if st.Version != stateVersion {
		return st, atomicfile.Corrupt(fmt.Errorf("cluster: node state %s is corrupt: version %d, want %d", path, st.Version, stateVersion))
	}
	return st, nil
}

// saveState changes the persisted state with fn and writes it.
func (n *Node) saveState(fn func(*stateFile)) error {
	n.stateMu.Lock()
	defer n.stateMu.Unlock()
	next := n.state
	fn(&next)
	next.Version, next.Node = stateVersion, n.cfg.NodeName
	data, err := json.MarshalIndent(next, "", "  ")
	if err != nil {
		return fmt.Errorf("encode node state: %w", err)
	}
	if err := atomicfile.Write(n.cfg.StatePath, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("persist node state: %w", err)
	}
	n.state = next
	return nil
}

// Close stops the node's work and its client. It does not revoke the
// lease: a daemon restarted within the TTL takes it back, and its keys
// never go away meanwhile.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.cancel()
		n.wg.Wait()
		n.closeErr = n.cli.Close()
	})
	return n.closeErr
}

// Name is the node's name.
func (n *Node) Name() string { return n.cfg.NodeName }

// Status reports the link to etcd.
func (n *Node) Status() Status {
	n.mu.Lock()
	st := Status{
		Endpoints: append([]string(nil), n.cfg.Endpoints...),
		Connected: n.connected,
		Since:     n.since,
		LeaseID:   int64(n.lease),
	}
	if n.lastErr != nil && !n.connected {
		st.LastError = n.lastErr.Error()
	}
	for id := range n.conflicts {
		st.Conflicts = append(st.Conflicts, id)
	}
	n.mu.Unlock()
	slices.Sort(st.Conflicts)
	st.Queued = n.own.queued()
	st.Writes = n.writes.Load()
	st.WatchEvents = n.watchEvents.Load()
	return st
}

// Connected returns a channel that is closed while the node is connected
// (etcd answers and the node's lease is alive); after a disconnection a
// new call returns a new channel. The daemon uses it to retry what failed
// for want of etcd (a container waiting for a new identity).
func (n *Node) Connected() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.connCh
}

// WaitConnected waits until the node is connected or ctx ends.
func (n *Node) WaitConnected(ctx context.Context) error {
	select {
	case <-n.Connected():
		return nil
	case <-ctx.Done():
		return n.unreachable(ctx.Err())
	}
}

func (n *Node) isConnected() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.connected
}

// currentLease returns the lease the node's keys are bound to, if etcd
// has confirmed it.
func (n *Node) currentLease() (clientv3.LeaseID, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.lease, n.leaseOK && n.connected
}

// update changes the link state under n.mu and recomputes connected.
func (n *Node) update(fn func()) {
	n.mu.Lock()
	fn()
	now := n.transportUp && n.leaseOK
	changed := now != n.connected
	if changed {
		n.connected = now
		n.since = time.Now()
		if now {
			close(n.connCh)
		} else {
			n.connCh = make(chan struct{})
		}
	}
	lastErr := n.lastErr
	n.mu.Unlock()
	if !changed {
		return
	}
	if now {
		n.log.WithField("lease", fmt.Sprintf("%x", n.lease)).Info("connected to etcd")
		n.own.kick()
	} else {
		n.log.WithError(lastErr).Warn("etcd is unreachable; own writes are queued until it is back")
	}
}

// noteErr records why etcd could not be used.
func (n *Node) noteErr(err error) {
	n.mu.Lock()
	n.lastErr = err
	n.mu.Unlock()
}

func (n *Node) unreachable(err error) error {
	if errors.Is(err, ErrUnreachable) {
		return err
	}
	return &UnreachableError{Endpoints: n.cfg.Endpoints, Err: err}
}

// ready returns nil when the node is connected, waiting up to
// connectWait (within ctx) for one that is not, and an UnreachableError
// otherwise.
func (n *Node) ready(ctx context.Context) error {
	if n.isConnected() {
		return nil
	}
	t := time.NewTimer(connectWait)
	defer t.Stop()
	select {
	case <-n.Connected():
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	n.mu.Lock()
	err := n.lastErr
	n.mu.Unlock()
	if taken := (*NameTakenError)(nil); errors.As(err, &taken) {
		return err
	}
	return n.unreachable(err)
}

// etcdErr turns an error of an etcd call into the error the caller gets:
// unreachable when etcd did not answer.
func (n *Node) etcdErr(what string, err error) error {
	if unavailable(err) {
		n.noteErr(err)
		return fmt.Errorf("%s: %w", what, n.unreachable(err))
	}
	return fmt.Errorf("%s: %w", what, err)
}

// unavailable tells an error of a call etcd did not answer.
func unavailable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || errors.Is(err, ErrUnreachable) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return true
	}
	return errors.Is(err, rpctypes.ErrNoLeader) || errors.Is(err, rpctypes.ErrTimeout)
}

// watchTransport follows the gRPC connection: a stopped or unreachable
// etcd shows here at once, long before a lease would time out.
func (n *Node) watchTransport() {
	conn := n.cli.ActiveConnection()
	for {
		s := conn.GetState()
		up := s == connectivity.Ready
		n.update(func() {
			n.transportUp = up
			if !up {
				n.lastErr = fmt.Errorf("connection %s", strings.ToLower(s.String()))
			}
		})
		if s == connectivity.Idle {
			conn.Connect()
		}
		if !conn.WaitForStateChange(n.ctx, s) {
			return
		}
	}
}

// runSession keeps the node's lease: the persisted one while etcd still
// has it, else a new one, kept alive until it is lost, and then again.
func (n *Node) runSession() {
	first := true
	delay := newBackoff()
	for n.ctx.Err() == nil {
		id, err := n.obtainLease(first)
		if err != nil {
			n.noteErr(err)
			n.log.WithError(err).Debug("obtain the node's lease")
			delay.sleep(n.ctx)
			continue
		}
		first = false
		if err := n.checkName(id); err != nil {
			n.noteNameErr(err)
			delay.sleep(n.ctx)
			continue
		}
		ka, err := n.cli.KeepAlive(n.ctx, id)
		if err != nil {
			n.noteErr(err)
			delay.sleep(n.ctx)
			continue
		}
		delay.reset()
		n.update(func() { n.lease, n.leaseOK = id, true })
		for range ka {
			// Each answer renews the lease; nothing else to do.
		}
		if n.ctx.Err() != nil {
			return
		}
		// Closed: etcd said the lease is gone, or did not answer for
		// a whole TTL. The next obtainLease tells which.
		n.update(func() {
			n.leaseOK = false
			n.lastErr = fmt.Errorf("lease %x: keepalive stopped", id)
		})
	}
}

// obtainLease returns the lease to use: the current one while etcd still
// has it (at start, the one a previous run left, whose keys are adopted),
// else a new one, persisted before use.
func (n *Node) obtainLease(first bool) (clientv3.LeaseID, error) {
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.RequestTimeout)
	defer cancel()
	n.mu.Lock()
	cur := n.lease
	n.mu.Unlock()
	if cur != clientv3.NoLease {
		var opts []clientv3.LeaseOption
		if first {
			opts = append(opts, clientv3.WithAttachedKeys())
		}
		resp, err := n.cli.TimeToLive(ctx, cur, opts...)
		switch {
		case err == nil && resp.TTL > 0:
			if first {
				keys := make([]string, 0, len(resp.Keys))
				for _, k := range resp.Keys {
					keys = append(keys, string(k))
				}
				n.own.adopt(cur, keys)
				n.log.WithFields(logrus.Fields{"lease": fmt.Sprintf("%x", cur), "keys": len(keys)}).Info("reusing the node's lease")
			}
			return cur, nil
		case err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound):
			return 0, fmt.Errorf("look up lease %x: %w", cur, err)
		}
		n.log.WithField("lease", fmt.Sprintf("%x", cur)).Warn("the node's lease is gone; granting a new one and re-creating the node's keys")
	}
	resp, err := n.cli.Grant(ctx, n.cfg.leaseSeconds())
	if err != nil {
		return 0, fmt.Errorf("grant a lease: %w", err)
	}
	if err := n.saveState(func(s *stateFile) { s.LeaseID = int64(resp.ID) }); err != nil {
		// The lease works; only a restart would not find it. Say so.
		n.log.WithError(err).Warn("keep the lease ID for the next start")
	}
	n.writes.Add(1)
	n.update(func() { n.lease = resp.ID })
	return resp.ID, nil
}

// checkName returns a NameTakenError while the node key of this node's
// name is bound to another lease that etcd still keeps, and names another
// node IP. The same node IP is this host's own previous run, whose state
// file (and so its lease ID) was lost: its keys go when that lease
// expires, and this node's keys take their place meanwhile.
func (n *Node) checkName(lease clientv3.LeaseID) error {
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.RequestTimeout)
	defer cancel()
	resp, err := n.cli.Get(ctx, nodeKey(n.cfg.NodeName))
	if err != nil {
		return fmt.Errorf("read the node key of %q: %w", n.cfg.NodeName, err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	kv := resp.Kvs[0]
	holder := clientv3.LeaseID(kv.Lease)
	var v nodeValue
	if holder == lease || holder == clientv3.NoLease || json.Unmarshal(kv.Value, &v) != nil || v.IP == n.cfg.NodeIP {
		return nil
	}
	ttl, err := n.cli.TimeToLive(ctx, holder)
	if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("look up lease %x of node %q: %w", holder, n.cfg.NodeName, err)
	}
	if err != nil || ttl.TTL <= 0 {
		return nil
	}
	return &NameTakenError{Name: n.cfg.NodeName, IP: v.IP}
}

// noteNameErr records an error of checkName, and logs a taken name once
// for as long as it stays taken: the session retries every few seconds.
func (n *Node) noteNameErr(err error) {
	var taken, wasTaken *NameTakenError
	isTaken := errors.As(err, &taken)
	n.mu.Lock()
	repeated := isTaken && errors.As(n.lastErr, &wasTaken) && *wasTaken == *taken
	n.lastErr = err
	n.mu.Unlock()
	switch {
	case !isTaken:
		n.log.WithError(err).Debug("check the node's name")
	case !repeated:
		n.log.WithError(err).Error("another node holds this node's name")
	}
}

// heartbeat rewrites the node key every third of the TTL.
func (n *Node) heartbeat() {
	t := time.NewTicker(n.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
			n.putNodeKey()
		}
	}
}

func (n *Node) putNodeKey() {
	n.own.put(nodeKey(n.cfg.NodeName), mustJSON(nodeValue{
		Name: n.cfg.NodeName, IP: n.cfg.NodeIP,
		Heartbeat: time.Now().UTC().Format(time.RFC3339Nano), Version: n.cfg.Version,
	}), nil)
}

// MarkRestored tells the node that the daemon has published again what
// it restored (endpoints, identity references). Keys that a previous run
// left on the reused lease and that were not claimed again are deleted
// from then on. Until it is called none are, so a restart changes nothing
// in etcd for what it keeps.
func (n *Node) MarkRestored() { n.own.markRestored() }

// backoff waits longer after each failure, up to a few seconds.
type backoff struct{ d time.Duration }

func newBackoff() *backoff { return &backoff{d: 100 * time.Millisecond} }

func (b *backoff) reset() { b.d = 100 * time.Millisecond }

func (b *backoff) sleep(ctx context.Context) {
	t := time.NewTimer(b.d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	if b.d *= 2; b.d > 3*time.Second {
		b.d = 3 * time.Second
	}
}
