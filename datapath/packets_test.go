package datapath

import (
	"encoding/binary"
	"net/netip"
)

// ipv4Frame builds an Ethernet/IPv4 frame around l4, the protocol's header
// and payload, with the given IP id and flags/fragment offset field (in
// host order: 0x2000 is MF, the low 13 bits the offset in 8-byte units).
// Checksums are left 0: the programs do not check them.
func ipv4Frame(src, dst HardwareAddr, saddr, daddr netip.Addr, proto uint8, id, frag uint16, l4 []byte) []byte {
	pkt := make([]byte, 14+20+len(l4))
	copy(pkt[0:6], dst)
	copy(pkt[6:12], src)
	binary.BigEndian.PutUint16(pkt[12:], 0x0800)
	ip := pkt[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
	binary.BigEndian.PutUint16(ip[4:], id)
	binary.BigEndian.PutUint16(ip[6:], frag)
	ip[8] = 64
	ip[9] = proto
	s, d := saddr.As4(), daddr.As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	copy(ip[20:], l4)
	return pkt
}

// udpPacket builds an Ethernet/IPv4/UDP frame with payload bytes of data.
func udpPacket(src, dst HardwareAddr, saddr, daddr netip.Addr, sport, dport uint16, payload int) []byte {
	udp := make([]byte, 8+payload)
	binary.BigEndian.PutUint16(udp[0:], sport)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+payload))
	return ipv4Frame(src, dst, saddr, daddr, protoUDP, 1, 0, udp)
}

// icmpEcho builds an echo request (reply false) or reply with the id.
func icmpEcho(src, dst HardwareAddr, saddr, daddr netip.Addr, reply bool, id uint16) []byte {
	icmp := make([]byte, 8+32)
	if !reply {
		icmp[0] = 8
	}
	binary.BigEndian.PutUint16(icmp[4:], id)
	return ipv4Frame(src, dst, saddr, daddr, protoICMP, 1, 0, icmp)
}

// icmpError builds an ICMP error of type and code quoting the IP header
// and first 8 bytes of the L4 header of quoted, an Ethernet frame.
func icmpError(src, dst HardwareAddr, saddr, daddr netip.Addr, typ, code uint8, quoted []byte) []byte {
	q := quoted[14:]
	if len(q) > 28 {
		q = q[:28]
	}
	icmp := make([]byte, 8+len(q))
	icmp[0], icmp[1] = typ, code
	if typ == 3 && code == 4 {
		binary.BigEndian.PutUint16(icmp[6:], 1280) // next-hop MTU
	}
	copy(icmp[8:], q)
	return ipv4Frame(src, dst, saddr, daddr, protoICMP, 1, 0, icmp)
}

// fragments splits the IP payload of frame (an Ethernet/IPv4 frame) into
// fragments of at most size bytes of payload each (a multiple of 8), with
// IP id id, as a sender's kernel would.
func fragments(frame []byte, id uint16, size int) [][]byte {
	ip := frame[14:]
	proto := ip[9]
	saddr := netip.AddrFrom4([4]byte(ip[12:16]))
	daddr := netip.AddrFrom4([4]byte(ip[16:20]))
	var src, dst HardwareAddr = frame[6:12], frame[0:6]
	payload := ip[20:]
	var out [][]byte
	for off := 0; off < len(payload); off += size {
		end := min(off+size, len(payload))
		flags := uint16(off / 8)
		if end < len(payload) {
			flags |= 0x2000 // MF
		}
		out = append(out, ipv4Frame(src, dst, saddr, daddr, proto, id, flags, payload[off:end]))
	}
	return out
}

const protoUDP = 17

// ipv6Frame builds an Ethernet/IPv6 frame around payload, whose first
// header is nexthdr, with the given hop limit.
func ipv6Frame(src, dst HardwareAddr, saddr, daddr netip.Addr, nexthdr, hop uint8, payload []byte) []byte {
	pkt := make([]byte, 14+40+len(payload))
	copy(pkt[0:6], dst)
	copy(pkt[6:12], src)
	binary.BigEndian.PutUint16(pkt[12:], 0x86dd)
	ip := pkt[14:]
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(payload)))
	ip[6] = nexthdr
	ip[7] = hop
	s, d := saddr.As16(), daddr.As16()
	copy(ip[8:24], s[:])
	copy(ip[24:40], d[:])
	copy(ip[40:], payload)
	return pkt
}

// icmp6Checksum is the ICMPv6 checksum of msg (its checksum field zero)
// between saddr and daddr, with the IPv6 pseudo-header (RFC 8200 8.1).
func icmp6Checksum(saddr, daddr netip.Addr, msg []byte) uint16 {
	s, d := saddr.As16(), daddr.As16()
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(s[:])
	add(d[:])
	var tail [8]byte
	binary.BigEndian.PutUint32(tail[0:], uint32(len(msg)))
	tail[7] = protoICMPv6
	add(tail[:])
	add(msg)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// icmp6Frame builds an ICMPv6 message of typ and code with body after the
// 4-byte header, checksummed, in an IPv6 frame.
func icmp6Frame(src, dst HardwareAddr, saddr, daddr netip.Addr, hop, typ, code uint8, body []byte) []byte {
	msg := make([]byte, 4+len(body))
	msg[0], msg[1] = typ, code
	copy(msg[4:], body)
	binary.BigEndian.PutUint16(msg[2:], icmp6Checksum(saddr, daddr, msg))
	return ipv6Frame(src, dst, saddr, daddr, protoICMPv6, hop, msg)
}

// neighborSolicit builds a solicitation for target from saddr, with a
// source link-layer address option of sll unless it is nil.
func neighborSolicit(mac HardwareAddr, saddr, target netip.Addr, hop uint8, sll HardwareAddr) []byte {
	body := make([]byte, 4+16)
	t := target.As16()
	copy(body[4:], t[:])
	if sll != nil {
		body = append(body, 1, 1)
		body = append(body, sll...)
	}
	// To the target's solicited-node multicast address.
	dst := netip.AddrFrom16([16]byte{0xff, 0x02, 11: 1, 12: 0xff, 13: t[13], 14: t[14], 15: t[15]})
	dmac := HardwareAddr{0x33, 0x33, 0xff, t[13], t[14], t[15]}
	return icmp6Frame(mac, dmac, saddr, dst, hop, 135, 0, body)
}

// icmp6Echo builds an echo request (reply false) or reply with the id.
func icmp6Echo(src, dst HardwareAddr, saddr, daddr netip.Addr, reply bool, id uint16) []byte {
	body := make([]byte, 4+32)
	binary.BigEndian.PutUint16(body[0:], id)
	typ := uint8(128)
	if reply {
		typ = 129
	}
	return icmp6Frame(src, dst, saddr, daddr, 64, typ, 0, body)
}

// udp6Packet builds an Ethernet/IPv6/UDP frame with payload bytes of data.
func udp6Packet(src, dst HardwareAddr, saddr, daddr netip.Addr, sport, dport uint16, payload int) []byte {
	udp := make([]byte, 8+payload)
	binary.BigEndian.PutUint16(udp[0:], sport)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+payload))
	return ipv6Frame(src, dst, saddr, daddr, protoUDP, 64, udp)
}

// tcp6Packet is tcpPacket over IPv6.
func tcp6Packet(src, dst HardwareAddr, saddr, daddr netip.Addr, sport, dport uint16, flags byte) []byte {
	tcp := make([]byte, 20+64)
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	binary.BigEndian.PutUint32(tcp[4:], 1)
	binary.BigEndian.PutUint32(tcp[8:], 1)
	tcp[12] = 0x50
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	return ipv6Frame(src, dst, saddr, daddr, protoTCP, 64, tcp)
}

// icmp6Error builds an ICMPv6 error of typ and code quoting as much of
// quoted (an Ethernet frame) as a router would, with mtu in the Packet
// Too Big field (the 4 bytes after the header).
func icmp6Error(src, dst HardwareAddr, saddr, daddr netip.Addr, typ, code uint8, mtu uint32, quoted []byte) []byte {
	q := quoted[14:]
	if len(q) > 1280-48 {
		q = q[:1280-48]
	}
	body := make([]byte, 4+len(q))
	binary.BigEndian.PutUint32(body, mtu)
	copy(body[4:], q)
	return icmp6Frame(src, dst, saddr, daddr, 64, typ, code, body)
}

// fragments6 splits the payload of frame (an Ethernet/IPv6 frame without
// extension headers) into fragments of at most size bytes (a multiple of
// 8) each behind a Fragment header with identification id, as a sender's
// kernel would.
func fragments6(frame []byte, id uint32, size int) [][]byte {
	ip := frame[14:]
	next := ip[6]
	saddr := netip.AddrFrom16([16]byte(ip[8:24]))
	daddr := netip.AddrFrom16([16]byte(ip[24:40]))
	var src, dst HardwareAddr = frame[6:12], frame[0:6]
	payload := ip[40:]
	var out [][]byte
	for off := 0; off < len(payload); off += size {
		end := min(off+size, len(payload))
		hdr := make([]byte, 8)
		hdr[0] = next
		field := uint16(off/8) << 3
		if end < len(payload) {
			field |= 1 // M
		}
		binary.BigEndian.PutUint16(hdr[2:], field)
		binary.BigEndian.PutUint32(hdr[4:], id)
		out = append(out, ipv6Frame(src, dst, saddr, daddr, 44, 64, append(hdr, payload[off:end]...)))
	}
	return out
}

const protoICMPv6 = 58
