package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/api"
)

// TestCorruptStateHeals: ipam.json and identities.json are corrupted on a
// node with running containers under policy, and the daemon restarted. It
// moves both aside, writes ipam.json again from its live copy in the run
// directory, rebuilds identities.json from the endpoints' records and the
// pinned maps: the containers keep talking under their policy with the
// identities they had, a new container gets an address none of them has,
// and the files are whole again.
func TestCorruptStateHeals(t *testing.T) {
	bin := requireEnvironment(t)
	d := startDaemon(t, bin)
	noPolicy(t, bin)
	const net = "e2e-heal"
	network(t, net, "--subnet", "10.248.0.0/24")
	// A container that comes and goes first: the identities after it are
	// not those a renumbering from scratch would give.
	sleeper(t, "e2e-heal-gone", net, "--label", "id=heal-gone")
	eventually(t, 10*time.Second, "the first container's identity", func() error {
		if ids := run(t, bin, "identity", "list"); !strings.Contains(ids, "id=heal-gone") {
			return fmt.Errorf("not allocated yet:\n%s", ids)
		}
		return nil
	})
	run(t, "docker", "rm", "-f", "e2e-heal-gone")
	httpd(t, "e2e-heal-server", net, "--label", "id=heal-server")
	sleeper(t, "e2e-heal-client", net, "--label", "id=heal-client")
	sleeper(t, "e2e-heal-other", net, "--label", "id=heal-other")
	importRules(t, bin, `[{"endpointSelector": {"matchLabels": {"id": "heal-server"}},
		"ingress": [{"fromEndpoints": [{"matchLabels": {"id": "heal-client"}}],
		             "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}],
		"labels": [{"key": "name", "value": "e2e-heal"}]}]`)
	server := containerIP(t, "e2e-heal-server", net)
	var before []api.Endpoint
	eventually(t, 10*time.Second, "identities of the heal test's containers", func() error {
		before = endpoints(t)
		for _, ep := range before {
			if ep.Identity < 256 {
				return fmt.Errorf("endpoint %d still has identity %d", ep.ID, ep.Identity)
			}
		}
		return nil
	})
	checkPolicy := func(when string) {
		t.Helper()
		eventually(t, 10*time.Second, when+": the client reaches the server", func() error { return httpGet("e2e-heal-client", server) })
		if err := httpGet("e2e-heal-other", server); err == nil {
			t.Errorf("%s: a container the policy does not allow reached the server", when)
		}
	}
	checkPolicy("before the fault")

	d.stop(syscall.SIGTERM)
	files := []string{"ipam.json", "identities.json"}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(libDir, f), []byte("{\"version\": 1, \"pools\": [{\x00"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, f := range files {
			aside, _ := filepath.Glob(filepath.Join(libDir, f+".corrupt-*"))
			for _, a := range aside {
				os.Remove(a)
			}
		}
	})
	// Traffic needs no daemon.
	checkPolicy("with the daemon stopped")
	d.restart()
	waitReconciled(t, bin)

	var st api.Status
	if err := json.Unmarshal([]byte(run(t, bin, "status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		found := false
		for _, h := range st.Healed {
			if h.File == f {
				found = true
				if !strings.HasPrefix(h.Fault, "corrupt") || h.MovedTo == "" || h.WaitingForDocker {
					t.Errorf("status on %s: %+v", f, h)
				}
				if _, err := os.Stat(h.MovedTo); err != nil {
					t.Errorf("%s moved aside to %s: %v", f, h.MovedTo, err)
				}
			}
		}
		if !found {
			t.Errorf("status does not list %s as rebuilt: %+v", f, st.Healed)
		}
	}
	if !strings.Contains(run(t, bin, "status"), "Rebuilt at start:") {
		t.Error("`ebpfnet status` does not say what was rebuilt")
	}
	after := endpoints(t)
	if len(after) != len(before) {
		t.Fatalf("%d endpoints after the restart, want %d", len(after), len(before))
	}
	for i := range before {
		if after[i].ID != before[i].ID || after[i].IPv4 != before[i].IPv4 || after[i].Identity != before[i].Identity {
			t.Errorf("endpoint %+v came back as %+v", before[i], after[i])
		}
	}
	checkPolicy("after the restart")

	// A new container: a free address, and the policy of its labels.
	sleeper(t, "e2e-heal-new", net, "--label", "id=heal-client")
	fresh := containerIP(t, "e2e-heal-new", net)
	if fresh == "10.248.0.1" {
		t.Errorf("the new container got the gateway's address")
	}
	for _, ep := range after {
		if strings.TrimSuffix(ep.IPv4, "/24") == fresh {
			t.Errorf("the new container got %s, endpoint %d's address", fresh, ep.ID)
		}
	}
	eventually(t, 10*time.Second, "the new client reaches the server", func() error { return httpGet("e2e-heal-new", server) })

	// The files are whole: they hold what is in use, and a plain restart
	// rebuilds nothing. ipam.json's live copy, in the run directory, has
	// every address; the durable one was written again from it, and has
	// the pool and its gateway.
	var ipamState, durable struct {
		Pending bool `json:"pending"`
		Pools   []struct {
			Gateway   string   `json:"gateway"`
			Addresses []string `json:"addresses"`
		} `json:"pools"`
	}
	data, err := os.ReadFile(filepath.Join(runDir, "ipam.json"))
	if err != nil || json.Unmarshal(data, &ipamState) != nil || ipamState.Pending {
		t.Fatalf("ipam.json's live copy after healing: %v %s", err, data)
	}
	data, err = os.ReadFile(filepath.Join(libDir, "ipam.json"))
	if err != nil || json.Unmarshal(data, &durable) != nil || durable.Pending || len(durable.Pools) != 1 || durable.Pools[0].Gateway != "10.248.0.1" {
		t.Fatalf("ipam.json after healing: %v %s", err, data)
	}
	held := map[string]bool{}
	for _, p := range ipamState.Pools {
		for _, a := range p.Addresses {
			held[a] = true
		}
	}
	for _, ep := range append(after, api.Endpoint{IPv4: fresh}, api.Endpoint{IPv4: "10.248.0.1"}) {
		if a := strings.TrimSuffix(ep.IPv4, "/24"); !held[a] {
			t.Errorf("ipam.json's live copy does not hold %s: %v", a, held)
		}
	}
	ids, err := os.ReadFile(filepath.Join(libDir, "identities.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, ep := range before {
		if !strings.Contains(string(ids), fmt.Sprintf(`"id": %d,`, ep.Identity)) {
			t.Errorf("identities.json does not hold %d:\n%s", ep.Identity, ids)
		}
	}
	d.stop(syscall.SIGKILL)
	d.restart()
	var again api.Status
	if err := json.Unmarshal([]byte(run(t, bin, "status", "-o", "json")), &again); err != nil {
		t.Fatal(err)
	}
	if len(again.Healed) != 0 || len(again.Problems) != 0 {
		t.Errorf("a plain restart after healing: rebuilt %+v, problems %v", again.Healed, again.Problems)
	}
	checkPolicy("after a plain restart")
	// Reconcile keeps the gateway Docker does not show (no --gateway).
	waitReconciled(t, bin)
	if status := run(t, bin, "status", "-o", "json"); !strings.Contains(status, `"10.248.0.1"`) {
		t.Errorf("the gateway 10.248.0.1 is no longer allocated after a restart: %s", status)
	}
}
