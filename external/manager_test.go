package external

import (
	"errors"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
)

// fakeTables keeps rules as "table chain spec" lines.
type fakeTables struct {
	chains map[string][]string // "table/chain" -> rules
}

func newFakeTables() *fakeTables { return &fakeTables{chains: map[string][]string{}} }

func (f *fakeTables) ChainExists(table, chain string) (bool, error) {
	_, ok := f.chains[table+"/"+chain]
	return ok, nil
}
func (f *fakeTables) ClearChain(table, chain string) error {
	f.chains[table+"/"+chain] = []string{}
	return nil
}
func (f *fakeTables) ClearAndDeleteChain(table, chain string) error {
	delete(f.chains, table+"/"+chain)
	return nil
}
func (f *fakeTables) AppendUnique(table, chain string, spec ...string) error {
	k, r := table+"/"+chain, strings.Join(spec, " ")
	for _, have := range f.chains[k] {
		if have == r {
			return nil
		}
	}
	f.chains[k] = append(f.chains[k], r)
	return nil
}
func (f *fakeTables) DeleteIfExists(table, chain string, spec ...string) error {
	k, r := table+"/"+chain, strings.Join(spec, " ")
	for i, have := range f.chains[k] {
		if have == r {
			f.chains[k] = append(f.chains[k][:i], f.chains[k][i+1:]...)
			return nil
		}
	}
	return nil
}
func (f *fakeTables) List(table, chain string) ([]string, error) {
	var out []string
	for _, r := range f.chains[table+"/"+chain] {
		out = append(out, "-A "+chain+" "+r)
	}
	return out, nil
}

func (f *fakeTables) count(chain string) int {
	n := 0
	for k, rules := range f.chains {
		if strings.HasSuffix(k, "/"+chain) {
			n += len(rules)
		}
	}
	return n
}

func newTestManager(t *testing.T, tables *fakeTables, busy map[uint16]bool) *Manager {
	t.Helper()
	m, err := New(Config{
		StatePath: filepath.Join(t.TempDir(), "external.json"),
		Log:       logrus.New(),
		Tables:    tables,
		Sysctl:    func(string, string) error { return nil },
		CanBind: func(_ uint8, _ netip.Addr, port uint16) error {
			if busy[port] {
				return errors.New("address already in use")
			}
			return nil
		},
		EphemeralRange: func() (uint16, uint16) { return 40000, 40002 },
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var testNet = Network{ID: "net1", Subnet: netip.MustParsePrefix("10.9.0.0/24"), Gateway: netip.MustParseAddr("10.9.0.1"), Masquerade: true}

func TestParseBindingsKeepsBothFamiliesAndChecks(t *testing.T) {
	opts := map[string]interface{}{OptionPortMap: []interface{}{
		map[string]interface{}{"Proto": 6.0, "IP": "", "Port": 80.0, "HostIP": "", "HostPort": 8080.0, "HostPortEnd": 8080.0},
		map[string]interface{}{"Proto": 17.0, "Port": 53.0, "HostIP": "127.0.0.1", "HostPort": 0.0},
		map[string]interface{}{"Proto": 6.0, "Port": 80.0, "HostIP": "::", "HostPort": 8080.0},
	}}
	b, err := ParseBindings(opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 3 || b[0].HostPort != 8080 || b[1].Proto != ProtoUDP || b[1].hostIP() != netip.MustParseAddr("127.0.0.1") ||
		b[2].hostIP() != netip.IPv6Unspecified() {
		t.Fatalf("bindings %+v", b)
	}
	bad := map[string]interface{}{OptionPortMap: []interface{}{map[string]interface{}{"Proto": 132.0, "Port": 80.0}}}
	if _, err := ParseBindings(bad); err == nil || !strings.Contains(err.Error(), "tcp and udp") {
		t.Errorf("sctp binding: %v", err)
	}
}

func TestProgramRevokeAndLastNetworkRemovesChains(t *testing.T) {
	tables := newFakeTables()
	m := newTestManager(t, tables, nil)
	if err := m.AddNetwork(testNet); err != nil {
		t.Fatal(err)
	}
	if got := tables.count("EBPFNET-POSTROUTING"); got != 3 {
		t.Errorf("%d POSTROUTING rules, want hairpin, node and masquerade", got)
	}
	ip := netip.MustParseAddr("10.9.0.2")
	maps, err := m.Program("net1", "ep1", "lxc1", ip, netip.Addr{}, []Binding{
		{Proto: ProtoTCP, Port: 80, HostPort: 8080},
		{Proto: ProtoUDP, Port: 53, HostPort: 0},
		{Proto: ProtoTCP, Port: 81, HostPort: 9000, HostPortEnd: 9005},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(maps) != 3 || maps[1].HostPort != 40000 || maps[2].HostPort != 9000 {
		t.Fatalf("mappings %v", maps)
	}
	if got := tables.count("EBPFNET-DNAT"); got != 3 {
		t.Errorf("%d DNAT rules, want 3", got)
	}
	// The same port again, on any address, is refused; another protocol is fine.
	if _, err := m.Program("net1", "ep2", "lxc2", netip.MustParseAddr("10.9.0.3"), netip.Addr{}, []Binding{{Proto: ProtoTCP, Port: 80, HostIP: "127.0.0.1", HostPort: 8080}}); err == nil || !strings.Contains(err.Error(), "already allocated") {
		t.Errorf("taken port: %v", err)
	}
	if _, err := m.Program("net1", "ep3", "lxc3", netip.MustParseAddr("10.9.0.4"), netip.Addr{}, []Binding{{Proto: ProtoUDP, Port: 80, HostPort: 8080}}); err != nil {
		t.Errorf("udp 8080 beside tcp 8080: %v", err)
	}
	if err := m.Revoke("ep1"); err != nil {
		t.Fatal(err)
	}
	if err := m.Revoke("ep1"); err != nil {
		t.Fatalf("second revoke: %v", err)
	}
	if got := tables.count("EBPFNET-DNAT"); got != 1 {
		t.Errorf("%d DNAT rules after revoke, want ep3's", got)
	}
	if err := m.RemoveNetwork("net1"); err != nil {
		t.Fatal(err)
	}
	for k, rules := range tables.chains {
		if strings.Contains(k, "EBPFNET") {
			t.Errorf("chain %s left after the last network", k)
		}
		for _, r := range rules {
			if strings.Contains(r, "EBPFNET") {
				t.Errorf("jump left in %s: %s", k, r)
			}
		}
	}
}

func TestFailedAddNetworkLeavesNoRules(t *testing.T) {
	tables := newFakeTables()
	m := newTestManager(t, tables, nil)
	// The state cannot be written: its directory does not exist.
	m.cfg.StatePath = filepath.Join(t.TempDir(), "missing", "external.json")
	if err := m.AddNetwork(testNet); err == nil {
		t.Fatal("AddNetwork succeeded without persisting")
	}
	for k, rules := range tables.chains {
		if len(rules) > 0 {
			t.Errorf("%s keeps %v after a failed add", k, rules)
		}
	}
	for _, c := range m.nm.chains() {
		if ok, _ := tables.ChainExists(c.table, c.chain); ok {
			t.Errorf("chain %s stays after a failed first network", c.chain)
		}
	}
}

func TestBusyAndDockerPortsAreRefused(t *testing.T) {
	tables := newFakeTables()
	tables.chains["nat/DOCKER"] = []string{"! -i docker0 -p tcp -m tcp --dport 7000 -j DNAT --to-destination 172.17.0.2:80"}
	m := newTestManager(t, tables, map[uint16]bool{7001: true, 40000: true})
	if err := m.AddNetwork(testNet); err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr("10.9.0.2")
	if _, err := m.Program("net1", "ep1", "lxc1", ip, netip.Addr{}, []Binding{{Proto: ProtoTCP, Port: 80, HostPort: 7000}}); err == nil || !strings.Contains(err.Error(), "7000") {
		t.Errorf("Docker's port: %v", err)
	}
	if _, err := m.Program("net1", "ep1", "lxc1", ip, netip.Addr{}, []Binding{{Proto: ProtoTCP, Port: 80, HostPort: 7001}}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("bound port: %v", err)
	}
	maps, err := m.Program("net1", "ep1", "lxc1", ip, netip.Addr{}, []Binding{{Proto: ProtoTCP, Port: 80}})
	if err != nil || maps[0].HostPort != 40001 {
		t.Errorf("ephemeral port past a busy one: %v %v", maps, err)
	}
	if got := tables.count("EBPFNET-DNAT"); got != 1 {
		t.Errorf("%d DNAT rules, want only the granted one", got)
	}
}

func TestRestoreKeepsLiveEndpointsOnly(t *testing.T) {
	tables := newFakeTables()
	m := newTestManager(t, tables, nil)
	if err := m.AddNetwork(testNet); err != nil {
		t.Fatal(err)
	}
	for _, ep := range []string{"live", "gone"} {
		if _, err := m.Program("net1", ep, "lxc"+ep, netip.MustParseAddr("10.9.0.2"), netip.Addr{}, []Binding{{Proto: ProtoTCP, Port: 80}}); err != nil {
			t.Fatal(err)
		}
	}
	// A restart: a new manager from the same state, rules flushed and rebuilt.
	tables.chains["nat/EBPFNET-DNAT"] = append(tables.chains["nat/EBPFNET-DNAT"], "stale rule")
	m2, err := New(m.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := m2.Restore([]Network{testNet}, map[string]bool{"live": true}); err != nil {
		t.Fatal(err)
	}
	if got := m2.Mappings(); len(got) != 1 || len(got["live"]) != 1 {
		t.Errorf("mappings after restore: %v", got)
	}
	if got := tables.count("EBPFNET-DNAT"); got != 1 {
		t.Errorf("%d DNAT rules after restore, want the live endpoint's: %v", got, tables.chains["nat/EBPFNET-DNAT"])
	}
	// No network left: everything goes.
	if err := m2.Restore(nil, nil); err != nil {
		t.Fatal(err)
	}
	if ok, _ := tables.ChainExists("nat", "EBPFNET-DNAT"); ok {
		t.Error("chains kept with no network")
	}
}

func TestInternalNetworkDropsAndPublishesNothing(t *testing.T) {
	tables := newFakeTables()
	m := newTestManager(t, tables, nil)
	n := testNet
	n.Internal, n.Masquerade = true, false
	if err := m.AddNetwork(n); err != nil {
		t.Fatal(err)
	}
	if got := tables.count("EBPFNET-POSTROUTING"); got != 0 {
		t.Errorf("%d POSTROUTING rules for an internal network", got)
	}
	for _, r := range tables.chains["filter/EBPFNET-FORWARD"] {
		if !strings.HasSuffix(r, "-j DROP") {
			t.Errorf("internal network forward rule %q, want only drops", r)
		}
	}
	if _, err := m.Program(n.ID, "ep", "lxc", netip.MustParseAddr("10.9.0.2"), netip.Addr{}, []Binding{{Proto: ProtoTCP, Port: 80}}); err == nil {
		t.Error("published a port of an internal network")
	}
}

func TestTwoPrefixesLeaveEachOtherAlone(t *testing.T) {
	tables := newFakeTables()
	prod := newTestManager(t, tables, nil)
	cfg := prod.cfg
	cfg.StatePath = filepath.Join(t.TempDir(), "other.json")
	cfg.ChainPrefix = "EBPFNET-1a2b3c"
	other, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := prod.AddNetwork(testNet); err != nil {
		t.Fatal(err)
	}
	// The other daemon starts with no network: it removes only its own.
	if err := other.Restore(nil, nil); err != nil {
		t.Fatal(err)
	}
	if ok, _ := tables.ChainExists("nat", "EBPFNET-DNAT"); !ok || tables.count("EBPFNET-POSTROUTING") != 3 {
		t.Errorf("a second prefix's restore removed the first's chains: %v", tables.chains)
	}
	cfg.ChainPrefix = "EBPFNET-too-long-a-name"
	if _, err := New(cfg); err == nil {
		t.Error("a prefix too long for iptables chain names was accepted")
	}
}

// newTestManager6 is newTestManager with ip6tables (tables6) too, and the
// sysctls it writes.
func newTestManager6(t *testing.T, tables, tables6 *fakeTables) (*Manager, map[string]string) {
	t.Helper()
	sysctls := map[string]string{}
	m, err := New(Config{
		StatePath:      filepath.Join(t.TempDir(), "external.json"),
		Log:            logrus.New(),
		Tables:         tables,
		Tables6:        tables6,
		Sysctl:         func(k, v string) error { sysctls[k] = v; return nil },
		CanBind:        func(uint8, netip.Addr, uint16) error { return nil },
		EphemeralRange: func() (uint16, uint16) { return 40000, 40002 },
	})
	if err != nil {
		t.Fatal(err)
	}
	return m, sysctls
}

var testNet6 = Network{ID: "net6", Subnet: netip.MustParsePrefix("10.9.0.0/24"), Gateway: netip.MustParseAddr("10.9.0.1"),
	Subnet6: netip.MustParsePrefix("fd00:9::/64"), Gateway6: netip.MustParseAddr("fd00:9::1"), Masquerade: true}

// A dual-stack network's IPv6 rules are its IPv4 ones, in ip6tables; a
// port published without a host address is published on both families
// (Docker's "::" twin of it is the same port); the node forwards IPv6; the
// last network takes the chains of both families with it.
func TestIPv6RulesAndPorts(t *testing.T) {
	tables, tables6 := newFakeTables(), newFakeTables()
	m, sysctls := newTestManager6(t, tables, tables6)
	if err := m.AddNetwork(testNet6); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		tables *fakeTables
		subnet string
	}{{tables, "10.9.0.0/24"}, {tables6, "fd00:9::/64"}} {
		if got := c.tables.count("EBPFNET-POSTROUTING"); got != 3 {
			t.Errorf("%s: %d POSTROUTING rules, want hairpin, node and masquerade", c.subnet, got)
		}
		if got := c.tables.count("EBPFNET-FORWARD"); got != 2 {
			t.Errorf("%s: %d FORWARD rules", c.subnet, got)
		}
		if !strings.Contains(strings.Join(c.tables.chains["nat/EBPFNET-POSTROUTING"], "\n"), "-s "+c.subnet+" ! -o lxc+ -j MASQUERADE") {
			t.Errorf("%s: no masquerade: %v", c.subnet, c.tables.chains["nat/EBPFNET-POSTROUTING"])
		}
	}
	if len(tables6.chains["nat/PREROUTING"]) != 1 || len(tables6.chains["filter/FORWARD"]) != 1 {
		t.Errorf("jumps in ip6tables: %v", tables6.chains)
	}
	if sysctls["net/ipv6/conf/all/forwarding"] != "1" {
		t.Errorf("IPv6 forwarding not enabled: %v", sysctls)
	}
	ip, ip6 := netip.MustParseAddr("10.9.0.2"), netip.MustParseAddr("fd00:9::2")
	maps, err := m.Program("net6", "ep1", "lxc1", ip, ip6, []Binding{
		{Proto: ProtoTCP, Port: 80, HostPort: 8080},
		{Proto: ProtoTCP, Port: 80, HostIP: "::", HostPort: 8080},
		{Proto: ProtoUDP, Port: 53, HostIP: "127.0.0.1", HostPort: 5353},
		{Proto: ProtoUDP, Port: 53, HostIP: "2001:db8::5", HostPort: 5353},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"*:8080/tcp -> 10.9.0.2:80", "*:8080/tcp -> [fd00:9::2]:80", "127.0.0.1:5353/udp -> 10.9.0.2:53", "[2001:db8::5]:5353/udp -> [fd00:9::2]:53"}
	var got []string
	for _, mp := range maps {
		got = append(got, mp.String())
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("mappings %v, want %v", got, want)
	}
	dnat6 := strings.Join(tables6.chains["nat/EBPFNET-DNAT"], "\n")
	if !strings.Contains(dnat6, "-p tcp --dport 8080") || !strings.Contains(dnat6, "--to-destination [fd00:9::2]:80") ||
		!strings.Contains(dnat6, "-d 2001:db8::5 --dport 5353") || tables.count("EBPFNET-DNAT") != 2 {
		t.Errorf("DNAT rules: IPv4 %v, IPv6 %v", tables.chains["nat/EBPFNET-DNAT"], tables6.chains["nat/EBPFNET-DNAT"])
	}
	// Recovered from both families' chains.
	rec, err := Recover(Config{Tables: commentQuoting{tables}, Tables6: commentQuoting{tables6}, Log: logrus.New()})
	if err != nil {
		t.Fatal(err)
	}
	if r := rec.Mappings["ep1"]; len(r) != 4 || !containsAll(r, maps) {
		t.Errorf("recovered %+v, programmed %+v", r, maps)
	}
	// The same host port on IPv6 only is taken; on another family's
	// address it is free.
	if _, err := m.Program("net6", "ep2", "lxc2", netip.Addr{}, netip.MustParseAddr("fd00:9::3"), []Binding{{Proto: ProtoTCP, Port: 80, HostPort: 8080}}); err == nil {
		t.Error("a second IPv6 mapping of host port 8080 was accepted")
	}
	// An IPv6-only container: the 0.0.0.0 twin is the "::" binding.
	only6, err := m.Program("net6", "ep3", "lxc3", netip.Addr{}, netip.MustParseAddr("fd00:9::4"), []Binding{
		{Proto: ProtoTCP, Port: 80, HostIP: "0.0.0.0", HostPort: 9090}, {Proto: ProtoTCP, Port: 80, HostIP: "::", HostPort: 9090}})
	if err != nil || len(only6) != 1 || only6[0].String() != "*:9090/tcp -> [fd00:9::4]:80" {
		t.Errorf("IPv6-only container: %v, %v", only6, err)
	}
	if _, err := m.Program("net6", "ep4", "lxc4", netip.MustParseAddr("10.9.0.5"), netip.Addr{}, []Binding{{Proto: ProtoTCP, Port: 80, HostIP: "2001:db8::5", HostPort: 9091}}); err == nil {
		t.Error("a binding on an IPv6 host address for a container without IPv6 was accepted")
	}
	for _, ep := range []string{"ep1", "ep3"} {
		if err := m.Revoke(ep); err != nil {
			t.Fatal(err)
		}
	}
	if tables6.count("EBPFNET-DNAT") != 0 {
		t.Errorf("IPv6 DNAT rules left after revoking: %v", tables6.chains["nat/EBPFNET-DNAT"])
	}
	if err := m.RemoveNetwork("net6"); err != nil {
		t.Fatal(err)
	}
	for k, rules := range tables6.chains {
		if strings.Contains(k, "EBPFNET") || len(rules) != 0 {
			t.Errorf("ip6tables after the last network: %s %v", k, rules)
		}
	}
}

// commentQuoting lists rules as iptables prints them: every comment of
// ours quoted.
type commentQuoting struct{ *fakeTables }

func (q commentQuoting) List(table, chain string) ([]string, error) {
	lines, err := q.fakeTables.List(table, chain)
	re := regexp.MustCompile(`--comment (ebpfnet \S+ \S+)`)
	for i := range lines {
		lines[i] = re.ReplaceAllString(lines[i], `--comment "$1"`)
	}
	return lines, err
}
