package datapath

import (
	"errors"
	"fmt"
	"maps"

	"github.com/cilium/ebpf"

	"github.com/ebpfnet/ebpfnet/policy"
)

// flagsOf is a policy's ebpfnet_endpoints flags word.
func flagsOf(p *policy.EndpointPolicy) uint32 {
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
func (d *Datapath) ApplyPolicy(id uint16, p policy.EndpointPolicy) (added, removed int, err error) {
	if err := p.Validate(policyEntriesMax); err != nil {
		return 0, 0, fmt.Errorf("endpoint %d: %w", id, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st, err := d.liveEndpoint(id)
	if err != nil {
		return 0, 0, err
	}
	add, del := policy.Diff(st.entries, p.Entries)
	for _, k := range add {
		if err := st.policy.Put(k, PolicyEntry{}); err != nil {
			return added, removed, fmt.Errorf("endpoint %d: add policy entry %+v: %w", id, k, err)
		}
		st.entries[k] = struct{}{}
		added++
	}
	if flags := flagsOf(&p); flags != st.flags {
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
func installPolicy(st *endpointState, p *policy.EndpointPolicy) error {
	st.entries = map[policy.Key]struct{}{}
	st.flags = 0
	if p == nil {
		return nil
	}
	keys := make([]policy.Key, 0, len(p.Entries))
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
	st.flags = flagsOf(p)
	return nil
}

// readPolicyEntries lists what a policy map holds.
func readPolicyEntries(m *ebpf.Map) (map[policy.Key]struct{}, error) {
	out := map[policy.Key]struct{}{}
	var k policy.Key
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
func (d *Datapath) PolicyEntries(id uint16) ([]policy.Key, error) {
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
	out := make([]policy.Key, 0, len(held))
	for k := range held {
		out = append(out, k)
	}
	policy.SortKeys(out)
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
