package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/ebpfnet/ebpfnet/atomicfile"
)

// MirrorStore keeps the state in two copies of the same document:
//
//   - Volatile, in the run directory (tmpfs on a Docker host), is written
//     on every change, without a flush: it is the live copy.
//   - Durable, in the lib directory, is written and flushed to the disk
//     when a pool or a gateway changes, which Docker never asks for again.
//     Its addresses are those of its last write (State.AddressesTrail).
//
// A docker run and its removal change one address each: a write to tmpfs
// costs tens of microseconds, where a file renamed over another on ext4
// costs ~0.3 ms more, because ext4 starts writing it out (auto_da_alloc),
// and a flush costs milliseconds.
//
// Each copy carries a generation; Load takes the newer one, so a crash
// between the two writes of a pool change loses nothing. A reboot empties
// the run directory, and with it every container: the durable copy's
// pools and gateways are what is left to keep, and its addresses are at
// worst ones that no container holds any more, which reconcile releases
// after the start (plugin/reconcile.go). Only a live copy lost while
// containers run loses addresses in use: the daemon's heal rebuilds the
// state then (plugin/heal.go, CheckMirror).
type MirrorStore struct {
	Durable, Volatile string
	// generation is that of the state loaded or last saved.
	generation uint64
}

// String names the store in errors.
func (m *MirrorStore) String() string {
	return fmt.Sprintf("files %s and %s", m.Volatile, m.Durable)
}

// Load implements Store: the newer of the two copies; none is an empty
// state. A copy that does not decode is an error, as FileStore's.
func (m *MirrorStore) Load() (State, error) {
	durable, derr := readState(m.Durable)
	volatile, verr := readState(m.Volatile)
	for _, err := range []error{derr, verr} {
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return State{}, err
		}
	}
	st := durable
	if verr == nil && (derr != nil || volatile.Generation >= durable.Generation) {
		st = volatile
	}
	st.AddressesTrail = false
	m.generation = st.Generation
	return st, nil
}

// Save implements Store: both copies, the durable one flushed. If the
// second write fails, the first copy holds a change the caller undoes in
// memory: a pool or gateway that Docker was told failed, which reconcile
// releases after the next start as one Docker does not know.
func (m *MirrorStore) Save(st State) error {
	st.Generation = m.generation + 1
	durable := st
	durable.AddressesTrail = true
	if err := (FileStore{Path: m.Durable}).Save(durable); err != nil {
		return err
	}
	if err := (FileStore{Path: m.Volatile}).SaveVolatile(st); err != nil {
		return err
	}
	m.generation = st.Generation
	return nil
}

// SaveVolatile implements VolatileSaver: the live copy only.
func (m *MirrorStore) SaveVolatile(st State) error {
	st.Generation = m.generation + 1
	if err := (FileStore{Path: m.Volatile}).SaveVolatile(st); err != nil {
		return err
	}
	m.generation = st.Generation
	return nil
}

// MirrorCheck is what CheckMirror found of each copy.
type MirrorCheck struct {
	// DurableErr and VolatileErr are each copy's read error:
	// fs.ErrNotExist when it is missing, atomicfile.ErrCorrupt when it
	// does not decode or does not hold together, nil when it is sound.
	DurableErr, VolatileErr error
	// DurableTrails says the durable copy's addresses may trail the
	// live ones: it was written as the durable half of a MirrorStore,
	// not by a version that kept every address in it.
	DurableTrails bool
	// VolatileNewer says the live copy is at least as new as the
	// durable one.
	VolatileNewer bool
}

// CheckMirror reads both copies of a MirrorStore without changing them;
// an error is one that says nothing about their content (permissions,
// I/O).
func CheckMirror(durable, volatile string) (MirrorCheck, error) {
	var c MirrorCheck
	var d, v State
	for _, f := range []struct {
		path string
		st   *State
		err  *error
	}{{durable, &d, &c.DurableErr}, {volatile, &v, &c.VolatileErr}} {
		st, err := readState(f.path)
		if err == nil {
			err = newAllocator(nil, DefaultPoolPrefixLen).restoreChecked(st, f.path)
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, atomicfile.ErrCorrupt) {
			return MirrorCheck{}, err
		}
		*f.st, *f.err = st, err
	}
	c.DurableTrails = c.DurableErr == nil && d.AddressesTrail
	c.VolatileNewer = c.VolatileErr == nil && (c.DurableErr != nil || v.Generation >= d.Generation)
	return c, nil
}

// readState reads one copy: fs.ErrNotExist when it is missing.
func readState(path string) (State, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return State{}, err
		}
		return State{}, fmt.Errorf("read IPAM state: %w", err)
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		return State{}, atomicfile.Corrupt(fmt.Errorf("IPAM state file %s is corrupt: %w", path, err))
	}
	return st, nil
}
