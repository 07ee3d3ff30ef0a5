package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ctKey mirrors struct ct_key of bpf/lib/maps.h: a flow's tuple, addresses
// and ports in network byte order, the end with the lower (address, port)
// first (ordered), so that both directions of a flow share one key.
type ctKey struct {
	Saddr [4]byte
	Daddr [4]byte
	Sport [2]byte
	Dport [2]byte
	Proto uint8
	Pad   [3]uint8
}

// ctEntry mirrors struct ct_entry: when the flow expires, how far each of
// its packets pushes that out, the local endpoints at its ends, and its
// state (ctFlag*).
type ctEntry struct {
	Expires uint64 // CLOCK_MONOTONIC ns (coarse)
	Timeout uint32 // seconds
	EPID    [2]uint16
	Flags   uint8
	Pad     [7]uint8
}

// ct_entry.flags, CT_F_* of bpf/lib/maps.h.
const (
	ctFlagEstablished uint8 = 1 << 0
	ctFlagFinLo       uint8 = 1 << 1
	ctFlagFinHi       uint8 = 1 << 2
	ctFlagRST         uint8 = 1 << 3
	ctFlagInitHi      uint8 = 1 << 4
)

// Conntrack timeouts, CT_TIMEOUT_* of bpf/lib/conntrack.h: Cilium's
// defaults (--bpf-ct-timeout-regular-tcp-syn, -tcp, -tcp-fin, -any), and
// Linux's nf_conntrack_icmp_timeout for ICMP.
const (
	CTTimeoutSYN   = 60 * time.Second   // TCP until a packet without SYN
	CTTimeoutTCP   = 8000 * time.Second // TCP established (2h13m20s)
	CTTimeoutClose = 10 * time.Second   // TCP after an RST or a FIN from each end
	CTTimeoutAny   = 60 * time.Second   // UDP and other protocols
	CTTimeoutICMP  = 30 * time.Second   // ICMP echo
)

// IP protocol numbers the conntrack table distinguishes.
const (
	ProtoICMP uint8 = 1
	ProtoTCP  uint8 = 6
	ProtoUDP  uint8 = 17
)

// ordered tells whether k is in the order ct_key_of (bpf/lib/conntrack.h)
// writes: the program compares the fields as the integers the CPU loads
// from them, so they are read here in the native byte order.
func (k ctKey) ordered() bool {
	sa, da := binary.NativeEndian.Uint32(k.Saddr[:]), binary.NativeEndian.Uint32(k.Daddr[:])
	sp, dp := binary.NativeEndian.Uint16(k.Sport[:]), binary.NativeEndian.Uint16(k.Dport[:])
	return sa < da || (sa == da && sp <= dp)
}

// swapped is the same flow seen from its other end.
func (k ctKey) swapped() ctKey {
	return ctKey{Saddr: k.Daddr, Daddr: k.Saddr, Sport: k.Dport, Dport: k.Sport, Proto: k.Proto, Pad: k.Pad}
}

// holds tells whether addr is one of k's ends.
func (k ctKey) holds(addr [4]byte) bool { return k.Saddr == addr || k.Daddr == addr }

// monotonicNow is the clock of ct_entry.expires: CLOCK_MONOTONIC, which
// bpf_ktime_get_coarse_ns reads at tick granularity.
func monotonicNow() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		// CLOCK_MONOTONIC exists on every Linux; this cannot happen.
		panic(fmt.Sprintf("clock_gettime(CLOCK_MONOTONIC): %v", err))
	}
	return uint64(ts.Nano())
}

// CTState is a flow's state as the conntrack table records it.
type CTState string

// Flow states. Only TCP has states; other protocols report CTStateNone.
const (
	CTStateNone        CTState = ""
	CTStateOpening     CTState = "opening"     // SYN seen, no packet without SYN yet
	CTStateEstablished CTState = "established" // a packet without SYN seen
	CTStateClosing     CTState = "closing"     // RST, or FIN from each end
)

// CTFlow is one live flow of the conntrack table.
type CTFlow struct {
	Proto uint8
	// Src and Dst are the flow's ends, Src the one that sent its first
	// packet (for flows an earlier version recorded: the key's order).
	// For ICMP echo the port is the echo id, on the requester's side.
	Src, Dst netip.AddrPort
	State    CTState
	// Expires is how long the flow lives without another packet.
	Expires time.Duration
	// SrcEndpoint and DstEndpoint are the local endpoints at the ends,
	// 0 for an address that is not a local endpoint's.
	SrcEndpoint, DstEndpoint uint16
}

func (e ctEntry) state(proto uint8) CTState {
	switch {
	case proto != ProtoTCP:
		return CTStateNone
	case e.Flags&ctFlagRST != 0, e.Flags&(ctFlagFinLo|ctFlagFinHi) == ctFlagFinLo|ctFlagFinHi:
		return CTStateClosing
	case e.Flags&ctFlagEstablished != 0:
		return CTStateEstablished
	}
	return CTStateOpening
}

// flowOf describes an entry that is live at now.
func flowOf(k ctKey, e ctEntry, now uint64) CTFlow {
	lo := netip.AddrPortFrom(netip.AddrFrom4(k.Saddr), binary.BigEndian.Uint16(k.Sport[:]))
	hi := netip.AddrPortFrom(netip.AddrFrom4(k.Daddr), binary.BigEndian.Uint16(k.Dport[:]))
	return orient(CTFlow{Proto: k.Proto, Src: lo, Dst: hi, State: e.state(k.Proto),
		Expires: durationUntil(e.Expires, now), SrcEndpoint: e.EPID[0], DstEndpoint: e.EPID[1]}, e)
}

// orient puts the end that sent the flow's first packet first.
func orient(f CTFlow, e ctEntry) CTFlow {
	if e.Flags&ctFlagInitHi != 0 {
		f.Src, f.Dst = f.Dst, f.Src
		f.SrcEndpoint, f.DstEndpoint = f.DstEndpoint, f.SrcEndpoint
	}
	return f
}

func durationUntil(expires, now uint64) time.Duration { return time.Duration(expires - now) }

// Conntrack lists the live flows of both conntrack tables, IPv4 and IPv6
// (expired entries that the garbage collector has not deleted yet are left
// out), sorted by protocol and ends.
func (d *Datapath) Conntrack() ([]CTFlow, error) {
	m, err := d.sharedMap(CTMapName)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	m6, err := d.nodeMap(CT6MapName)
	if err != nil {
		return nil, err
	}
	defer m6.Close()
	now := monotonicNow()
	var out []CTFlow
	err = walkFlows(m, func(k []ctKey, v []ctEntry) error {
		for i := range k {
			if v[i].Expires >= now {
				out = append(out, flowOf(k[i], v[i], now))
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = walkFlows(m6, func(k []ct6Key, v []ctEntry) error {
		for i := range k {
			if v[i].Expires >= now {
				out = append(out, flowOf6(k[i], v[i], now))
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Proto != b.Proto {
			return a.Proto < b.Proto
		}
		if c := a.Src.Compare(b.Src); c != 0 {
			return c < 0
		}
		return a.Dst.Compare(b.Dst) < 0
	})
	return out, nil
}

// sharedMap hands out a descriptor of its own for the shared map name,
// for readers that walk a map without holding d.mu; the caller closes it.
func (d *Datapath) sharedMap(name string) (*ebpf.Map, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errors.New("datapath closed")
	}
	m, err := d.shared[name].Clone()
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	return m, nil
}

// nodeMap is sharedMap for a map only the node programs use.
func (d *Datapath) nodeMap(name string) (*ebpf.Map, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errors.New("datapath closed")
	}
	m, err := d.nodeMaps[name].Clone()
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	return m, nil
}

// ctBatch is how many entries one batch lookup moves: a full table
// (CT_MAX, 65536) in 16 system calls.
const ctBatch = 4096

// walkFlows calls fn with every entry of m, a conntrack table with keys
// of type K (ctKey, ct6Key) and values of type V, a batch at a time. The
// programs keep writing while it walks: an entry added or deleted
// meanwhile may be seen or not, and none is seen twice.
func walkFlows[K, V any](m *ebpf.Map, fn func([]K, []V) error) error {
	keys := make([]K, ctBatch)
	vals := make([]V, ctBatch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		if n > 0 {
			if ferr := fn(keys[:n], vals[:n]); ferr != nil {
				return ferr
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil // the last batch
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			return walkFlowsOneByOne(m, fn)
		}
		if err != nil {
			return fmt.Errorf("walk %s: %w", m, err)
		}
	}
}

// walkFlowsOneByOne is walkFlows for kernels without batch operations on
// hash maps (before 5.6): two system calls per entry.
func walkFlowsOneByOne[K, V any](m *ebpf.Map, fn func([]K, []V) error) error {
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		if err := fn([]K{k}, []V{v}); err != nil {
			return err
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("walk %s: %w", m, err)
	}
	return nil
}

// deleteFlows deletes keys from m; keys already gone (evicted, or deleted
// by a concurrent walk) are fine. It returns how many it deleted.
func deleteFlows[K any](m *ebpf.Map, keys []K) (int, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	n, err := m.BatchDelete(keys, nil)
	if err == nil {
		return n, nil
	}
	// A batch stops at the first key it cannot delete (one that is gone,
	// or no batch support at all): the rest go one by one.
	if n < 0 || n > len(keys) {
		n = 0
	}
	var errs []error
	deleted := n
	for _, k := range keys[n:] {
		switch err := m.Delete(k); {
		case err == nil:
			deleted++
		case !errors.Is(err, ebpf.ErrKeyNotExist):
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return deleted, fmt.Errorf("delete from %s: %w", m, err)
	}
	return deleted, nil
}

// flushConntrack deletes every flow with addr at one end: what an endpoint
// leaves when it goes. DeleteEndpoint runs it before the endpoint's epid
// can be reused, since an entry names its endpoints by epid
// (bpf/lib/conntrack.h): a flow of the old endpoint could otherwise pass
// for a new one that got both its address and its epid.
func flushConntrack(m *ebpf.Map, addr netip.Addr) error {
	if !addr.Is4() {
		return nil
	}
	return flushHolding[ctKey](m, addr.As4())
}

// flushHolding deletes every flow of the conntrack map m (keys K) with a
// at one end.
func flushHolding[K interface{ holds(A) bool }, A any](m *ebpf.Map, a A) error {
	var gone []K
	err := walkFlows(m, func(k []K, _ []ctEntry) error {
		for _, key := range k {
			if key.holds(a) {
				gone = append(gone, key)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	_, err = deleteFlows(m, gone)
	return err
}
