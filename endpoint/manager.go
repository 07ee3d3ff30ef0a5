// Package endpoint owns what happens to an endpoint after Docker's driver
// call has been translated: its creation under the policy in force, its
// identity once its container's labels are known, the regeneration of
// every endpoint's policy when rules, identities or networks change, and
// its deletion. One goroutine does all of it, in the order things
// happened, as Cilium's endpoint build queue does; everyone else only
// queues events and, where they need an answer, waits for it. So nothing
// runs under another package's lock, no regeneration can miss an endpoint
// created meanwhile, and no identity number freed by one event can be
// handed to another endpoint before every policy map has forgotten it.
package endpoint

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/datapath"
	"github.com/ebpfnet/ebpfnet/identity"
	"github.com/ebpfnet/ebpfnet/ipcache"
	"github.com/ebpfnet/ebpfnet/labels"
	"github.com/ebpfnet/ebpfnet/policy"
)

// Datapath is the kernel side of endpoints. *datapath.Datapath implements
// it; unit tests use a fake.
type Datapath interface {
	CreateEndpoint(*datapath.Endpoint) error
	DeleteEndpoint(dockerEndpointID string) error
	Endpoint(dockerEndpointID string) (datapath.Endpoint, bool)
	Endpoints() []datapath.Endpoint
	SetEndpointIdentity(id uint16, identity uint32, containerID, containerName string, labels map[string]string) error
	ApplyPolicy(id uint16, p policy.EndpointPolicy) (added, removed int, err error)
}

// IPCache is where the manager puts the addresses it knows: local
// endpoints, the node's own addresses and gateways, the prefixes rules
// name. *ipcache.Cache implements it.
type IPCache interface {
	Upsert(netip.Prefix, ipcache.Source, ipcache.Entry) error
	Delete(netip.Prefix, ipcache.Source) error
	Replace(ipcache.Source, map[netip.Prefix]ipcache.Entry) error
	MarkSynced(ipcache.Source) error
}

// Rules is the policy repository: a file on one node, etcd in a cluster.
// *policy.Repository implements it.
type Rules interface {
	Snapshot() ([]policy.Rule, uint64)
	Import([]policy.Rule) (uint64, error)
	DeleteAll() (uint64, error)
	Subscribe(func(revision uint64)) (cancel func())
}

// Publisher tells the other nodes of a cluster which addresses are this
// node's endpoints, and under which identity. *cluster.Node implements it;
// nil on a single node. Neither call may block: the manager's loop makes
// them.
type Publisher interface {
	PublishEndpoint(ip netip.Addr, id identity.ID) error
	WithdrawEndpoint(ip netip.Addr)
}

// Network is what policy needs of a Docker network.
type Network struct {
	ID string
	// Gateway and Gateway6 are the host's addresses on the network, of
	// the families it has (host identity in the ipcache).
	Gateway  netip.Addr
	Gateway6 netip.Addr
	// Mode is the network's enforcement mode (-o ebpfnet.policy-enforcement).
	Mode policy.Mode
	// Audit reports denials without dropping (-o ebpfnet.policy-audit).
	Audit bool
	// Unconfirmed says that the network's options are not known: its
	// record was rebuilt from the endpoints' and Docker has not been asked
	// yet. Its endpoints keep the policy they have, new ones deny all,
	// until it comes again confirmed.
	Unconfirmed bool
}

// LostRules is implemented by a Rules that can have lost the rules in
// force (policy.Repository, whose file may be corrupt or gone). While
// Lost says so, the manager keeps the policy of every endpoint it
// restored as the pinned maps hold it, denies every new endpoint both
// ways, and keeps the CIDR identities it found; compiled policy cannot be
// turned back into rules, and compiling no rules would open everything.
// The next revision of the rules (an import, a delete of all) ends it.
type LostRules interface {
	Lost() (why string, lost bool)
}

// Container is what the manager learns of the container behind an
// endpoint, from Docker's events.
type Container struct {
	ID     string
	Name   string
	Labels map[string]string
}

// Config is what a Manager works with.
type Config struct {
	Datapath   Datapath
	IPCache    IPCache
	Identities identity.Allocator
	CIDRs      identity.CIDRAllocator
	Rules      Rules
	// NodeAddresses lists the node's own addresses, which the ipcache
	// maps to the host identity; nil means none.
	NodeAddresses func() ([]netip.Addr, error)
	// Publish, in a cluster, learns every local endpoint's address and
	// identity; nil on a single node.
	Publish Publisher
	Log     logrus.FieldLogger
}

// ErrStopped answers calls made once the manager has been closed.
var ErrStopped = errors.New("the endpoint manager has stopped (daemon shutting down)")

// Manager runs the event loop. Its methods are safe for concurrent use.
type Manager struct {
	cfg      Config
	log      logrus.FieldLogger
	registry identity.Registry
	q        *queue
	done     chan struct{}
	unsub    []func()
	started  bool
	// regenerations counts full regenerations, for tests and the log.
	regenerations atomic.Uint64

	// heldMu guards held, the loop's record of the identity reference
	// each endpoint holds (by epid), which SetContainer reads to skip
	// what is already done without waiting for the loop.
	heldMu sync.Mutex
	held   map[uint16]identity.ID

	// renumbering counts the renumbers the loop started (renumber); ctx
	// ends them at Close. renumberMu orders their start with Close's wait.
	renumberMu  sync.Mutex
	closing     bool
	renumbering sync.WaitGroup
	ctx         context.Context
	cancel      context.CancelFunc
}

// renumberTimeout bounds one renumbering's allocation: in a cluster it
// may wait for etcd.
const renumberTimeout = 30 * time.Second

// New makes a manager; Start runs its loop.
func New(cfg Config) (*Manager, error) {
	if cfg.Datapath == nil || cfg.IPCache == nil || cfg.Identities == nil || cfg.CIDRs == nil || cfg.Rules == nil {
		return nil, errors.New("endpoint manager needs a datapath, an ipcache, identity allocators and rules")
	}
	if cfg.Log == nil {
		cfg.Log = logrus.New()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{
		cfg:      cfg,
		log:      cfg.Log,
		registry: identity.Registry{Labels: cfg.Identities, CIDRs: cfg.CIDRs},
		q:        newQueue(),
		done:     make(chan struct{}),
		held:     map[uint16]identity.ID{},
		ctx:      ctx,
		cancel:   cancel,
	}, nil
}

// Start runs the loop and subscribes to identity and rule changes.
func (m *Manager) Start() {
	m.started = true
	l := newLoop(m)
	m.unsub = append(m.unsub,
		m.cfg.Identities.Subscribe(func(c identity.Change) { m.q.put(identityChanged{c}) }),
		m.cfg.Rules.Subscribe(func(rev uint64) { m.q.put(rulesChanged{rev}) }),
	)
	go func() {
		defer close(m.done)
		l.run()
	}()
}

// Close stops taking events, lets the loop finish those queued (a
// regeneration that a deletion scheduled included: it writes policy maps
// and must end before the datapath closes), and waits for it.
func (m *Manager) Close() {
	for _, u := range m.unsub {
		u()
	}
	m.unsub = nil
	// Renumbers in progress give up: the endpoints keep their number
	// until the next start, which allocates their labels again.
	m.renumberMu.Lock()
	m.closing = true
	m.renumberMu.Unlock()
	m.cancel()
	m.renumbering.Wait()
	m.q.close()
	if m.started {
		<-m.done
	}
}

// Regenerations reports how many full regenerations have run.
func (m *Manager) Regenerations() uint64 { return m.regenerations.Load() }

// Registry resolves every identity: reserved, allocated and CIDR.
func (m *Manager) Registry() identity.Registry { return m.registry }

// call runs fn on the loop and waits for its answer. A caller whose ctx
// ends before the loop has reached its event withdraws it, and the event is
// not run (Docker has been told the call failed); once the loop has begun
// it, the caller waits for the end, so that what fn did is always what the
// caller is told.
func (m *Manager) call(ctx context.Context, fn func(*loop) error) error {
	ev := &callEvent{fn: fn, done: make(chan error, 1)}
	if !m.q.put(ev) {
		return ErrStopped
	}
	select {
	case err := <-ev.done:
		return err
	case <-ctx.Done():
		if ev.state.CompareAndSwap(callQueued, callWithdrawn) {
			return fmt.Errorf("waiting for the endpoint manager: %w", ctx.Err())
		}
		return <-ev.done
	}
}

// Restore takes over the endpoints the datapath restored at start, with
// the networks they are on: their identities' references, their ipcache
// entries, the CIDR identities of the rules in force. It schedules one
// regeneration, which runs as soon as the queue is empty.
func (m *Manager) Restore(ctx context.Context, eps []datapath.Endpoint, networks []Network) error {
	return m.call(ctx, func(l *loop) error { return l.restore(ctx, eps, networks) })
}

// CreateEndpoint builds ep in the datapath with the policy in force
// compiled in, so that its first packet is judged (an endpoint starts at
// the init identity: denied both ways as soon as any rule exists). It
// fills ep as datapath.CreateEndpoint does.
func (m *Manager) CreateEndpoint(ctx context.Context, ep *datapath.Endpoint) error {
	return m.call(ctx, func(l *loop) error { return l.create(ep) })
}

// DeleteEndpoint removes the endpoint Docker knows by dockerEndpointID;
// an unknown one is no error.
func (m *Manager) DeleteEndpoint(ctx context.Context, dockerEndpointID string) error {
	return m.call(ctx, func(l *loop) error { return l.delete(ctx, dockerEndpointID) })
}

// Endpoint reads an endpoint; reads need not wait for the loop.
func (m *Manager) Endpoint(dockerEndpointID string) (datapath.Endpoint, bool) {
	return m.cfg.Datapath.Endpoint(dockerEndpointID)
}

// SetNetworks tells the manager every network there is now. It only
// queues, so the driver may call it under its own lock, which keeps the
// lists in the order the changes happened.
func (m *Manager) SetNetworks(networks []Network) {
	m.q.put(networksChanged{networks})
}

// SetContainer gives the endpoint Docker knows by dockerEndpointID the
// identity of its container's labels. The identity is allocated here, on
// the caller's goroutine, because a cluster's store may be slow; the loop
// only applies it. Nothing happens when the endpoint already has that
// container and identity (Docker's events repeat themselves).
func (m *Manager) SetContainer(ctx context.Context, dockerEndpointID string, c Container) error {
	ep, ok := m.cfg.Datapath.Endpoint(dockerEndpointID)
	if !ok {
		return nil
	}
	ls := labels.FromDocker(c.Labels)
	if held, ok := m.holds(ep.ID); ok && uint32(held) == ep.Identity && ep.ContainerID == c.ID &&
		labels.FromDocker(ep.Labels).Equal(ls) {
		return nil
	}
	return m.allocateAndAssign(ctx, dockerEndpointID, c)
}

// allocateAndAssign allocates the identity of c's labels and gives it to
// the endpoint.
func (m *Manager) allocateAndAssign(ctx context.Context, dockerEndpointID string, c Container) error {
	ls := labels.FromDocker(c.Labels)
	id, err := m.cfg.Identities.Allocate(ctx, ls)
	if err != nil {
		return fmt.Errorf("allocate identity for %s: %w", ls, err)
	}
	ran := false
	err = m.call(ctx, func(l *loop) error {
		ran = true
		return l.assign(ctx, dockerEndpointID, id, c)
	})
	if !ran {
		// Withdrawn or stopped: the loop never took the reference over.
		m.releaseQuietly(context.WithoutCancel(ctx), id)
	}
	return err
}

// renumber gives ep the identity its labels have now, off the loop (an
// allocation may wait for etcd); the loop asks for it when ep's number
// has come to name other labels (loop.renumberMismatched).
func (m *Manager) renumber(ep datapath.Endpoint) {
	m.renumberMu.Lock()
	defer m.renumberMu.Unlock()
	if m.closing {
		return
	}
	m.renumbering.Add(1)
	go func() {
		defer m.renumbering.Done()
		ctx, cancel := context.WithTimeout(m.ctx, renumberTimeout)
		defer cancel()
		c := Container{ID: ep.ContainerID, Name: ep.ContainerName, Labels: ep.Labels}
		if err := m.allocateAndAssign(ctx, ep.DockerEndpointID, c); err != nil && m.ctx.Err() == nil {
			m.log.WithError(err).WithField("epid", ep.ID).Error("renumber an endpoint whose identity number names other labels now; it keeps the wrong number until its container restarts or the daemon does")
		}
	}()
}

// ImportRules adds rules as `ebpfnet policy import` does and returns once
// every endpoint's policy reflects them.
func (m *Manager) ImportRules(ctx context.Context, rules []policy.Rule) (uint64, error) {
	rev, err := m.cfg.Rules.Import(rules)
	if err != nil {
		return 0, err
	}
	return rev, m.waitApplied(ctx, rev)
}

// DeleteAllRules removes every rule and returns once no endpoint enforces
// them any more.
func (m *Manager) DeleteAllRules(ctx context.Context) (uint64, error) {
	rev, err := m.cfg.Rules.DeleteAll()
	if err != nil {
		return 0, err
	}
	return rev, m.waitApplied(ctx, rev)
}

// waitApplied returns once the endpoints' policy reflects rules revision
// rev or later.
func (m *Manager) waitApplied(ctx context.Context, rev uint64) error {
	ch := make(chan struct{})
	if !m.q.put(waitRevision{rev: rev, done: ch}) {
		return ErrStopped
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *Manager) releaseQuietly(ctx context.Context, id identity.ID) {
	if err := m.cfg.Identities.Release(ctx, id); err != nil {
		m.log.WithError(err).WithField("identity", uint32(id)).Warn("release identity")
	}
}

// holds reports the identity reference endpoint epid holds.
func (m *Manager) holds(epid uint16) (identity.ID, bool) {
	m.heldMu.Lock()
	defer m.heldMu.Unlock()
	id, ok := m.held[epid]
	return id, ok
}

// setHeld records (ok) or forgets the reference of endpoint epid; only
// the loop calls it.
func (m *Manager) setHeld(epid uint16, id identity.ID, ok bool) {
	m.heldMu.Lock()
	defer m.heldMu.Unlock()
	if ok {
		m.held[epid] = id
	} else {
		delete(m.held, epid)
	}
}
