// Package labels holds the label sets that identities are derived from and
// that policy selectors match, in Cilium's "source:key=value" convention, so
// a Cilium user reads and writes them the same way.
package labels

import (
	"sort"
	"strings"
)

// Label sources. A source says where a label came from, so that a selector
// can tell a container's own label from a reserved or CIDR one.
const (
	SourceContainer = "container" // Docker container labels
	SourceReserved  = "reserved"  // labels of the reserved identities (host, world, init)
	SourceCIDR      = "cidr"      // labels of CIDR identities; the key is the prefix
	// SourceAny is valid only in selectors: it matches a label of any source.
	SourceAny = "any"
)

// Label is one label. Reserved labels have an empty Value, as in Cilium.
type Label struct {
	Source string `json:"source"`
	Key    string `json:"key"`
	Value  string `json:"value"`
}

// New returns a label.
func New(source, key, value string) Label {
	return Label{Source: source, Key: key, Value: value}
}

// Reserved labels, one per reserved identity. They are functions, not
// package variables, so no caller can change them for everyone.
func Host() Label  { return Label{Source: SourceReserved, Key: "host"} }
func World() Label { return Label{Source: SourceReserved, Key: "world"} }
func Init() Label  { return Label{Source: SourceReserved, Key: "init"} }

// FullKey is "source:key", the key a Labels map stores the label under.
func (l Label) FullKey() string { return l.Source + ":" + l.Key }

// String is "source:key=value", or "source:key" when the value is empty (as
// Cilium prints reserved labels). Backslash, comma and '=' inside key and
// value are escaped with a backslash so that the canonical form of a set
// (see Labels.String) names exactly one set.
func (l Label) String() string {
	s := l.Source + ":" + escape(l.Key)
	if l.Value != "" {
		s += "=" + escape(l.Value)
	}
	return s
}

func escape(s string) string {
	if !strings.ContainsAny(s, `\,=`) {
		return s
	}
	// Bytes, not runes: the escaped characters are ASCII, and a string
	// that is not valid UTF-8 must keep its bytes (ranging over runes
	// would turn every invalid byte into U+FFFD, and two sets into one).
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\\' || c == ',' || c == '=' {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	return b.String()
}

// Labels is a label set, keyed by "source:key" (Label.FullKey): a set holds
// at most one value per source and key, as a Docker container holds at most
// one value per label key. The nil map is the empty set.
type Labels map[string]Label

// FromLabels builds a set; a later label replaces an earlier one with the
// same source and key.
func FromLabels(ls ...Label) Labels {
	out := make(Labels, len(ls))
	for _, l := range ls {
		out[l.FullKey()] = l
	}
	return out
}

// FromDocker turns a container's Docker labels into a set of source
// "container" (Cilium's convention: `--label id=app1` is container:id=app1).
// Every label is kept: which ones matter for identity is the user's choice,
// expressed through the labels they set.
func FromDocker(m map[string]string) Labels {
	out := make(Labels, len(m))
	for k, v := range m {
		l := Label{Source: SourceContainer, Key: k, Value: v}
		out[l.FullKey()] = l
	}
	return out
}

// Sorted returns the labels ordered by source, then key.
func (ls Labels) Sorted() []Label {
	out := make([]Label, 0, len(ls))
	for _, l := range ls {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Source != out[j].Source {
			return out[i].Source < out[j].Source
		}
		return out[i].Key < out[j].Key
	})
	return out
}

// String is the canonical form, e.g. "container:id=app1,container:tier=web":
// labels sorted by source and key, joined by commas. Two sets are equal iff
// their canonical forms are, which is why identities are keyed by it. The
// empty set is "".
func (ls Labels) String() string {
	sorted := ls.Sorted()
	parts := make([]string, len(sorted))
	for i, l := range sorted {
		parts[i] = l.String()
	}
	return strings.Join(parts, ",")
}

// Equal reports whether both sets hold the same labels.
func (ls Labels) Equal(other Labels) bool {
	if len(ls) != len(other) {
		return false
	}
	for k, l := range ls {
		if o, ok := other[k]; !ok || o != l {
			return false
		}
	}
	return true
}

// Has reports whether the set holds a label with this source and key,
// whatever its value.
func (ls Labels) Has(source, key string) bool {
	_, ok := ls[source+":"+key]
	return ok
}

// HasSource reports whether any label of the set has this source.
func (ls Labels) HasSource(source string) bool {
	for _, l := range ls {
		if l.Source == source {
			return true
		}
	}
	return false
}

// Values returns the values of the labels with this key; source SourceAny
// (or "") takes the key from every source, any other source only from that
// one. ok is false when no label has the key.
func (ls Labels) Values(source, key string) (values []string, ok bool) {
	if source != SourceAny && source != "" {
		l, found := ls[source+":"+key]
		if !found {
			return nil, false
		}
		return []string{l.Value}, true
	}
	for _, l := range ls {
		if l.Key == key {
			values = append(values, l.Value)
		}
	}
	return values, len(values) > 0
}

// Clone returns a copy that the caller may change.
func (ls Labels) Clone() Labels {
	out := make(Labels, len(ls))
	for k, l := range ls {
		out[k] = l
	}
	return out
}

// ParseSelectorKey splits a selector key the way Cilium does: a known source
// before the first ':' ("container:id", "reserved:host", "cidr:10.0.0.0/8",
// "any:id") is the source; a key with no known source prefix matches any
// source. An unknown prefix stays part of the key, since Docker label keys
// may contain ':' themselves.
func ParseSelectorKey(s string) (source, key string) {
	if i := strings.IndexByte(s, ':'); i > 0 {
		switch src := s[:i]; src {
		case SourceContainer, SourceReserved, SourceCIDR, SourceAny:
			return src, s[i+1:]
		}
	}
	return SourceAny, s
}
