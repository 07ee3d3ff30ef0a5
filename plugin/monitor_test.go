package plugin

import (
	"net/netip"
	"testing"
)

func TestMonitorShowsICMPWithoutPorts(t *testing.T) {
	a := netip.MustParseAddr("10.77.0.4")
	if got := endpointString(a, 7, 1); got != "10.77.0.4" {
		t.Errorf("ICMP end = %q, want the address alone", got)
	}
	if got := endpointString(a, 80, 6); got != "10.77.0.4:80" {
		t.Errorf("TCP end = %q, want addr:port", got)
	}
}

func TestMonitorShowsIPv6Ends(t *testing.T) {
	a := netip.MustParseAddr("fd00:77::4")
	if got := endpointString(a, 7, 58); got != "fd00:77::4" {
		t.Errorf("ICMPv6 end = %q, want the address alone", got)
	}
	if got := endpointString(a, 80, 6); got != "[fd00:77::4]:80" {
		t.Errorf("TCP over IPv6 end = %q, want [addr]:port", got)
	}
	if protocolName(58) != "icmpv6" {
		t.Errorf("protocol 58 is %q", protocolName(58))
	}
}
