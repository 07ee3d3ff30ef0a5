// Package identity numbers the security identities that policy is written
// against. Reserved numbers follow Cilium's, so Cilium users read them the
// same way; identities derived from container labels start at MinAllocated.
package identity

// ID is a numeric security identity.
type ID uint32

// Reserved identities, as Cilium numbers them.
const (
	Unknown ID = 0
	Host    ID = 1 // the node itself, and the networks' gateway addresses
	World   ID = 2 // anything outside the node
	Init    ID = 5 // an endpoint whose labels are not known yet
	// MinAllocated is the first identity handed to a label set.
	MinAllocated ID = 256
)

// String names reserved identities as Cilium's "reserved:" labels do.
func (id ID) String() string {
	switch id {
	case Host:
		return "reserved:host"
	case World:
		return "reserved:world"
	case Init:
		return "reserved:init"
	case Unknown:
		return "reserved:unknown"
	}
	return ""
}
