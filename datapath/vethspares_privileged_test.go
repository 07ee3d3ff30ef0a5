package datapath

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ebpfnet/ebpfnet/testutil"
)

// TestVethSpareClaimedByCreateEndpoint: a new datapath makes its spare
// pairs; CreateEndpoint takes one, and the endpoint's veth is that pair
// (the spare's ifindexes) under the names, MACs and MTU the endpoint
// would have had, host end up with rp_filter off, peer down under the
// spare's peer name, which the record and Join's SrcName carry. The peer
// goes into a namespace as Docker moves it and carries traffic. The pool
// is made full again, with new pairs.
func TestVethSpareClaimedByCreateEndpoint(t *testing.T) {
	e := newTestEnv(t)
	s := e.dp.veths
	waitSpares(t, s, vethSparesWanted)
	before := poolSpares(s)
	next := before[len(before)-1] // take hands out the last one
	assertSparesAccounted(t, e.dp)

	n := e.network(1)
	n.MTU = 1400
	ep := e.endpoint(n, 10)
	if ep.IfIndex != next.index {
		t.Errorf("endpoint's ifindex %d, want the spare's %d (%+v)", ep.IfIndex, next.index, next)
	}
	if ep.IfName != HostIfName(ep.DockerEndpointID) {
		t.Errorf("IfName %q, want %q", ep.IfName, HostIfName(ep.DockerEndpointID))
	}
	if ep.PeerName != next.peerName {
		t.Errorf("PeerName %q, want the spare's peer %q", ep.PeerName, next.peerName)
	}
	host := mustLink(t, ep.IfName)
	ha := host.Attrs()
	if host.Type() != "veth" || ha.Index != next.index || ha.HardwareAddr.String() != ep.NodeMAC.String() ||
		ha.MTU != 1400 || ha.Flags&net.FlagUp == 0 {
		t.Errorf("host end %s: type %s index %d MAC %s MTU %d flags %v; want veth %d %s 1400 up",
			ep.IfName, host.Type(), ha.Index, ha.HardwareAddr, ha.MTU, ha.Flags, next.index, ep.NodeMAC)
	}
	peer := mustLink(t, ep.PeerName)
	pa := peer.Attrs()
	if pa.Index != next.peerIndex || pa.HardwareAddr.String() != ep.LXCMAC.String() || pa.MTU != 1400 ||
		pa.Flags&net.FlagUp != 0 || pa.ParentIndex != next.index {
		t.Errorf("peer %s: index %d MAC %s MTU %d flags %v peer of %d; want %d %s 1400 down, peer of %d",
			ep.PeerName, pa.Index, pa.HardwareAddr, pa.MTU, pa.Flags, pa.ParentIndex, next.peerIndex, ep.LXCMAC, next.index)
	}
	if rp, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + ep.IfName + "/rp_filter"); err != nil || strings.TrimSpace(string(rp)) != "0" {
		t.Errorf("rp_filter of %s: %q %v, want 0", ep.IfName, rp, err)
	}
	if _, err := netlink.LinkByName(next.name); err == nil {
		t.Errorf("the spare's own name %s is still in use", next.name)
	}
	records, err := e.dp.Records()
	if err != nil || len(records) != 1 || records[0].PeerName != ep.PeerName || records[0].IfName != ep.IfName {
		t.Errorf("records %+v (%v), want one naming %s and %s", records, err, ep.IfName, ep.PeerName)
	}
	if got, _ := e.dp.Endpoint(ep.DockerEndpointID); got.PeerName != ep.PeerName || got.IfIndex != next.index {
		t.Errorf("Endpoint: PeerName %q ifindex %d, want %q %d", got.PeerName, got.IfIndex, ep.PeerName, next.index)
	}

	waitSpares(t, s, vethSparesWanted)
	after := poolSpares(s)
	for _, sp := range after {
		if sp.index == next.index {
			t.Errorf("the claimed pair is back in the pool: %+v", after)
		}
	}
	assertSparesAccounted(t, e.dp)

	ns := e.container(ep)
	if !ping(ns, n.Gateway) {
		t.Fatal("container on a claimed spare -> gateway: no reply")
	}
	if !ping("", ep.IPv4.Addr()) {
		t.Error("host -> container on a claimed spare: no reply")
	}
}

// TestSpareVethRPFilterOff: a spare's host end has reverse-path
// filtering off from the start, where new devices get it on (in a
// namespace of the test's, whose default the test sets; its peer shows
// the default applies), and keeps it off under the endpoint's name.
func TestSpareVethRPFilterOff(t *testing.T) {
	testutil.RequireRoot(t)
	ns := "ebt-rp-" + randHex(t, 3)
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	err := testutil.InNetns(ns, func() error {
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/default/rp_filter", []byte("1"), 0o644); err != nil {
			return err
		}
		h, err := newNetlinkHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		sp, err := makeSpareVeth(h, "lxs000000000", "lxs000000000p")
		if err != nil {
			return err
		}
		check := func(want map[string]string) error {
			for name, want := range want {
				rp, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + name + "/rp_filter")
				if err != nil {
					return err
				}
				if got := strings.TrimSpace(string(rp)); got != want {
					t.Errorf("rp_filter of %s is %s, want %s", name, got, want)
				}
			}
			return nil
		}
		if err := check(map[string]string{sp.name: "0", sp.peerName: "1"}); err != nil {
			return err
		}
		// The setting stays with the device through claim's rename.
		ep := &Endpoint{IfName: HostIfName("rp"), NodeMAC: NodeMACFor("rp"), LXCMAC: LXCMACFor("rp")}
		if err := claim(h, sp, ep); err != nil {
			return err
		}
		return check(map[string]string{ep.IfName: "0"})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestVethSparesRefill: creations in a row each take a spare, and the
// pool is full again after them, each pair's names new.
func TestVethSparesRefill(t *testing.T) {
	e := newTestEnv(t)
	s := e.dp.veths
	n := e.network(1)
	seen := map[string]bool{}
	for i := 0; i < 3; i++ {
		waitSpares(t, s, vethSparesWanted)
		pool := poolSpares(s)
		for _, sp := range pool {
			seen[sp.name] = true
		}
		ep := e.endpoint(n, byte(10+i))
		if ep.IfIndex != pool[len(pool)-1].index {
			t.Errorf("endpoint %d did not take a spare: ifindex %d, pool %+v", i, ep.IfIndex, pool)
		}
	}
	waitSpares(t, s, vethSparesWanted)
	for _, sp := range poolSpares(s) {
		seen[sp.name] = true
	}
	// Two at first, then one new per creation.
	if len(seen) != vethSparesWanted+3 {
		t.Errorf("spares named %v, want %d names", seen, vethSparesWanted+3)
	}
	assertSparesAccounted(t, e.dp)
}

// TestVethSparesRefillWhenIdle: creations in a row take the spares and
// then make their own veths; no spare is made until creations pause
// (vethRefillIdle, an hour here, then none), nor while one is under way.
func TestVethSparesRefillWhenIdle(t *testing.T) {
	e := newTestEnv(t)
	s := e.dp.veths
	n := e.network(1)
	waitSpares(t, s, vethSparesWanted)
	pool := poolSpares(s)
	s.mu.Lock()
	s.idle = time.Hour
	s.mu.Unlock()
	for i := 0; i < vethSparesWanted+1; i++ {
		ep := e.endpoint(n, byte(10+i))
		if i < vethSparesWanted {
			if want := pool[len(pool)-1-i]; ep.IfIndex != want.index {
				t.Errorf("creation %d: ifindex %d, want spare %+v", i, ep.IfIndex, want)
			}
		} else if ep.PeerName != PeerIfName(ep.DockerEndpointID) {
			t.Errorf("creation %d with the spares gone: PeerName %s, want its own pair's %s", i, ep.PeerName, PeerIfName(ep.DockerEndpointID))
		}
	}
	time.Sleep(50 * time.Millisecond)
	if s.ready() != 0 {
		t.Fatalf("%d spares made before creations paused", s.ready())
	}
	// The idle timer fires while a creation is under way.
	s.creationStarted()
	s.refill()
	time.Sleep(50 * time.Millisecond)
	if s.ready() != 0 {
		t.Fatalf("%d spares made while a creation was under way", s.ready())
	}
	s.mu.Lock()
	s.idle = 0
	s.mu.Unlock()
	s.creationEnded()
	waitSpares(t, s, vethSparesWanted)
	assertSparesAccounted(t, e.dp)
}

// TestVethSparesDeletedAtClose: Close deletes the spares, also while a
// refill is under way, and a closed pool makes none.
func TestVethSparesDeletedAtClose(t *testing.T) {
	e := newTestEnv(t)
	tag := e.dp.veths.prefix
	waitSpares(t, e.dp.veths, vethSparesWanted)
	if len(tagLinks(t, tag)) != 2*vethSparesWanted {
		t.Fatalf("devices of the tag before Close: %v", tagLinks(t, tag))
	}
	s := e.dp.veths
	if err := e.dp.Close(); err != nil {
		t.Fatal(err)
	}
	if left := tagLinks(t, tag); len(left) != 0 {
		t.Errorf("spares left after Close: %v", left)
	}
	s.refill()
	time.Sleep(50 * time.Millisecond)
	if left := tagLinks(t, tag); len(left) != 0 || s.ready() != 0 {
		t.Errorf("a closed pool made spares: %v, %d ready", left, s.ready())
	}

	// Closed right after New: the first refill is still making them.
	e.dp = e.open()
	if err := e.dp.Close(); err != nil {
		t.Fatal(err)
	}
	if left := tagLinks(t, tag); len(left) != 0 {
		t.Errorf("spares left after a Close during the first refill: %v", left)
	}
}

// TestVethSparesSweptAtStart: a datapath deletes at start what an earlier
// run on its state directory left (it was killed): spares, one of them
// half-claimed (the peer has an endpoint's MAC already). It leaves alone
// the peer of an endpoint that took a spare and is not in its sandbox yet
// (its names go on past it), and another daemon's spares. The state
// directory's path may end in a slash.
func TestVethSparesSweptAtStart(t *testing.T) {
	dir := t.TempDir()
	tag := spareVethTag(dir)
	other := spareVethTag(dir + "-other")
	h, err := newNetlinkHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var made []string
	t.Cleanup(func() {
		for _, name := range made {
			_ = deleteLinkByName(name)
		}
	})
	mk := func(name, peer string) spareVeth {
		t.Helper()
		sp, err := makeSpareVeth(h, name, peer)
		if err != nil {
			t.Fatal(err)
		}
		made = append(made, name)
		return sp
	}
	mk(tag+"0003", tag+"0003p")
	half := mk(tag+"0005", tag+"0005p")
	lxc := fmt.Sprintf("lxc%s", randHex(t, 6))
	mk(lxc, tag+"0009p") // an endpoint's, its peer not moved yet
	foreign := mk(other+"0000", other+"0000p")
	// Killed between claim's two requests: an endpoint without a host
	// name stands in for that (LinkModify refuses it before sending).
	if err := claim(h, half, &Endpoint{LXCMAC: LXCMACFor("x")}); err == nil {
		t.Fatal("claim without a host name succeeded")
	}
	if mac := mustLink(t, half.peerName).Attrs().HardwareAddr.String(); mac != LXCMACFor("x").String() {
		t.Fatalf("half-claimed peer has MAC %s, want the endpoint's", mac)
	}

	// The same directory, spelt otherwise.
	e := newTestEnv(t, func(c *Config) { c.StateDir = dir + "/" })
	waitSpares(t, e.dp.veths, vethSparesWanted)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err3 := netlink.LinkByName(tag + "0003")
		_, err5 := netlink.LinkByName(tag + "0005")
		if err3 != nil && err5 != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("spares of the earlier run still there: %v", tagLinks(t, tag))
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, name := range []string{tag + "0003p", tag + "0005p"} {
		if _, err := netlink.LinkByName(name); err == nil {
			t.Errorf("%s left", name)
		}
	}
	if l, err := netlink.LinkByName(tag + "0009p"); err != nil || l.Attrs().ParentIndex != mustLink(t, lxc).Attrs().Index {
		t.Errorf("the peer of an endpoint that took a spare was touched: %v", err)
	}
	if l, err := netlink.LinkByName(other + "0000"); err != nil || l.Attrs().Index != foreign.index {
		t.Errorf("another daemon's spare was touched: %v", err)
	}
	pool := poolSpares(e.dp.veths)
	for _, sp := range pool {
		if seq, _, _ := e.dp.veths.ownSequence(sp.name); seq <= 9 {
			t.Errorf("new spare %s reuses a sequence number in use before (up to 9)", sp.name)
		}
	}
	got := tagLinks(t, tag)
	want := []string{tag + "0009p"}
	for _, sp := range pool {
		want = append(want, sp.name, sp.peerName)
	}
	sort.Strings(want)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("devices of the tag %v, want %v", got, want)
	}
}

// TestVethSparesOfAKilledDatapath: a datapath that is never closed (its
// daemon killed) leaves its spares; the next one on the same state
// directory deletes them and makes its own.
func TestVethSparesOfAKilledDatapath(t *testing.T) {
	e := newTestEnv(t)
	killed := e.dp
	waitSpares(t, killed.veths, vethSparesWanted)
	old := poolSpares(killed.veths)
	e.dp = e.open()
	// The killed one's descriptors go at the end; its spares are gone by
	// then (its close only warns).
	t.Cleanup(func() { _ = killed.Close() })
	waitSpares(t, e.dp.veths, vethSparesWanted)
	deadline := time.Now().Add(5 * time.Second)
	for _, sp := range old {
		for {
			if _, err := netlink.LinkByIndex(sp.index); err != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("spare %s of the killed datapath still there", sp.name)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	assertSparesAccounted(t, e.dp)
}

// TestVethSpareClaimFailure: a spare that cannot be claimed is deleted
// and the endpoint made without it; a creation that fails before it
// reaches the veth puts its spare back. Nothing is left behind.
func TestVethSpareClaimFailure(t *testing.T) {
	e := newTestEnv(t)
	s := e.dp.veths
	n := e.network(1)

	t.Run("spare gone", func(t *testing.T) {
		// Someone deleted the next spare behind the pool's back.
		waitSpares(t, s, vethSparesWanted)
		pool := poolSpares(s)
		taken := pool[len(pool)-1]
		if err := deleteLinkByName(taken.name); err != nil {
			t.Fatal(err)
		}
		ep := e.endpoint(n, 10)
		if ep.IfIndex == taken.index || ep.PeerName != taken.peerName {
			t.Errorf("ifindex %d PeerName %s, want a new pair under the spare's peer name %s", ep.IfIndex, ep.PeerName, taken.peerName)
		}
		if l := mustLink(t, ep.IfName); l.Attrs().Index != ep.IfIndex || l.Attrs().HardwareAddr.String() != ep.NodeMAC.String() {
			t.Errorf("host end %+v", l.Attrs())
		}
		if l := mustLink(t, ep.PeerName); l.Attrs().HardwareAddr.String() != ep.LXCMAC.String() {
			t.Errorf("peer %+v", l.Attrs())
		}
		ns := e.container(ep)
		if !ping(ns, n.Gateway) {
			t.Error("container on the pair made instead -> gateway: no reply")
		}
	})

	t.Run("name taken", func(t *testing.T) {
		// A device of the endpoint's host name that is none of ours:
		// the rename fails after the peer got the endpoint's MAC, and
		// so does the pair made instead.
		waitSpares(t, s, vethSparesWanted)
		taken := poolSpares(s)[vethSparesWanted-1]
		id := fmt.Sprintf("taken-%s", randHex(t, 4))
		stray := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: HostIfName(id)}, PeerName: "stray" + randHex(t, 4)}
		if err := netlink.LinkAdd(stray); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = netlink.LinkDel(stray) }()
		strayIndex := mustLink(t, stray.Name).Attrs().Index
		ep := &Endpoint{DockerEndpointID: id, IPv4: hostAddr(n, 20), Network: n}
		err := e.dp.CreateEndpoint(ep)
		if err == nil || !strings.Contains(err.Error(), "exists") {
			t.Fatalf("CreateEndpoint with its host name taken: %v, want an error saying so", err)
		}
		for _, idx := range []int{taken.index, taken.peerIndex} {
			if l, err := netlink.LinkByIndex(idx); err == nil {
				t.Errorf("the spare's %s is left", l.Attrs().Name)
			}
		}
		if _, err := netlink.LinkByName(ep.PeerName); err == nil {
			t.Errorf("peer %s left", ep.PeerName)
		}
		if l := mustLink(t, stray.Name); l.Attrs().Index != strayIndex {
			t.Errorf("the stray device was replaced")
		}
		if l := mustLink(t, stray.PeerName); l.Attrs().HardwareAddr.String() == ep.LXCMAC.String() {
			t.Errorf("the stray device's peer got the endpoint's MAC")
		}
		if _, err := os.Stat(e.dp.epDir(ep.ID)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("state directory of the failed endpoint: %v", err)
		}
		waitSpares(t, s, vethSparesWanted)
		assertSparesAccounted(t, e.dp)
	})

	t.Run("failed before the veth", func(t *testing.T) {
		// The state directory cannot take the endpoint's: the creation
		// fails after taking a spare and before claiming it.
		waitSpares(t, s, vethSparesWanted)
		pool := poolSpares(s)
		moved := e.cfg.StateDir + ".moved"
		if err := os.Rename(e.cfg.StateDir, moved); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(e.cfg.StateDir, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		ep := &Endpoint{DockerEndpointID: fmt.Sprintf("nodir-%s", randHex(t, 4)), IPv4: hostAddr(n, 30), Network: n}
		err := e.dp.CreateEndpoint(ep)
		_ = os.Remove(e.cfg.StateDir)
		if err := os.Rename(moved, e.cfg.StateDir); err != nil {
			t.Fatal(err)
		}
		if err == nil {
			t.Fatal("CreateEndpoint without a state directory succeeded")
		}
		if got := poolSpares(s); fmt.Sprint(got) != fmt.Sprint(pool) {
			t.Errorf("pool %+v after the failure, want the same spares back %+v", got, pool)
		}
		assertSparesAccounted(t, e.dp)
	})
}

// poolSpares is a copy of the pool, in take's order reversed (take hands
// out the last).
func poolSpares(s *vethSpares) []spareVeth {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]spareVeth(nil), s.spares...)
}

// tagLinks lists, sorted, the devices whose names begin with tag.
func tagLinks(t *testing.T, tag string) []string {
	t.Helper()
	links, err := listLinks()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, tag) {
			names = append(names, l.Attrs().Name)
		}
	}
	sort.Strings(names)
	return names
}

// assertSparesAccounted fails t unless the devices under d's spare tag
// are exactly its spares' two ends, each as the pool knows it, besides
// the peers of its endpoints that took a spare and are still on the host
// (waiting for background deletions to end).
func assertSparesAccounted(t *testing.T, d *Datapath) {
	t.Helper()
	s := d.veths
	var want []string
	for _, sp := range poolSpares(s) {
		want = append(want, sp.name, sp.peerName)
		for name, idx := range map[string]int{sp.name: sp.index, sp.peerName: sp.peerIndex} {
			if l, err := netlink.LinkByName(name); err != nil || l.Attrs().Index != idx || l.Attrs().Flags&net.FlagUp != 0 {
				t.Errorf("spare end %s: %v, want index %d, down", name, err, idx)
			}
		}
	}
	sort.Strings(want)
	peers := map[string]bool{}
	for _, ep := range d.Endpoints() {
		peers[ep.PeerName] = true
	}
	var got []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		got = got[:0]
		for _, name := range tagLinks(t, s.prefix) {
			if !peers[name] {
				got = append(got, name)
			}
		}
		if fmt.Sprint(got) == fmt.Sprint(want) || time.Now().After(deadline) {
			break
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("devices of the tag %v besides the endpoints' peers, want the pool's %v", got, want)
	}
}

func mustLink(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatalf("look up %s: %v", name, err)
	}
	return l
}
