package datapath

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
)

// vethSparesWanted is how many veth pairs are kept ready: as many as
// policy maps, for the same bursts.
const vethSparesWanted = policyMapSparesWanted

// vethRefillIdle is how long after a creation, with none begun since,
// spares are made again. Making one holds the RTNL lock for most of its
// ~0.5 ms, which every netlink change of the next creation (the claim,
// the route, the tc filters) waits for: made right after a creation
// returns, as the policy maps are, a spare cost creations that came
// back-to-back more than it saved them (BenchmarkEndpointBringUp, 1.04-
// 1.23x). Docker's own work between two CreateEndpoint calls (Join, the
// sandbox, the container's start) is tens to hundreds of ms, so spares
// are ready again in use; creations faster than that, after the first
// vethSparesWanted, make their own veth as before.
const vethRefillIdle = 10 * time.Millisecond

// spareVethPrefix starts every spare's name; the daemon's tag and a
// sequence number follow (spareNames). It is not "lxc": a spare is no
// endpoint's, and nothing that looks for endpoints' veths must see one.
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
// creates their per-device sysctls. Taking a spare is two changes of
// existing devices instead (claim). Spares are made when the datapath
// opens and once creations have paused (vethRefillIdle), never while one
// is under way.
//
// Unlike a policy map, a veth outlives the daemon that made it. Its name
// carries a tag of the daemon's state directory, so that a daemon removes
// its own spares at start (sweep) and at close, and never another
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
	// creating is set while a creation is under way; idle is how long
	// after one the refill starts (vethRefillIdle), by idleTimer.
	creating  bool
	idle      time.Duration
	idleTimer *time.Timer
	wg        sync.WaitGroup
}

func newVethSpares(stateDir string, want int, log logrus.FieldLogger) *vethSpares {
	return &vethSpares{want: want, prefix: spareVethTag(stateDir), log: log, idle: vethRefillIdle}
}

// spareVethTag is what the names of the spares of a daemon keeping its
// state in stateDir begin with: "lxs" and five hex digits of
// sha256(stateDir), the path cleaned so that "/run/ebpfnet/state/" finds
// the spares of a run started with "/run/ebpfnet/state".
func spareVethTag(stateDir string) string {
	sum := sha256.Sum256([]byte(filepath.Clean(stateDir)))
	return spareVethPrefix + hex.EncodeToString(sum[:])[:5]
}

// spareNames is the nth spare's pair of names: the tag, four hex digits
// of n, and "p" for the peer (13 characters, the kernel allows 15).
func (s *vethSpares) spareNames(n uint16) (string, string) {
	name := fmt.Sprintf("%s%04x", s.prefix, n)
	return name, name + "p"
}

// ownSequence tells whether a device name is the host or the peer end of
// one of this daemon's spares (or the peer of an endpoint that took one),
// and its sequence number.
func (s *vethSpares) ownSequence(name string) (seq uint16, peer, ok bool) {
	rest, ok := strings.CutPrefix(name, s.prefix)
	if !ok {
		return 0, false, false
	}
	rest, peer = strings.CutSuffix(rest, "p")
	if len(rest) != 4 {
		return 0, false, false
	}
	n, err := strconv.ParseUint(rest, 16, 16)
	if err != nil {
		return 0, false, false
	}
	return uint16(n), peer, true
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

// putBack returns a spare taken but not claimed, untouched, to the pool;
// once the pool is full or closed, the spare is deleted.
func (s *vethSpares) putBack(sp spareVeth) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || len(s.spares) >= s.want {
		s.discardLocked(sp)
		return
	}
	s.spares = append(s.spares, sp)
}

// creationStarted tells the pool a creation is under way: no refill
// starts, and one under way stops before its next spare.
func (s *vethSpares) creationStarted() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.creating = true
	if s.idleTimer != nil {
		s.idleTimer.Stop()
	}
}

// creationEnded tells the pool the creation is done: a refill starts once
// no other has started for s.idle.
func (s *vethSpares) creationEnded() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.creating = false
	if s.closed {
		return
	}
	if s.idleTimer == nil {
		s.idleTimer = time.AfterFunc(s.idle, s.refill)
	} else {
		s.idleTimer.Reset(s.idle)
	}
}

// refill makes spares up to the number wanted, in the background, unless
// that is under way already, a creation is, or the spares are closed.
func (s *vethSpares) refill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.creating || s.refilling || len(s.spares) >= s.want {
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

// makeOne adds a spare; false once there are enough, a creation has
// begun (its end starts the refill again), the spares are closed or
// making one failed (then CreateEndpoint makes its veth itself, and
// reports any error of its own; the next refill tries the next name).
func (s *vethSpares) makeOne() bool {
	s.mu.Lock()
	if s.closed || s.creating || len(s.spares) >= s.want {
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
			s.discardLocked(sp)
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

// claim makes a spare the endpoint's, as createVeth would have made it,
// in two requests that change existing devices (RTM_NEWLINK without
// NLM_F_CREATE, by index).
//
// The peer keeps its spare name, which CreateEndpoint gave the endpoint
// as PeerName before its record was written: Join hands it to Docker,
// which moves the device into the sandbox and renames it there. Renaming
// it here too would cost a second wait for an RCU grace period
// (dev_change_name calls synchronize_net), ~0.2 ms while the other CPU
// verifies the endpoint's programs. It only gets the endpoint's MAC and
// MTU, first. The host end gets its contract name (HostIfName), MAC and
// MTU and goes up. A crash between the two, or before them, leaves the
// host end under its spare name: the next start sweeps it, taking the
// peer with it, and Restore finds no veth named as the record says and
// removes the endpoint. After both, the record names the pair.
func claim(h *netlink.Handle, sp spareVeth, ep *Endpoint) error {
	peer := claimedAttrs(sp.peerIndex, sp.peerName, ep.LXCMAC, ep.Network.MTU)
	if err := h.LinkModify(&netlink.GenericLink{LinkAttrs: peer, LinkType: "veth"}); err != nil {
		return fmt.Errorf("set up spare veth %s for endpoint %d: %w", sp.peerName, ep.ID, err)
	}
	host := claimedAttrs(sp.index, ep.IfName, ep.NodeMAC, ep.Network.MTU)
	host.Flags = net.FlagUp
	if err := h.LinkModify(&netlink.GenericLink{LinkAttrs: host, LinkType: "veth"}); err != nil {
		return fmt.Errorf("rename spare veth %s to %s: %w", sp.name, ep.IfName, err)
	}
	return nil
}

// claimedAttrs are the attributes claim sets on one end: name (the same
// name is no rename), MAC and MTU (0 keeps the device's).
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
// daemon left behind (killed, it could not delete them at close), and
// moves the sequence past every name of the tag still in use: those
// spares', and the peers of endpoints that took one and are still on the
// host (Docker moves a peer into its sandbox only at Join). It runs
// before the first refill.
func (s *vethSpares) sweep() {
	links, err := listLinks()
	if err != nil {
		s.log.WithError(err).Warn("list devices to remove spare veths left by an earlier run")
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return
		}
		// What the dump had is still worth sweeping: a name is checked
		// and a device deleted by index, which the kernel never reuses
		// soon.
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range links {
		a := l.Attrs()
		seq, peer, ok := s.ownSequence(a.Name)
		if !ok || l.Type() != "veth" {
			continue
		}
		if seq >= s.next {
			s.next = seq + 1
		}
		if peer {
			// A spare's goes with its host end; an endpoint's is the
			// endpoint's.
			continue
		}
		s.log.WithField("ifname", a.Name).Debug("deleting a spare veth left by an earlier run")
		s.discardLocked(spareVeth{name: a.Name, index: a.Index})
	}
}

// listLinks lists the devices of the namespace, dumping again while a
// change of the list interrupts the dump (a busy host creates and deletes
// veths all the time); after a few tries it returns what the last dump
// had, with netlink.ErrDumpInterrupted.
func listLinks() ([]netlink.Link, error) {
	var links []netlink.Link
	var err error
	for try := 0; try < 5; try++ {
		links, err = netlink.LinkList()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return links, err
}

// deleteSpare deletes a spare pair by its host end's index; the peer goes
// with it.
func deleteSpare(log logrus.FieldLogger, sp spareVeth) {
	if err := netlink.LinkDel(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: sp.index}}); err != nil {
		log.WithError(err).WithField("ifname", sp.name).Warn("delete a spare veth")
	}
}

// discardLocked deletes a spare in the background: a deletion waits for
// an RCU barrier (tens of ms). s.mu is held.
func (s *vethSpares) discardLocked(sp spareVeth) {
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

// close deletes the spares, in parallel, and waits for that and for a
// refill or sweep under way.
func (s *vethSpares) close() {
	s.mu.Lock()
	s.closed = true
	if s.idleTimer != nil {
		s.idleTimer.Stop()
	}
	for _, sp := range s.spares {
		s.discardLocked(sp)
	}
	s.spares = nil
	s.mu.Unlock()
	s.wg.Wait()
	if s.nl != nil {
		s.nl.Close()
	}
}
