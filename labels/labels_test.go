package labels

import "testing"

func TestFromDockerCanonicalString(t *testing.T) {
	ls := FromDocker(map[string]string{"tier": "web", "id": "app1"})
	if got, want := ls.String(), "container:id=app1,container:tier=web"; got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
	if l := ls["container:id"]; l != New(SourceContainer, "id", "app1") {
		t.Fatalf("container:id = %+v", l)
	}
	if got := (Labels{}).String(); got != "" {
		t.Fatalf("empty set = %q", got)
	}
	if got := FromLabels(Host()).String(); got != "reserved:host" {
		t.Fatalf("host = %q", got)
	}
}

func TestCanonicalStringIsInjective(t *testing.T) {
	// A value holding a comma must not read as two labels.
	a := FromDocker(map[string]string{"a": "x,container:b=y"})
	b := FromDocker(map[string]string{"a": "x", "b": "y"})
	if a.String() == b.String() {
		t.Fatalf("distinct sets share canonical form %q", a.String())
	}
	if a.Equal(b) || !a.Equal(a.Clone()) {
		t.Fatal("Equal is wrong")
	}
}

func TestValues(t *testing.T) {
	ls := FromLabels(New(SourceContainer, "id", "a"), New(SourceReserved, "id", "b"))
	if v, ok := ls.Values(SourceContainer, "id"); !ok || len(v) != 1 || v[0] != "a" {
		t.Fatalf("container values = %v %v", v, ok)
	}
	if v, ok := ls.Values(SourceAny, "id"); !ok || len(v) != 2 {
		t.Fatalf("any values = %v %v", v, ok)
	}
	if _, ok := ls.Values(SourceAny, "nope"); ok {
		t.Fatal("missing key found")
	}
}

func TestParseSelectorKey(t *testing.T) {
	for in, want := range map[string][2]string{
		"id":              {SourceAny, "id"},
		"container:id":    {SourceContainer, "id"},
		"any:id":          {SourceAny, "id"},
		"reserved:host":   {SourceReserved, "host"},
		"cidr:fd00::/8":   {SourceCIDR, "fd00::/8"},
		"com.example:foo": {SourceAny, "com.example:foo"},
		":x":              {SourceAny, ":x"},
	} {
		s, k := ParseSelectorKey(in)
		if s != want[0] || k != want[1] {
			t.Errorf("ParseSelectorKey(%q) = %q, %q; want %q, %q", in, s, k, want[0], want[1])
		}
	}
}
