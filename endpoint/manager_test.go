package endpoint

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"path/filepath"
	"reflect"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/datapath"
	"github.com/ebpfnet/ebpfnet/identity"
	"github.com/ebpfnet/ebpfnet/ipcache"
	"github.com/ebpfnet/ebpfnet/labels"
	"github.com/ebpfnet/ebpfnet/policy"
)

// fakeDatapath keeps endpoints and their policy in memory, as the kernel
// side would, and the ipcache map too.
type fakeDatapath struct {
	mu       sync.Mutex
	eps      map[uint16]*fakeEndpoint
	nextID   uint16
	ipcache  map[netip.Prefix]identity.ID
	creates  []policy.EndpointPolicy // the initial policy of each creation
	blockDel chan struct{}           // when set, DeleteEndpoint waits on it once
	// onSetIdentity, when set, sees the endpoints as they are at the
	// moment an endpoint's identity changes (f.mu is held).
	onSetIdentity func(epid uint16, identity uint32, eps map[uint16]*fakeEndpoint)
}

type fakeEndpoint struct {
	ep     datapath.Endpoint
	policy policy.EndpointPolicy
}

func newFakeDatapath() *fakeDatapath {
	return &fakeDatapath{eps: map[uint16]*fakeEndpoint{}, ipcache: map[netip.Prefix]identity.ID{}}
}

func (f *fakeDatapath) CreateEndpoint(ep *datapath.Endpoint) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nextID++
	ep.ID = f.nextID
	p := policy.EndpointPolicy{}
	if ep.InitialPolicy != nil {
		p = *ep.InitialPolicy
	}
	f.creates = append(f.creates, p)
	c := *ep
	c.InitialPolicy = nil
	f.eps[ep.ID] = &fakeEndpoint{ep: c, policy: p}
	return nil
}

func (f *fakeDatapath) DeleteEndpoint(dockerEndpointID string) error {
	f.mu.Lock()
	block := f.blockDel
	f.blockDel = nil
	f.mu.Unlock()
	if block != nil {
		<-block
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, e := range f.eps {
		if e.ep.DockerEndpointID == dockerEndpointID {
			delete(f.eps, id)
		}
	}
	return nil
}

func (f *fakeDatapath) Endpoint(dockerEndpointID string) (datapath.Endpoint, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range f.eps {
		if e.ep.DockerEndpointID == dockerEndpointID {
			return e.ep, true
		}
	}
	return datapath.Endpoint{}, false
}

func (f *fakeDatapath) Endpoints() []datapath.Endpoint {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []datapath.Endpoint
	for _, e := range f.eps {
		out = append(out, e.ep)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (f *fakeDatapath) SetEndpointIdentity(id uint16, identity uint32, containerID, containerName string, labels map[string]string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.eps[id]
	if !ok {
		return datapath.ErrNoEndpoint
	}
	if f.onSetIdentity != nil {
		f.onSetIdentity(id, identity, f.eps)
	}
	e.ep.Identity, e.ep.ContainerID, e.ep.ContainerName, e.ep.Labels = identity, containerID, containerName, maps.Clone(labels)
	return nil
}

func (f *fakeDatapath) ApplyPolicy(id uint16, p policy.EndpointPolicy) (int, int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.eps[id]
	if !ok {
		return 0, 0, datapath.ErrNoEndpoint
	}
	add, del := policy.Diff(e.policy.Entries, p.Entries)
	e.policy = p
	return len(add), len(del), nil
}

func (f *fakeDatapath) PutIPCache(p netip.Prefix, e datapath.IPCacheEntry) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ipcache[p] = e.Identity
	return nil
}

func (f *fakeDatapath) DeleteIPCache(p netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.ipcache, p)
	return nil
}

func (f *fakeDatapath) IPCache() (map[netip.Prefix]datapath.IPCacheEntry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[netip.Prefix]datapath.IPCacheEntry{}
	for p, id := range f.ipcache {
		out[p] = datapath.IPCacheEntry{Identity: id}
	}
	return out, nil
}

func (f *fakeDatapath) policyOf(t *testing.T, dockerID string) (datapath.Endpoint, policy.EndpointPolicy) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range f.eps {
		if e.ep.DockerEndpointID == dockerID {
			return e.ep, e.policy
		}
	}
	t.Fatalf("no endpoint %s", dockerID)
	return datapath.Endpoint{}, policy.EndpointPolicy{}
}

func (f *fakeDatapath) ipcacheOf(p string) (identity.ID, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id, ok := f.ipcache[netip.MustParsePrefix(p)]
	return id, ok
}

// fakePublisher records what the cluster would be told.
type fakePublisher struct {
	mu        sync.Mutex
	published map[netip.Addr]identity.ID
}

func (f *fakePublisher) PublishEndpoint(ip netip.Addr, id identity.ID) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.published[ip] = id
	return nil
}

func (f *fakePublisher) WithdrawEndpoint(ip netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.published, ip)
}

func (f *fakePublisher) get(ip string) (identity.ID, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id, ok := f.published[netip.MustParseAddr(ip)]
	return id, ok
}

// env is a manager over the fake datapath and the real pure parts: the
// file identity allocator, the policy repository and the ipcache.
type env struct {
	t     *testing.T
	dp    *fakeDatapath
	ids   *identity.FileAllocator
	rules *policy.Repository
	m     *Manager
	node  []netip.Addr
	pub   *fakePublisher
	// labelIDs, when set, numbers label sets in place of ids.
	labelIDs identity.Allocator
}

const netID = "net1"

var gateway = netip.MustParseAddr("10.77.0.1")

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{t: t, dp: newFakeDatapath(), node: []netip.Addr{netip.MustParseAddr("192.0.2.10")},
		pub: &fakePublisher{published: map[netip.Addr]identity.ID{}}}
	var err error
	if e.ids, err = identity.NewFileAllocator(filepath.Join(dir, "identities.json")); err != nil {
		t.Fatal(err)
	}
	if e.rules, err = policy.NewRepository(filepath.Join(dir, "policy.json")); err != nil {
		t.Fatal(err)
	}
	e.start(nil)
	return e
}

// start runs a manager over e's parts, restoring eps on netID.
func (e *env) start(eps []datapath.Endpoint) {
	e.t.Helper()
	e.startOn(eps, []Network{{ID: netID, Gateway: gateway, Mode: policy.ModeDefault}})
}

// startOn runs a manager over e's parts, restoring eps on networks.
func (e *env) startOn(eps []datapath.Endpoint, networks []Network) {
	e.t.Helper()
	log := logrus.New()
	log.SetOutput(io.Discard)
	cache, err := ipcache.New(e.dp, log, ipcache.SourceLocalEndpoint, ipcache.SourceHost, ipcache.SourceCIDR)
	if err != nil {
		e.t.Fatal(err)
	}
	var labelIDs identity.Allocator = e.ids
	if e.labelIDs != nil {
		labelIDs = e.labelIDs
	}
	e.m, err = New(Config{
		Datapath: e.dp, IPCache: cache, Identities: labelIDs, CIDRs: e.ids, Rules: e.rules,
		NodeAddresses: func() ([]netip.Addr, error) { return e.node, nil },
		Publish:       e.pub,
		Log:           log,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.m.Start()
	m := e.m
	e.t.Cleanup(m.Close)
	if err := e.m.Restore(context.Background(), eps, networks); err != nil {
		e.t.Fatal(err)
	}
	e.settle()
}

// settle waits until the loop has run everything queued so far,
// regenerations included.
func (e *env) settle() {
	e.t.Helper()
	ch := make(chan struct{})
	// A wait for revision 0 is answered when the loop reaches it; the
	// empty-queue regeneration before it has run by then if it was due,
	// because the wait is queued behind everything before.
	if !e.m.q.put(waitRevision{rev: 0, done: ch}) {
		e.t.Fatal("manager stopped")
	}
	<-ch
	if err := e.m.call(context.Background(), func(l *loop) error { l.flush(); return nil }); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) create(dockerID string, addr string) datapath.Endpoint {
	e.t.Helper()
	ep := &datapath.Endpoint{
		DockerNetworkID:  netID,
		DockerEndpointID: dockerID,
		IPv4:             netip.MustParsePrefix(addr + "/16"),
	}
	if err := e.m.CreateEndpoint(context.Background(), ep); err != nil {
		e.t.Fatal(err)
	}
	return *ep
}

func (e *env) setLabels(dockerID, containerID string, ls map[string]string) {
	e.t.Helper()
	if err := e.m.SetContainer(context.Background(), dockerID, Container{ID: containerID, Name: containerID, Labels: ls}); err != nil {
		e.t.Fatal(err)
	}
	e.settle()
}

func (e *env) importRules(js string) uint64 {
	e.t.Helper()
	rules, err := policy.Parse([]byte(js))
	if err != nil {
		e.t.Fatal(err)
	}
	rev, err := e.m.ImportRules(context.Background(), rules)
	if err != nil {
		e.t.Fatal(err)
	}
	return rev
}

const app1FromApp2 = `[{"endpointSelector": {"matchLabels": {"id": "app1"}},
	"ingress": [{"fromEndpoints": [{"matchLabels": {"id": "app2"}}]}],
	"labels": [{"key": "name", "value": "r"}]}]`

func has(p policy.EndpointPolicy, k policy.Key) bool {
	_, ok := p.Entries[k]
	return ok
}

// B1: an endpoint is created under the rules in force. Still at init, it
// is denied both ways as soon as any rule exists.
func TestCreateIsClosedUnderRules(t *testing.T) {
	e := newEnv(t)
	e.create("open", "10.77.0.2")
	if p := e.dp.creates[0]; p.IngressEnforced || p.EgressEnforced {
		t.Fatalf("with no rules a new endpoint enforces %+v", p)
	}
	e.importRules(app1FromApp2)
	ep := e.create("closed", "10.77.0.3")
	if p := e.dp.creates[1]; !p.IngressEnforced || !p.EgressEnforced || len(p.Entries) != 0 {
		t.Fatalf("initial policy under rules %+v, want deny both ways", p)
	}
	if id, _ := e.dp.ipcacheOf("10.77.0.3/32"); id != identity.Init || ep.Identity != uint32(identity.Init) {
		t.Fatalf("a new endpoint is %d in the ipcache, %d itself: want init", id, ep.Identity)
	}
}

func TestLabelsGiveIdentitiesAndPolicy(t *testing.T) {
	e := newEnv(t)
	e.importRules(app1FromApp2)
	e.create("ep1", "10.77.0.2")
	e.create("ep2", "10.77.0.3")
	e.setLabels("ep1", "c1", map[string]string{"id": "app1"})
	e.setLabels("ep2", "c2", map[string]string{"id": "app2"})
	ep2, _ := e.dp.policyOf(t, "ep2")
	ep1, p1 := e.dp.policyOf(t, "ep1")
	if ep1.Identity == uint32(identity.Init) || ep2.Identity == uint32(identity.Init) || ep1.Identity == ep2.Identity {
		t.Fatalf("identities %d, %d", ep1.Identity, ep2.Identity)
	}
	if !p1.IngressEnforced || !has(p1, policy.Key{Identity: ep2.Identity, Direction: policy.Ingress}) {
		t.Fatalf("app1's policy %+v does not allow app2 (%d)", p1, ep2.Identity)
	}
	if _, p2 := e.dp.policyOf(t, "ep2"); p2.IngressEnforced || p2.EgressEnforced {
		t.Fatalf("app2, selected by no rule, enforces %+v", p2)
	}
	if id, _ := e.dp.ipcacheOf("10.77.0.3/32"); uint32(id) != ep2.Identity {
		t.Fatalf("ipcache holds %d for app2, want %d", id, ep2.Identity)
	}
	if r := e.ids.References(identity.ID(ep1.Identity)); r != 1 {
		t.Fatalf("app1's identity has %d references", r)
	}
	// Docker's events repeat: nothing changes, no reference is added.
	e.setLabels("ep1", "c1", map[string]string{"id": "app1"})
	if r := e.ids.References(identity.ID(ep1.Identity)); r != 1 {
		t.Fatalf("a repeated event left %d references", r)
	}
	// A second container with app2's labels shares its identity.
	e.create("ep3", "10.77.0.4")
	e.setLabels("ep3", "c3", map[string]string{"id": "app2"})
	if ep3, _ := e.dp.policyOf(t, "ep3"); ep3.Identity != ep2.Identity || e.ids.References(identity.ID(ep2.Identity)) != 2 {
		t.Fatalf("same labels: identity %d (want %d), %d references", ep3.Identity, ep2.Identity, e.ids.References(identity.ID(ep2.Identity)))
	}
}

// An identity carries traffic only once every policy map knows it: when a
// new identity is set on its endpoint, the endpoints whose rules allow it
// allow it already.
func TestNewIdentityIsAllowedBeforeItIsUsed(t *testing.T) {
	e := newEnv(t)
	e.importRules(app1FromApp2)
	e.create("ep1", "10.77.0.2")
	ep2 := e.create("ep2", "10.77.0.3")
	e.setLabels("ep1", "c1", map[string]string{"id": "app1"})
	ep1, _ := e.dp.policyOf(t, "ep1")
	checked := false
	e.dp.onSetIdentity = func(epid uint16, id uint32, eps map[uint16]*fakeEndpoint) {
		if epid != ep2.ID {
			return
		}
		checked = true
		if !has(eps[ep1.ID].policy, policy.Key{Identity: id, Direction: policy.Ingress}) {
			t.Errorf("app2 became %d before app1's policy allowed it", id)
		}
	}
	e.setLabels("ep2", "c2", map[string]string{"id": "app2"})
	if !checked {
		t.Fatal("app2's identity was never set")
	}
}

// A deleted endpoint's identity, held by no one, is kept for the grace:
// the policy that names it stays as it is, and a container with the same
// labels coming back takes the same number without a regeneration. Once
// collected, it is freed and the policy forgets it.
func TestDeleteReleasesIdentityAndPolicyForgetsIt(t *testing.T) {
	e := newEnv(t)
	e.importRules(app1FromApp2)
	e.create("ep1", "10.77.0.2")
	e.create("ep2", "10.77.0.3")
	e.setLabels("ep1", "c1", map[string]string{"id": "app1"})
	e.setLabels("ep2", "c2", map[string]string{"id": "app2"})
	ep2, _ := e.dp.policyOf(t, "ep2")
	app2 := identity.ID(ep2.Identity)
	allowsApp2 := policy.Key{Identity: ep2.Identity, Direction: policy.Ingress}
	before := e.m.Regenerations()
	if err := e.m.DeleteEndpoint(context.Background(), "ep2"); err != nil {
		t.Fatal(err)
	}
	e.settle()
	if _, ok := e.dp.ipcacheOf("10.77.0.3/32"); ok {
		t.Fatal("the deleted endpoint's ipcache entry is still there")
	}
	if r := e.ids.References(app2); r != 0 {
		t.Fatalf("the deleted endpoint's identity has %d references, want 0", r)
	}
	if _, ok := e.ids.Lookup(app2); !ok {
		t.Fatal("the deleted endpoint's identity was freed at once, before the grace")
	}
	if got := e.m.Regenerations() - before; got != 0 {
		t.Fatalf("deleting the last endpoint of an identity regenerated %d times, want 0 within the grace", got)
	}

	// The same labels again, within the grace: the same number, and app1's
	// policy, which allows it, is not regenerated.
	e.create("ep2b", "10.77.0.4")
	e.setLabels("ep2b", "c2b", map[string]string{"id": "app2"})
	if again, _ := e.dp.policyOf(t, "ep2b"); again.Identity != ep2.Identity {
		t.Fatalf("app2 came back as identity %d, want its %d", again.Identity, ep2.Identity)
	}
	if got := e.m.Regenerations() - before; got != 0 {
		t.Fatalf("app2 coming back within the grace regenerated %d times, want 0", got)
	}
	if _, p1 := e.dp.policyOf(t, "ep1"); !has(p1, allowsApp2) {
		t.Fatal("app1's policy no longer allows app2 when it comes back")
	}
	if err := e.m.DeleteEndpoint(context.Background(), "ep2b"); err != nil {
		t.Fatal(err)
	}
	e.settle()

	// Past the grace the collector frees it: every policy forgets it.
	if freed, err := e.ids.CollectUnreferencedSince(time.Now()); err != nil || len(freed) != 1 || freed[0] != app2 {
		t.Fatalf("collected %v %v, want [%d]", freed, err, app2)
	}
	e.settle()
	if _, ok := e.ids.Lookup(app2); ok {
		t.Fatal("the collected identity still resolves")
	}
	if _, p1 := e.dp.policyOf(t, "ep1"); has(p1, allowsApp2) {
		t.Fatal("app1's policy still allows the freed identity")
	}
	if err := e.m.DeleteEndpoint(context.Background(), "ep2"); err != nil {
		t.Fatalf("deleting again: %v", err)
	}
}

// Many deletions queued at once cost no regeneration (their identities
// are kept for the grace), and the identities they leave, collected
// together, cost one, not one each.
func TestBurstOfDeletionsRegeneratesOnce(t *testing.T) {
	e := newEnv(t)
	const n = 20
	for i := range n {
		id := fmt.Sprintf("ep%d", i)
		e.create(id, fmt.Sprintf("10.77.1.%d", i+1))
		e.setLabels(id, "c"+id, map[string]string{"id": id})
	}
	e.settle()
	before := e.m.Regenerations()
	release := make(chan struct{})
	e.dp.mu.Lock()
	e.dp.blockDel = release
	e.dp.mu.Unlock()
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := e.m.DeleteEndpoint(context.Background(), fmt.Sprintf("ep%d", i)); err != nil {
				t.Error(err)
			}
		}()
	}
	// Everything is queued behind the first, blocked deletion.
	waitQueued(t, e.m, n-1)
	close(release)
	wg.Wait()
	e.settle()
	if got := e.m.Regenerations() - before; got != 0 {
		t.Fatalf("%d regenerations for a burst of %d deletions, want none within the grace", got, n)
	}
	if len(e.ids.All()) != n {
		t.Fatalf("%d identities kept after the deletions, want %d", len(e.ids.All()), n)
	}

	// The collection's changes all reach the loop while it is busy, as
	// when it frees them amid other work.
	busy, entered := make(chan struct{}), make(chan struct{})
	go func() {
		_ = e.m.call(context.Background(), func(*loop) error { close(entered); <-busy; return nil })
	}()
	<-entered
	if freed, err := e.ids.CollectUnreferencedSince(time.Now()); err != nil || len(freed) != n {
		close(busy)
		t.Fatalf("collected %v %v, want %d identities", freed, err, n)
	}
	waitQueued(t, e.m, n)
	close(busy)
	e.settle()
	if got := e.m.Regenerations() - before; got != 1 {
		t.Fatalf("%d regenerations for %d identities collected at once, want 1", got, n)
	}
	if len(e.ids.All()) != 0 {
		t.Fatalf("identities left: %v", e.ids.All())
	}
}

// waitQueued waits until the manager's queue holds n events.
func waitQueued(t *testing.T, m *Manager, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		m.q.mu.Lock()
		queued := len(m.q.items)
		m.q.mu.Unlock()
		if queued == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events queued, want %d", queued, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// ImportRules answers once every endpoint enforces what it imported.
func TestImportIsAppliedWhenItReturns(t *testing.T) {
	e := newEnv(t)
	e.create("ep1", "10.77.0.2")
	e.setLabels("ep1", "c1", map[string]string{"id": "app1"})
	rev := e.importRules(app1FromApp2)
	if _, p := e.dp.policyOf(t, "ep1"); !p.IngressEnforced {
		t.Fatalf("right after import (revision %d) app1 enforces %+v", rev, p)
	}
	rev2, err := e.m.DeleteAllRules(context.Background())
	if err != nil || rev2 != rev+1 {
		t.Fatalf("delete all: %d, %v", rev2, err)
	}
	if _, p := e.dp.policyOf(t, "ep1"); p.IngressEnforced {
		t.Fatal("right after deleting the rules app1 still enforces them")
	}
}

func TestRulePrefixesGetIdentitiesAndEntries(t *testing.T) {
	e := newEnv(t)
	e.create("ep1", "10.77.0.2")
	e.setLabels("ep1", "c1", map[string]string{"id": "app1"})
	e.importRules(`[{"endpointSelector": {"matchLabels": {"id": "app1"}},
		"egress": [{"toCIDR": ["198.51.100.0/24"]}], "labels": [{"key": "name", "value": "cidr"}]}]`)
	id, ok := e.dp.ipcacheOf("198.51.100.0/24")
	if !ok || id.Kind() != identity.KindCIDR {
		t.Fatalf("ipcache entry of the rule's prefix: %d, %v", id, ok)
	}
	if _, p := e.dp.policyOf(t, "ep1"); !has(p, policy.Key{Identity: uint32(id), Direction: policy.Egress}) {
		t.Fatalf("app1's egress %+v does not allow the prefix's identity %d", p, id)
	}
	// The rule is replaced by one without the prefix: entry and identity
	// go.
	e.importRules(`[{"endpointSelector": {"matchLabels": {"id": "app1"}},
		"egress": [{"toEntities": ["host"]}], "labels": [{"key": "name", "value": "cidr"}]}]`)
	if _, ok := e.dp.ipcacheOf("198.51.100.0/24"); ok {
		t.Fatal("the prefix no rule names kept its ipcache entry")
	}
	if len(e.ids.CIDRs()) != 0 {
		t.Fatalf("CIDR identities left: %v", e.ids.CIDRs())
	}
}

func TestHostAddresses(t *testing.T) {
	e := newEnv(t)
	for _, p := range []string{"10.77.0.1/32", "192.0.2.10/32"} {
		if id, _ := e.dp.ipcacheOf(p); id != identity.Host {
			t.Fatalf("%s is %d in the ipcache, want host", p, id)
		}
	}
	e.m.SetNetworks([]Network{{ID: "net2", Gateway: netip.MustParseAddr("10.78.0.1")}})
	e.settle()
	if _, ok := e.dp.ipcacheOf("10.77.0.1/32"); ok {
		t.Fatal("a removed network's gateway is still the host")
	}
	if id, _ := e.dp.ipcacheOf("10.78.0.1/32"); id != identity.Host {
		t.Fatal("a new network's gateway is not the host")
	}
}

// An endpoint whose network the manager does not know denies all rather
// than being left open.
func TestUnknownNetworkFailsClosed(t *testing.T) {
	e := newEnv(t)
	ep := &datapath.Endpoint{DockerNetworkID: "nope", DockerEndpointID: "lost", IPv4: netip.MustParsePrefix("10.79.0.2/16")}
	if err := e.m.CreateEndpoint(context.Background(), ep); err != nil {
		t.Fatal(err)
	}
	if p := e.dp.creates[0]; !p.IngressEnforced || !p.EgressEnforced || len(p.Entries) != 0 {
		t.Fatalf("policy on an unknown network %+v, want deny all", p)
	}
}

// After a restart the endpoints take their identities' references again;
// an identity file that was lost gives them new numbers, put right in the
// datapath.
func TestRestoreTakesReferencesAndRenumbers(t *testing.T) {
	e := newEnv(t)
	e.create("ep1", "10.77.0.2")
	e.setLabels("ep1", "c1", map[string]string{"id": "app1"})
	ep1, _ := e.dp.policyOf(t, "ep1")
	e.m.Close()

	// Same file: the same number, one reference.
	ids, err := identity.NewFileAllocator(filepath.Join(t.TempDir(), "fresh.json"))
	if err != nil {
		t.Fatal(err)
	}
	// Take a number first so that app1 cannot get its old one back.
	if _, err := ids.Allocate(context.Background(), labels.FromDocker(map[string]string{"other": "x"})); err != nil {
		t.Fatal(err)
	}
	e.ids = ids
	e.start(e.dp.Endpoints())
	got, _ := e.dp.policyOf(t, "ep1")
	if got.Identity == ep1.Identity || got.Identity == uint32(identity.Init) {
		t.Fatalf("after losing the identity file the endpoint is %d (was %d)", got.Identity, ep1.Identity)
	}
	if r := ids.References(identity.ID(got.Identity)); r != 1 {
		t.Fatalf("restored endpoint holds %d references", r)
	}
	if id, _ := e.dp.ipcacheOf("10.77.0.2/32"); uint32(id) != got.Identity {
		t.Fatalf("ipcache %d, want the new number %d", id, got.Identity)
	}
}

// A caller that gives up while its event is still queued withdraws it.
func TestWithdrawnCallDoesNotRun(t *testing.T) {
	e := newEnv(t)
	e.create("ep1", "10.77.0.2")
	release := make(chan struct{})
	e.dp.mu.Lock()
	e.dp.blockDel = release
	e.dp.mu.Unlock()
	go func() { _ = e.m.DeleteEndpoint(context.Background(), "ep1") }()
	for {
		e.dp.mu.Lock()
		waiting := e.dp.blockDel == nil
		e.dp.mu.Unlock()
		if waiting {
			break
		}
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	ep := &datapath.Endpoint{DockerNetworkID: netID, DockerEndpointID: "late", IPv4: netip.MustParsePrefix("10.77.0.3/16")}
	err := e.m.CreateEndpoint(ctx, ep)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the deadline", err)
	}
	close(release)
	e.settle()
	if _, ok := e.dp.Endpoint("late"); ok {
		t.Fatal("a withdrawn creation ran anyway")
	}
}

func TestClosedManagerRefuses(t *testing.T) {
	e := newEnv(t)
	e.m.Close()
	ep := &datapath.Endpoint{DockerNetworkID: netID, DockerEndpointID: "x", IPv4: netip.MustParsePrefix("10.77.0.3/16")}
	if err := e.m.CreateEndpoint(context.Background(), ep); !errors.Is(err, ErrStopped) {
		t.Fatalf("err = %v, want ErrStopped", err)
	}
}

// In a cluster the other nodes learn every local endpoint: at init from
// its creation, with its identity once known, gone with it.
func TestEndpointsArePublished(t *testing.T) {
	e := newEnv(t)
	e.create("ep1", "10.77.0.2")
	if id, ok := e.pub.get("10.77.0.2"); !ok || id != identity.Init {
		t.Fatalf("published %d, %v; want init", id, ok)
	}
	e.setLabels("ep1", "c1", map[string]string{"id": "app1"})
	ep, _ := e.dp.policyOf(t, "ep1")
	if id, _ := e.pub.get("10.77.0.2"); uint32(id) != ep.Identity {
		t.Fatalf("published %d, want the labels' %d", id, ep.Identity)
	}
	if err := e.m.DeleteEndpoint(context.Background(), "ep1"); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.pub.get("10.77.0.2"); ok {
		t.Fatal("a deleted endpoint is still published")
	}
}

const app2ToCIDR = `[{"endpointSelector": {"matchLabels": {"id": "app2"}},
	"egress": [{"toCIDR": ["198.51.100.0/24"]}], "labels": [{"key": "name", "value": "c"}]}]`

// Rules whose file was lost: the endpoints restored keep their pinned
// policy (neither opened nor emptied), the CIDR identities keep their
// numbers and ipcache entries, a new endpoint denies both ways even once
// its labels are known, and an import puts everything under the rules.
func TestLostRulesKeepRestoredPolicyAndDenyNew(t *testing.T) {
	e := newEnv(t)
	e.importRules(app1FromApp2)
	e.importRules(app2ToCIDR)
	e.create("ep1", "10.77.0.2")
	e.create("ep2", "10.77.0.3")
	e.setLabels("ep1", "c1", map[string]string{"id": "app1"})
	e.setLabels("ep2", "c2", map[string]string{"id": "app2"})
	_, p1 := e.dp.policyOf(t, "ep1")
	_, p2 := e.dp.policyOf(t, "ep2")
	cidr, ok := e.dp.ipcacheOf("198.51.100.0/24")
	if !ok || !p1.IngressEnforced || !p2.EgressEnforced {
		t.Fatalf("set-up: ipcache %v, app1 %+v, app2 %+v", ok, p1, p2)
	}
	e.m.Close()

	if err := e.rules.MarkLost("policy.json was corrupt"); err != nil {
		t.Fatal(err)
	}
	e.start(e.dp.Endpoints())
	if _, got := e.dp.policyOf(t, "ep1"); !reflect.DeepEqual(got, p1) {
		t.Fatalf("app1's policy after the loss %+v, want it kept %+v", got, p1)
	}
	if _, got := e.dp.policyOf(t, "ep2"); !reflect.DeepEqual(got, p2) {
		t.Fatalf("app2's policy after the loss %+v, want it kept %+v", got, p2)
	}
	if id, ok := e.dp.ipcacheOf("198.51.100.0/24"); !ok || id != cidr {
		t.Fatalf("the rules' prefix is %d %v in the ipcache, want its identity %d kept", id, ok, cidr)
	}
	e.create("ep3", "10.77.0.4")
	e.setLabels("ep3", "c3", map[string]string{"id": "app2"})
	if _, p3 := e.dp.policyOf(t, "ep3"); !p3.IngressEnforced || !p3.EgressEnforced || len(p3.Entries) != 0 {
		t.Fatalf("a new endpoint while the rules are lost: %+v, want deny all", p3)
	}
	// A frozen endpoint that gets its labels again keeps its policy.
	e.setLabels("ep1", "c1", map[string]string{"id": "app1"})
	if _, got := e.dp.policyOf(t, "ep1"); !reflect.DeepEqual(got, p1) {
		t.Fatalf("app1's policy after its labels came again %+v, want it kept", got)
	}

	e.importRules(app1FromApp2)
	ep3, p3 := e.dp.policyOf(t, "ep3")
	if p3.IngressEnforced || p3.EgressEnforced {
		t.Fatalf("after the import app2's new endpoint %+v, want what the rules say (open)", p3)
	}
	if _, got := e.dp.policyOf(t, "ep1"); !has(got, policy.Key{Identity: ep3.Identity, Direction: policy.Ingress}) {
		t.Fatalf("after the import app1 %+v does not allow app2 (%d)", got, ep3.Identity)
	}
	if _, got := e.dp.policyOf(t, "ep2"); got.EgressEnforced {
		t.Fatalf("after an import without the CIDR rule app2 still enforces egress %+v", got)
	}
	if _, ok := e.dp.ipcacheOf("198.51.100.0/24"); ok {
		t.Fatal("the prefix no rule names any more kept its ipcache entry")
	}
}

// A network whose options are not known yet (rebuilt, Docker not asked):
// its endpoints keep their policy, a new one denies all, and once the
// network is confirmed everything is compiled with its options.
func TestUnconfirmedNetworkKeepsPolicy(t *testing.T) {
	e := newEnv(t)
	e.create("ep1", "10.77.0.2")
	e.setLabels("ep1", "c1", map[string]string{"id": "app1"})
	e.m.Close()
	if _, err := e.rules.Import(mustParseRules(t, app1FromApp2)); err != nil {
		t.Fatal(err)
	}
	e.startOn(e.dp.Endpoints(), []Network{{ID: netID, Gateway: gateway, Unconfirmed: true}})
	if _, p := e.dp.policyOf(t, "ep1"); p.IngressEnforced || p.EgressEnforced {
		t.Fatalf("on an unconfirmed network app1 was compiled again: %+v", p)
	}
	if id, _ := e.dp.ipcacheOf("10.77.0.1/32"); id != identity.Host {
		t.Fatalf("the unconfirmed network's gateway is %d, want host", id)
	}
	e.create("ep2", "10.77.0.3")
	e.setLabels("ep2", "c2", map[string]string{"id": "app2"})
	if _, p := e.dp.policyOf(t, "ep2"); !p.IngressEnforced || !p.EgressEnforced || len(p.Entries) != 0 {
		t.Fatalf("a new endpoint on an unconfirmed network %+v, want deny all", p)
	}
	e.m.SetNetworks([]Network{{ID: netID, Gateway: gateway, Mode: policy.ModeNever}})
	e.settle()
	if _, p := e.dp.policyOf(t, "ep1"); p.IngressEnforced {
		t.Fatalf("confirmed with enforcement never, app1 enforces %+v", p)
	}
	if _, p := e.dp.policyOf(t, "ep2"); p.IngressEnforced || p.EgressEnforced {
		t.Fatalf("confirmed with enforcement never, app2 enforces %+v", p)
	}
}

func mustParseRules(t *testing.T, js string) []policy.Rule {
	t.Helper()
	rules, err := policy.Parse([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return rules
}

// A dual-stack endpoint has one identity for both addresses: both are in
// the ipcache and published under it, follow its labels, and go with it;
// an IPv6 gateway is the host.
func TestDualStackEndpoint(t *testing.T) {
	e := newEnv(t)
	gw6 := netip.MustParseAddr("fd00:77::1")
	e.m.SetNetworks([]Network{{ID: netID, Gateway: gateway, Gateway6: gw6, Mode: policy.ModeDefault}})
	e.settle()
	if id, _ := e.dp.ipcacheOf("fd00:77::1/128"); id != identity.Host {
		t.Fatalf("the IPv6 gateway is %d in the ipcache, want host", id)
	}
	ep := &datapath.Endpoint{DockerNetworkID: netID, DockerEndpointID: "ep1",
		IPv4: netip.MustParsePrefix("10.77.0.2/16"), IPv6: netip.MustParsePrefix("fd00:77::2/64")}
	if err := e.m.CreateEndpoint(context.Background(), ep); err != nil {
		t.Fatal(err)
	}
	e.setLabels("ep1", "c1", map[string]string{"id": "app1"})
	got, _ := e.dp.policyOf(t, "ep1")
	for _, a := range []string{"10.77.0.2", "fd00:77::2"} {
		if id, _ := e.dp.ipcacheOf(netip.PrefixFrom(netip.MustParseAddr(a), netip.MustParseAddr(a).BitLen()).String()); uint32(id) != got.Identity {
			t.Errorf("%s is %d in the ipcache, want the endpoint's %d", a, id, got.Identity)
		}
		if id, ok := e.pub.get(a); !ok || uint32(id) != got.Identity {
			t.Errorf("%s published as %d (%v), want %d", a, id, ok, got.Identity)
		}
	}
	if err := e.m.DeleteEndpoint(context.Background(), "ep1"); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"10.77.0.2", "fd00:77::2"} {
		if _, ok := e.pub.get(a); ok {
			t.Errorf("%s still published after the deletion", a)
		}
	}
	if _, ok := e.dp.ipcacheOf("fd00:77::2/128"); ok {
		t.Error("the deleted endpoint's IPv6 address is still in the ipcache")
	}
}

// renumberingAllocator is the file allocator, plus what a cluster's
// identity cache does when etcd says that a number this node holds names
// other labels now: it tells its subscribers, and the labels that held
// the number get another one.
type renumberingAllocator struct {
	*identity.FileAllocator
	mu    sync.Mutex
	moved map[string]identity.ID // label set -> its number now
	subs  []func(identity.Change)
}

func (a *renumberingAllocator) Allocate(ctx context.Context, ls labels.Labels) (identity.ID, error) {
	a.mu.Lock()
	id, ok := a.moved[ls.String()]
	a.mu.Unlock()
	if ok {
		return id, nil
	}
	return a.FileAllocator.Allocate(ctx, ls)
}

func (a *renumberingAllocator) Release(ctx context.Context, id identity.ID) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, moved := range a.moved {
		if moved == id {
			return nil
		}
	}
	return a.FileAllocator.Release(ctx, id)
}

func (a *renumberingAllocator) Subscribe(fn func(identity.Change)) func() {
	a.mu.Lock()
	a.subs = append(a.subs, fn)
	a.mu.Unlock()
	return a.FileAllocator.Subscribe(fn)
}

// give makes id name to, and from's labels number now.
func (a *renumberingAllocator) give(id identity.ID, to labels.Labels, from labels.Labels, now identity.ID) {
	a.mu.Lock()
	a.moved[from.String()] = now
	subs := append([]func(identity.Change){}, a.subs...)
	a.mu.Unlock()
	for _, fn := range subs {
		fn(identity.Change{ID: id, Labels: to})
	}
}

// An endpoint whose identity number comes to name other labels (a cluster
// node cut off from etcd past the identity grace) takes the number its
// own labels have now, everywhere the number shows: the datapath's
// endpoint and the ipcache. Its old reference is dropped.
func TestEndpointWhoseNumberNamesOtherLabelsIsRenumbered(t *testing.T) {
	e := newEnv(t)
	alloc := &renumberingAllocator{FileAllocator: e.ids, moved: map[string]identity.ID{}}
	e.m.Close()
	e.labelIDs = alloc
	e.start(nil)
	e.create("ep1", "10.77.0.2")
	e.create("ep2", "10.77.0.3")
	app1 := map[string]string{"id": "app1"}
	e.setLabels("ep1", "c1", app1)
	e.setLabels("ep2", "c2", map[string]string{"id": "app2"})
	ep1, _ := e.dp.policyOf(t, "ep1")
	ep2, _ := e.dp.policyOf(t, "ep2")
	old := identity.ID(ep1.Identity)

	// A change that names the same labels is no reason to renumber.
	alloc.give(identity.ID(ep2.Identity), labels.FromDocker(map[string]string{"id": "app2"}), labels.FromDocker(map[string]string{"id": "none"}), 4001)
	const now = identity.ID(4000)
	alloc.give(old, labels.FromDocker(map[string]string{"id": "intruder"}), labels.FromDocker(app1), now)
	deadline := time.Now().Add(5 * time.Second)
	for {
		e.settle()
		got, _ := e.dp.policyOf(t, "ep1")
		if identity.ID(got.Identity) == now {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ep1 still has identity %d, want %d", got.Identity, now)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if id, _ := e.dp.ipcacheOf("10.77.0.2/32"); id != now {
		t.Fatalf("ipcache says %d for ep1, want %d", id, now)
	}
	if r := e.ids.References(old); r != 0 {
		t.Fatalf("the old number still has %d references", r)
	}
	if got, _ := e.dp.policyOf(t, "ep2"); got.Identity != ep2.Identity {
		t.Fatalf("ep2 was renumbered to %d though its number still names its labels", got.Identity)
	}

	// The other way round: ep2's labels have another number now.
	const next = identity.ID(4002)
	app2 := labels.FromDocker(map[string]string{"id": "app2"})
	alloc.give(next, app2, app2, next)
	for deadline := time.Now().Add(5 * time.Second); ; {
		e.settle()
		if got, _ := e.dp.policyOf(t, "ep2"); identity.ID(got.Identity) == next {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ep2 was not renumbered to %d, the number its labels have now", next)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
