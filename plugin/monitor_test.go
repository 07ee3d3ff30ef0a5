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
