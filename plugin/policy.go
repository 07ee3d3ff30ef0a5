package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/datapath"
	"github.com/ebpfnet/ebpfnet/dockerwatch"
	"github.com/ebpfnet/ebpfnet/driver"
	"github.com/ebpfnet/ebpfnet/identity"
	"github.com/ebpfnet/ebpfnet/labels"
	"github.com/ebpfnet/ebpfnet/policy"
)

// policyController joins the pure policy packages to the datapath: it
// gives endpoints identities from their containers' labels, keeps the
// ipcache, compiles the rules for every endpoint and writes only what
// changed into its policy map.
//
// Lock order: the driver calls the hooks with its own lock held, so the
// controller never calls into the driver while holding mu.
type policyController struct {
	log      logrus.FieldLogger
	datapath *datapath.Datapath
	driver   *driver.Driver
	alloc    *identity.Allocator
	repo     *policy.Repository

	mu sync.Mutex // serialises regeneration and identity changes
	// hostAddrs are the ipcache prefixes we hold for the host (gateways
	// and node addresses), so stale ones can be removed.
	hostAddrs map[netip.Prefix]bool
	// generation counts regenerations. An endpoint compiled in Prepare is
	// not yet among the datapath's endpoints, so a regeneration before it
	// exists would miss it: its creation compares generations.
	generation uint64
	// regenPending is set while a regeneration after a deletion is
	// scheduled but has not started: more deletions join it.
	regenPending atomic.Bool
	// deferred counts those regenerations, so that shutdown can wait for
	// them before the datapath closes (see wait).
	deferred sync.WaitGroup
}

func newPolicyController(libDir string, dp *datapath.Datapath, drv *driver.Driver, log logrus.FieldLogger) (*policyController, error) {
	alloc, err := identity.NewAllocator(libDir + "/identities.json")
	if err != nil {
		return nil, fmt.Errorf("load identities: %w", err)
	}
	repo, err := policy.NewRepository(libDir + "/policy.json")
	if err != nil {
		return nil, fmt.Errorf("load policy: %w", err)
	}
	return &policyController{log: log, datapath: dp, driver: drv, alloc: alloc, repo: repo, hostAddrs: map[netip.Prefix]bool{}}, nil
}

// hooks is what the driver calls around an endpoint's life.
func (c *policyController) hooks() driver.Hooks {
	return driver.Hooks{
		Prepare: func(ep *datapath.Endpoint, n driver.Network) func(datapath.Endpoint) {
			c.mu.Lock()
			defer c.mu.Unlock()
			p := c.compileOrDeny(*ep, n, c.inputs())
			ep.InitialPolicy = &p
			compiledAt := c.generation
			return func(created datapath.Endpoint) {
				c.catchUp(created, n, compiledAt)
				if err := c.datapath.UpsertIPCache(netip.PrefixFrom(created.IPv4.Addr(), 32), created.Identity); err != nil {
					c.log.WithError(err).Warn("ipcache entry of a new endpoint")
				}
			}
		},
		Deleted: func(ep datapath.Endpoint) {
			if err := c.datapath.DeleteIPCache(netip.PrefixFrom(ep.IPv4.Addr(), 32)); err != nil {
				c.log.WithError(err).Warn("remove a deleted endpoint's ipcache entry")
			}
			// Its identity may now be unused. Called under the driver's
			// lock, and regeneration reads the driver's networks: later,
			// and once for a burst of deletions (200 containers removed
			// at once would otherwise regenerate 200 times).
			if c.regenPending.CompareAndSwap(false, true) {
				c.deferred.Add(1)
				go c.regenerateAfterDeletion()
			}
		},
		NetworksChanged: func() {
			// Called under the driver's lock: the network list comes later,
			// from a goroutine that may take it.
			go c.syncHostAddresses()
		},
	}
}

// regenerateAfterDeletion is the regeneration the Deleted hook schedules.
// It clears regenPending before it starts, so a deletion from now on
// schedules another rather than being missed by this one.
func (c *policyController) regenerateAfterDeletion() {
	defer c.deferred.Done()
	c.regenPending.Store(false)
	if err := c.regenerateAll(); err != nil {
		c.log.WithError(err).Warn("regenerate policy after an endpoint left")
	}
}

// wait returns once the regenerations scheduled by deletions have ended.
// The daemon calls it at shutdown, after Docker's calls and reconcile have
// stopped (so no deletion schedules another), before the datapath closes:
// they write policy maps and identities.json.
func (c *policyController) wait() {
	c.deferred.Wait()
}

// policyInputs are what every endpoint's compilation reads: the rules and
// every identity with its labels. A regeneration takes them once for all
// endpoints.
type policyInputs struct {
	rules []policy.Rule
	ids   map[identity.ID]labels.Labels
}

// inputs takes the current rules and identities. Called with mu held.
func (c *policyController) inputs() policyInputs {
	return policyInputs{rules: c.repo.Rules(), ids: c.alloc.All()}
}

// compile computes ep's datapath policy. An endpoint still in init is
// enforced both ways as soon as any rule exists (only rules naming
// reserved:init allow it anything): it never has an allow-all window.
// Called with mu held.
func (c *policyController) compile(ep datapath.Endpoint, n driver.Network, in policyInputs) (policy.EndpointPolicy, error) {
	mode, err := policy.ParseMode(n.Options[driver.OptionPolicyEnforcement])
	if err != nil {
		return policy.EndpointPolicy{}, err
	}
	audit, _ := strconv.ParseBool(n.Options[driver.OptionPolicyAudit])
	id := identity.ID(ep.Identity)
	own := policy.Endpoint{Identity: id, Labels: labels.FromDocker(ep.Labels)}
	if id == identity.Init {
		own.Labels = labels.FromLabels(labels.Init())
		if mode == policy.ModeDefault && len(in.rules) > 0 {
			mode = policy.ModeAlways
		}
	}
	compiled, err := policy.Compile(in.rules, own, in.ids, mode)
	if err != nil {
		return policy.EndpointPolicy{}, err
	}
	compiled.Audit = audit
	return compiled, nil
}

// compileOrDeny is compile failing closed: a policy that cannot be
// computed denies both ways rather than allowing all. Called with mu held.
func (c *policyController) compileOrDeny(ep datapath.Endpoint, n driver.Network, in policyInputs) policy.EndpointPolicy {
	p, err := c.compile(ep, n, in)
	if err != nil {
		c.log.WithError(err).WithField("epid", ep.ID).Warn("compile policy; the endpoint denies all")
		return policy.DenyAll()
	}
	return p
}

// catchUp applies the current policy to a just-created endpoint when a
// regeneration ran after its policy was compiled (at generation compiledAt).
func (c *policyController) catchUp(ep datapath.Endpoint, n driver.Network, compiledAt uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if compiledAt == c.generation {
		return
	}
	c.applyOne(ep, n)
}

// regenerateAll releases the identities nothing uses any more, then
// recompiles every endpoint and writes what changed.
//
// Both happen under one hold of mu, and attach allocates under mu too: a
// released number can be handed out again (the allocator takes the lowest
// free one), so no endpoint may get it before every policy map has lost
// the entries that named its previous owner.
func (c *policyController) regenerateAll() error {
	networks := map[string]driver.Network{}
	for _, n := range c.driver.Networks() {
		networks[n.ID] = n
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// One snapshot serves both the release and the compilation, so they
	// agree on which endpoints and rules exist.
	eps, rules := c.datapath.Endpoints(), c.repo.Rules()
	c.releaseUnusedIdentities(eps, rules)
	c.generation++
	// The identities are read after the release: compiled policy must not
	// name one that was just forgotten.
	in := policyInputs{rules: rules, ids: c.alloc.All()}
	var firstErr error
	added, removed := 0, 0
	for _, ep := range eps {
		n, ok := networks[ep.DockerNetworkID]
		if !ok {
			continue
		}
		a, r, err := c.datapath.ApplyPolicy(ep.ID, c.compileOrDeny(ep, n, in))
		added, removed = added+a, removed+r
		if errors.Is(err, datapath.ErrNoEndpoint) {
			continue // deleted since the list was taken: nothing to enforce
		}
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("apply policy to endpoint %d: %w", ep.ID, err)
		}
	}
	c.log.WithFields(logrus.Fields{"added": added, "removed": removed, "revision": c.repo.Revision()}).Debug("policy regenerated")
	return firstErr
}

// attach gives the endpoint of a container that joined a network its real
// identity. It reports false when it cannot tell which endpoint is meant.
func (c *policyController) attach(a dockerwatch.Attachment) bool {
	ep, ok := c.matchEndpoint(a)
	if !ok {
		return false
	}
	if ep.ID == 0 {
		return true // not ours, or already known
	}
	ls := labels.FromDocker(a.Container.Labels)
	// Before mu: NetworkByID takes the driver's lock (see the lock order).
	network, netKnown := c.driver.NetworkByID(ep.DockerNetworkID)
	c.mu.Lock()
	_, known := c.alloc.Find(ls)
	id, err := c.alloc.Allocate(ls)
	if err != nil {
		c.mu.Unlock()
		c.log.WithError(err).WithField("epid", ep.ID).Warn("allocate identity; the endpoint stays init")
		return true
	}
	previous := identity.ID(ep.Identity)
	if previous == id && ep.ContainerID == a.Container.ID {
		c.mu.Unlock()
		return true // nothing changed (a resync, a second network event)
	}
	err = c.datapath.SetEndpointIdentity(ep.ID, uint32(id), a.Container.ID, a.Container.Name, a.Container.Labels)
	if err != nil {
		c.mu.Unlock()
		c.log.WithError(err).WithField("epid", ep.ID).Warn("set endpoint identity")
		return true
	}
	if err := c.datapath.UpsertIPCache(netip.PrefixFrom(ep.IPv4.Addr(), 32), uint32(id)); err != nil {
		c.log.WithError(err).Warn("ipcache entry of an endpoint")
	}
	c.log.WithFields(logrus.Fields{"epid": ep.ID, "container": a.Container.Name, "identity": uint32(id), "labels": ls.String()}).Info("endpoint identity")
	// Other endpoints' policy names identities: it changes only when one
	// appears (rules may select it) or may have gone (the endpoint left a
	// label identity). An identity that existed already changes only this
	// endpoint's own policy, a single compile instead of one per endpoint.
	wholeNode := !known || previous.Kind() == identity.KindAllocated || !netKnown
	if !wholeNode {
		ep.Identity, ep.Labels = uint32(id), a.Container.Labels
		c.applyOne(ep, network)
	}
	c.mu.Unlock()
	if wholeNode {
		if err := c.regenerateAll(); err != nil {
			c.log.WithError(err).Warn("regenerate policy after an identity change")
		}
	}
	return true
}

// applyOne compiles ep's policy and writes what changed. Called with mu
// held.
func (c *policyController) applyOne(ep datapath.Endpoint, n driver.Network) {
	if _, _, err := c.datapath.ApplyPolicy(ep.ID, c.compileOrDeny(ep, n, c.inputs())); err != nil && !errors.Is(err, datapath.ErrNoEndpoint) {
		c.log.WithError(err).WithField("epid", ep.ID).Warn("apply policy to an endpoint")
	}
}

// matchEndpoint finds the endpoint an attachment is about. Without an
// endpoint ID, the one endpoint of that network that has no container yet
// is it; two such endpoints are ambiguous (ok false). ID 0 means none.
func (c *policyController) matchEndpoint(a dockerwatch.Attachment) (datapath.Endpoint, bool) {
	if a.EndpointID != "" {
		ep, _ := c.datapath.Endpoint(a.EndpointID)
		return ep, true
	}
	var pending []datapath.Endpoint
	for _, ep := range c.datapath.Endpoints() {
		if ep.DockerNetworkID != a.NetworkID {
			continue
		}
		if ep.ContainerID == a.Container.ID {
			return ep, true
		}
		if ep.ContainerID == "" {
			pending = append(pending, ep)
		}
	}
	switch len(pending) {
	case 0:
		return datapath.Endpoint{}, true
	case 1:
		return pending[0], true
	}
	return datapath.Endpoint{}, false
}

// importRules validates and adds rules, allocates identities for their
// CIDRs and regenerates every endpoint. A file with any error changes
// nothing.
func (c *policyController) importRules(data []byte) (uint64, error) {
	rules, err := policy.Parse(data)
	if err != nil {
		return 0, err
	}
	rev, err := c.importLocked(rules)
	if err != nil {
		return 0, err
	}
	return rev, c.regenerateAll()
}

// importLocked allocates the rules' CIDR identities and adds the rules
// under mu, so that a regeneration in between never takes the new CIDR
// identities for unused ones.
func (c *policyController) importLocked(rules []policy.Rule) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range policy.CIDRs(rules) {
		id, err := c.alloc.AllocateCIDR(p)
		if err != nil {
			return 0, fmt.Errorf("identity for %s: %w", p, err)
		}
		if err := c.datapath.UpsertIPCache(p, uint32(id)); err != nil {
			return 0, fmt.Errorf("ipcache entry for %s: %w", p, err)
		}
	}
	return c.repo.Import(rules)
}

func (c *policyController) deleteAll() (uint64, error) {
	rev, err := c.repo.DeleteAll()
	if err != nil {
		return 0, err
	}
	return rev, c.regenerateAll()
}

// rulesJSON returns the rules in force, in Cilium's format.
func (c *policyController) rulesJSON() (json.RawMessage, uint64, error) {
	rules, rev := c.repo.Snapshot()
	if rules == nil {
		rules = []policy.Rule{}
	}
	data, err := json.Marshal(rules)
	return data, rev, err
}

// labelsOf resolves an identity to its labels for display.
func (c *policyController) labelsOf(id uint32) []string {
	if id == 0 {
		return []string{"reserved:all"}
	}
	ls, ok := c.alloc.Lookup(identity.ID(id))
	if !ok {
		return []string{"unknown"}
	}
	var out []string
	for _, l := range ls.Sorted() {
		out = append(out, l.String())
	}
	return out
}

// syncHostAddresses maps the node's own addresses and every network's
// gateway to the host identity in the ipcache, and forgets stale ones.
func (c *policyController) syncHostAddresses() {
	want := map[netip.Prefix]bool{}
	for _, n := range c.driver.Networks() {
		if gw, err := netip.ParseAddr(n.Gateway); err == nil {
			want[netip.PrefixFrom(gw, 32)] = true
		}
	}
	if addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4); err == nil {
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
				want[netip.PrefixFrom(ip, 32)] = true
			}
		}
	} else {
		c.log.WithError(err).Warn("list node addresses for the ipcache")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for p := range want {
		if err := c.datapath.UpsertIPCache(p, uint32(identity.Host)); err != nil {
			c.log.WithError(err).WithField("prefix", p).Warn("ipcache host entry")
		}
	}
	for p := range c.hostAddrs {
		if !want[p] {
			_ = c.datapath.DeleteIPCache(p)
		}
	}
	c.hostAddrs = want
}

// syncEndpointAddresses puts every endpoint's address in the ipcache
// (after a restart the entries are pinned, but a record may be newer).
func (c *policyController) syncEndpointAddresses() {
	for _, ep := range c.datapath.Endpoints() {
		if err := c.datapath.UpsertIPCache(netip.PrefixFrom(ep.IPv4.Addr(), 32), ep.Identity); err != nil {
			c.log.WithError(err).WithField("epid", ep.ID).Warn("ipcache entry of a restored endpoint")
		}
	}
}

// releaseUnusedIdentities forgets the label identities no endpoint in eps
// has and the CIDR identities no rule names (with their ipcache entries),
// so that identities.json does not grow with every label set ever seen.
// Called with mu held, before a regeneration.
func (c *policyController) releaseUnusedIdentities(eps []datapath.Endpoint, rules []policy.Rule) {
	unused := c.unusedIdentities(eps, rules)
	ids := make([]identity.ID, len(unused))
	for i, u := range unused {
		ids[i] = u.ID
	}
	// One write of identities.json for all of them.
	if err := c.alloc.Release(ids...); err != nil {
		c.log.WithError(err).Warn("release unused identities")
		return
	}
	for _, u := range unused {
		if u.prefix.IsValid() {
			if err := c.datapath.DeleteIPCache(u.prefix); err != nil {
				c.log.WithError(err).WithField("prefix", u.prefix).Warn("remove an unused CIDR's ipcache entry")
			}
		}
		c.log.WithFields(logrus.Fields{"identity": uint32(u.ID), "labels": u.Labels.String()}).Debug("released an unused identity")
	}
}

// unusedIdentity is an identity to release. prefix is the CIDR a CIDR
// identity names (its ipcache entry goes too); invalid for a label set.
type unusedIdentity struct {
	identity.Entry
	prefix netip.Prefix
}

// unusedIdentities lists the allocated identities no endpoint in eps has
// and the CIDR identities no rule names. Reserved ones are never released.
func (c *policyController) unusedIdentities(eps []datapath.Endpoint, rules []policy.Rule) []unusedIdentity {
	inUse := map[identity.ID]bool{}
	for _, ep := range eps {
		inUse[identity.ID(ep.Identity)] = true
	}
	cidrsInUse := map[netip.Prefix]bool{}
	for _, p := range policy.CIDRs(rules) {
		cidrsInUse[p.Masked()] = true
	}
	var unused []unusedIdentity
	for _, e := range c.alloc.List() {
		u := unusedIdentity{Entry: e}
		switch e.ID.Kind() {
		case identity.KindAllocated:
			if inUse[e.ID] {
				continue
			}
		case identity.KindCIDR:
			p, ok := identity.CIDRPrefix(e.Labels)
			if !ok || cidrsInUse[p.Masked()] {
				continue
			}
			u.prefix = p
		default:
			continue
		}
		unused = append(unused, u)
	}
	return unused
}
