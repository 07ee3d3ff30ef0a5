package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/ebpfnet/ebpfnet/datapath"
	"github.com/ebpfnet/ebpfnet/driver"
	"github.com/ebpfnet/ebpfnet/ipam"
)

// fuzzKernel stands in for the datapath and the endpoint manager: the
// socket's decoding and the drivers' handlers are what is fuzzed.
type fuzzKernel struct {
	mu  sync.Mutex
	eps map[string]datapath.Endpoint
	id  uint16
}

func (k *fuzzKernel) AddNetwork(datapath.Network) error    { return nil }
func (k *fuzzKernel) RemoveNetwork(datapath.Network) error { return nil }

func (k *fuzzKernel) CreateEndpoint(_ context.Context, ep *datapath.Endpoint) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.eps[ep.DockerEndpointID]; ok {
		return fmt.Errorf("endpoint %s exists", ep.DockerEndpointID)
	}
	k.id++
	ep.ID = k.id
	ep.IfName, ep.PeerName = "lxcfuzz", "tmpfuzz"
	ep.LXCMAC = datapath.HardwareAddr{2, 0, 0, 0, 0, 1}
	k.eps[ep.DockerEndpointID] = *ep
	return nil
}

func (k *fuzzKernel) DeleteEndpoint(_ context.Context, id string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.eps, id)
	return nil
}

func (k *fuzzKernel) Endpoint(id string) (datapath.Endpoint, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	ep, ok := k.eps[id]
	return ep, ok
}

// dockerCalls are the paths Docker posts to, in a fixed order for the
// fuzzer's index.
func dockerCalls() []string {
	calls := []string{
		"/Plugin.Activate",
		"/NetworkDriver.GetCapabilities", "/NetworkDriver.CreateNetwork", "/NetworkDriver.DeleteNetwork",
		"/NetworkDriver.CreateEndpoint", "/NetworkDriver.DeleteEndpoint", "/NetworkDriver.EndpointOperInfo",
		"/NetworkDriver.Join", "/NetworkDriver.Leave", "/NetworkDriver.ProgramExternalConnectivity",
		"/NetworkDriver.RevokeExternalConnectivity", "/NetworkDriver.AllocateNetwork", "/NetworkDriver.FreeNetwork",
		"/NetworkDriver.DiscoverNew", "/NetworkDriver.DiscoverDelete", "/NetworkDriver.GwAllocCheck",
		"/IpamDriver.GetCapabilities", "/IpamDriver.GetDefaultAddressSpaces", "/IpamDriver.RequestPool",
		"/IpamDriver.ReleasePool", "/IpamDriver.RequestAddress", "/IpamDriver.ReleaseAddress",
	}
	sort.Strings(calls)
	return calls
}

// Any body on any path of the plugin socket gets an answer Docker can
// read, 200 or 500 with a message, never a crash; and whatever the calls
// did, the state they persisted loads again.
func FuzzDockerCalls(f *testing.F) {
	seeds := []struct {
		call string
		body string
	}{
		{"/Plugin.Activate", `{}`},
		{"/NetworkDriver.CreateNetwork", `{"NetworkID":"n1","IPv4Data":[{"AddressSpace":"ebpfnet-local","Pool":"10.77.0.0/16","Gateway":"10.77.0.1/16"}],"Options":{"com.docker.network.generic":{"ebpfnet.policy-enforcement":"always"}}}`},
		{"/NetworkDriver.CreateEndpoint", `{"NetworkID":"n1","EndpointID":"e1","Interface":{"Address":"10.77.0.2/16","MacAddress":""}}`},
		{"/NetworkDriver.Join", `{"NetworkID":"n1","EndpointID":"e1","SandboxKey":"/x","Options":{}}`},
		{"/NetworkDriver.ProgramExternalConnectivity", `{"NetworkID":"n1","EndpointID":"e1","Options":{"com.docker.network.portmap":[{"Proto":6,"HostPort":8080,"Port":80}]}}`},
		{"/IpamDriver.RequestPool", `{"AddressSpace":"ebpfnet-local","Pool":"10.78.0.0/24","SubPool":"","Options":{},"V6":false}`},
		{"/IpamDriver.RequestPool", `{"AddressSpace":"ebpfnet-local","Pool":"0.0.0.0/24"}`},
		{"/IpamDriver.RequestAddress", `{"PoolID":"ebpfnet-local/10.78.0.0/24","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}`},
		{"/IpamDriver.ReleaseAddress", `{"PoolID":"ebpfnet-local/10.78.0.0/24","Address":"10.78.0.1"}`},
		{"/NetworkDriver.DeleteEndpoint", `null`},
		{"/NetworkDriver.DeleteNetwork", `{"NetworkID":`},
	}
	calls := dockerCalls()
	for _, s := range seeds {
		i := slices.Index(calls, s.call)
		if i < 0 {
			f.Fatalf("seed for unknown call %s", s.call)
		}
		f.Add(uint8(i), []byte(s.body))
	}
	dir := f.TempDir()
	log := logrus.New()
	log.SetOutput(io.Discard)
	f.Fuzz(func(t *testing.T, call uint8, body []byte) {
		state := filepath.Join(dir, fmt.Sprintf("%d", call))
		k := &fuzzKernel{eps: map[string]datapath.Endpoint{}}
		drv, err := driver.New(filepath.Join(state, "networks.json"), k, k, log)
		if err != nil {
			t.Fatal(err)
		}
		ipd, err := ipam.New(ipam.Config{StatePath: filepath.Join(state, "ipam.json")})
		if err != nil {
			t.Fatal(err)
		}
		var inflight sync.WaitGroup
		api := newDockerAPI(drv, ipd, log, &inflight, noObserver{}, DefaultCallBound)
		path := calls[int(call)%len(calls)]
		sock := filepath.Join(state, "p.sock")
		_ = os.Remove(sock)
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() { _ = api.handler.Serve(ln) }()
		client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
		resp, err := client.Post("http://plugin"+path, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		answer, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		client.CloseIdleConnections()
		inflight.Wait()
		if !drv.WaitBuilds(5 * time.Second) {
			t.Fatalf("%s left an endpoint being built", path)
		}
		var out map[string]any
		if err := json.Unmarshal(answer, &out); err != nil && string(answer) != "null\n" {
			t.Fatalf("%s answered something Docker cannot read (%d): %q", path, resp.StatusCode, answer)
		}
		switch resp.StatusCode {
		case http.StatusOK:
		case http.StatusInternalServerError:
			if msg, _ := out["Err"].(string); msg == "" {
				t.Fatalf("%s failed without a message: %q", path, answer)
			}
		default:
			t.Fatalf("%s answered HTTP %d", path, resp.StatusCode)
		}
		if _, err := driver.New(filepath.Join(state, "networks.json"), k, k, log); err != nil {
			t.Fatalf("after %s the networks no longer load: %v", path, err)
		}
		if _, err := ipam.New(ipam.Config{StatePath: filepath.Join(state, "ipam.json")}); err != nil {
			t.Fatalf("after %s the IPAM state no longer loads: %v", path, err)
		}
	})
}
