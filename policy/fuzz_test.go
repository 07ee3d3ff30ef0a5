package policy

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/ebpfnet/ebpfnet/identity"
	"github.com/ebpfnet/ebpfnet/labels"
)

// Parse takes any bytes: it accepts valid rules or names the problem,
// never panics; what it accepts validates, survives a round trip through
// JSON (policy get prints it so), and compiles.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		designExample,
		`[]`,
		`[{"endpointSelector": {}, "ingress": [{}]}]`,
		`[{"endpointSelector": {"matchExpressions": [{"key": "container:id", "operator": "NotIn", "values": ["a"]}]},
		  "egress": [{"toCIDR": ["10.0.0.0/8"], "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}]}]},
		             {"toEntities": ["world", "host"]}],
		  "labels": [{"key": "name", "value": "x"}]}]`,
		`[{"endpointSelector": {"matchLabels": {"reserved:init": ""}}, "ingress": [{"fromEntities": ["all"]}]}]`,
		`[{"endpointSelector": {"matchLabels": {"id": "a"}}, "ingress": [{"fromCIDR": ["0.0.0.0/0"], "toPorts": [{"ports": [{"port": "0", "protocol": "ANY"}]}]}]}]`,
	} {
		f.Add([]byte(s))
	}
	ids := map[identity.ID]labels.Labels{
		256:                 labels.FromDocker(map[string]string{"id": "a"}),
		257:                 labels.FromDocker(map[string]string{"id": "b"}),
		identity.LocalScope: identity.CIDRLabels(mustPrefix("10.1.0.0/16")),
	}
	for _, id := range []identity.ID{identity.Host, identity.World, identity.Init} {
		ids[id], _ = identity.ReservedLabels(id)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rules, err := Parse(data)
		if err != nil {
			return
		}
		if err := Validate(rules); err != nil {
			t.Fatalf("Parse accepted what Validate refuses: %v", err)
		}
		out, err := json.Marshal(rules)
		if err != nil {
			t.Fatalf("accepted rules do not marshal: %v", err)
		}
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse refuses its own output %s: %v", out, err)
		}
		// Equal as printed: an empty matchLabels and none mean the same.
		if out2, _ := json.Marshal(again); !bytes.Equal(out, out2) {
			t.Fatalf("round trip changed the rules:\n%s\n%s\n%s", data, out, out2)
		}
		_ = CIDRs(rules)
		for id, ls := range ids {
			for _, mode := range []Mode{ModeDefault, ModeAlways} {
				p, err := Compile(rules, Endpoint{Identity: id, Labels: ls}, ids, mode)
				if err != nil {
					t.Fatalf("compile of accepted rules: %v", err)
				}
				if err := p.Validate(1 << 20); err != nil {
					t.Fatalf("compiled an invalid policy: %v", err)
				}
			}
		}
	})
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
