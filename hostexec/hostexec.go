// Package hostexec lets the managed plugin run the host's own iptables.
//
// The plugin image is FROM scratch: one static binary and no iptables. The
// external package drives iptables through github.com/coreos/go-iptables,
// which runs the `iptables` it finds on PATH. In the plugin's rootfs that
// name is a symlink to our binary, and main hands such a call to Run: it
// changes root to the host's root filesystem (which the plugin
// sees read-only at /host, a mount in config.json) and executes the host's
// iptables there, in the host's network namespace it already shares.
//
// Running the host's binary rather than bundling one is deliberate: our
// chains must land in the same backend (nf_tables or legacy) as Docker's
// own rules, and only the host's iptables knows which one that is.
package hostexec

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
)

// Tools are the names the plugin's rootfs links to our binary.
var tools = []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"}

// HostRootEnv overrides where the host's root filesystem is found.
const HostRootEnv = "EBPFNET_HOST_ROOT"

// defaultHostRoot is where config.json mounts the host's root.
const defaultHostRoot = "/host"

// searchPath is where the host's tool is looked for, inside its root.
var searchPath = []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}

// Handles reports whether argv0 names a host tool that Run executes.
func Handles(argv0 string) bool {
	return slices.Contains(tools, filepath.Base(argv0))
}

// loopGuardEnv marks a tool already handed to the host: seeing it again
// means the "host" tool is this binary (a wrong host root) and would loop.
const loopGuardEnv = "EBPFNET_HOSTEXEC"

// Run executes the host's tool named by args[0] with args[1:] and does not
// return unless that fails.
func Run(args []string) error {
	name := filepath.Base(args[0])
	root := os.Getenv(HostRootEnv)
	if root == "" {
		root = defaultHostRoot
	}
	if os.Getenv(loopGuardEnv) != "" {
		return fmt.Errorf("%s in %s is ebpfnet itself: set %s to the host's root", name, root, HostRootEnv)
	}
	// Change root first: the host's links (/usr/sbin/iptables ->
	// /etc/alternatives/iptables -> ...) are absolute and resolve only
	// inside the host's root.
	if err := syscall.Chroot(root); err != nil {
		return fmt.Errorf("change root to the host's %s: %w", root, err)
	}
	if err := os.Chdir("/"); err != nil {
		return fmt.Errorf("chdir / in the host's root: %w", err)
	}
	bin, err := find(name)
	if err != nil {
		return fmt.Errorf("%w in the host's root %s: install iptables on the host", err, root)
	}
	argv := append([]string{name}, args[1:]...)
	env := append(os.Environ(), loopGuardEnv+"=1")
	if err := syscall.Exec(bin, argv, env); err != nil {
		return fmt.Errorf("run the host's %s: %w", bin, err)
	}
	return nil
}

// find returns the path of the executable name in searchPath.
func find(name string) (string, error) {
	for _, dir := range searchPath {
		candidate := filepath.Join(dir, name)
		info, err := os.Stat(candidate)
		if err == nil && !info.IsDir() && info.Mode()&0o111 != 0 {
			return candidate, nil
		}
	}
	return "", errors.New(name + " not found")
}
