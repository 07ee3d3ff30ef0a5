package cluster

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestConnectRefusesBadConfig(t *testing.T) {
	good := Config{Endpoints: []string{"http://127.0.0.1:1"}, NodeName: "a", NodeIP: netip.MustParseAddr("192.0.2.1"),
		StatePath: filepath.Join(t.TempDir(), "node.json")}
	for name, c := range map[string]func(*Config){
		"no endpoints":   func(c *Config) { c.Endpoints = nil },
		"empty endpoint": func(c *Config) { c.Endpoints = []string{" "} },
		"no node name":   func(c *Config) { c.NodeName = "" },
		"slash in name":  func(c *Config) { c.NodeName = "a/b" },
		"no node IP":     func(c *Config) { c.NodeIP = netip.Addr{} },
		"IPv6 node IP":   func(c *Config) { c.NodeIP = netip.MustParseAddr("2001:db8::1") },
		"no state path":  func(c *Config) { c.StatePath = "" },
		"short TTL":      func(c *Config) { c.LeaseTTL = time.Second },
		"block /4":       func(c *Config) { c.BlockBits = 4 },
	} {
		cfg := good
		c(&cfg)
		if n, err := Connect(context.Background(), cfg); err == nil {
			n.Close()
			t.Errorf("%s: Connect succeeded", name)
		}
	}
}

// A corrupt node state (it keeps the lease ID) is moved aside: the node
// joins under a new lease and writes its keys again.
func TestCorruptNodeStateIsMovedAsideAndTheNodeJoins(t *testing.T) {
	e := startEtcd(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "node.json")
	if err := os.WriteFile(state, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := connectNode(t, nodeOpts{name: "a", ip: "192.0.2.1", endpoint: e.client, dir: dir})
	waitConnected(t, a)
	aside, err := filepath.Glob(state + ".corrupt-*")
	if err != nil || len(aside) != 1 {
		t.Fatalf("moved-aside copies: %v, %v; want one", aside, err)
	}
	if data, err := os.ReadFile(aside[0]); err != nil || string(data) != "{" {
		t.Fatalf("the moved-aside copy holds %q, %v", data, err)
	}
	cli := e.newClient()
	defer cli.Close()
	eventually(t, "the node key under the new lease, kept in the state file", func() bool {
		st, err := readState(state)
		lease, _ := leaseOf(t, cli, nodeKey("a"))
		return err == nil && lease != 0 && int64(lease) == st.LeaseID
	})
}

func TestConnectWithEtcdUnreachableStartsAndKeepsTrying(t *testing.T) {
	e := newEtcd(t) // not started yet
	a := connectNode(t, nodeOpts{name: "a", ip: "192.0.2.1", endpoint: e.client})
	st := a.Status()
	if st.Connected || st.LastError == "" {
		t.Fatalf("status with etcd down: %+v; want disconnected with an error", st)
	}
	start := time.Now()
	_, err := a.ClaimBlock(ctxT(t), netip.MustParsePrefix("10.90.0.0/16"))
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "etcd at "+e.client+" is unreachable") {
		t.Fatalf("ClaimBlock with etcd down: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("ClaimBlock took %s to fail", took)
	}
	if err := a.PublishEndpoint(netip.MustParseAddr("10.90.0.5"), 300); err != nil {
		t.Fatal(err)
	}
	e.start()
	waitConnected(t, a)
	cli := e.newClient()
	defer cli.Close()
	eventually(t, "the node and endpoint keys", func() bool {
		return exists(t, cli, nodeKey("a")) && exists(t, cli, endpointKey(netip.MustParseAddr("10.90.0.5")))
	})
	if st := a.Status(); st.LeaseID == 0 || st.Queued != 0 {
		t.Fatalf("status once connected: %+v", st)
	}
}

// leaseOf returns the lease a key is bound to and its mod revision.
func leaseOf(t *testing.T, cli *clientv3.Client, key string) (clientv3.LeaseID, int64) {
	t.Helper()
	resp, err := cli.Get(ctxT(t), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 {
		return 0, 0
	}
	return clientv3.LeaseID(resp.Kvs[0].Lease), resp.Kvs[0].ModRevision
}

func TestLostLeaseRecreatesEveryOwnKey(t *testing.T) {
	e := startEtcd(t)
	a := connectNode(t, nodeOpts{name: "a", ip: "192.0.2.1", endpoint: e.client})
	waitConnected(t, a)
	id, err := a.Identities().Allocate(ctxT(t), app("web"))
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr("10.90.0.7")
	if err := a.PublishEndpoint(ip, id); err != nil {
		t.Fatal(err)
	}
	keys := []string{nodeKey("a"), refKey(id, "a"), endpointKey(ip)}
	cli := e.newClient()
	defer cli.Close()
	old := clientv3.LeaseID(a.Status().LeaseID)
	eventually(t, "the keys under the lease", func() bool {
		for _, k := range keys {
			if l, _ := leaseOf(t, cli, k); l != old {
				return false
			}
		}
		return true
	})

	// The lease goes (as if it expired while the node was cut off): its
	// keys go with it, and the node puts them back under a new one.
	if _, err := cli.Revoke(ctxT(t), old); err != nil {
		t.Fatal(err)
	}
	// A write made before the node notices is refused by etcd (the lease
	// is not found); it waits for the new lease too.
	late := netip.MustParseAddr("10.90.0.9")
	if err := a.PublishEndpoint(late, id); err != nil {
		t.Fatal(err)
	}
	keys = append(keys, endpointKey(late))
	eventually(t, "every key back under a new lease", func() bool {
		cur := clientv3.LeaseID(a.Status().LeaseID)
		if cur == old || cur == 0 {
			return false
		}
		for _, k := range keys {
			if l, _ := leaseOf(t, cli, k); l != cur {
				return false
			}
		}
		return true
	})
}

func TestRestartReusesTheLeaseAndChangesNothing(t *testing.T) {
	e := startEtcd(t)
	dir := t.TempDir()
	opts := nodeOpts{name: "a", ip: "192.0.2.1", endpoint: e.client, dir: dir}
	a := connectNode(t, opts)
	waitConnected(t, a)
	id, err := a.Identities().Allocate(ctxT(t), app("web"))
	if err != nil {
		t.Fatal(err)
	}
	kept, gone := netip.MustParseAddr("10.90.0.7"), netip.MustParseAddr("10.90.0.8")
	for _, ip := range []netip.Addr{kept, gone} {
		if err := a.PublishEndpoint(ip, id); err != nil {
			t.Fatal(err)
		}
	}
	cli := e.newClient()
	defer cli.Close()
	eventually(t, "the endpoint keys", func() bool { return exists(t, cli, endpointKey(gone)) && a.Status().Queued == 0 })
	lease := a.Status().LeaseID
	_, epRev := leaseOf(t, cli, endpointKey(kept))
	_, refRev := leaseOf(t, cli, refKey(id, "a"))
	a.Close()

	// The daemon comes back, restores what it had (but one endpoint),
	// and says so.
	a2 := connectNode(t, opts)
	waitConnected(t, a2)
	if got := a2.Status().LeaseID; got != lease {
		t.Fatalf("restarted with lease %x, want the previous %x", got, lease)
	}
	if got, err := a2.Identities().Allocate(ctxT(t), app("web")); err != nil || got != id {
		t.Fatalf("restored identity = %d, %v; want %d", got, err, id)
	}
	if err := a2.PublishEndpoint(kept, id); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the restored writes", func() bool { return a2.Status().Queued == 0 })
	if !exists(t, cli, endpointKey(gone)) {
		t.Fatal("a key of the previous run went before the daemon said it had restored")
	}
	a2.MarkRestored()
	eventually(t, "the endpoint not restored to go", func() bool { return !exists(t, cli, endpointKey(gone)) })
	if _, rev := leaseOf(t, cli, endpointKey(kept)); rev != epRev {
		t.Fatalf("the restored endpoint key was rewritten (mod revision %d, was %d)", rev, epRev)
	}
	if _, rev := leaseOf(t, cli, refKey(id, "a")); rev != refRev {
		t.Fatalf("the restored reference key was rewritten (mod revision %d, was %d)", rev, refRev)
	}
}

// Two hosts under one name would share its address blocks: the second one
// stays out of the cluster, saying why, until the first one's lease is
// gone. A host that lost its state file comes back under its own name.
func TestSecondNodeWithTheSameNameStaysOut(t *testing.T) {
	e := startEtcd(t)
	a := connectNode(t, nodeOpts{name: "a", ip: "192.0.2.1", endpoint: e.client})
	waitConnected(t, a)
	block, err := a.ClaimBlock(ctxT(t), netip.MustParsePrefix("10.90.0.0/16"))
	if err != nil {
		t.Fatal(err)
	}

	clone := connectNode(t, nodeOpts{name: "a", ip: "192.0.2.2", endpoint: e.client})
	var taken *NameTakenError
	eventually(t, "the clone's status to say the name is taken", func() bool {
		return strings.Contains(clone.Status().LastError, `node name "a" is in use by the live node at 192.0.2.1`)
	})
	_, err = clone.ClaimBlock(ctxT(t), netip.MustParsePrefix("10.90.0.0/16"))
	if !errors.As(err, &taken) || taken.IP != netip.MustParseAddr("192.0.2.1") {
		t.Fatalf("the clone's ClaimBlock: %v; want a NameTakenError naming 192.0.2.1", err)
	}
	if clone.Status().Connected {
		t.Fatal("the clone says it is connected")
	}
	cli := e.newClient()
	defer cli.Close()
	resp, err := cli.Get(ctxT(t), nodeKey("a"))
	if err != nil || len(resp.Kvs) != 1 || !strings.Contains(string(resp.Kvs[0].Value), `"192.0.2.1"`) {
		t.Fatalf("node key of a after the clone came: %v %v; want a's", resp, err)
	}

	// The same host again, its state file lost: a new lease, the same
	// node IP. It takes its name (and block) back at once.
	again := connectNode(t, nodeOpts{name: "a", ip: "192.0.2.1", endpoint: e.client})
	waitConnected(t, again)
	if got, err := again.ClaimBlock(ctxT(t), netip.MustParsePrefix("10.90.0.0/16")); err != nil || got != block {
		t.Fatalf("the host's own ClaimBlock after losing its state: %v, %v; want %v", got, err, block)
	}

	// Once the holders' leases are gone, the clone joins.
	for _, n := range []*Node{a, again} {
		lease := clientv3.LeaseID(n.Status().LeaseID)
		_ = n.Close()
		if _, err := cli.Revoke(ctxT(t), lease); err != nil {
			t.Fatal(err)
		}
	}
	waitConnected(t, clone)
	eventually(t, "the clone's node key", func() bool {
		resp, err := cli.Get(ctxT(t), nodeKey("a"))
		return err == nil && len(resp.Kvs) == 1 && strings.Contains(string(resp.Kvs[0].Value), `"192.0.2.2"`)
	})
}
