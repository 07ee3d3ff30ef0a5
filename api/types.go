// Package api is the local API between `ebpfnet daemon` and the ebpfnet CLI:
// JSON over the unix socket /run/ebpfnet/ebpfnet.sock. The types here are
// the wire format; both sides import them so they cannot drift apart.
package api

import (
	"encoding/json"
	"time"
)

// DefaultSocket is where the daemon serves the local API (contract).
const DefaultSocket = "/run/ebpfnet/ebpfnet.sock"

// Status is GET /v1/status.
type Status struct {
	Version   string        `json:"version"`
	StartedAt time.Time     `json:"startedAt"`
	Datapath  string        `json:"datapath"`
	Networks  []Network     `json:"networks"`
	Endpoints int           `json:"endpoints"`
	Pools     []Pool        `json:"pools"`
	Restored  int           `json:"restoredEndpoints"`
	Uptime    time.Duration `json:"uptime"`
	// Reconciled is true once the daemon has compared its state with
	// Docker's after start and removed what Docker no longer knows.
	Reconciled bool `json:"reconciled"`
	// Cluster is the node's link to its cluster; nil on a single node.
	Cluster *ClusterStatus `json:"cluster,omitempty"`
	// Problems are what needs the operator, e.g. "policy lost, re-import".
	Problems []string `json:"problems,omitempty"`
	// Healed lists the state files of the lib directory that were corrupt
	// or missing at start and were rebuilt.
	Healed []HealedFile `json:"healed,omitempty"`
}

// HealedFile is a state file that was corrupt, or missing on a node that
// has endpoints or networks, and was rebuilt at start from the endpoints'
// records, the pinned maps and our iptables rules, then from Docker.
type HealedFile struct {
	File string `json:"file"`
	// Fault is "corrupt: <why>" or "missing".
	Fault string `json:"fault"`
	// MovedTo is where a corrupt file was moved aside.
	MovedTo string `json:"movedTo,omitempty"`
	// Rebuilt says what it was rebuilt from and what it holds now.
	Rebuilt string `json:"rebuilt"`
	// WaitingForDocker is true until Docker has been asked for what only
	// it knows (networks' options, addresses, published ports).
	WaitingForDocker bool `json:"waitingForDocker,omitempty"`
	// NotRebuilt lists what could not be rebuilt.
	NotRebuilt []string `json:"notRebuilt,omitempty"`
}

// ClusterStatus is a cluster node's view of etcd.
type ClusterStatus struct {
	Node      string   `json:"node"`
	NodeIP    string   `json:"nodeIP"`
	Etcd      []string `json:"etcd"`
	Connected bool     `json:"connected"`
	// Since is when Connected last changed.
	Since     time.Time `json:"since"`
	LastError string    `json:"lastError,omitempty"`
	LeaseID   int64     `json:"leaseID"`
	// Queued counts the node's own writes waiting for etcd.
	Queued int `json:"queued"`
	// WaitingForIdentity counts containers whose label set has no
	// identity yet because etcd did not answer: they are init.
	WaitingForIdentity int    `json:"waitingForIdentity"`
	Writes             uint64 `json:"writes"`
	WatchEvents        uint64 `json:"watchEvents"`
}

// Node is one node of the cluster, as `ebpfnet node list` shows it.
type Node struct {
	Name      string    `json:"name"`
	IP        string    `json:"ip,omitempty"`
	Blocks    []string  `json:"blocks"` // "10.90.3.0/24 of 10.90.0.0/16"
	Heartbeat time.Time `json:"heartbeat,omitzero"`
	Version   string    `json:"version,omitempty"`
	// State is alive, or dead: gone, its blocks still its own until
	// `ebpfnet node remove`.
	State string `json:"state"`
}

// Network is one ebpfnet network.
type Network struct {
	ID      string `json:"id"`
	Index   uint32 `json:"index"`
	Subnet  string `json:"subnet"`
	Gateway string `json:"gateway"`
	// Subnet6 and Gateway6 are empty for a network without IPv6, Subnet
	// and Gateway for one without IPv4 (--ipv4=false).
	Subnet6  string            `json:"subnet6,omitempty"`
	Gateway6 string            `json:"gateway6,omitempty"`
	Internal bool              `json:"internal,omitempty"`
	Options  map[string]string `json:"options,omitempty"`
	// Rebuilt says the network was rebuilt from its endpoints' records
	// (networks.json was lost) and Docker has not confirmed its options
	// yet: its endpoints keep their policy, new ones deny all.
	Rebuilt bool `json:"rebuilt,omitempty"`
}

// Pool is one IPAM pool and what is allocated from it.
type Pool struct {
	ID        string   `json:"id"`
	Pool      string   `json:"pool"`
	SubPool   string   `json:"subPool,omitempty"`
	Allocated []string `json:"allocated"`
}

// Endpoint is GET /v1/endpoints and /v1/endpoints/{id}.
type Endpoint struct {
	ID               uint16 `json:"id"`
	ContainerID      string `json:"containerID,omitempty"`
	ContainerName    string `json:"containerName,omitempty"`
	DockerNetworkID  string `json:"dockerNetworkID"`
	DockerEndpointID string `json:"dockerEndpointID"`
	IfName           string `json:"ifName"`
	IfIndex          int    `json:"ifIndex"`
	IPv4             string `json:"ipv4"`
	// IPv6 is empty for an endpoint without IPv6, IPv4 for one without
	// IPv4.
	IPv6      string            `json:"ipv6,omitempty"`
	LXCMAC    string            `json:"lxcMAC"`
	NodeMAC   string            `json:"nodeMAC"`
	Identity  uint32            `json:"identity"`
	Labels    map[string]string `json:"labels,omitempty"`
	PolicyMap string            `json:"policyMap"`
	// PolicyIngress and PolicyEgress say whether policy is enforced in
	// that direction ("enabled") or everything is allowed ("disabled").
	PolicyIngress string `json:"policyIngress"`
	PolicyEgress  string `json:"policyEgress"`
	PolicyEntries int    `json:"policyEntries"`
	State         string `json:"state"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	Message string `json:"message"`
}

// PolicyRevision answers an import or a delete.
type PolicyRevision struct {
	Revision uint64 `json:"revision"`
}

// Policy is GET /v1/policy: the rules in force, in Cilium's format.
type Policy struct {
	Revision uint64          `json:"revision"`
	Rules    json.RawMessage `json:"rules"`
}

// Identity is one numeric identity and the labels it stands for.
type Identity struct {
	ID     uint32   `json:"id"`
	Labels []string `json:"labels"`
	// UnusedSince is set, on a single node, for a label identity no
	// endpoint holds: since when. It is kept for the identity grace
	// (the daemon's --identity-grace, 5 min by default), so that a
	// container run again with these labels gets the same number, and
	// freed after it.
	UnusedSince *time.Time `json:"unusedSince,omitempty"`
}

// PolicyEntry is one entry of an endpoint's policy map, resolved.
type PolicyEntry struct {
	Direction string   `json:"direction"`
	Identity  uint32   `json:"identity"`
	Labels    []string `json:"labels"`
	Port      uint16   `json:"port"`
	Protocol  string   `json:"protocol"`
}

// BPFPolicy is GET /v1/bpf/policy/{epid}.
type BPFPolicy struct {
	Endpoint      uint16        `json:"endpoint"`
	PolicyMap     string        `json:"policyMap"`
	PolicyIngress string        `json:"policyIngress"`
	PolicyEgress  string        `json:"policyEgress"`
	Entries       []PolicyEntry `json:"entries"`
}

// IPCacheEntry is one prefix of the ipcache and its identity.
type IPCacheEntry struct {
	Prefix   string   `json:"prefix"`
	Identity uint32   `json:"identity"`
	Labels   []string `json:"labels"`
	// Source says who put it in: local (an endpoint of this node), host,
	// remote (another node's endpoint or block), cidr (a rule's prefix);
	// empty for an entry left by an earlier start, not yet claimed.
	Source string `json:"source,omitempty"`
	// Node and TunnelEndpoint name the node of a remote entry.
	Node           string `json:"node,omitempty"`
	TunnelEndpoint string `json:"tunnelEndpoint,omitempty"`
}

// MonitorEvent is one line of `ebpfnet monitor`: a drop or a policy
// verdict reported by the datapath, with identities resolved to labels.
type MonitorEvent struct {
	Time          time.Time `json:"time"`
	Type          string    `json:"type"` // "drop" or "policy-verdict"
	Reason        string    `json:"reason"`
	Verdict       string    `json:"verdict,omitempty"`
	Endpoint      uint16    `json:"endpoint"`
	Direction     string    `json:"direction"`
	Source        string    `json:"source"`
	Destination   string    `json:"destination"`
	Protocol      string    `json:"protocol"`
	SrcIdentity   uint32    `json:"srcIdentity"`
	SrcLabels     []string  `json:"srcLabels"`
	DstIdentity   uint32    `json:"dstIdentity"`
	DstLabels     []string  `json:"dstLabels"`
	InterfaceName string    `json:"ifName,omitempty"`
}

// ConntrackEntry is one live flow of the datapath's conntrack table, GET
// /v1/bpf/ct.
type ConntrackEntry struct {
	Protocol string `json:"protocol"` // TCP, UDP, ICMP, or the IP protocol number
	// Source and Destination are the flow's ends, addr:port, the source
	// the end that sent its first packet. For ICMP echo the port is the
	// echo id, on the requester's side.
	Source      string `json:"source"`
	Destination string `json:"destination"`
	// State is TCP's: opening, established or closing; empty otherwise.
	State string `json:"state,omitempty"`
	// ExpiresInSeconds is how long the flow lives without another packet.
	ExpiresInSeconds int64 `json:"expiresInSeconds"`
	// SourceEndpoint and DestinationEndpoint are the local endpoints at
	// the ends (epid), 0 for an address that is not a local endpoint's.
	SourceEndpoint      uint16 `json:"sourceEndpoint"`
	DestinationEndpoint uint16 `json:"destinationEndpoint"`
}
