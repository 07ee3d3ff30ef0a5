package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/ebpfnet/ebpfnet/atomicfile"
)

// Repository holds the imported rules and a revision that grows with every
// change, kept in a file so that both survive a restart (the revision lets a
// caller tell whether an endpoint's policy is current). It is safe for
// concurrent use.
type Repository struct {
	path string

	mu       sync.RWMutex
	rules    []Rule
	revision uint64
	// lost says why the rules in force were lost (MarkLost); empty when
	// they were not. The next change of the rules clears it.
	lost string

	// subs learn every new revision, in order (notifyMu keeps two
	// changes from reaching them crossed).
	subsMu   sync.Mutex
	subs     map[int]func(revision uint64)
	nextSub  int
	notifyMu sync.Mutex
}

type repositoryFile struct {
	Version  int             `json:"version"`
	Revision uint64          `json:"revision"`
	Rules    json.RawMessage `json:"rules"`
	// Lost is set by MarkLost, so that a restart still knows.
	Lost string `json:"lost,omitempty"`
}

const repositoryVersion = 1

// NewRepository loads the rules kept in path; a missing file is an empty
// repository at revision 0. A file that does not parse is an error rather
// than an empty policy, which would silently open every endpoint.
func NewRepository(path string) (*Repository, error) {
	r := &Repository{path: path}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read policy state: %w", err)
	}
	var f repositoryFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, atomicfile.Corrupt(fmt.Errorf("policy state %s is corrupt: %w", path, err))
	}
	if f.Version != repositoryVersion {
		return nil, atomicfile.Corrupt(fmt.Errorf("policy state %s is corrupt: version %d, want %d", path, f.Version, repositoryVersion))
	}
	rules, err := Parse(f.Rules)
	if err != nil {
		return nil, atomicfile.Corrupt(fmt.Errorf("policy state %s is corrupt: %w", path, err))
	}
	r.rules, r.revision, r.lost = rules, f.Revision, f.Lost
	return r, nil
}

// MarkLost records, in the file first, that the rules in force were lost
// (their file was corrupt or missing: compiled policy cannot be turned
// back into rules) and why. The repository holds no rules then; the
// endpoint manager keeps every endpoint's policy as it is and denies new
// endpoints until the rules change again (an import or a delete of all),
// which clears the mark.
func (r *Repository) MarkLost(why string) error {
	if why == "" {
		return fmt.Errorf("mark policy lost: no reason given")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.write(repositoryFile{Version: repositoryVersion, Revision: r.revision, Rules: json.RawMessage("[]"), Lost: why}); err != nil {
		return fmt.Errorf("mark policy lost: %w", err)
	}
	r.rules, r.lost = nil, why
	return nil
}

// Lost says why the rules in force were lost, and whether they were
// (MarkLost), until the rules change again.
func (r *Repository) Lost() (why string, lost bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.lost, r.lost != ""
}

// Persist writes the repository as it is. The daemon writes a missing
// file at a fresh start: a file missing later, on a node with endpoints,
// is taken for a lost one (plugin/heal.go).
func (r *Repository) Persist() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lost != "" {
		return nil // the file says so already
	}
	return r.persist(r.rules, r.revision)
}

// persist writes rules and revision; the caller changes memory only after
// it succeeds.
func (r *Repository) persist(rules []Rule, revision uint64) error {
	if rules == nil {
		rules = []Rule{}
	}
	raw, err := json.Marshal(rules)
	if err != nil {
		return fmt.Errorf("encode rules: %w", err)
	}
	return r.write(repositoryFile{Version: repositoryVersion, Revision: revision, Rules: raw})
}

func (r *Repository) write(f repositoryFile) error {
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("encode policy state: %w", err)
	}
	if err := atomicfile.Write(r.path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("persist policy: %w", err)
	}
	return nil
}

// Import adds rules as Cilium's policy import does (see Merge). The rules
// are validated as Parse would; on any error, validation or persistence,
// nothing changes. It returns the new revision.
func (r *Repository) Import(rules []Rule) (uint64, error) {
	r.mu.Lock()
	next, err := Merge(r.rules, rules)
	if err != nil {
		r.mu.Unlock()
		return 0, fmt.Errorf("import policy: %w", err)
	}
	if err := r.persist(next, r.revision+1); err != nil {
		r.mu.Unlock()
		return 0, fmt.Errorf("import policy: %w", err)
	}
	r.rules = next
	r.revision++
	return r.changed(), nil
}

// Merge returns the rule set that importing incoming into existing makes,
// as Cilium's policy import does: every existing rule whose labels equal
// (as a set) those of an incoming rule is replaced; others stay, in order,
// and the incoming rules follow. Rules without labels never replace
// anything, because they cannot be told apart. incoming is validated as
// Parse would. Neither argument is changed; the result is a copy. A store
// other than the file (etcd in a cluster) imports with it, so that both
// replace alike.
func Merge(existing, incoming []Rule) ([]Rule, error) {
	if err := Validate(incoming); err != nil {
		return nil, err
	}
	replaced := map[string]bool{}
	for _, nr := range incoming {
		if len(nr.Labels) > 0 {
			replaced[labelSetKey(nr.Labels)] = true
		}
	}
	next := []Rule{}
	for _, old := range existing {
		if len(old.Labels) == 0 || !replaced[labelSetKey(old.Labels)] {
			next = append(next, old.clone())
		}
	}
	for _, nr := range incoming {
		next = append(next, nr.clone())
	}
	return next, nil
}

// Set replaces the rules and the revision with those of another store
// (the cluster's, whose copy this repository then is), persisted first,
// and tells the subscribers. A revision that is not newer than the one
// held changes nothing and reports false: a store's notifications may
// repeat or arrive late, and the endpoints must never go back to older
// rules.
func (r *Repository) Set(rules []Rule, revision uint64) (bool, error) {
	if err := Validate(rules); err != nil {
		return false, fmt.Errorf("set policy revision %d: %w", revision, err)
	}
	r.mu.Lock()
	if revision <= r.revision {
		r.mu.Unlock()
		return false, nil
	}
	next := make([]Rule, 0, len(rules))
	for _, rule := range rules {
		next = append(next, rule.clone())
	}
	if err := r.persist(next, revision); err != nil {
		r.mu.Unlock()
		return false, fmt.Errorf("set policy revision %d: %w", revision, err)
	}
	r.rules, r.revision = next, revision
	r.changed()
	return true, nil
}

// DeleteAll removes every rule and returns the new revision.
func (r *Repository) DeleteAll() (uint64, error) {
	r.mu.Lock()
	if err := r.persist(nil, r.revision+1); err != nil {
		r.mu.Unlock()
		return 0, fmt.Errorf("delete policy: %w", err)
	}
	r.rules = nil
	r.revision++
	return r.changed(), nil
}

// changed tells the subscribers about the revision just made; r.mu is held
// on entry and released here, before they are called (they may read the
// rules back). notifyMu, taken before r.mu goes, keeps a later change from
// overtaking this one.
func (r *Repository) changed() uint64 {
	rev := r.revision
	// The file was just written without the mark: rules are in force
	// again, whatever they are.
	r.lost = ""
	r.notifyMu.Lock()
	r.mu.Unlock()
	defer r.notifyMu.Unlock()
	r.subsMu.Lock()
	fns := make([]func(uint64), 0, len(r.subs))
	for _, fn := range r.subs {
		fns = append(fns, fn)
	}
	r.subsMu.Unlock()
	for _, fn := range fns {
		fn(rev)
	}
	return rev
}

// Subscribe calls fn with every new revision from now on, in order, until
// cancel is called. fn must not block (the daemon only queues a
// regeneration).
func (r *Repository) Subscribe(fn func(revision uint64)) (cancel func()) {
	r.subsMu.Lock()
	defer r.subsMu.Unlock()
	if r.subs == nil {
		r.subs = map[int]func(uint64){}
	}
	id := r.nextSub
	r.nextSub++
	r.subs[id] = fn
	return func() {
		r.subsMu.Lock()
		defer r.subsMu.Unlock()
		delete(r.subs, id)
	}
}

// Rules returns a copy of the current rules, in import order.
func (r *Repository) Rules() []Rule {
	rules, _ := r.Snapshot()
	return rules
}

// Revision returns the current revision.
func (r *Repository) Revision() uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.revision
}

// Snapshot returns a copy of the rules together with their revision, so a
// caller can record which revision a compiled policy reflects.
func (r *Repository) Snapshot() ([]Rule, uint64) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]Rule, 0, len(r.rules))
	for _, rule := range r.rules {
		out = append(out, rule.clone())
	}
	return out, r.revision
}

// labelSetKey is an order-independent key for a rule's labels; duplicates
// collapse, as in a set.
func labelSetKey(ls []RuleLabel) string {
	set := map[RuleLabel]struct{}{}
	for _, l := range ls {
		set[l] = struct{}{}
	}
	keys := make([]RuleLabel, 0, len(set))
	for l := range set {
		keys = append(keys, l)
	}
	sortRuleLabels(keys)
	data, _ := json.Marshal(keys) // a slice of string structs always encodes
	return string(data)
}
