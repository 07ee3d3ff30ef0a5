package external

import (
	"fmt"
	"net/netip"
	"strconv"
)

// Our chains. Each built-in chain jumps to ours once; every rule of ours
// lives in ours, so removing ebpfnet is flushing and deleting these and the
// jumps, and Docker's chains (DOCKER, DOCKER-USER, ...) are never touched.
// The production daemon's chains are EBPFNET-DNAT (published ports; from
// PREROUTING and OUTPUT), EBPFNET-POSTROUTING, EBPFNET-FORWARD and
// EBPFNET-INPUT; a second daemon on other paths (a benchmark's) uses
// another prefix, so that neither removes the other's chains.
const (
	tableNAT    = "nat"
	tableFilter = "filter"

	// DefaultChainPrefix names the production daemon's chains.
	DefaultChainPrefix = "EBPFNET"

	// lxcDevices matches every endpoint's host-side veth (ARCHITECTURE.md names
	// them lxc + 12 hex digits).
	lxcDevices = "lxc+"
)

type rule struct {
	table, chain string
	spec         []string
	// v6 puts the rule in ip6tables.
	v6 bool
}

func (r rule) String() string {
	cmd := "iptables"
	if r.v6 {
		cmd = "ip6tables"
	}
	return fmt.Sprintf("%s -t %s -A %s %v", cmd, r.table, r.chain, r.spec)
}

// in6 is rules, in ip6tables.
func in6(rules []rule) []rule {
	out := make([]rule, len(rules))
	for i, r := range rules {
		r.v6 = true
		out[i] = r
	}
	return out
}

// names are one manager's chain names.
type names struct {
	dnat, postrouting, forward, input string
}

func chainNames(prefix string) names {
	return names{prefix + "-DNAT", prefix + "-POSTROUTING", prefix + "-FORWARD", prefix + "-INPUT"}
}

// chains lists our chains with their table.
func (nm names) chains() []rule {
	return []rule{
		{table: tableNAT, chain: nm.dnat},
		{table: tableNAT, chain: nm.postrouting},
		{table: tableFilter, chain: nm.forward},
		{table: tableFilter, chain: nm.input},
	}
}

// jumps are the rules in the built-in chains that lead to ours. DNAT only
// for local destinations, as Docker does, so forwarded traffic to other
// hosts never meets our port rules. OUTPUT includes 127.0.0.0/8 (Docker
// leaves it to docker-proxy): that is how the node reaches a published
// port on 127.0.0.1 without a proxy. The same jumps lead to our chains in
// ip6tables (in6).
func (nm names) jumps() []rule {
	return []rule{
		{table: tableNAT, chain: "PREROUTING", spec: []string{"-m", "addrtype", "--dst-type", "LOCAL", "-j", nm.dnat}},
		{table: tableNAT, chain: "OUTPUT", spec: []string{"-m", "addrtype", "--dst-type", "LOCAL", "-j", nm.dnat}},
		{table: tableNAT, chain: "POSTROUTING", spec: []string{"-j", nm.postrouting}},
		{table: tableFilter, chain: "FORWARD", spec: []string{"-j", nm.forward}},
		{table: tableFilter, chain: "INPUT", spec: []string{"-j", nm.input}},
	}
}

// globalRules are there while any network is. route_localnet (needed on an
// endpoint's veth for 127.0.0.1 mappings) would also let a container send
// to the node's 127.0.0.1 services; only the replies of our own DNAT may
// come in with such a destination (the guard kube-proxy added for
// CVE-2020-8558).
func (nm names) globalRules() []rule {
	return []rule{
		{table: tableFilter, chain: nm.input, spec: []string{"-i", lxcDevices, "-d", "127.0.0.0/8",
			"-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT",
			"-m", "comment", "--comment", "ebpfnet: no martian loopback from containers", "-j", "DROP"}},
	}
}

// Network is what we need to know of an ebpfnet network: its IPv4 subnet,
// its IPv6 one, or both; the rules of each family go to its own tables.
type Network struct {
	ID         string       `json:"id"`
	Subnet     netip.Prefix `json:"subnet"`
	Gateway    netip.Addr   `json:"gateway"`
	Subnet6    netip.Prefix `json:"subnet6,omitzero"`
	Gateway6   netip.Addr   `json:"gateway6,omitzero"`
	Internal   bool         `json:"internal,omitempty"`
	Masquerade bool         `json:"masquerade"`
}

func comment(kind, id string) []string {
	if len(id) > 12 {
		id = id[:12]
	}
	return []string{"-m", "comment", "--comment", "ebpfnet " + kind + " " + id}
}

// networkRules are a network's own rules, in order: those of its IPv4
// subnet, then those of its IPv6 subnet, which are the same in ip6tables
// (v6 false leaves the IPv6 ones out).
func (nm names) networkRules(n Network, v6 bool) []rule {
	var out []rule
	if n.Subnet.IsValid() {
		out = nm.familyRules(n.ID, n.Subnet, n.Gateway, n.Internal, n.Masquerade)
	}
	if v6 && n.Subnet6.IsValid() {
		out = append(out, in6(nm.familyRules(n.ID, n.Subnet6, n.Gateway6, n.Internal, n.Masquerade))...)
	}
	return out
}

// familyRules are the rules of one subnet of network id.
func (nm names) familyRules(id string, subnet netip.Prefix, gateway netip.Addr, internal, masquerade bool) []rule {
	s, gw := subnet.String(), gateway.String()
	c := comment("net", id)
	with := func(table, chain string, spec ...string) rule {
		return rule{table: table, chain: chain, spec: append(append([]string{}, c...), spec...)}
	}
	if internal {
		// No path off the node, either way. The node itself still reaches
		// the containers (INPUT/OUTPUT, not FORWARD), as with the bridge.
		return []rule{
			with(tableFilter, nm.forward, "-s", s, "-j", "DROP"),
			with(tableFilter, nm.forward, "-d", s, "-j", "DROP"),
		}
	}
	out := []rule{
		// A container reaching a published port of its own network through
		// the node (hairpin): without SNAT the reply would go straight back
		// container to container and miss the un-DNAT. The gateway is the
		// source the bridge would show, and it is host in the ipcache.
		with(tableNAT, nm.postrouting, "-s", s, "-d", s, "-m", "conntrack", "--ctstate", "DNAT", "-j", "SNAT", "--to-source", gw),
		// The node reaching a published port, 127.0.0.1 included: a
		// loopback source cannot go out of a veth, and the container has
		// no route back to it anyway.
		with(tableNAT, nm.postrouting, "-d", s, "-m", "addrtype", "--src-type", "LOCAL", "-m", "conntrack", "--ctstate", "DNAT", "-j", "SNAT", "--to-source", gw),
	}
	if masquerade {
		out = append(out, with(tableNAT, nm.postrouting, "-s", s, "!", "-o", lxcDevices, "-j", "MASQUERADE"))
	}
	// FORWARD's policy is DROP wherever Docker runs. Out: anything from the
	// subnet that leaves by another interface than an endpoint's veth
	// (other ebpfnet networks are kept apart by the datapath itself). In:
	// replies, and new flows only to published ports (DNAT).
	return append(out,
		with(tableFilter, nm.forward, "-s", s, "!", "-o", lxcDevices, "-j", "ACCEPT"),
		with(tableFilter, nm.forward, "-d", s, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "ACCEPT"),
	)
}

// mappingRule is the DNAT rule of one published port.
func (nm names) mappingRule(endpointID string, m Mapping) rule {
	spec := []string{"-p", protoName(m.Proto)}
	if !m.HostIP.IsUnspecified() {
		spec = append(spec, "-d", m.HostIP.String())
	}
	spec = append(spec, "--dport", strconv.Itoa(int(m.HostPort)))
	spec = append(spec, comment("ep", endpointID)...)
	spec = append(spec, "-j", "DNAT", "--to-destination", netip.AddrPortFrom(m.ContainerIP, m.ContainerPort).String())
	return rule{table: tableNAT, chain: nm.dnat, spec: spec, v6: m.ContainerIP.Is6()}
}
