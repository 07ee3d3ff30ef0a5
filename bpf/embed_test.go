package bpf

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/ebpfnet/ebpfnet/testutil"
)

// TestTemplateHasProgramsMapsAndConstants guards the contract between the C
// side and datapath: the names the Go code looks up must exist.
func TestTemplateHasProgramsMapsAndConstants(t *testing.T) {
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(LXCTemplate))
	if err != nil {
		t.Fatalf("parse template: %v", err)
	}
	for _, p := range []string{"from_container", "to_container", "handle_policy"} {
		if spec.Programs[p] == nil {
			t.Errorf("program %s missing", p)
		}
	}
	requirePinnedMaps(t, spec, "ebpfnet_endpoints", "ebpfnet_policy_lookups", "ebpfnet_calls", "ebpfnet_metrics")
	// The per-endpoint policy map is replaced by the daemon's own instance,
	// so it must not be pinned by name (one shared map for all).
	if ms := spec.Maps["ebpfnet_policy"]; ms == nil || ms.Pinning != ebpf.PinNone {
		t.Errorf("map ebpfnet_policy missing or pinned: %+v", ms)
	}
	for _, v := range []string{"LXC_IPV4", "LXC_MAC", "NODE_MAC", "LXC_ID", "NETWORK_ID"} {
		vs := spec.Variables[v]
		if vs == nil {
			t.Errorf("constant %s missing", v)
			continue
		}
		if !vs.Constant() {
			t.Errorf("%s is not in .rodata", v)
		}
	}
	// The object must not depend on the veth: datapath loads it while the
	// veth is being created.
	if spec.Variables["LXC_IFINDEX"] != nil {
		t.Error("constant LXC_IFINDEX is back")
	}
}

// TestNodeObjectHasProgramsAndMaps: the node programs datapath puts in
// ebpfnet_calls and on the overlay device, and the shared maps they use.
// They carry no endpoint's constants (those arrive in skb->cb), only the
// node's overlay device, and never read a policy map.
func TestNodeObjectHasProgramsAndMaps(t *testing.T) {
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(NodeObject))
	if err != nil {
		t.Fatalf("parse node object: %v", err)
	}
	for _, p := range []string{"node_from_container", "node_to_container", "node_policy_verdict", "node_from_overlay"} {
		if spec.Programs[p] == nil {
			t.Errorf("program %s missing", p)
		}
	}
	requirePinnedMaps(t, spec, "ebpfnet_endpoints", "ebpfnet_policy_lookups", "ebpfnet_calls", "ebpfnet_metrics", "ebpfnet_events", "ebpfnet_ipcache", "ebpfnet_ct4", "ebpfnet_frag4", "ebpfnet_networks")
	if len(spec.Variables) != 1 || spec.Variables["OVERLAY_IFINDEX"] == nil {
		t.Errorf("node object has global variables %v, want OVERLAY_IFINDEX alone", spec.Variables)
	}
	for name, p := range spec.Programs {
		for _, ins := range p.Instructions {
			if ins.Reference() == "ebpfnet_policy" {
				t.Errorf("%s reads an endpoint's policy map", name)
			}
		}
	}
}

func requirePinnedMaps(t *testing.T, spec *ebpf.CollectionSpec, names ...string) {
	t.Helper()
	for _, m := range names {
		ms := spec.Maps[m]
		if ms == nil {
			t.Errorf("map %s missing", m)
			continue
		}
		if ms.Pinning != ebpf.PinByName {
			t.Errorf("map %s is not pinned by name", m)
		}
	}
}

// TestObjectsMatchSources rebuilds both objects in a scratch copy of this
// directory and demands the same bytes: the committed objects are what the
// sources say, and the build does not depend on the checkout path.
func TestObjectsMatchSources(t *testing.T) {
	testutil.RequireCommand(t, "clang-19", "llvm-strip-19")
	dir := filepath.Join(t.TempDir(), "elsewhere", "bpf")
	if err := os.MkdirAll(filepath.Join(dir, "lib"), 0o755); err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob("lib/*.h")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range append(files, "bpf_lxc.c", "bpf_node.c", "build.sh") {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for src, committed := range map[string][]byte{"bpf_lxc.c": LXCTemplate, "bpf_node.c": NodeObject} {
		out := filepath.Join(dir, "rebuilt.o")
		cmd := exec.Command("sh", filepath.Join(dir, "build.sh"), src, out)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build.sh %s: %v\n%s", src, err, b)
		}
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, committed) {
			t.Errorf("the committed object of %s differs from a fresh build: run 'make bpf' and commit it", src)
		}
	}
}
