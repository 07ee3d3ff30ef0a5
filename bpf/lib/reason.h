/* Verdict reasons, for metrics and events.
 *
 * Reasons below 128 are non-drop verdicts, 128 and above are drops, so a
 * reader can tell them apart without a table. The Go mirror is
 * datapath/reason.go; keep the numbers in sync. */
#ifndef EBPFNET_REASON_H
#define EBPFNET_REASON_H

enum reason {
	REASON_FORWARDED = 0,		/* delivered to a local peer by redirect */
	REASON_TO_STACK = 1,		/* handed to the host stack */
	REASON_ARP_REPLY = 2,		/* ARP answered by the program */
	REASON_POLICY = 3,		/* new flow allowed by policy (verdict events) */
	REASON_POLICY_AUDIT = 4,	/* denied, passed in audit mode */
	REASON_TO_OVERLAY = 5,		/* sent to another node through the overlay */
	REASON_NDP_REPLY = 6,		/* neighbour solicitation answered by the program */

	DROP_INVALID = 130,		/* malformed or truncated packet */
	DROP_INVALID_SMAC = 131,	/* source MAC is not the container's */
	DROP_INVALID_SIP = 132,		/* source IP is not the container's */
	DROP_POLICY = 133,		/* denied by policy */
	DROP_UNKNOWN_L3 = 134,		/* neither IPv4, IPv6 nor ARP */
	DROP_NOT_SAME_NETWORK = 135,	/* peer endpoint in another network */
	DROP_INVALID_ARP = 136,		/* ARP that is not Ethernet/IPv4 */
	DROP_WRITE_ERROR = 137,		/* packet rewrite failed */
	DROP_MISSED_TAIL_CALL = 138,	/* no node program, no policy lookup of the owner, or no entry of a receiver */
	DROP_UNROUTABLE = 139,		/* from the overlay to no local endpoint */
};

#endif
