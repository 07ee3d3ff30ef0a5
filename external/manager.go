package external

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/coreos/go-iptables/iptables"
	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/atomicfile"
	"github.com/ebpfnet/ebpfnet/dockerid"
)

// Tables is the part of go-iptables we use; unit tests use a fake.
type Tables interface {
	ChainExists(table, chain string) (bool, error)
	ClearChain(table, chain string) error
	ClearAndDeleteChain(table, chain string) error
	AppendUnique(table, chain string, rulespec ...string) error
	DeleteIfExists(table, chain string, rulespec ...string) error
	List(table, chain string) ([]string, error)
}

// Config of a Manager.
type Config struct {
	StatePath string // /var/lib/ebpfnet/external.json
	Log       logrus.FieldLogger
	// Tables defaults to iptables (IPv4) through go-iptables, Tables6 to
	// ip6tables. With Tables set and Tables6 nil (unit tests) nothing of
	// IPv6 is programmed.
	Tables  Tables
	Tables6 Tables
	// Sysctl writes /proc/sys/<key>; tests replace it.
	Sysctl func(key, value string) error
	// CanBind reports whether the host port is free, by binding it;
	// tests replace it.
	CanBind func(proto uint8, ip netip.Addr, port uint16) error
	// EphemeralRange is where HostPort 0 is allocated; tests replace it.
	EphemeralRange func() (lo, hi uint16)
	// ChainPrefix names our chains; DefaultChainPrefix when empty. A daemon
	// beside the production one must use another.
	ChainPrefix string
}

// Manager owns our iptables chains and the published ports. Its state is
// persisted so that a restarted daemon rebuilds exactly the rules of the
// containers that still exist, and removes those of containers that went
// while it was down.
type Manager struct {
	cfg Config
	log logrus.FieldLogger
	nm  names

	mu sync.Mutex
	st state
}

type state struct {
	Networks  map[string]Network       `json:"networks"`
	Endpoints map[string]endpointState `json:"endpoints"`
}

type endpointState struct {
	NetworkID string    `json:"networkID"`
	IfName    string    `json:"ifName"`
	Mappings  []Mapping `json:"mappings"`
}

// New loads the persisted state; nothing is programmed until Restore.
func New(cfg Config) (*Manager, error) {
	cfg, err := withDefaults(cfg)
	if err != nil {
		return nil, err
	}
	st, err := loadState(cfg.StatePath)
	if err != nil {
		return nil, err
	}
	return &Manager{cfg: cfg, log: cfg.Log, nm: chainNames(cfg.ChainPrefix), st: st}, nil
}

// withDefaults fills what cfg leaves empty.
func withDefaults(cfg Config) (Config, error) {
	if cfg.Log == nil {
		cfg.Log = logrus.New()
	}
	if cfg.Tables == nil {
		ipt, err := iptables.NewWithProtocol(iptables.ProtocolIPv4)
		if err != nil {
			return cfg, fmt.Errorf("iptables: %w", err)
		}
		cfg.Tables = ipt
		if cfg.Tables6 == nil {
			ipt6, err := iptables.NewWithProtocol(iptables.ProtocolIPv6)
			if err != nil {
				return cfg, fmt.Errorf("ip6tables: %w", err)
			}
			cfg.Tables6 = ipt6
		}
	}
	if cfg.Sysctl == nil {
		cfg.Sysctl = writeSysctl
	}
	if cfg.CanBind == nil {
		cfg.CanBind = canBind
	}
	if cfg.EphemeralRange == nil {
		cfg.EphemeralRange = ephemeralRange
	}
	if cfg.ChainPrefix == "" {
		cfg.ChainPrefix = DefaultChainPrefix
	}
	if len(cfg.ChainPrefix) > 16 {
		// iptables chain names end at 28 characters; "-POSTROUTING" is 12.
		return cfg, fmt.Errorf("chain prefix %q: at most 16 characters", cfg.ChainPrefix)
	}
	return cfg, nil
}

// Restore makes the rules match networks (the driver's, which are the
// truth) and the endpoints that still exist: our chains are flushed and
// refilled, so whatever a crash or an older version left in them goes.
// With no network, the chains and jumps are removed.
func (m *Manager) Restore(networks []Network, endpoints map[string]bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.st.Networks = map[string]Network{}
	for _, n := range networks {
		m.st.Networks[n.ID] = n
	}
	for id, ep := range m.st.Endpoints {
		if _, ok := m.st.Networks[ep.NetworkID]; !ok || !endpoints[id] {
			m.log.WithField("endpoint", dockerid.Short(id)).Info("dropping the published ports of an endpoint that is gone")
			delete(m.st.Endpoints, id)
		}
	}
	if err := m.save(); err != nil {
		return err
	}
	if len(m.st.Networks) == 0 {
		return m.removeChains()
	}
	if err := m.ensureChains(true); err != nil {
		return err
	}
	for _, n := range m.sortedNetworks() {
		if err := m.forward6(n); err != nil {
			return err
		}
		if err := m.appendAll(m.nm.networkRules(n, m.v6())); err != nil {
			return err
		}
	}
	for id, ep := range m.st.Endpoints {
		for _, mp := range ep.Mappings {
			if err := m.appendAll([]rule{m.nm.mappingRule(id, mp)}); err != nil {
				return err
			}
		}
		if len(ep.Mappings) > 0 {
			m.localnet(ep.IfName)
		}
	}
	return nil
}

// AddNetwork programs a network's masquerade or isolation. Idempotent.
func (m *Manager) AddNetwork(n Network) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	old, had := m.st.Networks[n.ID]
	// A network added again keeps the rules it had; a new one that fails
	// takes back what it programmed.
	undo := func() {
		if !had {
			m.undoAddNetwork(n)
		}
	}
	if err := m.ensureChains(false); err != nil {
		undo()
		return err
	}
	if err := m.forward6(n); err != nil {
		undo()
		return err
	}
	if err := m.appendAll(m.nm.networkRules(n, m.v6())); err != nil {
		undo()
		return err
	}
	m.st.Networks[n.ID] = n
	if err := m.save(); err != nil {
		if had {
			m.st.Networks[n.ID] = old
		} else {
			delete(m.st.Networks, n.ID)
		}
		undo()
		return err
	}
	return nil
}

// undoAddNetwork removes what a failed AddNetwork of a new network
// programmed: its rules, and our chains if no other network needs them.
func (m *Manager) undoAddNetwork(n Network) {
	if err := m.deleteAll(m.nm.networkRules(n, m.v6())); err != nil {
		m.log.WithError(err).Warn("undo the rules of a network that failed to add")
	}
	if len(m.st.Networks) == 0 {
		if err := m.removeChains(); err != nil {
			m.log.WithError(err).Warn("remove our chains after a failed first network")
		}
	}
}

// RemoveNetwork removes a network's rules (and any mapping left on it);
// with the last network our chains go too. Unknown networks are fine.
func (m *Manager) RemoveNetwork(id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.st.Networks[id]
	if ok {
		for epID, ep := range m.st.Endpoints {
			if ep.NetworkID == id {
				if err := m.revokeLocked(epID); err != nil {
					return err
				}
			}
		}
		if err := m.deleteAll(m.nm.networkRules(n, m.v6())); err != nil {
			return err
		}
		delete(m.st.Networks, id)
		if err := m.save(); err != nil {
			return err
		}
	}
	if len(m.st.Networks) == 0 {
		return m.removeChains()
	}
	return nil
}

// Program publishes an endpoint's ports on its IPv4 address ip, its IPv6
// address ip6, or both (either may be invalid). A binding without a host
// address publishes on every address of each family the endpoint has (a
// twin for "::" that Docker adds is the same port), one with a host
// address only in its family. Each mapping gets one host port: the one
// asked for, the first free one of a range, or one from the ephemeral
// range for HostPort 0. A port another mapping of ours, one of Docker's or
// a listening socket holds is refused. A retried call for an endpoint
// already programmed is answered as the first time.
func (m *Manager) Program(networkID, endpointID, ifName string, ip, ip6 netip.Addr, bindings []Binding) ([]Mapping, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ep, ok := m.st.Endpoints[endpointID]; ok {
		return ep.Mappings, nil
	}
	if len(bindings) == 0 {
		return nil, nil
	}
	n, ok := m.st.Networks[networkID]
	if !ok {
		return nil, fmt.Errorf("publish ports: network %s is unknown", dockerid.Short(networkID))
	}
	if n.Internal {
		return nil, errors.New("publish ports: the network is --internal and has no path off the node")
	}
	docker, err := m.dockerMappings()
	if err != nil {
		return nil, err
	}
	taken := docker
	for _, ep := range m.st.Endpoints {
		taken = append(taken, ep.Mappings...)
	}
	planned, err := m.perFamily(bindings, ip, ip6)
	if err != nil {
		return nil, err
	}
	var chosen []Mapping
	for _, p := range planned {
		mp, err := m.choose(p.b, p.ip, taken)
		if err != nil {
			return nil, err
		}
		chosen = append(chosen, mp)
		taken = append(taken, mp)
	}
	var rules []rule
	for _, mp := range chosen {
		rules = append(rules, m.nm.mappingRule(endpointID, mp))
	}
	if err := m.appendAll(rules); err != nil {
		m.deleteAll(rules)
		return nil, err
	}
	m.localnet(ifName)
	m.st.Endpoints[endpointID] = endpointState{NetworkID: networkID, IfName: ifName, Mappings: chosen}
	if err := m.save(); err != nil {
		m.deleteAll(rules)
		delete(m.st.Endpoints, endpointID)
		return nil, err
	}
	for _, mp := range chosen {
		m.log.WithFields(logrus.Fields{"endpoint": dockerid.Short(endpointID), "mapping": mp.String()}).Info("port published")
	}
	return chosen, nil
}

// Revoke removes an endpoint's published ports. Unknown endpoints are fine:
// Docker revokes on leave and we again on delete.
func (m *Manager) Revoke(endpointID string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.st.Endpoints[endpointID]; !ok {
		return nil
	}
	if err := m.revokeLocked(endpointID); err != nil {
		return err
	}
	return m.save()
}

// Mappings lists the published ports by endpoint.
func (m *Manager) Mappings() map[string][]Mapping {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string][]Mapping{}
	for id, ep := range m.st.Endpoints {
		out[id] = append([]Mapping(nil), ep.Mappings...)
	}
	return out
}

func (m *Manager) revokeLocked(endpointID string) error {
	ep := m.st.Endpoints[endpointID]
	var rules []rule
	for _, mp := range ep.Mappings {
		rules = append(rules, m.nm.mappingRule(endpointID, mp))
	}
	if err := m.deleteAll(rules); err != nil {
		return fmt.Errorf("revoke published ports of %s: %w", dockerid.Short(endpointID), err)
	}
	delete(m.st.Endpoints, endpointID)
	return nil
}

// plannedBinding is a binding on the container address of one family.
type plannedBinding struct {
	b  Binding
	ip netip.Addr
}

// perFamily spreads bindings over the endpoint's families (Program).
func (m *Manager) perFamily(bindings []Binding, ip, ip6 netip.Addr) ([]plannedBinding, error) {
	var out []plannedBinding
	seen := map[Binding]bool{}
	add := func(b Binding, to netip.Addr) {
		if h := b.hostIP(); to.Is6() && h.Is4() {
			b.HostIP = netip.IPv6Unspecified().String() // "": every address
		}
		if !seen[b] {
			seen[b] = true
			out = append(out, plannedBinding{b: b, ip: to})
		}
	}
	for _, b := range bindings {
		host := b.hostIP()
		switch {
		case b.HostIP == "":
			if ip.IsValid() {
				add(b, ip)
			}
			if ip6.IsValid() && m.v6() {
				add(b, ip6)
			}
		case host.Is6():
			if !ip6.IsValid() || !m.v6() {
				if b.HostIP == netip.IPv6Unspecified().String() && ip.IsValid() {
					continue // Docker's IPv6 twin, on a container without IPv6
				}
				return nil, fmt.Errorf("publish %s port %d on %s: the container has no IPv6 address", protoName(b.Proto), b.Port, host)
			}
			add(b, ip6)
		default:
			if !ip.IsValid() {
				if host.IsUnspecified() && ip6.IsValid() {
					continue // 0.0.0.0 on an IPv6-only container: the twin "::" publishes it
				}
				return nil, fmt.Errorf("publish %s port %d on %s: the container has no IPv4 address", protoName(b.Proto), b.Port, host)
			}
			b.HostIP = host.String()
			add(b, ip)
		}
	}
	return out, nil
}

// choose decides the host port of one binding, on ip.
func (m *Manager) choose(b Binding, ip netip.Addr, taken []Mapping) (Mapping, error) {
	mp := Mapping{Proto: b.Proto, HostIP: b.hostIP(), ContainerIP: ip, ContainerPort: b.Port}
	if ip.Is6() && mp.HostIP.Is4() {
		mp.HostIP = netip.IPv6Unspecified()
	}
	lo, hi := b.HostPort, b.HostPortEnd
	if hi < lo {
		hi = lo
	}
	ephemeral := lo == 0
	if ephemeral {
		lo, hi = m.cfg.EphemeralRange()
	}
	var last error
	for p := int(lo); p <= int(hi); p++ {
		mp.HostPort = uint16(p)
		if err := m.free(mp, taken); err != nil {
			last = err
			continue
		}
		return mp, nil
	}
	if ephemeral {
		return Mapping{}, fmt.Errorf("publish %s port %d: no free host port in %d-%d", protoName(b.Proto), b.Port, lo, hi)
	}
	if lo != hi {
		return Mapping{}, fmt.Errorf("publish %s port %d: no free host port in %d-%d (last: %w)", protoName(b.Proto), b.Port, lo, hi, last)
	}
	return Mapping{}, last
}

// free says why a mapping's host port cannot be had, or nil.
func (m *Manager) free(mp Mapping, taken []Mapping) error {
	for _, t := range taken {
		if t.overlaps(mp) {
			return fmt.Errorf("host port %d/%s is already allocated (published for %s:%d)", mp.HostPort, protoName(mp.Proto), t.ContainerIP, t.ContainerPort)
		}
	}
	if err := m.cfg.CanBind(mp.Proto, mp.HostIP, mp.HostPort); err != nil {
		return fmt.Errorf("host port %d/%s is not free on %s: %w", mp.HostPort, protoName(mp.Proto), hostName(mp.HostIP), err)
	}
	return nil
}

func hostName(ip netip.Addr) string {
	if ip.IsUnspecified() && ip.Is4() {
		return "0.0.0.0"
	}
	if ip.IsUnspecified() {
		return "::"
	}
	return ip.String()
}

// dockerRule matches the DNAT rules Docker's bridge driver writes into its
// nat DOCKER chain (with userland-proxy=false nothing else holds the port).
var dockerRule = regexp.MustCompile(`^-A DOCKER (?:.*?-d (\S+?)(?:/32)? )?.*?-p (tcp|udp) .*?--dport (\d+)(?::(\d+))? .*-j DNAT`)

// dockerMappings are the host ports Docker's own drivers publish, in
// iptables and (with Docker's ip6tables) in ip6tables.
func (m *Manager) dockerMappings() ([]Mapping, error) {
	var out []Mapping
	for _, t := range []struct {
		tables Tables
		any    netip.Addr
	}{{m.cfg.Tables, netip.IPv4Unspecified()}, {m.cfg.Tables6, netip.IPv6Unspecified()}} {
		if t.tables == nil {
			continue
		}
		ok, err := t.tables.ChainExists(tableNAT, "DOCKER")
		if err != nil || !ok {
			continue // no Docker chain: nothing of Docker's to avoid
		}
		lines, err := t.tables.List(tableNAT, "DOCKER")
		if err != nil {
			return nil, fmt.Errorf("list Docker's port mappings: %w", err)
		}
		out = append(out, parseDockerRules(lines, t.any)...)
	}
	return out, nil
}

func parseDockerRules(lines []string, any netip.Addr) []Mapping {
	var out []Mapping
	for _, l := range lines {
		s := dockerRule.FindStringSubmatch(l)
		if s == nil {
			continue
		}
		host := any
		if s[1] != "" {
			if a, err := netip.ParseAddr(s[1]); err == nil {
				host = a
			}
		}
		proto := uint8(ProtoTCP)
		if s[2] == "udp" {
			proto = ProtoUDP
		}
		lo, _ := strconv.Atoi(s[3])
		hi := lo
		if s[4] != "" {
			hi, _ = strconv.Atoi(s[4])
		}
		for p := lo; p <= hi && p < 65536; p++ {
			out = append(out, Mapping{Proto: proto, HostIP: host, HostPort: uint16(p)})
		}
	}
	return out
}

// ensureChains creates our chains and jumps, in iptables and ip6tables;
// flush empties them first (Restore refills them from the state).
func (m *Manager) ensureChains(flush bool) error {
	for _, c := range m.chains() {
		tables := m.tables(c)
		exists, err := tables.ChainExists(c.table, c.chain)
		if err != nil {
			return fmt.Errorf("look up chain %s: %w", c.chain, err)
		}
		if !exists || flush {
			// ClearChain creates a missing chain and flushes an existing one.
			if err := tables.ClearChain(c.table, c.chain); err != nil {
				return fmt.Errorf("create chain %s/%s (%s): %w", c.table, c.chain, c, err)
			}
		}
	}
	if err := m.appendAll(m.jumps()); err != nil {
		return err
	}
	if err := m.appendAll(m.nm.globalRules()); err != nil {
		return err
	}
	// Forwarding is what carries containers' traffic off the node; Docker
	// sets it too, but ebpfnet must not depend on Docker having a bridge.
	if err := m.cfg.Sysctl("net/ipv4/ip_forward", "1"); err != nil {
		return fmt.Errorf("enable IPv4 forwarding: %w", err)
	}
	return nil
}

// removeChains removes the jumps, then our chains. Idempotent.
func (m *Manager) removeChains() error {
	if err := m.deleteAll(m.jumps()); err != nil {
		return err
	}
	for _, c := range m.chains() {
		tables := m.tables(c)
		exists, err := tables.ChainExists(c.table, c.chain)
		if err != nil {
			return fmt.Errorf("look up chain %s: %w", c.chain, err)
		}
		if exists {
			if err := tables.ClearAndDeleteChain(c.table, c.chain); err != nil {
				return fmt.Errorf("delete chain %s/%s: %w", c.table, c.chain, err)
			}
		}
	}
	return nil
}

// v6 says whether IPv6 rules are programmed (Config.Tables6).
func (m *Manager) v6() bool { return m.cfg.Tables6 != nil }

// tables are the tables of r's family.
func (m *Manager) tables(r rule) Tables {
	if r.v6 {
		return m.cfg.Tables6
	}
	return m.cfg.Tables
}

// chains and jumps are ours in each family programmed.
func (m *Manager) chains() []rule {
	if !m.v6() {
		return m.nm.chains()
	}
	return append(m.nm.chains(), in6(m.nm.chains())...)
}

func (m *Manager) jumps() []rule {
	if !m.v6() {
		return m.nm.jumps()
	}
	return append(m.nm.jumps(), in6(m.nm.jumps())...)
}

// forward6 lets the node forward IPv6 once a network has IPv6: it routes
// the containers' traffic off the node (and their replies), as
// net.ipv4.ip_forward does for IPv4.
func (m *Manager) forward6(n Network) error {
	if !n.Subnet6.IsValid() || !m.v6() || n.Internal {
		return nil
	}
	if err := m.cfg.Sysctl("net/ipv6/conf/all/forwarding", "1"); err != nil {
		return fmt.Errorf("enable IPv6 forwarding: %w", err)
	}
	return nil
}

func (m *Manager) appendAll(rules []rule) error {
	for _, r := range rules {
		if err := m.tables(r).AppendUnique(r.table, r.chain, r.spec...); err != nil {
			return fmt.Errorf("iptables %s: %w", r, err)
		}
	}
	return nil
}

// deleteAll deletes every rule it can and returns the first failure: a
// half-removed mapping is worse than one more attempt at the others.
func (m *Manager) deleteAll(rules []rule) error {
	var first error
	for _, r := range rules {
		// iptables refuses even to look for a rule in, or jumping to, a
		// chain that does not exist; such a rule is gone already.
		if gone, err := m.chainGone(r); err != nil || gone {
			if err != nil && first == nil {
				first = err
			}
			continue
		}
		if err := m.tables(r).DeleteIfExists(r.table, r.chain, r.spec...); err != nil && first == nil {
			first = fmt.Errorf("iptables delete %s: %w", r, err)
		}
	}
	return first
}

// chainGone says whether r lives in or jumps to one of our chains that is
// not there.
func (m *Manager) chainGone(r rule) (bool, error) {
	for _, c := range m.nm.chains() {
		if c.table != r.table {
			continue
		}
		if r.chain == c.chain || (len(r.spec) > 0 && r.spec[len(r.spec)-1] == c.chain) {
			exists, err := m.tables(r).ChainExists(c.table, c.chain)
			if err != nil {
				return false, fmt.Errorf("look up chain %s: %w", c.chain, err)
			}
			return !exists, nil
		}
	}
	return false, nil
}

// localnet lets the endpoint's veth carry the 127.0.0.1 traffic of a
// mapping: after OUTPUT DNAT the packet still has a loopback source until
// POSTROUTING, and routing refuses that on a device without
// route_localnet. Per device rather than "all", so that no other interface
// accepts martian loopback addresses.
func (m *Manager) localnet(ifName string) {
	if ifName == "" {
		return
	}
	if err := m.cfg.Sysctl("net/ipv4/conf/"+ifName+"/route_localnet", "1"); err != nil {
		m.log.WithError(err).WithField("ifname", ifName).Warn("route_localnet: published ports will not answer on 127.0.0.1")
	}
}

func (m *Manager) sortedNetworks() []Network {
	out := make([]Network, 0, len(m.st.Networks))
	for _, n := range m.st.Networks {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (m *Manager) save() error {
	if m.cfg.StatePath == "" {
		return nil
	}
	data, err := json.MarshalIndent(m.st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode published ports: %w", err)
	}
	if err := atomicfile.Write(m.cfg.StatePath, data, 0o600); err != nil {
		return fmt.Errorf("persist published ports: %w", err)
	}
	return nil
}

func writeSysctl(key, value string) error {
	path := "/proc/sys/" + key
	cur, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(cur)) == value {
		return nil
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// canBind binds the port and lets it go: a listening socket there would be
// shadowed by our DNAT, so its owner, not us, keeps the port.
func canBind(proto uint8, ip netip.Addr, port uint16) error {
	addr := netip.AddrPortFrom(ip, port).String()
	family := "4"
	if ip.Is6() {
		family = "6"
	}
	switch proto {
	case ProtoUDP:
		c, err := net.ListenPacket("udp"+family, addr)
		if err != nil {
			return err
		}
		return c.Close()
	default:
		l, err := net.Listen("tcp"+family, addr)
		if err != nil {
			return err
		}
		return l.Close()
	}
}

// ephemeralRange is the kernel's local port range, where Docker's own
// allocator takes -P ports from too.
func ephemeralRange() (uint16, uint16) {
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		f := strings.Fields(string(data))
		if len(f) == 2 {
			lo, err1 := strconv.Atoi(f[0])
			hi, err2 := strconv.Atoi(f[1])
			if err1 == nil && err2 == nil && lo > 0 && hi >= lo && hi < 65536 {
				return uint16(lo), uint16(hi)
			}
		}
	}
	return 49153, 60999
}
