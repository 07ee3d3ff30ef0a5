package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/api"
)

// An identity no container holds says for how long, so that one listed
// without a container is explained; the others leave the column empty.
func TestIdentityTableShowsUnusedFor(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	since := now.Add(-(72*time.Second + 400*time.Millisecond))
	var out bytes.Buffer
	err := identityTable(&out, []api.Identity{
		{ID: 1, Labels: []string{"reserved:host"}},
		{ID: 256, Labels: []string{"container:id=app1"}},
		{ID: 257, Labels: []string{"container:id=gone"}, UnusedSince: &since},
	}, now)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	if len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "ID LABELS UNUSED FOR" {
		t.Fatalf("table:\n%s", out.String())
	}
	for i, want := range []string{"1 reserved:host", "256 container:id=app1", "257 container:id=gone 1m12s"} {
		if got := strings.Join(strings.Fields(lines[i+1]), " "); got != want {
			t.Errorf("row %d: %q, want %q", i, got, want)
		}
	}
}
