package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/go-plugins-helpers/ipam"
	"github.com/docker/go-plugins-helpers/network"
	"github.com/sirupsen/logrus"
)

// stallingDriver is a network driver whose CreateEndpoint waits until
// released: a stuck kernel or store, as a test can make one.
type stallingDriver struct {
	network.Driver // nil: only CreateEndpoint is called
	release        chan struct{}
	calls          int
	mu             sync.Mutex
}

func (s *stallingDriver) CreateEndpoint(*network.CreateEndpointRequest) (*network.CreateEndpointResponse, error) {
	s.mu.Lock()
	s.calls++
	first := s.calls == 1
	s.mu.Unlock()
	if first {
		<-s.release
	}
	return &network.CreateEndpointResponse{}, nil
}

// A stuck call is answered with an error within the bound, the next one is
// served, and shutdown still waits for the stuck one to end.
func TestStuckCallIsAnsweredWithinTheBound(t *testing.T) {
	drv := &stallingDriver{release: make(chan struct{})}
	var inflight sync.WaitGroup
	log := logrus.New()
	log.SetOutput(io.Discard)
	const bound = 200 * time.Millisecond
	api := newDockerAPI(drv, ipam.Ipam(nil), log, &inflight, noObserver{}, bound)
	sock := filepath.Join(t.TempDir(), "p.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = api.handler.Serve(ln) }()
	t.Cleanup(func() { ln.Close() })
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	post := func() (int, map[string]any, time.Duration) {
		body, _ := json.Marshal(network.CreateEndpointRequest{NetworkID: "n", EndpointID: "e"})
		start := time.Now()
		resp, err := client.Post("http://plugin/NetworkDriver.CreateEndpoint", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out, time.Since(start)
	}
	code, out, took := post()
	if code != http.StatusInternalServerError || !strings.Contains(out["Err"].(string), "did not finish /NetworkDriver.CreateEndpoint within 200ms") {
		t.Fatalf("a stuck call answered %d %v", code, out)
	}
	if took > 5*bound {
		t.Fatalf("the stuck call was answered after %s, bound %s", took, bound)
	}
	if code, out, _ := post(); code != http.StatusOK {
		t.Fatalf("the next call, with the first still stuck: %d %v", code, out)
	}
	waited := make(chan struct{})
	go func() { inflight.Wait(); close(waited) }()
	select {
	case <-waited:
		t.Fatal("shutdown would not wait for the stuck call")
	case <-time.After(50 * time.Millisecond):
	}
	close(drv.release)
	<-waited
}
