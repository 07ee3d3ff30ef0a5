package datapath

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
)

// vethSparesWanted is how many veth pairs are kept ready: as many as
// policy maps, for the same bursts.
const vethSparesWanted = policyMapSparesWanted

// spareVethPrefix starts every spare's name; the daemon's tag and a
// sequence number follow (spareNames).
const spareVethPrefix = "lxs"

// spareVeth is a veth pair made ahead of CreateEndpoint, both ends down,
// under names of the daemon's own.
type spareVeth struct {
	name, peerName   string
	index, peerIndex int
}

// vethSpares keeps a few veth pairs made ahead of time. Making a pair is
// the longest step on the veth's side of CreateEndpoint (a veth
// RTM_NEWLINK, the lookup of its index and the rp_filter write took
// 0.5-0.6 of ~1 ms, and the programs' side is as long): the kernel
// allocates two devices and their queues, registers them in sysfs, and
// creates their per-device sysctls. Taking a spare is two renames
// instead (claim). Spares are made after a creation has returned, as the
// policy maps are (policyMapSpares).
//
// Unlike a policy map, a veth outlives the daemon that made it. Its name
// carries a tag of the daemon's state directory, so that a daemon removes
// its own spares at start (sweep) and at Close, and never another
// daemon's on the same host (bench/run runs one beside the contract's).
type vethSpares struct {
	want   int
	prefix string // spareVethPrefix and the daemon's tag
	log    logrus.FieldLogger

	mu        sync.Mutex
	nl        *netlink.Handle // the refill's own socket; nil until first used
	spares    []spareVeth
	next      uint16 // sequence number of the next spare's name
	refilling bool
	closed    bool
	wg        sync.WaitGroup
}

func newVethSpares(stateDir string, want int, log logrus.FieldLogger) *vethSpares {
	sum := sha256.Sum256([]byte(stateDir))
	return &vethSpares{want: want, prefix: spareVethPrefix + hex.EncodeToString(sum[:])[:5], log: log}
}

// spareNames is the nth spare's pair of names: "lxs", five hex digits of
// the daemon's tag, four of n, and "p" for the peer (13 characters, the
// kernel allows 15).
func (s *vethSpares) spareNames(n uint16) (string, string) {
	name := fmt.Sprintf("%s%04x", s.prefix, n)
	return name, name + "p"
}

// isOwn tells whether a device name is one of this daemon's spares.
func (s *vethSpares) isOwn(name string) bool {
	return strings.HasPrefix(name, s.prefix) && len(name) >= len(s.prefix)+4
}

// take returns a spare, or false when none is ready.
func (s *vethSpares) take() (spareVeth, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.spares)
	if n == 0 {
		return spareVeth{}, false
	}
	sp := s.spares[n-1]
	s.spares = s.spares[:n-1]
	return sp, true
}

// refill makes spares up to the number wanted, in the background, unless
// that is under way already or the spares are closed.
func (s *vethSpares) refill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.refilling || len(s.spares) >= s.want {
		return
	}
	s.refilling = true
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for s.makeOne() {
		}
	}()
}

// makeOne adds a spare; false once there are enough, the spares are
// closed or making one failed (then CreateEndpoint makes its veth itself,
// and reports any error of its own).
func (s *vethSpares) makeOne() bool {
	s.mu.Lock()
	if s.closed || len(s.spares) >= s.want {
		s.refilling = false
		s.mu.Unlock()
		return false
	}
	if s.nl == nil {
		h, err := newNetlinkHandle()
		if err != nil {
			s.refilling = false
			s.mu.Unlock()
			s.log.WithError(err).Debug("make a spare veth")
			return false
		}
		s.nl = h
	}
	name, peer := s.spareNames(s.next)
	s.next++
	h := s.nl
	s.mu.Unlock()

	sp, err := makeSpareVeth(h, name, peer)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil || s.closed {
		s.refilling = false
		if err != nil {
			s.log.WithError(err).Debug("make a spare veth")
		} else {
			deleteSpare(s.log, sp)
		}
		return false
	}
	s.spares = append(s.spares, sp)
	return true
}

// makeSpareVeth creates a pair, both ends down and named name and peer,
// with reverse-path filtering off on the host end ahead of time (a
// device's sysctls stay with it when it is renamed).
func makeSpareVeth(h *netlink.Handle, name, peer string) (spareVeth, error) {
	la := netlink.NewLinkAttrs()
	la.Name = name
	veth := &netlink.Veth{LinkAttrs: la, PeerName: peer}
	if err := h.LinkAdd(veth); err != nil {
		return spareVeth{}, fmt.Errorf("create spare veth %s/%s: %w", name, peer, err)
	}
	sp := spareVeth{name: name, peerName: peer, index: veth.Index}
	p, err := h.LinkByName(peer)
	if err == nil && veth.Index != 0 {
		sp.peerIndex = p.Attrs().Index
		err = disableRPFilter(name)
	} else if err == nil {
		err = errors.New("no index after creation")
	}
	if err != nil {
		_ = h.LinkDel(veth)
		return spareVeth{}, fmt.Errorf("spare veth %s/%s: %w", name, peer, err)
	}
	return sp, nil
}

// claim gives a spare the endpoint's names, MACs and MTU and brings its
// host end up: what createVeth does, in two requests that change existing
// devices (RTM_NEWLINK without NLM_F_CREATE, by index). The peer goes
// first. A crash between the two leaves the host end under its spare name,
// which the next start sweeps, taking the peer with it; after both, the
// endpoint's record names the pair (CreateEndpoint wrote it first).
func claim(h *netlink.Handle, sp spareVeth, ep *Endpoint) error {
	peer := claimedAttrs(sp.peerIndex, ep.PeerName, ep.LXCMAC, ep.Network.MTU)
	if err := h.LinkModify(&netlink.GenericLink{LinkAttrs: peer, LinkType: "veth"}); err != nil {
		return fmt.Errorf("rename spare veth %s to %s: %w", sp.peerName, ep.PeerName, err)
	}
	host := claimedAttrs(sp.index, ep.IfName, ep.NodeMAC, ep.Network.MTU)
	host.Flags = net.FlagUp
	if err := h.LinkModify(&netlink.GenericLink{LinkAttrs: host, LinkType: "veth"}); err != nil {
		return fmt.Errorf("rename spare veth %s to %s: %w", sp.name, ep.IfName, err)
	}
	return nil
}

func claimedAttrs(index int, name string, mac HardwareAddr, mtu int) netlink.LinkAttrs {
	la := netlink.NewLinkAttrs()
	la.Index = index
	la.Name = name
	la.HardwareAddr = net.HardwareAddr(mac)
	la.MTU = mtu
	return la
}

// disableRPFilter keeps reverse-path filtering out of the way of the /32
// routing on a host-side veth.
func disableRPFilter(ifname string) error {
	if err := os.WriteFile(fmt.Sprintf("/proc/sys/net/ipv4/conf/%s/rp_filter", ifname), []byte("0"), 0o644); err != nil {
		return fmt.Errorf("disable rp_filter on %s: %w", ifname, err)
	}
	return nil
}

// sweep deletes, in the background, the spares an earlier run of this
// daemon left behind (killed, it could not delete them at Close).
func (s *vethSpares) sweep() {
	links, err := netlink.LinkList()
	if err != nil {
		s.log.WithError(err).Warn("list devices to remove spare veths left by an earlier run")
		return
	}
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "veth" || !s.isOwn(a.Name) || strings.HasSuffix(a.Name, "p") {
			continue
		}
		var seq uint16
		if _, err := fmt.Sscanf(a.Name[len(s.prefix):], "%04x", &seq); err == nil && seq >= s.next {
			s.next = seq + 1 // the new ones' names are not taken meanwhile
		}
		sp := spareVeth{name: a.Name, index: a.Index}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			deleteSpare(s.log, sp)
		}()
	}
}

// deleteSpare deletes a spare pair by its host end's index; the peer goes
// with it.
func deleteSpare(log logrus.FieldLogger, sp spareVeth) {
	if err := netlink.LinkDel(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: sp.index}}); err != nil {
		log.WithError(err).WithField("ifname", sp.name).Warn("delete a spare veth")
	}
}

// discard deletes a spare that could not be claimed, in the background.
func (s *vethSpares) discard(sp spareVeth) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		deleteSpare(s.log, sp)
	}()
}

// ready is how many spares there are now.
func (s *vethSpares) ready() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.spares)
}

// close waits for a refill under way and deletes the spares, in parallel:
// each deletion waits for an RCU grace period.
func (s *vethSpares) close() {
	s.mu.Lock()
	s.closed = true
	spares := s.spares
	s.spares = nil
	s.mu.Unlock()
	for _, sp := range spares {
		s.discard(sp)
	}
	s.wg.Wait()
	if s.nl != nil {
		s.nl.Close()
	}
}
