package identity

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ebpfnet/ebpfnet/labels"
)

func newAlloc(t *testing.T) (*Allocator, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "identities.json")
	a, err := NewAllocator(path)
	if err != nil {
		t.Fatal(err)
	}
	return a, path
}

func mustAlloc(t *testing.T, a *Allocator, ls labels.Labels) ID {
	t.Helper()
	id, err := a.Allocate(ls)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestAllocateIsStableAndPersisted(t *testing.T) {
	a, path := newAlloc(t)
	app1 := labels.FromDocker(map[string]string{"id": "app1"})
	app2 := labels.FromDocker(map[string]string{"id": "app2"})
	if id := mustAlloc(t, a, app1); id != 256 {
		t.Fatalf("first = %d, want 256", id)
	}
	if id := mustAlloc(t, a, app2); id != 257 {
		t.Fatalf("second = %d, want 257", id)
	}
	if id := mustAlloc(t, a, labels.FromDocker(map[string]string{"id": "app1"})); id != 256 {
		t.Fatalf("again = %d, want 256", id)
	}
	empty := mustAlloc(t, a, labels.Labels{})
	if empty != 258 {
		t.Fatalf("empty set = %d, want its own 258", empty)
	}
	if id := mustAlloc(t, a, nil); id != empty {
		t.Fatalf("nil set = %d, want %d", id, empty)
	}
	cidr, err := a.AllocateCIDR(netip.MustParsePrefix("10.1.2.3/16"))
	if err != nil {
		t.Fatal(err)
	}
	if cidr != LocalScope {
		t.Fatalf("cidr = %d, want %d", cidr, LocalScope)
	}

	b, err := NewAllocator(path)
	if err != nil {
		t.Fatal(err)
	}
	if id := mustAlloc(t, b, app2); id != 257 {
		t.Fatalf("after reload app2 = %d, want 257", id)
	}
	if id, _ := b.AllocateCIDR(netip.MustParsePrefix("10.1.0.0/16")); id != cidr {
		t.Fatalf("after reload cidr = %d, want %d", id, cidr)
	}
	if id := mustAlloc(t, b, labels.FromDocker(map[string]string{"id": "app3"})); id != 259 {
		t.Fatalf("new after reload = %d, want 259", id)
	}
	if ls, ok := b.Lookup(256); !ok || !ls.Equal(app1) {
		t.Fatalf("Lookup(256) = %v %v", ls, ok)
	}
}

func TestLowestFreeAfterRelease(t *testing.T) {
	a, _ := newAlloc(t)
	for i := range 3 {
		mustAlloc(t, a, labels.FromDocker(map[string]string{"n": string(rune('a' + i))}))
	}
	if err := a.Release(257); err != nil {
		t.Fatal(err)
	}
	if _, ok := a.Lookup(257); ok {
		t.Fatal("released identity still resolves")
	}
	if id := mustAlloc(t, a, labels.FromDocker(map[string]string{"n": "z"})); id != 257 {
		t.Fatalf("got %d, want the freed 257", id)
	}
}

func TestReleaseSeveralPersists(t *testing.T) {
	a, path := newAlloc(t)
	for i := range 3 {
		mustAlloc(t, a, labels.FromDocker(map[string]string{"n": string(rune('a' + i))}))
	}
	cidr, err := a.AllocateCIDR(netip.MustParsePrefix("192.0.2.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Release(256, cidr, 9999); err != nil {
		t.Fatal(err)
	}
	b, err := NewAllocator(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []ID{256, cidr} {
		if _, ok := b.Lookup(id); ok {
			t.Errorf("released identity %d resolves after reload", id)
		}
	}
	if _, ok := b.Lookup(257); !ok {
		t.Error("identity 257, not released, is gone after reload")
	}
}

func TestReservedLookupAndAllocate(t *testing.T) {
	a, _ := newAlloc(t)
	for id, want := range map[ID]string{Host: "reserved:host", World: "reserved:world", Init: "reserved:init"} {
		ls, ok := a.Lookup(id)
		if !ok || ls.String() != want {
			t.Errorf("Lookup(%d) = %q %v, want %q", id, ls.String(), ok, want)
		}
		got, err := a.Allocate(ls)
		if err != nil || got != id {
			t.Errorf("Allocate(%s) = %d %v, want %d", want, got, err, id)
		}
	}
	if _, ok := a.Lookup(Unknown); ok {
		t.Error("Unknown resolves")
	}
	mixed := labels.FromLabels(labels.Host(), labels.New(labels.SourceContainer, "id", "x"))
	if _, err := a.Allocate(mixed); err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("mixed set: err = %v", err)
	}
}

func TestCIDR(t *testing.T) {
	a, _ := newAlloc(t)
	p8 := netip.MustParsePrefix("10.0.0.0/8")
	id8, err := a.AllocateCIDR(p8)
	if err != nil {
		t.Fatal(err)
	}
	id24, _ := a.AllocateCIDR(netip.MustParsePrefix("10.1.1.0/24"))
	if id8 != LocalScope || id24 != LocalScope+1 || id8.Kind() != KindCIDR {
		t.Fatalf("ids = %d %d", id8, id24)
	}
	if again, _ := a.AllocateCIDR(netip.MustParsePrefix("10.9.9.9/8")); again != id8 {
		t.Fatalf("unmasked prefix = %d, want %d", again, id8)
	}
	if w, _ := a.AllocateCIDR(netip.MustParsePrefix("0.0.0.0/0")); w != World {
		t.Fatalf("/0 = %d, want world", w)
	}
	if _, err := a.AllocateCIDR(netip.Prefix{}); err == nil {
		t.Fatal("invalid prefix accepted")
	}
	ls, ok := a.Lookup(id8)
	if !ok || ls.String() != "cidr:10.0.0.0/8,reserved:world" {
		t.Fatalf("Lookup = %q %v", ls.String(), ok)
	}
	if p, ok := CIDRPrefix(ls); !ok || p != p8 {
		t.Fatalf("CIDRPrefix = %v %v", p, ok)
	}
	list := a.List()
	var ids []ID
	for _, e := range list {
		ids = append(ids, e.ID)
	}
	want := []ID{Host, World, Init, id8, id24}
	if len(ids) != len(want) {
		t.Fatalf("List ids = %v, want %v", ids, want)
	}
	for i := range want {
		if ids[i] != want[i] {
			t.Fatalf("List ids = %v, want %v", ids, want)
		}
	}
}

func TestFailedPersistChangesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "later")
	a, err := NewAllocator(filepath.Join(dir, "ids.json"))
	if err != nil {
		t.Fatal(err)
	}
	ls := labels.FromDocker(map[string]string{"id": "x"})
	if _, err := a.Allocate(ls); err == nil {
		t.Fatal("allocate into a missing directory succeeded")
	}
	if _, err := a.AllocateCIDR(netip.MustParsePrefix("10.0.0.0/8")); err == nil {
		t.Fatal("CIDR allocate into a missing directory succeeded")
	}
	if n := len(a.List()); n != 3 {
		t.Fatalf("List holds %d entries after failures, want the 3 reserved", n)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if id := mustAlloc(t, a, ls); id != 256 {
		t.Fatalf("got %d, want 256", id)
	}
}

func TestCorruptFileIsAnError(t *testing.T) {
	for name, content := range map[string]string{
		"garbage":   "{not json",
		"version":   `{"version":7}`,
		"range":     `{"version":1,"identities":[{"id":5,"labels":[]}]}`,
		"duplicate": `{"version":1,"identities":[{"id":256,"labels":[]},{"id":257,"labels":[]}]}`,
		"cidr":      `{"version":1,"cidrs":[{"id":16777216,"prefix":"10.0.0.1/8"}]}`,
	} {
		path := filepath.Join(t.TempDir(), "ids.json")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := NewAllocator(path)
		if err == nil || !strings.Contains(err.Error(), "corrupt") {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func TestConcurrentAllocate(t *testing.T) {
	a, _ := newAlloc(t)
	var wg sync.WaitGroup
	got := make([]ID, 16)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, err := a.Allocate(labels.FromDocker(map[string]string{"n": string(rune('a' + i%4))}))
			if err != nil {
				t.Error(err)
			}
			got[i] = id
		}()
	}
	wg.Wait()
	for i := range got {
		if got[i] != got[i%4] {
			t.Fatalf("same labels got %d and %d", got[i], got[i%4])
		}
	}
	if n := len(a.List()); n != 3+4 {
		t.Fatalf("%d identities, want 7", n)
	}
}

func TestFindDoesNotAllocate(t *testing.T) {
	a, _ := newAlloc(t)
	app1 := labels.FromDocker(map[string]string{"id": "app1"})
	if id, ok := a.Find(app1); ok {
		t.Fatalf("Find before Allocate = %d, true", id)
	}
	if _, ok := a.Find(app1); ok || len(a.List()) != 3 { // the reserved three only
		t.Fatalf("Find allocated: %v", a.List())
	}
	want := mustAlloc(t, a, app1)
	if id, ok := a.Find(app1); !ok || id != want {
		t.Errorf("Find after Allocate = %d, %v; want %d, true", id, ok, want)
	}
	if id, ok := a.Find(labels.FromLabels(labels.Init())); !ok || id != Init {
		t.Errorf("Find(init) = %d, %v; want %d, true", id, ok, Init)
	}
}
