package policy

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ebpfnet/ebpfnet/atomicfile"
)

func mustParse(t *testing.T, s string) []Rule {
	t.Helper()
	rules, err := Parse([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return rules
}

func descriptions(rules []Rule) []string {
	out := []string{}
	for _, r := range rules {
		out = append(out, r.Description)
	}
	return out
}

func TestImportReplacesByLabels(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.json")
	repo, err := NewRepository(path)
	if err != nil {
		t.Fatal(err)
	}
	if repo.Revision() != 0 || len(repo.Rules()) != 0 {
		t.Fatal("new repository is not empty at revision 0")
	}
	rev, err := repo.Import(mustParse(t, `[
		{"endpointSelector": {}, "description": "a1", "labels": [{"key": "name", "value": "a"}, {"key": "team", "value": "x"}]},
		{"endpointSelector": {}, "description": "b1", "labels": [{"key": "name", "value": "b"}]},
		{"endpointSelector": {}, "description": "u1"}]`))
	if err != nil || rev != 1 {
		t.Fatalf("Import = %d, %v", rev, err)
	}
	// Same label set in another order replaces a1; b1 stays; an unlabeled
	// rule adds without replacing u1.
	rev, err = repo.Import(mustParse(t, `[
		{"endpointSelector": {}, "description": "a2", "labels": [{"key": "team", "value": "x"}, {"key": "name", "value": "a"}]},
		{"endpointSelector": {}, "description": "c1", "labels": [{"key": "name", "value": "a"}]},
		{"endpointSelector": {}, "description": "u2"}]`))
	if err != nil || rev != 2 {
		t.Fatalf("Import = %d, %v", rev, err)
	}
	if got, want := descriptions(repo.Rules()), []string{"b1", "u1", "a2", "c1", "u2"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("rules = %v, want %v", got, want)
	}

	// A rule of the caller's, changed after import, does not change ours.
	rules := repo.Rules()
	rules[0].Description = "changed"
	if repo.Rules()[0].Description != "b1" {
		t.Fatal("Rules() shares memory with the repository")
	}

	// Persisted: a reload sees the same rules and revision.
	again, err := NewRepository(path)
	if err != nil {
		t.Fatal(err)
	}
	if again.Revision() != 2 || !reflect.DeepEqual(again.Rules(), repo.Rules()) {
		t.Fatalf("reload: revision %d, rules %v", again.Revision(), descriptions(again.Rules()))
	}
	rev, err = again.DeleteAll()
	if err != nil || rev != 3 || len(again.Rules()) != 0 {
		t.Fatalf("DeleteAll = %d, %v, %d rules", rev, err, len(again.Rules()))
	}
	third, err := NewRepository(path)
	if err != nil {
		t.Fatal(err)
	}
	if third.Revision() != 3 || len(third.Rules()) != 0 {
		t.Fatalf("after DeleteAll reload: revision %d, %d rules", third.Revision(), len(third.Rules()))
	}
}

func TestImportRefusesInvalidRules(t *testing.T) {
	repo, err := NewRepository(filepath.Join(t.TempDir(), "policy.json"))
	if err != nil {
		t.Fatal(err)
	}
	bad := []Rule{{Egress: []EgressRule{{ToEntities: []string{"mars"}}}}}
	if _, err := repo.Import(bad); err == nil || !strings.Contains(err.Error(), `entity "mars"`) {
		t.Fatalf("err = %v", err)
	}
	if repo.Revision() != 0 {
		t.Fatal("a refused import changed the revision")
	}
}

func TestFailedPersistChangesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "later")
	repo, err := NewRepository(filepath.Join(dir, "policy.json"))
	if err != nil {
		t.Fatal(err)
	}
	rules := mustParse(t, designExample)
	if _, err := repo.Import(rules); err == nil {
		t.Fatal("import into a missing directory succeeded")
	}
	if _, err := repo.DeleteAll(); err == nil {
		t.Fatal("delete into a missing directory succeeded")
	}
	if repo.Revision() != 0 || len(repo.Rules()) != 0 {
		t.Fatalf("failed writes changed memory: revision %d, %d rules", repo.Revision(), len(repo.Rules()))
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if rev, err := repo.Import(rules); err != nil || rev != 1 {
		t.Fatalf("Import = %d, %v", rev, err)
	}
}

func TestCorruptPolicyStateIsAnError(t *testing.T) {
	for name, content := range map[string]string{
		"garbage": "not json",
		"version": `{"version": 2, "revision": 1, "rules": []}`,
		"rules":   `{"version": 1, "revision": 1, "rules": [{"ingress": []}]}`,
	} {
		path := filepath.Join(t.TempDir(), "policy.json")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := NewRepository(path); err == nil || !strings.Contains(err.Error(), "corrupt") {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

// Subscribers learn every revision, in order, and only the changes that
// took effect; a cancelled one hears nothing more.
func TestSubscribe(t *testing.T) {
	dir := t.TempDir()
	repo, err := NewRepository(filepath.Join(dir, "policy.json"))
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	cancel := repo.Subscribe(func(rev uint64) {
		if rules, cur := repo.Snapshot(); cur != rev {
			t.Errorf("told of revision %d while the repository is at %d (%d rules)", rev, cur, len(rules))
		}
		got = append(got, rev)
	})
	rules, err := Parse([]byte(`[{"endpointSelector": {}, "ingress": [{}]}]`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Import(rules); err != nil {
		t.Fatal(err)
	}
	if _, err := repo.DeleteAll(); err != nil {
		t.Fatal(err)
	}
	bad := []Rule{{Ingress: []IngressRule{{ToPorts: []PortRule{{Ports: []PortProtocol{{Port: "eighty"}}}}}}}}
	if _, err := repo.Import(bad); err == nil {
		t.Fatal("an invalid rule was imported")
	}
	cancel()
	if _, err := repo.DeleteAll(); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Fatalf("revisions heard %v, want [1 2]", got)
	}
}

func TestMergeReplacesByLabelsWithoutChangingItsArguments(t *testing.T) {
	existing := mustParse(t, `[
		{"endpointSelector": {}, "description": "a1", "labels": [{"key": "name", "value": "a"}]},
		{"endpointSelector": {}, "description": "u1"}]`)
	incoming := mustParse(t, `[{"endpointSelector": {}, "description": "a2", "labels": [{"key": "name", "value": "a"}]}]`)
	merged, err := Merge(existing, incoming)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := descriptions(merged), []string{"u1", "a2"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("merged = %v, want %v", got, want)
	}
	merged[0].Description = "changed"
	if existing[1].Description != "u1" || incoming[0].Description != "a2" {
		t.Fatal("Merge's result shares memory with its arguments")
	}
	if _, err := Merge(existing, []Rule{{Egress: []EgressRule{{ToEntities: []string{"mars"}}}}}); err == nil {
		t.Fatal("Merge accepted an invalid rule")
	}
}

func TestSetTakesOnlyNewerRevisions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.json")
	repo, err := NewRepository(path)
	if err != nil {
		t.Fatal(err)
	}
	var seen []uint64
	cancel := repo.Subscribe(func(rev uint64) { seen = append(seen, rev) })
	defer cancel()
	rules := mustParse(t, designExample)
	if ok, err := repo.Set(rules, 7); err != nil || !ok {
		t.Fatalf("Set(7) = %v, %v", ok, err)
	}
	if ok, err := repo.Set(nil, 7); err != nil || ok {
		t.Fatalf("Set of the same revision = %v, %v; want ignored", ok, err)
	}
	if ok, err := repo.Set(nil, 3); err != nil || ok {
		t.Fatalf("Set of an older revision = %v, %v; want ignored", ok, err)
	}
	if got, rev := repo.Snapshot(); rev != 7 || !reflect.DeepEqual(got, rules) {
		t.Fatalf("after Set: revision %d, %d rules", rev, len(got))
	}
	if !reflect.DeepEqual(seen, []uint64{7}) {
		t.Fatalf("subscriber saw %v, want [7]", seen)
	}
	again, err := NewRepository(path)
	if err != nil {
		t.Fatal(err)
	}
	if again.Revision() != 7 || len(again.Rules()) != len(rules) {
		t.Fatalf("reload after Set: revision %d, %d rules", again.Revision(), len(again.Rules()))
	}
	bad := []Rule{{Egress: []EgressRule{{ToEntities: []string{"mars"}}}}}
	if ok, err := repo.Set(bad, 8); err == nil || ok || repo.Revision() != 7 {
		t.Fatalf("Set of invalid rules = %v, %v; revision %d", ok, err, repo.Revision())
	}
}

func TestLostUntilTheRulesChange(t *testing.T) {
	for _, change := range []string{"import", "delete"} {
		t.Run(change, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "policy.json")
			repo, err := NewRepository(path)
			if err != nil {
				t.Fatal(err)
			}
			if _, lost := repo.Lost(); lost {
				t.Fatal("a new repository is lost")
			}
			if err := repo.MarkLost("policy.json was corrupt"); err != nil {
				t.Fatal(err)
			}
			again, err := NewRepository(path)
			if err != nil {
				t.Fatal(err)
			}
			if why, lost := again.Lost(); !lost || why != "policy.json was corrupt" {
				t.Fatalf("after reload Lost() = %q %v", why, lost)
			}
			if len(again.Rules()) != 0 {
				t.Fatalf("a lost repository holds %d rules", len(again.Rules()))
			}
			// Persist keeps the mark.
			if err := again.Persist(); err != nil {
				t.Fatal(err)
			}
			if _, lost := again.Lost(); !lost {
				t.Fatal("Persist cleared the mark")
			}
			seen := false
			cancel := again.Subscribe(func(uint64) {
				_, seen = again.Lost()
			})
			defer cancel()
			if change == "import" {
				_, err = again.Import(mustParse(t, `[{"endpointSelector": {}, "description": "x"}]`))
			} else {
				_, err = again.DeleteAll()
			}
			if err != nil {
				t.Fatal(err)
			}
			if seen {
				t.Error("a subscriber saw the repository still lost")
			}
			if _, lost := again.Lost(); lost {
				t.Fatalf("still lost after %s", change)
			}
			third, err := NewRepository(path)
			if err != nil {
				t.Fatal(err)
			}
			if _, lost := third.Lost(); lost {
				t.Fatalf("the file still says lost after %s", change)
			}
		})
	}
}

func TestCorruptFileAndPersist(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.json")
	if err := os.WriteFile(path, []byte(`{"version": 1, "rules": [`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewRepository(path); !errors.Is(err, atomicfile.ErrCorrupt) {
		t.Fatalf("err = %v, want ErrCorrupt", err)
	}
	os.Remove(path)
	repo, err := NewRepository(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Import(mustParse(t, `[{"endpointSelector": {}, "description": "x"}]`)); err != nil {
		t.Fatal(err)
	}
	if err := repo.Persist(); err != nil {
		t.Fatal(err)
	}
	again, err := NewRepository(path)
	if err != nil {
		t.Fatal(err)
	}
	if again.Revision() != 1 || len(again.Rules()) != 1 {
		t.Fatalf("after Persist: revision %d, %d rules", again.Revision(), len(again.Rules()))
	}
}
