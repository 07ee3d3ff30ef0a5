package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Protocol classes of the conntrack metrics: Cilium's, which keeps TCP and
// everything else in two tables.
const (
	ConntrackTCP    = "TCP"
	ConntrackNonTCP = "non-TCP"
)

func conntrackClasses() []string { return []string{ConntrackTCP, ConntrackNonTCP} }

// ConntrackStats is what the conntrack garbage collector found in one
// table.
type ConntrackStats struct {
	// Family is the table's, "ipv4" or "ipv6".
	Family string
	// MapName is the table's map, MaxEntries its size.
	MapName    string
	MaxEntries int
	// Alive counts the flows the last sweep left, Deleted the expired
	// flows it deleted, by protocol class (Conntrack*).
	Alive, Deleted map[string]int
	// Completed and Uncompleted count the sweeps since the daemon
	// started; an uncompleted one failed.
	Completed, Uncompleted uint64
}

// Conntrack gives the garbage collector's findings in each table, read at
// scrape time.
type Conntrack interface {
	ConntrackStats() []ConntrackStats
}

// AddConntrack adds the conntrack table's metrics, named as Cilium's:
//
//	ebpfnet_datapath_conntrack_gc_runs_total{family,protocol,status}
//	    sweeps, completed or uncompleted (one sweep covers both classes)
//	ebpfnet_datapath_conntrack_gc_entries{family,protocol,status}
//	    flows alive after the last sweep, and deleted by it (expired)
//	ebpfnet_bpf_map_pressure{map_name}
//	    how full the table is, from 0 to 1: the alive flows over its
//	    size. Near 1 the LRU evicts live flows, whose next packets then
//	    meet policy again.
func (m *Metrics) AddConntrack(src Conntrack) error {
	name := func(n string) string { return prometheus.BuildFQName(Namespace, "", n) }
	return m.registry.Register(&conntrackCollector{
		src: src,
		runs: prometheus.NewDesc(name("datapath_conntrack_gc_runs_total"),
			"Garbage collections of the conntrack table, by outcome (completed, uncompleted).",
			[]string{"family", "protocol", "status"}, nil),
		entries: prometheus.NewDesc(name("datapath_conntrack_gc_entries"),
			"Flows the last garbage collection of the conntrack table left (alive) and deleted (expired).",
			[]string{"family", "protocol", "status"}, nil),
		pressure: prometheus.NewDesc(name("bpf_map_pressure"),
			"How full a map is, from 0 to 1 (alive entries over its size).",
			[]string{"map_name"}, nil),
	})
}

type conntrackCollector struct {
	src                     Conntrack
	runs, entries, pressure *prometheus.Desc
}

func (c *conntrackCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.runs
	ch <- c.entries
	ch <- c.pressure
}

func (c *conntrackCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.src.ConntrackStats() {
		family := s.Family
		alive := 0
		for _, p := range conntrackClasses() {
			ch <- prometheus.MustNewConstMetric(c.runs, prometheus.CounterValue, float64(s.Completed), family, p, "completed")
			ch <- prometheus.MustNewConstMetric(c.runs, prometheus.CounterValue, float64(s.Uncompleted), family, p, "uncompleted")
			ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(s.Alive[p]), family, p, "alive")
			ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(s.Deleted[p]), family, p, "deleted")
			alive += s.Alive[p]
		}
		if s.MaxEntries > 0 {
			ch <- prometheus.MustNewConstMetric(c.pressure, prometheus.GaugeValue, float64(alive)/float64(s.MaxEntries), s.MapName)
		}
	}
}
