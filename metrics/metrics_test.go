package metrics

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// fakeSource is a daemon whose state the test sets.
type fakeSource struct {
	endpoints  map[string]int
	identities map[string]int
	revision   uint64
	verdicts   []Verdict
	err        error
}

func (f *fakeSource) EndpointsByState() map[string]int { return f.endpoints }
func (f *fakeSource) IdentitiesByType() map[string]int { return f.identities }
func (f *fakeSource) PolicyRevision() uint64           { return f.revision }
func (f *fakeSource) Verdicts() ([]Verdict, error)     { return f.verdicts, f.err }

func newMetrics(t *testing.T, src Source) *Metrics {
	t.Helper()
	m, err := New(src)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return m
}

// Every known state and type is reported, at 0 when empty, and a state the
// package does not know still shows up.
func TestStateGauges(t *testing.T) {
	src := &fakeSource{
		endpoints:  map[string]int{StateReady: 2, StateWaitingForIdentity: 1, "regenerating": 1},
		identities: map[string]int{IdentityReserved: 3, IdentityAllocated: 2},
		revision:   7,
	}
	m := newMetrics(t, src)
	want := `
# HELP ebpfnet_endpoint_state Number of endpoints on the node, by state.
# TYPE ebpfnet_endpoint_state gauge
ebpfnet_endpoint_state{state="ready"} 2
ebpfnet_endpoint_state{state="regenerating"} 1
ebpfnet_endpoint_state{state="waiting-for-identity"} 1
# HELP ebpfnet_identity Number of identities known, by type (reserved, allocated, cidr).
# TYPE ebpfnet_identity gauge
ebpfnet_identity{type="allocated"} 2
ebpfnet_identity{type="cidr"} 0
ebpfnet_identity{type="reserved"} 3
# HELP ebpfnet_policy_revision Revision of the policy in force; every import or delete raises it.
# TYPE ebpfnet_policy_revision gauge
ebpfnet_policy_revision 7
`
	if err := testutil.GatherAndCompare(m.Gatherer(), strings.NewReader(want),
		"ebpfnet_endpoint_state", "ebpfnet_identity", "ebpfnet_policy_revision"); err != nil {
		t.Error(err)
	}

	// Read at scrape time: a change shows in the next scrape.
	src.endpoints = map[string]int{}
	src.revision = 8
	want = `
# HELP ebpfnet_endpoint_state Number of endpoints on the node, by state.
# TYPE ebpfnet_endpoint_state gauge
ebpfnet_endpoint_state{state="ready"} 0
ebpfnet_endpoint_state{state="waiting-for-identity"} 0
# HELP ebpfnet_policy_revision Revision of the policy in force; every import or delete raises it.
# TYPE ebpfnet_policy_revision gauge
ebpfnet_policy_revision 8
`
	if err := testutil.GatherAndCompare(m.Gatherer(), strings.NewReader(want),
		"ebpfnet_endpoint_state", "ebpfnet_policy_revision"); err != nil {
		t.Error(err)
	}
}

// Forwards are summed per direction, drops kept per reason and direction,
// audits counted apart; the values are what the datapath read.
func TestVerdictCounters(t *testing.T) {
	m := newMetrics(t, &fakeSource{verdicts: []Verdict{
		{Kind: Forward, Reason: "Forwarded", Direction: "INGRESS", Packets: 10, Bytes: 1000},
		{Kind: Forward, Reason: "To stack", Direction: "INGRESS", Packets: 5, Bytes: 500},
		{Kind: Forward, Reason: "To stack", Direction: "EGRESS", Packets: 3, Bytes: 300},
		{Kind: Drop, Reason: "Policy denied", Direction: "INGRESS", Packets: 2, Bytes: 120},
		{Kind: Drop, Reason: "Policy denied", Direction: "EGRESS", Packets: 1, Bytes: 60},
		{Kind: Drop, Reason: "Invalid source ip", Direction: "EGRESS", Packets: 4, Bytes: 336},
		{Kind: Audit, Reason: "Policy audit", Direction: "EGRESS", Packets: 6, Bytes: 360},
	}})
	want := `
# HELP ebpfnet_drop_bytes_total Bytes the datapath dropped, by reason and direction.
# TYPE ebpfnet_drop_bytes_total counter
ebpfnet_drop_bytes_total{direction="EGRESS",reason="Invalid source ip"} 336
ebpfnet_drop_bytes_total{direction="EGRESS",reason="Policy denied"} 60
ebpfnet_drop_bytes_total{direction="INGRESS",reason="Policy denied"} 120
# HELP ebpfnet_drop_count_total Packets the datapath dropped, by reason and direction.
# TYPE ebpfnet_drop_count_total counter
ebpfnet_drop_count_total{direction="EGRESS",reason="Invalid source ip"} 4
ebpfnet_drop_count_total{direction="EGRESS",reason="Policy denied"} 1
ebpfnet_drop_count_total{direction="INGRESS",reason="Policy denied"} 2
# HELP ebpfnet_forward_bytes_total Bytes the datapath passed on, by direction.
# TYPE ebpfnet_forward_bytes_total counter
ebpfnet_forward_bytes_total{direction="EGRESS"} 300
ebpfnet_forward_bytes_total{direction="INGRESS"} 1500
# HELP ebpfnet_forward_count_total Packets the datapath passed on (to a local peer, to the host stack, or an ARP answer), by direction.
# TYPE ebpfnet_forward_count_total counter
ebpfnet_forward_count_total{direction="EGRESS"} 3
ebpfnet_forward_count_total{direction="INGRESS"} 15
# HELP ebpfnet_policy_audit_count_total New flows that policy denied and audit mode let through, by direction.
# TYPE ebpfnet_policy_audit_count_total counter
ebpfnet_policy_audit_count_total{direction="EGRESS"} 6
`
	if err := testutil.GatherAndCompare(m.Gatherer(), strings.NewReader(want),
		"ebpfnet_forward_count_total", "ebpfnet_forward_bytes_total",
		"ebpfnet_drop_count_total", "ebpfnet_drop_bytes_total", "ebpfnet_policy_audit_count_total"); err != nil {
		t.Error(err)
	}
}

// recordingLogger keeps what the handler logs.
type recordingLogger struct {
	mu    sync.Mutex
	lines []string
}

func (l *recordingLogger) Println(v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintln(v...))
}

func (l *recordingLogger) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "")
}

// An unreadable datapath map fails only its own metrics: the scrape still
// answers with the rest, and the error is logged.
func TestUnreadableDatapathKeepsTheRest(t *testing.T) {
	m := newMetrics(t, &fakeSource{endpoints: map[string]int{StateReady: 1}, err: errors.New("map gone")})
	if _, err := m.Gatherer().Gather(); err == nil || !strings.Contains(err.Error(), "map gone") {
		t.Errorf("Gather error %v, want the datapath's", err)
	}
	log := &recordingLogger{}
	srv := httptest.NewServer(m.Handler(log))
	defer srv.Close()
	body := get(t, srv.URL+Path, http.StatusOK)
	if !strings.Contains(body, `ebpfnet_endpoint_state{state="ready"} 1`) {
		t.Errorf("scrape lost the endpoints when the datapath failed:\n%s", body)
	}
	if strings.Contains(body, "ebpfnet_drop_count_total") {
		t.Errorf("scrape shows drop counters it could not read:\n%s", body)
	}
	if !strings.Contains(log.String(), "map gone") {
		t.Errorf("scrape error not logged; log: %q", log.String())
	}
}

func get(t *testing.T, url string, wantCode int) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != wantCode {
		t.Fatalf("GET %s: HTTP %d, want %d\n%s", url, resp.StatusCode, wantCode, body)
	}
	return string(body)
}

// Each call's latency lands in its own series, in the bucket its duration
// belongs to, and failures apart from successes.
func TestDockerCallHistogram(t *testing.T) {
	m := newMetrics(t, &fakeSource{})
	const create = "/NetworkDriver.CreateEndpoint"
	m.ObserveDockerCall(create, false, 1500*time.Microsecond)
	m.ObserveDockerCall(create, false, 3*time.Millisecond)
	m.ObserveDockerCall(create, true, 200*time.Microsecond)
	m.ObserveDockerCall("/NetworkDriver.Join", false, 100*time.Microsecond)

	h := histogram(t, m, create, "ok")
	if h.GetSampleCount() != 2 {
		t.Errorf("CreateEndpoint ok: %d samples, want 2", h.GetSampleCount())
	}
	if got, want := h.GetSampleSum(), 0.0045; got < want-1e-9 || got > want+1e-9 {
		t.Errorf("CreateEndpoint ok: sum %g s, want %g", got, want)
	}
	// Cumulative buckets: 1.5 ms is above 1 ms and within 2 ms, 3 ms within 4 ms.
	for le, want := range map[float64]uint64{0.001: 0, 0.002: 1, 0.004: 2} {
		if got := bucket(t, h, le); got != want {
			t.Errorf("CreateEndpoint ok: bucket le=%g has %d, want %d", le, got, want)
		}
	}
	if n := histogram(t, m, create, "error").GetSampleCount(); n != 1 {
		t.Errorf("CreateEndpoint error: %d samples, want 1", n)
	}
	if n := histogram(t, m, "/NetworkDriver.Join", "ok").GetSampleCount(); n != 1 {
		t.Errorf("Join ok: %d samples, want 1", n)
	}
}

func histogram(t *testing.T, m *Metrics, call, outcome string) *dto.Histogram {
	t.Helper()
	families, err := m.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "ebpfnet_docker_call_duration_seconds" {
			continue
		}
		for _, s := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range s.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["call"] == call && labels["outcome"] == outcome {
				return s.GetHistogram()
			}
		}
	}
	t.Fatalf("no histogram for call=%s outcome=%s", call, outcome)
	return nil
}

func bucket(t *testing.T, h *dto.Histogram, le float64) uint64 {
	t.Helper()
	for _, b := range h.GetBucket() {
		if b.GetUpperBound() == le {
			return b.GetCumulativeCount()
		}
	}
	t.Fatalf("no bucket le=%g", le)
	return 0
}

// The handler serves ours, the Go runtime's and the process's metrics at
// /metrics, and nothing elsewhere.
func TestHandlerServesMetricsPath(t *testing.T) {
	m := newMetrics(t, &fakeSource{verdicts: []Verdict{{Kind: Drop, Reason: "Policy denied", Direction: "INGRESS", Packets: 1, Bytes: 60}}})
	m.ObserveDockerCall("/NetworkDriver.Join", false, time.Millisecond)
	srv := httptest.NewServer(m.Handler(&recordingLogger{}))
	defer srv.Close()
	body := get(t, srv.URL+Path, http.StatusOK)
	for _, want := range []string{
		`ebpfnet_drop_count_total{direction="INGRESS",reason="Policy denied"} 1`,
		`ebpfnet_docker_call_duration_seconds_count{call="/NetworkDriver.Join",outcome="ok"} 1`,
		"go_goroutines ",
		"process_start_time_seconds ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	get(t, srv.URL+"/", http.StatusNotFound)
}

// Two instances (two daemons in one test binary) never meet: each has its
// own registry, so the second registers without a duplicate error and
// counts only its own calls.
func TestInstancesAreIndependent(t *testing.T) {
	a := newMetrics(t, &fakeSource{})
	b := newMetrics(t, &fakeSource{})
	a.ObserveDockerCall("/NetworkDriver.Join", false, time.Millisecond)
	if n := testutil.CollectAndCount(b.dockerCalls); n != 0 {
		t.Errorf("second instance sees %d series of the first", n)
	}
}

// The names and help texts follow Prometheus' conventions, and the
// collector describes exactly what it collects (a pedantic registry checks).
func TestMetricsAreWellFormed(t *testing.T) {
	src := &fakeSource{
		endpoints:  map[string]int{StateReady: 1},
		identities: map[string]int{IdentityReserved: 3},
		verdicts: []Verdict{
			{Kind: Forward, Direction: "EGRESS", Packets: 1, Bytes: 1},
			{Kind: Drop, Reason: "Policy denied", Direction: "EGRESS", Packets: 1, Bytes: 1},
			{Kind: Audit, Direction: "EGRESS", Packets: 1, Bytes: 1},
		},
	}
	m := newMetrics(t, src)
	m.ObserveDockerCall("/NetworkDriver.Join", false, time.Millisecond)
	problems, err := testutil.GatherAndLint(m.Gatherer())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, Namespace+"_") {
			t.Errorf("lint %s: %s", p.Metric, p.Text)
		}
	}
	pedantic := prometheus.NewPedanticRegistry()
	if err := pedantic.Register(newStateCollector(src)); err != nil {
		t.Fatal(err)
	}
	if _, err := pedantic.Gather(); err != nil {
		t.Errorf("pedantic gather: %v", err)
	}
}
