// Package datapath speaks the kernel: it owns the veth pairs, the per-endpoint
// state directory (ep_config.h, bpf_lxc.o), the BPF objects and links, and the
// pinned maps. The driver package hands it endpoints; nothing here knows
// about Docker's protocol.
package datapath

import (
	"net"
	"net/netip"

	"github.com/ebpfnet/ebpfnet/policy"
)

// Config says where the datapath keeps its files. Production uses the
// contract paths (ARCHITECTURE.md); tests point every field at their own scratch places so
// that they never touch a running daemon's state.
type Config struct {
	// StateDir holds one directory per endpoint and the templates
	// directory (/run/ebpfnet/state).
	StateDir string
	// PinDir is the bpffs directory for pinned maps and links
	// (/sys/fs/bpf/ebpfnet).
	PinDir string
	// HostDevice is the dummy device that carries every network's
	// gateway address (ebpfnet_host).
	HostDevice string
	// Version goes into every restore record.
	Version string
	// Overlay, if set, carries networks between nodes (overlay.go).
	Overlay *OverlayConfig
}

// Network is what the datapath must know of a Docker network: its IPv4
// subnet and gateway, its IPv6 ones, or both (dual-stack). A network
// without IPv4 (Docker 28+'s --ipv4=false) has an invalid Subnet and
// Gateway; one without IPv6 invalid Subnet6 and Gateway6, as every network
// recorded before IPv6 has.
type Network struct {
	// Index is a small number, unique on the node, that the BPF program
	// compares to keep networks apart (1..65535).
	Index    uint32       `json:"index"`
	Subnet   netip.Prefix `json:"subnet"`
	Gateway  netip.Addr   `json:"gateway"`
	Subnet6  netip.Prefix `json:"subnet6,omitzero"`
	Gateway6 netip.Addr   `json:"gateway6,omitzero"`
	// MTU of the containers' interfaces; 0 leaves the kernel's default.
	// A network that spans nodes takes the overlay's, which is smaller
	// than the uplink's by the encapsulation.
	MTU int `json:"mtu,omitempty"`
}

// Endpoint is one container's attachment, and also its restore record:
// it is the JSON that ep_config.h carries in its first comment line.
type Endpoint struct {
	// ID is the node-local endpoint ID (<epid>); CreateEndpoint assigns it.
	ID               uint16 `json:"ID"`
	ContainerID      string `json:"dockerID,omitempty"`
	ContainerName    string `json:"ContainerName,omitempty"`
	DockerNetworkID  string `json:"DockerNetworkID"`
	DockerEndpointID string `json:"DockerEndpointID"`
	// IfName is the host-side veth: "lxc" + 12 hex of sha256(endpoint ID).
	IfName  string `json:"IfName"`
	IfIndex int    `json:"IfIndex"`
	// PeerName is the container side's name until Docker moves and renames it.
	PeerName string       `json:"PeerName"`
	LXCMAC   HardwareAddr `json:"LXCMAC"`
	NodeMAC  HardwareAddr `json:"NodeMAC"`
	// IPv4 and IPv6 are the container's addresses with their subnet's
	// prefix length; either may be invalid (an IPv6-only endpoint has no
	// IPv4, one on a network without IPv6 no IPv6), not both. Records of
	// versions before IPv6 have no IPv6.
	IPv4    netip.Prefix `json:"IPv4"`
	IPv6    netip.Prefix `json:"IPv6,omitzero"`
	Network Network      `json:"Network"`
	// Identity is the endpoint's security identity. CreateEndpoint
	// starts an endpoint without one at init (5); SetEndpointIdentity
	// changes it when the labels are known.
	Identity uint32            `json:"Identity"`
	Labels   map[string]string `json:"Labels,omitempty"`

	// InitialPolicy, if set, is installed by CreateEndpoint into the
	// endpoint's policy map and flags before its programs are attached,
	// so the container is under policy from its first packet. Not part
	// of the record: the policy lives in pinned maps.
	InitialPolicy *policy.EndpointPolicy `json:"-"`
	// PolicyFlags (Flag*) and PolicyEntries (how many entries the policy
	// map holds) report the endpoint's current policy; set on the
	// endpoints the Datapath returns, ignored by CreateEndpoint.
	PolicyFlags   uint32 `json:"-"`
	PolicyEntries int    `json:"-"`
}

// HardwareAddr is a MAC that marshals as "aa:bb:cc:dd:ee:ff".
type HardwareAddr net.HardwareAddr

// The driver uses the datapath through these methods (see driver.Datapath):
//
//	New(cfg Config, log logrus.FieldLogger) (*Datapath, error)
//	    mounts nothing; expects bpffs at the parent of PinDir. Creates the
//	    directories, the template directory, and opens or creates the
//	    global pinned maps.
//	(*Datapath) Restore() ([]Endpoint, error)
//	    re-adopts every endpoint whose state directory holds a valid
//	    ep_config.h and whose veth still exists; cleans up the rest.
//	(*Datapath) AddNetwork(Network) error      idempotent
//	(*Datapath) RemoveNetwork(Network) error   idempotent
//	(*Datapath) CreateEndpoint(*Endpoint) error
//	    fills ID, IfName, PeerName, IfIndex, NodeMAC and (if empty) LXCMAC;
//	    on error it leaves nothing behind.
//	(*Datapath) DeleteEndpoint(dockerEndpointID string) error  idempotent
//	(*Datapath) Endpoint(dockerEndpointID string) (Endpoint, bool)
//	(*Datapath) EndpointByID(id uint16) (Endpoint, bool)
//	(*Datapath) Endpoints() []Endpoint   sorted by ID
//	(*Datapath) Close() error  releases file descriptors, keeps every pin
//
// The policy engine uses these:
//
//	(*Datapath) SetEndpointIdentity(id uint16, identity uint32, containerID, containerName string, labels map[string]string) error
//	(*Datapath) ApplyPolicy(id uint16, p policy.EndpointPolicy) (added, removed int, err error)
//	(*Datapath) PolicyEntries(id uint16) ([]policy.Key, error)
//	(*Datapath) PutIPCache(netip.Prefix, identity.ID) error  (the ipcache package is its only writer)
//	(*Datapath) DeleteIPCache(netip.Prefix) error
//	(*Datapath) IPCache() (map[netip.Prefix]uint32, error)
//	(*Datapath) ReadEvents(ctx context.Context, fn func(Event)) error
//
// The daemon runs the conntrack garbage collector and lists the table:
//
//	NewCTGC(d *Datapath, interval time.Duration, log logrus.FieldLogger) *CTGC
//	(*CTGC) Run(ctx context.Context)   sweeps expired flows until ctx ends
//	(*CTGC) Stats() CTGCStats          what the last sweep found, for metrics
//	(*Datapath) Conntrack() ([]CTFlow, error)
