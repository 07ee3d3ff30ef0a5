package datapath

import (
	"errors"
	"fmt"
	"testing"
)

// TestDatapathCreateFailureAfterEachStepLeavesNothing: a creation that
// fails after any step past loading its programs (the hook d.failAfter
// fails it there) undoes all of it: the policy pin, the program array
// entry, the veth with its filters and route, the ebpfnet_endpoints entry,
// the flows a peer opened to it in the meantime and the state directory.
// The same endpoint is created at once afterwards, with the same epid.
func TestDatapathCreateFailureAfterEachStepLeavesNothing(t *testing.T) {
	e := newTestEnv(t)
	n := e.network(1)
	peer := e.endpoint(n, 10)
	fromPeer := e.fromContainer(peer)
	for i, step := range createSteps() {
		t.Run(string(step), func(t *testing.T) {
			ep := &Endpoint{DockerEndpointID: fmt.Sprintf("inject-%s-%d", e.suffix, i), IPv4: hostAddr(n, byte(100+i)), Network: n}
			injected := fmt.Errorf("injected failure after %q", step)
			var steps []createStep
			e.dp.failAfter = func(s createStep) error {
				steps = append(steps, s)
				if s != step {
					return nil
				}
				// Published, the endpoint can have a flow already.
				if s == stepPublished {
					send(t, "datagram to the endpoint", fromPeer,
						udpPacket(peer.LXCMAC, ep.LXCMAC, peer.IPv4.Addr(), ep.IPv4.Addr(), 5000, 9000, 16), tcActRedirect)
				}
				return injected
			}
			err := e.dp.CreateEndpoint(ep)
			e.dp.failAfter = nil
			// Should the rollback regress, its veth goes at cleanup all
			// the same (assertGone still reports it).
			e.links = append(e.links, ep.IfName)
			if !errors.Is(err, injected) {
				t.Fatalf("CreateEndpoint: %v, want the injected failure", err)
			}
			if want := createSteps()[:i+1]; fmt.Sprint(steps) != fmt.Sprint(want) {
				t.Errorf("steps done %v, want %v", steps, want)
			}
			assertGone(t, e, ep)
			if _, ok := e.flow(flowKey(peer.IPv4.Addr(), 5000, ep.IPv4.Addr(), 9000, protoUDP)); ok {
				t.Error("a flow of the failed endpoint is left")
			}
			if len(e.dp.Endpoints()) != 1 {
				t.Errorf("endpoints listed: %+v", e.dp.Endpoints())
			}

			again := &Endpoint{DockerEndpointID: ep.DockerEndpointID, IPv4: ep.IPv4, Network: n}
			if err := e.dp.CreateEndpoint(again); err != nil {
				t.Fatalf("create again: %v", err)
			}
			if again.ID != ep.ID {
				t.Errorf("epid %d was not reused (got %d)", ep.ID, again.ID)
			}
			if err := e.dp.DeleteEndpoint(again.DockerEndpointID); err != nil {
				t.Fatal(err)
			}
			assertGone(t, e, again)
		})
	}
}
