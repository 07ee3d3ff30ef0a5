// Package testutil holds the few helpers that tests share: the rule that a
// missing prerequisite is a failure in CI and a visible skip elsewhere.
package testutil

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true), where nothing may be
// skipped for want of a prerequisite.
func InCI() bool { return os.Getenv("CI") == "true" }

// Missing stops the test because a prerequisite is absent: a failure in CI,
// a skip with the reason elsewhere.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("prerequisite missing in CI: "+format, args...)
	}
	t.Skipf("prerequisite missing: "+format, args...)
}

// RequireRoot stops the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "test needs root")
	}
}

// RequireCommand stops the test unless every named program is on PATH.
func RequireCommand(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			Missing(t, "command %q not found", n)
		}
	}
}
