package hostexec

import (
	"strings"
	"testing"
)

func TestHandlesOnlyTheLinkedTools(t *testing.T) {
	for argv0, want := range map[string]bool{
		"/usr/sbin/iptables":      true,
		"iptables-save":           true,
		"/usr/sbin/ip6tables":     true,
		"/ebpfnet":                false,
		"/usr/local/bin/ebpfnet":  false,
		"/usr/sbin/iptables-nft":  false,
		"/usr/sbin/iptablesx":     false,
		"/some/dir/iptables/evil": false,
	} {
		if got := Handles(argv0); got != want {
			t.Errorf("Handles(%q) = %v, want %v", argv0, got, want)
		}
	}
}

func TestRunRefusesToLoopBackIntoItself(t *testing.T) {
	t.Setenv(loopGuardEnv, "1")
	t.Setenv(HostRootEnv, t.TempDir())
	err := Run([]string{"/usr/sbin/iptables", "-S"})
	if err == nil || !strings.Contains(err.Error(), "is ebpfnet itself") {
		t.Fatalf("Run with the loop guard set: %v; want the loop guard's refusal (\"is ebpfnet itself\")", err)
	}
}
