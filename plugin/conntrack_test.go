package plugin

import (
	"context"
	"encoding/binary"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/api"
	"github.com/ebpfnet/ebpfnet/datapath"
)

// TestConntrackThroughTheDaemon: the daemon lists the conntrack table's
// live flows on its local API (`ebpfnet bpf ct list`), sweeps the table as
// it starts, and shows the sweeps and the table's pressure in its metrics.
func TestConntrackThroughTheDaemon(t *testing.T) {
	td, d, _ := startMetricsDaemon(t)
	families := waitFor(t, d.metricsLn.Addr().String(), "a completed conntrack sweep", func(f map[string]*dto.MetricFamily) bool {
		return value(f, "ebpfnet_datapath_conntrack_gc_runs_total", map[string]string{"family": "ipv4", "protocol": "TCP", "status": "completed"}) >= 1
	})
	if sample(families, "ebpfnet_bpf_map_pressure", map[string]string{"map_name": datapath.CTMapName}) == nil {
		t.Error("no pressure of the conntrack table")
	}
	if sample(families, "ebpfnet_datapath_conntrack_gc_entries", map[string]string{"family": "ipv4", "protocol": "non-TCP", "status": "alive"}) == nil {
		t.Error("no count of alive flows")
	}

	// A flow as the programs record it (bpf/lib/maps.h): a live UDP
	// flow that 10.1.0.9:5353 (epid 7) opened to 10.1.0.2:53, whose key
	// has the lower end first; and an expired one, not listed.
	ct, err := ebpf.LoadPinnedMap(filepath.Join(td.cfg.PinDir, datapath.CTMapName), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ct.Close()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	entry := func(expires uint64) []byte {
		v := make([]byte, 24)
		binary.LittleEndian.PutUint64(v[0:], expires)
		binary.LittleEndian.PutUint32(v[8:], 60)
		binary.LittleEndian.PutUint16(v[14:], 7) // epid of the second end
		v[16] = 1 << 4                           // CT_F_INIT_HI: the second end opened it
		return v
	}
	key := func(lport uint16) []byte {
		return []byte{10, 1, 0, 2, 10, 1, 0, 9, 0, 53, byte(lport >> 8), byte(lport), 17, 0, 0, 0}
	}
	if err := ct.Put(key(5353), entry(uint64(ts.Nano())+uint64(time.Minute))); err != nil {
		t.Fatal(err)
	}
	if err := ct.Put(key(5354), entry(uint64(ts.Nano())-uint64(time.Second))); err != nil {
		t.Fatal(err)
	}
	flows, err := api.NewClient(td.cfg.APISocket).Conntrack(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) != 1 {
		t.Fatalf("flows %+v, want the live one", flows)
	}
	f := flows[0]
	if f.Protocol != "UDP" || f.Source != "10.1.0.9:5353" || f.Destination != "10.1.0.2:53" || f.State != "" ||
		f.SourceEndpoint != 7 || f.DestinationEndpoint != 0 || f.ExpiresInSeconds < 55 || f.ExpiresInSeconds > 60 {
		t.Errorf("listed flow %+v", f)
	}
}
