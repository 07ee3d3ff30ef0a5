package plugin

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/api"
	"github.com/ebpfnet/ebpfnet/datapath"
)

// monitorBroker reads the datapath's events once and fans them out to every
// `ebpfnet monitor`. A ring buffer has one reader; a slow subscriber loses
// events (counted in its stream's log) rather than stalling the others.
type monitorBroker struct {
	log         logrus.FieldLogger
	datapath    *datapath.Datapath
	resolve     func(uint32) []string
	mu          sync.Mutex
	subscribers map[chan api.MonitorEvent]struct{}
}

func newMonitorBroker(dp *datapath.Datapath, resolve func(uint32) []string, log logrus.FieldLogger) *monitorBroker {
	return &monitorBroker{
		log: log, datapath: dp, resolve: resolve,
		subscribers: map[chan api.MonitorEvent]struct{}{},
	}
}

// run reads events until ctx ends.
func (b *monitorBroker) run(ctx context.Context) {
	err := b.datapath.ReadEvents(ctx, func(ev datapath.Event) {
		b.mu.Lock()
		defer b.mu.Unlock()
		if len(b.subscribers) == 0 {
			return
		}
		out := b.toAPI(ev)
		for ch := range b.subscribers {
			select {
			case ch <- out:
			default: // a slow reader loses events, the others do not wait
			}
		}
	})
	if err != nil && !errors.Is(err, context.Canceled) && ctx.Err() == nil {
		b.log.WithError(err).Warn("reading datapath events stopped; ebpfnet monitor shows nothing")
	}
}

func (b *monitorBroker) subscribe() (chan api.MonitorEvent, func()) {
	ch := make(chan api.MonitorEvent, 1024)
	b.mu.Lock()
	b.subscribers[ch] = struct{}{}
	b.mu.Unlock()
	return ch, func() {
		b.mu.Lock()
		delete(b.subscribers, ch)
		b.mu.Unlock()
	}
}

func (b *monitorBroker) toAPI(ev datapath.Event) api.MonitorEvent {
	out := api.MonitorEvent{
		Time:        time.Now(),
		Type:        ev.Type.String(),
		Reason:      ev.Reason.String(),
		Endpoint:    ev.EndpointID,
		Direction:   ev.Direction.String(),
		Source:      endpointString(ev.Src, ev.SrcPort, ev.Proto),
		Destination: endpointString(ev.Dst, ev.DstPort, ev.Proto),
		Protocol:    protocolName(ev.Proto),
		SrcIdentity: ev.SrcIdentity,
		SrcLabels:   b.resolve(ev.SrcIdentity),
		DstIdentity: ev.DstIdentity,
		DstLabels:   b.resolve(ev.DstIdentity),
	}
	if ev.Type == datapath.EventPolicyVerdict {
		out.Verdict = ev.Verdict.String()
	}
	if ep, ok := b.datapath.EndpointByID(ev.EndpointID); ok {
		out.InterfaceName = ep.IfName
	}
	return out
}

// endpointString is addr:port for TCP and UDP ([addr]:port for IPv6).
// ICMP and ICMPv6 have no ports (the datapath carries the echo id in their
// place, for conntrack), so such an end is its address alone, as Cilium's
// monitor shows it.
func endpointString(addr netip.Addr, port uint16, proto uint8) string {
	if proto == 1 || proto == 58 {
		return addr.String()
	}
	return netip.AddrPortFrom(addr, port).String()
}

func protocolName(p uint8) string {
	switch p {
	case 1:
		return "icmp"
	case 58:
		return "icmpv6"
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 0:
		return "any"
	}
	return fmt.Sprintf("proto-%d", p)
}
