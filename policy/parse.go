package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/ebpfnet/ebpfnet/labels"
)

// Parse reads a policy file: a JSON array of rules, as `cilium policy
// import` takes (a single object is refused, not guessed at). It is strict:
// a file with any error is refused whole, because importing part of a
// policy would enforce something nobody wrote. The error names the rule by
// its index in the array (from 0) and the JSON path inside it, e.g.
//
//	rule[2]: ingress[0].toPorts[0].ports[1]: protocol "SCTP" is not supported (TCP, UDP, ANY)
//
// Fields outside the supported subset (toFQDNs, toServices, icmps, deny
// rules, L7 rules, endPort, ...) are refused by name rather than ignored,
// since ignoring an allow would silently deny and ignoring a deny would
// silently allow.
func Parse(data []byte) ([]Rule, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, errors.New("policy is empty: expected a JSON array of rules")
	}
	var probe any
	if err := json.Unmarshal(data, &probe); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			line, col := position(data, syn.Offset)
			return nil, fmt.Errorf("policy is not valid JSON: line %d, column %d: %w", line, col, err)
		}
		return nil, fmt.Errorf("policy is not valid JSON: %w", err)
	}
	if trimmed[0] != '[' {
		return nil, fmt.Errorf("policy must be a JSON array of rules ([{...}, ...]), as cilium policy import takes; got %s", kind(trimmed))
	}
	var raws []json.RawMessage
	if err := json.Unmarshal(trimmed, &raws); err != nil {
		return nil, fmt.Errorf("decode policy: %w", err)
	}
	rules := make([]Rule, 0, len(raws))
	for i, raw := range raws {
		r, err := parseRule(raw)
		if err != nil {
			return nil, fmt.Errorf("rule[%d]: %w", i, err)
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// Validate applies Parse's checks to rules built in code, so that rules
// reach the repository only in a shape Parse would have produced.
func Validate(rules []Rule) error {
	data, err := json.Marshal(rules)
	if err != nil {
		return fmt.Errorf("encode rules: %w", err)
	}
	if rules == nil {
		data = []byte("[]")
	}
	_, err = Parse(data)
	return err
}

// position turns a SyntaxError offset into the 1-based line and column of
// the offending byte; the offset counts the bytes read, that one included.
func position(data []byte, offset int64) (line, col int) {
	if offset > 0 {
		offset--
	}
	if offset > int64(len(data)) {
		offset = int64(len(data))
	}
	before := data[:offset]
	line = bytes.Count(before, []byte("\n")) + 1
	col = int(offset) - bytes.LastIndexByte(before, '\n')
	return line, col
}

// kind names the JSON type of a valid value, for error messages.
func kind(raw []byte) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

func errAt(path, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if path == "" {
		return errors.New(msg)
	}
	return fmt.Errorf("%s: %s", path, msg)
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func isNull(raw json.RawMessage) bool {
	return bytes.Equal(bytes.TrimSpace(raw), []byte("null"))
}

// object decodes a JSON object and refuses any field outside allowed.
func object(raw json.RawMessage, path string, allowed ...string) (map[string]json.RawMessage, error) {
	if kind(raw) != "an object" {
		return nil, errAt(path, "must be an object, got %s", kind(raw))
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, errAt(path, "%v", err)
	}
	var unknown []string
	for k := range m {
		if !contains(allowed, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, errAt(path, "field %q is not supported (supported: %s)", unknown[0], strings.Join(allowed, ", "))
	}
	return m, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// array decodes a JSON array; null or absence is an empty array.
func array(raw json.RawMessage, path string) ([]json.RawMessage, error) {
	if raw == nil || isNull(raw) {
		return nil, nil
	}
	if kind(raw) != "an array" {
		return nil, errAt(path, "must be an array, got %s", kind(raw))
	}
	var out []json.RawMessage
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, errAt(path, "%v", err)
	}
	return out, nil
}

func str(raw json.RawMessage, path string) (string, error) {
	if kind(raw) != "a string" {
		return "", errAt(path, "must be a string, got %s", kind(raw))
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", errAt(path, "%v", err)
	}
	return s, nil
}

func stringList(raw json.RawMessage, path string) ([]string, error) {
	items, err := array(raw, path)
	if err != nil {
		return nil, err
	}
	var out []string
	for i, item := range items {
		s, err := str(item, fmt.Sprintf("%s[%d]", path, i))
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func parseRule(raw json.RawMessage) (Rule, error) {
	var r Rule
	m, err := object(raw, "", "endpointSelector", "ingress", "egress", "labels", "description")
	if err != nil {
		return r, err
	}
	sel, ok := m["endpointSelector"]
	if !ok || isNull(sel) {
		return r, errors.New("endpointSelector is required (use {} to select every endpoint)")
	}
	if r.EndpointSelector, err = parseSelector(sel, "endpointSelector"); err != nil {
		return r, err
	}
	items, err := array(m["ingress"], "ingress")
	if err != nil {
		return r, err
	}
	for i, item := range items {
		p, err := parsePeerRule(item, fmt.Sprintf("ingress[%d]", i), "fromEndpoints", "fromEntities", "fromCIDR")
		if err != nil {
			return r, err
		}
		r.Ingress = append(r.Ingress, IngressRule{FromEndpoints: p.endpoints, FromEntities: p.entities, FromCIDR: p.cidrs, ToPorts: p.ports})
	}
	if items, err = array(m["egress"], "egress"); err != nil {
		return r, err
	}
	for i, item := range items {
		p, err := parsePeerRule(item, fmt.Sprintf("egress[%d]", i), "toEndpoints", "toEntities", "toCIDR")
		if err != nil {
			return r, err
		}
		r.Egress = append(r.Egress, EgressRule{ToEndpoints: p.endpoints, ToEntities: p.entities, ToCIDR: p.cidrs, ToPorts: p.ports})
	}
	if items, err = array(m["labels"], "labels"); err != nil {
		return r, err
	}
	for i, item := range items {
		path := fmt.Sprintf("labels[%d]", i)
		lm, err := object(item, path, "key", "value", "source")
		if err != nil {
			return r, err
		}
		var l RuleLabel
		for name, dst := range map[string]*string{"key": &l.Key, "value": &l.Value, "source": &l.Source} {
			if v, ok := lm[name]; ok {
				if *dst, err = str(v, join(path, name)); err != nil {
					return r, err
				}
			}
		}
		if l.Key == "" {
			return r, errAt(path, "key is required")
		}
		r.Labels = append(r.Labels, l)
	}
	if d, ok := m["description"]; ok {
		if r.Description, err = str(d, "description"); err != nil {
			return r, err
		}
	}
	return r, nil
}

func parseSelector(raw json.RawMessage, path string) (Selector, error) {
	var s Selector
	m, err := object(raw, path, "matchLabels", "matchExpressions")
	if err != nil {
		return s, err
	}
	if ml, ok := m["matchLabels"]; ok && !isNull(ml) {
		lp := join(path, "matchLabels")
		if kind(ml) != "an object" {
			return s, errAt(lp, "must be an object, got %s", kind(ml))
		}
		// Not object(): label keys are free-form, there is no allowed list.
		var lm map[string]json.RawMessage
		if err := json.Unmarshal(ml, &lm); err != nil {
			return s, errAt(lp, "%v", err)
		}
		keys := make([]string, 0, len(lm))
		for k := range lm {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		s.MatchLabels = make(map[string]string, len(lm))
		for _, k := range keys {
			if err := checkSelectorKey(k); err != nil {
				return s, errAt(lp, "%v", err)
			}
			v, err := str(lm[k], fmt.Sprintf("%s[%q]", lp, k))
			if err != nil {
				return s, err
			}
			s.MatchLabels[k] = v
		}
	}
	exprs, err := array(m["matchExpressions"], join(path, "matchExpressions"))
	if err != nil {
		return s, err
	}
	for i, e := range exprs {
		ep := fmt.Sprintf("%s[%d]", join(path, "matchExpressions"), i)
		em, err := object(e, ep, "key", "operator", "values")
		if err != nil {
			return s, err
		}
		var req Requirement
		if v, ok := em["key"]; ok {
			if req.Key, err = str(v, join(ep, "key")); err != nil {
				return s, err
			}
		}
		if err := checkSelectorKey(req.Key); err != nil {
			return s, errAt(ep, "%v", err)
		}
		op, ok := em["operator"]
		if !ok {
			return s, errAt(ep, "operator is required (In, NotIn, Exists, DoesNotExist)")
		}
		opStr, err := str(op, join(ep, "operator"))
		if err != nil {
			return s, err
		}
		req.Operator = Operator(opStr)
		if req.Values, err = stringList(em["values"], join(ep, "values")); err != nil {
			return s, err
		}
		switch req.Operator {
		case OpIn, OpNotIn:
			if len(req.Values) == 0 {
				return s, errAt(ep, "operator %s needs at least one value", req.Operator)
			}
		case OpExists, OpDoesNotExist:
			if len(req.Values) != 0 {
				return s, errAt(ep, "operator %s takes no values", req.Operator)
			}
		default:
			return s, errAt(ep, "operator %q is not supported (In, NotIn, Exists, DoesNotExist)", opStr)
		}
		s.MatchExpressions = append(s.MatchExpressions, req)
	}
	return s, nil
}

func checkSelectorKey(k string) error {
	if k == "" {
		return errors.New("label key is empty")
	}
	if _, key := labels.ParseSelectorKey(k); key == "" {
		return fmt.Errorf("label key %q has a source but no key", k)
	}
	return nil
}

// parsePeerRule reads one ingress or egress item; the names of its three
// peer fields differ by direction.
func parsePeerRule(raw json.RawMessage, path, endpoints, entities, cidr string) (peerRule, error) {
	var p peerRule
	m, err := object(raw, path, endpoints, entities, cidr, "toPorts")
	if err != nil {
		return p, err
	}
	sels, err := array(m[endpoints], join(path, endpoints))
	if err != nil {
		return p, err
	}
	for i, raw := range sels {
		s, err := parseSelector(raw, fmt.Sprintf("%s[%d]", join(path, endpoints), i))
		if err != nil {
			return p, err
		}
		p.endpoints = append(p.endpoints, s)
	}
	if p.entities, err = stringList(m[entities], join(path, entities)); err != nil {
		return p, err
	}
	for i, e := range p.entities {
		switch e {
		case EntityHost, EntityWorld, EntityAll, EntityCluster, EntityInit:
		default:
			return p, errAt(fmt.Sprintf("%s[%d]", join(path, entities), i),
				"entity %q is not supported (%s, %s, %s, %s, %s)", e, EntityHost, EntityWorld, EntityAll, EntityCluster, EntityInit)
		}
	}
	if p.cidrs, err = stringList(m[cidr], join(path, cidr)); err != nil {
		return p, err
	}
	for i, c := range p.cidrs {
		if _, err := parseCIDR(c); err != nil {
			return p, errAt(fmt.Sprintf("%s[%d]", join(path, cidr), i), "%v", err)
		}
	}
	// Cilium refuses several kinds of peer in one item; so do we, so that a
	// file valid here is valid there and means the same.
	var set []string
	for _, f := range []struct {
		name string
		n    int
	}{{endpoints, len(p.endpoints)}, {entities, len(p.entities)}, {cidr, len(p.cidrs)}} {
		if f.n > 0 {
			set = append(set, f.name)
		}
	}
	if len(set) > 1 {
		return p, errAt(path, "%s and %s cannot be combined in one item (as in Cilium); write one item for each", set[0], set[1])
	}
	ports, err := array(m["toPorts"], join(path, "toPorts"))
	if err != nil {
		return p, err
	}
	for i, raw := range ports {
		pp := fmt.Sprintf("%s[%d]", join(path, "toPorts"), i)
		pr, err := parsePortRule(raw, pp)
		if err != nil {
			return p, err
		}
		p.ports = append(p.ports, pr)
	}
	return p, nil
}

func parsePortRule(raw json.RawMessage, path string) (PortRule, error) {
	var pr PortRule
	m, err := object(raw, path, "ports")
	if err != nil {
		return pr, err
	}
	items, err := array(m["ports"], join(path, "ports"))
	if err != nil {
		return pr, err
	}
	if len(items) == 0 {
		return pr, errAt(path, "ports is empty (leave out toPorts to allow every port)")
	}
	for i, raw := range items {
		ip := fmt.Sprintf("%s[%d]", join(path, "ports"), i)
		pm, err := object(raw, ip, "port", "protocol")
		if err != nil {
			return pr, err
		}
		var pp PortProtocol
		if v, ok := pm["port"]; ok {
			if kind(v) == "a number" {
				return pr, errAt(ip, "port must be a string such as \"80\", as in Cilium")
			}
			if pp.Port, err = str(v, join(ip, "port")); err != nil {
				return pr, err
			}
		}
		if _, err := parsePort(pp.Port); err != nil {
			return pr, errAt(ip, "%v", err)
		}
		if v, ok := pm["protocol"]; ok {
			if pp.Protocol, err = str(v, join(ip, "protocol")); err != nil {
				return pr, err
			}
		}
		if _, err := protocols(pp.Protocol); err != nil {
			return pr, errAt(ip, "%v", err)
		}
		pr.Ports = append(pr.Ports, pp)
	}
	return pr, nil
}

// parsePort reads a port: decimal 0..65535, empty meaning 0 (every port).
// Named ports need a name registry we do not have, and port ranges cannot be
// expressed by the exact-port policy map, so both are refused.
func parsePort(s string) (uint16, error) {
	if s == "" {
		return 0, nil
	}
	digits := strings.Trim(s, "0123456789") == ""
	if !digits {
		if strings.Contains(s, "-") && strings.Trim(s, "0123456789-") == "" {
			return 0, fmt.Errorf("port range %q is not supported; list the ports one by one", s)
		}
		return 0, fmt.Errorf("named port %q is not supported; use a number 0..65535", s)
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("port %q is out of range 0..65535", s)
	}
	return uint16(n), nil
}

// protocols maps a protocol name to IP protocol numbers. ANY (and empty,
// Cilium's default) means TCP and UDP as two entries rather than protocol 0:
// a port only exists for those, and protocol 0 would also let ICMP through.
func protocols(s string) ([]uint8, error) {
	switch s {
	case ProtoNameTCP:
		return []uint8{ProtoTCP}, nil
	case ProtoNameUDP:
		return []uint8{ProtoUDP}, nil
	case ProtoNameANY, "":
		return []uint8{ProtoTCP, ProtoUDP}, nil
	}
	return nil, fmt.Errorf("protocol %q is not supported (TCP, UDP, ANY)", s)
}

// parseCIDR reads a prefix; a bare address means that single address, and
// host bits are cleared, as Cilium does.
func parseCIDR(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR prefix", s)
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR prefix", s)
	}
	return p.Masked(), nil
}
