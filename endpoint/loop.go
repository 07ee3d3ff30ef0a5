package endpoint

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sort"
	"sync/atomic"

	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/datapath"
	"github.com/ebpfnet/ebpfnet/identity"
	"github.com/ebpfnet/ebpfnet/ipcache"
	"github.com/ebpfnet/ebpfnet/labels"
	"github.com/ebpfnet/ebpfnet/policy"
)

// event is one thing the loop does.
type event interface{ handle(*loop) }

// loop is the state only the loop's goroutine touches.
type loop struct {
	m   *Manager
	log logrus.FieldLogger

	networks map[string]Network
	// rules and rulesRev are the rules the loop works with: every
	// endpoint compiled from now on is compiled against them.
	rules    []policy.Rule
	rulesRev uint64
	// applied is the rules revision every endpoint's policy reflects.
	applied uint64
	waiters []waitRevision
	// cidrs are the CIDR identities of the prefixes the rules name.
	cidrs map[netip.Prefix]identity.ID
	// dirty means a full regeneration is due. It runs once the queue is
	// empty, so that a burst of changes (identities freed together, say)
	// costs one, or at once before an
	// event that needs every policy map current (see flush).
	dirty bool
	// frozen are the endpoints restored while the rules were lost
	// (LostRules): their pinned policy is the only trace of the rules,
	// and stays as it is until the rules change.
	frozen map[uint16]bool
}

func newLoop(m *Manager) *loop {
	return &loop{
		m: m, log: m.log,
		networks: map[string]Network{},
		cidrs:    map[netip.Prefix]identity.ID{},
	}
}

func (l *loop) run() {
	for {
		ev, ok := l.m.q.take()
		if ok {
			ev.handle(l)
			continue
		}
		l.flush()
		if l.m.q.isClosed() {
			// Whoever still waits learns nothing more: the daemon stops.
			for _, w := range l.waiters {
				close(w.done)
			}
			return
		}
		<-l.m.q.ready
	}
}

// flush runs the regeneration that is due, if any.
func (l *loop) flush() {
	if l.dirty {
		l.regenerate()
	}
}

// callEvent runs a caller's function (Manager.call).
type callEvent struct {
	fn    func(*loop) error
	done  chan error
	state atomic.Int32
}

const (
	callQueued int32 = iota
	callRunning
	callWithdrawn
)

func (e *callEvent) handle(l *loop) {
	if !e.state.CompareAndSwap(callQueued, callRunning) {
		return // withdrawn by its caller
	}
	e.done <- e.fn(l)
	// The caller is answering Docker, and what the loop does next may
	// block its thread for long (a regeneration of every endpoint's
	// policy, or a write of a state file): the runtime has put
	// the woken caller next on this P, where it would wait for the
	// syscall to end. Let it run first.
	runtime.Gosched()
}

// identityChanged: an identity appeared or was freed, here or on another
// node. Rules may select it, so every endpoint's policy may change.
type identityChanged struct{ c identity.Change }

func (e identityChanged) handle(l *loop) {
	l.dirty = true
	if !e.c.Freed {
		l.renumberMismatched(e.c)
	}
}

// renumberMismatched renumbers the endpoints whose number and labels
// c contradicts: they carry c.ID for other labels than c.Labels, or they
// have c.Labels under another number. On one node neither can happen. In
// a cluster, a node cut off from etcd for longer than the identity grace
// can find that the other nodes freed its identity meanwhile, and gave
// the number to other labels or the labels another number
// (cluster.Status.Conflicts). Every other node would then take the
// endpoint's packets for those other labels', or for an unknown
// identity's, so the endpoint takes the number its labels have now.
func (l *loop) renumberMismatched(c identity.Change) {
	for _, ep := range l.m.cfg.Datapath.Endpoints() {
		if ep.ContainerID == "" || (identity.ID(ep.Identity) == c.ID) == labels.FromDocker(ep.Labels).Equal(c.Labels) {
			continue
		}
		l.log.WithFields(logrus.Fields{"epid": ep.ID, "identity": uint32(c.ID), "labels": labels.FromDocker(ep.Labels).String(),
			"numberNowNames": c.Labels.String()}).Warn("an endpoint's identity number names other labels now; renumbering the endpoint")
		l.m.renumber(ep)
	}
}

// rulesChanged: the repository has a new revision.
type rulesChanged struct{ rev uint64 }

func (e rulesChanged) handle(l *loop) {
	rules, rev := l.m.cfg.Rules.Snapshot()
	if rev <= l.rulesRev && l.rules != nil {
		return // an older notification; the newer one was taken already
	}
	l.rules, l.rulesRev = rules, rev
	if _, lost := l.rulesLost(); !lost && len(l.frozen) > 0 {
		l.log.WithField("endpoints", len(l.frozen)).Info("rules in force again: every endpoint is compiled against them")
		l.frozen = nil
	}
	l.syncCIDRs()
	// At once rather than when the queue is empty: a CIDR identity the
	// sync freed must be gone from every policy map before any later
	// event can number another prefix with it.
	l.regenerate()
}

// waitRevision: a caller waits until every endpoint reflects rev.
type waitRevision struct {
	rev  uint64
	done chan struct{}
}

func (e waitRevision) handle(l *loop) {
	if l.applied >= e.rev {
		close(e.done)
		return
	}
	l.waiters = append(l.waiters, e)
}

// networksChanged: the driver's networks now.
type networksChanged struct{ networks []Network }

func (e networksChanged) handle(l *loop) {
	before := l.networks
	l.setNetworks(e.networks)
	for id, n := range l.networks {
		if old, ok := before[id]; ok && old != n {
			// Its options are known now (it was rebuilt) or changed:
			// its endpoints are compiled with them.
			l.dirty = true
		}
	}
	l.syncHostAddresses()
}

func (l *loop) setNetworks(networks []Network) {
	l.networks = make(map[string]Network, len(networks))
	for _, n := range networks {
		l.networks[n.ID] = n
	}
}

// restore takes over the endpoints the datapath restored (Restore).
func (l *loop) restore(ctx context.Context, eps []datapath.Endpoint, networks []Network) error {
	l.setNetworks(networks)
	l.rules, l.rulesRev = l.m.cfg.Rules.Snapshot()
	for id, p := range l.m.cfg.CIDRs.CIDRs() {
		l.cidrs[p] = id
	}
	if why, lost := l.rulesLost(); lost {
		l.frozen = map[uint16]bool{}
		for _, ep := range eps {
			l.frozen[ep.ID] = true
		}
		l.log.WithFields(logrus.Fields{"why": why, "endpoints": len(eps)}).
			Warn("policy lost, re-import: restored endpoints keep their policy as pinned, new endpoints deny all, until `ebpfnet policy import` or `ebpfnet policy delete --all`")
	}
	l.syncCIDRs()
	for _, ep := range eps {
		l.restoreIdentity(ctx, ep)
	}
	l.syncHostAddresses()
	var errs []error
	for _, s := range []ipcache.Source{ipcache.SourceLocalEndpoint, ipcache.SourceHost, ipcache.SourceCIDR} {
		errs = append(errs, l.m.cfg.IPCache.MarkSynced(s))
	}
	if err := errors.Join(errs...); err != nil {
		l.log.WithError(err).Warn("remove stale ipcache entries")
	}
	// The pinned maps kept every endpoint's policy; rules may have been
	// imported by another version, so all are compiled again.
	l.dirty = true
	return nil
}

// restoreIdentity takes the reference a restored endpoint holds on its
// identity. An identity the allocator numbers differently now (its file
// was lost) is put right: the endpoint takes the number its labels have.
func (l *loop) restoreIdentity(ctx context.Context, ep datapath.Endpoint) {
	log := l.log.WithField("epid", ep.ID)
	if identity.ID(ep.Identity).Kind() != identity.KindAllocated {
		l.upsertLocal(ep, identity.ID(ep.Identity))
		return
	}
	id, err := l.m.cfg.Identities.Allocate(ctx, labels.FromDocker(ep.Labels))
	if err != nil {
		log.WithError(err).Warn("take the identity of a restored endpoint; it keeps its number until its labels are seen again")
		l.upsertLocal(ep, identity.ID(ep.Identity))
		return
	}
	l.m.setHeld(ep.ID, id, true)
	if uint32(id) != ep.Identity {
		log.WithFields(logrus.Fields{"was": ep.Identity, "now": uint32(id)}).Warn("a restored endpoint's labels have another identity now; renumbering it")
		if err := l.m.cfg.Datapath.SetEndpointIdentity(ep.ID, uint32(id), ep.ContainerID, ep.ContainerName, ep.Labels); err != nil {
			log.WithError(err).Warn("renumber a restored endpoint")
		}
	}
	l.upsertLocal(ep, id)
}

// upsertLocal records a local endpoint's addresses (one identity for both
// families) in the ipcache and, in a cluster, tells the other nodes.
func (l *loop) upsertLocal(ep datapath.Endpoint, id identity.ID) {
	for _, a := range addressesOf(ep) {
		if err := l.m.cfg.IPCache.Upsert(hostPrefix(a), ipcache.SourceLocalEndpoint, ipcache.Entry{Identity: id}); err != nil {
			l.log.WithError(err).WithField("epid", ep.ID).Warn("ipcache entry of an endpoint")
		}
		if p := l.m.cfg.Publish; p != nil {
			if err := p.PublishEndpoint(a, id); err != nil {
				l.log.WithError(err).WithField("epid", ep.ID).Warn("publish an endpoint to the cluster")
			}
		}
	}
}

func hostPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// addressesOf lists an endpoint's addresses: its IPv4 one, its IPv6 one,
// or both.
func addressesOf(ep datapath.Endpoint) []netip.Addr {
	var out []netip.Addr
	for _, p := range []netip.Prefix{ep.IPv4, ep.IPv6} {
		if p.IsValid() {
			out = append(out, p.Addr())
		}
	}
	return out
}

// create builds an endpoint (CreateEndpoint).
func (l *loop) create(ep *datapath.Endpoint) error {
	if existing, ok := l.m.cfg.Datapath.Endpoint(ep.DockerEndpointID); ok {
		*ep = existing // a retried call: the first one built it
		return nil
	}
	if ep.Identity == 0 {
		ep.Identity = uint32(identity.Init)
	}
	p := l.compileOrDeny(*ep, l.registryAll())
	ep.InitialPolicy = &p
	if err := l.m.cfg.Datapath.CreateEndpoint(ep); err != nil {
		return err
	}
	ep.InitialPolicy = nil
	l.upsertLocal(*ep, identity.ID(ep.Identity))
	return nil
}

// delete removes an endpoint (DeleteEndpoint) and drops its identity's
// reference; an identity left without one is kept for the grace, and
// schedules a regeneration through its change only when it is freed.
func (l *loop) delete(ctx context.Context, dockerEndpointID string) error {
	ep, existed := l.m.cfg.Datapath.Endpoint(dockerEndpointID)
	if err := l.m.cfg.Datapath.DeleteEndpoint(dockerEndpointID); err != nil {
		return err
	}
	if !existed {
		return nil
	}
	for _, a := range addressesOf(ep) {
		if err := l.m.cfg.IPCache.Delete(hostPrefix(a), ipcache.SourceLocalEndpoint); err != nil {
			l.log.WithError(err).WithField("epid", ep.ID).Warn("remove a deleted endpoint's ipcache entry")
		}
		if p := l.m.cfg.Publish; p != nil {
			p.WithdrawEndpoint(a)
		}
	}
	if id, ok := l.m.holds(ep.ID); ok {
		// In memory only, on either backend: an identity left without a
		// reference is kept for the grace.
		l.m.setHeld(ep.ID, 0, false)
		l.m.releaseQuietly(ctx, id)
	}
	delete(l.frozen, ep.ID)
	return nil
}

// assign gives an endpoint the identity SetContainer allocated, whose
// reference it takes over.
func (l *loop) assign(ctx context.Context, dockerEndpointID string, id identity.ID, c Container) error {
	ep, ok := l.m.cfg.Datapath.Endpoint(dockerEndpointID)
	if !ok {
		l.m.releaseQuietly(ctx, id) // gone meanwhile
		return nil
	}
	previous, held := l.m.holds(ep.ID)
	if held && previous == id && ep.ContainerID == c.ID {
		l.m.releaseQuietly(ctx, id) // it holds one already
		return nil
	}
	// The identity is about to carry traffic: every policy map must
	// know the identities as they are now (one that appeared may be
	// allowed somewhere, one freed must be forgotten everywhere).
	l.flush()
	log := l.log.WithFields(logrus.Fields{"epid": ep.ID, "container": c.Name, "identity": uint32(id)})
	if err := l.m.cfg.Datapath.SetEndpointIdentity(ep.ID, uint32(id), c.ID, c.Name, c.Labels); err != nil {
		l.m.releaseQuietly(ctx, id)
		return fmt.Errorf("set the identity of endpoint %d: %w", ep.ID, err)
	}
	l.m.setHeld(ep.ID, id, true)
	l.upsertLocal(ep, id)
	ep.Identity, ep.ContainerID, ep.ContainerName, ep.Labels = uint32(id), c.ID, c.Name, c.Labels
	l.applyOne(ep, l.registryAll())
	if held {
		l.m.releaseQuietly(ctx, previous)
	}
	log.WithField("labels", labels.FromDocker(c.Labels).String()).Info("endpoint identity")
	return nil
}

// registryAll is every identity with its labels, what a compilation needs.
func (l *loop) registryAll() map[identity.ID]labels.Labels { return l.m.registry.All() }

// compile computes ep's policy. An endpoint still in init is enforced both
// ways as soon as any rule exists (only rules naming reserved:init allow
// it anything): it never has an allow-all window.
func (l *loop) compile(ep datapath.Endpoint, ids map[identity.ID]labels.Labels) (policy.EndpointPolicy, error) {
	n, ok := l.networks[ep.DockerNetworkID]
	if !ok {
		return policy.EndpointPolicy{}, fmt.Errorf("network %s is unknown", ep.DockerNetworkID)
	}
	if n.Unconfirmed {
		return policy.EndpointPolicy{}, fmt.Errorf("the options of network %s are not known yet (rebuilt, Docker not asked yet)", ep.DockerNetworkID)
	}
	mode := n.Mode
	id := identity.ID(ep.Identity)
	own := policy.Endpoint{Identity: id, Labels: labels.FromDocker(ep.Labels)}
	if id == identity.Init {
		own.Labels = labels.FromLabels(labels.Init())
		if (mode == policy.ModeDefault || mode == "") && len(l.rules) > 0 {
			mode = policy.ModeAlways
		}
	}
	p, err := policy.Compile(l.rules, own, ids, mode)
	if err != nil {
		return policy.EndpointPolicy{}, err
	}
	p.Audit = n.Audit
	return p, nil
}

// compileOrDeny is compile failing closed: a policy that cannot be
// computed denies both ways rather than allowing all.
func (l *loop) compileOrDeny(ep datapath.Endpoint, ids map[identity.ID]labels.Labels) policy.EndpointPolicy {
	if _, lost := l.rulesLost(); lost {
		// Said once at restore and in status, not for every endpoint.
		return policy.DenyAll()
	}
	p, err := l.compile(ep, ids)
	if err != nil {
		l.log.WithError(err).WithField("epid", ep.ID).Warn("compile policy; the endpoint denies all")
		return policy.DenyAll()
	}
	return p
}

// applyOne compiles one endpoint's policy and writes what changed. An
// endpoint whose policy cannot be compiled from what it was compiled
// from (kept) keeps the policy it has.
func (l *loop) applyOne(ep datapath.Endpoint, ids map[identity.ID]labels.Labels) (added, removed int) {
	if l.kept(ep) {
		return 0, 0
	}
	added, removed, err := l.m.cfg.Datapath.ApplyPolicy(ep.ID, l.compileOrDeny(ep, ids))
	if err != nil && !errors.Is(err, datapath.ErrNoEndpoint) {
		l.log.WithError(err).WithField("epid", ep.ID).Warn("apply policy to an endpoint")
	}
	return added, removed
}

// kept tells whether ep keeps the policy it has: restored while the rules
// were lost, or on a network whose options are not known yet.
func (l *loop) kept(ep datapath.Endpoint) bool {
	return l.frozen[ep.ID] || l.networks[ep.DockerNetworkID].Unconfirmed
}

// rulesLost says whether the rules in force were lost (LostRules).
func (l *loop) rulesLost() (string, bool) {
	if lr, ok := l.m.cfg.Rules.(LostRules); ok {
		return lr.Lost()
	}
	return "", false
}

// regenerate compiles every endpoint against the rules and identities as
// they are now and writes what changed, then answers whoever waited for
// this revision of the rules.
func (l *loop) regenerate() {
	l.dirty = false
	ids := l.registryAll()
	added, removed := 0, 0
	for _, ep := range l.m.cfg.Datapath.Endpoints() {
		if _, ok := l.networks[ep.DockerNetworkID]; !ok {
			// Its network is gone (reconcile removes it next):
			// nothing to compile it against, and its pinned policy
			// stays as it was.
			continue
		}
		a, r := l.applyOne(ep, ids)
		added, removed = added+a, removed+r
	}
	l.applied = l.rulesRev
	l.m.regenerations.Add(1)
	kept := l.waiters[:0]
	for _, w := range l.waiters {
		if w.rev <= l.applied {
			close(w.done)
		} else {
			kept = append(kept, w)
		}
	}
	l.waiters = kept
	l.log.WithFields(logrus.Fields{"added": added, "removed": removed, "revision": l.applied}).Debug("policy regenerated")
}

// syncCIDRs gives every prefix the rules name a CIDR identity and an
// ipcache entry, and frees those no rule names any more. New ones are
// numbered before old ones are freed, so that no prefix takes the number
// of one that went in the same change.
func (l *loop) syncCIDRs() {
	if _, lost := l.rulesLost(); lost {
		// No rules to tell which prefixes matter: the frozen policy
		// maps may name any CIDR identity, so every one keeps its
		// number and its ipcache entry.
		l.publishCIDRs()
		return
	}
	want := map[netip.Prefix]bool{}
	for _, p := range policy.CIDRs(l.rules) {
		want[p] = true
	}
	for p := range want {
		if _, ok := l.cidrs[p]; ok {
			continue
		}
		id, err := l.m.cfg.CIDRs.AllocateCIDR(p)
		if err != nil {
			// The rules naming it allow nothing for it: closed.
			l.log.WithError(err).WithField("prefix", p).Warn("number a prefix the rules name")
			continue
		}
		l.cidrs[p] = id
	}
	var gone []identity.ID
	for p, id := range l.cidrs {
		if !want[p] {
			gone = append(gone, id)
			delete(l.cidrs, p)
		}
	}
	l.publishCIDRs()
	if len(gone) > 0 {
		sort.Slice(gone, func(i, j int) bool { return gone[i] < gone[j] })
		if err := l.m.cfg.CIDRs.ReleaseCIDR(gone...); err != nil {
			l.log.WithError(err).Warn("free CIDR identities no rule names")
		}
	}
}

// publishCIDRs makes the ipcache's CIDR entries those of l.cidrs.
func (l *loop) publishCIDRs() {
	entries := make(map[netip.Prefix]ipcache.Entry, len(l.cidrs))
	for p, id := range l.cidrs {
		entries[p] = ipcache.Entry{Identity: id}
	}
	if err := l.m.cfg.IPCache.Replace(ipcache.SourceCIDR, entries); err != nil {
		l.log.WithError(err).Warn("ipcache entries of the rules' prefixes")
	}
}

// syncHostAddresses maps the node's own addresses and every network's
// gateway to the host identity.
func (l *loop) syncHostAddresses() {
	host := ipcache.Entry{Identity: identity.Host}
	want := map[netip.Prefix]ipcache.Entry{}
	for _, n := range l.networks {
		for _, gw := range []netip.Addr{n.Gateway, n.Gateway6} {
			if gw.IsValid() {
				want[hostPrefix(gw)] = host
			}
		}
	}
	if l.m.cfg.NodeAddresses != nil {
		addrs, err := l.m.cfg.NodeAddresses()
		if err != nil {
			l.log.WithError(err).Warn("list node addresses for the ipcache")
		}
		for _, a := range addrs {
			want[hostPrefix(a)] = host
		}
	}
	if err := l.m.cfg.IPCache.Replace(ipcache.SourceHost, want); err != nil {
		l.log.WithError(err).Warn("ipcache host entries")
	}
}
