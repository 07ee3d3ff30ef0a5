package cluster

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ownKeys is every leased key of this node (its node key, its identity
// references, its endpoints) as the node wants it to be, and the one
// writer that makes etcd match: while etcd is away writes queue here; when
// the lease changes every key is written again under the new one (Cilium
// PR #42709: a lost lease took the keys with it). Each key remembers the
// generation and the lease it was last written with, so callers can wait
// for their write and no older write can overtake a newer one.
type ownKeys struct {
	n *Node

	mu       sync.Mutex
	keys     map[string]*ownKey
	progress chan struct{} // closed and replaced after every pass
	// stale are the keys a previous run left on the lease reused at
	// start; once the daemon has restored (restored), those it did not
	// claim again are deleted.
	stale      map[string]bool
	staleLease clientv3.LeaseID
	restored   bool

	wake chan struct{}
}

type ownKey struct {
	value   string
	present bool
	// ref, for an identity reference, is the identity that must exist
	// for the reference to be written.
	ref       *refTarget
	gen       uint64
	doneGen   uint64
	doneLease clientv3.LeaseID
	// err is why the last write of gen under errLease failed for good
	// (not for want of etcd); the key is not retried until it changes
	// or the lease does.
	err      error
	errLease clientv3.LeaseID
}

func newOwnKeys(n *Node) *ownKeys {
	return &ownKeys{n: n, keys: map[string]*ownKey{}, progress: make(chan struct{}), wake: make(chan struct{}, 1)}
}

func (o *ownKeys) kick() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// put wants key = value under the node's lease; it returns the
// generation to wait for.
func (o *ownKeys) put(key, value string, ref *refTarget) uint64 {
	o.mu.Lock()
	k := o.keys[key]
	if k == nil {
		k = &ownKey{}
		o.keys[key] = k
	}
	if k.present && k.value == value && k.err == nil {
		gen := k.gen
		o.mu.Unlock()
		return gen
	}
	k.value, k.present, k.ref, k.err = value, true, ref, nil
	k.gen++
	gen := k.gen
	o.mu.Unlock()
	o.kick()
	return gen
}

// remove wants key gone.
func (o *ownKeys) remove(key string) {
	o.mu.Lock()
	k := o.keys[key]
	if k == nil || !k.present {
		o.mu.Unlock()
		return
	}
	k.present, k.value, k.ref, k.err = false, "", nil, nil
	k.gen++
	o.mu.Unlock()
	o.kick()
}

// needsWrite tells whether k differs from what etcd holds under lease.
func (k *ownKey) needsWrite(lease clientv3.LeaseID) bool {
	if k.err != nil && k.errLease == lease {
		return false
	}
	if k.present {
		return k.doneGen != k.gen || k.doneLease != lease
	}
	// A key written under an earlier lease went with it.
	return k.doneGen != k.gen && k.doneLease == lease && lease != clientv3.NoLease
}

// queued counts the writes waiting for etcd.
func (o *ownKeys) queued() int {
	lease, _ := o.n.currentLease()
	o.mu.Lock()
	defer o.mu.Unlock()
	c := 0
	for _, k := range o.keys {
		if k.needsWrite(lease) {
			c++
		}
	}
	return c
}

// wait waits until key's generation gen is in etcd, or ctx ends; a write
// that failed for good returns its error.
func (o *ownKeys) wait(ctx context.Context, key string, gen uint64) error {
	for {
		lease, ok := o.n.currentLease()
		o.mu.Lock()
		k := o.keys[key]
		progress := o.progress
		switch {
		case k == nil || k.gen > gen:
			o.mu.Unlock()
			return nil // removed or superseded: nothing of gen is left to wait for
		case k.err != nil && k.errLease == lease:
			err := k.err
			o.mu.Unlock()
			return err
		case ok && k.doneGen >= gen && k.doneLease == lease:
			o.mu.Unlock()
			return nil
		}
		o.mu.Unlock()
		select {
		case <-progress:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// adopt records the keys a previous run left on lease.
func (o *ownKeys) adopt(lease clientv3.LeaseID, keys []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.stale, o.staleLease = map[string]bool{}, lease
	for _, k := range keys {
		o.stale[k] = true
	}
}

func (o *ownKeys) markRestored() {
	o.mu.Lock()
	o.restored = true
	o.mu.Unlock()
	o.kick()
}

// run writes until the node closes: at every change, at every
// (re)connection, and again a while after a pass that etcd cut short.
func (o *ownKeys) run() {
	delay := newBackoff()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		select {
		case <-o.n.ctx.Done():
			return
		case <-o.wake:
		case <-retry.C:
		}
		if o.pass() {
			delay.reset()
			continue
		}
		retry.Reset(delay.d)
		delay.d = min(delay.d*2, 3*time.Second)
	}
}

type ownWrite struct {
	key     string
	value   string
	present bool
	ref     *refTarget
	gen     uint64
	stale   bool
}

// pass writes every key that needs it; false means etcd failed and the
// rest waits for a retry.
func (o *ownKeys) pass() bool {
	defer o.announce()
	lease, ok := o.n.currentLease()
	if !ok {
		return true // the reconnection kicks again
	}
	o.mu.Lock()
	var todo []ownWrite
	for key, k := range o.keys {
		if k.needsWrite(lease) {
			todo = append(todo, ownWrite{key: key, value: k.value, present: k.present, ref: k.ref, gen: k.gen})
		} else if !k.present {
			delete(o.keys, key) // gone from etcd already
		}
	}
	if o.restored && o.staleLease == lease {
		for key := range o.stale {
			if k := o.keys[key]; k == nil || !k.present {
				todo = append(todo, ownWrite{key: key, stale: true})
			}
		}
	}
	o.mu.Unlock()
	// The node key first, so that peers know a node before its entries.
	sort.Slice(todo, func(i, j int) bool { return writeOrder(todo[i]) < writeOrder(todo[j]) })
	for _, w := range todo {
		ctx, cancel := context.WithTimeout(o.n.ctx, o.n.cfg.RequestTimeout)
		err := o.write(ctx, lease, w)
		cancel()
		if err != nil && (unavailable(err) || errors.Is(err, rpctypes.ErrLeaseNotFound)) {
			// etcd is away, or the lease went and the session is about
			// to see it and grant another: the writes wait.
			o.n.noteErr(err)
			return false
		}
		o.mu.Lock()
		if w.stale {
			if err == nil {
				delete(o.stale, w.key)
			}
		} else if k := o.keys[w.key]; k != nil && k.gen == w.gen {
			if err != nil {
				k.err, k.errLease = err, lease
			} else {
				k.doneGen, k.doneLease = w.gen, lease
				if !k.present {
					delete(o.keys, w.key)
				}
			}
		}
		o.mu.Unlock()
		if err != nil {
			o.n.log.WithError(err).WithField("key", w.key).Error("write the node's key")
		}
	}
	return true
}

func writeOrder(w ownWrite) string {
	if strings.HasPrefix(w.key, nodesPrefix) {
		return "0" + w.key
	}
	return "1" + w.key
}

func (o *ownKeys) announce() {
	o.mu.Lock()
	close(o.progress)
	o.progress = make(chan struct{})
	o.mu.Unlock()
}

// write makes one key match. Writes are conditional, so that writing what
// etcd holds already (a restart that reuses the lease) changes nothing.
func (o *ownKeys) write(ctx context.Context, lease clientv3.LeaseID, w ownWrite) error {
	n := o.n
	switch {
	case w.stale || !w.present:
		resp, err := n.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.LeaseValue(w.key), "=", lease)).
			Then(clientv3.OpDelete(w.key)).Commit()
		if err != nil {
			return fmt.Errorf("delete %s: %w", w.key, err)
		}
		if resp.Succeeded {
			n.writes.Add(1)
		}
		return nil
	case w.ref != nil:
		return n.identities.writeRef(ctx, lease, w.key, *w.ref)
	default:
		resp, err := n.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.Value(w.key), "=", w.value),
				clientv3.Compare(clientv3.LeaseValue(w.key), "=", lease)).
			Else(clientv3.OpPut(w.key, w.value, clientv3.WithLease(lease))).Commit()
		if err != nil {
			return fmt.Errorf("put %s: %w", w.key, err)
		}
		if !resp.Succeeded {
			n.writes.Add(1)
		}
		return nil
	}
}
