// Package procsys makes /proc/sys writable for the daemon.
//
// The daemon writes per-device sysctls (rp_filter on each endpoint's veth,
// route_localnet where ports are published on 127.0.0.1) and ip_forward.
// Docker starts a managed plugin with /proc/sys mounted read-only, as it
// does for containers, and config.json cannot lift that. The plugin has
// CAP_SYS_ADMIN in its own mount namespace, so it can remount that one
// bind mount read-write; the host's /proc/sys is not affected, and with
// the host's network namespace the net.* entries it writes are the host's
// own, exactly as the legacy daemon's are.
package procsys

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Path is where the kernel's sysctls are mounted.
const Path = "/proc/sys"

// EnsureWritable remounts dir (Path, but for tests) read-write when it is
// a read-only mount, and reports whether it had to.
func EnsureWritable(dir string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Flags&unix.ST_RDONLY == 0 {
		return false, nil
	}
	// Keep the flags the mount has (nosuid, nodev, noexec): a bind remount
	// must restate them or the kernel refuses it as an attempt to clear
	// locked flags.
	flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND)
	for _, f := range []struct{ st, ms uintptr }{
		{unix.ST_NOSUID, unix.MS_NOSUID},
		{unix.ST_NODEV, unix.MS_NODEV},
		{unix.ST_NOEXEC, unix.MS_NOEXEC},
		{unix.ST_NOATIME, unix.MS_NOATIME},
		{unix.ST_RELATIME, unix.MS_RELATIME},
	} {
		if uintptr(st.Flags)&f.st != 0 {
			flags |= f.ms
		}
	}
	if err := unix.Mount("", dir, "", flags, ""); err != nil {
		return false, fmt.Errorf("remount %s read-write (the managed plugin needs CAP_SYS_ADMIN): %w", dir, err)
	}
	return true, nil
}
