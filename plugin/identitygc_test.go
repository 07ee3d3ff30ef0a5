package plugin

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/api"
	"github.com/ebpfnet/ebpfnet/datapath"
)

// The daemon keeps a label identity nobody holds for its grace, shows it
// as unused, gives it back to the same labels, and frees it (from the
// file too) once the grace is over; a restart keeps it for a grace from
// the start. The collector lives and stops with serve: every stop below
// waits for it.
func TestIdentityIsKeptForTheGraceThenFreed(t *testing.T) {
	const grace = 1500 * time.Millisecond
	n := newTestNode(t, func(c *Config) { c.IdentityGrace = grace })
	poolID, _ := createTestNetwork(t, n.cur, "net-gc", "10.208.0.0/24")
	labels := map[string]string{"id": "gc"}

	ep := addEndpoint(t, n, "net-gc", poolID, labels)
	id := ep.Identity
	if id < 256 {
		t.Fatalf("endpoint has identity %d, want an allocated one", id)
	}
	deleteEndpoint(t, n, ep)
	if since, listed := unusedSince(t, n, id); !listed || since == nil {
		t.Fatalf("right after its endpoint went, identity %d is listed %v with unusedSince %v; want listed as unused", id, listed, since)
	}
	again := addEndpoint(t, n, "net-gc", poolID, labels)
	if again.Identity != id {
		t.Fatalf("the same labels within the grace got identity %d, want %d", again.Identity, id)
	}
	if since, listed := unusedSince(t, n, id); !listed || since != nil {
		t.Fatalf("identity %d in use again is listed %v with unusedSince %v", id, listed, since)
	}
	released := time.Now()
	deleteEndpoint(t, n, again)
	waitFreed(t, n, id, released, grace)

	// A restart: what no restored endpoint holds is kept for a grace from
	// the start, not freed at once.
	gone := addEndpoint(t, n, "net-gc", poolID, map[string]string{"id": "gc-restart"})
	deleteEndpoint(t, n, gone)
	restarted := time.Now()
	n.restart(t, nil)
	if since, listed := unusedSince(t, n, gone.Identity); !listed || since == nil || since.Before(restarted) {
		t.Fatalf("after a restart identity %d is listed %v, unused since %v; want unused since the start (after %v)", gone.Identity, listed, since, restarted)
	}
	waitFreed(t, n, gone.Identity, restarted, grace)
}

// deleteEndpoint walks Docker's calls for a container that goes.
func deleteEndpoint(t *testing.T, n *testNode, ep datapath.Endpoint) {
	t.Helper()
	n.cur.mustCall(t, "/NetworkDriver.Leave", map[string]any{"NetworkID": ep.DockerNetworkID, "EndpointID": ep.DockerEndpointID})
	n.cur.mustCall(t, "/NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": ep.DockerNetworkID, "EndpointID": ep.DockerEndpointID})
}

// unusedSince is what `ebpfnet identity list` says of id: whether it is
// listed, and since when it is unused.
func unusedSince(t *testing.T, n *testNode, id uint32) (*time.Time, bool) {
	t.Helper()
	ids, err := api.NewClient(n.cfg.APISocket).Identities(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range ids {
		if i.ID == id {
			return i.UnusedSince, true
		}
	}
	return nil, false
}

// waitFreed waits until id is neither listed nor in identities.json, and
// checks that this took the grace from unused at least.
func waitFreed(t *testing.T, n *testNode, id uint32, unused time.Time, grace time.Duration) {
	t.Helper()
	deadline := time.Now().Add(grace + 5*time.Second)
	for {
		_, listed := unusedSince(t, n, id)
		data, err := os.ReadFile(n.lib(identitiesFile))
		if err != nil {
			t.Fatal(err)
		}
		inFile := strings.Contains(string(data), `"id": `+strconv.FormatUint(uint64(id), 10)+",")
		if !listed && !inFile {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("identity %d still listed (%v) or in the file (%v) %s after it became unused; grace %s", id, listed, inFile, time.Since(unused), grace)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if took := time.Since(unused); took < grace {
		t.Fatalf("identity %d was freed %s after it became unused, before the grace of %s", id, took, grace)
	}
}
