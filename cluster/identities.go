package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ebpfnet/ebpfnet/atomicfile"
	"github.com/ebpfnet/ebpfnet/identity"
	"github.com/ebpfnet/ebpfnet/labels"
)

// Identities numbers container label sets for the whole cluster: the
// same set gets the same number on every node. It implements
// identity.Allocator with the FileAllocator's contract; the differences
// are those of a shared store: a number is freed only once no node has
// referenced it for Config.IdentityGrace, and a local cache (a watch of
// identities/id/) answers Lookup, All, and Allocate of a known set even
// while etcd is away.
type Identities struct {
	n *Node

	mu    sync.Mutex
	byID  map[identity.ID]cachedIdentity
	byKey map[string]identity.ID // canonical label string -> ID
	// refs are this node's references; while one is held, the node
	// holds the leased key identities/ref/<N>/<node>.
	refs map[identity.ID]int
	// cursor is where the search for a free number starts: numbers go
	// round the circle from a point of the node's own, so that two
	// nodes rarely race for the same number and a freed one comes back
	// late (a policy map that still names it would allow its new
	// owner).
	cursor identity.ID
	// unref is when the collector first saw an identity without any
	// reference, by the identity's mod revision.
	unref  map[identity.ID]unrefMark
	notify identity.Notifier
	// dirty says the cache changed since the cache file was written.
	dirty bool

	cacheMu sync.Mutex // serialises writes of the cache file
}

var _ identity.Allocator = (*Identities)(nil)

type cachedIdentity struct {
	labels labels.Labels
	key    string // labels.String()
	modRev int64  // 0 when loaded from the cache file
}

type unrefMark struct {
	since  time.Time
	modRev int64
}

// refTarget is what a reference key stands on: the identity whose key
// must hold these labels for the reference to be written.
type refTarget struct {
	id     identity.ID
	labels string // the value of identities/id/<N>
	hash   string
}

// identityValue is the value of identities/id/<N>: the labels, sorted, so
// that every node writes the same bytes for the same set.
func identityValue(ls labels.Labels) string {
	sorted := ls.Sorted()
	if sorted == nil {
		sorted = []labels.Label{}
	}
	return mustJSON(sorted)
}

func parseIdentityValue(v []byte) (labels.Labels, error) {
	var ls []labels.Label
	if err := json.Unmarshal(v, &ls); err != nil {
		return nil, err
	}
	return labels.FromLabels(ls...), nil
}

func labelsHash(ls labels.Labels) string {
	sum := sha256.Sum256([]byte(ls.String()))
	return hex.EncodeToString(sum[:])
}

func targetOf(id identity.ID, ls labels.Labels) refTarget {
	return refTarget{id: id, labels: identityValue(ls), hash: labelsHash(ls)}
}

func newIdentities(n *Node) (*Identities, error) {
	a := &Identities{
		n:      n,
		byID:   map[identity.ID]cachedIdentity{},
		byKey:  map[string]identity.ID{},
		refs:   map[identity.ID]int{},
		unref:  map[identity.ID]unrefMark{},
		cursor: n.state.Cursor,
	}
	if a.cursor.Kind() != identity.KindAllocated {
		a.cursor = identity.MinAllocated + identity.ID(rand.IntN(int(identity.MaxAllocated-identity.MinAllocated+1)))
	}
	if err := a.loadCache(); err != nil {
		return nil, err
	}
	return a, nil
}

// Identities returns the cluster's identity allocator.
func (n *Node) Identities() *Identities { return n.identities }

// Allocate implements identity.Allocator. A label set the cache knows
// returns at once: its reference is written before the return when etcd
// answers (within ctx), and queued when it does not. A new set needs
// etcd: without it, Allocate fails at once with an error that wraps
// ErrUnreachable (Node.Connected tells when to try again).
func (a *Identities) Allocate(ctx context.Context, ls labels.Labels) (identity.ID, error) {
	if ls.HasSource(labels.SourceReserved) || ls.HasSource(labels.SourceCIDR) {
		for _, id := range []identity.ID{identity.Host, identity.World, identity.Init} {
			if r, _ := identity.ReservedLabels(id); r.Equal(ls) {
				return id, nil
			}
		}
		return 0, fmt.Errorf("allocate identity for %q: reserved and CIDR labels cannot be allocated", ls.String())
	}
	key := ls.String()
	a.mu.Lock()
	id, known := a.byKey[key]
	a.mu.Unlock()
	if !known {
		if !a.n.isConnected() {
			a.n.mu.Lock()
			err := a.n.lastErr
			a.n.mu.Unlock()
			return 0, fmt.Errorf("allocate identity for %q: a new label set needs etcd: %w", key, a.n.unreachable(err))
		}
		var err error
		if id, err = a.create(ctx, ls); err != nil {
			return 0, fmt.Errorf("allocate identity for %q: %w", key, err)
		}
	}
	if err := a.reference(ctx, id, ls); err != nil {
		return 0, fmt.Errorf("allocate identity for %q: %w", key, err)
	}
	return id, nil
}

// reference takes one of this node's references on id and, for the
// first, waits for its key (unless etcd is away: then it stays queued).
func (a *Identities) reference(ctx context.Context, id identity.ID, ls labels.Labels) error {
	key := refKey(id, a.n.cfg.NodeName)
	a.mu.Lock()
	a.refs[id]++
	first := a.refs[id] == 1
	var gen uint64
	if first {
		gen = a.n.own.put(key, "", ptr(targetOf(id, ls)))
	}
	a.mu.Unlock()
	if !first || !a.n.isConnected() {
		return nil
	}
	err := a.n.own.wait(ctx, key, gen)
	if err == nil || ctx.Err() != nil {
		return nil // written, or queued: the writer goes on
	}
	a.drop(id)
	return err
}

func ptr[T any](v T) *T { return &v }

// drop gives back one reference.
func (a *Identities) drop(id identity.ID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.refs[id]--; a.refs[id] > 0 {
		return
	}
	delete(a.refs, id)
	a.n.own.remove(refKey(id, a.n.cfg.NodeName))
	a.n.mu.Lock()
	delete(a.n.conflicts, id)
	a.n.mu.Unlock()
}

// create numbers a label set etcd may not know: a free number from the
// cursor on, taken with a transaction that fails if the set or the number
// has been taken meanwhile; when the set has, its number is the answer.
func (a *Identities) create(ctx context.Context, ls labels.Labels) (identity.ID, error) {
	value, hash := identityValue(ls), labelsHash(ls)
	tried := map[identity.ID]bool{}
	for range 64 {
		cand, ok := a.candidate(tried)
		if !ok {
			return 0, fmt.Errorf("all identities %d..%d are in use", identity.MinAllocated, identity.MaxAllocated)
		}
		resp, err := a.n.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(labelsKey(hash)), "=", 0),
				clientv3.Compare(clientv3.CreateRevision(idKey(cand)), "=", 0)).
			Then(clientv3.OpPut(idKey(cand), value), clientv3.OpPut(labelsKey(hash), strconv.FormatUint(uint64(cand), 10))).
			Else(clientv3.OpGet(labelsKey(hash))).Commit()
		if err != nil {
			return 0, a.n.etcdErr("create identity", err)
		}
		if resp.Succeeded {
			a.n.writes.Add(1)
			a.learn(cand, ls, resp.Header.Revision)
			a.saveCursor()
			return cand, nil
		}
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			tried[cand] = true // the number is someone else's
			continue
		}
		// Another node numbered the set first.
		n, err := strconv.ParseUint(string(kvs[0].Value), 10, 32)
		if err != nil {
			return 0, fmt.Errorf("labels key %s holds %q, not a number", kvs[0].Key, kvs[0].Value)
		}
		theirs := identity.ID(n)
		got, err := a.n.cli.Get(ctx, idKey(theirs))
		if err != nil {
			return 0, a.n.etcdErr("read identity", err)
		}
		if len(got.Kvs) == 1 && string(got.Kvs[0].Value) == value {
			a.learn(theirs, ls, got.Kvs[0].ModRevision)
			return theirs, nil
		}
		// Freed in between: try again.
	}
	return 0, errors.New("the identity keys kept changing; try again")
}

// candidate returns the first number from the cursor on that the cache
// does not know and was not tried, and moves the cursor past it.
func (a *Identities) candidate(tried map[identity.ID]bool) (identity.ID, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	size := int(identity.MaxAllocated - identity.MinAllocated + 1)
	id := a.cursor
	for range size {
		if id < identity.MinAllocated || id > identity.MaxAllocated {
			id = identity.MinAllocated
		}
		if _, used := a.byID[id]; !used && !tried[id] {
			a.cursor = id + 1
			return id, true
		}
		id++
	}
	return 0, false
}

func (a *Identities) saveCursor() {
	a.mu.Lock()
	cur := a.cursor
	a.mu.Unlock()
	if err := a.n.saveState(func(s *stateFile) { s.Cursor = cur }); err != nil {
		a.n.log.WithError(err).Warn("keep the identity cursor")
	}
}

// writeRef writes this node's reference key on t.id, in a transaction that
// holds only while identities/id/<N> holds t's labels. An identity
// collected while the node was away is created again with the same
// number; one whose number went to other labels is a conflict the daemon
// must hear of (Status.Conflicts).
func (a *Identities) writeRef(ctx context.Context, lease clientv3.LeaseID, key string, t refTarget) error {
	n := a.n
	for range 4 {
		resp, err := n.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.Value(idKey(t.id)), "=", t.labels)).
			Then(clientv3.OpTxn(
				[]clientv3.Cmp{clientv3.Compare(clientv3.LeaseValue(key), "=", lease)},
				nil,
				[]clientv3.Op{clientv3.OpPut(key, "", clientv3.WithLease(lease))})).
			Else(clientv3.OpGet(idKey(t.id)), clientv3.OpGet(labelsKey(t.hash))).Commit()
		if err != nil {
			return fmt.Errorf("write reference %s: %w", key, err)
		}
		if resp.Succeeded {
			if !resp.Responses[0].GetResponseTxn().Succeeded {
				n.writes.Add(1)
			}
			return nil
		}
		idKVs := resp.Responses[0].GetResponseRange().Kvs
		labelKVs := resp.Responses[1].GetResponseRange().Kvs
		if len(idKVs) != 0 || len(labelKVs) != 0 {
			n.mu.Lock()
			n.conflicts[t.id] = true
			n.mu.Unlock()
			return fmt.Errorf("identity %d (%s) was freed while this node could not reach etcd, and its number or its labels are taken now: the endpoints that hold it need their identity again", t.id, t.labels)
		}
		again, err := n.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(idKey(t.id)), "=", 0),
				clientv3.Compare(clientv3.CreateRevision(labelsKey(t.hash)), "=", 0)).
			Then(clientv3.OpPut(idKey(t.id), t.labels),
				clientv3.OpPut(labelsKey(t.hash), strconv.FormatUint(uint64(t.id), 10)),
				clientv3.OpPut(key, "", clientv3.WithLease(lease))).Commit()
		if err != nil {
			return fmt.Errorf("create identity %d again: %w", t.id, err)
		}
		if again.Succeeded {
			n.writes.Add(1)
			n.log.WithField("identity", t.id).Warn("an identity this node holds was freed while etcd was away; created it again with the same number")
			return nil
		}
	}
	return fmt.Errorf("write reference %s: the identity keys kept changing", key)
}

// Release implements identity.Allocator. The last reference's key is
// deleted in the background; the identity itself goes once no node has
// held it for the grace period.
func (a *Identities) Release(_ context.Context, id identity.ID) error {
	if id.Kind() == identity.KindReserved {
		return nil
	}
	a.mu.Lock()
	held := a.refs[id]
	a.mu.Unlock()
	if held <= 0 {
		return fmt.Errorf("release identity %d: no reference is held", id)
	}
	a.drop(id)
	return nil
}

// Lookup implements identity.Allocator, from the cache.
func (a *Identities) Lookup(id identity.ID) (labels.Labels, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.byID[id]; ok {
		return c.labels.Clone(), true
	}
	return nil, false
}

// All implements identity.Allocator, from the cache.
func (a *Identities) All() map[identity.ID]labels.Labels {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[identity.ID]labels.Labels, len(a.byID))
	for id, c := range a.byID {
		out[id] = c.labels.Clone()
	}
	return out
}

// References returns this node's references on id.
func (a *Identities) References(id identity.ID) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.refs[id]
}

// Subscribe implements identity.Allocator: every identity that appears
// or goes, on any node, in the order the cache learnt it.
func (a *Identities) Subscribe(fn func(identity.Change)) (cancel func()) {
	return a.notify.Add(fn)
}

// learn records an identity this node has just read or written, ahead of
// the watch, which then finds it known.
func (a *Identities) learn(id identity.ID, ls labels.Labels, modRev int64) {
	a.mu.Lock()
	a.applyLocked(id, ls, modRev)
	a.mu.Unlock()
	a.changed()
}

// applyLocked makes the cache hold id = ls as of modRev; an older
// revision than the cache's changes nothing. a.mu is held.
func (a *Identities) applyLocked(id identity.ID, ls labels.Labels, modRev int64) {
	cur, ok := a.byID[id]
	if ok && modRev != 0 && cur.modRev > modRev {
		return
	}
	key := ls.String()
	if ok && cur.key == key {
		if modRev > cur.modRev {
			cur.modRev = modRev
			a.byID[id] = cur
		}
		return
	}
	if ok {
		a.forgetLocked(id)
	}
	a.byID[id] = cachedIdentity{labels: ls.Clone(), key: key, modRev: modRev}
	a.byKey[key] = id
	a.dirty = true
	a.notify.Queue(identity.Change{ID: id, Labels: ls.Clone()})
}

// forgetLocked drops id from the cache. a.mu is held.
func (a *Identities) forgetLocked(id identity.ID) {
	cur, ok := a.byID[id]
	if !ok {
		return
	}
	delete(a.byID, id)
	if a.byKey[cur.key] == id {
		delete(a.byKey, cur.key)
	}
	a.dirty = true
	a.notify.Queue(identity.Change{ID: id, Labels: cur.labels.Clone(), Freed: true})
}

// changed delivers queued changes and keeps the cache file current.
func (a *Identities) changed() {
	a.notify.Deliver()
	if err := a.saveCache(); err != nil {
		a.n.log.WithError(err).Warn("keep the identity cache")
	}
}

// reset is the watch's full list at revision rev.
func (a *Identities) reset(kvs []*mvccpb.KeyValue, rev int64) {
	a.mu.Lock()
	seen := map[identity.ID]bool{}
	for _, kv := range kvs {
		id, ls, ok := a.parse(kv)
		if !ok {
			continue
		}
		seen[id] = true
		a.applyLocked(id, ls, kv.ModRevision)
	}
	for id, c := range a.byID {
		if !seen[id] && c.modRev <= rev {
			a.forgetLocked(id)
		}
	}
	a.mu.Unlock()
	a.changed()
}

// events applies the watch's events in order.
func (a *Identities) events(evs []*clientv3.Event) {
	a.mu.Lock()
	for _, ev := range evs {
		id, err := parseIDKey(string(ev.Kv.Key))
		if err != nil {
			continue
		}
		switch ev.Type {
		case clientv3.EventTypePut:
			if _, ls, ok := a.parse(ev.Kv); ok {
				a.applyLocked(id, ls, ev.Kv.ModRevision)
			}
		case clientv3.EventTypeDelete:
			if c, ok := a.byID[id]; ok && c.modRev < ev.Kv.ModRevision {
				a.forgetLocked(id)
			}
		}
	}
	a.mu.Unlock()
	a.changed()
}

func (a *Identities) parse(kv *mvccpb.KeyValue) (identity.ID, labels.Labels, bool) {
	id, err := parseIDKey(string(kv.Key))
	if err == nil && id.Kind() != identity.KindAllocated {
		err = fmt.Errorf("identity %d is outside %d..%d", id, identity.MinAllocated, identity.MaxAllocated)
	}
	var ls labels.Labels
	if err == nil {
		ls, err = parseIdentityValue(kv.Value)
	}
	if err != nil {
		a.n.log.WithError(err).WithField("key", string(kv.Key)).Warn("ignoring a malformed identity key")
		return 0, nil, false
	}
	return id, ls, true
}

// watch keeps the cache current until the node closes.
func (a *Identities) watch() {
	a.n.listWatch(a.n.ctx, identityIDs, []clientv3.OpOption{clientv3.WithPrefix()}, a)
}

// collect frees, every so often, the identities that have had no
// reference on any node for the grace period. Every node collects; the
// transaction makes that safe.
func (a *Identities) collect() {
	interval := min(max(a.n.cfg.IdentityGrace/4, 100*time.Millisecond), time.Minute)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-a.n.ctx.Done():
			return
		case <-t.C:
		}
		if !a.n.isConnected() {
			continue
		}
		ctx, cancel := context.WithTimeout(a.n.ctx, a.n.cfg.RequestTimeout)
		if err := a.collectOnce(ctx); err != nil {
			a.n.log.WithError(err).Debug("collect unreferenced identities")
		}
		cancel()
	}
}

func (a *Identities) collectOnce(ctx context.Context) error {
	resp, err := a.n.cli.Get(ctx, identityRefs, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return a.n.etcdErr("list identity references", err)
	}
	referenced := map[identity.ID]bool{}
	for _, kv := range resp.Kvs {
		if id, _, err := parseRefKey(string(kv.Key)); err == nil {
			referenced[id] = true
		}
	}
	type candidate struct {
		id     identity.ID
		modRev int64
		hash   string
	}
	var due []candidate
	now := time.Now()
	a.mu.Lock()
	for id, c := range a.byID {
		if referenced[id] || a.refs[id] > 0 || c.modRev == 0 {
			delete(a.unref, id)
			continue
		}
		m, ok := a.unref[id]
		if !ok || m.modRev != c.modRev {
			a.unref[id] = unrefMark{since: now, modRev: c.modRev}
			continue
		}
		if now.Sub(m.since) >= a.n.cfg.IdentityGrace {
			due = append(due, candidate{id: id, modRev: c.modRev, hash: labelsHash(c.labels)})
		}
	}
	for id := range a.unref {
		if _, ok := a.byID[id]; !ok {
			delete(a.unref, id)
		}
	}
	a.mu.Unlock()
	sort.Slice(due, func(i, j int) bool { return due[i].id < due[j].id })
	for _, c := range due {
		if h := a.n.hooks.beforeCollect.Load(); h != nil {
			(*h)(c.id)
		}
		// Fails if the identity changed or any node took a reference
		// since it was read: a compare of CreateRevision = 0 over a
		// prefix holds only when no key has it (an empty range compares
		// as one absent key).
		resp, err := a.n.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(idKey(c.id)), "=", c.modRev),
				clientv3.Compare(clientv3.CreateRevision(refsOf(c.id)), "=", 0).WithPrefix(),
				clientv3.Compare(clientv3.Value(labelsKey(c.hash)), "=", strconv.FormatUint(uint64(c.id), 10))).
			Then(clientv3.OpDelete(idKey(c.id)), clientv3.OpDelete(labelsKey(c.hash))).Commit()
		if err != nil {
			return a.n.etcdErr("free identity", err)
		}
		if resp.Succeeded {
			a.n.writes.Add(1)
			a.n.log.WithField("identity", c.id).Info("freed an identity no node had referenced for the grace period")
		}
	}
	return nil
}

// The cache file: the identities last seen, so that a daemon started
// while etcd is away still knows them.

type identityCacheFile struct {
	Version    int                 `json:"version"`
	Identities []identityCacheItem `json:"identities"`
}

type identityCacheItem struct {
	ID     identity.ID    `json:"id"`
	Labels []labels.Label `json:"labels"`
}

const identityCacheVersion = 1

func (a *Identities) loadCache() error {
	path := a.n.cfg.IdentityCachePath
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cluster: read identity cache: %w", err)
	}
	var f identityCacheFile
	if err := json.Unmarshal(data, &f); err != nil || f.Version != identityCacheVersion {
		// Only a cache: etcd has the truth. Start without it.
		a.n.log.WithField("path", path).Warn("ignoring an unreadable identity cache")
		return nil
	}
	for _, it := range f.Identities {
		if it.ID.Kind() == identity.KindAllocated {
			ls := labels.FromLabels(it.Labels...)
			a.byID[it.ID] = cachedIdentity{labels: ls, key: ls.String()}
			a.byKey[ls.String()] = it.ID
		}
	}
	return nil
}

func (a *Identities) saveCache() error {
	path := a.n.cfg.IdentityCachePath
	if path == "" {
		return nil
	}
	a.cacheMu.Lock()
	defer a.cacheMu.Unlock()
	a.mu.Lock()
	if !a.dirty {
		a.mu.Unlock()
		return nil
	}
	a.dirty = false
	f := identityCacheFile{Version: identityCacheVersion, Identities: make([]identityCacheItem, 0, len(a.byID))}
	for id, c := range a.byID {
		f.Identities = append(f.Identities, identityCacheItem{ID: id, Labels: c.labels.Sorted()})
	}
	a.mu.Unlock()
	sort.Slice(f.Identities, func(i, j int) bool { return f.Identities[i].ID < f.Identities[j].ID })
	data, err := json.MarshalIndent(f, "", "  ")
	if err == nil {
		err = atomicfile.Write(path, append(data, '\n'), 0o600)
	}
	if err != nil {
		a.mu.Lock()
		a.dirty = true // written next time
		a.mu.Unlock()
		return fmt.Errorf("write identity cache: %w", err)
	}
	return nil
}
