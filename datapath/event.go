package datapath

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

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

// eventSize is sizeof(struct notify).
const eventSize = 40

// decodeEvent parses struct notify. Addresses and ports are in network
// byte order, the other fields in the host's (BPF runs little-endian here).
func decodeEvent(b []byte) (Event, error) {
	if len(b) < eventSize {
		return Event{}, fmt.Errorf("event of %d bytes, want %d", len(b), eventSize)
	}
	dir, ok := directionOfMetric(b[3])
	if !ok {
		return Event{}, fmt.Errorf("event direction %d is neither METRIC_INGRESS nor METRIC_EGRESS", b[3])
	}
	le := binary.LittleEndian
	return Event{
		Type:        EventType(b[0]),
		Reason:      Reason(b[1]),
		Verdict:     Verdict(b[2]),
		Direction:   dir,
		EndpointID:  uint16(le.Uint32(b[4:8])),
		Src:         netip.AddrFrom4([4]byte(b[8:12])),
		Dst:         netip.AddrFrom4([4]byte(b[12:16])),
		SrcPort:     binary.BigEndian.Uint16(b[16:18]),
		DstPort:     binary.BigEndian.Uint16(b[18:20]),
		Proto:       b[20],
		SrcIdentity: le.Uint32(b[24:28]),
		DstIdentity: le.Uint32(b[28:32]),
		IfIndex:     le.Uint32(b[32:36]),
		Len:         le.Uint32(b[36:40]),
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
	for {
		if err := rd.ReadInto(&rec); err != nil {
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
