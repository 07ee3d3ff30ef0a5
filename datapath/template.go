package datapath

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
)

// Names of the per-endpoint constants in bpf/lib/config.h.
const (
	symLXCIPv4    = "LXC_IPV4"
	symLXCMAC     = "LXC_MAC"
	symNodeMAC    = "NODE_MAC"
	symLXCID      = "LXC_ID"
	symNetworkID  = "NETWORK_ID"
	symSecLabel   = "SECLABEL"
	rodataSection = ".rodata"
)

// constSizes is what the C side declares; a mismatch means the template and
// this code disagree, which must fail loudly rather than patch the wrong
// bytes.
func constSizes() map[string]uint64 {
	return map[string]uint64{
		symLXCIPv4: 4, symLXCMAC: 6, symNodeMAC: 6,
		symLXCID: 4, symNetworkID: 4, symSecLabel: 4,
	}
}

// template is the compiled object with the file offsets of its constants,
// parsed once so that instantiating an endpoint is a copy and a few writes.
type template struct {
	raw     []byte
	sha     string
	order   binary.ByteOrder
	offsets map[string]uint64 // symbol -> file offset of its bytes
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
	t := &template{raw: raw, order: f.ByteOrder, offsets: map[string]uint64{}}
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
	return t, nil
}

// endpointConstants are the values one endpoint's object carries.
type endpointConstants struct {
	IPv4      netip.Addr
	LXCMAC    HardwareAddr
	NodeMAC   HardwareAddr
	ID        uint32
	NetworkID uint32
	SecLabel  uint32
}

func constantsOf(ep *Endpoint) endpointConstants {
	return endpointConstants{
		IPv4:      ep.IPv4.Addr(),
		LXCMAC:    ep.LXCMAC,
		NodeMAC:   ep.NodeMAC,
		ID:        uint32(ep.ID),
		NetworkID: ep.Network.Index,
		SecLabel:  ep.Identity,
	}
}

// instantiate returns a copy of the template with c patched in. The IPv4
// address is stored as is (network byte order, a __be32); integers use the
// object's byte order.
func (t *template) instantiate(c endpointConstants) ([]byte, error) {
	if !c.IPv4.Is4() {
		return nil, fmt.Errorf("instantiate template: %v is not an IPv4 address", c.IPv4)
	}
	if len(c.LXCMAC) != 6 || len(c.NodeMAC) != 6 {
		return nil, fmt.Errorf("instantiate template: MACs must be 6 bytes (lxc %v, node %v)", c.LXCMAC, c.NodeMAC)
	}
	out := bytes.Clone(t.raw)
	ip := c.IPv4.As4()
	copy(out[t.offsets[symLXCIPv4]:], ip[:])
	copy(out[t.offsets[symLXCMAC]:], c.LXCMAC)
	copy(out[t.offsets[symNodeMAC]:], c.NodeMAC)
	t.order.PutUint32(out[t.offsets[symLXCID]:], c.ID)
	t.order.PutUint32(out[t.offsets[symNetworkID]:], c.NetworkID)
	t.order.PutUint32(out[t.offsets[symSecLabel]:], c.SecLabel)
	return out, nil
}
