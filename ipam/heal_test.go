package ipam

import (
	"errors"
	"net/netip"
	"path/filepath"
	"reflect"
	"testing"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"
)

// ipam.json lost: the state rebuilt from the endpoints' records hands out
// nothing until Docker has been asked (also across a restart), keeps the
// releases Docker sends meanwhile, and once confirmed holds every address
// either source knows in the pools Docker names, under Docker's pool IDs,
// and hands out only free addresses after the highest in use.
func TestRebuiltStateIsPendingUntilConfirmed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.json")
	st, problems := RebuiltState([]PoolSeed{
		{Pool: netip.MustParsePrefix("10.77.0.0/16"), Gateway: netip.MustParseAddr("10.77.0.1"), Addresses: addrs("10.77.0.5", "10.77.1.9")},
		{Pool: netip.MustParsePrefix("10.78.0.0/24"), Gateway: netip.MustParseAddr("10.78.0.1"), Addresses: addrs("10.78.0.3")},
		{Pool: netip.MustParsePrefix("10.78.0.0/16")},                                // overlaps
		{Pool: netip.MustParsePrefix("10.79.0.0/24"), Addresses: addrs("10.80.0.1")}, // outside
	})
	if len(problems) != 2 {
		t.Errorf("problems %v, want the overlap and the address outside", problems)
	}
	if !st.Pending {
		t.Fatal("a rebuilt state is not pending")
	}
	if err := (FileStore{Path: path}).Save(st); err != nil {
		t.Fatal(err)
	}
	d := newTestDriver(t, Config{StatePath: path})
	if !d.Pending() {
		t.Fatal("the driver does not know the state is pending")
	}
	recordsID := "ebpfnet-local/10.77.0.0/16"
	if _, err := requestAddr(d, recordsID, "", false); !errors.Is(err, ErrRebuilding) {
		t.Fatalf("RequestAddress while pending: %v, want ErrRebuilding", err)
	}
	if _, err := requestAddr(d, recordsID, "10.77.3.3", false); !errors.Is(err, ErrRebuilding) {
		t.Fatalf("RequestAddress of a given address while pending: %v, want ErrRebuilding", err)
	}
	if _, err := d.RequestPool(&ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.90.0.0/24"}); !errors.Is(err, ErrRebuilding) {
		t.Fatalf("RequestPool while pending: %v, want ErrRebuilding", err)
	}
	// Docker knows the network by its ip-range's pool ID, and releases
	// an address of a container removed meanwhile.
	dockerID := "ebpfnet-local/10.77.0.0/16/10.77.1.0/24"
	release(t, d, dockerID, "10.77.1.9")

	// A restart before Docker answered: still pending.
	d = newTestDriver(t, Config{StatePath: path})
	if !d.Pending() {
		t.Fatal("pending was lost across a restart")
	}
	release(t, d, dockerID, "10.77.1.9")

	// Docker's view was read before the release; it also holds an aux
	// address and an address no record knows; 10.78.0.0/24 is not a
	// network of ours for Docker.
	pools, problems, err := d.Confirm([]PoolSeed{{
		Pool: netip.MustParsePrefix("10.77.0.0/16"), SubPool: netip.MustParsePrefix("10.77.1.0/24"),
		Gateway: netip.MustParseAddr("10.77.0.1"), Addresses: addrs("10.77.0.2", "10.77.1.9", "10.77.1.20"),
	}})
	if err != nil || len(problems) != 0 {
		t.Fatalf("Confirm: %v %v", problems, err)
	}
	want := []PoolInfo{{
		ID: dockerID, AddressSpace: LocalAddressSpace,
		Pool: netip.MustParsePrefix("10.77.0.0/16"), SubPool: netip.MustParsePrefix("10.77.1.0/24"),
		Gateway:   netip.MustParseAddr("10.77.0.1"),
		Addresses: addrs("10.77.0.1", "10.77.0.2", "10.77.0.5", "10.77.1.20"),
	}}
	if !reflect.DeepEqual(pools, want) {
		t.Fatalf("confirmed pools\n%+v\nwant\n%+v", pools, want)
	}
	if d.Pending() {
		t.Fatal("still pending after Confirm")
	}
	mustAddr(t, d, dockerID, "", false, "10.77.1.21/16")
	if _, err := requestAddr(d, dockerID, "10.77.0.5", false); err == nil {
		t.Fatal("an address a restored endpoint holds was handed out again")
	}
	requestPool(t, d, "10.78.0.0/24", "")

	// Saved: a restart is no longer pending and holds the same.
	d2 := newTestDriver(t, Config{StatePath: path})
	if d2.Pending() || !reflect.DeepEqual(d2.Pools(), d.Pools()) {
		t.Fatalf("after restart pending=%v pools %+v, want %+v", d2.Pending(), d2.Pools(), d.Pools())
	}
}

// A pool Docker released while the state was pending stays released.
func TestPoolReleasedWhilePendingStaysReleased(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.json")
	st, _ := RebuiltState([]PoolSeed{{Pool: netip.MustParsePrefix("10.77.0.0/24"), Gateway: netip.MustParseAddr("10.77.0.1")}})
	if err := (FileStore{Path: path}).Save(st); err != nil {
		t.Fatal(err)
	}
	d := newTestDriver(t, Config{StatePath: path})
	if err := d.ReleasePool(&ipamapi.ReleasePoolRequest{PoolID: "ebpfnet-local/10.77.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	pools, _, err := d.Confirm([]PoolSeed{{Pool: netip.MustParsePrefix("10.77.0.0/24"), Gateway: netip.MustParseAddr("10.77.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	if len(pools) != 0 {
		t.Fatalf("pools %+v, want the released one gone", pools)
	}
}
