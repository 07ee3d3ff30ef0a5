package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"

	"github.com/ebpfnet/ebpfnet/atomicfile"
)

// stateVersion is bumped whenever the file format changes incompatibly, so
// that an older or newer daemon refuses a file it would misread.
const stateVersion = 1

// Store keeps the IPAM state across restarts, since Docker never replays
// pool or address requests to a remote IPAM driver. FileStore is the one
// node's backend; the Driver writes the whole state after every change
// and reads it once at start.
type Store interface {
	// Load returns the saved state; a store that never saved anything
	// returns an empty State.
	Load() (State, error)
	// Save replaces the saved state, atomically.
	Save(State) error
}

// State is every pool with its addresses: the JSON document of a
// FileStore.
type State struct {
	Version int         `json:"version"`
	Pools   []PoolState `json:"pools"`
	// Pending says the state was rebuilt from what the endpoints'
	// records know, after the file was lost, and Docker has not been
	// asked yet what it holds (Driver.Confirm): no address is handed out
	// meanwhile, since one in use may be missing.
	Pending bool `json:"pending,omitempty"`
	// Generation counts a MirrorStore's writes, so that it loads the
	// newer of its two copies.
	Generation uint64 `json:"generation,omitempty"`
	// AddressesTrail marks a MirrorStore's durable copy: its addresses
	// are those of its last write, and the live copy holds today's.
	AddressesTrail bool `json:"addressesTrail,omitempty"`
}

// PoolState is one pool of State.
type PoolState struct {
	ID           string       `json:"id"`
	AddressSpace string       `json:"addressSpace"`
	Pool         netip.Prefix `json:"pool"`
	SubPool      netip.Prefix `json:"subPool"`
	Gateway      netip.Addr   `json:"gateway"`
	// Last keeps the sequential allocation going where it stopped, so a
	// restart does not hand out a just-released address again.
	Last netip.Addr `json:"last"`
	// Block marks SubPool as this node's block of a cluster network.
	Block     bool        `json:"block,omitempty"`
	Addresses addressList `json:"addresses"`
}

// addressList is PoolState's addresses. It writes its JSON array itself:
// the state is written after every address change, and encoding/json's
// reflection and one TextMarshaler call per address were most of that
// write with many addresses held. It reads as a plain []netip.Addr does.
type addressList []netip.Addr

// MarshalJSON implements json.Marshaler.
func (l addressList) MarshalJSON() ([]byte, error) {
	out := make([]byte, 0, 2+len(l)*len(`"255.255.255.255",`))
	out = append(out, '[')
	for i, a := range l {
		if i > 0 {
			out = append(out, ',')
		}
		if a.Zone() != "" {
			// A zone is free text: let encoding/json quote it.
			q, err := json.Marshal(a.String())
			if err != nil {
				return nil, err
			}
			out = append(out, q...)
			continue
		}
		out = append(out, '"')
		out = a.AppendTo(out)
		out = append(out, '"')
	}
	return append(out, ']'), nil
}

// snapshot renders the allocator as the state document, pools and addresses
// sorted so that the file is stable and diffable.
func (a *allocator) snapshot(pending bool) State {
	st := State{Version: stateVersion, Pools: []PoolState{}, Pending: pending}
	for _, p := range a.sortedPools() {
		st.Pools = append(st.Pools, PoolState{
			ID:           p.id,
			AddressSpace: p.addressSpace,
			Pool:         p.prefix,
			SubPool:      p.subPool,
			Gateway:      p.gateway,
			Last:         p.last,
			Block:        p.block,
			Addresses:    p.addresses(),
		})
	}
	return st
}

// FileStore keeps the state in one JSON file, written atomically.
type FileStore struct {
	Path string
}

// String names the store in errors: "file /var/lib/ebpfnet/ipam.json".
func (f FileStore) String() string { return "file " + f.Path }

// Save implements Store: atomic and durable, indented for people to read.
func (f FileStore) Save(st State) error { return f.save(st, atomicfile.Write, true) }

// SaveVolatile implements VolatileSaver: atomic, not flushed to the disk,
// and compact: it is written after every address change, and indenting
// cost as much as encoding (`jq . FILE` shows it indented).
func (f FileStore) SaveVolatile(st State) error {
	return f.save(st, atomicfile.WriteVolatile, false)
}

func (f FileStore) save(st State, write func(string, []byte, os.FileMode) error, indent bool) error {
	marshal := json.Marshal
	if indent {
		marshal = func(v any) ([]byte, error) { return json.MarshalIndent(v, "", "  ") }
	}
	data, err := marshal(st)
	if err != nil {
		return fmt.Errorf("encode IPAM state: %w", err)
	}
	if err := write(f.Path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("persist IPAM state: %w", err)
	}
	return nil
}

// VolatileSaver is a Store that can also save without waiting for the
// disk. The Driver uses it for address changes: a power loss may lose the
// last of them, and nothing is lost by that. The containers that held
// those addresses are gone with the machine; Docker asks for their
// addresses again as it starts them; and reconcile, after each start,
// releases what Docker no longer holds and (heal) takes what it holds.
// Pools change rarely and are saved durably: Docker never asks for one
// again.
type VolatileSaver interface {
	SaveVolatile(State) error
}

// Load implements Store. A missing file is a fresh node; a file that does
// not decode is an error, because discarding it would hand out addresses
// that running containers still use.
func (f FileStore) Load() (State, error) {
	st, err := readState(f.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return State{}, nil
	}
	return st, err
}

// load fills an empty allocator from the store and says whether the state
// is pending (State.Pending). State that does not hold together is
// corrupt, for the same reason as an undecodable file.
func (a *allocator) load(store Store) (pending bool, err error) {
	st, err := store.Load()
	if err != nil {
		return false, err
	}
	if err := a.restoreChecked(st, fmt.Sprint(store)); err != nil {
		return false, err
	}
	return st.Pending, nil
}

// restoreChecked restores st into a (a state never saved is empty), an
// error marked corrupt if it does not hold together; where names the
// copy in the error.
func (a *allocator) restoreChecked(st State, where string) error {
	if st.Version == 0 && len(st.Pools) == 0 {
		return nil
	}
	if err := a.restore(st); err != nil {
		return atomicfile.Corrupt(fmt.Errorf("IPAM state %s is corrupt: %w", where, err))
	}
	return nil
}

// restore rebuilds pools from st, checking every invariant the allocator
// relies on instead of trusting the file.
func (a *allocator) restore(st State) error {
	if st.Version != stateVersion {
		return fmt.Errorf("version %d, want %d", st.Version, stateVersion)
	}
	for i, ps := range st.Pools {
		if err := a.restorePool(ps); err != nil {
			return fmt.Errorf("pool %d (%q): %w", i, ps.ID, err)
		}
	}
	return nil
}

func (a *allocator) restorePool(ps PoolState) error {
	if !validAddressSpace(ps.AddressSpace) {
		return fmt.Errorf("unknown address space %q", ps.AddressSpace)
	}
	if !ps.Pool.IsValid() || ps.Pool.Addr().Is4In6() || ps.Pool != ps.Pool.Masked() {
		return fmt.Errorf("invalid pool %s", ps.Pool)
	}
	if err := checkPoolSize(ps.Pool); err != nil {
		return err
	}
	if ps.SubPool.IsValid() {
		if ps.SubPool != ps.SubPool.Masked() {
			return fmt.Errorf("invalid ip-range %s", ps.SubPool)
		}
		if err := checkSubPool(ps.Pool, ps.SubPool); err != nil {
			return err
		}
	}
	if want := poolID(ps.AddressSpace, ps.Pool, ps.SubPool); ps.ID != want {
		return fmt.Errorf("pool ID %q does not match its pool, want %q", ps.ID, want)
	}
	if ps.Block && !ps.SubPool.IsValid() {
		return errors.New("a cluster network's pool without its block")
	}
	p, _, err := a.addPool(ps.AddressSpace, ps.Pool, ps.SubPool)
	if err != nil {
		return err
	}
	p.block = ps.Block
	for _, addr := range ps.Addresses {
		if _, err := p.reserve(addr); err != nil {
			return err
		}
	}
	if ps.Gateway.IsValid() {
		if !p.has(ps.Gateway) {
			return fmt.Errorf("gateway %s is not among the allocated addresses", ps.Gateway)
		}
		p.gateway = ps.Gateway
	}
	if ps.Last.IsValid() {
		if !sameFamily(ps.Last, ps.Pool) || !ps.Pool.Contains(ps.Last) {
			return fmt.Errorf("last allocated address %s is not in the pool", ps.Last)
		}
		p.last = ps.Last
	}
	return nil
}
