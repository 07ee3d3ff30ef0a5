package datapath

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/ebpfnet/ebpfnet/bpf"
)

func testEndpoint() Endpoint {
	return Endpoint{
		ID:               2665,
		ContainerID:      "32327f7b4cf9",
		ContainerName:    "app1",
		DockerNetworkID:  "f1e88970d55e",
		DockerEndpointID: "e8a3e46f56b964d0",
		IfName:           HostIfName("e8a3e46f56b964d0"),
		IfIndex:          19,
		PeerName:         PeerIfName("e8a3e46f56b964d0"),
		LXCMAC:           HardwareAddr{0x6e, 0xb0, 0x7d, 0x4e, 0x6b, 0xe5},
		NodeMAC:          HardwareAddr{0x42, 0x23, 0xdc, 0x4d, 0x79, 0xb1},
		IPv4:             netip.MustParsePrefix("10.11.255.104/16"),
		Network: Network{
			Index:   7,
			Subnet:  netip.MustParsePrefix("10.11.0.0/16"),
			Gateway: netip.MustParseAddr("10.11.0.1"),
		},
		Identity: 12022,
		Labels:   map[string]string{"id": "app1", "evil": "x */ y"},
	}
}

func TestPatchedConstantsReadBackThroughCollectionSpec(t *testing.T) {
	tmpl, err := parseTemplate(bpf.LXCTemplate)
	if err != nil {
		t.Fatal(err)
	}
	ep := testEndpoint()
	obj, err := tmpl.instantiate(constantsOf(&ep))
	if err != nil {
		t.Fatal(err)
	}
	if len(obj) != len(bpf.LXCTemplate) {
		t.Fatalf("patched object is %d bytes, template %d", len(obj), len(bpf.LXCTemplate))
	}
	// Go through a file as CreateEndpoint does.
	path := filepath.Join(t.TempDir(), ObjectFile)
	if err := os.WriteFile(path, obj, 0o644); err != nil {
		t.Fatal(err)
	}
	spec, err := ebpf.LoadCollectionSpec(path)
	if err != nil {
		t.Fatal(err)
	}
	var ip [4]byte
	var lxc, node [6]byte
	var id, netID uint32
	for name, out := range map[string]any{
		"LXC_IPV4": &ip, "LXC_MAC": &lxc, "NODE_MAC": &node,
		"LXC_ID": &id, "NETWORK_ID": &netID,
	} {
		v := spec.Variables[name]
		if v == nil {
			t.Fatalf("variable %s missing", name)
		}
		if err := v.Get(out); err != nil {
			t.Fatalf("get %s: %v", name, err)
		}
	}
	if ip != [4]byte{10, 11, 255, 104} {
		t.Errorf("LXC_IPV4 = %v, want network byte order of 10.11.255.104", ip)
	}
	if !bytes.Equal(lxc[:], ep.LXCMAC) || !bytes.Equal(node[:], ep.NodeMAC) {
		t.Errorf("MACs = %x/%x, want %v/%v", lxc, node, ep.LXCMAC, ep.NodeMAC)
	}
	if id != 2665 || netID != 7 {
		t.Errorf("LXC_ID, NETWORK_ID = %d, %d", id, netID)
	}
	// The identity is run-time state in ebpfnet_endpoints, not a constant.
	if spec.Variables["SECLABEL"] != nil {
		t.Error("object still carries a SECLABEL constant")
	}
	// The template itself stays untouched and all-zero.
	tspec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(bpf.LXCTemplate))
	if err != nil {
		t.Fatal(err)
	}
	if err := tspec.Variables["LXC_ID"].Get(&id); err != nil || id != 0 {
		t.Errorf("template LXC_ID = %d (%v), want 0", id, err)
	}
}

// TestSpecForLoadsTheWrittenBytes: the spec CreateEndpoint loads without
// parsing must describe the same .rodata as parsing the written object.
func TestSpecForLoadsTheWrittenBytes(t *testing.T) {
	tmpl, err := parseTemplate(bpf.LXCTemplate)
	if err != nil {
		t.Fatal(err)
	}
	ep := testEndpoint()
	obj, err := tmpl.instantiate(constantsOf(&ep))
	if err != nil {
		t.Fatal(err)
	}
	got, err := tmpl.specFor(obj)
	if err != nil {
		t.Fatal(err)
	}
	want, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(obj))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Maps[".rodata"].Contents[0].Value.([]byte), want.Maps[".rodata"].Contents[0].Value.([]byte)) {
		t.Error(".rodata differs from the parsed object")
	}
	for name, wv := range want.Variables {
		gv := got.Variables[name]
		if gv == nil || !bytes.Equal(gv.Value, wv.Value) || gv.Offset != wv.Offset {
			t.Errorf("variable %s: got %+v, want %+v", name, gv, wv)
		}
	}
	var netID uint32
	if err := got.Variables["NETWORK_ID"].Get(&netID); err != nil || netID != 7 {
		t.Errorf("NETWORK_ID = %d (%v), want 7", netID, err)
	}
	// The template spec itself is untouched.
	if err := tmpl.spec.Variables["NETWORK_ID"].Get(&netID); err != nil || netID != 0 {
		t.Errorf("template NETWORK_ID = %d (%v), want 0", netID, err)
	}
	// The object does not depend on the veth: it is loaded before the
	// veth exists.
	if _, ok := got.Variables["LXC_IFINDEX"]; ok {
		t.Error("the object still has LXC_IFINDEX")
	}
	if _, err := tmpl.specFor(obj[:len(obj)-1]); err == nil {
		t.Error("object of another size accepted")
	}
}

func TestInstantiateRejectsBadConstants(t *testing.T) {
	tmpl, err := parseTemplate(bpf.LXCTemplate)
	if err != nil {
		t.Fatal(err)
	}
	ep := testEndpoint()
	c := constantsOf(&ep)
	c.LXCMAC = HardwareAddr{1, 2, 3}
	if _, err := tmpl.instantiate(c); err == nil {
		t.Error("short MAC accepted")
	}
	c = constantsOf(&ep)
	c.IPv4 = netip.MustParseAddr("fd00::1")
	if _, err := tmpl.instantiate(c); err == nil {
		t.Error("IPv6 address accepted")
	}
}

func TestParseTemplateRejectsGarbage(t *testing.T) {
	if _, err := parseTemplate([]byte("not an ELF")); err == nil {
		t.Fatal("garbage accepted as template")
	}
}

func TestEPConfigRoundTrip(t *testing.T) {
	ep := testEndpoint()
	hdr, err := WriteEPConfig("ebpfnet 0.1 test", &ep)
	if err != nil {
		t.Fatal(err)
	}
	s := string(hdr)
	if !strings.HasPrefix(s, "/*\n * EBPFNET_BASE64_") {
		t.Fatalf("record is not the first comment line:\n%s", s)
	}
	for _, want := range []string{
		" * Container ID: 32327f7b4cf9\n",
		" * Container name: app1\n",
		" * IPv4 address: 10.11.255.104\n",
		" * Identity: 12022\n",
		" * PolicyMap: ebpfnet_policy_02665\n",
		" * NodeMAC: 42:23:dc:4d:79:b1\n",
		" * - {id app1 container}\n",
		// Cilium's rendering of the same address and ID.
		"DEFINE_U32(LXC_IPV4, 0x68ff0b0a); /* 1761544970 */\n#define LXC_IPV4 fetch_u32(LXC_IPV4)\n",
		"DEFINE_U32(LXC_ID, 0x00000a69); /* 2665 */\n",
		"DEFINE_MAC(NODE_MAC, 0x42, 0x23, 0xdc, 0x4d, 0x79, 0xb1);\n#define NODE_MAC fetch_mac(NODE_MAC)\n",
		" * Maps: ebpfnet_policy_02665 (own policy), ebpfnet_endpoints,",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("ep_config.h lacks %q", want)
		}
	}
	// The defines are exactly the template's patched constants.
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(bpf.LXCTemplate))
	if err != nil {
		t.Fatal(err)
	}
	defined := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^DEFINE_(?:U32|MAC)\((\w+),`).FindAllStringSubmatch(s, -1) {
		defined[m[1]] = true
	}
	for name := range spec.Variables {
		if !defined[name] {
			t.Errorf("the template's constant %s has no DEFINE line", name)
		}
		delete(defined, name)
	}
	for name := range defined {
		t.Errorf("ep_config.h defines %s, which the template does not read", name)
	}
	if strings.Contains(s, "#define POLICY_MAP") || strings.Contains(s, "SECLABEL") {
		t.Errorf("ep_config.h still carries defines nothing reads:\n%s", s)
	}
	// A label must not be able to end the comment early.
	if strings.Contains(s, "x */ y") || !strings.Contains(s, " * - {evil x * / y container}\n") {
		t.Errorf("user text can close a comment:\n%s", s)
	}
	ver, got, err := ParseEPConfig(hdr)
	if err != nil {
		t.Fatal(err)
	}
	if ver != "ebpfnet 0.1 test" {
		t.Errorf("version = %q", ver)
	}
	a, _ := json.Marshal(ep)
	b, _ := json.Marshal(got)
	if !bytes.Equal(a, b) {
		t.Errorf("round trip changed the endpoint:\n%s\n%s", a, b)
	}
}

func TestParseEPConfigErrors(t *testing.T) {
	for name, in := range map[string]string{
		"empty":        "",
		"no record":    "/*\n * Container ID: x\n */\n",
		"no colon":     "/*\n * EBPFNET_BASE64_abc\n */\n",
		"bad base64":   "/*\n * EBPFNET_BASE64_!!!:???\n */\n",
		"bad json":     "/*\n * EBPFNET_BASE64_djE=:bm90IGpzb24=\n */\n",
		"torn at half": "/*\n * EBPFNET_BASE64_djE=:eyJJRCI6M\n",
	} {
		if _, _, err := ParseEPConfig([]byte(in)); err == nil {
			t.Errorf("%s: parsed without error", name)
		}
	}
}

func TestNamesAndMACs(t *testing.T) {
	id := "e8a3e46f56b964d0d05120aef034701264b483ed0a6b8ddb7b315e103b28a68f"
	host, peer := HostIfName(id), PeerIfName(id)
	if !regexp.MustCompile(`^lxc[0-9a-f]{12}$`).MatchString(host) || len(host) > 15 {
		t.Errorf("host name %q", host)
	}
	if peer != "tmp"+host[3:] {
		t.Errorf("peer name %q does not share %q's hash", peer, host)
	}
	if HostIfName(id) != host || HostIfName(id+"x") == host {
		t.Error("host name not a stable function of the endpoint ID")
	}
	lxc, node := LXCMACFor(id), NodeMACFor(id)
	for _, m := range []HardwareAddr{lxc, node} {
		if len(m) != 6 || m[0]&0x01 != 0 || m[0]&0x02 == 0 {
			t.Errorf("MAC %v is not locally administered unicast", m)
		}
	}
	if bytes.Equal(lxc, node) {
		t.Error("container and node MAC are equal")
	}
	if !bytes.Equal(LXCMACFor(id), lxc) || bytes.Equal(LXCMACFor(id+"x"), lxc) {
		t.Error("LXC MAC not a stable function of the endpoint ID")
	}
	if got := PolicyMapName(42); got != "ebpfnet_policy_00042" {
		t.Errorf("PolicyMapName(42) = %q", got)
	}
}

func TestHardwareAddrJSON(t *testing.T) {
	var v struct{ M, N HardwareAddr }
	v.M = HardwareAddr{0xaa, 0xbb, 0xcc, 0, 1, 2}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"M":"aa:bb:cc:00:01:02","N":""}` {
		t.Fatalf("JSON = %s", b)
	}
	var back struct{ M, N HardwareAddr }
	if err := json.Unmarshal(b, &back); err != nil || !bytes.Equal(back.M, v.M) || back.N != nil {
		t.Fatalf("back = %+v, %v", back, err)
	}
	if err := json.Unmarshal([]byte(`{"M":"zz"}`), &back); err == nil {
		t.Error("bad MAC accepted")
	}
}

func TestClaimEndpointIDSkipsLiveAndLeftoverDirectories(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"1", "3", "templates", "0", "junk"} {
		if err := os.Mkdir(filepath.Join(dir, n), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	d := &Datapath{cfg: Config{StateDir: dir}, eps: map[uint16]*endpointState{2: {}, 5: {}}}
	for _, want := range []uint16{4, 6} {
		id, err := d.claimEndpointID()
		if err != nil || id != want {
			t.Fatalf("claim = %d, %v; want %d", id, err, want)
		}
		if fi, err := os.Stat(filepath.Join(dir, strconv.Itoa(int(id)))); err != nil || !fi.IsDir() {
			t.Errorf("epid %d claimed without its directory: %v", id, err)
		}
	}

	full := &Datapath{cfg: Config{StateDir: t.TempDir()}, eps: map[uint16]*endpointState{}}
	for i := 1; i <= MaxEndpointID; i++ {
		full.eps[uint16(i)] = &endpointState{}
	}
	if _, err := full.claimEndpointID(); !errors.Is(err, ErrNoFreeEndpointID) {
		t.Errorf("full range: %v", err)
	}

	gone := &Datapath{cfg: Config{StateDir: filepath.Join(t.TempDir(), "missing")}, eps: map[uint16]*endpointState{}}
	if _, err := gone.claimEndpointID(); err == nil || errors.Is(err, ErrNoFreeEndpointID) {
		t.Errorf("missing state directory: %v", err)
	}
}

func TestReasonNames(t *testing.T) {
	if DropNotSameNetwork.Name() != "DROP_NOT_SAME_NETWORK" || !DropInvalidSIP.IsDrop() || ReasonForwarded.IsDrop() {
		t.Error("reason names or classes wrong")
	}
	if DropPolicy.String() != "Policy denied" || ReasonPolicyAudit.IsDrop() {
		t.Errorf("DropPolicy reads %q", DropPolicy)
	}
	if Reason(200).Name() != "REASON_200" || Reason(200).String() != "Unknown reason 200" {
		t.Error("unknown reason name")
	}
}

func mustPrefix(t testing.TB, s string) netip.Prefix {
	t.Helper()
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A dual-stack endpoint's record carries its IPv6 address and network,
// and reads back whole; a record of a version before IPv6 reads back
// without them; an IPv6-only endpoint's object has LXC_IPV4 0.
func TestEPConfigIPv6(t *testing.T) {
	ep := testEndpoint()
	ep.IPv6 = netip.MustParsePrefix("fd00:80::68/64")
	ep.Network.Subnet6 = netip.MustParsePrefix("fd00:80::/64")
	ep.Network.Gateway6 = netip.MustParseAddr("fd00:80::1")
	hdr, err := WriteEPConfig("v", &ep)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(hdr), " * IPv6 address: fd00:80::68\n") {
		t.Errorf("ep_config.h lacks the IPv6 address:\n%s", hdr)
	}
	_, got, err := ParseEPConfig(hdr)
	if err != nil || got.IPv6 != ep.IPv6 || got.Network != ep.Network {
		t.Errorf("read back %v %+v, %v", got.IPv6, got.Network, err)
	}
	// What the version before IPv6 wrote: no IPv6 keys at all.
	old := testEndpoint()
	js, _ := json.Marshal(old)
	if strings.Contains(string(js), "IPv6") || strings.Contains(string(js), "subnet6") {
		t.Errorf("an endpoint without IPv6 records IPv6 keys: %s", js)
	}

	v6only := ep
	v6only.IPv4, v6only.Network.Subnet, v6only.Network.Gateway = netip.Prefix{}, netip.Prefix{}, netip.Addr{}
	if err := validateEndpoint(&v6only); err != nil {
		t.Errorf("IPv6-only endpoint refused: %v", err)
	}
	if err := validateNetwork(v6only.Network); err != nil {
		t.Errorf("IPv6-only network refused: %v", err)
	}
	tmpl, err := parseTemplate(bpf.LXCTemplate)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := tmpl.instantiate(constantsOf(&v6only))
	if err != nil {
		t.Fatal(err)
	}
	if off := tmpl.offsets[symLXCIPv4]; !bytes.Equal(obj[off:off+4], []byte{0, 0, 0, 0}) {
		t.Errorf("LXC_IPV4 of an IPv6-only endpoint is % x", obj[off:off+4])
	}

	for name, bad := range map[string]func(*Endpoint){
		"no address":           func(e *Endpoint) { e.IPv6 = netip.Prefix{} },
		"an IPv4 IPv6 address": func(e *Endpoint) { e.IPv6 = netip.MustParsePrefix("10.0.0.1/24") },
		"a mapped address":     func(e *Endpoint) { e.IPv6 = netip.MustParsePrefix("::ffff:10.0.0.1/120") },
		"no IPv6 gateway":      func(e *Endpoint) { e.Network.Gateway6 = netip.Addr{} },
	} {
		e := v6only
		bad(&e)
		if err := validateEndpoint(&e); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	for name, n := range map[string]Network{
		"no subnet at all":      {Index: 1},
		"IPv6 without gateway":  {Index: 1, Subnet6: ep.Network.Subnet6},
		"an IPv4 subnet as six": {Index: 1, Subnet6: ep.Network.Subnet, Gateway6: ep.Network.Gateway},
	} {
		if err := validateNetwork(n); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
