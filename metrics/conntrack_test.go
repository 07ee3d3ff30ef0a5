package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

type fakeConntrack struct{ stats, stats6 ConntrackStats }

func (f *fakeConntrack) ConntrackStats() []ConntrackStats {
	return []ConntrackStats{f.stats, f.stats6}
}

// The collector's findings, read at scrape time: runs and entries per
// protocol class as Cilium labels them, and the table's pressure.
func TestConntrackMetrics(t *testing.T) {
	m := newMetrics(t, &fakeSource{})
	ct := &fakeConntrack{ConntrackStats{
		Family: "ipv4", MapName: "ebpfnet_ct4", MaxEntries: 1000,
		Alive:     map[string]int{ConntrackTCP: 200, ConntrackNonTCP: 50},
		Deleted:   map[string]int{ConntrackTCP: 7},
		Completed: 3, Uncompleted: 1,
	}, ConntrackStats{
		Family: "ipv6", MapName: "ebpfnet_ct6", MaxEntries: 1000,
		Alive:     map[string]int{ConntrackTCP: 10},
		Deleted:   map[string]int{ConntrackNonTCP: 2},
		Completed: 3, Uncompleted: 1,
	}}
	if err := m.AddConntrack(ct); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP ebpfnet_bpf_map_pressure How full a map is, from 0 to 1 (alive entries over its size).
# TYPE ebpfnet_bpf_map_pressure gauge
ebpfnet_bpf_map_pressure{map_name="ebpfnet_ct4"} 0.25
ebpfnet_bpf_map_pressure{map_name="ebpfnet_ct6"} 0.01
# HELP ebpfnet_datapath_conntrack_gc_entries Flows the last garbage collection of the conntrack table left (alive) and deleted (expired).
# TYPE ebpfnet_datapath_conntrack_gc_entries gauge
ebpfnet_datapath_conntrack_gc_entries{family="ipv4",protocol="TCP",status="alive"} 200
ebpfnet_datapath_conntrack_gc_entries{family="ipv4",protocol="TCP",status="deleted"} 7
ebpfnet_datapath_conntrack_gc_entries{family="ipv4",protocol="non-TCP",status="alive"} 50
ebpfnet_datapath_conntrack_gc_entries{family="ipv4",protocol="non-TCP",status="deleted"} 0
ebpfnet_datapath_conntrack_gc_entries{family="ipv6",protocol="TCP",status="alive"} 10
ebpfnet_datapath_conntrack_gc_entries{family="ipv6",protocol="TCP",status="deleted"} 0
ebpfnet_datapath_conntrack_gc_entries{family="ipv6",protocol="non-TCP",status="alive"} 0
ebpfnet_datapath_conntrack_gc_entries{family="ipv6",protocol="non-TCP",status="deleted"} 2
# HELP ebpfnet_datapath_conntrack_gc_runs_total Garbage collections of the conntrack table, by outcome (completed, uncompleted).
# TYPE ebpfnet_datapath_conntrack_gc_runs_total counter
ebpfnet_datapath_conntrack_gc_runs_total{family="ipv4",protocol="TCP",status="completed"} 3
ebpfnet_datapath_conntrack_gc_runs_total{family="ipv4",protocol="TCP",status="uncompleted"} 1
ebpfnet_datapath_conntrack_gc_runs_total{family="ipv4",protocol="non-TCP",status="completed"} 3
ebpfnet_datapath_conntrack_gc_runs_total{family="ipv4",protocol="non-TCP",status="uncompleted"} 1
ebpfnet_datapath_conntrack_gc_runs_total{family="ipv6",protocol="TCP",status="completed"} 3
ebpfnet_datapath_conntrack_gc_runs_total{family="ipv6",protocol="TCP",status="uncompleted"} 1
ebpfnet_datapath_conntrack_gc_runs_total{family="ipv6",protocol="non-TCP",status="completed"} 3
ebpfnet_datapath_conntrack_gc_runs_total{family="ipv6",protocol="non-TCP",status="uncompleted"} 1
`
	names := []string{"ebpfnet_bpf_map_pressure", "ebpfnet_datapath_conntrack_gc_entries", "ebpfnet_datapath_conntrack_gc_runs_total"}
	if err := testutil.GatherAndCompare(m.Gatherer(), strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	// Read at scrape time.
	ct.stats.Alive[ConntrackTCP] = 950
	ct.stats.Completed = 4
	ct.stats6.Completed = 4
	want = strings.NewReplacer(
		`ebpfnet_ct4"} 0.25`, `ebpfnet_ct4"} 1`,
		`protocol="TCP",status="alive"} 200`, `protocol="TCP",status="alive"} 950`,
		`status="completed"} 3`, `status="completed"} 4`,
	).Replace(want)
	if err := testutil.GatherAndCompare(m.Gatherer(), strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
}
