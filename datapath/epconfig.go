package datapath

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// recordPrefix starts the restore record, the first line of ep_config.h.
const recordPrefix = "EBPFNET_BASE64_"

// ErrNoRecord means an ep_config.h carries no restore record.
var ErrNoRecord = errors.New("ep_config.h has no " + recordPrefix + " record")

// commentSafe keeps user-chosen text (names, labels) from closing the C
// comment it is printed in; the base64 record stays the source of truth.
func commentSafe(s string) string {
	s = strings.ReplaceAll(s, "*/", "* /")
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, s)
}

// WriteEPConfig renders an endpoint's ep_config.h the way Cilium lays it
// out: the restore record, readable lines, then the DEFINE_* and #define
// lines of exactly the constants patched into the endpoint's bpf_lxc.o
// (lib/config.h; a test holds the two together), and the maps it uses.
func WriteEPConfig(version string, ep *Endpoint) ([]byte, error) {
	js, err := json.Marshal(ep)
	if err != nil {
		return nil, fmt.Errorf("encode endpoint %d record: %w", ep.ID, err)
	}
	var b bytes.Buffer
	enc := base64.StdEncoding
	fmt.Fprintf(&b, "/*\n * %s%s:%s\n * \n", recordPrefix,
		enc.EncodeToString([]byte(version)), enc.EncodeToString(js))
	fmt.Fprintf(&b, " * Container ID: %s\n", commentSafe(ep.ContainerID))
	fmt.Fprintf(&b, " * Container name: %s\n", commentSafe(ep.ContainerName))
	ipv4 := ""
	if ep.IPv4.IsValid() {
		ipv4 = ep.IPv4.Addr().String()
	}
	fmt.Fprintf(&b, " * IPv4 address: %s\n", ipv4)
	if ep.IPv6.IsValid() {
		fmt.Fprintf(&b, " * IPv6 address: %s\n", ep.IPv6.Addr())
	}
	fmt.Fprintf(&b, " * Identity: %d\n", ep.Identity)
	fmt.Fprintf(&b, " * PolicyMap: %s\n", PolicyMapName(ep.ID))
	fmt.Fprintf(&b, " * NodeMAC: %s\n */\n\n", ep.NodeMAC)

	b.WriteString("/*\n * Labels:\n")
	keys := make([]string, 0, len(ep.Labels))
	for k := range ep.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, " * - {%s %s container}\n", commentSafe(k), commentSafe(ep.Labels[k]))
	}
	b.WriteString(" */\n\n")

	var ip [4]byte
	if ep.IPv4.Addr().Is4() {
		ip = ep.IPv4.Addr().As4()
	}
	// The value as a little-endian u32 load of the network-order bytes:
	// what the program reads from .rodata on this (BPF little-endian) target.
	defineU32(&b, "LXC_IPV4", binary.LittleEndian.Uint32(ip[:]))
	defineU32(&b, "LXC_ID", uint32(ep.ID))
	defineMAC(&b, "LXC_MAC", ep.LXCMAC)
	defineMAC(&b, "NODE_MAC", ep.NodeMAC)
	defineU32(&b, "NETWORK_ID", ep.Network.Index)
	// Documentation only, not defines: the object reads no map names
	// and no identity from here (the identity is in the endpoint's
	// ebpfnet_endpoints entry, so a label change is one map write).
	fmt.Fprintf(&b, "\n/*\n * Maps: %s (own policy), %s, %s, %s, %s, %s, %s\n */\n",
		PolicyMapName(ep.ID), EndpointsMapName, IPCacheMapName, CTMapName, MetricsMapName, EventsMapName, PolicyLookupsName)
	return b.Bytes(), nil
}

func defineU32(b *bytes.Buffer, name string, v uint32) {
	fmt.Fprintf(b, "DEFINE_U32(%s, 0x%08x); /* %d */\n", name, v, v)
	fmt.Fprintf(b, "#define %s fetch_u32(%s)\n", name, name)
}

func defineMAC(b *bytes.Buffer, name string, mac HardwareAddr) {
	m := make([]byte, 6)
	copy(m, mac)
	fmt.Fprintf(b, "DEFINE_MAC(%s, 0x%02x, 0x%02x, 0x%02x, 0x%02x, 0x%02x, 0x%02x);\n",
		name, m[0], m[1], m[2], m[3], m[4], m[5])
	fmt.Fprintf(b, "#define %s fetch_mac(%s)\n", name, name)
}

// ParseEPConfig reads the restore record back from an ep_config.h: the
// version that wrote it and the endpoint. Only the record counts; the rest
// of the file is for people.
func ParseEPConfig(data []byte) (string, Endpoint, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 4*1024*1024)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		line = strings.TrimSpace(strings.TrimPrefix(line, "*"))
		rest, ok := strings.CutPrefix(line, recordPrefix)
		if !ok {
			continue
		}
		verB64, epB64, ok := strings.Cut(rest, ":")
		if !ok {
			return "", Endpoint{}, fmt.Errorf("restore record: missing ':' between version and endpoint")
		}
		ver, err := base64.StdEncoding.DecodeString(verB64)
		if err != nil {
			return "", Endpoint{}, fmt.Errorf("restore record: decode version: %w", err)
		}
		js, err := base64.StdEncoding.DecodeString(epB64)
		if err != nil {
			return "", Endpoint{}, fmt.Errorf("restore record: decode endpoint: %w", err)
		}
		var ep Endpoint
		if err := json.Unmarshal(js, &ep); err != nil {
			return "", Endpoint{}, fmt.Errorf("restore record: endpoint JSON: %w", err)
		}
		return string(ver), ep, nil
	}
	if err := sc.Err(); err != nil {
		return "", Endpoint{}, fmt.Errorf("read ep_config.h: %w", err)
	}
	return "", Endpoint{}, ErrNoRecord
}
