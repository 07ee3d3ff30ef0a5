package policy

import (
	"fmt"
	"net/netip"
	"sort"

	"github.com/ebpfnet/ebpfnet/identity"
	"github.com/ebpfnet/ebpfnet/labels"
)

// IP protocol numbers in Key.Proto.
const (
	ProtoAny uint8 = 0
	ProtoTCP uint8 = 6
	ProtoUDP uint8 = 17
)

// Mode is a network's policy enforcement mode.
type Mode string

// Enforcement modes, as Cilium's --enable-policy.
const (
	// ModeDefault enforces a direction once a rule that selects the
	// endpoint has a section for it.
	ModeDefault Mode = "default"
	// ModeAlways enforces both directions even with no rule: what no rule
	// allows is dropped.
	ModeAlways Mode = "always"
	// ModeNever enforces nothing.
	ModeNever Mode = "never"
)

// ParseMode reads a mode name; empty is ModeDefault.
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case "", ModeDefault:
		return ModeDefault, nil
	case ModeAlways, ModeNever:
		return Mode(s), nil
	}
	return "", fmt.Errorf("policy enforcement mode %q is not supported (default, always, never)", s)
}

// Endpoint is the subject of a compilation.
type Endpoint struct {
	Identity identity.ID
	Labels   labels.Labels
}

// Compile computes an endpoint's policy from the rules, with Cilium's
// semantics for the supported subset: rules only allow, and the result is
// the union of every item of every rule that selects the endpoint. ids must
// hold every identity a peer may have — reserved, allocated and CIDR, as
// identity.Allocator.All returns — because selectors are resolved to
// identity numbers here, once, and not in the datapath. The endpoint's own
// identity is added if missing. A rule naming a CIDR only matches traffic
// whose address the ipcache maps to a CIDR identity within it, so the
// caller allocates an identity for each prefix in CIDRs(rules).
func Compile(rules []Rule, ep Endpoint, ids map[identity.ID]labels.Labels, mode Mode) (EndpointPolicy, error) {
	mode, err := ParseMode(string(mode))
	if err != nil {
		return EndpointPolicy{}, err
	}
	out := EndpointPolicy{Entries: map[Key]struct{}{}}
	if mode == ModeNever {
		return out, nil
	}
	var selected []Rule
	for _, r := range rules {
		if r.EndpointSelector.matches(ep.Labels) {
			selected = append(selected, r)
		}
	}
	out.IngressEnforced = mode == ModeAlways
	out.EgressEnforced = mode == ModeAlways
	for _, r := range selected {
		// A section with no items is absent, as in Cilium (it checks the
		// length); `ingress: [{}]` is the way to deny all.
		out.IngressEnforced = out.IngressEnforced || len(r.Ingress) > 0
		out.EgressEnforced = out.EgressEnforced || len(r.Egress) > 0
	}
	if _, ok := ids[ep.Identity]; !ok && ep.Identity != identity.Unknown {
		all := make(map[identity.ID]labels.Labels, len(ids)+1)
		for id, ls := range ids {
			all[id] = ls
		}
		all[ep.Identity] = ep.Labels
		ids = all
	}
	for _, r := range selected {
		if out.IngressEnforced {
			for _, item := range r.Ingress {
				item.peers().allow(ids, Ingress, out.Entries)
			}
		}
		if out.EgressEnforced {
			for _, item := range r.Egress {
				item.peers().allow(ids, Egress, out.Entries)
			}
		}
	}
	return out, nil
}

// allow adds the product of the item's peers and ports.
func (p peerRule) allow(ids map[identity.ID]labels.Labels, dir Direction, into map[Key]struct{}) {
	peers := p.resolve(ids)
	ports := portKeys(p.ports)
	for id := range peers {
		for _, pk := range ports {
			pk.Identity = uint32(id)
			pk.Direction = dir
			into[pk] = struct{}{}
		}
	}
}

// resolve returns the identities an item names.
func (p peerRule) resolve(ids map[identity.ID]labels.Labels) map[identity.ID]struct{} {
	out := map[identity.ID]struct{}{}
	if len(p.endpoints) == 0 && len(p.entities) == 0 && len(p.cidrs) == 0 {
		// Ports alone mean any peer on those ports; an empty item allows
		// nothing.
		if len(p.ports) > 0 {
			out[identity.Unknown] = struct{}{}
		}
		return out
	}
	for _, sel := range p.endpoints {
		for id, ls := range ids {
			if sel.matches(ls) {
				out[id] = struct{}{}
			}
		}
	}
	for _, e := range p.entities {
		switch e {
		case EntityAll:
			out[identity.Unknown] = struct{}{}
		case EntityHost:
			out[identity.Host] = struct{}{}
		case EntityInit:
			out[identity.Init] = struct{}{}
		case EntityWorld:
			out[identity.World] = struct{}{}
			for id := range ids {
				if id.Kind() == identity.KindCIDR {
					out[id] = struct{}{}
				}
			}
		case EntityCluster:
			out[identity.Host] = struct{}{}
			out[identity.Init] = struct{}{}
			for id := range ids {
				if id.Kind() == identity.KindAllocated {
					out[id] = struct{}{}
				}
			}
		}
	}
	for _, c := range p.cidrs {
		within, err := parseCIDR(c)
		if err != nil {
			continue // Parse refuses these; a rule built in code may not have been parsed
		}
		if within.Bits() == 0 {
			out[identity.World] = struct{}{}
		}
		for id, ls := range ids {
			if id.Kind() != identity.KindCIDR {
				continue
			}
			if q, ok := identity.CIDRPrefix(ls); ok && prefixWithin(q, within) {
				out[id] = struct{}{}
			}
		}
	}
	return out
}

// prefixWithin reports whether every address of q lies in p.
func prefixWithin(q, p netip.Prefix) bool {
	return q.Addr().Is4() == p.Addr().Is4() && q.Bits() >= p.Bits() && p.Contains(q.Addr())
}

// portKeys turns toPorts into port/protocol pairs; no toPorts means every
// port of every protocol.
func portKeys(rules []PortRule) []Key {
	if len(rules) == 0 {
		return []Key{{Port: 0, Proto: ProtoAny}}
	}
	var out []Key
	for _, pr := range rules {
		for _, pp := range pr.Ports {
			port, err := parsePort(pp.Port)
			if err != nil {
				continue
			}
			protos, err := protocols(pp.Protocol)
			if err != nil {
				continue
			}
			for _, proto := range protos {
				out = append(out, Key{Port: port, Proto: proto})
			}
		}
	}
	return out
}

// matches reports whether the selector selects a label set. A set with
// reserved or CIDR labels (host, world, init, CIDR identities, an endpoint
// whose labels are not known yet) is only selected by a selector that names
// a reserved: or cidr: key, as in Cilium: {} means every endpoint, not the
// node or the world.
func (s Selector) matches(ls labels.Labels) bool {
	special := ls.HasSource(labels.SourceReserved) || ls.HasSource(labels.SourceCIDR)
	if special && !s.namesSpecial() {
		return false
	}
	for k, want := range s.MatchLabels {
		source, key := labels.ParseSelectorKey(k)
		values, ok := ls.Values(source, key)
		if !ok || !contains(values, want) {
			return false
		}
	}
	for _, req := range s.MatchExpressions {
		source, key := labels.ParseSelectorKey(req.Key)
		values, ok := ls.Values(source, key)
		in := false
		for _, v := range values {
			if contains(req.Values, v) {
				in = true
				break
			}
		}
		var holds bool
		switch req.Operator {
		case OpIn:
			holds = in
		case OpNotIn:
			holds = !in // true also when the key is absent, as in Kubernetes
		case OpExists:
			holds = ok
		case OpDoesNotExist:
			holds = !ok
		}
		if !holds {
			return false
		}
	}
	return true
}

func (s Selector) namesSpecial() bool {
	special := func(k string) bool {
		source, _ := labels.ParseSelectorKey(k)
		return source == labels.SourceReserved || source == labels.SourceCIDR
	}
	for k := range s.MatchLabels {
		if special(k) {
			return true
		}
	}
	for _, req := range s.MatchExpressions {
		if special(req.Key) {
			return true
		}
	}
	return false
}

// CIDRs returns every prefix the rules name in fromCIDR/toCIDR, masked,
// without duplicates and without /0 (which is reserved:world), sorted: the
// prefixes the daemon gives CIDR identities and ipcache entries.
func CIDRs(rules []Rule) []netip.Prefix {
	seen := map[netip.Prefix]struct{}{}
	add := func(cs []string) {
		for _, c := range cs {
			if p, err := parseCIDR(c); err == nil && p.Bits() > 0 {
				seen[p] = struct{}{}
			}
		}
	}
	for _, r := range rules {
		for _, in := range r.Ingress {
			add(in.FromCIDR)
		}
		for _, eg := range r.Egress {
			add(eg.ToCIDR)
		}
	}
	out := make([]netip.Prefix, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Addr().Compare(out[j].Addr()); c != 0 {
			return c < 0
		}
		return out[i].Bits() < out[j].Bits()
	})
	return out
}
