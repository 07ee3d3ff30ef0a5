package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWriteReplacesContentAndLeavesNoTemporary(t *testing.T) {
	for name, write := range map[string]func(string, []byte, os.FileMode) error{"durable": Write, "volatile": WriteVolatile} {
		t.Run(name, func(t *testing.T) { testWrite(t, write) })
	}
}

func testWrite(t *testing.T, write func(string, []byte, os.FileMode) error) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	if err := write(path, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := write(path, []byte("two"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "two" {
		t.Fatalf("content = %q, want %q", got, "two")
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o644 {
		t.Fatalf("mode = %v, want 0644", st.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("directory holds %d entries, want only the file", len(entries))
	}
}

func TestWriteIntoMissingDirectoryFailsAndCreatesNothing(t *testing.T) {
	dir := t.TempDir()
	if err := Write(filepath.Join(dir, "nope", "f"), []byte("x"), 0o600); err == nil {
		t.Fatal("expected an error for a missing directory")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Fatalf("left %d entries behind", len(entries))
	}
}

func TestCleanTemporariesRemovesOnlyTemporaries(t *testing.T) {
	dir := t.TempDir()
	keep := filepath.Join(dir, "keep.json")
	stale := filepath.Join(dir, ".keep.json.tmp-123")
	for _, p := range []string{keep, stale} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := CleanTemporaries(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Fatalf("kept file is gone: %v", err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("temporary still there: %v", err)
	}
}

// A file moved aside keeps its content under a dated name, and a second
// fault in the same second does not overwrite the first one's copy.
func TestMoveAsideKeepsEveryCopy(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ipam.json")
	now := time.Date(2026, 11, 27, 15, 44, 27, 0, time.UTC)
	var aside []string
	for _, content := range []string{"first", "second"} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := MoveAside(path, now)
		if err != nil {
			t.Fatal(err)
		}
		if data, _ := os.ReadFile(got); string(data) != content {
			t.Fatalf("%s holds %q, want %q", got, data, content)
		}
		aside = append(aside, got)
	}
	want := []string{path + ".corrupt-20261127T154427Z", path + ".corrupt-20261127T154427Z-2"}
	if aside[0] != want[0] || aside[1] != want[1] {
		t.Fatalf("moved to %v, want %v", aside, want)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("%s is still there: %v", path, err)
	}
	if _, err := MoveAside(path, now); err == nil {
		t.Fatal("moving a missing file aside succeeded")
	}
}

func TestCorruptKeepsTheMessage(t *testing.T) {
	cause := errors.New("unexpected end of JSON input")
	err := fmt.Errorf("load: %w", Corrupt(fmt.Errorf("ipam.json is corrupt: %w", cause)))
	if !errors.Is(err, ErrCorrupt) || !errors.Is(err, cause) {
		t.Fatalf("%v: not both ErrCorrupt and its cause", err)
	}
	if err.Error() != "load: ipam.json is corrupt: unexpected end of JSON input" {
		t.Fatalf("message %q", err)
	}
	if errors.Is(cause, ErrCorrupt) {
		t.Fatal("the cause itself became corrupt")
	}
}

// The durable write costs two flushes to the disk, the volatile one none;
// run on the disk the daemon writes to: go test -bench Write ./atomicfile/
// (with TMPDIR=/var/lib).
func BenchmarkWrite(b *testing.B) {
	data := make([]byte, 2048)
	for name, write := range map[string]func(string, []byte, os.FileMode) error{"durable": Write, "volatile": WriteVolatile} {
		b.Run(name, func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "state.json")
			for range b.N {
				if err := write(path, data, 0o600); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
