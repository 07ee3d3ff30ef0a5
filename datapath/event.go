package datapath

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/ebpfnet/ebpfnet/policy"
)

// EventType says what a notification on ebpfnet_events reports
// (bpf/lib/notify.h).
type EventType uint8

// Event types; keep in sync with bpf/lib/notify.h.
const (
	EventDrop          EventType = 1 // a dropped packet, every drop
	EventPolicyVerdict EventType = 2 // a new flow met an enforced policy check
)

// String names the type as `ebpfnet monitor --type` spells it.
func (t EventType) String() string {
	switch t {
	case EventDrop:
		return "drop"
	case EventPolicyVerdict:
		return "policy-verdict"
	}
	return fmt.Sprintf("type-%d", uint8(t))
}

// Verdict is a policy check's outcome. Drops that are not a policy
// decision carry VerdictNone.
type Verdict uint8

// Verdicts; keep in sync with bpf/lib/notify.h.
const (
	VerdictNone    Verdict = 0
	VerdictAllowed Verdict = 1
	VerdictDenied  Verdict = 2
	// VerdictAudit: denied by policy, passed because the endpoint is in
	// audit mode.
	VerdictAudit Verdict = 3
)

// String gives the verdict as a user reads it.
func (v Verdict) String() string {
	switch v {
	case VerdictNone:
		return "none"
	case VerdictAllowed:
		return "allowed"
	case VerdictDenied:
		return "denied"
	case VerdictAudit:
		return "audit"
	}
	return fmt.Sprintf("verdict-%d", uint8(v))
}

// Event is one decoded notification.
type Event struct {
	Type       EventType
	Reason     Reason
	Verdict    Verdict
	Direction  policy.Direction // egress: the packet left the container
	EndpointID uint16           // the endpoint whose program reported it
	Src, Dst   netip.Addr
	// SrcPort and DstPort are TCP/UDP ports in host order. For ICMP echo
	// the echo id stands on the requester's side: SrcPort of a request,
	// DstPort of a reply (the conntrack tuple).
	SrcPort, DstPort uint16
	Proto            uint8
	// Identities of source and destination; 0 where the program had not
	// learnt them before the drop (e.g. malformed packets).
	SrcIdentity, DstIdentity uint32
	IfIndex                  uint32 // device the program ran on
	Len                      uint32 // packet length
}

// Directions as the programs count them (bpf/lib/maps.h METRIC_INGRESS,
// METRIC_EGRESS): events carry these, and Event.Direction the policy one.
const (
	metricIngress = 1
	metricEgress  = 2
)

// directionOfMetric turns an event's METRIC_* direction into a Direction.
func directionOfMetric(v uint8) (policy.Direction, bool) {
	switch v {
	case metricIngress:
		return policy.Ingress, true
	case metricEgress:
		return policy.Egress, true
	}
	return 0, false
}

// notifyRecord mirrors struct notify of bpf/lib/notify.h, as the ring
// buffer carries it: addresses and ports in network byte order, the rest
// in the host's (BPF runs little-endian here). datapath's layout test
// holds it to the object's BTF.
type notifyRecord struct {
	Type        uint8
	Reason      uint8
	Verdict     uint8
	Dir         uint8
	EPID        uint32
	Saddr       [4]byte
	Daddr       [4]byte
	Sport       [2]byte
	Dport       [2]byte
	Proto       uint8
	Pad         [3]uint8
	SrcIdentity uint32
	DstIdentity uint32
	IfIndex     uint32
	Len         uint32
}

// notify6Record mirrors struct notify6: notifyRecord with IPv6 addresses.
type notify6Record struct {
	Type        uint8
	Reason      uint8
	Verdict     uint8
	Dir         uint8
	EPID        uint32
	Saddr       v6Addr
	Daddr       v6Addr
	Sport       [2]byte
	Dport       [2]byte
	Proto       uint8
	Pad         [3]uint8
	SrcIdentity uint32
	DstIdentity uint32
	IfIndex     uint32
	Len         uint32
}

// eventSize is sizeof(struct notify), event6Size sizeof(struct notify6):
// the ring buffer hands each record over with its length, which tells the
// two apart.
var (
	eventSize  = binary.Size(notifyRecord{})
	event6Size = binary.Size(notify6Record{})
)

// decodeEvent parses struct notify or struct notify6, by the record's
// length.
func decodeEvent(b []byte) (Event, error) {
	var r notify6Record
	var src, dst netip.Addr
	switch len(b) {
	case eventSize:
		var r4 notifyRecord
		if _, err := binary.Decode(b, binary.LittleEndian, &r4); err != nil {
			return Event{}, fmt.Errorf("decode event: %w", err)
		}
		// The same fields but the addresses, which stay IPv4.
		r = notify6Record{Type: r4.Type, Reason: r4.Reason, Verdict: r4.Verdict, Dir: r4.Dir, EPID: r4.EPID,
			Sport: r4.Sport, Dport: r4.Dport, Proto: r4.Proto, SrcIdentity: r4.SrcIdentity,
			DstIdentity: r4.DstIdentity, IfIndex: r4.IfIndex, Len: r4.Len}
		src, dst = netip.AddrFrom4(r4.Saddr), netip.AddrFrom4(r4.Daddr)
	case event6Size:
		if _, err := binary.Decode(b, binary.LittleEndian, &r); err != nil {
			return Event{}, fmt.Errorf("decode event: %w", err)
		}
		src, dst = netip.AddrFrom16(r.Saddr), netip.AddrFrom16(r.Daddr)
	default:
		return Event{}, fmt.Errorf("event of %d bytes, want %d (IPv4) or %d (IPv6)", len(b), eventSize, event6Size)
	}
	dir, ok := directionOfMetric(r.Dir)
	if !ok {
		return Event{}, fmt.Errorf("event direction %d is neither METRIC_INGRESS nor METRIC_EGRESS", r.Dir)
	}
	return Event{
		Type:        EventType(r.Type),
		Reason:      Reason(r.Reason),
		Verdict:     Verdict(r.Verdict),
		Direction:   dir,
		EndpointID:  uint16(r.EPID),
		Src:         src,
		Dst:         dst,
		SrcPort:     binary.BigEndian.Uint16(r.Sport[:]),
		DstPort:     binary.BigEndian.Uint16(r.Dport[:]),
		Proto:       r.Proto,
		SrcIdentity: r.SrcIdentity,
		DstIdentity: r.DstIdentity,
		IfIndex:     r.IfIndex,
		Len:         r.Len,
	}, nil
}

// String renders the event as one monitor line.
func (e Event) String() string {
	what := e.Type.String()
	if e.Type == EventPolicyVerdict {
		what += " " + e.Verdict.String()
	}
	return fmt.Sprintf("%s (%s) epid %d %s %s -> %s proto %d identity %d -> %d ifindex %d len %d",
		what, e.Reason, e.EndpointID, e.Direction,
		netip.AddrPortFrom(e.Src, e.SrcPort), netip.AddrPortFrom(e.Dst, e.DstPort),
		e.Proto, e.SrcIdentity, e.DstIdentity, e.IfIndex, e.Len)
}

// eventPoll is how often ReadEvents looks into the ring buffer. The
// programs wake it only once the ring fills up (notify_wakeup in
// bpf/lib/notify.h), so that a new flow's event costs no wake-up of the
// daemon; an event reaches ReadEvents's caller within eventPoll.
const eventPoll = 100 * time.Millisecond

// ErrEventsBusy means another ReadEvents call is already reading.
var ErrEventsBusy = errors.New("events are already being read")

// ReadEvents calls fn for every notification the programs send until ctx
// ends (then it returns nil) or the datapath is closed. A ring buffer has
// one consumer position, so two readers would split the events between
// them: only one ReadEvents runs at a time, others get ErrEventsBusy. fn
// runs on the calling goroutine and should be quick; while it blocks, the
// programs' events pile up and, once the buffer is full, are lost.
func (d *Datapath) ReadEvents(ctx context.Context, fn func(Event)) error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return errors.New("datapath closed")
	}
	if d.stopEvents != nil {
		d.mu.Unlock()
		return ErrEventsBusy
	}
	// A reader of its own descriptor, so Close of the shared maps and the
	// reader never pull one from under the other.
	m, err := d.shared[EventsMapName].Clone()
	if err != nil {
		d.mu.Unlock()
		return fmt.Errorf("open %s: %w", EventsMapName, err)
	}
	defer m.Close()
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		d.mu.Unlock()
		return fmt.Errorf("read %s: %w", EventsMapName, err)
	}
	d.stopEvents = func() { _ = rd.Close() }
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.stopEvents = nil
		d.mu.Unlock()
		_ = rd.Close()
	}()
	stop := context.AfterFunc(ctx, func() { _ = rd.Close() })
	defer stop()

	var rec ringbuf.Record
	rd.SetDeadline(time.Now().Add(eventPoll))
	for {
		if err := rd.ReadInto(&rec); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				// Every record there was has been read.
				rd.SetDeadline(time.Now().Add(eventPoll))
				continue
			}
			if errors.Is(err, ringbuf.ErrClosed) {
				if ctx.Err() != nil {
					return nil
				}
				return errors.New("datapath closed")
			}
			return fmt.Errorf("read %s: %w", EventsMapName, err)
		}
		ev, err := decodeEvent(rec.RawSample)
		if err != nil {
			d.log.WithError(err).Warn("skipping malformed event")
			continue
		}
		fn(ev)
	}
}
