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
