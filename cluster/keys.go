package cluster

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/ebpfnet/ebpfnet/identity"
)

// root is the prefix of every key; v1 is the layout documented in doc.go.
const root = "ebpfnet/v1/"

// The keys the remote view reads (nodes, their blocks, their endpoints)
// share net/, so that one watch sees them, and sees a lease's keys go in
// the same revision as its node key, without the identities' traffic.
const (
	netPrefix       = root + "net/"
	nodesPrefix     = netPrefix + "nodes/"
	networksPrefix  = netPrefix + "networks/"
	blocksPrefix    = netPrefix + "blocks/"
	endpointsPrefix = netPrefix + "endpoints/"
	identityIDs     = root + "identities/id/"
	identityLabels  = root + "identities/labels/"
	identityRefs    = root + "identities/ref/"
	policyKey       = root + "policy"
)

func nodeKey(name string) string { return nodesPrefix + name }

// prefixName writes a prefix as one key segment: 10.90.0.0/16 is
// 10.90.0.0_16, because "/" separates segments.
func prefixName(p netip.Prefix) string {
	return p.Addr().String() + "_" + strconv.Itoa(p.Bits())
}

func parsePrefixName(s string) (netip.Prefix, error) {
	addr, bits, ok := strings.Cut(s, "_")
	if !ok {
		return netip.Prefix{}, fmt.Errorf("%q is not a prefix key", s)
	}
	return netip.ParsePrefix(addr + "/" + bits)
}

func networkKey(subnet netip.Prefix) string { return networksPrefix + prefixName(subnet) }

func blocksOf(subnet netip.Prefix) string { return blocksPrefix + prefixName(subnet) + "/" }

func blockKey(subnet, block netip.Prefix) string { return blocksOf(subnet) + prefixName(block) }

// parseBlockKey splits blocks/<subnet>/<block>.
func parseBlockKey(key string) (subnet, block netip.Prefix, err error) {
	s, b, ok := strings.Cut(strings.TrimPrefix(key, blocksPrefix), "/")
	if !ok {
		return subnet, block, fmt.Errorf("%q is not a block key", key)
	}
	if subnet, err = parsePrefixName(s); err != nil {
		return subnet, block, err
	}
	block, err = parsePrefixName(b)
	return subnet, block, err
}

func idKey(id identity.ID) string { return identityIDs + strconv.FormatUint(uint64(id), 10) }

func parseIDKey(key string) (identity.ID, error) {
	n, err := strconv.ParseUint(strings.TrimPrefix(key, identityIDs), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%q is not an identity key", key)
	}
	return identity.ID(n), nil
}

func labelsKey(hash string) string { return identityLabels + hash }

// refsOf is the prefix of every node's reference on id; the trailing "/"
// keeps 256 from matching 2560.
func refsOf(id identity.ID) string { return identityRefs + strconv.FormatUint(uint64(id), 10) + "/" }

func refKey(id identity.ID, node string) string { return refsOf(id) + node }

// parseRefKey splits identities/ref/<N>/<node>.
func parseRefKey(key string) (identity.ID, string, error) {
	n, node, ok := strings.Cut(strings.TrimPrefix(key, identityRefs), "/")
	id, err := strconv.ParseUint(n, 10, 32)
	if !ok || err != nil {
		return 0, "", fmt.Errorf("%q is not an identity reference key", key)
	}
	return identity.ID(id), node, nil
}

func endpointKey(ip netip.Addr) string { return endpointsPrefix + ip.String() }

// The values. JSON, so that `etcdctl get` is readable.

type nodeValue struct {
	Name      string     `json:"name"`
	IP        netip.Addr `json:"ip"`
	Heartbeat string     `json:"heartbeat"` // RFC 3339, UTC
	Version   string     `json:"version,omitempty"`
}

type networkValue struct {
	Subnet    netip.Prefix `json:"subnet"`
	BlockBits int          `json:"blockBits"`
}

type blockValue struct {
	Node string `json:"node"`
	// NodeIP is the node's IP when it claimed the block: what `node
	// list` shows of a dead node, whose node key is gone. Blocks claimed
	// before it was kept have none.
	NodeIP netip.Addr `json:"nodeIP,omitzero"`
}

type endpointValue struct {
	Identity identity.ID `json:"identity"`
	Node     string      `json:"node"`
	NodeIP   netip.Addr  `json:"nodeIP"`
}

func mustJSON(v any) string {
	data, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("encode %T: %v", v, err)) // plain structs of strings and addresses always encode
	}
	return string(data)
}

// validNodeName keeps a node name to one key segment of readable
// characters.
func validNodeName(name string) error {
	if name == "" || len(name) > 253 {
		return fmt.Errorf("node name %q must have 1 to 253 characters", name)
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_'
		if !ok {
			return fmt.Errorf("node name %q may hold only letters, digits, '-', '.' and '_'", name)
		}
	}
	return nil
}
