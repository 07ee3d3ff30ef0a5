// Package api is the local API between `ebpfnet daemon` and the ebpfnet CLI:
// JSON over the unix socket /run/ebpfnet/ebpfnet.sock. The types here are
// the wire format; both sides import them so they cannot drift apart.
package api

import "time"

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
}

// Network is one ebpfnet network.
type Network struct {
	ID       string            `json:"id"`
	Index    uint32            `json:"index"`
	Subnet   string            `json:"subnet"`
	Gateway  string            `json:"gateway"`
	Internal bool              `json:"internal,omitempty"`
	Options  map[string]string `json:"options,omitempty"`
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
	ID               uint16            `json:"id"`
	ContainerID      string            `json:"containerID,omitempty"`
	ContainerName    string            `json:"containerName,omitempty"`
	DockerNetworkID  string            `json:"dockerNetworkID"`
	DockerEndpointID string            `json:"dockerEndpointID"`
	IfName           string            `json:"ifName"`
	IfIndex          int               `json:"ifIndex"`
	IPv4             string            `json:"ipv4"`
	LXCMAC           string            `json:"lxcMAC"`
	NodeMAC          string            `json:"nodeMAC"`
	Identity         uint32            `json:"identity"`
	Labels           map[string]string `json:"labels,omitempty"`
	PolicyMap        string            `json:"policyMap"`
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
