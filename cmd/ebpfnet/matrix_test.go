package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ebpfnet/ebpfnet/servicemap"
)

// TestPolicyMatrix: `ebpfnet policy matrix` prints the daemon's matrix as
// identity x identity with the ports, or as JSON with -o json.
func TestPolicyMatrix(t *testing.T) {
	m := servicemap.Matrix{
		Node: "host-a",
		Identities: []servicemap.Identity{
			{ID: 2, Name: "world", Labels: []string{"reserved:world"}},
			{ID: 256, Name: "id=app1", Labels: []string{"container:id=app1"}, Endpoints: 1, Nodes: []string{"host-a"}, Ingress: "enabled", Egress: "disabled"},
			{ID: 257, Name: "id=app2", Labels: []string{"container:id=app2"}, Endpoints: 2, Nodes: []string{"host-a", "host-b"}, Ingress: "disabled", Egress: "disabled"},
			{ID: 259, Name: "id=db", Labels: []string{"container:id=db"}, Endpoints: 1, Nodes: []string{"host-b"}},
		},
		Cells: []servicemap.Cell{
			{From: 2, To: 256, Ports: []string{}},
			{From: 2, To: 257, Ports: []string{"any"}},
			{From: 256, To: 2, Ports: []string{"any"}},
			{From: 256, To: 256, Ports: []string{}},
			{From: 256, To: 257, Ports: []string{"any"}},
			{From: 256, To: 259, Ports: []string{"any"}, Partial: true},
			{From: 257, To: 2, Ports: []string{"any"}},
			{From: 257, To: 256, Ports: []string{"80/TCP", "53/UDP"}},
			{From: 257, To: 257, Ports: []string{"any"}},
			{From: 257, To: 259, Ports: []string{"any"}, Partial: true},
			{From: 259, To: 256, Ports: []string{"80/TCP"}, Partial: true},
			{From: 259, To: 257, Ports: []string{"any"}, Partial: true},
		},
	}
	socket := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/v1/policy/matrix" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(m)
	}))
	srv.Listener = ln
	srv.Start()
	defer srv.Close()
	run := func(args ...string) string {
		cmd := newRootCommand()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(append([]string{"--api-socket", socket, "policy", "matrix"}, args...))
		if err := cmd.Execute(); err != nil {
			t.Fatalf("policy matrix %v: %v", args, err)
		}
		return out.String()
	}

	out := run()
	var got [][]string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		got = append(got, strings.Fields(l))
	}
	want := [][]string{
		{"IDENTITY", "NAME", "ENDPOINTS", "NODES", "POLICY", "(ingress)", "POLICY", "(egress)"},
		{"2", "world", "0", "-", "-", "-"},
		{"256", "id=app1", "1", "host-a", "enabled", "disabled"},
		{"257", "id=app2", "2", "host-a,host-b", "disabled", "disabled"},
		{"259", "id=db", "1", "host-b", "-", "-"},
		{},
		{"FROM", "\\", "TO", "2", "256", "257", "259"},
		{"2", "world", ".", "-", "any", "."},
		{"256", "id=app1", "any", "-", "any", "any*"},
		{"257", "id=app2", "any", "80/TCP,53/UDP", "any", "any*"},
		{"259", "id=db", ".", "80/TCP*", "any*", "."},
		{},
		{"any:", "every", "port", "and", "protocol;", "-:", "denied;", "*:", "one", "end's", "endpoints", "are", "all", "on", "other", "nodes,", "which", "enforce", "its", "side;", ".:", "decided", "on", "other", "nodes", "only"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("table:\n%s\ngot  %q\nwant %q", out, got, want)
	}

	var back servicemap.Matrix
	if err := json.Unmarshal([]byte(run("-o", "json")), &back); err != nil || !reflect.DeepEqual(back, m) {
		t.Errorf("-o json: %v\n%+v", err, back)
	}
}
