package ipcache

import (
	"errors"
	"io"
	"maps"
	"net/netip"
	"sync"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/datapath"
	"github.com/ebpfnet/ebpfnet/identity"
)

// fakeMap stands in for the BPF map: what it holds, and how many writes
// reached it.
type fakeMap struct {
	mu      sync.Mutex
	entries map[netip.Prefix]datapath.IPCacheEntry
	puts    int
	deletes int
	failPut bool
}

func newFakeMap(initial map[netip.Prefix]uint32) *fakeMap {
	m := &fakeMap{entries: map[netip.Prefix]datapath.IPCacheEntry{}}
	for p, id := range initial {
		m.entries[p] = datapath.IPCacheEntry{Identity: identity.ID(id)}
	}
	return m
}

func (m *fakeMap) PutIPCache(p netip.Prefix, e datapath.IPCacheEntry) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failPut {
		return errors.New("map full")
	}
	m.entries[p] = e
	m.puts++
	return nil
}

func (m *fakeMap) DeleteIPCache(p netip.Prefix) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.entries, p)
	m.deletes++
	return nil
}

func (m *fakeMap) IPCache() (map[netip.Prefix]datapath.IPCacheEntry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.entries), nil
}

func (m *fakeMap) get(p string) (uint32, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.entries[netip.MustParsePrefix(p)]
	return uint32(e.Identity), ok
}

func quiet() logrus.FieldLogger {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return l
}

func newCache(t *testing.T, m *fakeMap, waitFor ...Source) *Cache {
	t.Helper()
	c, err := New(m, quiet(), waitFor...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var (
	ep     = netip.MustParsePrefix("10.77.0.2/32")
	subnet = netip.MustParsePrefix("10.77.0.0/16")
)

func TestStrongestSourceWins(t *testing.T) {
	m := newFakeMap(nil)
	c := newCache(t, m)
	if err := c.Upsert(ep, SourceCIDR, Entry{Identity: 16777216}); err != nil {
		t.Fatal(err)
	}
	if err := c.Upsert(ep, SourceRemote, Entry{Identity: 300}); err != nil {
		t.Fatal(err)
	}
	if err := c.Upsert(ep, SourceLocalEndpoint, Entry{Identity: 256}); err != nil {
		t.Fatal(err)
	}
	if id, _ := m.get("10.77.0.2/32"); id != 256 {
		t.Fatalf("map holds %d, want the local endpoint's 256", id)
	}
	// A remote node's deletion or update never touches a local entry.
	if err := c.Delete(ep, SourceRemote); err != nil {
		t.Fatal(err)
	}
	if err := c.Upsert(ep, SourceRemote, Entry{Identity: 301}); err != nil {
		t.Fatal(err)
	}
	if id, _ := m.get("10.77.0.2/32"); id != 256 {
		t.Fatalf("a remote event changed the local entry: %d", id)
	}
	// When the local endpoint goes, the next source takes over in place.
	deletes := m.deletes
	if err := c.Delete(ep, SourceLocalEndpoint); err != nil {
		t.Fatal(err)
	}
	if id, _ := m.get("10.77.0.2/32"); id != 301 || m.deletes != deletes {
		t.Fatalf("map holds %d after %d deletes, want the remote 301 overwritten in place", id, m.deletes-deletes)
	}
	_ = c.Delete(ep, SourceRemote)
	_ = c.Delete(ep, SourceCIDR)
	if _, ok := m.get("10.77.0.2/32"); ok {
		t.Fatal("the entry outlived its last source")
	}
	if len(c.Entries()) != 0 {
		t.Fatalf("entries left: %v", c.Entries())
	}
}

func TestRewritesOnlyChanges(t *testing.T) {
	m := newFakeMap(nil)
	c := newCache(t, m)
	for range 3 {
		if err := c.Upsert(ep, SourceLocalEndpoint, Entry{Identity: 256}); err != nil {
			t.Fatal(err)
		}
	}
	if m.puts != 1 {
		t.Fatalf("%d writes for one unchanged entry", m.puts)
	}
	// A weaker source under a stronger one writes nothing either.
	if err := c.Upsert(ep, SourceCIDR, Entry{Identity: 16777216}); err != nil {
		t.Fatal(err)
	}
	if m.puts != 1 {
		t.Fatalf("a shadowed entry was written (%d writes)", m.puts)
	}
}

func TestReplace(t *testing.T) {
	m := newFakeMap(nil)
	c := newCache(t, m)
	gw := netip.MustParsePrefix("10.77.0.1/32")
	node := netip.MustParsePrefix("192.0.2.10/32")
	host := Entry{Identity: identity.Host}
	if err := c.Replace(SourceHost, map[netip.Prefix]Entry{gw: host, node: host}); err != nil {
		t.Fatal(err)
	}
	if err := c.Upsert(node, SourceCIDR, Entry{Identity: 16777217}); err != nil {
		t.Fatal(err)
	}
	// The node address goes from the host set: the CIDR entry takes it.
	if err := c.Replace(SourceHost, map[netip.Prefix]Entry{gw: host}); err != nil {
		t.Fatal(err)
	}
	if id, _ := m.get("192.0.2.10/32"); id != 16777217 {
		t.Fatalf("node address holds %d, want the CIDR identity", id)
	}
	if id, _ := m.get("10.77.0.1/32"); id != uint32(identity.Host) {
		t.Fatalf("gateway holds %d", id)
	}
	if got := c.Prefixes(SourceHost); len(got) != 1 || got[0] != gw {
		t.Fatalf("host prefixes %v", got)
	}
	// Prefixes are masked however they are spelt.
	if err := c.Replace(SourceCIDR, map[netip.Prefix]Entry{netip.MustParsePrefix("10.77.3.4/16"): {Identity: 16777218}}); err != nil {
		t.Fatal(err)
	}
	if id, _ := m.get(subnet.String()); id != 16777218 {
		t.Fatalf("masked prefix holds %d", id)
	}
	if _, ok := m.get("192.0.2.10/32"); ok {
		t.Fatal("the CIDR source's old entry survived its Replace")
	}
}

// Entries pinned by an earlier start stay until every awaited source has
// synced, so that a restart does not drop what a source puts back a moment
// later; then the stale ones go.
func TestRestoredEntriesWaitForSync(t *testing.T) {
	stale := netip.MustParsePrefix("10.99.0.9/32")
	m := newFakeMap(map[netip.Prefix]uint32{ep: 256, stale: 257})
	c := newCache(t, m, SourceLocalEndpoint, SourceRemote)
	if err := c.Upsert(ep, SourceLocalEndpoint, Entry{Identity: 256}); err != nil {
		t.Fatal(err)
	}
	if m.puts != 0 {
		t.Fatal("a claimed entry equal to the restored one was rewritten")
	}
	if err := c.MarkSynced(SourceLocalEndpoint); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.get(stale.String()); !ok {
		t.Fatal("a restored entry went before every awaited source had synced")
	}
	if err := c.MarkSynced(SourceRemote); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.get(stale.String()); ok {
		t.Fatal("a stale restored entry survived the sync")
	}
	if id, _ := m.get(ep.String()); id != 256 {
		t.Fatal("the claimed entry went with the stale ones")
	}
}

func TestRefusesBadInput(t *testing.T) {
	m := newFakeMap(nil)
	c := newCache(t, m)
	if err := c.Upsert(ep, SourceLocalEndpoint, Entry{}); err == nil {
		t.Error("identity 0 accepted")
	}
	if err := c.Upsert(netip.Prefix{}, SourceLocalEndpoint, Entry{Identity: 256}); err == nil {
		t.Error("invalid prefix accepted")
	}
	if err := c.Replace(SourceHost, map[netip.Prefix]Entry{ep: {}}); err == nil {
		t.Error("Replace accepted identity 0")
	}
	if len(m.entries) != 0 {
		t.Fatalf("bad input changed the map: %v", m.entries)
	}
}

// A failed write leaves the wish in place: the next change of the prefix
// writes it.
func TestFailedWriteIsRetried(t *testing.T) {
	m := newFakeMap(nil)
	c := newCache(t, m)
	m.failPut = true
	if err := c.Upsert(ep, SourceLocalEndpoint, Entry{Identity: 256}); err == nil {
		t.Fatal("a failed write reported success")
	}
	m.failPut = false
	if err := c.Upsert(ep, SourceCIDR, Entry{Identity: 16777216}); err != nil {
		t.Fatal(err)
	}
	if id, _ := m.get(ep.String()); id != 256 {
		t.Fatalf("map holds %d, want the local entry written on retry", id)
	}
}

func TestConcurrentSources(t *testing.T) {
	m := newFakeMap(nil)
	c := newCache(t, m)
	var wg sync.WaitGroup
	for s := range numSources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i), 1}), 32)
				_ = c.Upsert(p, s, Entry{Identity: identity.ID(256 + int(s))})
			}
		}()
	}
	wg.Wait()
	for p, o := range c.Entries() {
		if o.Source != SourceLocalEndpoint {
			t.Fatalf("%v: source %v won over the local endpoint", p, o.Source)
		}
		if id, _ := m.get(p.String()); id != 256 {
			t.Fatalf("%v holds %d", p, id)
		}
	}
}

// A remote entry that moves to another node is rewritten even when its
// identity stays; the node's name is the daemon's alone.
func TestTunnelEndpointChanges(t *testing.T) {
	m := newFakeMap(nil)
	c := newCache(t, m)
	nodeA, nodeB := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	if err := c.Upsert(ep, SourceRemote, Entry{Identity: 300, TunnelEndpoint: nodeA, Node: "a"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Upsert(ep, SourceRemote, Entry{Identity: 300, TunnelEndpoint: nodeB, Node: "b"}); err != nil {
		t.Fatal(err)
	}
	if got := m.entries[ep]; got.TunnelEndpoint != nodeB || m.puts != 2 {
		t.Fatalf("map holds %+v after %d writes, want node b's address", got, m.puts)
	}
	if err := c.Upsert(ep, SourceRemote, Entry{Identity: 300, TunnelEndpoint: nodeB, Node: "b-renamed"}); err != nil {
		t.Fatal(err)
	}
	if m.puts != 2 {
		t.Fatal("a change the datapath does not see was written")
	}
	if o := c.Entries()[ep]; o.Node != "b-renamed" || o.Source != SourceRemote {
		t.Fatalf("entry %+v", o)
	}
}
