package identity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/ebpfnet/ebpfnet/atomicfile"
	"github.com/ebpfnet/ebpfnet/labels"
)

// FileAllocator is the identity backend of a single node: it numbers
// container label sets (Allocator) and CIDR prefixes (CIDRAllocator) and
// keeps the numbers in a file, so that an identity keeps its number across
// restarts (the pinned maps hold numbers). References are counted in
// memory: after a restart the daemon takes them again for the endpoints it
// restores.
//
// An identity whose last reference goes is kept, as the cluster's are
// (cluster.Identities): a container run again with the same labels within
// the grace takes it back without a write of the file or a Change, so no
// endpoint's policy is regenerated for it. The daemon frees the ones
// unreferenced for longer than the grace with CollectUnreferencedSince. It
// is safe for concurrent use.
type FileAllocator struct {
	path string

	mu    sync.Mutex
	byKey map[string]ID // canonical label string -> ID
	byID  map[ID]labels.Labels
	refs  map[ID]int
	// unrefSince is when each label identity without a reference lost
	// its last one (or was loaded or adopted without one): every label
	// identity is either in refs or here. It is kept in memory only: a
	// write per release is what keeping identities saves.
	unrefSince map[ID]time.Time
	byPrefix   map[netip.Prefix]ID
	prefixOf   map[ID]netip.Prefix
	// next is where the search for a free label identity starts: numbers
	// are handed out in a circle rather than lowest first, so a freed
	// number is reused as late as possible (a policy map that still names
	// it somewhere would otherwise allow its next owner).
	next ID
	subs subscribers
}

var (
	_ Allocator     = (*FileAllocator)(nil)
	_ CIDRAllocator = (*FileAllocator)(nil)
)

// stateFile is the persisted form.
type stateFile struct {
	Version    int          `json:"version"`
	Next       ID           `json:"next,omitempty"`
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

// NewFileAllocator loads the identities kept in path. A missing file is an
// empty allocator; a file that cannot be read back exactly is an error, not
// a fresh start, because renumbering identities silently would break the
// policy of every running container.
//
// Every label identity loaded is unreferenced from now until an endpoint
// takes it again: a restart keeps numbers for the grace, as the cluster's
// store does across restarts. The file does not say since when an
// identity has had no reference (that would cost the write per release
// that keeping it saves), and freeing one early could take a number from
// a container that is being re-run while the daemon restarts; freeing it
// one grace after the start is late at worst, and costs nothing.
func NewFileAllocator(path string) (*FileAllocator, error) {
	a := &FileAllocator{
		path:       path,
		byKey:      map[string]ID{},
		byID:       map[ID]labels.Labels{},
		refs:       map[ID]int{},
		unrefSince: map[ID]time.Time{},
		byPrefix:   map[netip.Prefix]ID{},
		prefixOf:   map[ID]netip.Prefix{},
		next:       MinAllocated,
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return a, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read identity state: %w", err)
	}
	if err := a.load(data); err != nil {
		return nil, atomicfile.Corrupt(fmt.Errorf("identity state %s is corrupt: %w", path, err))
	}
	return a, nil
}

func (a *FileAllocator) load(data []byte) error {
	var st stateFile
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	if st.Version != stateVersion {
		return fmt.Errorf("version %d, want %d", st.Version, stateVersion)
	}
	loaded := time.Now()
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
		a.unrefSince[e.ID] = loaded
		// A file of a version without a cursor continues after the
		// highest number it holds.
		if e.ID >= a.next && e.ID < MaxAllocated {
			a.next = e.ID + 1
		}
	}
	if st.Next != 0 {
		if st.Next.Kind() != KindAllocated {
			return fmt.Errorf("next identity %d is outside %d..%d", st.Next, MinAllocated, MaxAllocated)
		}
		a.next = st.Next
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

// change is one persisted step: what to add, what to drop, where the
// cursor goes.
type change struct {
	addLabels []stateEntry
	addCIDRs  []stateCIDR
	drop      map[ID]bool
	next      ID
}

// persist writes the current state changed by ch. It is called before
// memory changes: if it fails, memory still matches the file.
func (a *FileAllocator) persist(ch change) error {
	st := stateFile{Version: stateVersion, Next: a.next, Identities: []stateEntry{}, CIDRs: []stateCIDR{}}
	if ch.next != 0 {
		st.Next = ch.next
	}
	for id, ls := range a.byID {
		if !ch.drop[id] {
			st.Identities = append(st.Identities, stateEntry{ID: id, Labels: ls.Sorted()})
		}
	}
	for id, p := range a.prefixOf {
		if !ch.drop[id] {
			st.CIDRs = append(st.CIDRs, stateCIDR{ID: id, Prefix: p})
		}
	}
	st.Identities = append(st.Identities, ch.addLabels...)
	st.CIDRs = append(st.CIDRs, ch.addCIDRs...)
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

// Allocate returns the identity of a container label set and takes a
// reference: the one the set has already (also while it is kept without a
// reference: then nothing is written and no Change is sent), or the next
// free number after the last one handed out, written to the file before
// it is returned. The empty set is a label set like any other and gets its
// own identity, as in Cilium.
func (a *FileAllocator) Allocate(_ context.Context, ls labels.Labels) (ID, error) {
	if ls.HasSource(labels.SourceReserved) || ls.HasSource(labels.SourceCIDR) {
		if id, ok := reservedID(ls); ok {
			return id, nil
		}
		return 0, fmt.Errorf("allocate identity for %q: reserved and CIDR labels cannot be allocated", ls.String())
	}
	key := ls.String()
	a.mu.Lock()
	if id, ok := a.byKey[key]; ok {
		a.refs[id]++
		delete(a.unrefSince, id)
		a.mu.Unlock()
		return id, nil
	}
	id, ok := a.freeLabelID()
	if !ok {
		a.mu.Unlock()
		return 0, fmt.Errorf("allocate identity for %q: all identities %d..%d are in use", key, MinAllocated, MaxAllocated)
	}
	own := ls.Clone()
	next := id + 1
	if next > MaxAllocated {
		next = MinAllocated
	}
	if err := a.persist(change{addLabels: []stateEntry{{ID: id, Labels: own.Sorted()}}, next: next}); err != nil {
		a.mu.Unlock()
		return 0, fmt.Errorf("allocate identity for %q: %w", key, err)
	}
	a.byID[id] = own
	a.byKey[key] = id
	a.refs[id] = 1
	a.next = next
	a.subs.queue(Change{ID: id, Labels: own.Clone()})
	a.mu.Unlock()
	a.subs.deliver()
	return id, nil
}

// freeLabelID finds the first unused number from the cursor on, round the
// circle. a.mu is held.
func (a *FileAllocator) freeLabelID() (ID, bool) {
	size := int(MaxAllocated - MinAllocated + 1)
	id := a.next
	for range size {
		if id < MinAllocated || id > MaxAllocated {
			id = MinAllocated
		}
		if _, used := a.byID[id]; !used {
			return id, true
		}
		id++
	}
	return 0, false
}

// Release drops a reference. The last one changes nothing on disk and
// sends no Change: the identity is kept, unreferenced, until
// CollectUnreferencedSince frees it, so that the same labels coming back
// meanwhile take the same number back for free.
func (a *FileAllocator) Release(_ context.Context, id ID) error {
	if id.Kind() == KindReserved {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.refs[id] <= 0 {
		return fmt.Errorf("release identity %d: no reference is held", id)
	}
	if a.refs[id]--; a.refs[id] == 0 {
		delete(a.refs, id)
		a.unrefSince[id] = time.Now()
	}
	return nil
}

// CollectUnreferencedSince frees the label identities that have had no
// reference since cutoff or earlier, with one write of the file for all of
// them, and sends their Freed changes; it returns them sorted. The daemon
// calls it every so often with now minus its grace.
func (a *FileAllocator) CollectUnreferencedSince(cutoff time.Time) ([]ID, error) {
	a.mu.Lock()
	drop := map[ID]bool{}
	for id, since := range a.unrefSince {
		if !since.After(cutoff) {
			drop[id] = true
		}
	}
	if len(drop) == 0 {
		a.mu.Unlock()
		return nil, nil
	}
	if err := a.freeLocked(drop); err != nil {
		a.mu.Unlock()
		return nil, fmt.Errorf("collect unreferenced identities: %w", err)
	}
	a.mu.Unlock()
	a.subs.deliver()
	return sortedIDs(drop), nil
}

// Unreferenced returns the label identities kept without a reference and
// since when, the caller's copy.
func (a *FileAllocator) Unreferenced() map[ID]time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.unrefSince)
}

// freeLocked forgets label identities, persisted first, and queues their
// changes. a.mu is held.
func (a *FileAllocator) freeLocked(drop map[ID]bool) error {
	if err := a.persist(change{drop: drop}); err != nil {
		return err
	}
	for _, id := range sortedIDs(drop) {
		ls := a.byID[id]
		delete(a.byID, id)
		delete(a.byKey, ls.String())
		delete(a.unrefSince, id)
		a.subs.queue(Change{ID: id, Labels: ls, Freed: true})
	}
	return nil
}

// Adopt registers identities under the numbers they already carry: those
// the pinned maps and the endpoints' records hold when the file that kept
// them is lost (plugin/heal.go), so that no policy map or ipcache entry
// changes meaning. It takes no reference: restored endpoints take theirs
// as they are restored, and the rest are freed after the grace like any
// unreferenced identity.
//
// An entry that contradicts the allocator or an earlier entry (a number
// another label set or prefix has, labels or a prefix numbered otherwise,
// a number outside its range, reserved or CIDR labels) is refused and
// reported; the others are adopted, lower numbers first. A refused label
// set is numbered anew when its endpoint is restored, as after any loss.
// The cursor moves past the highest label identity adopted. The file is
// written once, also when nothing is adopted, so that it exists.
func (a *FileAllocator) Adopt(ids map[ID]labels.Labels, cidrs map[ID]netip.Prefix) (refused []error, err error) {
	a.mu.Lock()
	var ch change
	byKey := map[string]ID{}
	byPrefix := map[netip.Prefix]ID{}
	next := a.next
	for _, id := range sortedIDs(ids) {
		ls := ids[id]
		key := ls.String()
		switch have, taken := a.byID[id]; {
		case id.Kind() != KindAllocated:
			refused = append(refused, fmt.Errorf("identity %d: not a label identity (%d..%d)", id, MinAllocated, MaxAllocated))
			continue
		case ls.HasSource(labels.SourceReserved) || ls.HasSource(labels.SourceCIDR):
			refused = append(refused, fmt.Errorf("identity %d: labels %q are reserved or CIDR labels", id, key))
			continue
		case taken && have.String() == key:
			continue // held already
		case taken:
			refused = append(refused, fmt.Errorf("identity %d: labels %q, but the allocator has %q under it", id, key, have.String()))
			continue
		}
		if other, ok := a.byKey[key]; ok {
			refused = append(refused, fmt.Errorf("identity %d: labels %q have identity %d already", id, key, other))
			continue
		}
		if other, ok := byKey[key]; ok {
			refused = append(refused, fmt.Errorf("identity %d: labels %q are adopted as identity %d", id, key, other))
			continue
		}
		byKey[key] = id
		ch.addLabels = append(ch.addLabels, stateEntry{ID: id, Labels: ls.Sorted()})
		if id >= next {
			next = id + 1
			if next > MaxAllocated {
				next = MinAllocated
			}
		}
	}
	for _, id := range sortedIDs(cidrs) {
		p := cidrs[id].Masked()
		switch have, taken := a.prefixOf[id]; {
		case id.Kind() != KindCIDR:
			refused = append(refused, fmt.Errorf("CIDR identity %d: outside %d..%d", id, LocalScope, MaxLocal))
			continue
		case !p.IsValid() || p.Bits() == 0:
			refused = append(refused, fmt.Errorf("CIDR identity %d: prefix %v cannot be numbered", id, cidrs[id]))
			continue
		case taken && have == p:
			continue
		case taken:
			refused = append(refused, fmt.Errorf("CIDR identity %d: prefix %s, but the allocator has %s under it", id, p, have))
			continue
		}
		if other, ok := a.byPrefix[p]; ok {
			refused = append(refused, fmt.Errorf("CIDR identity %d: prefix %s has identity %d already", id, p, other))
			continue
		}
		if other, ok := byPrefix[p]; ok {
			refused = append(refused, fmt.Errorf("CIDR identity %d: prefix %s is adopted as identity %d", id, p, other))
			continue
		}
		byPrefix[p] = id
		ch.addCIDRs = append(ch.addCIDRs, stateCIDR{ID: id, Prefix: p})
	}
	ch.next = next
	if err := a.persist(ch); err != nil {
		a.mu.Unlock()
		return refused, fmt.Errorf("adopt identities: %w", err)
	}
	adopted := time.Now()
	for _, e := range ch.addLabels {
		ls := labels.FromLabels(e.Labels...)
		a.byID[e.ID] = ls
		a.byKey[ls.String()] = e.ID
		a.unrefSince[e.ID] = adopted
		a.subs.queue(Change{ID: e.ID, Labels: ls.Clone()})
	}
	for _, c := range ch.addCIDRs {
		a.prefixOf[c.ID] = c.Prefix
		a.byPrefix[c.Prefix] = c.ID
	}
	a.next = next
	a.mu.Unlock()
	a.subs.deliver()
	return refused, nil
}

// sortedIDs returns the keys of m in ascending order.
func sortedIDs[V any](m map[ID]V) []ID {
	out := make([]ID, 0, len(m))
	for id := range m {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// AllocateCIDR returns the identity of a prefix, the same one every time for
// the same (masked) prefix, from LocalScope up, persisted like Allocate's.
// A /0 prefix is the world itself and returns World without allocating.
// CIDR identities are owned by the rule set as a whole (ReleaseCIDR), not
// counted per reference.
func (a *FileAllocator) AllocateCIDR(p netip.Prefix) (ID, error) {
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
	if err := a.persist(change{addCIDRs: []stateCIDR{{ID: id, Prefix: p}}}); err != nil {
		return 0, fmt.Errorf("allocate CIDR identity for %s: %w", p, err)
	}
	a.prefixOf[id] = p
	a.byPrefix[p] = id
	return id, nil
}

// ReleaseCIDR forgets CIDR identities, with one write of the file for all
// of them. Releasing an unknown or non-CIDR ID is not an error.
func (a *FileAllocator) ReleaseCIDR(ids ...ID) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	drop := map[ID]bool{}
	for _, id := range ids {
		if _, ok := a.prefixOf[id]; ok {
			drop[id] = true
		}
	}
	if len(drop) == 0 {
		return nil
	}
	if err := a.persist(change{drop: drop}); err != nil {
		return fmt.Errorf("release CIDR identities %v: %w", ids, err)
	}
	for id := range drop {
		delete(a.byPrefix, a.prefixOf[id])
		delete(a.prefixOf, id)
	}
	return nil
}

// CIDRs lists every CIDR identity with its prefix.
func (a *FileAllocator) CIDRs() map[ID]netip.Prefix {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.prefixOf)
}

// Lookup returns the labels of an allocated label identity, the caller's
// copy.
func (a *FileAllocator) Lookup(id ID) (labels.Labels, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ls, ok := a.byID[id]; ok {
		return ls.Clone(), true
	}
	return nil, false
}

// All returns every allocated label identity, the caller's copy.
func (a *FileAllocator) All() map[ID]labels.Labels {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[ID]labels.Labels, len(a.byID))
	for id, ls := range a.byID {
		out[id] = ls.Clone()
	}
	return out
}

// References returns how many references id has, for diagnostics and
// tests.
func (a *FileAllocator) References(id ID) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.refs[id]
}

// Subscribe implements Allocator.
func (a *FileAllocator) Subscribe(fn func(Change)) (cancel func()) {
	return a.subs.add(fn)
}
