package ipam

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"

	"github.com/ebpfnet/ebpfnet/atomicfile"
	"github.com/ebpfnet/ebpfnet/testutil"
)

// mirrorPaths are a durable and a live copy in two directories, as the lib
// and run directories are.
func mirrorPaths(t testing.TB) (durable, volatile string) {
	return filepath.Join(t.TempDir(), "lib", "ipam.json"), filepath.Join(t.TempDir(), "run", "ipam.json")
}

func newMirrorDriver(t *testing.T, durable, volatile string) *Driver {
	t.Helper()
	d, err := New(Config{StatePath: durable, VolatilePath: volatile})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func poolAddresses(t *testing.T, d *Driver, id string) []string {
	t.Helper()
	for _, p := range d.Pools() {
		if p.ID == id {
			var out []string
			for _, a := range p.Addresses {
				out = append(out, a.String())
			}
			return out
		}
	}
	t.Fatalf("no pool %s", id)
	return nil
}

func readCopy(t *testing.T, path string) State {
	t.Helper()
	st, err := readState(path)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// A container's address goes to the live copy only; a pool and its
// gateway go to both. A restart reads the live copy.
func TestMirrorKeepsAddressesInTheLiveCopy(t *testing.T) {
	durable, volatile := mirrorPaths(t)
	d := newMirrorDriver(t, durable, volatile)
	id := requestPool(t, d, "10.80.0.0/24", "").PoolID
	mustAddr(t, d, id, "", true, "10.80.0.1/24")
	mustAddr(t, d, id, "", false, "10.80.0.2/24")

	if got := readCopy(t, durable); !got.AddressesTrail || len(got.Pools) != 1 || slices.Contains(got.Pools[0].Addresses, mustParseAddr("10.80.0.2")) {
		t.Errorf("durable copy %+v: want the pool and gateway, marked trailing, without the container's address", got)
	}
	if got := readCopy(t, volatile); got.AddressesTrail || !slices.Contains(got.Pools[0].Addresses, mustParseAddr("10.80.0.2")) {
		t.Errorf("live copy %+v: want the container's address", got)
	}

	restarted := newMirrorDriver(t, durable, volatile)
	if got := poolAddresses(t, restarted, id); !slices.Equal(got, []string{"10.80.0.1", "10.80.0.2"}) {
		t.Errorf("after a restart: %v", got)
	}
	// The next address follows on: the restart knows where it stopped.
	mustAddr(t, restarted, id, "", false, "10.80.0.3/24")
}

// After a reboot the run directory is empty: the durable copy's pools and
// gateways are kept, and the addresses of its last write with them.
func TestMirrorAfterARebootKeepsPoolsAndGateways(t *testing.T) {
	durable, volatile := mirrorPaths(t)
	d := newMirrorDriver(t, durable, volatile)
	id := requestPool(t, d, "10.80.1.0/24", "").PoolID
	mustAddr(t, d, id, "", true, "10.80.1.1/24")
	mustAddr(t, d, id, "", false, "10.80.1.2/24")
	// A second pool's write takes the address along into the durable copy.
	id2 := requestPool(t, d, "10.80.2.0/24", "").PoolID
	mustAddr(t, d, id, "", false, "10.80.1.3/24")
	if err := os.Remove(volatile); err != nil {
		t.Fatal(err)
	}
	c, err := CheckMirror(durable, volatile)
	if err != nil || !errors.Is(c.VolatileErr, fs.ErrNotExist) || c.DurableErr != nil || !c.DurableTrails {
		t.Fatalf("CheckMirror after a reboot: %+v, %v", c, err)
	}
	rebooted := newMirrorDriver(t, durable, volatile)
	if got := poolAddresses(t, rebooted, id); !slices.Equal(got, []string{"10.80.1.1", "10.80.1.2"}) {
		t.Errorf("pool after a reboot: %v, want the gateway and the address of the last durable write", got)
	}
	if got := poolAddresses(t, rebooted, id2); len(got) != 0 {
		t.Errorf("second pool after a reboot: %v", got)
	}
}

// A crash between a pool change's two writes leaves the durable copy the
// newer: Load takes it.
func TestMirrorLoadsTheNewerCopy(t *testing.T) {
	durable, volatile := mirrorPaths(t)
	d := newMirrorDriver(t, durable, volatile)
	id := requestPool(t, d, "10.80.3.0/24", "").PoolID
	stale, err := os.ReadFile(volatile)
	if err != nil {
		t.Fatal(err)
	}
	requestPool(t, d, "10.80.4.0/24", "")
	// The live copy as it was before the second pool.
	if err := os.WriteFile(volatile, stale, 0o600); err != nil {
		t.Fatal(err)
	}
	if c, _ := CheckMirror(durable, volatile); c.VolatileNewer {
		t.Errorf("CheckMirror: %+v, want the durable copy newer", c)
	}
	restarted := newMirrorDriver(t, durable, volatile)
	if n := len(restarted.Pools()); n != 2 {
		t.Errorf("%d pools after the restart, want 2 (the durable copy's)", n)
	}
	poolAddresses(t, restarted, id)
}

// A file written by a version that kept every address in the lib
// directory is complete: it loads with its addresses and does not trail.
func TestMirrorReadsAnEarlierVersionsFile(t *testing.T) {
	durable, volatile := mirrorPaths(t)
	old := newTestDriver(t, Config{StatePath: durable})
	id := requestPool(t, old, "10.80.5.0/24", "").PoolID
	mustAddr(t, old, id, "", true, "10.80.5.1/24")
	mustAddr(t, old, id, "", false, "10.80.5.2/24")
	c, err := CheckMirror(durable, volatile)
	if err != nil || c.DurableTrails || !errors.Is(c.VolatileErr, fs.ErrNotExist) {
		t.Fatalf("CheckMirror of an earlier version's file: %+v, %v", c, err)
	}
	d := newMirrorDriver(t, durable, volatile)
	if got := poolAddresses(t, d, id); !slices.Equal(got, []string{"10.80.5.1", "10.80.5.2"}) {
		t.Errorf("addresses of an earlier version's file: %v", got)
	}
}

// A copy that does not decode, or does not hold together, is corrupt to
// CheckMirror and an error to New.
func TestMirrorCorruptCopies(t *testing.T) {
	durable, volatile := mirrorPaths(t)
	d := newMirrorDriver(t, durable, volatile)
	requestPool(t, d, "10.80.6.0/24", "")
	if err := os.WriteFile(volatile, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := CheckMirror(durable, volatile)
	if err != nil || !errors.Is(c.VolatileErr, atomicfile.ErrCorrupt) || c.DurableErr != nil || c.VolatileNewer {
		t.Errorf("CheckMirror with a torn live copy: %+v, %v", c, err)
	}
	if _, err := New(Config{StatePath: durable, VolatilePath: volatile}); !errors.Is(err, atomicfile.ErrCorrupt) {
		t.Errorf("New with a torn live copy: %v", err)
	}
	// Decodes, but an address outside its pool.
	st := readCopy(t, durable)
	st.Pools[0].Addresses = append(st.Pools[0].Addresses, mustParseAddr("10.99.0.1"))
	if err := (FileStore{Path: volatile}).SaveVolatile(st); err != nil {
		t.Fatal(err)
	}
	if c, _ := CheckMirror(durable, volatile); !errors.Is(c.VolatileErr, atomicfile.ErrCorrupt) {
		t.Errorf("CheckMirror with an address outside its pool: %+v", c)
	}
}

// BenchmarkAddressChurn is one container's address requested and released,
// with the state in one file in the lib directory (FileStore, as before)
// and mirrored (MirrorStore, the live copy on tmpfs as /run is on a Docker
// host). The lib directory is the test's temporary directory: set TMPDIR
// to one on the disk the lib directory would be on.
func BenchmarkAddressChurn(b *testing.B) {
	const shm = "/dev/shm"
	if st, err := os.Stat(shm); err != nil || !st.IsDir() {
		testutil.Missing(b, "no /dev/shm for the live copy")
		return
	}
	for _, c := range []struct {
		name     string
		volatile func() string
	}{
		{"file", func() string { return "" }},
		{"mirror", func() string {
			dir, err := os.MkdirTemp(shm, "ipam-bench-")
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { os.RemoveAll(dir) })
			return filepath.Join(dir, "ipam.json")
		}},
	} {
		for _, held := range []int{0, 250, 1000} {
			b.Run(fmt.Sprintf("%s/held=%d", c.name, held), func(b *testing.B) {
				d, err := New(Config{StatePath: filepath.Join(b.TempDir(), "ipam.json"), VolatilePath: c.volatile()})
				if err != nil {
					b.Fatal(err)
				}
				id := requestPoolB(b, d, "10.80.0.0/16")
				for i := 0; i < held; i++ {
					if _, err := requestAddr(d, id, "", false); err != nil {
						b.Fatal(err)
					}
				}
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					addr, err := requestAddr(d, id, "", false)
					if err != nil {
						b.Fatal(err)
					}
					if err := d.ReleaseAddress(releaseReq(id, addr)); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func mustParseAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func requestPoolB(b *testing.B, d *Driver, pool string) string {
	b.Helper()
	res, err := d.RequestPool(&ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: pool})
	if err != nil {
		b.Fatal(err)
	}
	return res.PoolID
}

func releaseReq(id, addr string) *ipamapi.ReleaseAddressRequest {
	return &ipamapi.ReleaseAddressRequest{PoolID: id, Address: addr}
}
