package e2e

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"
)

// These benchmarks need the real dockerd and daemon, like the tests here:
//   go test -run '^$' -bench . -benchtime 1x ./test/e2e/ -ebpfnet-binary=$PWD/bin/ebpfnet

// BenchmarkPolicyImport measures `ebpfnet policy import` of 1,000 and
// 10,000 rules (one allowed port each) with endpoints present, so the time
// includes compiling and writing their policy maps.
func BenchmarkPolicyImport(b *testing.B) {
	bin := requireEnvironment(b)
	startDaemon(b, bin)
	noPolicy(b, bin)
	network(b, "e2e-bimp", "--subnet", "10.241.0.0/24")
	for _, name := range []string{"e2e-bi1", "e2e-bi2", "e2e-bi3"} {
		container(b, name, "--network", "e2e-bimp", "--label", "id="+name, image, "sleep", "3600")
	}
	for _, n := range []int{1000, 10000} {
		path := writeRules(b, manyRules(n))
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				run(b, bin, "policy", "delete", "--all")
				start := time.Now()
				run(b, bin, "policy", "import", path)
				b.ReportMetric(float64(time.Since(start).Milliseconds()), "import-ms")
			}
		})
	}
}

// manyRules makes n rules that let e2e-bi2 reach e2e-bi1 on ports 10000+i.
func manyRules(n int) string {
	var sb strings.Builder
	sb.WriteString("[")
	for i := 0; i < n; i++ {
		if i > 0 {
			sb.WriteString(",")
		}
		fmt.Fprintf(&sb, `{"endpointSelector":{"matchLabels":{"id":"e2e-bi1"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"id":"e2e-bi2"}}],"toPorts":[{"ports":[{"port":"%d","protocol":"TCP"}]}]}],"labels":[{"key":"bench","value":"r%d"}]}`, 10000+i%50000, i)
	}
	sb.WriteString("]")
	return sb.String()
}

// BenchmarkTimeToIdentity measures, for containers started with docker run,
// the time from the container's process start (Docker's StartedAt) to the
// moment the daemon shows its real identity. Negative means the identity
// was there before the process started.
func BenchmarkTimeToIdentity(b *testing.B) {
	bin := requireEnvironment(b)
	startDaemon(b, bin)
	network(b, "e2e-bid", "--subnet", "10.242.0.0/24")
	const runs = 30
	var deltas []time.Duration
	for i := 0; i < runs; i++ {
		name := fmt.Sprintf("e2e-bid%d", i)
		id := container(b, name, "--network", "e2e-bid", "--label", "id=bench"+fmt.Sprint(i%3), image, "sleep", "3600")
		var seen time.Time
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
			found := false
			for _, ep := range endpoints(b) {
				if ep.ContainerID == id && ep.Identity >= 256 {
					found = true
				}
			}
			if found {
				seen = time.Now()
				break
			}
		}
		if seen.IsZero() {
			b.Fatalf("container %s never got its identity", name)
		}
		startedAt, err := time.Parse(time.RFC3339Nano, run(b, "docker", "inspect", "-f", "{{.State.StartedAt}}", name))
		if err != nil {
			b.Fatal(err)
		}
		deltas = append(deltas, seen.Sub(startedAt))
		_, _ = tryRun("docker", "rm", "-f", name)
	}
	sort.Slice(deltas, func(i, j int) bool { return deltas[i] < deltas[j] })
	b.ReportMetric(float64(deltas[len(deltas)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(deltas[(len(deltas)*99+99)/100-1].Microseconds())/1000, "p99-ms")
}
