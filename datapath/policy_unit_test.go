package datapath

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/ebpfnet/ebpfnet/policy"
)

func TestDecodeEvent(t *testing.T) {
	b := make([]byte, eventSize)
	b[0], b[1], b[2], b[3] = byte(EventPolicyVerdict), byte(DropPolicy), byte(VerdictDenied), metricEgress
	le := binary.LittleEndian
	le.PutUint32(b[4:], 42)
	copy(b[8:], []byte{10, 1, 2, 3})
	copy(b[12:], []byte{10, 1, 2, 4})
	binary.BigEndian.PutUint16(b[16:], 40000)
	binary.BigEndian.PutUint16(b[18:], 80)
	b[20] = 6
	le.PutUint32(b[24:], 256)
	le.PutUint32(b[28:], 300)
	le.PutUint32(b[32:], 17)
	le.PutUint32(b[36:], 74)
	ev, err := decodeEvent(b)
	if err != nil {
		t.Fatal(err)
	}
	want := Event{
		Type: EventPolicyVerdict, Reason: DropPolicy, Verdict: VerdictDenied, Direction: policy.Egress,
		EndpointID: 42, Src: netip.MustParseAddr("10.1.2.3"), Dst: netip.MustParseAddr("10.1.2.4"),
		SrcPort: 40000, DstPort: 80, Proto: 6, SrcIdentity: 256, DstIdentity: 300, IfIndex: 17, Len: 74,
	}
	if ev != want {
		t.Errorf("decoded %+v\nwant    %+v", ev, want)
	}
	line := ev.String()
	for _, w := range []string{"policy-verdict denied", "(Policy denied)", "10.1.2.3:40000 -> 10.1.2.4:80", "identity 256 -> 300", "egress"} {
		if !strings.Contains(line, w) {
			t.Errorf("%q lacks %q", line, w)
		}
	}
	if _, err := decodeEvent(b[:eventSize-1]); err == nil {
		t.Error("short event decoded")
	}
	if VerdictAudit.String() != "audit" || EventDrop.String() != "drop" {
		t.Error("verdict or type names wrong")
	}
}

func keys(ks ...policy.Key) map[policy.Key]struct{} {
	m := map[policy.Key]struct{}{}
	for _, k := range ks {
		m[k] = struct{}{}
	}
	return m
}

func TestEndpointPolicyFlagsAndValidation(t *testing.T) {
	p := policy.EndpointPolicy{IngressEnforced: true, Audit: true}
	if f := flagsOf(&p); f != FlagEnforceIngress|FlagAudit {
		t.Errorf("flags %b", f)
	}
	p.Entries = keys(policy.Key{Direction: 2})
	if err := p.Validate(policyEntriesMax); err == nil {
		t.Error("direction 2 accepted")
	}
}

func TestIPCacheKey(t *testing.T) {
	k, err := ipcacheKeyOf(netip.MustParsePrefix("10.1.2.3/16"))
	if err != nil || k.PrefixLen != 16 || k.Addr != [4]byte{10, 1, 0, 0} {
		t.Errorf("key %+v, %v: want 10.1.0.0/16", k, err)
	}
	if _, err := ipcacheKeyOf(netip.MustParsePrefix("fd00::/64")); err == nil {
		t.Error("IPv6 prefix accepted")
	}
	if _, err := ipcacheKeyOf(netip.Prefix{}); err == nil {
		t.Error("invalid prefix accepted")
	}
}

// TestPolicyOfEndpointBeingDeleted: an endpoint whose deletion failed after
// its policy map was closed (it stays for DeleteEndpoint to retry) is gone
// for policy and identity changes, not a nil map to write into.
func TestPolicyOfEndpointBeingDeleted(t *testing.T) {
	d := &Datapath{eps: map[uint16]*endpointState{7: {ep: Endpoint{ID: 7}}}}
	if _, _, err := d.ApplyPolicy(7, policy.EndpointPolicy{IngressEnforced: true}); !errors.Is(err, ErrNoEndpoint) {
		t.Errorf("ApplyPolicy: %v, want ErrNoEndpoint", err)
	}
	if _, err := d.PolicyEntries(7); !errors.Is(err, ErrNoEndpoint) {
		t.Errorf("PolicyEntries: %v, want ErrNoEndpoint", err)
	}
	if err := d.SetEndpointIdentity(7, 300, "", "", nil); !errors.Is(err, ErrNoEndpoint) {
		t.Errorf("SetEndpointIdentity: %v, want ErrNoEndpoint", err)
	}
}

// An IPv6 event is struct notify6: told from struct notify by its length.
func TestDecodeEvent6(t *testing.T) {
	b := make([]byte, event6Size)
	b[0], b[1], b[2], b[3] = byte(EventDrop), byte(DropInvalidSIP), byte(VerdictNone), metricIngress
	le := binary.LittleEndian
	le.PutUint32(b[4:], 7)
	src, dst := netip.MustParseAddr("fd00:80::2"), netip.MustParseAddr("2001:db8::9")
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	binary.BigEndian.PutUint16(b[40:], 128)
	b[44] = protoICMPv6
	le.PutUint32(b[48:], 256)
	le.PutUint32(b[52:], 2)
	le.PutUint32(b[56:], 9)
	le.PutUint32(b[60:], 118)
	ev, err := decodeEvent(b)
	if err != nil {
		t.Fatal(err)
	}
	want := Event{
		Type: EventDrop, Reason: DropInvalidSIP, Verdict: VerdictNone, Direction: policy.Ingress,
		EndpointID: 7, Src: src, Dst: dst, SrcPort: 128, Proto: protoICMPv6,
		SrcIdentity: 256, DstIdentity: 2, IfIndex: 9, Len: 118,
	}
	if ev != want {
		t.Errorf("decoded %+v\nwant    %+v", ev, want)
	}
	if line := ev.String(); !strings.Contains(line, "[fd00:80::2]:128 -> [2001:db8::9]:0") {
		t.Errorf("%q does not show the IPv6 ends", line)
	}
	if _, err := decodeEvent(b[:event6Size-1]); err == nil {
		t.Error("short IPv6 event decoded")
	}
}
