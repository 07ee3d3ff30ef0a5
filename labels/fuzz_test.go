package labels

import (
	"strings"
	"testing"
)

// The canonical form keys identities: two sets share it only if they are
// equal, whatever their keys and values hold (commas, '=', backslashes).
func FuzzCanonicalFormNamesOneSet(f *testing.F) {
	f.Add("id", "app1", "tier", "web", "id", "app1", "tier", "web")
	f.Add("a=b", "c", "x", "", "a", "b=c", "x", "")
	f.Add("a,b", "", "c", "d", "a", "", "b,c", "d")
	f.Add(`a\`, "=", "b", `\`, "a", `\=`, "b", `\\`)
	// Not UTF-8: every byte counts (once both became U+FFFD).
	f.Add("\xff=", "", "b", "", "\xfe=", "", "b", "")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, k3, v3, k4, v4 string) {
		a := FromDocker(map[string]string{k1: v1, k2: v2})
		b := FromDocker(map[string]string{k3: v3, k4: v4})
		if (a.String() == b.String()) != a.Equal(b) {
			t.Fatalf("%v and %v: canonical forms %q and %q, equal %v", a, b, a.String(), b.String(), a.Equal(b))
		}
		if c := a.Clone(); !c.Equal(a) || c.String() != a.String() {
			t.Fatalf("clone of %v differs", a)
		}
	})
}

func FuzzParseSelectorKey(f *testing.F) {
	for _, s := range []string{"id", "container:id", "reserved:host", "cidr:10.0.0.0/8", "any:id", "foo:bar", ":x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		source, key := ParseSelectorKey(s)
		switch source {
		case SourceContainer, SourceReserved, SourceCIDR:
			if s != source+":"+key {
				t.Fatalf("%q split into %q and %q", s, source, key)
			}
		case SourceAny:
			if key != s && s != SourceAny+":"+key {
				t.Fatalf("%q split into any and %q", s, key)
			}
		default:
			t.Fatalf("%q gave unknown source %q", s, source)
		}
		if strings.HasPrefix(s, "reserved:") && source != SourceReserved {
			t.Fatalf("%q did not keep its reserved source", s)
		}
	})
}
