package identity

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/atomicfile"
	"github.com/ebpfnet/ebpfnet/labels"
)

var ctx = context.Background()

func newAlloc(t *testing.T) (*FileAllocator, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "identities.json")
	a, err := NewFileAllocator(path)
	if err != nil {
		t.Fatal(err)
	}
	return a, path
}

func mustAlloc(t *testing.T, a *FileAllocator, ls labels.Labels) ID {
	t.Helper()
	id, err := a.Allocate(ctx, ls)
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

	b, err := NewFileAllocator(path)
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

// A freed number goes to a new label set only once the numbers after it
// have been used: a policy map that still names it somewhere would
// otherwise allow its next owner.
func TestFreedNumberIsReusedLast(t *testing.T) {
	a, path := newAlloc(t)
	for i := range 3 {
		mustAlloc(t, a, labels.FromDocker(map[string]string{"n": string(rune('a' + i))}))
	}
	if err := a.Release(ctx, 257); err != nil {
		t.Fatal(err)
	}
	if freed, err := a.CollectUnreferencedSince(time.Now()); err != nil || len(freed) != 1 || freed[0] != 257 {
		t.Fatalf("collected %v %v, want [257]", freed, err)
	}
	if _, ok := a.Lookup(257); ok {
		t.Fatal("collected identity still resolves")
	}
	if id := mustAlloc(t, a, labels.FromDocker(map[string]string{"n": "z"})); id != 259 {
		t.Fatalf("got %d, want 259 after the last handed out", id)
	}
	// The cursor survives a restart.
	b, err := NewFileAllocator(path)
	if err != nil {
		t.Fatal(err)
	}
	if id := mustAlloc(t, b, labels.FromDocker(map[string]string{"n": "y"})); id != 260 {
		t.Fatalf("after reload got %d, want 260", id)
	}
}

// At the end of the range the search goes round to the numbers freed
// meanwhile.
func TestCursorWraps(t *testing.T) {
	a, _ := newAlloc(t)
	first := mustAlloc(t, a, labels.FromDocker(map[string]string{"n": "first"}))
	a.mu.Lock()
	a.next = MaxAllocated
	a.mu.Unlock()
	if id := mustAlloc(t, a, labels.FromDocker(map[string]string{"n": "last"})); id != MaxAllocated {
		t.Fatalf("got %d, want %d", id, MaxAllocated)
	}
	if id := mustAlloc(t, a, labels.FromDocker(map[string]string{"n": "wrapped"})); id != first+1 {
		t.Fatalf("got %d, want %d after wrapping past the used %d", id, first+1, first)
	}
}

func TestReferences(t *testing.T) {
	a, _ := newAlloc(t)
	var changes []Change
	cancel := a.Subscribe(func(c Change) { changes = append(changes, c) })
	defer cancel()
	app := labels.FromDocker(map[string]string{"id": "app"})
	id := mustAlloc(t, a, app)
	if again := mustAlloc(t, a, app); again != id || a.References(id) != 2 {
		t.Fatalf("second allocate: %d with %d references", again, a.References(id))
	}
	if err := a.Release(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, unref := a.Unreferenced()[id]; unref {
		t.Fatal("an identity with a reference left is counted unreferenced")
	}
	if _, err := a.CollectUnreferencedSince(time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, ok := a.Lookup(id); !ok {
		t.Fatal("an identity with a reference left was collected")
	}
	if err := a.Release(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, ok := a.Lookup(id); !ok {
		t.Fatal("the last release freed the identity at once, before any grace")
	}
	if r := a.References(id); r != 0 {
		t.Fatalf("%d references after the last release", r)
	}
	if err := a.Release(ctx, id); err == nil {
		t.Fatal("a release without a reference was accepted")
	}
	if err := a.Release(ctx, Host); err != nil {
		t.Fatalf("releasing a reserved identity: %v", err)
	}
	if freed, err := a.CollectUnreferencedSince(time.Now()); err != nil || len(freed) != 1 || freed[0] != id {
		t.Fatalf("collected %v %v, want [%d]", freed, err, id)
	}
	if _, ok := a.Lookup(id); ok {
		t.Fatal("a collected identity still resolves")
	}
	if err := a.Release(ctx, id); err == nil {
		t.Fatal("a release of a freed identity was accepted")
	}
	want := []Change{{ID: id, Labels: app}, {ID: id, Labels: app, Freed: true}}
	if len(changes) != len(want) {
		t.Fatalf("changes %+v, want %+v", changes, want)
	}
	for i := range want {
		if changes[i].ID != want[i].ID || changes[i].Freed != want[i].Freed || !changes[i].Labels.Equal(want[i].Labels) {
			t.Fatalf("change %d: %+v, want %+v", i, changes[i], want[i])
		}
	}
}

// writeCounter counts the writes of path: atomicfile renames a new file
// over it each time, which inotify reports as a move into the directory.
func writeCounter(t *testing.T, path string) func() int {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if _, err := unix.InotifyAddWatch(fd, filepath.Dir(path), unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE); err != nil {
		t.Fatal(err)
	}
	base := filepath.Base(path)
	writes := 0
	return func() int {
		t.Helper()
		buf := make([]byte, 64*1024)
		for {
			n, err := unix.Read(fd, buf)
			if errors.Is(err, unix.EAGAIN) {
				return writes
			}
			if err != nil {
				t.Fatal(err)
			}
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
				// A write in place (not atomicfile's) counts too.
				if name == base {
					writes++
				}
				off += unix.SizeofInotifyEvent + int(ev.Len)
			}
		}
	}
}

// The point of the grace: a container that goes and comes back with the
// same labels (docker run --rm, twice) costs no write of the file and no
// Change, which would regenerate every endpoint's policy.
func TestReleaseAndAllocateAgainWithinTheGraceWriteNothing(t *testing.T) {
	a, path := newAlloc(t)
	var changes []Change
	cancel := a.Subscribe(func(c Change) { changes = append(changes, c) })
	defer cancel()
	writes := writeCounter(t, path)
	for _, ls := range []labels.Labels{labels.FromDocker(map[string]string{"id": "x"}), {}} {
		changes = nil
		before := writes()
		id := mustAlloc(t, a, ls)
		if w := writes() - before; w != 1 || len(changes) != 1 {
			t.Fatalf("%q: the first allocation made %d writes and %d changes, want 1 and 1", ls.String(), w, len(changes))
		}
		for range 3 {
			if err := a.Release(ctx, id); err != nil {
				t.Fatal(err)
			}
			if again := mustAlloc(t, a, ls); again != id {
				t.Fatalf("%q: allocated again within the grace as %d, want %d", ls.String(), again, id)
			}
		}
		if err := a.Release(ctx, id); err != nil {
			t.Fatal(err)
		}
		// A collection that finds nothing old enough writes nothing.
		if freed, err := a.CollectUnreferencedSince(time.Now().Add(-time.Hour)); err != nil || len(freed) != 0 {
			t.Fatalf("%q: collected %v %v of what was released just now with a grace of an hour", ls.String(), freed, err)
		}
		if w := writes() - before; w != 1 || len(changes) != 1 {
			t.Fatalf("%q: releases and allocations within the grace made %d writes and %d changes after the first, want none", ls.String(), w-1, len(changes)-1)
		}
		if _, unref := a.Unreferenced()[id]; !unref {
			t.Fatalf("%q: %d is not listed unreferenced after its last release", ls.String(), id)
		}
	}
}

// Past the grace, every expired identity goes in one write, with a Freed
// change each; those released later stay.
func TestCollectFreesWhatExpiredInOneWrite(t *testing.T) {
	a, path := newAlloc(t)
	var ids []ID
	for i := range 4 {
		ids = append(ids, mustAlloc(t, a, labels.FromDocker(map[string]string{"n": string(rune('a' + i))})))
	}
	for _, id := range ids[:3] {
		if err := a.Release(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Millisecond)
	cutoff := time.Now()
	time.Sleep(time.Millisecond)
	if err := a.Release(ctx, ids[3]); err != nil {
		t.Fatal(err)
	}
	var changes []Change
	cancel := a.Subscribe(func(c Change) { changes = append(changes, c) })
	defer cancel()
	writes := writeCounter(t, path)
	freed, err := a.CollectUnreferencedSince(cutoff)
	if err != nil {
		t.Fatal(err)
	}
	if len(freed) != 3 || freed[0] != ids[0] || freed[1] != ids[1] || freed[2] != ids[2] {
		t.Fatalf("freed %v, want %v", freed, ids[:3])
	}
	if w := writes(); w != 1 {
		t.Fatalf("%d writes to free %d identities, want 1", w, len(freed))
	}
	if len(changes) != 3 {
		t.Fatalf("changes %+v, want 3 Freed", changes)
	}
	for i, c := range changes {
		if !c.Freed || c.ID != ids[i] {
			t.Fatalf("change %d: %+v, want %d freed", i, c, ids[i])
		}
	}
	if _, ok := a.Lookup(ids[3]); !ok {
		t.Fatal("the identity released after the cutoff was collected")
	}
	b, err := NewFileAllocator(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids[:3] {
		if _, ok := b.Lookup(id); ok {
			t.Errorf("collected identity %d is still in the file", id)
		}
	}
	if _, ok := b.Lookup(ids[3]); !ok {
		t.Error("the identity not collected is gone from the file")
	}
}

// After a restart the file holds numbers whose references were in memory:
// the daemon takes them again for the endpoints it restored, and the rest
// are kept for the grace from the start, as if released then (how long
// before they were is not on disk), and go after it.
func TestRestartKeepsUnreferencedForTheGrace(t *testing.T) {
	a, path := newAlloc(t)
	kept := labels.FromDocker(map[string]string{"id": "kept"})
	keptID := mustAlloc(t, a, kept)
	gone := labels.FromDocker(map[string]string{"id": "gone"})
	goneID := mustAlloc(t, a, gone)
	if err := a.Release(ctx, goneID); err != nil {
		t.Fatal(err)
	}
	beforeStart := time.Now()
	time.Sleep(time.Millisecond)
	b, err := NewFileAllocator(path)
	if err != nil {
		t.Fatal(err)
	}
	if id := mustAlloc(t, b, kept); id != keptID {
		t.Fatalf("restored endpoint's identity %d, want %d", id, keptID)
	}
	if since, ok := b.Unreferenced()[goneID]; !ok || !since.After(beforeStart) {
		t.Fatalf("after the restart %d is unreferenced since %v (%v), want the start", goneID, since, ok)
	}
	if freed, err := b.CollectUnreferencedSince(beforeStart); err != nil || len(freed) != 0 {
		t.Fatalf("a collection with the grace counted from before the start freed %v %v", freed, err)
	}
	freed, err := b.CollectUnreferencedSince(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(freed) != 1 || freed[0] != goneID {
		t.Fatalf("freed %v, want [%d]", freed, goneID)
	}
	c, err := NewFileAllocator(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Lookup(goneID); ok {
		t.Fatal("the collected identity is still in the file")
	}
	if _, ok := c.Lookup(keptID); !ok {
		t.Fatal("the referenced identity went with the collection")
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
	if err := a.Release(ctx, 256); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CollectUnreferencedSince(time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := a.ReleaseCIDR(cidr, 9999); err != nil {
		t.Fatal(err)
	}
	b, err := NewFileAllocator(path)
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
	reg := Registry{Labels: a, CIDRs: a}
	for id, want := range map[ID]string{Host: "reserved:host", World: "reserved:world", Init: "reserved:init"} {
		ls, ok := reg.Lookup(id)
		if !ok || ls.String() != want {
			t.Errorf("Lookup(%d) = %q %v, want %q", id, ls.String(), ok, want)
		}
		got, err := a.Allocate(ctx, ls)
		if err != nil || got != id {
			t.Errorf("Allocate(%s) = %d %v, want %d", want, got, err, id)
		}
	}
	if _, ok := reg.Lookup(Unknown); ok {
		t.Error("Unknown resolves")
	}
	mixed := labels.FromLabels(labels.Host(), labels.New(labels.SourceContainer, "id", "x"))
	if _, err := a.Allocate(ctx, mixed); err == nil || !strings.Contains(err.Error(), "reserved") {
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
	reg := Registry{Labels: a, CIDRs: a}
	ls, ok := reg.Lookup(id8)
	if !ok || ls.String() != "cidr:10.0.0.0/8,reserved:world" {
		t.Fatalf("Lookup = %q %v", ls.String(), ok)
	}
	if p, ok := CIDRPrefix(ls); !ok || p != p8 {
		t.Fatalf("CIDRPrefix = %v %v", p, ok)
	}
	list := reg.List()
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
	a, err := NewFileAllocator(filepath.Join(dir, "ids.json"))
	if err != nil {
		t.Fatal(err)
	}
	ls := labels.FromDocker(map[string]string{"id": "x"})
	if _, err := a.Allocate(ctx, ls); err == nil {
		t.Fatal("allocate into a missing directory succeeded")
	}
	if _, err := a.AllocateCIDR(netip.MustParsePrefix("10.0.0.0/8")); err == nil {
		t.Fatal("CIDR allocate into a missing directory succeeded")
	}
	if n := len(a.All()) + len(a.CIDRs()); n != 0 {
		t.Fatalf("%d identities after failures, want none", n)
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
		_, err := NewFileAllocator(path)
		if err == nil || !strings.Contains(err.Error(), "corrupt") || !errors.Is(err, atomicfile.ErrCorrupt) {
			t.Errorf("%s: err = %v, want atomicfile.ErrCorrupt", name, err)
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
			id, err := a.Allocate(ctx, labels.FromDocker(map[string]string{"n": string(rune('a' + i%4))}))
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
	if n := len(a.All()); n != 4 {
		t.Fatalf("%d identities, want 4", n)
	}
	for i := range 4 {
		if r := a.References(got[i]); r != 4 {
			t.Fatalf("identity %d has %d references, want 4", got[i], r)
		}
	}
}

// Identities whose file was lost are adopted under the numbers the
// endpoints and the pinned maps carry: allocating their labels again
// returns the same number, the file holds them, numbering goes on after
// the highest, and nothing that contradicts is taken.
func TestAdoptKeepsNumbers(t *testing.T) {
	a, path := newAlloc(t)
	app1 := labels.FromDocker(map[string]string{"id": "app1"})
	app2 := labels.FromDocker(map[string]string{"id": "app2"})
	web := netip.MustParsePrefix("192.0.2.0/24")
	var changes []Change
	cancel := a.Subscribe(func(c Change) { changes = append(changes, c) })
	defer cancel()
	refused, err := a.Adopt(map[ID]labels.Labels{
		300:              app1,
		270:              app2,
		280:              app2.Clone(),                     // app2 has 270 already
		5:                labels.FromLabels(labels.Init()), // reserved
		310:              labels.FromLabels(labels.Host()), // reserved labels
		MaxAllocated + 1: labels.FromDocker(nil),           // out of range
	}, map[ID]netip.Prefix{
		LocalScope + 7: web,
		LocalScope + 8: web,                                 // prefix adopted as +7
		3:              netip.MustParsePrefix("10.0.0.0/8"), // not a CIDR number
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(refused) != 6 {
		t.Errorf("refused %d entries, want 6: %v", len(refused), refused)
	}
	if id := mustAlloc(t, a, app1); id != 300 {
		t.Fatalf("app1 = %d, want its adopted 300", id)
	}
	if id := mustAlloc(t, a, app2); id != 270 {
		t.Fatalf("app2 = %d, want its adopted 270", id)
	}
	if id, _ := a.AllocateCIDR(web); id != LocalScope+7 {
		t.Fatalf("CIDR = %d, want its adopted %d", id, LocalScope+7)
	}
	if id := mustAlloc(t, a, labels.FromDocker(map[string]string{"id": "new"})); id != 301 {
		t.Fatalf("a new label set = %d, want 301 after the highest adopted", id)
	}
	if len(changes) < 2 || changes[0].ID != 270 || changes[1].ID != 300 {
		t.Errorf("subscribers saw %v, want 270 and 300 appear first", changes)
	}
	// Adopted identities hold no reference: the endpoints take theirs.
	if r := a.References(270); r != 1 {
		t.Errorf("270 has %d references after one Allocate, want 1", r)
	}
	b, err := NewFileAllocator(path)
	if err != nil {
		t.Fatal(err)
	}
	if ls, ok := b.Lookup(300); !ok || !ls.Equal(app1) {
		t.Fatalf("after reload 300 = %v %v", ls, ok)
	}
	if b.CIDRs()[LocalScope+7] != web {
		t.Fatalf("after reload CIDRs = %v", b.CIDRs())
	}
}

// Adopt never renumbers what the allocator holds, and writes the file even
// when it adopts nothing, so that a missing file means a lost one.
func TestAdoptRefusesWhatTheAllocatorHolds(t *testing.T) {
	a, path := newAlloc(t)
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("new allocator wrote its file: %v", err)
	}
	if refused, err := a.Adopt(nil, nil); err != nil || len(refused) != 0 {
		t.Fatalf("empty Adopt: %v %v", refused, err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("empty Adopt wrote no file: %v", err)
	}
	app1 := labels.FromDocker(map[string]string{"id": "app1"})
	id := mustAlloc(t, a, app1)
	refused, err := a.Adopt(map[ID]labels.Labels{
		id:     labels.FromDocker(map[string]string{"id": "other"}), // number taken
		id + 5: app1,                                                // labels numbered already
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(refused) != 2 {
		t.Fatalf("refused %v, want both", refused)
	}
	// What it holds already is no conflict.
	if refused, err := a.Adopt(map[ID]labels.Labels{id: app1}, nil); err != nil || len(refused) != 0 {
		t.Fatalf("adopting what is held: %v %v", refused, err)
	}
	if ls, _ := a.Lookup(id); !ls.Equal(app1) {
		t.Fatalf("identity %d renumbered to %v", id, ls)
	}
	if _, ok := a.Lookup(id + 5); ok {
		t.Fatalf("labels of %d adopted again as %d", id, id+5)
	}
}
