package datapath

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"maps"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// Names of the per-endpoint constants in bpf/lib/config.h.
const (
	symLXCIPv4    = "LXC_IPV4"
	symLXCMAC     = "LXC_MAC"
	symNodeMAC    = "NODE_MAC"
	symLXCID      = "LXC_ID"
	symNetworkID  = "NETWORK_ID"
	rodataSection = ".rodata"
)

// constSizes is what the C side declares; a mismatch means the template and
// this code disagree, which must fail loudly rather than patch the wrong
// bytes.
func constSizes() map[string]uint64 {
	return map[string]uint64{
		symLXCIPv4: 4, symLXCMAC: 6, symNodeMAC: 6,
		symLXCID: 4, symNetworkID: 4,
	}
}

// template is the compiled object with the file offsets of its constants,
// parsed once so that instantiating an endpoint is a copy and a few writes,
// and loading it needs no parsing at all (see specFor).
type template struct {
	raw     []byte
	sha     string
	order   binary.ByteOrder
	offsets map[string]uint64 // symbol -> file offset of its bytes
	// spec is the template parsed by cilium/ebpf, with its BTF: the
	// per-endpoint policy map is made from it, and keeps its types for
	// bpftool.
	spec *ebpf.CollectionSpec
	// bare is spec without BTF, what each endpoint loads (noBTF). Per
	// endpoint only .rodata differs, and specFor swaps in its bytes.
	bare       *ebpf.CollectionSpec
	rodataOff  uint64 // file offset of .rodata
	rodataSize uint64
}

// parseTemplate finds every constant in .rodata. A symbol's bytes sit at the
// section's file offset plus the symbol's value (its offset in the section,
// for a relocatable object).
func parseTemplate(raw []byte) (*template, error) {
	f, err := elf.NewFile(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("parse template ELF: %w", err)
	}
	defer f.Close()
	var rodata *elf.Section
	var rodataIdx elf.SectionIndex
	for i, s := range f.Sections {
		if s.Name == rodataSection {
			rodata, rodataIdx = s, elf.SectionIndex(i)
		}
	}
	if rodata == nil || rodata.Type == elf.SHT_NOBITS {
		return nil, fmt.Errorf("template has no %s with file contents", rodataSection)
	}
	syms, err := f.Symbols()
	if err != nil {
		return nil, fmt.Errorf("read template symbols: %w", err)
	}
	want := constSizes()
	t := &template{raw: raw, order: f.ByteOrder, offsets: map[string]uint64{},
		rodataOff: rodata.Offset, rodataSize: rodata.Size}
	if rodata.Offset+rodata.Size > uint64(len(raw)) {
		return nil, fmt.Errorf("template %s lies outside the file", rodataSection)
	}
	for _, s := range syms {
		size, ok := want[s.Name]
		if !ok || s.Section != rodataIdx {
			continue
		}
		if s.Size != size {
			return nil, fmt.Errorf("template constant %s is %d bytes, want %d", s.Name, s.Size, size)
		}
		if s.Value+size > rodata.Size {
			return nil, fmt.Errorf("template constant %s lies outside %s", s.Name, rodataSection)
		}
		off := rodata.Offset + s.Value
		if off+size > uint64(len(raw)) {
			return nil, fmt.Errorf("template constant %s lies outside the file", s.Name)
		}
		t.offsets[s.Name] = off
	}
	for name := range want {
		if _, ok := t.offsets[name]; !ok {
			return nil, fmt.Errorf("template lacks constant %s in %s", name, rodataSection)
		}
	}
	sum := sha256.Sum256(raw)
	t.sha = hex.EncodeToString(sum[:])
	if t.spec, err = ebpf.LoadCollectionSpecFromReader(bytes.NewReader(raw)); err != nil {
		return nil, fmt.Errorf("parse template: %w", err)
	}
	// No BTF line info goes to the kernel: per load it cost marshalling
	// every source line into the program's BTF strings, and the kernel
	// checking and moving it with every patched instruction, for the
	// verifier's log alone (which still names instructions and
	// functions). Function info stays: global functions need it.
	for _, ps := range t.spec.Programs {
		for i := range ps.Instructions {
			ps.Instructions[i] = ps.Instructions[i].WithSource(nil)
		}
	}
	ro := t.spec.Maps[rodataSection]
	if ro == nil || len(ro.Contents) != 1 {
		return nil, fmt.Errorf("template %s is not a single-value data section", rodataSection)
	}
	if v, ok := ro.Contents[0].Value.([]byte); !ok || uint64(len(v)) != t.rodataSize {
		return nil, fmt.Errorf("template %s contents do not match the ELF section", rodataSection)
	}
	for name, v := range t.spec.Variables {
		if v.SectionName == rodataSection && uint64(v.Offset)+uint64(v.Size()) > t.rodataSize {
			return nil, fmt.Errorf("template variable %s lies outside %s", name, rodataSection)
		}
	}
	t.bare = noBTF(t.spec)
	return t, nil
}

// noBTF is spec without its BTF: no function info on the programs, no
// types on the maps. Then no BTF blob goes to the kernel with each
// endpoint's programs, which took 0.15 of the 0.51 ms a load took (p50,
// BenchmarkLoadPrograms). The endpoint's programs call no global function
// (those need their BTF); the verifier test loads them as endpoints do,
// so one that did would fail it. The verifier knows the frozen .rodata's
// constants without BTF; the shared maps the programs use are replaced by
// the pinned ones, checked by size and type.
func noBTF(spec *ebpf.CollectionSpec) *ebpf.CollectionSpec {
	bare := spec.Copy()
	bare.Types = nil
	for _, ps := range bare.Programs {
		for i := range ps.Instructions {
			ps.Instructions[i] = btf.WithFuncMetadata(ps.Instructions[i], nil)
		}
	}
	for _, ms := range bare.Maps {
		ms.Key, ms.Value = nil, nil
	}
	return bare
}

// specFor returns the collection an instantiated object obj describes,
// without parsing obj: instantiate only patches .rodata, so obj is the
// template with other .rodata bytes. The .rodata contents and every
// variable in it are slices of obj itself, so what gets loaded is exactly
// the bytes written to bpf_lxc.o. obj must stay unmodified until loaded.
//
// Programs and other maps are shared with the template spec, not copied:
// the loader copies each spec before it touches it (cilium/ebpf v0.22
// loadMap and loadProgram), and copying a program is most of what a
// CollectionSpec.Copy would cost.
func (t *template) specFor(obj []byte) (*ebpf.CollectionSpec, error) {
	if len(obj) != len(t.raw) {
		return nil, fmt.Errorf("object is %d bytes, template %d: not an instance of it", len(obj), len(t.raw))
	}
	rodata := obj[t.rodataOff : t.rodataOff+t.rodataSize : t.rodataOff+t.rodataSize]
	cs := &ebpf.CollectionSpec{
		Maps:      maps.Clone(t.bare.Maps),
		Programs:  t.bare.Programs,
		Variables: make(map[string]*ebpf.VariableSpec, len(t.bare.Variables)),
		Types:     t.bare.Types,
		ByteOrder: t.bare.ByteOrder,
	}
	ro := *t.bare.Maps[rodataSection]
	ro.Contents = []ebpf.MapKV{{Key: uint32(0), Value: rodata}}
	cs.Maps[rodataSection] = &ro
	for name, v := range t.bare.Variables {
		if v.SectionName != rodataSection {
			cs.Variables[name] = v
			continue
		}
		c := *v
		c.Value = rodata[c.Offset : c.Offset+v.Size() : c.Offset+v.Size()]
		cs.Variables[name] = &c
	}
	return cs, nil
}

// endpointConstants are the values one endpoint's object carries. The
// identity is not among them: the programs read it from the endpoint's
// ebpfnet_endpoints entry, so SetEndpointIdentity needs no reload.
type endpointConstants struct {
	IPv4      netip.Addr
	LXCMAC    HardwareAddr
	NodeMAC   HardwareAddr
	ID        uint32
	NetworkID uint32
}

func constantsOf(ep *Endpoint) endpointConstants {
	return endpointConstants{
		IPv4:      ep.IPv4.Addr(),
		LXCMAC:    ep.LXCMAC,
		NodeMAC:   ep.NodeMAC,
		ID:        uint32(ep.ID),
		NetworkID: ep.Network.Index,
	}
}

// instantiate returns a copy of the template with c patched in. The IPv4
// address is stored as is (network byte order, a __be32), 0 for an
// endpoint without IPv4; integers use the object's byte order.
func (t *template) instantiate(c endpointConstants) ([]byte, error) {
	if c.IPv4.IsValid() && !c.IPv4.Is4() {
		return nil, fmt.Errorf("instantiate template: %v is not an IPv4 address", c.IPv4)
	}
	if len(c.LXCMAC) != 6 || len(c.NodeMAC) != 6 {
		return nil, fmt.Errorf("instantiate template: MACs must be 6 bytes (lxc %v, node %v)", c.LXCMAC, c.NodeMAC)
	}
	out := bytes.Clone(t.raw)
	var ip [4]byte
	if c.IPv4.IsValid() {
		ip = c.IPv4.As4()
	}
	copy(out[t.offsets[symLXCIPv4]:], ip[:])
	copy(out[t.offsets[symLXCMAC]:], c.LXCMAC)
	copy(out[t.offsets[symNodeMAC]:], c.NodeMAC)
	t.order.PutUint32(out[t.offsets[symLXCID]:], c.ID)
	t.order.PutUint32(out[t.offsets[symNetworkID]:], c.NetworkID)
	return out, nil
}
