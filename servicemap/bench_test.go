package servicemap

import (
	"net/netip"
	"testing"
)

// tableFlows are n distinct TCP flows between 64 identities, as a full
// conntrack table (CT_MAX, 65536) would hold them.
func tableFlows(n int) []Flow {
	out := make([]Flow, n)
	for i := range out {
		src := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
		out[i] = Flow{
			Src: netip.AddrPortFrom(src, uint16(30000+i%1000)), Dst: netip.AddrPortFrom(netip.MustParseAddr("10.2.0.1"), uint16(80+i%4)),
			Proto: ProtoTCP, SrcIdentity: uint32(256 + i%64), DstIdentity: uint32(256 + (i/64)%64), Verdict: Allowed,
		}
	}
	return out
}

// BenchmarkFlows: what remembering a flow costs, against the baseline of
// counting the same keys in a plain map: a known flow (every conntrack
// poll sees each again), a new one past the cap (an event stream of ever
// new flows), and one poll of a full conntrack table (65536 flows, then
// the edges).
func BenchmarkFlows(b *testing.B) {
	const n = 65536
	flows := tableFlows(n)
	b.Run("baseline-map", func(b *testing.B) {
		m := map[flowKey]int{}
		for i := 0; i < b.N; i++ {
			fl := flows[i%n]
			m[flowKey{proto: fl.Proto, src: fl.Src, dst: fl.Dst}]++
		}
	})
	b.Run("observe-known", func(b *testing.B) {
		f := NewFlows(Limits{MaxFlows: n}, nil)
		for _, fl := range flows {
			f.Observe(fl)
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			f.Observe(flows[i%n])
		}
	})
	b.Run("observe-new-past-cap", func(b *testing.B) {
		f := NewFlows(Limits{MaxFlows: n / 2}, nil)
		for i := 0; i < b.N; i++ {
			f.Observe(flows[i%n])
		}
	})
	b.Run("poll-full-table", func(b *testing.B) {
		f := NewFlows(Limits{MaxFlows: n}, nil)
		for i := 0; i < b.N; i++ {
			for _, fl := range flows {
				f.Observe(fl)
			}
			_ = f.Edges()
		}
	})
}
