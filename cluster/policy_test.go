package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/endpoint"
	"github.com/ebpfnet/ebpfnet/policy"
)

func rulesNamed(t *testing.T, names ...string) []policy.Rule {
	t.Helper()
	var parts []string
	for _, n := range names {
		parts = append(parts, fmt.Sprintf(`{"endpointSelector": {"matchLabels": {"app": %q}}, "description": %q,
			"labels": [{"key": "name", "value": %q}], "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}]}`, n, n, n))
	}
	rules, err := policy.Parse([]byte("[" + strings.Join(parts, ",") + "]"))
	if err != nil {
		t.Fatal(err)
	}
	return rules
}

func descriptions(rules []policy.Rule) []string {
	out := []string{}
	for _, r := range rules {
		out = append(out, r.Description)
	}
	return out
}

func TestPolicyImportedOnOneNodeIsSeenOnTheOther(t *testing.T) {
	e := startEtcd(t)
	a := connectNode(t, nodeOpts{name: "a", ip: "192.0.2.1", endpoint: e.client})
	bDir := t.TempDir()
	b := connectNode(t, nodeOpts{name: "b", ip: "192.0.2.2", endpoint: e.client, dir: bDir})
	waitConnected(t, a)
	waitConnected(t, b)
	ra, err := a.Rules(filepath.Join(t.TempDir(), "policy.json"))
	if err != nil {
		t.Fatal(err)
	}
	bCache := filepath.Join(bDir, "policy.json")
	rb, err := b.Rules(bCache)
	if err != nil {
		t.Fatal(err)
	}
	var seen []uint64
	var mu sync.Mutex
	cancel := rb.Subscribe(func(rev uint64) {
		mu.Lock()
		seen = append(seen, rev)
		mu.Unlock()
	})
	defer cancel()

	rev, err := ra.Import(rulesNamed(t, "web", "db"))
	if err != nil || rev != 1 {
		t.Fatalf("Import = %d, %v", rev, err)
	}
	// Same labels replace, as in a file repository.
	if rev, err = ra.Import(rulesNamed(t, "db")); err != nil || rev != 2 {
		t.Fatalf("second Import = %d, %v", rev, err)
	}
	eventually(t, "b to see revision 2", func() bool { return rb.Revision() == 2 })
	rulesA, revA := ra.Snapshot()
	rulesB, revB := rb.Snapshot()
	if revA != revB || !reflect.DeepEqual(rulesA, rulesB) || !reflect.DeepEqual(descriptions(rulesB), []string{"web", "db"}) {
		t.Fatalf("a has %v at %d, b %v at %d", descriptions(rulesA), revA, descriptions(rulesB), revB)
	}
	eventually(t, "b's subscriber to hear of revision 2", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == 2
	})
	mu.Lock()
	if !reflect.DeepEqual(seen, []uint64{1, 2}) {
		t.Fatalf("b's subscriber saw %v, want [1 2]", seen)
	}
	mu.Unlock()

	// Imports on both nodes at once: none is lost.
	var wg sync.WaitGroup
	for i, r := range []*Rules{ra, rb, ra, rb} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := r.Import(rulesNamed(t, fmt.Sprintf("c%d", i))); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	eventually(t, "both nodes at revision 6", func() bool { return ra.Revision() == 6 && rb.Revision() == 6 })
	if got := len(rulesOf(rb)); got != 6 {
		t.Fatalf("b has %d rules after the concurrent imports, want 6", got)
	}
	if rev, err := rb.DeleteAll(); err != nil || rev != 7 {
		t.Fatalf("DeleteAll = %d, %v", rev, err)
	}
	eventually(t, "a to see the deletion", func() bool { return ra.Revision() == 7 && len(rulesOf(ra)) == 0 })

	// With etcd gone, import fails clearly; a daemon started now still
	// has the last rules it saw.
	if _, err := ra.Import(rulesNamed(t, "late")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "b to see revision 8", func() bool { return rb.Revision() == 8 })
	e.stop()
	eventually(t, "a to see etcd gone", func() bool { return !a.Status().Connected })
	start := time.Now()
	if _, err := ra.Import(rulesNamed(t, "x")); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("import with etcd down: %v", err)
	}
	if took := time.Since(start); took > 6*time.Second {
		t.Fatalf("the failed import took %s", took)
	}
	b.Close()
	b2 := connectNode(t, nodeOpts{name: "b", ip: "192.0.2.2", endpoint: e.client, dir: bDir})
	rb2, err := b2.Rules(bCache)
	if err != nil {
		t.Fatal(err)
	}
	if rules, rev := rb2.Snapshot(); rev != 8 || !reflect.DeepEqual(descriptions(rules), []string{"late"}) {
		t.Fatalf("started without etcd: %v at %d, want [late] at 8", descriptions(rules), rev)
	}
}

// rulesOf returns the rules of r's local copy.
func rulesOf(r *Rules) []policy.Rule {
	rules, _ := r.Snapshot()
	return rules
}

func TestClusterPolicyBehindTheCopyIsRaised(t *testing.T) {
	e := startEtcd(t)
	cache := filepath.Join(t.TempDir(), "policy.json")
	repo, err := policy.NewRepository(cache)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Set(rulesNamed(t, "old"), 5); err != nil {
		t.Fatal(err)
	}
	// etcd is empty (its data lost): the node raises the cluster's
	// revision above its copy's rather than ignore the cluster forever.
	a := connectNode(t, nodeOpts{name: "a", ip: "192.0.2.1", endpoint: e.client})
	ra, err := a.Rules(cache)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the copy to follow the cluster's empty policy", func() bool { return ra.Revision() == 6 && len(rulesOf(ra)) == 0 })
	if rev, err := ra.Import(rulesNamed(t, "new")); err != nil || rev != 7 {
		t.Fatalf("Import = %d, %v", rev, err)
	}
}

var _ endpoint.Rules = (*Rules)(nil)

// A corrupt local copy of the cluster's rules is moved aside, and the
// rules are lost (endpoints keep their policy, new ones deny) until etcd's
// arrive: the rules etcd has, or none when it has none.
func TestCorruptPolicyCacheIsLostUntilEtcdAnswers(t *testing.T) {
	e := newEtcd(t) // not started yet
	a := connectNode(t, nodeOpts{name: "a", ip: "192.0.2.1", endpoint: e.client})
	cache := filepath.Join(t.TempDir(), "cluster-policy.json")
	if err := os.WriteFile(cache, []byte("not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	ra, err := a.Rules(cache)
	if err != nil {
		t.Fatalf("Rules with a corrupt cache: %v", err)
	}
	if why, lost := ra.Lost(); !lost || !strings.Contains(why, "was corrupt (moved to "+cache+".corrupt-") {
		t.Fatalf("Lost() = %q, %v; want lost, naming the moved-aside copy", why, lost)
	}
	var lr endpoint.LostRules = ra // the endpoint manager looks for it
	_ = lr

	// etcd has no rules: the copy ends lost with none.
	e.start()
	waitConnected(t, a)
	eventually(t, "the rules in force again", func() bool { _, lost := ra.Lost(); return !lost })
	if rules, _ := ra.Snapshot(); len(rules) != 0 {
		t.Fatalf("rules after etcd answered with none: %v", descriptions(rules))
	}

	// etcd has rules (imported by a): a node whose copy is corrupt takes them.
	if _, err := ra.Import(rulesNamed(t, "web")); err != nil {
		t.Fatal(err)
	}
	b := connectNode(t, nodeOpts{name: "b", ip: "192.0.2.2", endpoint: e.client})
	bCache := filepath.Join(t.TempDir(), "cluster-policy.json")
	if err := os.WriteFile(bCache, []byte(`{"version": 99}`), 0o600); err != nil {
		t.Fatal(err)
	}
	rb, err := b.Rules(bCache)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "b to take etcd's rules", func() bool {
		rules, rev := rb.Snapshot()
		_, lost := rb.Lost()
		return !lost && rev == ra.Revision() && reflect.DeepEqual(descriptions(rules), []string{"web"})
	})
}
