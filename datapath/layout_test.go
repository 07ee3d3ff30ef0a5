package datapath

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/ebpfnet/ebpfnet/bpf"
	"github.com/ebpfnet/ebpfnet/identity"
	"github.com/ebpfnet/ebpfnet/policy"
)

// The Go mirrors of the datapath's maps, events and constants are held to
// the BTF of the committed objects, as Cilium's alignchecker does: a field
// moved, resized or renumbered on one side only fails here, not in a map.

func objectBTF(t *testing.T, name string, obj []byte) *btf.Spec {
	t.Helper()
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(obj))
	if err != nil {
		t.Fatalf("%s: load BTF: %v", name, err)
	}
	return spec
}

func objects(t *testing.T) map[string]*btf.Spec {
	return map[string]*btf.Spec{
		"bpf_lxc.o":  objectBTF(t, "bpf_lxc.o", bpf.LXCTemplate),
		"bpf_node.o": objectBTF(t, "bpf_node.o", bpf.NodeObject),
	}
}

func cStruct(t *testing.T, spec *btf.Spec, name string) *btf.Struct {
	t.Helper()
	var s *btf.Struct
	if err := spec.TypeByName(name, &s); err != nil {
		t.Fatalf("struct %s: %v", name, err)
	}
	return s
}

func cEnum(t *testing.T, spec *btf.Spec, name string) map[string]uint64 {
	t.Helper()
	var e *btf.Enum
	if err := spec.TypeByName(name, &e); err != nil {
		t.Fatalf("enum %s: %v", name, err)
	}
	out := map[string]uint64{}
	for _, v := range e.Values {
		out[v.Name] = v.Value
	}
	return out
}

// normalise lets lxc_mac match LXCMAC and src_identity SrcIdentity.
func normalise(name string) string {
	return strings.ToLower(strings.ReplaceAll(name, "_", ""))
}

// sameLayout checks that goType has the C struct's size and, member by
// member in order, its names, offsets and sizes.
func sameLayout(t *testing.T, c *btf.Struct, goType reflect.Type) {
	t.Helper()
	if size := int(c.Size); size != int(goType.Size()) || size != binary.Size(reflect.New(goType).Elem().Interface()) {
		t.Errorf("struct %s is %d bytes, Go %s is %d (binary %d)", c.Name, size, goType.Name(), goType.Size(),
			binary.Size(reflect.New(goType).Elem().Interface()))
	}
	if len(c.Members) != goType.NumField() {
		t.Errorf("struct %s has %d members, Go %s %d fields", c.Name, len(c.Members), goType.Name(), goType.NumField())
		return
	}
	for i, m := range c.Members {
		f := goType.Field(i)
		size, err := btf.Sizeof(m.Type)
		if err != nil {
			t.Fatalf("%s.%s: %v", c.Name, m.Name, err)
		}
		if normalise(m.Name) != normalise(f.Name) || int(m.Offset.Bytes()) != int(f.Offset) || size != int(f.Type.Size()) {
			t.Errorf("%s.%s (offset %d, %d bytes) vs %s.%s (offset %d, %d bytes)",
				c.Name, m.Name, m.Offset.Bytes(), size, goType.Name(), f.Name, f.Offset, f.Type.Size())
		}
	}
}

func TestLayoutMapsAndEvents(t *testing.T) {
	for obj, spec := range objects(t) {
		t.Run(obj, func(t *testing.T) {
			sameLayout(t, cStruct(t, spec, "endpoint_info"), reflect.TypeOf(endpointInfo{}))
			sameLayout(t, cStruct(t, spec, "policy_entry"), reflect.TypeOf(PolicyEntry{}))
		})
	}
	node := objects(t)["bpf_node.o"]
	for c, goType := range map[string]reflect.Type{
		"ipcache_key":   reflect.TypeOf(ipcacheKey{}),
		"ipcache_value": reflect.TypeOf(ipcacheValue{}),
		"ct_key":        reflect.TypeOf(ctKey{}),
		"ct_entry":      reflect.TypeOf(ctEntry{}),
		"metrics_value": reflect.TypeOf(MetricValue{}),
		"network_info":  reflect.TypeOf(networkInfo{}),
		"notify":        reflect.TypeOf(notifyRecord{}),
		"ipcache6_key":  reflect.TypeOf(ipcache6Key{}),
		"network6_info": reflect.TypeOf(network6Info{}),
		"ct6_key":       reflect.TypeOf(ct6Key{}),
		"frag6_key":     reflect.TypeOf(frag6Key{}),
		"notify6":       reflect.TypeOf(notify6Record{}),
	} {
		sameLayout(t, cStruct(t, node, c), goType)
	}
	if eventSize != int(cStruct(t, node, "notify").Size) || event6Size != int(cStruct(t, node, "notify6").Size) {
		t.Errorf("eventSize %d, event6Size %d", eventSize, event6Size)
	}
	// The two event layouts are told apart by their length alone.
	if eventSize == event6Size {
		t.Errorf("struct notify and struct notify6 are both %d bytes", eventSize)
	}
}

// policy.Key is laid out by its MarshalBinary (the port is swapped to
// network order there): each member of struct policy_key must find its
// field's value at its own offset.
func TestLayoutPolicyKey(t *testing.T) {
	k := policy.Key{Identity: 0x11223344, Port: 0x5566, Proto: 0x77, Direction: policy.Egress}
	b, err := k.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	for obj, spec := range objects(t) {
		c := cStruct(t, spec, "policy_key")
		if int(c.Size) != len(b) || len(b) != policy.KeySize {
			t.Fatalf("%s: policy_key is %d bytes, MarshalBinary gives %d", obj, c.Size, len(b))
		}
		want := map[string]func(off int) bool{
			"identity":  func(o int) bool { return binary.NativeEndian.Uint32(b[o:]) == k.Identity },
			"dport":     func(o int) bool { return binary.BigEndian.Uint16(b[o:]) == k.Port },
			"proto":     func(o int) bool { return b[o] == k.Proto },
			"direction": func(o int) bool { return policy.Direction(b[o]) == k.Direction },
		}
		if len(c.Members) != len(want) {
			t.Fatalf("%s: policy_key has %d members, policy.Key %d", obj, len(c.Members), len(want))
		}
		for _, m := range c.Members {
			check, ok := want[m.Name]
			if !ok || !check(int(m.Offset.Bytes())) {
				t.Errorf("%s: policy_key.%s at offset %d does not hold policy.Key's value", obj, m.Name, m.Offset.Bytes())
			}
		}
	}
}

// Every value the programs write or read has its Go constant, with the
// same number.
func TestLayoutConstants(t *testing.T) {
	node := objects(t)["bpf_node.o"]
	reasons := cEnum(t, node, "reason")
	for name, v := range reasons {
		if got := Reason(v).Name(); got != name {
			t.Errorf("C %s = %d is %s in Go", name, v, got)
		}
	}
	for _, r := range knownReasons() {
		if v, ok := reasons[r.Name()]; !ok || v != uint64(r) {
			t.Errorf("Go %s = %d is %d (present %v) in C", r.Name(), r, v, ok)
		}
	}
	check := func(enum string, want map[string]uint64) {
		t.Helper()
		got := cEnum(t, node, enum)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("enum %s: C %v, Go %v", enum, got, want)
		}
	}
	check("metric_dir", map[string]uint64{"METRIC_INGRESS": metricIngress, "METRIC_EGRESS": metricEgress})
	check("policy_dir", map[string]uint64{"POLICY_INGRESS": uint64(policy.Ingress), "POLICY_EGRESS": uint64(policy.Egress)})
	check("verdict", map[string]uint64{
		"VERDICT_NONE": uint64(VerdictNone), "VERDICT_ALLOWED": uint64(VerdictAllowed),
		"VERDICT_DENIED": uint64(VerdictDenied), "VERDICT_AUDIT": uint64(VerdictAudit),
	})
	check("notify_type", map[string]uint64{"NOTIFY_DROP": uint64(EventDrop), "NOTIFY_POLICY_VERDICT": uint64(EventPolicyVerdict)})
	check("endpoint_flags", map[string]uint64{
		"EP_F_ENFORCE_INGRESS": uint64(FlagEnforceIngress), "EP_F_ENFORCE_EGRESS": uint64(FlagEnforceEgress),
		"EP_F_AUDIT": uint64(FlagAudit),
	})
	check("ct_flags", map[string]uint64{
		"CT_F_ESTABLISHED": uint64(ctFlagEstablished), "CT_F_FIN_LO": uint64(ctFlagFinLo), "CT_F_FIN_HI": uint64(ctFlagFinHi),
		"CT_F_RST": uint64(ctFlagRST), "CT_F_INIT_HI": uint64(ctFlagInitHi),
	})
	check("reserved_identity", map[string]uint64{
		"IDENTITY_HOST": uint64(identity.Host), "IDENTITY_WORLD": uint64(identity.World), "IDENTITY_INIT": uint64(identity.Init),
	})
}

// The node programs sit in the slots the C side tail-calls, and the slots
// fit the arrays.
func TestLayoutCallSlots(t *testing.T) {
	node := objects(t)["bpf_node.o"]
	for _, c := range []struct {
		enum, prefix, suffix string
		progs                []nodeProgram
		max                  string
	}{
		{"abi_call_slot", "ABI_CALL_", "", nodePrograms(), "ABI_CALLS_MAX"},
		{"abi_call6_slot", "ABI_CALL6_", "6", nodePrograms6(), "ABI_CALLS6_MAX"},
	} {
		slots := cEnum(t, node, c.enum)
		max := slots[c.max]
		delete(slots, c.max)
		if len(slots) != len(c.progs) {
			t.Errorf("%s has %d slots, Go %d programs", c.enum, len(slots), len(c.progs))
		}
		for _, np := range c.progs {
			name := c.prefix + strings.ToUpper(strings.TrimSuffix(strings.TrimPrefix(np.name, "node_"), c.suffix))
			if v, ok := slots[name]; !ok || v != uint64(np.slot) || v >= max {
				t.Errorf("%s is in slot %d, C %s = %d (present %v, max %d)", np.name, np.slot, name, v, ok, max)
			}
		}
	}
}
