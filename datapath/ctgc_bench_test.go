package datapath

import (
	"net/netip"
	"testing"
	"time"
)

// fillConntrack fills the table with live TCP flows between 198.18.0.0/16
// addresses and 198.19.0.1.
func fillConntrack(b *testing.B, e *testEnv) {
	m := e.dp.shared[CTMapName]
	n := int(m.MaxEntries())
	keys := make([]ctKey, n)
	vals := make([]ctEntry, n)
	exp := monotonicNow() + uint64(time.Hour)
	for i := range keys {
		x := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		keys[i] = flowKey(x, 1000, netip.MustParseAddr("198.19.0.1"), 80, protoTCP)
		vals[i] = ctEntry{Expires: exp, Timeout: 8000}
	}
	if _, err := m.BatchUpdate(keys, vals, nil); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkConntrackWalk measures what a full table (CT_MAX flows) costs
// the two walks over it: a garbage collection sweep that finds nothing to
// delete, and the flush of a deleted endpoint's flows (DeleteEndpoint, in
// the background) that finds none of them.
func BenchmarkConntrackWalk(b *testing.B) {
	e := newTestEnv(b)
	fillConntrack(b, e)
	m := e.dp.shared[CTMapName]
	b.Run("sweep", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			alive, _, err := sweepConntrack[ctKey](m, monotonicNow())
			if err != nil || alive[CTClassTCP] != int(m.MaxEntries()) {
				b.Fatalf("sweep: %v, %v", alive, err)
			}
		}
	})
	b.Run("flush", func(b *testing.B) {
		addr := netip.MustParseAddr("10.251.0.2")
		for i := 0; i < b.N; i++ {
			if err := flushConntrack(m, addr); err != nil {
				b.Fatal(err)
			}
		}
	})
}
