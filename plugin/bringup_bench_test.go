package plugin

import (
	"sort"
	"testing"
	"time"
)

// BenchmarkEndpointBringUp measures what `docker run` waits for from us:
// CreateEndpoint + Join through the plugin socket, with the veth pair, the
// per-endpoint object written, loaded and attached. One iteration is one
// endpoint; run with -benchtime=100x for the 100 endpoints. Compare
// with BenchmarkCompileWithClang in datapath (bench/bringup does both).
func BenchmarkEndpointBringUp(b *testing.B) {
	td := startTestDaemon(b)
	poolID, _ := createTestNetwork(b, td, "bench-net", "10.203.0.0/16")
	type endpoint struct{ id, addr string }
	var created []endpoint
	b.Cleanup(func() {
		for _, ep := range created {
			td.mustCall(b, "/NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": "bench-net", "EndpointID": ep.id})
			td.mustCall(b, "/IpamDriver.ReleaseAddress", map[string]any{"PoolID": poolID, "Address": ep.addr})
		}
		td.mustCall(b, "/NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": "bench-net"})
	})

	durations := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		addr := td.mustCall(b, "/IpamDriver.RequestAddress", map[string]any{"PoolID": poolID})["Address"].(string)
		epID := randomHex(b, 32)
		created = append(created, endpoint{epID, addr})
		b.StartTimer()
		start := time.Now()
		td.mustCall(b, "/NetworkDriver.CreateEndpoint", map[string]any{
			"NetworkID": "bench-net", "EndpointID": epID, "Interface": map[string]any{"Address": addr}})
		td.mustCall(b, "/NetworkDriver.Join", map[string]any{"NetworkID": "bench-net", "EndpointID": epID, "SandboxKey": "/x"})
		durations = append(durations, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(durations, func(i, j int) bool { return durations[i] < durations[j] })
	b.ReportMetric(float64(percentile(durations, 50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(percentile(durations, 99).Microseconds())/1000, "p99-ms")
}

// percentile returns the p-th percentile of sorted durations (nearest rank).
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := (p*len(sorted) + 99) / 100
	if rank < 1 {
		rank = 1
	}
	return sorted[rank-1]
}

// BenchmarkEndpointTeardown measures what `docker rm` waits for from us:
// Leave, DeleteEndpoint and ReleaseAddress through the plugin socket, for an
// endpoint whose veth still exists (its peer never left the host). The
// endpoints are created untimed. Compare with BenchmarkDeleteEndpoint in
// datapath, DeleteEndpoint alone.
func BenchmarkEndpointTeardown(b *testing.B) {
	td := startTestDaemon(b)
	poolID, _ := createTestNetwork(b, td, "bench-net", "10.204.0.0/16")
	// The endpoint of the iteration in progress, until its teardown is
	// done: a benchmark that fails half-way removes it too, as
	// BenchmarkEndpointBringUp does its endpoints.
	var pending struct {
		addr, id string
	}
	b.Cleanup(func() {
		// If it exists: its creation or deletion may have failed.
		if _, live := td.daemon.datapath.Endpoint(pending.id); pending.id != "" && live {
			td.mustCall(b, "/NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": "bench-net", "EndpointID": pending.id})
		}
		if pending.addr != "" {
			td.mustCall(b, "/IpamDriver.ReleaseAddress", map[string]any{"PoolID": poolID, "Address": pending.addr})
		}
		td.mustCall(b, "/NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": "bench-net"})
	})
	// The whole teardown, and each call alone (p50 only).
	var durations, leave, del, release []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		addr := td.mustCall(b, "/IpamDriver.RequestAddress", map[string]any{"PoolID": poolID})["Address"].(string)
		pending.addr = addr
		epID := randomHex(b, 32)
		pending.id = epID
		td.mustCall(b, "/NetworkDriver.CreateEndpoint", map[string]any{
			"NetworkID": "bench-net", "EndpointID": epID, "Interface": map[string]any{"Address": addr}})
		td.mustCall(b, "/NetworkDriver.Join", map[string]any{"NetworkID": "bench-net", "EndpointID": epID, "SandboxKey": "/x"})
		b.StartTimer()
		start := time.Now()
		td.mustCall(b, "/NetworkDriver.Leave", map[string]any{"NetworkID": "bench-net", "EndpointID": epID})
		t1 := time.Now()
		td.mustCall(b, "/NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": "bench-net", "EndpointID": epID})
		t2 := time.Now()
		td.mustCall(b, "/IpamDriver.ReleaseAddress", map[string]any{"PoolID": poolID, "Address": addr})
		end := time.Now()
		pending.id, pending.addr = "", ""
		durations = append(durations, end.Sub(start))
		leave, del, release = append(leave, t1.Sub(start)), append(del, t2.Sub(t1)), append(release, end.Sub(t2))
	}
	b.StopTimer()
	ms := func(d []time.Duration, p int) float64 {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return float64(percentile(d, p).Microseconds()) / 1000
	}
	b.ReportMetric(ms(durations, 50), "p50-ms")
	b.ReportMetric(ms(durations, 99), "p99-ms")
	b.ReportMetric(ms(leave, 50), "leave-p50-ms")
	b.ReportMetric(ms(del, 50), "delete-p50-ms")
	b.ReportMetric(ms(release, 50), "release-p50-ms")
}
