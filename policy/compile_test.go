package policy

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/ebpfnet/ebpfnet/identity"
	"github.com/ebpfnet/ebpfnet/labels"
)

const (
	app1  identity.ID = 256 // container:id=app1
	app2  identity.ID = 257 // container:id=app2, container:tier=web
	app3  identity.ID = 258 // container:id=app3, container:tier=db
	bare  identity.ID = 259 // no labels
	net8  identity.ID = identity.LocalScope
	net16 identity.ID = identity.LocalScope + 1
	net24 identity.ID = identity.LocalScope + 2
)

func fixture() map[identity.ID]labels.Labels {
	ids := map[identity.ID]labels.Labels{
		app1: labels.FromDocker(map[string]string{"id": "app1"}),
		app2: labels.FromDocker(map[string]string{"id": "app2", "tier": "web"}),
		app3: labels.FromDocker(map[string]string{"id": "app3", "tier": "db"}),
		bare: labels.FromDocker(nil),

		net8:  identity.CIDRLabels(netip.MustParsePrefix("10.0.0.0/8")),
		net16: identity.CIDRLabels(netip.MustParsePrefix("10.1.0.0/16")),
		net24: identity.CIDRLabels(netip.MustParsePrefix("192.168.1.0/24")),
	}
	for _, id := range []identity.ID{identity.Host, identity.World, identity.Init} {
		ids[id], _ = identity.ReservedLabels(id)
	}
	return ids
}

func compile(t *testing.T, policy string, ep identity.ID, mode Mode) EndpointPolicy {
	t.Helper()
	rules, err := Parse([]byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	ids := fixture()
	p, err := Compile(rules, Endpoint{Identity: ep, Labels: ids[ep]}, ids, mode)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func in(id identity.ID, port uint16, proto uint8) Key {
	return Key{Identity: uint32(id), Port: port, Proto: proto, Direction: Ingress}
}

func out(id identity.ID, port uint16, proto uint8) Key {
	return Key{Identity: uint32(id), Port: port, Proto: proto, Direction: Egress}
}

// expect asserts the enforcement flags and the exact entry set.
func expect(t *testing.T, p EndpointPolicy, ingress, egress bool, want ...Key) {
	t.Helper()
	if p.IngressEnforced != ingress || p.EgressEnforced != egress {
		t.Errorf("enforced ingress=%v egress=%v, want %v %v", p.IngressEnforced, p.EgressEnforced, ingress, egress)
	}
	SortKeys(want)
	got := p.SortedEntries()
	if len(want) == 0 {
		want = []Key{}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("entries:\n got  %v\n want %v", got, want)
	}
}

func TestCompileDesignExample(t *testing.T) {
	expect(t, compile(t, designExample, app1, ModeDefault), true, false, in(app2, 80, ProtoTCP))
	// app2 is selected by nothing: it allows all, with no entries.
	expect(t, compile(t, designExample, app2, ModeDefault), false, false)
}

func fromEndpoints(sel string) string {
	return `[{"endpointSelector": {"matchLabels": {"id": "app1"}}, "ingress": [{"fromEndpoints": [` + sel + `]}]}]`
}

func TestMatchLabelsSources(t *testing.T) {
	for sel, want := range map[string][]Key{
		`{"matchLabels": {"id": "app2"}}`:                {in(app2, 0, 0)},
		`{"matchLabels": {"container:id": "app2"}}`:      {in(app2, 0, 0)},
		`{"matchLabels": {"any:id": "app2"}}`:            {in(app2, 0, 0)},
		`{"matchLabels": {"reserved:id": "app2"}}`:       nil,
		`{"matchLabels": {"tier": "web", "id": "app3"}}`: nil,
		`{"matchLabels": {"tier": "db", "id": "app3"}}`:  {in(app3, 0, 0)},
		`{"matchLabels": {"reserved:host": ""}}`:         {in(identity.Host, 0, 0)},
		`{"matchLabels": {"reserved:world": ""}}`:        {in(identity.World, 0, 0), in(net8, 0, 0), in(net16, 0, 0), in(net24, 0, 0)},
		`{"matchLabels": {"cidr:10.1.0.0/16": ""}}`:      {in(net16, 0, 0)},
		`{}`: {in(app1, 0, 0), in(app2, 0, 0), in(app3, 0, 0), in(bare, 0, 0)},
		`{"matchLabels": {"id": "app2"}}, {"matchLabels": {"id": "app3"}}`: {in(app2, 0, 0), in(app3, 0, 0)},
	} {
		t.Run(sel, func(t *testing.T) {
			expect(t, compile(t, fromEndpoints(sel), app1, ModeDefault), true, false, want...)
		})
	}
}

func TestMatchExpressions(t *testing.T) {
	for sel, want := range map[string][]Key{
		`{"key": "tier", "operator": "In", "values": ["web", "db"]}`: {in(app2, 0, 0), in(app3, 0, 0)},
		// NotIn holds where the key is absent, as in Kubernetes.
		`{"key": "container:tier", "operator": "NotIn", "values": ["web"]}`: {in(app1, 0, 0), in(app3, 0, 0), in(bare, 0, 0)},
		`{"key": "tier", "operator": "Exists"}`:                             {in(app2, 0, 0), in(app3, 0, 0)},
		`{"key": "tier", "operator": "DoesNotExist"}`:                       {in(app1, 0, 0), in(bare, 0, 0)},
		`{"key": "reserved:init", "operator": "Exists"}`:                    {in(identity.Init, 0, 0)},
	} {
		t.Run(sel, func(t *testing.T) {
			p := compile(t, fromEndpoints(`{"matchExpressions": [`+sel+`]}`), app1, ModeDefault)
			expect(t, p, true, false, want...)
		})
	}
	// matchLabels and matchExpressions must both hold.
	p := compile(t, fromEndpoints(`{"matchLabels": {"tier": "web"}, "matchExpressions": [{"key": "id", "operator": "In", "values": ["app3"]}]}`), app1, ModeDefault)
	expect(t, p, true, false)
}

func TestEndpointSelector(t *testing.T) {
	rule := `[{"endpointSelector": {}, "egress": [{"toEndpoints": [{"matchLabels": {"id": "app1"}}]}]}]`
	for _, ep := range []identity.ID{app1, app2, bare} {
		expect(t, compile(t, rule, ep, ModeDefault), false, true, out(app1, 0, 0))
	}
	// {} selects endpoints, not an endpoint whose labels are not known yet.
	expect(t, compile(t, rule, identity.Init, ModeDefault), false, false)
	initRule := `[{"endpointSelector": {"matchLabels": {"reserved:init": ""}}, "egress": [{"toEntities": ["host"]}]}]`
	expect(t, compile(t, initRule, identity.Init, ModeDefault), false, true, out(identity.Host, 0, 0))
	expect(t, compile(t, initRule, app1, ModeDefault), false, false)
	// NotIn over an absent key selects the endpoint.
	notIn := `[{"endpointSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["web"]}]}, "ingress": [{}]}]`
	expect(t, compile(t, notIn, app1, ModeDefault), true, false)
	expect(t, compile(t, notIn, app2, ModeDefault), false, false)
}

func TestEntities(t *testing.T) {
	for entity, want := range map[string][]Key{
		"host":    {out(identity.Host, 0, 0)},
		"world":   {out(identity.World, 0, 0), out(net8, 0, 0), out(net16, 0, 0), out(net24, 0, 0)},
		"all":     {out(0, 0, 0)},
		"init":    {out(identity.Init, 0, 0)},
		"cluster": {out(identity.Host, 0, 0), out(identity.Init, 0, 0), out(app1, 0, 0), out(app2, 0, 0), out(app3, 0, 0), out(bare, 0, 0)},
	} {
		t.Run(entity, func(t *testing.T) {
			rule := `[{"endpointSelector": {}, "egress": [{"toEntities": ["` + entity + `"], "toPorts": [{"ports": [{"port": "0", "protocol": "ANY"}]}]}]}]`
			p := compile(t, rule, app1, ModeDefault)
			var withPorts []Key
			for _, k := range want {
				k.Proto = ProtoTCP
				withPorts = append(withPorts, k)
				k.Proto = ProtoUDP
				withPorts = append(withPorts, k)
			}
			expect(t, p, false, true, withPorts...)
		})
	}
	rule := `[{"endpointSelector": {}, "ingress": [{"fromEntities": ["host", "world"]}]}]`
	expect(t, compile(t, rule, app2, ModeDefault), true, false,
		in(identity.Host, 0, 0), in(identity.World, 0, 0), in(net8, 0, 0), in(net16, 0, 0), in(net24, 0, 0))
}

func TestCIDR(t *testing.T) {
	for cidr, want := range map[string][]Key{
		"10.0.0.0/8":     {out(net8, 0, 0), out(net16, 0, 0)},
		"10.1.0.0/16":    {out(net16, 0, 0)},
		"10.1.2.0/24":    nil, // narrower than every identity: the ipcache maps it to 10.1.0.0/16
		"10.1.2.3":       nil,
		"192.168.0.0/16": {out(net24, 0, 0)},
		"0.0.0.0/0":      {out(identity.World, 0, 0), out(net8, 0, 0), out(net16, 0, 0), out(net24, 0, 0)},
		"::/0":           {out(identity.World, 0, 0)},
	} {
		t.Run(cidr, func(t *testing.T) {
			rule := `[{"endpointSelector": {}, "egress": [{"toCIDR": ["` + cidr + `"]}]}]`
			expect(t, compile(t, rule, app1, ModeDefault), false, true, want...)
		})
	}
}

func TestCIDRs(t *testing.T) {
	rules, err := Parse([]byte(`[{"endpointSelector": {}, "ingress": [{"fromCIDR": ["10.1.2.3/8", "192.0.2.1", "0.0.0.0/0"]}],
		"egress": [{"toCIDR": ["10.0.0.0/8", "2001:db8::/32"]}]}]`))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range CIDRs(rules) {
		got = append(got, p.String())
	}
	want := []string{"10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("CIDRs = %v, want %v", got, want)
	}
}

func TestPorts(t *testing.T) {
	rule := `[{"endpointSelector": {}, "ingress": [
		{"fromEndpoints": [{"matchLabels": {"id": "app2"}}],
		 "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}, {"port": "53", "protocol": "UDP"}]},
		             {"ports": [{"port": "443", "protocol": "ANY"}, {"port": "8080"}]}]},
		{"toPorts": [{"ports": [{"port": "22", "protocol": "TCP"}]}]},
		{"fromEndpoints": [{"matchLabels": {"id": "app3"}}]}]}]`
	expect(t, compile(t, rule, app1, ModeDefault), true, false,
		in(app2, 80, ProtoTCP), in(app2, 53, ProtoUDP),
		in(app2, 443, ProtoTCP), in(app2, 443, ProtoUDP), in(app2, 8080, ProtoTCP), in(app2, 8080, ProtoUDP),
		in(0, 22, ProtoTCP),
		in(app3, 0, ProtoAny))
}

func TestDirectionsAndModes(t *testing.T) {
	ingressOnly := `[{"endpointSelector": {"matchLabels": {"id": "app1"}}, "ingress": [{"fromEntities": ["host"]}]}]`
	expect(t, compile(t, ingressOnly, app1, ModeDefault), true, false, in(identity.Host, 0, 0))
	expect(t, compile(t, ingressOnly, app1, ModeAlways), true, true, in(identity.Host, 0, 0))
	expect(t, compile(t, ingressOnly, app2, ModeAlways), true, true)
	expect(t, compile(t, ingressOnly, app1, ModeNever), false, false)
	expect(t, compile(t, ingressOnly, app1, ""), true, false, in(identity.Host, 0, 0))

	denyAll := `[{"endpointSelector": {}, "ingress": [{}], "egress": [{}]}]`
	expect(t, compile(t, denyAll, app1, ModeDefault), true, true)
	// An empty section is no section, as in Cilium.
	emptySection := `[{"endpointSelector": {}, "ingress": []}]`
	expect(t, compile(t, emptySection, app1, ModeDefault), false, false)

	if _, err := Compile(nil, Endpoint{}, nil, "strict"); err == nil || !strings.Contains(err.Error(), `"strict"`) {
		t.Fatalf("bad mode: err = %v", err)
	}
}

func TestUnionOfRules(t *testing.T) {
	rules := `[
	 {"endpointSelector": {"matchLabels": {"id": "app1"}}, "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "app2"}}], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]},
	 {"endpointSelector": {"matchLabels": {"container:id": "app1"}}, "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "app2"}}], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]},
	                                                               {"fromEndpoints": [{"matchLabels": {"id": "app3"}}]}]},
	 {"endpointSelector": {}, "egress": [{"toEntities": ["world"], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}]},
	 {"endpointSelector": {"matchLabels": {"id": "app2"}}, "ingress": [{"fromEntities": ["all"]}], "egress": [{"toEntities": ["all"]}]}]`
	expect(t, compile(t, rules, app1, ModeDefault), true, true,
		in(app2, 80, ProtoTCP), in(app3, 0, 0),
		out(identity.World, 443, ProtoTCP), out(net8, 443, ProtoTCP), out(net16, 443, ProtoTCP), out(net24, 443, ProtoTCP))
	expect(t, compile(t, rules, app2, ModeDefault), true, true,
		in(0, 0, 0), out(0, 0, 0),
		out(identity.World, 443, ProtoTCP), out(net8, 443, ProtoTCP), out(net16, 443, ProtoTCP), out(net24, 443, ProtoTCP))
}

func TestCompileAddsTheEndpointItself(t *testing.T) {
	rules, _ := Parse([]byte(`[{"endpointSelector": {}, "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "new"}}]}]}]`))
	ep := Endpoint{Identity: 300, Labels: labels.FromDocker(map[string]string{"id": "new"})}
	p, err := Compile(rules, ep, fixture(), ModeDefault)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, p, true, false, in(300, 0, 0))
}

func TestDiff(t *testing.T) {
	set := func(keys ...Key) map[Key]struct{} {
		m := map[Key]struct{}{}
		for _, k := range keys {
			m[k] = struct{}{}
		}
		return m
	}
	old := set(in(app2, 80, ProtoTCP), in(app3, 0, 0), out(0, 0, 0))
	next := set(in(app2, 80, ProtoTCP), in(app2, 443, ProtoTCP), out(identity.World, 0, 0), out(identity.Host, 0, 0))
	add, remove := Diff(old, next)
	wantAdd := []Key{in(app2, 443, ProtoTCP), out(identity.Host, 0, 0), out(identity.World, 0, 0)}
	wantRemove := []Key{in(app3, 0, 0), out(0, 0, 0)}
	if !reflect.DeepEqual(add, wantAdd) || !reflect.DeepEqual(remove, wantRemove) {
		t.Fatalf("Diff = %v, %v; want %v, %v", add, remove, wantAdd, wantRemove)
	}
	if add, remove := Diff(next, next); len(add)+len(remove) != 0 {
		t.Fatalf("Diff of equal sets = %v, %v", add, remove)
	}
	if add, remove := Diff(nil, old); len(add) != 3 || len(remove) != 0 {
		t.Fatalf("Diff from nothing = %v, %v", add, remove)
	}
}

// IPv6 prefixes select the CIDR identities of IPv6 prefixes within them,
// never those of IPv4 ones, and the other way round.
func TestCIDRIPv6(t *testing.T) {
	ids := fixture()
	ula, doc := identity.LocalScope+10, identity.LocalScope+11
	ids[ula] = identity.CIDRLabels(netip.MustParsePrefix("fd00:80::/64"))
	ids[doc] = identity.CIDRLabels(netip.MustParsePrefix("2001:db8::/32"))
	for cidr, want := range map[string][]Key{
		"fd00::/8":          {out(ula, 0, 0)},
		"fd00:80::/64":      {out(ula, 0, 0)},
		"fd00:80::5":        nil,
		"::/0":              {out(identity.World, 0, 0), out(ula, 0, 0), out(doc, 0, 0)},
		"0.0.0.0/0":         {out(identity.World, 0, 0), out(net8, 0, 0), out(net16, 0, 0), out(net24, 0, 0)},
		"::ffff:0.0.0.0/96": nil,
	} {
		t.Run(cidr, func(t *testing.T) {
			rules, err := Parse([]byte(`[{"endpointSelector": {}, "egress": [{"toCIDR": ["` + cidr + `"]}]}]`))
			if err != nil {
				t.Fatal(err)
			}
			p, err := Compile(rules, Endpoint{Identity: app1, Labels: ids[app1]}, ids, ModeDefault)
			if err != nil {
				t.Fatal(err)
			}
			expect(t, p, false, true, want...)
		})
	}
}
