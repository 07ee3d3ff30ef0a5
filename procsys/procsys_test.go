package procsys

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ebpfnet/ebpfnet/testutil"
)

// A read-only bind mount with nosuid/nodev/noexec, as Docker gives a
// plugin its /proc/sys, becomes writable and keeps those flags.
func TestEnsureWritableRemountsAReadOnlyBind(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind %s: %v", dir, err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	locked := uintptr(unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|locked, ""); err != nil {
		t.Fatalf("remount %s read-only: %v", dir, err)
	}
	file := filepath.Join(dir, "probe")
	if err := os.WriteFile(file, nil, 0o600); err == nil {
		t.Fatal("the read-only mount took a write: the test proves nothing")
	}

	remounted, err := EnsureWritable(dir)
	if err != nil || !remounted {
		t.Fatalf("EnsureWritable = %v, %v; want true, nil", remounted, err)
	}
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatalf("still not writable: %v", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Flags&(unix.ST_NOSUID|unix.ST_NODEV|unix.ST_NOEXEC) != unix.ST_NOSUID|unix.ST_NODEV|unix.ST_NOEXEC {
		t.Errorf("flags after the remount %#x lost nosuid/nodev/noexec", st.Flags)
	}

	again, err := EnsureWritable(dir)
	if err != nil || again {
		t.Errorf("second EnsureWritable = %v, %v; want false, nil", again, err)
	}
}
