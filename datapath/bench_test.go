package datapath

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/testutil"
)

// BenchmarkCreateEndpoint measures CreateEndpoint end to end (record, veth,
// neighbour, route, object write, load, maps, attach and pin) and reports
// the median and 99th percentile over the b.N endpoints created, back to
// back and paced (runPaced). The pace lets what a creation leaves for
// later (spare policy maps and veths) be done before the next one, as it
// is in use.
func BenchmarkCreateEndpoint(b *testing.B) { runPaced(b, benchmarkCreateEndpoint) }

// runPaced runs bench as two sub-benchmarks: "back-to-back", and "paced"
// as Docker paces creations (a docker run takes a few hundred ms), with
// 20 ms between operations that bench leaves out of the timer
// (pauseUntimed).
func runPaced(b *testing.B, bench func(b *testing.B, gap time.Duration)) {
	for _, pace := range []struct {
		name string
		gap  time.Duration
	}{{"back-to-back", 0}, {"paced", 20 * time.Millisecond}} {
		b.Run(pace.name, func(b *testing.B) { bench(b, pace.gap) })
	}
}

// pauseUntimed sleeps gap with the timer stopped.
func pauseUntimed(b *testing.B, gap time.Duration) {
	if gap == 0 {
		return
	}
	b.StopTimer()
	time.Sleep(gap)
	b.StartTimer()
}

func benchmarkCreateEndpoint(b *testing.B, gap time.Duration) {
	testutil.RequireRoot(b)
	suffix := randHex(b, 3)
	cfg := Config{
		StateDir:   b.TempDir(),
		PinDir:     "/sys/fs/bpf/ebpfnet-test-" + suffix,
		HostDevice: "ebt" + suffix,
		Version:    "bench",
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	dp, err := New(cfg, log)
	if err != nil {
		b.Fatal(err)
	}
	var created []string
	b.Cleanup(func() {
		for _, id := range created {
			if err := dp.DeleteEndpoint(id); err != nil {
				b.Errorf("DeleteEndpoint: %v", err)
			}
		}
		_ = dp.Close()
		_ = os.RemoveAll(cfg.PinDir)
	})
	n := Network{Index: 1}
	n.Subnet = mustPrefix(b, "10.251.0.0/16")
	n.Gateway = n.Subnet.Addr().Next()
	if !onlyDefaultRoute(n.Subnet) {
		b.Fatalf("%v is in use on this machine", n.Subnet)
	}
	// The route to each endpoint is sourced from the gateway, which must
	// be a host address first.
	if err := dp.AddNetwork(n); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := dp.RemoveNetwork(n); err != nil {
			b.Errorf("RemoveNetwork: %v", err)
		}
	})
	durations := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		pauseUntimed(b, gap)
		host := i + 2
		a := n.Subnet.Addr().As4()
		a[2], a[3] = byte(host>>8), byte(host)
		ep := &Endpoint{
			DockerEndpointID: fmt.Sprintf("bench-%s-%d", suffix, i),
			Network:          n,
		}
		ep.IPv4 = mustPrefix(b, fmt.Sprintf("%d.%d.%d.%d/16", a[0], a[1], a[2], a[3]))
		start := time.Now()
		if err := dp.CreateEndpoint(ep); err != nil {
			b.Fatalf("CreateEndpoint %d: %v", i, err)
		}
		durations = append(durations, time.Since(start))
		created = append(created, ep.DockerEndpointID)
	}
	b.StopTimer()
	reportPercentiles(b, durations)
}

// BenchmarkCompileWithClang is the cost the template design avoids, in two
// readings of "compiling the endpoint's object":
//
//	endpoint  bpf_lxc.c alone, the object that carries the endpoint's
//	          constants: what this design would compile per endpoint
//	datapath  bpf_lxc.c and bpf_node.c: the whole datapath, as a design
//	          that compiles every program with the endpoint's constants
//	          folded in (Cilium's) does per endpoint
//
// Each op runs build.sh (clang-19 and llvm-strip-19) once per source.
func BenchmarkCompileWithClang(b *testing.B) {
	testutil.RequireCommand(b, "clang-19", "llvm-strip-19")
	script, err := filepath.Abs("../bpf/build.sh")
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name    string
		sources []string
	}{
		{"endpoint", []string{"bpf_lxc.c"}},
		{"datapath", []string{"bpf_lxc.c", "bpf_node.c"}},
	} {
		b.Run(c.name, func(b *testing.B) {
			out := filepath.Join(b.TempDir(), "out.o")
			durations := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				start := time.Now()
				for _, src := range c.sources {
					if o, err := exec.Command("sh", script, src, out).CombinedOutput(); err != nil {
						b.Fatalf("build.sh %s: %v\n%s", src, err, o)
					}
				}
				durations = append(durations, time.Since(start))
			}
			b.StopTimer()
			reportPercentiles(b, durations)
		})
	}
}

func reportPercentiles(b *testing.B, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	pct := func(p float64) float64 {
		i := int(p * float64(len(d)-1))
		return float64(d[i].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

// BenchmarkDeleteEndpoint measures DeleteEndpoint alone (the endpoints are
// created untimed) and reports the median and 99th percentile. veth-alive
// deletes an endpoint whose veth pair still exists; veth-gone one whose
// pair the kernel already destroyed, as when Docker removes the container's
// namespace before calling DeleteEndpoint.
func BenchmarkDeleteEndpoint(b *testing.B) {
	for _, gone := range []bool{false, true} {
		name := "veth-alive"
		if gone {
			name = "veth-gone"
		}
		b.Run(name, func(b *testing.B) {
			e := newTestEnv(b)
			n := e.network(1)
			durations := make([]time.Duration, 0, b.N)
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				ep := e.endpoint(n, byte(2+i%250))
				if gone {
					if err := deleteLinkByName(ep.IfName); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				start := time.Now()
				if err := e.dp.DeleteEndpoint(ep.DockerEndpointID); err != nil {
					b.Fatalf("DeleteEndpoint: %v", err)
				}
				durations = append(durations, time.Since(start))
			}
			b.StopTimer()
			reportPercentiles(b, durations)
		})
	}
}
