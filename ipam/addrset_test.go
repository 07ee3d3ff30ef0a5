package ipam

import (
	"encoding/json"
	"net/netip"
	"slices"
	"testing"
)

func TestAddrSetKeepsOrder(t *testing.T) {
	var s addrSet
	in := []string{"10.0.0.9", "10.0.0.2", "10.0.1.0", "10.0.0.10", "10.0.0.2"}
	added := 0
	for _, a := range in {
		if s.add(netip.MustParseAddr(a)) {
			added++
		}
	}
	if added != 4 || s.len() != 4 {
		t.Fatalf("added %d, len %d; want 4 and 4 (one duplicate)", added, s.len())
	}
	want := []netip.Addr{
		netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.9"),
		netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("10.0.1.0"),
	}
	if got := s.all(); !slices.Equal(got, want) {
		t.Fatalf("all() = %v, want %v", got, want)
	}
	if !s.has(netip.MustParseAddr("10.0.0.10")) || s.has(netip.MustParseAddr("10.0.0.11")) {
		t.Fatal("has() is wrong")
	}
	if s.remove(netip.MustParseAddr("10.0.0.11")) || !s.remove(netip.MustParseAddr("10.0.0.9")) {
		t.Fatal("remove() reports wrongly")
	}
	if got := s.all(); !slices.Equal(got, []netip.Addr{want[0], want[2], want[3]}) {
		t.Fatalf("after remove: %v", got)
	}
	// all() is the caller's: changing it leaves the set alone.
	got := s.all()
	got[0] = netip.MustParseAddr("10.9.9.9")
	if !s.has(want[0]) {
		t.Fatal("all() shares memory with the set")
	}
}

// addressList writes its JSON itself; it must read back as encoding/json
// reads a []netip.Addr, and equal what encoding/json writes for one.
func TestAddressListJSON(t *testing.T) {
	for _, l := range []addressList{
		nil,
		{},
		{netip.MustParseAddr("10.0.0.2")},
		{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fe80::1%eth\"0")},
	} {
		got, err := json.Marshal(PoolState{Addresses: l})
		if err != nil {
			t.Fatal(err)
		}
		plain := struct {
			PoolState
			Addresses []netip.Addr `json:"addresses"`
		}{Addresses: []netip.Addr(l)}
		want, err := json.Marshal(plain)
		if err != nil {
			t.Fatal(err)
		}
		if l == nil {
			// A nil []netip.Addr is null; ours is [] as an empty pool's
			// was before (snapshot never has nil), and both read back.
			want = []byte(`{"id":"","addressSpace":"","pool":"","subPool":"","gateway":"","last":"","addresses":[]}`)
		}
		if string(got) != string(want) {
			t.Errorf("encoded %s\nwant    %s", got, want)
		}
		var back PoolState
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("decode %s: %v", got, err)
		}
		if !slices.Equal(back.Addresses, l) && len(l) > 0 {
			t.Errorf("read back %v, want %v", back.Addresses, l)
		}
	}
}
