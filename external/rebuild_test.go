package external

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/atomicfile"
)

const (
	epA = "aaaaaaaaaaaa0000000000000000000000000000000000000000000000000000"
	epB = "bbbbbbbbbbbb0000000000000000000000000000000000000000000000000000"
)

// Our chains as `iptables -S` prints them are read back: the published
// ports of each endpoint and each network's isolation and masquerade;
// other rules are left alone.
func TestRecoverReadsOurChainsBack(t *testing.T) {
	tables := newFakeTables()
	tables.chains["nat/EBPFNET-DNAT"] = []string{
		`-p tcp -m tcp --dport 8080 -m comment --comment "ebpfnet ep aaaaaaaaaaaa" -j DNAT --to-destination 10.9.0.2:80`,
		`-d 127.0.0.1/32 -p udp -m udp --dport 5353 -m comment --comment "ebpfnet ep aaaaaaaaaaaa" -j DNAT --to-destination 10.9.0.2:53`,
		`-p tcp -m tcp --dport 9000 -m comment --comment "ebpfnet ep cccccccccccc" -j DNAT --to-destination 10.9.0.9:80`,
		`-p tcp -m tcp --dport 7000 -j DNAT --to-destination 10.9.0.3:80`, // not ours
		`-p sctp --dport 1 -m comment --comment "ebpfnet ep aaaaaaaaaaaa" -j DNAT --to-destination 10.9.0.2:1`,
	}
	tables.chains["filter/EBPFNET-FORWARD"] = []string{
		`-s 10.8.0.0/24 -m comment --comment "ebpfnet net 111111111111" -j DROP`,
		`-d 10.8.0.0/24 -m comment --comment "ebpfnet net 111111111111" -j DROP`,
		`-s 10.9.0.0/24 ! -o lxc+ -m comment --comment "ebpfnet net 222222222222" -j ACCEPT`,
		`-s 10.7.0.0/24 ! -o lxc+ -m comment --comment "ebpfnet net 333333333333" -j ACCEPT`,
	}
	tables.chains["nat/EBPFNET-POSTROUTING"] = []string{
		`-s 10.9.0.0/24 ! -o lxc+ -m comment --comment "ebpfnet net 222222222222" -j MASQUERADE`,
	}
	cfg := Config{StatePath: filepath.Join(t.TempDir(), "external.json"), Tables: tables, Log: logrus.New()}
	rec, err := Recover(cfg)
	if err != nil {
		t.Fatal(err)
	}
	wantA := []Mapping{
		{Proto: ProtoUDP, HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 5353, ContainerIP: netip.MustParseAddr("10.9.0.2"), ContainerPort: 53},
		{Proto: ProtoTCP, HostIP: netip.IPv4Unspecified(), HostPort: 8080, ContainerIP: netip.MustParseAddr("10.9.0.2"), ContainerPort: 80},
	}
	if !reflect.DeepEqual(rec.Mappings["aaaaaaaaaaaa"], wantA) || len(rec.Mappings) != 2 {
		t.Fatalf("mappings %+v\nwant for aaaaaaaaaaaa %+v", rec.Mappings, wantA)
	}
	wantNets := map[string]RecoveredNetwork{
		"111111111111": {Internal: true},
		"222222222222": {Masquerade: true},
		"333333333333": {},
	}
	if !reflect.DeepEqual(rec.Networks, wantNets) {
		t.Fatalf("networks %+v, want %+v", rec.Networks, wantNets)
	}

	// Only live endpoints get their mappings written back; a manager
	// loading the file restores exactly them.
	n, err := Rebuild(cfg, rec, []EndpointRef{{ID: epA, NetworkID: "net1", IfName: "lxca"}, {ID: epB, NetworkID: "net1", IfName: "lxcb"}})
	if err != nil || n != 1 {
		t.Fatalf("Rebuild: %d endpoints, %v; want 1", n, err)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Restore([]Network{testNet}, map[string]bool{epA: true, epB: true}); err != nil {
		t.Fatal(err)
	}
	if got := m.Mappings(); !reflect.DeepEqual(got, map[string][]Mapping{epA: wantA}) {
		t.Fatalf("after restore %+v", got)
	}
	if got := tables.count("EBPFNET-DNAT"); got != 2 {
		t.Fatalf("%d DNAT rules after restore, want the two recovered", got)
	}
}

// A rule programmed by the manager is read back as the same mapping.
func TestRecoverRoundTrip(t *testing.T) {
	tables := newFakeTables()
	m := newTestManager(t, tables, nil)
	if err := m.AddNetwork(testNet); err != nil {
		t.Fatal(err)
	}
	maps, err := m.Program("net1", epA, "lxca", netip.MustParseAddr("10.9.0.2"), netip.Addr{}, []Binding{
		{Proto: ProtoTCP, Port: 80, HostPort: 8080}, {Proto: ProtoUDP, Port: 53, HostIP: "127.0.0.1", HostPort: 5353}})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := Recover(Config{Tables: quotingTables{tables}, Log: logrus.New()})
	if err != nil {
		t.Fatal(err)
	}
	got := rec.Mappings[short(epA)]
	if len(got) != 2 || !containsAll(got, maps) {
		t.Fatalf("recovered %+v, programmed %+v", got, maps)
	}
	if n := rec.Networks[short(testNet.ID)]; n.Internal || !n.Masquerade {
		t.Fatalf("network recovered as %+v", n)
	}
}

func containsAll(have, want []Mapping) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			found = found || h == w
		}
		if !found {
			return false
		}
	}
	return true
}

// quotingTables lists rules as iptables prints them: words with spaces
// quoted (the fake keeps them joined).
type quotingTables struct{ *fakeTables }

func (q quotingTables) List(table, chain string) ([]string, error) {
	lines, err := q.fakeTables.List(table, chain)
	for i := range lines {
		for _, kind := range []string{"ep", "net"} {
			for _, id := range []string{short(epA), short(testNet.ID)} {
				lines[i] = strings.ReplaceAll(lines[i], "--comment ebpfnet "+kind+" "+id, `--comment "ebpfnet `+kind+" "+id+`"`)
			}
		}
	}
	return lines, err
}

// A state file that does not decode, or holds a mapping that cannot be,
// is corrupt; a missing one is empty.
func TestCorruptExternalState(t *testing.T) {
	dir := t.TempDir()
	if err := CheckState(filepath.Join(dir, "missing.json")); err != nil {
		t.Fatalf("missing: %v", err)
	}
	for name, content := range map[string]string{
		"garbage": `{"networks": {`,
		"mapping": `{"endpoints": {"x": {"mappings": [{"proto": 6, "hostPort": 0, "containerIP": "10.9.0.2", "containerPort": 80}]}}}`,
	} {
		path := filepath.Join(dir, "external.json")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := CheckState(path); !errors.Is(err, atomicfile.ErrCorrupt) {
			t.Errorf("%s: %v, want atomicfile.ErrCorrupt", name, err)
		}
	}
}
