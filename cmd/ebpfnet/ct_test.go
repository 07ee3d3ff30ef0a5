package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ebpfnet/ebpfnet/api"
)

// TestBPFCTList: `ebpfnet bpf ct list` prints the daemon's flows as a
// table, or as JSON with -o json, and says so when the daemon fails.
func TestBPFCTList(t *testing.T) {
	flows := []api.ConntrackEntry{
		{Protocol: "TCP", Source: "10.77.0.3:41000", Destination: "10.77.0.2:80", State: "established", ExpiresInSeconds: 7999, SourceEndpoint: 2, DestinationEndpoint: 1},
		{Protocol: "UDP", Source: "10.77.0.3:5353", Destination: "192.0.2.1:53", ExpiresInSeconds: 59, SourceEndpoint: 2},
	}
	var fail atomic.Bool
	socket := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/v1/bpf/ct" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if fail.Load() {
			w.WriteHeader(http.StatusInternalServerError)
			_ = json.NewEncoder(w).Encode(api.Error{Message: "walk ebpfnet_ct4: boom"})
			return
		}
		_ = json.NewEncoder(w).Encode(flows)
	}))
	srv.Listener = ln
	srv.Start()
	defer srv.Close()

	run := func(args ...string) (string, error) {
		cmd := newRootCommand()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(append([]string{"--api-socket", socket, "bpf", "ct", "list"}, args...))
		err := cmd.Execute()
		return out.String(), err
	}
	out, err := run()
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := [][]string{
		{"PROTO", "SOURCE", "DESTINATION", "STATE", "EXPIRES", "ENDPOINTS"},
		{"TCP", "10.77.0.3:41000", "10.77.0.2:80", "established", "2h13m19s", "2", "->", "1"},
		{"UDP", "10.77.0.3:5353", "192.0.2.1:53", "-", "59s", "2", "->", "-"},
	}
	if len(lines) != len(want) {
		t.Fatalf("table:\n%s", out)
	}
	for i, w := range want {
		if got := strings.Fields(lines[i]); strings.Join(got, " ") != strings.Join(w, " ") {
			t.Errorf("line %d: %q, want %q", i, got, w)
		}
	}

	out, err = run("-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var got []api.ConntrackEntry
	if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != 2 || got[0] != flows[0] || got[1] != flows[1] {
		t.Errorf("-o json: %v, %+v\n%s", err, got, out)
	}

	fail.Store(true)
	if _, err := run(); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("a failing daemon: %v", err)
	}
}

// The endpoint table has an IPv6 column once an endpoint has IPv6, and
// marks an address an endpoint lacks.
func TestEndpointTableIPv6(t *testing.T) {
	var b strings.Builder
	if err := endpointTable(&b, []api.Endpoint{{ID: 1, IPv4: "10.0.0.2", IfName: "lxc1"}}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "IPv6") {
		t.Errorf("an IPv4-only table has an IPv6 column:\n%s", b.String())
	}
	b.Reset()
	if err := endpointTable(&b, []api.Endpoint{{ID: 1, IPv4: "10.0.0.2", IfName: "lxc1"}, {ID: 2, IPv6: "fd00::2", IfName: "lxc2"}}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 || !regexp.MustCompile(`IPv4\s+IPv6\s+INTERFACE`).MatchString(lines[0]) ||
		!regexp.MustCompile(`10\.0\.0\.2\s+-\s+lxc1`).MatchString(lines[1]) ||
		!regexp.MustCompile(`-\s+fd00::2\s+lxc2`).MatchString(lines[2]) {
		t.Errorf("dual-stack table:\n%s", b.String())
	}
}
