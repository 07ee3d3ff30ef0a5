package datapath

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// MaxEndpointID is the largest epid; IDs are 16 bits like Cilium's.
const MaxEndpointID = 65535

// ErrNoEndpoint means no endpoint has the ID asked for (any more).
var ErrNoEndpoint = errors.New("no such endpoint")

// ErrNoFreeEndpointID means every epid of the node is taken.
var ErrNoFreeEndpointID = errors.New("no free endpoint ID")

func endpointHash(dockerEndpointID string) string {
	sum := sha256.Sum256([]byte(dockerEndpointID))
	return hex.EncodeToString(sum[:])[:12]
}

// HostIfName is the host-side veth of an endpoint: "lxc" and 12 hex digits
// of sha256(Docker endpoint ID), 15 characters, the kernel's limit.
func HostIfName(dockerEndpointID string) string {
	return "lxc" + endpointHash(dockerEndpointID)
}

// PeerIfName is the container side's name until Docker moves it into the
// sandbox and renames it eth0, when CreateEndpoint had no spare veth pair
// ready; a spare's peer keeps its own name (vethspares.go).
func PeerIfName(dockerEndpointID string) string {
	return "tmp" + endpointHash(dockerEndpointID)
}

// deriveMAC makes a stable, locally administered unicast MAC from the
// endpoint ID; purpose separates the container's MAC from the node's so the
// two ends of one veth never collide.
func deriveMAC(purpose, dockerEndpointID string) HardwareAddr {
	sum := sha256.Sum256([]byte(purpose + "\x00" + dockerEndpointID))
	mac := make(HardwareAddr, 6)
	copy(mac, sum[:6])
	mac[0] = (mac[0] &^ 0x01) | 0x02 // unicast, locally administered
	return mac
}

// LXCMACFor is the container-side MAC chosen for an endpoint.
func LXCMACFor(dockerEndpointID string) HardwareAddr {
	return deriveMAC("lxc", dockerEndpointID)
}

// NodeMACFor is the host-side veth MAC, the one the program answers ARP
// with for everything but the container's peers.
func NodeMACFor(dockerEndpointID string) HardwareAddr {
	return deriveMAC("node", dockerEndpointID)
}

// PolicyMapName is the pin name of an endpoint's policy map, zero-padded to
// five digits as Cilium does (cilium_policy_02665).
func PolicyMapName(epid uint16) string {
	return fmt.Sprintf("ebpfnet_policy_%05d", epid)
}
