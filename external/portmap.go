// Package external gives ebpfnet networks a way off the node and onto it:
// masquerade of traffic leaving the node, --internal networks that stay
// inside, and published ports (-p, -P). It works with iptables rules in
// chains of its own, next to Docker's, so that both live side by side and
// ours can be removed without touching anything else.
package external

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
)

// Option keys Docker puts in ProgramExternalConnectivity's Options.
const (
	OptionPortMap      = "com.docker.network.portmap"
	OptionExposedPorts = "com.docker.network.endpoint.exposedports"
	// OptionMasquerade is the bridge driver's name for the per-network
	// switch, so `-o` lines written for the bridge work unchanged.
	OptionMasquerade = "com.docker.network.bridge.enable_ip_masquerade"
)

// IP protocol numbers as libnetwork sends them.
const (
	ProtoTCP = 6
	ProtoUDP = 17
)

// Binding is one published port as Docker asks for it (libnetwork's
// types.PortBinding): HostPort 0 means "any free port" (-P or -p PORT),
// HostPortEnd > HostPort means "one free port of that range".
type Binding struct {
	Proto       uint8  `json:"Proto"`
	IP          string `json:"IP,omitempty"`
	Port        uint16 `json:"Port"`
	HostIP      string `json:"HostIP,omitempty"`
	HostPort    uint16 `json:"HostPort"`
	HostPortEnd uint16 `json:"HostPortEnd,omitempty"`
}

// Mapping is a binding we programmed: the host port is decided.
type Mapping struct {
	Proto         uint8      `json:"proto"`
	HostIP        netip.Addr `json:"hostIP"` // unspecified: every local address
	HostPort      uint16     `json:"hostPort"`
	ContainerIP   netip.Addr `json:"containerIP"`
	ContainerPort uint16     `json:"containerPort"`
}

func (m Mapping) String() string {
	host := "*:" + strconv.Itoa(int(m.HostPort))
	if !m.HostIP.IsUnspecified() {
		host = netip.AddrPortFrom(m.HostIP, m.HostPort).String()
	}
	return fmt.Sprintf("%s/%s -> %s", host, protoName(m.Proto), netip.AddrPortFrom(m.ContainerIP, m.ContainerPort))
}

func protoName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	}
	return strconv.Itoa(int(p))
}

// ParseBindings reads the port map from ProgramExternalConnectivity's
// options. The remote driver API hands them over as decoded JSON, so they
// go back through JSON into our own type rather than being picked apart by
// hand. Bindings on IPv6 host addresses are kept: they publish on the
// container's IPv6 address (Program).
func ParseBindings(options map[string]interface{}) ([]Binding, error) {
	raw, ok := options[OptionPortMap]
	if !ok || raw == nil {
		return nil, nil
	}
	data, err := json.Marshal(raw)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", OptionPortMap, err)
	}
	var all []Binding
	if err := json.Unmarshal(data, &all); err != nil {
		return nil, fmt.Errorf("decode %s %s: %w", OptionPortMap, data, err)
	}
	var out []Binding
	for _, b := range all {
		if b.HostIP != "" {
			if _, err := netip.ParseAddr(b.HostIP); err != nil {
				return nil, fmt.Errorf("port %d: host IP %q: %w", b.Port, b.HostIP, err)
			}
		}
		if b.Proto != ProtoTCP && b.Proto != ProtoUDP {
			return nil, fmt.Errorf("port %d: protocol %d: ebpfnet publishes only tcp and udp", b.Port, b.Proto)
		}
		if b.Port == 0 {
			return nil, fmt.Errorf("binding %+v has no container port", b)
		}
		if b.HostPortEnd != 0 && b.HostPortEnd < b.HostPort {
			return nil, fmt.Errorf("port %d: host port range %d-%d is reversed", b.Port, b.HostPort, b.HostPortEnd)
		}
		out = append(out, b)
	}
	return out, nil
}

// hostIP is the binding's host address, unspecified for "all".
func (b Binding) hostIP() netip.Addr {
	if b.HostIP == "" {
		return netip.IPv4Unspecified()
	}
	ip, _ := netip.ParseAddr(b.HostIP) // checked by ParseBindings
	return ip.Unmap()
}

// overlaps says whether two mappings would catch the same packets: of one
// family, protocol and port, on the same or any host address.
func (m Mapping) overlaps(o Mapping) bool {
	if m.Proto != o.Proto || m.HostPort != o.HostPort || m.HostIP.Is4() != o.HostIP.Is4() {
		return false
	}
	return m.HostIP.IsUnspecified() || o.HostIP.IsUnspecified() || m.HostIP == o.HostIP
}
