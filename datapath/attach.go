package datapath

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Programs are attached with tc (a clsact qdisc and two cls_bpf filters in
// direct-action mode), not TCX links, although the first design chose TCX
// where the kernel has it. Every TCX attach waits for an RCU grace period
// in the kernel (tcx_entry_sync swaps the device's program array and must
// know no CPU still runs the old one), about 10 ms each on Linux 6.18, so
// ~20 ms of every endpoint's creation was spent waiting. Adding a clsact
// qdisc and a cls_bpf filter waits for nothing and costs well under a
// millisecond, on devices up or down. Filters live with the device, so the
// programs outlive the daemon without any pin, and replacing a filter with
// the same priority and handle swaps its program atomically, which Restore
// relies on.
const (
	// tcPriority and tcHandle identify our filters, so we find and
	// replace exactly them and never another tool's. Priority 1 runs
	// first; our direct-action verdict is final.
	tcPriority = 1
	tcHandle   = 0xeb
)

// AttachMode says how endpoint programs are attached, as `ebpfnet status`
// reports it: tc clsact filters in direct-action mode.
const AttachMode = "tc clsact (direct-action)"

// tcFilterName is what `tc filter show` prints for our filters.
func tcFilterName(prog string) string { return ObjectFile + ":[" + prog + "]" }

func clsact(ifindex int) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
}

func tcFilter(ifindex int, parent uint32, prog *ebpf.Program, name string) *netlink.BpfFilter {
	return &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    parent,
			Handle:    tcHandle,
			Priority:  tcPriority,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           prog.FD(),
		Name:         tcFilterName(name),
		DirectAction: true,
	}
}

// attachTC puts from on the veth's ingress (what the container sends) and
// to on its egress (what the host sends to the container). freshVeth skips
// the check for an existing clsact qdisc on a device we just created.
// Existing filters of ours are replaced atomically: there is no moment
// without a program. after is called once each step is done (see
// Datapath.after); its error stops the attachment.
func attachTC(nl *netlink.Handle, ifindex int, from, to *ebpf.Program, freshVeth bool, after func(createStep) error) error {
	if err := nl.QdiscAdd(clsact(ifindex)); err != nil && (freshVeth || !errors.Is(err, unix.EEXIST)) {
		return fmt.Errorf("add clsact qdisc: %w", err)
	}
	if err := after(stepClsact); err != nil {
		return err
	}
	if err := nl.FilterReplace(tcFilter(ifindex, netlink.HANDLE_MIN_INGRESS, from, progFrom)); err != nil {
		return fmt.Errorf("attach %s at tc ingress: %w", progFrom, err)
	}
	if err := after(stepFromAttached); err != nil {
		return err
	}
	if err := nl.FilterReplace(tcFilter(ifindex, netlink.HANDLE_MIN_EGRESS, to, progTo)); err != nil {
		return fmt.Errorf("attach %s at tc egress: %w", progTo, err)
	}
	return after(stepToAttached)
}

// tcPrograms returns the IDs of the programs our filters on ifindex run at
// ingress and egress (0 where our filter is missing).
func tcPrograms(ifindex int) (ingress, egress ebpf.ProgramID, err error) {
	link := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}
	for _, dir := range []struct {
		parent uint32
		id     *ebpf.ProgramID
	}{{netlink.HANDLE_MIN_INGRESS, &ingress}, {netlink.HANDLE_MIN_EGRESS, &egress}} {
		filters, err := netlink.FilterList(link, dir.parent)
		if err != nil {
			return 0, 0, fmt.Errorf("list tc filters of ifindex %d: %w", ifindex, err)
		}
		for _, f := range filters {
			bf, ok := f.(*netlink.BpfFilter)
			if ok && bf.Handle == tcHandle && bf.Priority == tcPriority {
				*dir.id = ebpf.ProgramID(bf.Id)
			}
		}
	}
	return ingress, egress, nil
}
