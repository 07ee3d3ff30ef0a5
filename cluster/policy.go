package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ebpfnet/ebpfnet/atomicfile"
	"github.com/ebpfnet/ebpfnet/policy"
)

// Rules is the cluster's policy: one key, ebpfnet/v1/policy, holding the
// rules and their revision, changed only by transactions that compare its
// mod revision (so two imports on two nodes never lose one another), and
// a local copy, a policy.Repository in a file, that a watch keeps current.
// The copy answers Snapshot and Subscribe, so endpoints compile against
// the last rules seen even while etcd is away or the daemon starts
// without it. It implements endpoint.Rules.
type Rules struct {
	n    *Node
	repo *policy.Repository
}

// policyValue is the value of the policy key.
type policyValue struct {
	Revision uint64          `json:"revision"`
	Rules    json.RawMessage `json:"rules"`
}

// Rules returns the cluster's policy, with its local copy kept in
// cachePath; the first call starts its watch and later calls return the
// same Rules.
func (n *Node) Rules(cachePath string) (*Rules, error) {
	n.rulesMu.Lock()
	defer n.rulesMu.Unlock()
	if n.rules != nil {
		return n.rules, nil
	}
	repo, err := policy.NewRepository(cachePath)
	if errors.Is(err, atomicfile.ErrCorrupt) {
		repo, err = n.replaceCorruptPolicyCache(cachePath, err)
	}
	if err != nil {
		return nil, fmt.Errorf("cluster: policy cache: %w", err)
	}
	n.rules = &Rules{n: n, repo: repo}
	n.goRun(func() { n.listWatch(n.ctx, policyKey, nil, n.rules) })
	return n.rules, nil
}

// replaceCorruptPolicyCache moves a corrupt copy of the cluster's rules
// aside and starts an empty one marked lost (endpoint.LostRules): until
// the first list from etcd brings the rules back, the endpoints keep the
// policy they have and new ones deny all, where an empty copy would open
// every endpoint.
func (n *Node) replaceCorruptPolicyCache(path string, corrupt error) (*policy.Repository, error) {
	moved, err := atomicfile.MoveAside(path, time.Now())
	if err != nil {
		return nil, fmt.Errorf("%w; and moving it aside failed: %v", corrupt, err)
	}
	repo, err := policy.NewRepository(path)
	if err != nil {
		return nil, err
	}
	why := fmt.Sprintf("the local copy of the cluster's rules was corrupt (moved to %s); waiting for etcd's", moved)
	if err := repo.MarkLost(why); err != nil {
		return nil, err
	}
	n.log.WithError(corrupt).WithField("movedTo", moved).Warn("the local copy of the cluster's rules is corrupt; new endpoints deny all until etcd's rules arrive")
	return repo, nil
}

// Lost implements endpoint.LostRules: the local copy was corrupt, and
// etcd's rules have not arrived since.
func (r *Rules) Lost() (why string, lost bool) { return r.repo.Lost() }

// Snapshot returns the rules and revision of the local copy.
func (r *Rules) Snapshot() ([]policy.Rule, uint64) { return r.repo.Snapshot() }

// Revision returns the revision of the local copy.
func (r *Rules) Revision() uint64 { return r.repo.Revision() }

// Subscribe calls fn with every new revision, whichever node made it, in
// order.
func (r *Rules) Subscribe(fn func(revision uint64)) (cancel func()) { return r.repo.Subscribe(fn) }

// Import adds rules to the cluster's policy with the replacement rules of
// policy.Merge and returns the new revision. The Rules interface gives no
// context: Config.RequestTimeout bounds the call.
func (r *Rules) Import(rules []policy.Rule) (uint64, error) {
	ctx, cancel := context.WithTimeout(r.n.ctx, r.n.cfg.RequestTimeout)
	defer cancel()
	if err := policy.Validate(rules); err != nil {
		return 0, fmt.Errorf("import policy: %w", err)
	}
	rev, err := r.update(ctx, func(cur []policy.Rule) ([]policy.Rule, error) { return policy.Merge(cur, rules) })
	if err != nil {
		return 0, fmt.Errorf("import policy: %w", err)
	}
	return rev, nil
}

// DeleteAll removes every rule of the cluster's policy.
func (r *Rules) DeleteAll() (uint64, error) {
	ctx, cancel := context.WithTimeout(r.n.ctx, r.n.cfg.RequestTimeout)
	defer cancel()
	rev, err := r.update(ctx, func([]policy.Rule) ([]policy.Rule, error) { return nil, nil })
	if err != nil {
		return 0, fmt.Errorf("delete policy: %w", err)
	}
	return rev, nil
}

// update reads the policy key, changes its rules with fn and writes them
// with the next revision, if nobody wrote the key meanwhile; else again.
// The next revision also passes the local copy's, so that the copy (and
// the endpoints, which never go back to a lower revision) take it.
func (r *Rules) update(ctx context.Context, fn func([]policy.Rule) ([]policy.Rule, error)) (uint64, error) {
	if err := r.n.ready(ctx); err != nil {
		return 0, err
	}
	for {
		resp, err := r.n.cli.Get(ctx, policyKey)
		if err != nil {
			return 0, r.n.etcdErr("read policy", err)
		}
		var cur []policy.Rule
		var rev uint64
		var modRev int64
		if len(resp.Kvs) == 1 {
			if cur, rev, err = decodePolicy(resp.Kvs[0].Value); err != nil {
				return 0, fmt.Errorf("the cluster's policy key is corrupt: %w", err)
			}
			modRev = resp.Kvs[0].ModRevision
		}
		next, err := fn(cur)
		if err != nil {
			return 0, err
		}
		nextRev := max(rev, r.repo.Revision()) + 1
		value, err := encodePolicy(next, nextRev)
		if err != nil {
			return 0, err
		}
		txn, err := r.n.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(policyKey), "=", modRev)).
			Then(clientv3.OpPut(policyKey, value)).Commit()
		if err != nil {
			return 0, r.n.etcdErr("write policy", err)
		}
		if !txn.Succeeded {
			continue // another node wrote first: merge into theirs
		}
		r.n.writes.Add(1)
		if _, err := r.repo.Set(next, nextRev); err != nil {
			// etcd has it; the watch retries the copy.
			r.n.log.WithError(err).Warn("keep the local copy of the policy")
		}
		return nextRev, nil
	}
}

func encodePolicy(rules []policy.Rule, rev uint64) (string, error) {
	if rules == nil {
		rules = []policy.Rule{}
	}
	raw, err := json.Marshal(rules)
	if err != nil {
		return "", fmt.Errorf("encode rules: %w", err)
	}
	return mustJSON(policyValue{Revision: rev, Rules: raw}), nil
}

func decodePolicy(v []byte) ([]policy.Rule, uint64, error) {
	var pv policyValue
	if err := json.Unmarshal(v, &pv); err != nil {
		return nil, 0, err
	}
	rules, err := policy.Parse(pv.Rules)
	if err != nil {
		return nil, 0, err
	}
	return rules, pv.Revision, nil
}

// reset takes the policy key as listed.
func (r *Rules) reset(kvs []*mvccpb.KeyValue, _ int64) {
	if len(kvs) == 0 {
		if _, lost := r.repo.Lost(); lost {
			// The cluster has no rules: a lost copy ends with none.
			if _, err := r.repo.DeleteAll(); err != nil {
				r.n.log.WithError(err).Warn("keep the local copy of the policy")
			}
			return
		}
		r.behind(nil, 0, 0)
		return
	}
	r.take(kvs[0])
}

func (r *Rules) events(evs []*clientv3.Event) {
	for _, ev := range evs {
		switch ev.Type {
		case clientv3.EventTypePut:
			r.take(ev.Kv)
		case clientv3.EventTypeDelete:
			r.behind(nil, 0, 0)
		}
	}
}

// take makes the local copy follow the key.
func (r *Rules) take(kv *mvccpb.KeyValue) {
	rules, rev, err := decodePolicy(kv.Value)
	if err != nil {
		r.n.log.WithError(err).Error("the cluster's policy key is corrupt; keeping the last rules seen")
		return
	}
	if rev < r.repo.Revision() {
		r.behind(rules, rev, kv.ModRevision)
		return
	}
	if _, err := r.repo.Set(rules, rev); err != nil {
		r.n.log.WithError(err).Warn("keep the local copy of the policy")
	}
}

// behind handles a cluster policy older than the local copy: etcd lost
// its data, or the copy is another cluster's. The endpoints never go back
// to a lower revision, so the cluster's rules are written again with a
// revision above the copy's, and every node takes them.
func (r *Rules) behind(rules []policy.Rule, rev uint64, modRev int64) {
	local := r.repo.Revision()
	if rev >= local || local == 0 {
		return
	}
	r.n.log.WithFields(map[string]any{"cluster": rev, "local": local}).Warn("the cluster's policy revision is behind this node's copy; raising it")
	value, err := encodePolicy(rules, local+1)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(r.n.ctx, r.n.cfg.RequestTimeout)
	defer cancel()
	resp, err := r.n.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(policyKey), "=", modRev)).
		Then(clientv3.OpPut(policyKey, value)).Commit()
	if err != nil {
		r.n.log.WithError(err).Warn("raise the cluster's policy revision")
		return
	}
	if resp.Succeeded {
		r.n.writes.Add(1)
	}
}
