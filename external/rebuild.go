package external

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/ebpfnet/ebpfnet/atomicfile"
)

// When external.json is lost (corrupt, or missing on a node that has
// endpoints), what it held is read back from our own chains, which
// outlive the daemon as the pinned maps do (Recover): every DNAT rule
// names its endpoint and mapping, every network rule its network. Docker's
// port bindings fill in endpoints whose rules are gone too (the daemon
// programs them again through Program, plugin/heal.go).

// CheckState loads the state file at path as New would, without touching
// iptables: nil when it is valid or missing.
func CheckState(path string) error {
	_, err := loadState(path)
	return err
}

// loadState reads the persisted state; a missing file is an empty one.
func loadState(path string) (state, error) {
	st := state{Networks: map[string]Network{}, Endpoints: map[string]endpointState{}}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return st, nil
	case err != nil:
		return st, fmt.Errorf("read %s: %w", path, err)
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return st, atomicfile.Corrupt(fmt.Errorf("published ports state %s is corrupt: %w", path, err))
	}
	if st.Networks == nil {
		st.Networks = map[string]Network{}
	}
	if st.Endpoints == nil {
		st.Endpoints = map[string]endpointState{}
	}
	for id, ep := range st.Endpoints {
		for _, mp := range ep.Mappings {
			if mp.HostPort == 0 || mp.ContainerPort == 0 || !mp.ContainerIP.IsValid() || mp.ContainerIP.Is4In6() ||
				mp.HostIP.Is4() != mp.ContainerIP.Is4() || (mp.Proto != ProtoTCP && mp.Proto != ProtoUDP) {
				return st, atomicfile.Corrupt(fmt.Errorf("published ports state %s is corrupt: endpoint %s: mapping %+v", path, id, mp))
			}
		}
	}
	return st, nil
}

// RecoveredNetwork is what our rules show of a network.
type RecoveredNetwork struct {
	Internal   bool
	Masquerade bool
}

// Recovered is what our chains hold, keyed by the 12-character ID prefixes
// the rules' comments carry.
type Recovered struct {
	Networks map[string]RecoveredNetwork
	Mappings map[string][]Mapping
}

// Recover reads our chains (cfg.ChainPrefix's) back: each network's
// isolation and masquerade, each endpoint's published ports. Rules it does
// not understand are left out.
func Recover(cfg Config) (Recovered, error) {
	cfg, err := withDefaults(cfg)
	if err != nil {
		return Recovered{}, err
	}
	nm := chainNames(cfg.ChainPrefix)
	rec := Recovered{Networks: map[string]RecoveredNetwork{}, Mappings: map[string][]Mapping{}}
	// Both families' chains: a network's rules are the same in each, an
	// endpoint's mappings are those of both.
	list := func(table, chain string) ([]parsedRule, error) {
		var out []parsedRule
		for _, tables := range []Tables{cfg.Tables, cfg.Tables6} {
			if tables == nil {
				continue
			}
			ok, err := tables.ChainExists(table, chain)
			if err != nil {
				return nil, err
			}
			if !ok {
				continue
			}
			lines, err := tables.List(table, chain)
			if err != nil {
				return nil, fmt.Errorf("list %s/%s: %w", table, chain, err)
			}
			for _, l := range lines {
				if r, ok := parseRule(l); ok {
					out = append(out, r)
				}
			}
		}
		return out, nil
	}
	dnat, err := list(tableNAT, nm.dnat)
	if err != nil {
		return rec, err
	}
	for _, r := range dnat {
		kind, id, ok := r.owner()
		if !ok || kind != "ep" || r.args["-j"] != "DNAT" {
			continue
		}
		if mp, ok := r.mapping(); ok {
			rec.Mappings[id] = append(rec.Mappings[id], mp)
		}
	}
	forward, err := list(tableFilter, nm.forward)
	if err != nil {
		return rec, err
	}
	post, err := list(tableNAT, nm.postrouting)
	if err != nil {
		return rec, err
	}
	for _, r := range append(forward, post...) {
		kind, id, ok := r.owner()
		if !ok || kind != "net" {
			continue
		}
		n := rec.Networks[id]
		switch r.args["-j"] {
		case "DROP":
			n.Internal = true
		case "MASQUERADE":
			n.Masquerade = true
		}
		rec.Networks[id] = n
	}
	for id := range rec.Mappings {
		sort.Slice(rec.Mappings[id], func(i, j int) bool {
			a, b := rec.Mappings[id][i], rec.Mappings[id][j]
			if a.HostPort != b.HostPort {
				return a.HostPort < b.HostPort
			}
			if a.Proto != b.Proto {
				return a.Proto < b.Proto
			}
			return a.ContainerIP.Less(b.ContainerIP)
		})
	}
	return rec, nil
}

// EndpointRef names a live endpoint for Rebuild.
type EndpointRef struct {
	ID        string
	NetworkID string
	IfName    string
}

// Rebuild writes cfg.StatePath from what Recover found for endpoints;
// the networks are left to Restore, which takes them from the driver. It
// returns how many endpoints got their mappings back.
func Rebuild(cfg Config, rec Recovered, endpoints []EndpointRef) (int, error) {
	st := state{Networks: map[string]Network{}, Endpoints: map[string]endpointState{}}
	for _, ep := range endpoints {
		if mps := rec.Mappings[short(ep.ID)]; len(mps) > 0 {
			st.Endpoints[ep.ID] = endpointState{NetworkID: ep.NetworkID, IfName: ep.IfName, Mappings: append([]Mapping(nil), mps...)}
		}
	}
	m := &Manager{cfg: cfg, st: st}
	if err := m.save(); err != nil {
		return 0, err
	}
	return len(st.Endpoints), nil
}

// short is the ID prefix our comments carry.
func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// parsedRule is one line of `iptables -S CHAIN`: its options by name
// (the last value wins) and its comment.
type parsedRule struct {
	args    map[string]string
	comment string
}

// parseRule reads a rule as iptables prints it: options and values,
// double-quoted where they hold spaces.
func parseRule(line string) (parsedRule, bool) {
	words, ok := splitQuoted(line)
	if !ok || len(words) < 2 || words[0] != "-A" {
		return parsedRule{}, false
	}
	r := parsedRule{args: map[string]string{}}
	for i := 2; i < len(words); i++ {
		w := words[i]
		if !strings.HasPrefix(w, "-") || i+1 >= len(words) || strings.HasPrefix(words[i+1], "-") {
			continue
		}
		i++
		if w == "--comment" {
			r.comment = words[i]
			continue
		}
		r.args[w] = words[i]
	}
	return r, true
}

// owner is the kind (net, ep) and ID prefix our comment names.
func (r parsedRule) owner() (kind, id string, ok bool) {
	f := strings.Fields(r.comment)
	if len(f) != 3 || f[0] != "ebpfnet" {
		return "", "", false
	}
	return f[1], f[2], true
}

// mapping reads a DNAT rule back (mappingRule), of either family.
func (r parsedRule) mapping() (Mapping, bool) {
	var mp Mapping
	to, err := netip.ParseAddrPort(r.args["--to-destination"])
	if err != nil || to.Addr().Is4In6() || to.Port() == 0 {
		return Mapping{}, false
	}
	mp.ContainerIP, mp.ContainerPort = to.Addr(), to.Port()
	mp.HostIP = netip.IPv4Unspecified()
	if to.Addr().Is6() {
		mp.HostIP = netip.IPv6Unspecified()
	}
	switch r.args["-p"] {
	case "tcp":
		mp.Proto = ProtoTCP
	case "udp":
		mp.Proto = ProtoUDP
	default:
		return Mapping{}, false
	}
	if d := r.args["-d"]; d != "" {
		p, err := netip.ParsePrefix(d)
		if err != nil {
			a, aerr := netip.ParseAddr(d)
			if aerr != nil {
				return Mapping{}, false
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if p.Bits() != p.Addr().BitLen() || p.Addr().Is4() != to.Addr().Is4() {
			return Mapping{}, false
		}
		mp.HostIP = p.Addr()
	}
	port, err := strconv.ParseUint(r.args["--dport"], 10, 16)
	if err != nil || port == 0 {
		return Mapping{}, false
	}
	mp.HostPort = uint16(port)
	return mp, true
}

// splitQuoted splits a line at spaces, keeping double-quoted words whole.
func splitQuoted(line string) ([]string, bool) {
	var out []string
	var cur strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quoted && c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			quoted = !quoted
			inWord = true
		case c == ' ' && !quoted:
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if quoted {
		return nil, false
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, true
}
