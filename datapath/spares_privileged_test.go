package datapath

import (
	"io"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/testutil"
)

// Spares are made in the background up to the number wanted, handed out
// empty and usable, made again after a take, and closed with the pool; a
// take with none left still gets a map.
func TestPolicyMapSpares(t *testing.T) {
	testutil.RequireRoot(t)
	spec := &ebpf.MapSpec{Name: "spare_test", Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 16}
	log := logrus.New()
	log.SetOutput(io.Discard)
	s := newPolicyMapSpares(spec, 2, log)
	t.Cleanup(s.close)

	m, err := s.take()
	if err != nil {
		t.Fatalf("take with no spares: %v", err)
	}
	_ = m.Close()

	s.refill()
	waitSpares(t, s, 2)
	m, err = s.take()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if s.ready() != 1 {
		t.Fatalf("%d spares after a take, want 1", s.ready())
	}
	var k, v uint32 = 1, 2
	if err := m.Put(k, v); err != nil {
		t.Fatalf("a spare is not usable: %v", err)
	}
	var n int
	for it := m.Iterate(); it.Next(&k, &v); {
		n++
	}
	if n != 1 {
		t.Fatalf("a spare held %d entries before its first, want 0", n-1)
	}
	s.refill()
	waitSpares(t, s, 2)

	s.close()
	if s.ready() != 0 {
		t.Fatalf("%d spares after close", s.ready())
	}
	s.refill() // closed: makes nothing
	time.Sleep(50 * time.Millisecond)
	if s.ready() != 0 {
		t.Fatal("a closed pool made a spare")
	}
}

// waitSpares waits until a pool of spares (policy maps, veth pairs) has
// want ready.
func waitSpares(t *testing.T, s interface{ ready() int }, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.ready() < want {
		if time.Now().After(deadline) {
			t.Fatalf("%d spares after 5 s, want %d", s.ready(), want)
		}
		time.Sleep(time.Millisecond)
	}
}
