package plugin

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/ebpfnet/ebpfnet/datapath"
	"github.com/ebpfnet/ebpfnet/ipam"
)

// ipam.json's two copies (ipam.MirrorStore) cover each other: a lost
// durable copy is written again from the live one, with nothing pending.
func TestHealIPAMFromItsLiveCopy(t *testing.T) {
	for _, fault := range []string{"corrupt", "missing"} {
		t.Run(fault, func(t *testing.T) {
			n := newTestNode(t)
			poolID, gateway := createTestNetwork(t, n.cur, "net-l", "10.204.0.0/24")
			eps := []datapath.Endpoint{
				addEndpoint(t, n, "net-l", poolID, map[string]string{"id": "a"}),
				addEndpoint(t, n, "net-l", poolID, map[string]string{"id": "b"}),
			}
			n.restart(t, func() {
				if fault == "corrupt" {
					n.corrupt(t, ipamFile)
				} else {
					n.remove(t, ipamFile)
				}
			})
			d := n.cur.daemon
			h, ok := n.healed(ipamFile)
			if !ok || h.WaitingForDocker || !strings.Contains(h.Rebuilt, "live copy") || !strings.HasPrefix(h.Fault, fault) {
				t.Errorf("status on ipam.json: %+v %v", h, ok)
			}
			if d.ipam.Pending() {
				t.Fatal("pending, though the live copy held everything")
			}
			c, err := ipam.CheckMirror(n.lib(ipamFile), n.live())
			if err != nil || c.DurableErr != nil || c.VolatileErr != nil || !c.DurableTrails {
				t.Errorf("copies after healing: %+v, %v", c, err)
			}
			addr := n.cur.mustCall(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": poolID})["Address"].(string)
			for _, ep := range eps {
				if ep.IPv4.String() == addr {
					t.Fatalf("new address %s is endpoint %d's", addr, ep.ID)
				}
			}
			if addr == gateway {
				t.Fatalf("new address %s is the gateway", addr)
			}
			n.restart(t, nil)
			if got := n.cur.daemon.status().Healed; len(got) != 0 {
				t.Errorf("a restart after healing healed %+v again", got)
			}
		})
	}
}

// The live copy lost while endpoints run: the durable copy's addresses
// trail, so the state is rebuilt from the records, pending until Docker
// says what it holds.
func TestHealIPAMLiveCopyLost(t *testing.T) {
	n := newTestNode(t)
	poolID, _ := createTestNetwork(t, n.cur, "net-v", "10.205.0.0/24")
	// Added after the pool's durable write: only the live copy has it.
	ep := addEndpoint(t, n, "net-v", poolID, map[string]string{"id": "a"})
	n.restart(t, func() { removeFile(t, n.live()) })
	d := n.cur.daemon
	if h, ok := n.healed(ipamFile); !ok || !h.WaitingForDocker || !strings.Contains(h.Fault, "live copy") {
		t.Errorf("status on ipam.json: %+v %v", h, ok)
	}
	if !strings.Contains(n.logs.String(), "live copy of the IPAM state is missing while endpoints run") {
		t.Error("no log line says the live copy was missing")
	}
	code, out := n.cur.call(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": poolID})
	if code == http.StatusOK || !strings.Contains(fmt.Sprint(out["Error"]), "being rebuilt") {
		t.Fatalf("RequestAddress before Docker was asked: HTTP %d %v", code, out)
	}
	d.healFromDocker(context.Background(), dockerView(d, nil), d.snapshotOwnState(), noPorts, d.log)
	if d.ipam.Pending() {
		t.Fatal("still pending after Docker answered")
	}
	if addr := n.cur.mustCall(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": poolID})["Address"].(string); addr == ep.IPv4.String() {
		t.Fatalf("new address %s is the endpoint's", addr)
	}
}

// After a reboot the run directory is empty and no endpoint is left: the
// durable copy is the state, and nothing is rebuilt.
func TestIPAMAfterAReboot(t *testing.T) {
	n := newTestNode(t)
	poolID, gateway := createTestNetwork(t, n.cur, "net-r", "10.206.0.0/24")
	ep := addEndpoint(t, n, "net-r", poolID, map[string]string{"id": "a"})
	n.cur.mustCall(t, "/NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": "net-r", "EndpointID": ep.DockerEndpointID})
	n.restart(t, func() { removeFile(t, n.live()) })
	if got := n.cur.daemon.status().Healed; len(got) != 0 {
		t.Errorf("healed %+v after a reboot", got)
	}
	if n.cur.daemon.ipam.Pending() {
		t.Error("pending after a reboot")
	}
	var found bool
	for _, p := range n.cur.daemon.ipam.Pools() {
		if p.ID == poolID {
			found = p.Gateway.String() == strings.Split(gateway, "/")[0]
		}
	}
	if !found {
		t.Errorf("pool %s with gateway %s not kept: %+v", poolID, gateway, n.cur.daemon.ipam.Pools())
	}
}
