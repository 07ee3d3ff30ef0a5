package datapath

import (
	"context"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/sirupsen/logrus"
)

// Why garbage collection in the daemon and timestamps in BPF, both: a flow
// ends when the programs say so, and they judge expiry on every packet
// (bpf/lib/conntrack.h), so timeouts hold whatever the daemon does, across
// its restarts too, and a packet pays one comparison for it. What the
// programs cannot do cheaply is sweep: an expired entry stays in the table
// until the LRU evicts it, taking the room of a live flow, and nobody would
// know how full the table is. The collector walks the table in batches
// (16 system calls for a full one), deletes what has expired, and counts
// the rest for the metrics.

// DefaultCTGCInterval is how often the collector sweeps. Expired flows
// already pass for nothing, so the interval only bounds how long their
// room stays taken and how old the counts are.
const DefaultCTGCInterval = 30 * time.Second

// Protocol classes the collector counts flows in: Cilium's conntrack
// tables and labels.
const (
	CTClassTCP    = "TCP"
	CTClassNonTCP = "non-TCP"
)

// CTGCStats is what the collector found.
type CTGCStats struct {
	// MaxEntries is the size of the IPv4 table (CT_MAX).
	MaxEntries int
	// Alive counts the IPv4 flows the last completed sweep left, Deleted
	// the expired ones it deleted, by protocol class (CTClass*).
	Alive, Deleted map[string]int
	// IPv6 is the same of the IPv6 table, swept in the same runs.
	IPv6 CTTableStats
	// Completed and Uncompleted count sweeps since the collector
	// started: an uncompleted one failed to walk or to delete.
	Completed, Uncompleted uint64
	// Duration is how long the last completed sweep took.
	Duration time.Duration
}

// CTTableStats is what a sweep found in one table.
type CTTableStats struct {
	MaxEntries     int
	Alive, Deleted map[string]int
}

// CTGC is the conntrack tables' garbage collector; Run drives it.
type CTGC struct {
	dp       *Datapath
	log      logrus.FieldLogger
	interval time.Duration

	mu    sync.Mutex
	stats CTGCStats
}

// NewCTGC returns a collector for d's conntrack table that sweeps every
// interval (DefaultCTGCInterval if 0).
func NewCTGC(d *Datapath, interval time.Duration, log logrus.FieldLogger) *CTGC {
	if interval <= 0 {
		interval = DefaultCTGCInterval
	}
	g := &CTGC{dp: d, log: log, interval: interval, stats: CTGCStats{
		Alive:   map[string]int{CTClassTCP: 0, CTClassNonTCP: 0},
		Deleted: map[string]int{CTClassTCP: 0, CTClassNonTCP: 0},
		IPv6: CTTableStats{
			Alive:   map[string]int{CTClassTCP: 0, CTClassNonTCP: 0},
			Deleted: map[string]int{CTClassTCP: 0, CTClassNonTCP: 0},
		},
	}}
	d.mu.Lock()
	if m := d.shared[CTMapName]; m != nil {
		g.stats.MaxEntries = int(m.MaxEntries())
	}
	if m := d.nodeMaps[CT6MapName]; m != nil {
		g.stats.IPv6.MaxEntries = int(m.MaxEntries())
	}
	d.mu.Unlock()
	return g
}

// Run sweeps at once and then every interval until ctx ends. A sweep that
// fails is logged and counted; the next one tries again.
func (g *CTGC) Run(ctx context.Context) {
	t := time.NewTicker(g.interval)
	defer t.Stop()
	for {
		if err := g.Sweep(); err != nil && ctx.Err() == nil {
			g.log.WithError(err).Warn("conntrack garbage collection")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sweep deletes the expired flows of both tables once and records what it
// found.
func (g *CTGC) Sweep() error {
	start := time.Now()
	now := monotonicNow()
	m, err := g.dp.sharedMap(CTMapName)
	var alive, deleted, alive6, deleted6 map[string]int
	if err == nil {
		alive, deleted, err = sweepConntrack[ctKey](m, now)
		m.Close()
	}
	if err == nil {
		if m, err = g.dp.nodeMap(CT6MapName); err == nil {
			alive6, deleted6, err = sweepConntrack[ct6Key](m, now)
			m.Close()
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if err != nil {
		g.stats.Uncompleted++
		return err
	}
	g.stats.Completed++
	g.stats.Alive, g.stats.Deleted = alive, deleted
	g.stats.IPv6.Alive, g.stats.IPv6.Deleted = alive6, deleted6
	g.stats.Duration = time.Since(start)
	g.log.WithFields(logrus.Fields{"alive": alive, "deleted": deleted, "alive6": alive6, "deleted6": deleted6,
		"took": g.stats.Duration}).Debug("conntrack swept")
	return nil
}

// Stats returns what the collector found so far.
func (g *CTGC) Stats() CTGCStats {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.stats
	s.Alive = cloneCounts(s.Alive)
	s.Deleted = cloneCounts(s.Deleted)
	s.IPv6.Alive = cloneCounts(s.IPv6.Alive)
	s.IPv6.Deleted = cloneCounts(s.IPv6.Deleted)
	return s
}

func cloneCounts(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func ctClass(proto uint8) string {
	if proto == ProtoTCP {
		return CTClassTCP
	}
	return CTClassNonTCP
}

// sweepConntrack deletes the entries of m that expired before now and
// counts, by class, those it leaves and those it deleted. A flow recreated
// over an expired entry's tuple between the walk and the delete loses its
// new entry; its next packet meets policy, as its first did.
func sweepConntrack[K ctKey | ct6Key](m *ebpf.Map, now uint64) (alive, deleted map[string]int, err error) {
	alive = map[string]int{CTClassTCP: 0, CTClassNonTCP: 0}
	deleted = map[string]int{CTClassTCP: 0, CTClassNonTCP: 0}
	var expired []K
	err = walkFlows(m, func(k []K, v []ctEntry) error {
		for i := range k {
			if v[i].Expires < now {
				expired = append(expired, k[i])
			} else {
				alive[ctClass(keyProto(k[i]))]++
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	if _, err := deleteFlows(m, expired); err != nil {
		return nil, nil, err
	}
	for _, k := range expired {
		deleted[ctClass(keyProto(k))]++
	}
	return alive, deleted, nil
}

// keyProto is the protocol of either table's key.
func keyProto[K ctKey | ct6Key](k K) uint8 {
	switch k := any(k).(type) {
	case ctKey:
		return k.Proto
	case ct6Key:
		return k.Proto
	}
	return 0
}
