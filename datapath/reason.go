package datapath

import "fmt"

// Reason is the verdict a program records in ebpfnet_metrics and drop
// notifications. It mirrors the enum in bpf/lib/reason.h: values below 128 are
// not drops, 128 and above are.
type Reason uint8

// Verdict reasons; keep in sync with bpf/lib/reason.h.
const (
	ReasonForwarded    Reason = 0 // delivered to a local peer by redirect
	ReasonToStack      Reason = 1 // handed to the host stack
	ReasonARPReply     Reason = 2 // ARP answered by the program
	ReasonPolicy       Reason = 3 // new flow allowed by policy (verdict events)
	ReasonPolicyAudit  Reason = 4 // denied, passed in audit mode (counted per direction)
	ReasonToOverlay    Reason = 5 // sent to another node through the overlay
	ReasonNDPReply     Reason = 6 // neighbour solicitation answered by the program
	DropInvalid        Reason = 130
	DropInvalidSMAC    Reason = 131
	DropInvalidSIP     Reason = 132
	DropPolicy         Reason = 133
	DropUnknownL3      Reason = 134
	DropNotSameNetwork Reason = 135
	DropInvalidARP     Reason = 136
	DropWriteError     Reason = 137
	DropMissedTailCall Reason = 138 // a policy owner has no program in ebpfnet_policy_lookups (or the node programs are not loaded), or a receiver no ebpfnet_endpoints entry of its own
	DropUnroutable     Reason = 139 // from the overlay to no local endpoint, or to the overlay on a node without one
	firstDropReason    Reason = 128
)

// knownReasons lists every reason this version knows, for the layout
// test that holds them to bpf/lib/reason.h.
func knownReasons() []Reason {
	return []Reason{
		ReasonForwarded, ReasonToStack, ReasonARPReply, ReasonPolicy, ReasonPolicyAudit, ReasonToOverlay, ReasonNDPReply,
		DropInvalid, DropInvalidSMAC, DropInvalidSIP, DropPolicy, DropUnknownL3,
		DropNotSameNetwork, DropInvalidARP, DropWriteError, DropMissedTailCall, DropUnroutable,
	}
}

// IsDrop reports whether the reason stands for a dropped packet.
func (r Reason) IsDrop() bool { return r >= firstDropReason }

// Name gives the enum name of bpf/lib/reason.h, e.g. DROP_POLICY.
func (r Reason) Name() string {
	switch r {
	case ReasonForwarded:
		return "REASON_FORWARDED"
	case ReasonToStack:
		return "REASON_TO_STACK"
	case ReasonARPReply:
		return "REASON_ARP_REPLY"
	case ReasonPolicy:
		return "REASON_POLICY"
	case ReasonPolicyAudit:
		return "REASON_POLICY_AUDIT"
	case ReasonToOverlay:
		return "REASON_TO_OVERLAY"
	case ReasonNDPReply:
		return "REASON_NDP_REPLY"
	case DropInvalid:
		return "DROP_INVALID"
	case DropInvalidSMAC:
		return "DROP_INVALID_SMAC"
	case DropInvalidSIP:
		return "DROP_INVALID_SIP"
	case DropPolicy:
		return "DROP_POLICY"
	case DropUnknownL3:
		return "DROP_UNKNOWN_L3"
	case DropNotSameNetwork:
		return "DROP_NOT_SAME_NETWORK"
	case DropInvalidARP:
		return "DROP_INVALID_ARP"
	case DropWriteError:
		return "DROP_WRITE_ERROR"
	case DropMissedTailCall:
		return "DROP_MISSED_TAIL_CALL"
	case DropUnroutable:
		return "DROP_UNROUTABLE"
	}
	return fmt.Sprintf("REASON_%d", uint8(r))
}

// String gives the message a user reads in `ebpfnet monitor`, worded as
// Cilium words its drop reasons ("Policy denied").
func (r Reason) String() string {
	switch r {
	case ReasonForwarded:
		return "Forwarded"
	case ReasonToStack:
		return "To stack"
	case ReasonARPReply:
		return "ARP reply"
	case ReasonPolicy:
		return "Policy allowed"
	case ReasonPolicyAudit:
		return "Policy audit"
	case ReasonToOverlay:
		return "To overlay"
	case ReasonNDPReply:
		return "NDP reply"
	case DropInvalid:
		return "Invalid packet"
	case DropInvalidSMAC:
		return "Invalid source mac"
	case DropInvalidSIP:
		return "Invalid source ip"
	case DropPolicy:
		return "Policy denied"
	case DropUnknownL3:
		return "Unsupported L3 protocol"
	case DropNotSameNetwork:
		return "Not in the same network"
	case DropInvalidARP:
		return "Invalid ARP"
	case DropWriteError:
		return "Packet write failed"
	case DropMissedTailCall:
		return "Missed tail call"
	case DropUnroutable:
		return "Unroutable"
	}
	return fmt.Sprintf("Unknown reason %d", uint8(r))
}
