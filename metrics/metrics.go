// Package metrics is the daemon's Prometheus view: endpoints by state,
// identities, the policy revision, the datapath's forward and drop counters
// and how long Docker's calls take. It knows neither Docker nor the kernel:
// the daemon shows its state through the small interfaces below, which are
// read at every scrape, so a number is never older than the scrape.
//
// Names follow Cilium's (cilium_drop_count_total becomes
// ebpfnet_drop_count_total, with the same label values), so that a Cilium
// user's queries need only the prefix changed.
package metrics

import (
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every metric of ours.
const Namespace = "ebpfnet"

// Path is where the handler serves the metrics.
const Path = "/metrics"

// Endpoint states. An endpoint exists in the datapath only once it is fully
// built, so these are the states a scrape can meet; Cilium uses the same
// words for them.
const (
	// StateReady is an endpoint with its real identity.
	StateReady = "ready"
	// StateWaitingForIdentity is an endpoint still at the init identity:
	// its container's labels have not arrived from Docker yet.
	StateWaitingForIdentity = "waiting-for-identity"
)

// endpointStates are reported even when no endpoint is in them: a series
// at 0 tells "none" apart from "not reported".
func endpointStates() []string { return []string{StateReady, StateWaitingForIdentity} }

// Identity types, after the identity package's kinds.
const (
	IdentityReserved  = "reserved"  // host, world, init
	IdentityAllocated = "allocated" // a container label set
	IdentityCIDR      = "cidr"      // a CIDR prefix named by a rule
)

func identityTypes() []string {
	return []string{IdentityReserved, IdentityAllocated, IdentityCIDR}
}

// VerdictKind says which counter a datapath verdict feeds.
type VerdictKind int

const (
	// Forward is a packet the programs passed on: redirected to a local
	// peer, handed to the host stack, or answered (ARP).
	Forward VerdictKind = iota + 1
	// Drop is a packet the programs dropped.
	Drop
	// Audit is a new flow that policy denied and audit mode let through.
	// The same packet is counted again where it goes, so it is neither a
	// forward nor a drop of its own.
	Audit
)

// Verdict is one counter of the datapath: the packets and bytes the
// programs gave one verdict in one direction, since the counters were
// created (they outlive the daemon: the map is pinned).
type Verdict struct {
	Kind VerdictKind
	// Reason is the verdict in words, as Cilium's reason label has it
	// ("Policy denied").
	Reason string
	// Direction is INGRESS (towards the container) or EGRESS, as Cilium's
	// direction label has it.
	Direction string
	Packets   uint64
	Bytes     uint64
}

// Endpoints counts the node's endpoints by state (State*).
type Endpoints interface {
	EndpointsByState() map[string]int
}

// Identities counts the identities known, by type (Identity*).
type Identities interface {
	IdentitiesByType() map[string]int
}

// Policy gives the revision of the policy in force.
type Policy interface {
	PolicyRevision() uint64
}

// Datapath reads the datapath's verdict counters.
type Datapath interface {
	Verdicts() ([]Verdict, error)
}

// Source is everything the daemon shows.
type Source interface {
	Endpoints
	Identities
	Policy
	Datapath
}

// Metrics owns a private registry: nothing here touches Prometheus' default
// registry, so two daemons in one process (tests) never share a series.
type Metrics struct {
	registry       *prometheus.Registry
	dockerCalls    *prometheus.HistogramVec
	endpointBuilds *prometheus.HistogramVec
}

// New registers the daemon's metrics, the Go runtime's and the process's on
// a new registry.
func New(src Source) (*Metrics, error) {
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		dockerCalls: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace,
			Name:      "docker_call_duration_seconds",
			Help:      "Time taken to answer one call of Docker's network or IPAM driver API, by call and outcome (ok, error).",
			// 0.5 ms to about 4 s: most calls take well under a millisecond,
			// CreateEndpoint a few, and anything near seconds is a problem.
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"call", "outcome"}),
		endpointBuilds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace,
			Name:      "endpoint_build_duration_seconds",
			Help:      "Time taken to build one endpoint (veth, programs, policy) after CreateEndpoint answered Docker, by outcome (ok, error); Join waits for it.",
			// 0.25 ms to about 2 s: a build takes one or two milliseconds.
			Buckets: prometheus.ExponentialBuckets(0.00025, 2, 14),
		}, []string{"outcome"}),
	}
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newStateCollector(src),
		m.dockerCalls,
		m.endpointBuilds,
	} {
		if err := m.registry.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}

// ObserveDockerCall records how long one Docker call took and whether it
// was answered with an error.
func (m *Metrics) ObserveDockerCall(call string, failed bool, took time.Duration) {
	outcome := "ok"
	if failed {
		outcome = "error"
	}
	m.dockerCalls.WithLabelValues(call, outcome).Observe(took.Seconds())
}

// ObserveEndpointBuild records how long one endpoint's build took, after
// CreateEndpoint had answered (driver/creations.go), and whether it failed.
func (m *Metrics) ObserveEndpointBuild(failed bool, took time.Duration) {
	outcome := "ok"
	if failed {
		outcome = "error"
	}
	m.endpointBuilds.WithLabelValues(outcome).Observe(took.Seconds())
}

// Gatherer gives the registry, for tests and for other exporters.
func (m *Metrics) Gatherer() prometheus.Gatherer { return m.registry }

// Logger takes the errors of a scrape; logrus loggers are one.
type Logger interface {
	Println(v ...any)
}

// Handler serves the metrics at Path. A source that fails (the datapath's
// map cannot be read) is logged and left out of that scrape instead of
// failing the whole scrape: the other numbers are still true.
func (m *Metrics) Handler(log Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(Path, promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{
		ErrorLog:      log,
		ErrorHandling: promhttp.ContinueOnError,
		// Counts failed scrapes in promhttp_metric_handler_errors_total.
		Registry: m.registry,
	}))
	return mux
}

// stateCollector reads the daemon's state at scrape time and turns it into
// const metrics: the numbers live in the daemon and the BPF map, and copying
// them into gauges and counters between scrapes would only make them stale.
type stateCollector struct {
	src                        Source
	endpoints                  *prometheus.Desc
	identities                 *prometheus.Desc
	policyRevision             *prometheus.Desc
	forwardCount, forwardBytes *prometheus.Desc
	dropCount, dropBytes       *prometheus.Desc
	auditCount                 *prometheus.Desc
}

func newStateCollector(src Source) *stateCollector {
	name := func(n string) string { return prometheus.BuildFQName(Namespace, "", n) }
	return &stateCollector{
		src: src,
		endpoints: prometheus.NewDesc(name("endpoint_state"),
			"Number of endpoints on the node, by state.", []string{"state"}, nil),
		identities: prometheus.NewDesc(name("identity"),
			"Number of identities known, by type (reserved, allocated, cidr).", []string{"type"}, nil),
		policyRevision: prometheus.NewDesc(name("policy_revision"),
			"Revision of the policy in force; every import or delete raises it.", nil, nil),
		forwardCount: prometheus.NewDesc(name("forward_count_total"),
			"Packets the datapath passed on (to a local peer, to the host stack, or an ARP answer), by direction.", []string{"direction"}, nil),
		forwardBytes: prometheus.NewDesc(name("forward_bytes_total"),
			"Bytes the datapath passed on, by direction.", []string{"direction"}, nil),
		dropCount: prometheus.NewDesc(name("drop_count_total"),
			"Packets the datapath dropped, by reason and direction.", []string{"reason", "direction"}, nil),
		dropBytes: prometheus.NewDesc(name("drop_bytes_total"),
			"Bytes the datapath dropped, by reason and direction.", []string{"reason", "direction"}, nil),
		auditCount: prometheus.NewDesc(name("policy_audit_count_total"),
			"New flows that policy denied and audit mode let through, by direction.", []string{"direction"}, nil),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.endpoints, c.identities, c.policyRevision,
		c.forwardCount, c.forwardBytes, c.dropCount, c.dropBytes, c.auditCount} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	gaugeByLabel(ch, c.endpoints, endpointStates(), c.src.EndpointsByState())
	gaugeByLabel(ch, c.identities, identityTypes(), c.src.IdentitiesByType())
	ch <- prometheus.MustNewConstMetric(c.policyRevision, prometheus.GaugeValue, float64(c.src.PolicyRevision()))
	c.collectVerdicts(ch)
}

// gaugeByLabel reports every known label value (0 when absent) and any
// other the source names, so a new state shows up rather than vanishing.
func gaugeByLabel(ch chan<- prometheus.Metric, desc *prometheus.Desc, known []string, counts map[string]int) {
	for _, v := range known {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, float64(counts[v]), v)
	}
	for v, n := range counts {
		if !slices.Contains(known, v) {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, float64(n), v)
		}
	}
}

type dropKey struct{ reason, direction string }

type packetsBytes struct{ packets, bytes uint64 }

func (c *stateCollector) collectVerdicts(ch chan<- prometheus.Metric) {
	verdicts, err := c.src.Verdicts()
	if err != nil {
		err = fmt.Errorf("read datapath counters: %w", err)
		for _, d := range []*prometheus.Desc{c.forwardCount, c.forwardBytes, c.dropCount, c.dropBytes, c.auditCount} {
			ch <- prometheus.NewInvalidMetric(d, err)
		}
		return
	}
	// Several verdicts may share one series (forwards have no reason
	// label): sum them, since a const metric may appear only once.
	forwards := map[string]packetsBytes{}
	drops := map[dropKey]packetsBytes{}
	audits := map[string]uint64{}
	for _, v := range verdicts {
		switch v.Kind {
		case Forward:
			s := forwards[v.Direction]
			forwards[v.Direction] = packetsBytes{s.packets + v.Packets, s.bytes + v.Bytes}
		case Drop:
			k := dropKey{v.Reason, v.Direction}
			s := drops[k]
			drops[k] = packetsBytes{s.packets + v.Packets, s.bytes + v.Bytes}
		case Audit:
			audits[v.Direction] += v.Packets
		}
	}
	for dir, s := range forwards {
		ch <- prometheus.MustNewConstMetric(c.forwardCount, prometheus.CounterValue, float64(s.packets), dir)
		ch <- prometheus.MustNewConstMetric(c.forwardBytes, prometheus.CounterValue, float64(s.bytes), dir)
	}
	for k, s := range drops {
		ch <- prometheus.MustNewConstMetric(c.dropCount, prometheus.CounterValue, float64(s.packets), k.reason, k.direction)
		ch <- prometheus.MustNewConstMetric(c.dropBytes, prometheus.CounterValue, float64(s.bytes), k.reason, k.direction)
	}
	for dir, n := range audits {
		ch <- prometheus.MustNewConstMetric(c.auditCount, prometheus.CounterValue, float64(n), dir)
	}
}
