package policy

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// designExample is the README's policy example (Cilium's format), verbatim.
const designExample = `[{"endpointSelector": {"matchLabels": {"id": "app1"}},
  "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "app2"}}],
               "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}],
  "labels": [{"key": "name", "value": "l3-rule"}]}]`

func TestParseDesignExample(t *testing.T) {
	rules, err := Parse([]byte(designExample))
	if err != nil {
		t.Fatal(err)
	}
	want := []Rule{{
		EndpointSelector: Selector{MatchLabels: map[string]string{"id": "app1"}},
		Ingress: []IngressRule{{
			FromEndpoints: []Selector{{MatchLabels: map[string]string{"id": "app2"}}},
			ToPorts:       []PortRule{{Ports: []PortProtocol{{Port: "80", Protocol: "TCP"}}}},
		}},
		Labels: []RuleLabel{{Key: "name", Value: "l3-rule"}},
	}}
	if !reflect.DeepEqual(rules, want) {
		t.Fatalf("got %+v\nwant %+v", rules, want)
	}
}

func TestParseRoundTrip(t *testing.T) {
	in := `[{"endpointSelector": {},
	  "ingress": [{}, {"fromEntities": ["host", "world", "all", "cluster", "init"]},
	              {"fromCIDR": ["10.0.0.0/8", "192.0.2.1"], "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}, {"port": "0"}, {}]}]}],
	  "egress": [{"toEndpoints": [{"matchExpressions": [{"key": "container:tier", "operator": "In", "values": ["web"]},
	                                                     {"key": "x", "operator": "DoesNotExist"}]}]},
	             {"toCIDR": ["0.0.0.0/0"]}, {"toEntities": ["world"]}],
	  "labels": [{"key": "a", "source": "user"}], "description": "everything"}]`
	rules, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(rules)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Parse(data)
	if err != nil {
		t.Fatalf("reparse of %s: %v", data, err)
	}
	if !reflect.DeepEqual(rules, again) {
		t.Fatalf("round trip changed rules:\n%+v\n%+v", rules, again)
	}
	if empty, err := Parse([]byte(" [] ")); err != nil || len(empty) != 0 {
		t.Fatalf("empty array: %v %v", empty, err)
	}
}

func TestParseRejects(t *testing.T) {
	sel := `"endpointSelector": {}`
	for _, tc := range []struct{ name, in, want string }{
		{"empty input", "  ", "policy is empty"},
		{"syntax", "[{\n]", "line 2, column 1"},
		{"single object", `{` + sel + `}`, "policy must be a JSON array of rules"},
		{"rule not object", `[1]`, "rule[0]: must be an object, got a number"},
		{"no selector", `[{"ingress": [{}]}]`, "rule[0]: endpointSelector is required"},
		{"null selector", `[{"endpointSelector": null}]`, "rule[0]: endpointSelector is required"},
		{"unknown rule field", `[{` + sel + `, "ingressDeny": []}]`, `rule[0]: field "ingressDeny" is not supported (supported: endpointSelector, ingress, egress, labels, description)`},
		{"nodeSelector", `[{"nodeSelector": {}}]`, `field "nodeSelector" is not supported`},
		{"toFQDNs", `[{` + sel + `}, {` + sel + `, "egress": [{"toFQDNs": [{"matchName": "x"}]}]}]`, `rule[1]: egress[0]: field "toFQDNs" is not supported (supported: toEndpoints, toEntities, toCIDR, toPorts)`},
		{"toServices", `[{` + sel + `, "egress": [{"toServices": []}]}]`, `field "toServices" is not supported`},
		{"icmps", `[{` + sel + `, "ingress": [{"icmps": []}]}]`, `rule[0]: ingress[0]: field "icmps" is not supported`},
		{"fromCIDRSet", `[{` + sel + `, "ingress": [{"fromCIDRSet": []}]}]`, `field "fromCIDRSet" is not supported`},
		{"L7 rules", `[{` + sel + `, "ingress": [{"toPorts": [{"ports": [{"port": "80"}], "rules": {}}]}]}]`, `rule[0]: ingress[0].toPorts[0]: field "rules" is not supported (supported: ports)`},
		{"endPort", `[{` + sel + `, "ingress": [{"toPorts": [{"ports": [{"port": "80", "endPort": 90}]}]}]}]`, `ingress[0].toPorts[0].ports[0]: field "endPort" is not supported`},
		{"SCTP", `[{` + sel + `}, {` + sel + `, "ingress": [{"toPorts": [{"ports": [{"port": "80"}, {"port": "81", "protocol": "SCTP"}]}]}]}]`,
			`rule[1]: ingress[0].toPorts[0].ports[1]: protocol "SCTP" is not supported (TCP, UDP, ANY)`},
		{"lowercase protocol", `[{` + sel + `, "egress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "tcp"}]}]}]}]`, `protocol "tcp" is not supported`},
		{"port too big", `[{` + sel + `, "ingress": [{"toPorts": [{"ports": [{"port": "65536"}]}]}]}]`, `ingress[0].toPorts[0].ports[0]: port "65536" is out of range 0..65535`},
		{"named port", `[{` + sel + `, "ingress": [{"toPorts": [{"ports": [{"port": "http"}]}]}]}]`, `named port "http" is not supported`},
		{"port range", `[{` + sel + `, "ingress": [{"toPorts": [{"ports": [{"port": "80-90"}]}]}]}]`, `port range "80-90" is not supported`},
		{"negative port", `[{` + sel + `, "ingress": [{"toPorts": [{"ports": [{"port": "-1"}]}]}]}]`, `port range "-1" is not supported`},
		{"numeric port", `[{` + sel + `, "ingress": [{"toPorts": [{"ports": [{"port": 80}]}]}]}]`, `port must be a string such as "80"`},
		{"empty ports", `[{` + sel + `, "ingress": [{"toPorts": [{"ports": []}]}]}]`, `ingress[0].toPorts[0]: ports is empty`},
		{"bad CIDR", `[{` + sel + `, "ingress": [{"fromCIDR": ["10.0.0.0/8", "10.0.0.0/33"]}]}]`, `rule[0]: ingress[0].fromCIDR[1]: "10.0.0.0/33" is not a CIDR prefix`},
		{"not a CIDR", `[{` + sel + `, "egress": [{"toCIDR": ["example.com"]}]}]`, `egress[0].toCIDR[0]: "example.com" is not a CIDR prefix`},
		{"bad entity", `[{` + sel + `, "egress": [{"toEntities": ["kube-apiserver"]}]}]`, `egress[0].toEntities[0]: entity "kube-apiserver" is not supported (host, world, all, cluster, init)`},
		{"combined peers", `[{` + sel + `, "ingress": [{"fromEndpoints": [{}], "fromCIDR": ["10.0.0.0/8"]}]}]`, `ingress[0]: fromEndpoints and fromCIDR cannot be combined in one item`},
		{"bad operator", `[{"endpointSelector": {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}}]`, `rule[0]: endpointSelector.matchExpressions[0]: operator "Gt" is not supported (In, NotIn, Exists, DoesNotExist)`},
		{"In without values", `[{` + sel + `, "ingress": [{"fromEndpoints": [{"matchExpressions": [{"key": "a", "operator": "In"}]}]}]}]`, `ingress[0].fromEndpoints[0].matchExpressions[0]: operator In needs at least one value`},
		{"NotIn without values", `[{"endpointSelector": {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]}}]`, `operator NotIn needs at least one value`},
		{"Exists with values", `[{"endpointSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}]`, `operator Exists takes no values`},
		{"missing operator", `[{"endpointSelector": {"matchExpressions": [{"key": "a"}]}}]`, `operator is required`},
		{"empty expression key", `[{"endpointSelector": {"matchExpressions": [{"operator": "Exists"}]}}]`, `matchExpressions[0]: label key is empty`},
		{"source without key", `[{"endpointSelector": {"matchLabels": {"container:": "x"}}}]`, `endpointSelector.matchLabels: label key "container:" has a source but no key`},
		{"non-string label value", `[{"endpointSelector": {"matchLabels": {"id": 1}}}]`, `endpointSelector.matchLabels["id"]: must be a string, got a number`},
		{"unknown selector field", `[{"endpointSelector": {"matchLabel": {}}}]`, `endpointSelector: field "matchLabel" is not supported (supported: matchLabels, matchExpressions)`},
		{"label without key", `[{` + sel + `, "labels": [{"value": "x"}]}]`, `rule[0]: labels[0]: key is required`},
		{"ingress not array", `[{` + sel + `, "ingress": {}}]`, `rule[0]: ingress: must be an array, got an object`},
	} {
		_, err := Parse([]byte(tc.in))
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q does not contain %q", tc.name, err, tc.want)
		}
	}
}

func TestValidate(t *testing.T) {
	if err := Validate(nil); err != nil {
		t.Fatal(err)
	}
	bad := []Rule{{Ingress: []IngressRule{{ToPorts: []PortRule{{Ports: []PortProtocol{{Port: "x"}}}}}}}}
	if err := Validate(bad); err == nil || !strings.Contains(err.Error(), `rule[0]: ingress[0].toPorts[0].ports[0]: named port "x"`) {
		t.Fatalf("err = %v", err)
	}
}
