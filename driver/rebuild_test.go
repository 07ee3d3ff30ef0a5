package driver

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/atomicfile"
	"github.com/ebpfnet/ebpfnet/datapath"
)

// A network state that does not decode, or describes networks that cannot
// be, is corrupt (atomicfile.ErrCorrupt); a missing one is an empty state.
func TestCorruptNetworkState(t *testing.T) {
	dir := t.TempDir()
	if n, err := CheckState(filepath.Join(dir, "missing.json")); n != 0 || err != nil {
		t.Fatalf("missing file: %d, %v", n, err)
	}
	for name, content := range map[string]string{
		"garbage":   "[{",
		"empty":     "",
		"no id":     `[{"datapath":{"index":1,"subnet":"10.77.0.0/24","gateway":"10.77.0.1"}}]`,
		"index 0":   `[{"id":"n","datapath":{"index":0,"subnet":"10.77.0.0/24","gateway":"10.77.0.1"}}]`,
		"gateway":   `[{"id":"n","datapath":{"index":1,"subnet":"10.77.0.0/24","gateway":"10.78.0.1"}}]`,
		"two ids":   `[{"id":"n","datapath":{"index":1,"subnet":"10.77.0.0/24","gateway":"10.77.0.1"}},{"id":"n","datapath":{"index":2,"subnet":"10.78.0.0/24","gateway":"10.78.0.1"}}]`,
		"one index": `[{"id":"n","datapath":{"index":1,"subnet":"10.77.0.0/24","gateway":"10.77.0.1"}},{"id":"m","datapath":{"index":1,"subnet":"10.78.0.0/24","gateway":"10.78.0.1"}}]`,
	} {
		path := filepath.Join(dir, "networks.json")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := CheckState(path); !errors.Is(err, atomicfile.ErrCorrupt) {
			t.Errorf("%s: %v, want atomicfile.ErrCorrupt", name, err)
		}
		if _, err := New(path, newFake(), newFake(), logrus.New()); !errors.Is(err, atomicfile.ErrCorrupt) {
			t.Errorf("%s: New: %v, want atomicfile.ErrCorrupt", name, err)
		}
	}
}

// Networks rebuilt from the endpoints' records are marked so until Docker
// confirms them with their options and --internal; with adopt, Docker's
// networks the node lost altogether come back with a free index.
func TestRebuiltNetworksConfirmedByDocker(t *testing.T) {
	path := filepath.Join(t.TempDir(), "networks.json")
	net1 := datapath.Network{Index: 3, Subnet: netip.MustParsePrefix("10.77.0.0/24"), Gateway: netip.MustParseAddr("10.77.0.1"), MTU: 1450}
	if err := WriteRebuilt(path, []RebuiltNetwork{{ID: "net1", Datapath: net1, Internal: true}}); err != nil {
		t.Fatal(err)
	}
	if n, err := CheckState(path); n != 1 || err != nil {
		t.Fatalf("CheckState of the rebuilt file: %d, %v", n, err)
	}
	if err := WriteRebuilt(path+".x", []RebuiltNetwork{{ID: "a", Datapath: net1}, {ID: "b", Datapath: net1}}); err == nil {
		t.Fatal("two networks with one index were written")
	}
	fake := newFake()
	d, err := New(path, fake, fake, logrus.New())
	if err != nil {
		t.Fatal(err)
	}
	if fake.networks[3] != net1 {
		t.Fatalf("the rebuilt network's plumbing: %+v", fake.networks)
	}
	var seen [][]Network
	d.OnNetworks(func(ns []Network) { seen = append(seen, ns) })
	if ns := d.Networks(); len(ns) != 1 || !ns[0].Rebuilt || !ns[0].Internal {
		t.Fatalf("networks %+v, want net1 rebuilt, internal as guessed", ns)
	}
	docker := []DockerNetwork{
		{ID: "net1", Subnet: net1.Subnet, Gateway: net1.Gateway, Options: map[string]string{OptionPolicyEnforcement: "always"}},
		{ID: "net2", Subnet: netip.MustParsePrefix("10.78.0.0/24"), Gateway: netip.MustParseAddr("10.78.0.1"), Internal: true},
		{ID: "bad", Subnet: netip.MustParsePrefix("10.79.0.0/24"), Gateway: netip.MustParseAddr("10.79.0.1"), Options: map[string]string{"ebpfnet.nope": "1"}},
	}
	if ext, problems := d.Confirm(docker, false); !ext || len(problems) != 0 {
		t.Fatalf("Confirm: external changed %v, problems %v", ext, problems)
	}
	ns := d.Networks()
	if len(ns) != 1 || ns[0].Rebuilt || ns[0].Internal || ns[0].PolicyMode() != "always" {
		t.Fatalf("after Confirm without adopt: %+v", ns)
	}
	if len(seen) != 1 || len(seen[0]) != 1 || seen[0][0].Rebuilt {
		t.Fatalf("the observer saw %+v", seen)
	}
	if _, problems := d.Confirm(docker, true); len(problems) != 1 {
		t.Fatalf("Confirm with adopt: problems %v, want the unknown option only", problems)
	}
	ns = d.Networks()
	if len(ns) != 2 || ns[0].ID != "net2" || ns[0].Index != 1 || !ns[0].Internal || ns[1].ID != "net1" {
		t.Fatalf("after adopting: %+v, want net2 at index 1 beside net1", ns)
	}
	if fake.networks[1].Subnet != netip.MustParsePrefix("10.78.0.0/24") {
		t.Fatalf("the adopted network has no plumbing: %+v", fake.networks)
	}
	// All of it is persisted.
	again, err := New(path, newFake(), newFake(), logrus.New())
	if err != nil {
		t.Fatal(err)
	}
	if got := again.Networks(); len(got) != 2 || got[1].Rebuilt || got[1].PolicyMode() != "always" {
		t.Fatalf("after restart: %+v", got)
	}
}
