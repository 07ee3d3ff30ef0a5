package datapath

import (
	"errors"
	"fmt"
	"maps"
	"sort"

	"github.com/cilium/ebpf"
)

// EndpointPolicy is everything the datapath enforces for one endpoint: the
// enforcement flags and the allow entries of its policy map.
type EndpointPolicy struct {
	IngressEnforced bool
	EgressEnforced  bool
	// Audit lets denied new flows pass, reported with verdict audit.
	Audit   bool
	Entries map[PolicyKey]struct{}
}

// Flags is the policy's ebpfnet_endpoints flags word.
func (p *EndpointPolicy) Flags() uint32 {
	var f uint32
	if p.IngressEnforced {
		f |= FlagEnforceIngress
	}
	if p.EgressEnforced {
		f |= FlagEnforceEgress
	}
	if p.Audit {
		f |= FlagAudit
	}
	return f
}

func (p *EndpointPolicy) validate() error {
	for k := range p.Entries {
		if k.Direction != PolicyIngress && k.Direction != PolicyEgress {
			return fmt.Errorf("policy key %+v: direction must be %d or %d", k, PolicyIngress, PolicyEgress)
		}
	}
	if len(p.Entries) > policyEntriesMax {
		return fmt.Errorf("policy has %d entries, the map holds %d", len(p.Entries), policyEntriesMax)
	}
	return nil
}

// policyDiff returns the keys of want that have holds lacks (to add) and
// those holds has that want lacks (to delete), each sorted so that updates
// happen in a stable order.
func policyDiff(holds, want map[PolicyKey]struct{}) (add, del []PolicyKey) {
	for k := range want {
		if _, ok := holds[k]; !ok {
			add = append(add, k)
		}
	}
	for k := range holds {
		if _, ok := want[k]; !ok {
			del = append(del, k)
		}
	}
	sortPolicyKeys(add)
	sortPolicyKeys(del)
	return add, del
}

func sortPolicyKeys(ks []PolicyKey) {
	sort.Slice(ks, func(i, j int) bool {
		a, b := ks[i], ks[j]
		if a.Direction != b.Direction {
			return a.Direction < b.Direction
		}
		if a.Identity != b.Identity {
			return a.Identity < b.Identity
		}
		if a.Proto != b.Proto {
			return a.Proto < b.Proto
		}
		return a.DPort < b.DPort
	})
}

// liveEndpoint is endpoint id, for a change of its policy or identity; d.mu
// is held. An endpoint whose deletion has begun is not: DeleteEndpoint has
// closed its policy map, and one that failed midway stays in d.eps only for
// DeleteEndpoint to retry.
func (d *Datapath) liveEndpoint(id uint16) (*endpointState, error) {
	if d.closed {
		return nil, errors.New("datapath closed")
	}
	st, ok := d.eps[id]
	if !ok || st.policy == nil {
		return nil, fmt.Errorf("endpoint %d: %w", id, ErrNoEndpoint)
	}
	return st, nil
}

// ApplyPolicy makes endpoint id's policy p, writing only the difference
// from what its map holds: new entries first, then the flags, then the
// stale entries go. Each step only widens (new entries before the flags
// that may start enforcing them) or only narrows what is already decided
// (stale entries once the flags no longer need them), so no packet meets a
// mix that neither the old nor the new policy would give. Flows already
// established (conntrack) stay allowed, as in Cilium. On error the map
// holds a mix of both and the counts say how far it got; calling again
// with the same p finishes the job.
func (d *Datapath) ApplyPolicy(id uint16, p EndpointPolicy) (added, removed int, err error) {
	if err := p.validate(); err != nil {
		return 0, 0, fmt.Errorf("endpoint %d: %w", id, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st, err := d.liveEndpoint(id)
	if err != nil {
		return 0, 0, err
	}
	add, del := policyDiff(st.entries, p.Entries)
	for _, k := range add {
		if err := st.policy.Put(k, PolicyEntry{}); err != nil {
			return added, removed, fmt.Errorf("endpoint %d: add policy entry %+v: %w", id, k, err)
		}
		st.entries[k] = struct{}{}
		added++
	}
	if flags := p.Flags(); flags != st.flags {
		if err := d.publishEndpoint(&st.ep, flags); err != nil {
			return added, removed, err
		}
		st.flags = flags
	}
	for _, k := range del {
		if err := ignoreNotExist(st.policy.Delete(k)); err != nil {
			return added, removed, fmt.Errorf("endpoint %d: delete policy entry %+v: %w", id, k, err)
		}
		delete(st.entries, k)
		removed++
	}
	return added, removed, nil
}

// installPolicy writes a new endpoint's initial entries into its still
// unused map and records them, before anything can run against it.
// CreateEndpoint has validated p before creating anything.
func installPolicy(st *endpointState, p *EndpointPolicy) error {
	st.entries = map[PolicyKey]struct{}{}
	st.flags = 0
	if p == nil {
		return nil
	}
	keys := make([]PolicyKey, 0, len(p.Entries))
	for k := range p.Entries {
		keys = append(keys, k)
	}
	if len(keys) > 0 {
		vals := make([]PolicyEntry, len(keys))
		if _, err := st.policy.BatchUpdate(keys, vals, nil); err != nil {
			return fmt.Errorf("install initial policy of endpoint %d: %w", st.ep.ID, err)
		}
	}
	st.entries = maps.Clone(p.Entries)
	st.flags = p.Flags()
	return nil
}

// readPolicyEntries lists what a policy map holds.
func readPolicyEntries(m *ebpf.Map) (map[PolicyKey]struct{}, error) {
	out := map[PolicyKey]struct{}{}
	var k PolicyKey
	var v PolicyEntry
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k] = struct{}{}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate policy map: %w", err)
	}
	return out, nil
}

// PolicyEntries lists what endpoint id's policy map holds, read from the
// map itself (not the cache), sorted by direction, identity, protocol and
// port.
func (d *Datapath) PolicyEntries(id uint16) ([]PolicyKey, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st, err := d.liveEndpoint(id)
	if err != nil {
		return nil, err
	}
	held, err := readPolicyEntries(st.policy)
	if err != nil {
		return nil, fmt.Errorf("endpoint %d: %w", id, err)
	}
	out := make([]PolicyKey, 0, len(held))
	for k := range held {
		out = append(out, k)
	}
	sortPolicyKeys(out)
	return out, nil
}

// SetEndpointIdentity gives endpoint id the identity the daemon derived
// from its container's labels, and records the container it belongs to.
// The restore record (ep_config.h) is rewritten first, then the
// ebpfnet_endpoints entry the programs read: a crash in between restores
// the new identity. If the map write fails, the old record is put back.
func (d *Datapath) SetEndpointIdentity(id uint16, identity uint32, containerID, containerName string, labels map[string]string) error {
	if identity == 0 {
		return fmt.Errorf("endpoint %d: identity 0 is reserved for \"any\"", id)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st, err := d.liveEndpoint(id)
	if err != nil {
		return err
	}
	old := cloneEndpoint(&st.ep)
	ep := cloneEndpoint(&st.ep)
	ep.Identity = identity
	ep.ContainerID = containerID
	ep.ContainerName = containerName
	ep.Labels = maps.Clone(labels)
	if err := d.writeRecord(&ep); err != nil {
		return err
	}
	if err := d.publishEndpoint(&ep, st.flags); err != nil {
		if rerr := d.writeRecord(&old); rerr != nil {
			err = errors.Join(err, fmt.Errorf("put back record: %w", rerr))
		}
		return err
	}
	st.ep = ep
	return nil
}
