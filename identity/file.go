package identity

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"sync"

	"github.com/ebpfnet/ebpfnet/atomicfile"
	"github.com/ebpfnet/ebpfnet/labels"
)

const (
	// MaxAllocated is the last identity handed to a label set. Cilium keeps
	// cluster-scope identities below 2^16; keeping the same bound means our
	// numbers never collide with the local-scope range below.
	MaxAllocated ID = 1<<16 - 1
	// LocalScope is the first CIDR identity. Cilium gives CIDR identities
	// node-local numbers from 2^24 up ("local scope"); so do we, so that an
	// ID alone tells a CIDR identity from a container's.
	LocalScope ID = 1 << 24
	// MaxLocal is the last CIDR identity.
	MaxLocal ID = 1<<25 - 1
)

// Kind classifies an identity by its number.
type Kind int

// Kinds of identities.
const (
	KindReserved  Kind = iota // below MinAllocated
	KindAllocated             // a container label set, MinAllocated..MaxAllocated
	KindCIDR                  // a CIDR prefix, LocalScope..MaxLocal
	KindInvalid               // outside every range
)

// Kind tells which range id falls in.
func (id ID) Kind() Kind {
	switch {
	case id < MinAllocated:
		return KindReserved
	case id <= MaxAllocated:
		return KindAllocated
	case id >= LocalScope && id <= MaxLocal:
		return KindCIDR
	}
	return KindInvalid
}

// ReservedLabels returns the label set of a reserved identity (host, world,
// init); ok is false for any other ID, Unknown included.
func ReservedLabels(id ID) (labels.Labels, bool) {
	switch id {
	case Host:
		return labels.FromLabels(labels.Host()), true
	case World:
		return labels.FromLabels(labels.World()), true
	case Init:
		return labels.FromLabels(labels.Init()), true
	}
	return nil, false
}

// CIDRLabels is the label set of a CIDR identity: cidr:<prefix> and
// reserved:world, because everything a CIDR names lies outside the node, as
// Cilium's CIDR identities also carry reserved:world. Cilium adds a label for
// every containing prefix too; we do not, because the policy compiler decides
// containment from the prefix itself (see CIDRPrefix).
func CIDRLabels(p netip.Prefix) labels.Labels {
	return labels.FromLabels(labels.New(labels.SourceCIDR, p.Masked().String(), ""), labels.World())
}

// CIDRPrefix returns the prefix a CIDR identity's label set names.
func CIDRPrefix(ls labels.Labels) (netip.Prefix, bool) {
	for _, l := range ls {
		if l.Source == labels.SourceCIDR {
			p, err := netip.ParsePrefix(l.Key)
			if err == nil {
				return p, true
			}
		}
	}
	return netip.Prefix{}, false
}

// reservedID returns the reserved identity whose label set is exactly ls.
// Allocate and Find both answer such a set without touching the allocator's
// state: reserved identities are fixed, never allocated or persisted.
func reservedID(ls labels.Labels) (ID, bool) {
	for _, id := range []ID{Host, World, Init} {
		if r, _ := ReservedLabels(id); r.Equal(ls) {
			return id, true
		}
	}
	return 0, false
}

// Entry is one identity and its labels.
type Entry struct {
	ID     ID            `json:"id"`
	Labels labels.Labels `json:"labels"`
}

// Allocator hands out identities for container label sets and CIDR
// prefixes and keeps them in a file, so that an identity keeps its number
// across restarts (the pinned maps and other nodes' views depend on it). It
// is safe for concurrent use.
type Allocator struct {
	path string

	mu       sync.Mutex
	byKey    map[string]ID // canonical label string -> ID
	byID     map[ID]labels.Labels
	byPrefix map[netip.Prefix]ID
	prefixOf map[ID]netip.Prefix
}

// stateFile is the persisted form.
type stateFile struct {
	Version    int          `json:"version"`
	Identities []stateEntry `json:"identities"`
	CIDRs      []stateCIDR  `json:"cidrs"`
}

type stateEntry struct {
	ID     ID             `json:"id"`
	Labels []labels.Label `json:"labels"`
}

type stateCIDR struct {
	ID     ID           `json:"id"`
	Prefix netip.Prefix `json:"prefix"`
}

const stateVersion = 1

// NewAllocator loads the identities kept in path. A missing file is an
// empty allocator; a file that cannot be read back exactly is an error, not
// a fresh start, because renumbering identities silently would break the
// policy of every running container.
func NewAllocator(path string) (*Allocator, error) {
	a := &Allocator{
		path:     path,
		byKey:    map[string]ID{},
		byID:     map[ID]labels.Labels{},
		byPrefix: map[netip.Prefix]ID{},
		prefixOf: map[ID]netip.Prefix{},
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return a, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read identity state: %w", err)
	}
	if err := a.load(data); err != nil {
		return nil, fmt.Errorf("identity state %s is corrupt: %w", path, err)
	}
	return a, nil
}

func (a *Allocator) load(data []byte) error {
	var st stateFile
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	if st.Version != stateVersion {
		return fmt.Errorf("version %d, want %d", st.Version, stateVersion)
	}
	for _, e := range st.Identities {
		if e.ID.Kind() != KindAllocated {
			return fmt.Errorf("identity %d is outside %d..%d", e.ID, MinAllocated, MaxAllocated)
		}
		if _, dup := a.byID[e.ID]; dup {
			return fmt.Errorf("identity %d appears twice", e.ID)
		}
		ls := labels.FromLabels(e.Labels...)
		key := ls.String()
		if _, dup := a.byKey[key]; dup {
			return fmt.Errorf("labels %q appear twice", key)
		}
		a.byID[e.ID] = ls
		a.byKey[key] = e.ID
	}
	for _, c := range st.CIDRs {
		if c.ID.Kind() != KindCIDR {
			return fmt.Errorf("CIDR identity %d is outside %d..%d", c.ID, LocalScope, MaxLocal)
		}
		if !c.Prefix.IsValid() || c.Prefix != c.Prefix.Masked() {
			return fmt.Errorf("CIDR identity %d: prefix %q is not a masked prefix", c.ID, c.Prefix)
		}
		if _, dup := a.prefixOf[c.ID]; dup {
			return fmt.Errorf("CIDR identity %d appears twice", c.ID)
		}
		if _, dup := a.byPrefix[c.Prefix]; dup {
			return fmt.Errorf("prefix %s appears twice", c.Prefix)
		}
		a.prefixOf[c.ID] = c.Prefix
		a.byPrefix[c.Prefix] = c.ID
	}
	return nil
}

// persist writes the current state, changed by the given additions and
// removals, and is called before the maps change: if it fails, memory still
// matches the file.
func (a *Allocator) persist(addLabels *stateEntry, addCIDR *stateCIDR, drop map[ID]bool) error {
	st := stateFile{Version: stateVersion, Identities: []stateEntry{}, CIDRs: []stateCIDR{}}
	for id, ls := range a.byID {
		if !drop[id] {
			st.Identities = append(st.Identities, stateEntry{ID: id, Labels: ls.Sorted()})
		}
	}
	for id, p := range a.prefixOf {
		if !drop[id] {
			st.CIDRs = append(st.CIDRs, stateCIDR{ID: id, Prefix: p})
		}
	}
	if addLabels != nil {
		st.Identities = append(st.Identities, *addLabels)
	}
	if addCIDR != nil {
		st.CIDRs = append(st.CIDRs, *addCIDR)
	}
	sort.Slice(st.Identities, func(i, j int) bool { return st.Identities[i].ID < st.Identities[j].ID })
	sort.Slice(st.CIDRs, func(i, j int) bool { return st.CIDRs[i].ID < st.CIDRs[j].ID })
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode identity state: %w", err)
	}
	if err := atomicfile.Write(a.path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("persist identity state: %w", err)
	}
	return nil
}

// Allocate returns the identity of a container label set: the one it already
// has, or the lowest free number from MinAllocated, written to the file
// before it is returned. The empty set is a label set like any other and gets
// its own identity, as in Cilium. A set that is exactly one reserved label
// (reserved:host, reserved:world, reserved:init) returns that reserved
// identity; any other set with reserved or CIDR labels is refused, because
// those identities are not the allocator's to invent (use AllocateCIDR).
func (a *Allocator) Allocate(ls labels.Labels) (ID, error) {
	if ls.HasSource(labels.SourceReserved) || ls.HasSource(labels.SourceCIDR) {
		if id, ok := reservedID(ls); ok {
			return id, nil
		}
		return 0, fmt.Errorf("allocate identity for %q: reserved and CIDR labels cannot be allocated", ls.String())
	}
	key := ls.String()
	a.mu.Lock()
	defer a.mu.Unlock()
	if id, ok := a.byKey[key]; ok {
		return id, nil
	}
	id := MinAllocated
	for ; id <= MaxAllocated; id++ {
		if _, used := a.byID[id]; !used {
			break
		}
	}
	if id > MaxAllocated {
		return 0, fmt.Errorf("allocate identity for %q: all identities %d..%d are in use", key, MinAllocated, MaxAllocated)
	}
	own := ls.Clone()
	if err := a.persist(&stateEntry{ID: id, Labels: own.Sorted()}, nil, nil); err != nil {
		return 0, fmt.Errorf("allocate identity for %q: %w", key, err)
	}
	a.byID[id] = own
	a.byKey[key] = id
	return id, nil
}

// AllocateCIDR returns the identity of a prefix, the same one every time for
// the same (masked) prefix, from LocalScope up, persisted like Allocate's.
// A /0 prefix is the world itself and returns World without allocating.
func (a *Allocator) AllocateCIDR(p netip.Prefix) (ID, error) {
	if !p.IsValid() {
		return 0, fmt.Errorf("allocate CIDR identity: invalid prefix %q", p)
	}
	p = p.Masked()
	if p.Bits() == 0 {
		return World, nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if id, ok := a.byPrefix[p]; ok {
		return id, nil
	}
	id := LocalScope
	for ; id <= MaxLocal; id++ {
		if _, used := a.prefixOf[id]; !used {
			break
		}
	}
	if id > MaxLocal {
		return 0, fmt.Errorf("allocate CIDR identity for %s: all local identities are in use", p)
	}
	if err := a.persist(nil, &stateCIDR{ID: id, Prefix: p}, nil); err != nil {
		return 0, fmt.Errorf("allocate CIDR identity for %s: %w", p, err)
	}
	a.prefixOf[id] = p
	a.byPrefix[p] = id
	return id, nil
}

// Release forgets allocated or CIDR identities, so that their numbers can
// be handed out again, with one write of the file for all of them. The
// caller decides when nothing uses them any more: the allocator keeps no
// reference counts, because only the daemon knows which endpoints and rules
// are alive. Releasing an unknown ID is not an error.
func (a *Allocator) Release(ids ...ID) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	drop := map[ID]bool{}
	for _, id := range ids {
		_, isLabels := a.byID[id]
		_, isCIDR := a.prefixOf[id]
		if isLabels || isCIDR {
			drop[id] = true
		}
	}
	if len(drop) == 0 {
		return nil
	}
	if err := a.persist(nil, nil, drop); err != nil {
		return fmt.Errorf("release identities %v: %w", ids, err)
	}
	for id := range drop {
		if ls, ok := a.byID[id]; ok {
			delete(a.byID, id)
			delete(a.byKey, ls.String())
		}
		if p, ok := a.prefixOf[id]; ok {
			delete(a.prefixOf, id)
			delete(a.byPrefix, p)
		}
	}
	return nil
}

// Find returns the identity label set ls already has, without allocating
// one.
func (a *Allocator) Find(ls labels.Labels) (ID, bool) {
	if id, ok := reservedID(ls); ok {
		return id, true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	id, ok := a.byKey[ls.String()]
	return id, ok
}

// Lookup returns the labels of an identity: reserved ones resolve to their
// reserved label, CIDR ones to CIDRLabels. The result is the caller's copy.
func (a *Allocator) Lookup(id ID) (labels.Labels, bool) {
	if ls, ok := ReservedLabels(id); ok {
		return ls, true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if ls, ok := a.byID[id]; ok {
		return ls.Clone(), true
	}
	if p, ok := a.prefixOf[id]; ok {
		return CIDRLabels(p), true
	}
	return nil, false
}

// All returns every identity the policy compiler may meet — reserved,
// allocated and CIDR — with its labels, as the caller's copy.
func (a *Allocator) All() map[ID]labels.Labels {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[ID]labels.Labels, len(a.byID)+len(a.prefixOf)+3)
	for _, id := range []ID{Host, World, Init} {
		out[id], _ = ReservedLabels(id)
	}
	for id, ls := range a.byID {
		out[id] = ls.Clone()
	}
	for id, p := range a.prefixOf {
		out[id] = CIDRLabels(p)
	}
	return out
}

// List returns All as entries sorted by ID.
func (a *Allocator) List() []Entry {
	all := a.All()
	out := make([]Entry, 0, len(all))
	for id, ls := range all {
		out = append(out, Entry{ID: id, Labels: ls})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
