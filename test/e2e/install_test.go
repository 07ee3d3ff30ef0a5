package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ebpfnet/ebpfnet/testutil"
)

// TestLegacyInstallRunsAsItsUnitSays checks the legacy mode's packaging:
// `make install` puts the binary and ebpfnet.service in place, systemd
// accepts the unit, it is ordered before docker.service, the command it
// starts serves Docker, and `make uninstall` removes both files. Both are
// staged under DESTDIR, at the production BINDIR and UNITDIR: without
// DESTDIR, `make uninstall` on a systemd host would stop a real ebpfnet
// service. The test machine has no systemd as PID 1, so the unit's command
// line is run the way systemd would run it, in the staging root.
func TestLegacyInstallRunsAsItsUnitSays(t *testing.T) {
	requireEnvironment(t)
	testutil.RequireCommand(t, "make", "systemd-analyze", "cp")
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	const binDir, unitDir = "/usr/local/bin", "/etc/systemd/system"
	root := t.TempDir()
	vars := []string{"-s", "-C", repo, "DESTDIR=" + root, "BINDIR=" + binDir, "UNITDIR=" + unitDir}
	run(t, "make", append(vars, "install")...)

	// systemd-analyze verify --root looks up the units ours depends on
	// (sysinit.target and the like) under the root too: the staging root
	// gets a copy of the host's.
	hostUnits, err := filepath.EvalSymlinks("/lib/systemd/system")
	if err != nil {
		testutil.Missing(t, "systemd's own units, for systemd-analyze verify: %v", err)
	}
	if err := os.MkdirAll(filepath.Join(root, filepath.Dir(hostUnits)), 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "cp", "-a", hostUnits, filepath.Join(root, filepath.Dir(hostUnits)))
	unitPath := filepath.Join(root, unitDir, "ebpfnet.service")
	run(t, "systemd-analyze", "verify", "--root="+root, filepath.Join(unitDir, "ebpfnet.service"))
	unit, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	directives := map[string][]string{}
	for _, line := range strings.Split(string(unit), "\n") {
		if key, value, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			directives[key] = append(directives[key], value)
		}
	}
	if !slices.Contains(directives["Before"], "docker.service") {
		t.Errorf("unit is not ordered before docker.service: Before=%v", directives["Before"])
	}
	// The unit names the binary where it is installed on the target
	// (BINDIR); here that is under the staging root.
	if want := filepath.Join(binDir, "ebpfnet") + " daemon"; len(directives["ExecStart"]) != 1 || directives["ExecStart"][0] != want {
		t.Fatalf("ExecStart=%v, want %q", directives["ExecStart"], want)
	}
	installed := filepath.Join(root, binDir, "ebpfnet")

	// The unit's command, as systemd starts it, serves Docker.
	startDaemon(t, installed)
	network(t, "e2e-legacy", "--subnet", "10.241.0.0/24")
	httpd(t, "e2e-leg1", "e2e-legacy")
	sleeper(t, "e2e-leg2", "e2e-legacy")
	if err := ping("e2e-leg2", containerIP(t, "e2e-leg1", "e2e-legacy")); err != nil {
		t.Errorf("containers of the installed daemon do not talk: %v", err)
	}

	run(t, "make", append(vars, "uninstall")...)
	for _, path := range []string{installed, unitPath} {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("make uninstall left %s (%v)", path, err)
		}
	}
}
