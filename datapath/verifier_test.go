package datapath

import (
	"net/netip"
	"regexp"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/ebpfnet/ebpfnet/bpf"
	"github.com/ebpfnet/ebpfnet/testutil"
)

// TestVerifierStats loads one endpoint's programs against private, unpinned
// maps and logs what the verifier did for each: the instructions it
// processed and the states it kept. Verification is most of an endpoint's
// bring-up time (BenchmarkCreateEndpoint), so watch these numbers when
// changing bpf/.
func TestVerifierStats(t *testing.T) {
	testutil.RequireRoot(t)
	tmpl, err := parseTemplate(bpf.LXCTemplate)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := tmpl.instantiate(endpointConstants{
		IPv4:      netip.MustParseAddr("10.251.0.2"),
		LXCMAC:    HardwareAddr{0x02, 0, 0, 0, 0, 2},
		NodeMAC:   HardwareAddr{0x02, 0, 0, 0, 0, 1},
		ID:        7,
		NetworkID: 1,
		IfIndex:   1,
	})
	if err != nil {
		t.Fatal(err)
	}
	spec, err := tmpl.specFor(obj)
	if err != nil {
		t.Fatal(err)
	}
	spec = spec.Copy()
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats},
	})
	if err != nil {
		t.Fatalf("load: %+v", err)
	}
	defer coll.Close()
	stats := regexp.MustCompile(`(?s)verification time.*`)
	var total uint32
	for _, name := range []string{progFrom, progTo, progPolicy} {
		p := coll.Programs[name]
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		n, _ := info.VerifiedInstructions()
		total += n
		t.Logf("%-15s verified_insns %6d  %s", name, n, stats.FindString(p.VerifierLog))
	}
	t.Logf("total verified_insns %d", total)
}
