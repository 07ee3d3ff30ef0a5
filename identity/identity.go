package identity

import (
	"context"
	"net/netip"
	"sort"
	"time"

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

// DefaultGrace is how long a label identity is kept once nothing holds a
// reference on it, on a single node as in a cluster: a container re-run
// within it keeps its number, and no endpoint's policy changes twice.
const DefaultGrace = 5 * time.Minute

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

// Allocator numbers container label sets: the same set gets the same
// identity for as long as anyone holds it. Every Allocate takes a reference
// and every Release drops one, as Cilium's allocator counts them: whether
// an identity is still in use is the allocator's to know, not the caller's,
// because in a cluster other nodes hold references too. A file on one
// node and etcd in a cluster are its backends.
type Allocator interface {
	// Allocate returns the identity of ls, numbering it the first time,
	// and takes a reference on it for the caller. A set that is exactly
	// one reserved label returns that reserved identity and takes no
	// reference; other sets with reserved or CIDR labels are refused.
	// It may wait for a remote store: ctx bounds the wait.
	Allocate(ctx context.Context, ls labels.Labels) (ID, error)
	// Release drops a reference that Allocate took. An identity without
	// references is freed only once it has had none for a grace period
	// (on any node, in a cluster), so that labels that come back soon
	// keep their number and nobody's policy changes. Releasing a reserved
	// identity does nothing; one the caller holds no reference on is an
	// error.
	Release(ctx context.Context, id ID) error
	// Lookup returns the labels of an allocated identity.
	Lookup(id ID) (labels.Labels, bool)
	// All lists every allocated identity with its labels, the caller's
	// copy: those kept without a reference too.
	All() map[ID]labels.Labels
	// Subscribe calls fn for every identity that appears or is freed from
	// now on, in order, until the returned cancel is called. fn must not
	// block: the policy side only queues a regeneration.
	Subscribe(fn func(Change)) (cancel func())
}

// Change says that an identity appeared (Labels set) or was freed.
type Change struct {
	ID     ID
	Labels labels.Labels
	Freed  bool
}

// CIDRAllocator numbers the prefixes rules name. CIDR identities are always
// the node's own (Cilium's local scope): a packet never carries one to
// another node.
type CIDRAllocator interface {
	// AllocateCIDR returns the identity of prefix p, the same for the same
	// masked prefix; a /0 is World.
	AllocateCIDR(p netip.Prefix) (ID, error)
	// ReleaseCIDR frees CIDR identities no rule names any more.
	ReleaseCIDR(ids ...ID) error
	// CIDRs lists every CIDR identity with its prefix.
	CIDRs() map[ID]netip.Prefix
}

// Registry resolves every identity, whoever numbered it: the reserved
// ones, the label sets' (Labels) and the prefixes' (CIDRs). Policy is
// compiled and events are named against it.
type Registry struct {
	Labels Allocator
	CIDRs  CIDRAllocator
}

// Lookup returns the labels of any identity.
func (r Registry) Lookup(id ID) (labels.Labels, bool) {
	if ls, ok := ReservedLabels(id); ok {
		return ls, true
	}
	switch id.Kind() {
	case KindAllocated:
		return r.Labels.Lookup(id)
	case KindCIDR:
		if p, ok := r.CIDRs.CIDRs()[id]; ok {
			return CIDRLabels(p), true
		}
	}
	return nil, false
}

// All returns every identity the policy compiler may meet, reserved,
// allocated and CIDR, with its labels, as the caller's copy.
func (r Registry) All() map[ID]labels.Labels {
	out := r.Labels.All()
	for _, id := range []ID{Host, World, Init} {
		out[id], _ = ReservedLabels(id)
	}
	for id, p := range r.CIDRs.CIDRs() {
		out[id] = CIDRLabels(p)
	}
	return out
}

// List returns All as entries sorted by ID.
func (r Registry) List() []Entry {
	all := r.All()
	out := make([]Entry, 0, len(all))
	for id, ls := range all {
		out = append(out, Entry{ID: id, Labels: ls})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
