package cluster

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/identity"
)

// TestWritesAndEventsPerContainer counts what a container costs in etcd:
// the writes of the node that runs it, and the watch events every other
// node receives. The figures go to the log (go test -v) and are held to
// what the design says, so that a change that costs more shows up here.
func TestWritesAndEventsPerContainer(t *testing.T) {
	e := startEtcd(t)
	long := func(c *Config) { c.LeaseTTL = time.Minute } // no heartbeat during the test
	a := connectNode(t, nodeOpts{name: "a", ip: ipA.String(), endpoint: e.client, mutate: long})
	b := connectNode(t, nodeOpts{name: "b", ip: ipB.String(), endpoint: e.client, mutate: long})
	waitConnected(t, a)
	waitConnected(t, b)
	sink := watchRemote(t, b)
	if _, err := b.Rules(t.TempDir() + "/policy.json"); err != nil {
		t.Fatal(err)
	}
	settle := func() {
		eventually(t, "queued writes", func() bool { return a.Status().Queued == 0 && b.Status().Queued == 0 })
		time.Sleep(300 * time.Millisecond) // the peers' watches deliver
	}
	settle()
	type cost struct{ writes, events uint64 }
	measure := func(what string, fn func()) cost {
		t.Helper()
		wa, eb := a.Status().Writes, b.Status().WatchEvents
		fn()
		settle()
		c := cost{a.Status().Writes - wa, b.Status().WatchEvents - eb}
		t.Logf("%s: %d etcd writes by its node, %d watch events on each other node", what, c.writes, c.events)
		return c
	}
	start := func(ip string, ls string) identity.ID {
		id, err := a.Identities().Allocate(ctxT(t), app(ls))
		if err != nil {
			t.Fatal(err)
		}
		if err := a.PublishEndpoint(netip.MustParseAddr(ip), id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	var id identity.ID
	first := measure("container with new labels", func() { id = start("10.90.0.5", "web") })
	eventually(t, "b to know the endpoint", func() bool {
		got, _ := sink.snapshot()
		return got[host("10.90.0.5")].Identity == id
	})
	second := measure("container with labels its node holds", func() { start("10.90.0.6", "web") })
	stop := measure("container removed, its labels still held", func() {
		a.WithdrawEndpoint(netip.MustParseAddr("10.90.0.6"))
		if err := a.Identities().Release(ctxT(t), id); err != nil {
			t.Fatal(err)
		}
	})
	last := measure("last container of its labels removed", func() {
		a.WithdrawEndpoint(netip.MustParseAddr("10.90.0.5"))
		if err := a.Identities().Release(ctxT(t), id); err != nil {
			t.Fatal(err)
		}
	})
	// New labels: identity + labels keys in one transaction, the
	// reference, the endpoint; peers see the identity and the endpoint.
	want := map[string][2]cost{
		"new labels":  {first, {3, 2}},
		"held labels": {second, {1, 1}},
		"stop":        {stop, {1, 1}},
		"last stop":   {last, {2, 1}},
	}
	for what, c := range want {
		if c[0] != c[1] {
			t.Errorf("%s: %+v, want %+v", what, c[0], c[1])
		}
	}
}
