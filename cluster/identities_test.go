package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ebpfnet/ebpfnet/identity"
	"github.com/ebpfnet/ebpfnet/labels"
)

func app(name string) labels.Labels { return labels.FromDocker(map[string]string{"app": name}) }

// refHolders returns the nodes holding a reference key on id.
func refHolders(t *testing.T, cli *clientv3.Client, id identity.ID) []string {
	t.Helper()
	resp, err := cli.Get(ctxT(t), refsOf(id), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, kv := range resp.Kvs {
		out = append(out, strings.TrimPrefix(string(kv.Key), refsOf(id)))
	}
	return out
}

func exists(t *testing.T, cli *clientv3.Client, key string) bool {
	t.Helper()
	resp, err := cli.Get(ctxT(t), key)
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Kvs) == 1
}

func TestSameLabelsGetTheSameIdentityOnEveryNode(t *testing.T) {
	e := startEtcd(t)
	a := connectNode(t, nodeOpts{name: "a", ip: "192.0.2.1", endpoint: e.client})
	b := connectNode(t, nodeOpts{name: "b", ip: "192.0.2.2", endpoint: e.client})
	waitConnected(t, a)
	waitConnected(t, b)

	const sets = 8
	got := map[string][sets]identity.ID{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range []*Node{a, b} {
		for i := range sets {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id, err := n.Identities().Allocate(ctxT(t), app(fmt.Sprint(i)))
				if err != nil {
					t.Errorf("%s: allocate app=%d: %v", n.Name(), i, err)
					return
				}
				mu.Lock()
				ids := got[n.Name()]
				ids[i] = id
				got[n.Name()] = ids
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if got["a"] != got["b"] {
		t.Fatalf("nodes disagree: a %d, b %d", got["a"], got["b"])
	}
	seen := map[identity.ID]bool{}
	cli := e.newClient()
	defer cli.Close()
	for i, id := range got["a"] {
		if id.Kind() != identity.KindAllocated || seen[id] {
			t.Fatalf("app=%d got %d: outside the range or given twice (%d)", i, id, got["a"])
		}
		seen[id] = true
		if h := refHolders(t, cli, id); len(h) != 2 {
			t.Fatalf("identity %d has references from %v, want a and b", id, h)
		}
		for _, n := range []*Node{a, b} {
			eventually(t, "the cache to learn the identity", func() bool {
				ls, ok := n.Identities().Lookup(id)
				return ok && ls.Equal(app(fmt.Sprint(i)))
			})
		}
	}
	resp, err := cli.Get(ctxT(t), identityIDs, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != sets {
		t.Fatalf("%d identity keys (%v), want %d", resp.Count, err, sets)
	}
}

func TestReservedAndCIDRLabelsAreNotAllocated(t *testing.T) {
	e := startEtcd(t)
	a := connectNode(t, nodeOpts{name: "a", ip: "192.0.2.1", endpoint: e.client})
	waitConnected(t, a)
	if id, err := a.Identities().Allocate(ctxT(t), labels.FromLabels(labels.World())); err != nil || id != identity.World {
		t.Fatalf("reserved:world = %d, %v", id, err)
	}
	mixed := labels.FromLabels(labels.World(), labels.New(labels.SourceContainer, "app", "x"))
	if _, err := a.Identities().Allocate(ctxT(t), mixed); err == nil {
		t.Fatal("a set with a reserved label was allocated")
	}
	if err := a.Identities().Release(ctxT(t), 999); err == nil {
		t.Fatal("releasing an identity without a reference succeeded")
	}
}

func TestIdentityIsFreedOnlyAfterTheGracePeriodWithoutReferences(t *testing.T) {
	e := startEtcd(t)
	grace := func(c *Config) { c.IdentityGrace = 1500 * time.Millisecond }
	a := connectNode(t, nodeOpts{name: "a", ip: "192.0.2.1", endpoint: e.client, mutate: grace})
	b := connectNode(t, nodeOpts{name: "b", ip: "192.0.2.2", endpoint: e.client, mutate: grace})
	waitConnected(t, a)
	waitConnected(t, b)
	var changes []identity.Change
	var mu sync.Mutex
	cancel := a.Identities().Subscribe(func(c identity.Change) {
		mu.Lock()
		changes = append(changes, c)
		mu.Unlock()
	})
	defer cancel()

	id, err := a.Identities().Allocate(ctxT(t), app("web"))
	if err != nil {
		t.Fatal(err)
	}
	if again, err := a.Identities().Allocate(ctxT(t), app("web")); err != nil || again != id {
		t.Fatalf("second allocate = %d, %v", again, err)
	}
	if idB, err := b.Identities().Allocate(ctxT(t), app("web")); err != nil || idB != id {
		t.Fatalf("b: %d, %v; want %d", idB, err, id)
	}
	if a.Identities().References(id) != 2 {
		t.Fatalf("a holds %d references, want 2", a.Identities().References(id))
	}
	cli := e.newClient()
	defer cli.Close()

	// a drops both of its references: its key goes, b's holds the identity.
	for range 2 {
		if err := a.Identities().Release(ctxT(t), id); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "a's reference key to go", func() bool {
		h := refHolders(t, cli, id)
		return len(h) == 1 && h[0] == "b"
	})
	time.Sleep(3 * time.Second) // twice the grace
	if !exists(t, cli, idKey(id)) {
		t.Fatal("an identity that b still holds was freed")
	}

	// b drops its own: the identity goes after the grace, not before.
	if err := b.Identities().Release(ctxT(t), id); err != nil {
		t.Fatal(err)
	}
	released := time.Now()
	eventually(t, "the identity to be freed", func() bool { return !exists(t, cli, idKey(id)) })
	if waited := time.Since(released); waited < 1500*time.Millisecond {
		t.Fatalf("freed %s after the last release, before the grace of 1.5s", waited)
	}
	if exists(t, cli, labelsKey(labelsHash(app("web")))) {
		t.Fatal("the labels key outlived its identity")
	}
	eventually(t, "a's cache to forget it", func() bool { _, ok := a.Identities().Lookup(id); return !ok })
	mu.Lock()
	defer mu.Unlock()
	if len(changes) != 2 || changes[0].ID != id || changes[0].Freed || changes[1].ID != id || !changes[1].Freed {
		t.Fatalf("a's subscriber saw %+v, want %d appearing then freed", changes, id)
	}
}

func TestAReferenceTakenDuringCollectionWins(t *testing.T) {
	e := startEtcd(t)
	a := connectNode(t, nodeOpts{name: "a", ip: "192.0.2.1", endpoint: e.client,
		mutate: func(c *Config) { c.IdentityGrace = 200 * time.Millisecond }})
	b := connectNode(t, nodeOpts{name: "b", ip: "192.0.2.2", endpoint: e.client})
	waitConnected(t, a)
	waitConnected(t, b)
	id, err := b.Identities().Allocate(ctxT(t), app("db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Identities().Release(ctxT(t), id); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a to learn the identity", func() bool { _, ok := a.Identities().Lookup(id); return ok })

	// a's collector decides to free the identity; before its transaction
	// runs, b takes a reference again.
	hooked := make(chan error, 1)
	var once sync.Once
	hook := func(c identity.ID) {
		if c != id {
			return
		}
		once.Do(func() {
			got, err := b.Identities().Allocate(context.Background(), app("db"))
			if err == nil && got != id {
				err = fmt.Errorf("b got %d, want %d", got, id)
			}
			hooked <- err
		})
	}
	a.hooks.beforeCollect.Store(&hook)
	select {
	case err := <-hooked:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("a never tried to collect the identity")
	}
	cli := e.newClient()
	defer cli.Close()
	time.Sleep(time.Second) // a's collector runs a few more times
	if !exists(t, cli, idKey(id)) || !exists(t, cli, labelsKey(labelsHash(app("db")))) {
		t.Fatal("the identity was freed although b referenced it before the collection committed")
	}
	if h := refHolders(t, cli, id); len(h) != 1 || h[0] != "b" {
		t.Fatalf("references %v, want b", h)
	}
}

// TestEmptyRangeCompareHolds checks the etcd semantics the collector and
// ReleaseBlock rely on: CreateRevision = 0 over a prefix holds when no key
// has the prefix, and fails as soon as one does.
func TestEmptyRangeCompareHolds(t *testing.T) {
	e := startEtcd(t)
	cli := e.newClient()
	defer cli.Close()
	cmp := clientv3.Compare(clientv3.CreateRevision("p/"), "=", 0).WithPrefix()
	resp, err := cli.Txn(ctxT(t)).If(cmp).Commit()
	if err != nil || !resp.Succeeded {
		t.Fatalf("empty range: succeeded %v, %v; want true", resp != nil && resp.Succeeded, err)
	}
	if _, err := cli.Put(ctxT(t), "p/x", ""); err != nil {
		t.Fatal(err)
	}
	if resp, err = cli.Txn(ctxT(t)).If(cmp).Commit(); err != nil || resp.Succeeded {
		t.Fatalf("one key: succeeded %v, %v; want false", resp != nil && resp.Succeeded, err)
	}
}

func TestEtcdDownKnownLabelsAllocateAndNewOnesFailFast(t *testing.T) {
	e := startEtcd(t)
	a := connectNode(t, nodeOpts{name: "a", ip: "192.0.2.1", endpoint: e.client})
	b := connectNode(t, nodeOpts{name: "b", ip: "192.0.2.2", endpoint: e.client})
	waitConnected(t, a)
	waitConnected(t, b)
	known, err := a.Identities().Allocate(ctxT(t), app("known"))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Identities().Release(ctxT(t), known); err != nil {
		t.Fatal(err)
	}
	var changes []identity.ID
	var mu sync.Mutex
	cancel := a.Identities().Subscribe(func(c identity.Change) {
		mu.Lock()
		changes = append(changes, c.ID)
		mu.Unlock()
	})
	defer cancel()

	e.stop()
	eventually(t, "a to see etcd gone", func() bool { return !a.Status().Connected })
	start := time.Now()
	id, err := a.Identities().Allocate(ctxT(t), app("known"))
	if err != nil || id != known {
		t.Fatalf("known labels with etcd down: %d, %v; want %d", id, err, known)
	}
	_, err = a.Identities().Allocate(ctxT(t), app("new"))
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), e.client) {
		t.Fatalf("new labels with etcd down: %v; want an unreachable error naming %s", err, e.client)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("the two allocations took %s with etcd down; want at once", took)
	}
	if q := a.Status().Queued; q < 1 {
		t.Fatalf("status shows %d queued writes, want the reference", q)
	}

	e.start()
	waitConnected(t, a)
	waitConnected(t, b)
	cli := e.newClient()
	defer cli.Close()
	eventually(t, "the queued reference to land", func() bool {
		h := refHolders(t, cli, known)
		return len(h) == 1 && h[0] == "a" && a.Status().Queued == 0
	})
	// The watches go on: what b numbers now, a learns, in order.
	var want []identity.ID
	for _, name := range []string{"after1", "after2", "after3"} {
		id, err := b.Identities().Allocate(ctxT(t), app(name))
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, id)
	}
	eventually(t, "a to learn b's identities", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(changes) >= 3
	})
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprintf("%d", changes) != fmt.Sprintf("%d", want) {
		t.Fatalf("a's subscriber saw %d, want %d", changes, want)
	}
}

func TestIdentityFreedWhileAwayIsCreatedAgainOrReported(t *testing.T) {
	e := startEtcd(t)
	p := newProxy(t, e.client[len("http://"):])
	a := connectNode(t, nodeOpts{name: "a", ip: "192.0.2.1", endpoint: p.url()})
	waitConnected(t, a)
	again, err := a.Identities().Allocate(ctxT(t), app("again"))
	if err != nil {
		t.Fatal(err)
	}
	taken, err := a.Identities().Allocate(ctxT(t), app("taken"))
	if err != nil {
		t.Fatal(err)
	}
	cli := e.newClient()
	defer cli.Close()

	// a is away; its lease ends and both identities are freed, as other
	// nodes would after the grace; one's number goes to other labels.
	lease := clientv3.LeaseID(a.Status().LeaseID)
	p.setCut(true)
	eventually(t, "a to lose etcd", func() bool { return !a.Status().Connected })
	if _, err := cli.Revoke(ctxT(t), lease); err != nil {
		t.Fatal(err)
	}
	for _, id := range []identity.ID{again, taken} {
		ls, _ := a.Identities().Lookup(id)
		if _, err := cli.Txn(ctxT(t)).Then(clientv3.OpDelete(idKey(id)), clientv3.OpDelete(labelsKey(labelsHash(ls)))).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	other := app("other")
	if _, err := cli.Txn(ctxT(t)).Then(clientv3.OpPut(idKey(taken), identityValue(other)),
		clientv3.OpPut(labelsKey(labelsHash(other)), fmt.Sprint(uint32(taken)))).Commit(); err != nil {
		t.Fatal(err)
	}

	// What the endpoint manager renumbers by: the number's new labels.
	var mu sync.Mutex
	var renamed []labels.Labels
	cancel := a.Identities().Subscribe(func(c identity.Change) {
		if c.ID == taken && !c.Freed {
			mu.Lock()
			renamed = append(renamed, c.Labels)
			mu.Unlock()
		}
	})
	defer cancel()
	p.setCut(false)
	waitConnected(t, a)
	eventually(t, "the free identity back with its number, and the conflict reported", func() bool {
		resp, err := cli.Get(ctxT(t), idKey(again))
		if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != identityValue(app("again")) {
			return false
		}
		h := refHolders(t, cli, again)
		c := a.Status().Conflicts
		return len(h) == 1 && h[0] == "a" && len(c) == 1 && c[0] == taken
	})
	if !exists(t, cli, labelsKey(labelsHash(app("again")))) {
		t.Fatal("the labels key of the identity created again is missing")
	}
	if h := refHolders(t, cli, taken); len(h) != 0 {
		t.Fatalf("a references identity %d, now another label set's: %v", taken, h)
	}
	eventually(t, fmt.Sprintf("a's subscribers to hear identity %d named %s", taken, other), func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(renamed) > 0 && renamed[len(renamed)-1].Equal(other)
	})
	// The labels that lost their number get another one.
	renumbered, err := a.Identities().Allocate(ctxT(t), app("taken"))
	if err != nil || renumbered == taken {
		t.Fatalf("Allocate of the labels whose number was taken: %d, %v; want a new number", renumbered, err)
	}
	if err := a.Identities().Release(ctxT(t), taken); err != nil {
		t.Fatal(err)
	}
	if c := a.Status().Conflicts; len(c) != 0 {
		t.Fatalf("conflicts %d remain after the release", c)
	}
}

func TestIdentityCacheServesAStartWithoutEtcd(t *testing.T) {
	e := startEtcd(t)
	dir := t.TempDir()
	opts := nodeOpts{name: "a", ip: "192.0.2.1", endpoint: e.client, dir: dir}
	a := connectNode(t, opts)
	waitConnected(t, a)
	id, err := a.Identities().Allocate(ctxT(t), app("web"))
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	e.stop()

	a2 := connectNode(t, opts)
	if ls, ok := a2.Identities().Lookup(id); !ok || !ls.Equal(app("web")) {
		t.Fatalf("Lookup(%d) without etcd = %v, %v", id, ls, ok)
	}
	if got, err := a2.Identities().Allocate(ctxT(t), app("web")); err != nil || got != id {
		t.Fatalf("restored labels without etcd: %d, %v; want %d", got, err, id)
	}
	if _, err := a2.Identities().Allocate(ctxT(t), app("new")); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("new labels without etcd: %v", err)
	}
	e.start()
	waitConnected(t, a2)
	cli := e.newClient()
	defer cli.Close()
	eventually(t, "the reference", func() bool { h := refHolders(t, cli, id); return len(h) == 1 && a2.Status().Queued == 0 })
}
