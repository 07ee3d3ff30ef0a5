package ui

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/policy"
	"github.com/ebpfnet/ebpfnet/servicemap"
)

// fakeSource serves the walk-through under the L4 rule; set changes it.
type fakeSource struct {
	mu    sync.Mutex
	snap  Snapshot
	err   error
	calls atomic.Int32
}

func (f *fakeSource) Snapshot(context.Context) (Snapshot, error) {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.snap, f.err
}

func (f *fakeSource) set(s Snapshot, err error) {
	f.mu.Lock()
	f.snap, f.err = s, err
	f.mu.Unlock()
}

func walkThrough(flows ...servicemap.Flow) Snapshot {
	inv := servicemap.Inventory{
		Node: "host-a",
		Endpoints: []servicemap.Endpoint{
			{ID: 1, Identity: 256, Container: "app1", Node: "host-a", Local: true},
			{ID: 2, Identity: 257, Container: "app2", Node: "host-a", Local: true},
			{ID: 3, Identity: 258, Container: "app3", Node: "host-a", Local: true},
		},
		Policies: []servicemap.EndpointPolicy{
			{Endpoint: 1, Identity: 256, Ingress: servicemap.EnforceEnabled, Egress: servicemap.EnforceDisabled,
				Entries: []policy.Key{{Identity: 257, Port: 80, Proto: servicemap.ProtoTCP, Direction: policy.Ingress}}},
			{Endpoint: 2, Identity: 257, Ingress: servicemap.EnforceDisabled, Egress: servicemap.EnforceDisabled},
			{Endpoint: 3, Identity: 258, Ingress: servicemap.EnforceDisabled, Egress: servicemap.EnforceDisabled},
		},
		Labels: func(id uint32) []string {
			return map[uint32][]string{1: {"reserved:host"}, 2: {"reserved:world"},
				256: {"container:id=app1"}, 257: {"container:id=app2"}, 258: {"container:id=app3"}}[id]
		},
	}
	f := servicemap.NewFlows(servicemap.Limits{}, nil)
	for _, fl := range flows {
		f.Observe(fl)
	}
	return Snapshot{Graph: servicemap.BuildGraph(inv, f.Edges(), f.Limits()), Matrix: servicemap.BuildMatrix(inv)}
}

var (
	app2ToApp1 = servicemap.Flow{Src: netip.MustParseAddrPort("10.77.0.3:40000"), Dst: netip.MustParseAddrPort("10.77.0.2:80"),
		Proto: servicemap.ProtoTCP, SrcIdentity: 257, DstIdentity: 256, Verdict: servicemap.Allowed}
	app3ToApp1 = servicemap.Flow{Src: netip.MustParseAddrPort("10.77.0.4:50000"), Dst: netip.MustParseAddrPort("10.77.0.2:80"),
		Proto: servicemap.ProtoTCP, SrcIdentity: 258, DstIdentity: 256, Verdict: servicemap.Denied, Reason: "Policy denied"}
)

func serve(t *testing.T, src Source, cfg Config) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(NewHandler(src, cfg))
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, url string, out any) *http.Response {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			t.Fatalf("GET %s: %v: %s", url, err, body)
		}
	}
	return resp
}

func TestAPIAnswersTheSnapshot(t *testing.T) {
	want := walkThrough(app2ToApp1, app3ToApp1)
	srv := serve(t, &fakeSource{snap: want}, Config{})

	var g servicemap.Graph
	resp := get(t, srv.URL+"/api/graph", &g)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /api/graph: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	if len(g.Edges) != 2 || g.Edges[0].From != 257 || g.Edges[0].Verdict != servicemap.Allowed ||
		g.Edges[1].From != 258 || g.Edges[1].Verdict != servicemap.Denied || g.Edges[1].Ports[0].Port != "80/TCP" {
		t.Errorf("graph edges: %+v", g.Edges)
	}
	if len(g.Identities) != 3 || g.Identities[0].Name != "id=app1" || g.Identities[0].Containers[0] != "app1" {
		t.Errorf("graph identities: %+v", g.Identities)
	}

	var m servicemap.Matrix
	get(t, srv.URL+"/api/matrix", &m)
	if !reflect.DeepEqual(m, want.Matrix) {
		t.Errorf("matrix:\n got %+v\nwant %+v", m, want.Matrix)
	}
	var both Snapshot
	get(t, srv.URL+"/api/snapshot", &both)
	if !reflect.DeepEqual(both.Matrix, want.Matrix) || len(both.Graph.Edges) != 2 {
		t.Errorf("snapshot: %+v", both)
	}
}

func TestAPIReportsTheSourcesError(t *testing.T) {
	srv := serve(t, &fakeSource{err: errors.New("read policy map 3: boom")}, Config{})
	var e map[string]string
	if resp := get(t, srv.URL+"/api/graph", &e); resp.StatusCode != http.StatusInternalServerError || e["message"] != "read policy map 3: boom" {
		t.Errorf("answer %s %v", resp.Status, e)
	}
}

func TestPageIsServedFromTheBinary(t *testing.T) {
	srv := serve(t, &fakeSource{snap: walkThrough()}, Config{})
	for path, want := range map[string]string{
		"/":          `<script src="app.js"`,
		"/app.js":    `new EventSource("api/events")`,
		"/style.css": `--denied:`,
	} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %s, body lacks %q", path, resp.Status, want)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
			t.Errorf("GET %s: Content-Security-Policy %q", path, csp)
		}
	}
	// Nothing the page loads comes from elsewhere.
	for _, f := range []string{"static/index.html", "static/app.js", "static/style.css"} {
		data, _ := static.ReadFile(f)
		if strings.Contains(string(data), "//") && strings.Contains(string(data), "https://") {
			t.Errorf("%s names an outside address", f)
		}
	}
	if resp, _ := http.Get(srv.URL + "/nothing-here"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /nothing-here: %s", resp.Status)
	}
	resp, err := http.Post(srv.URL+"/api/graph", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /api/graph: %s", resp.Status)
	}
}

// A page elsewhere must not read the map through a name of its own that
// resolves to 127.0.0.1.
func TestForeignHostNamesAreRefused(t *testing.T) {
	srv := serve(t, &fakeSource{snap: walkThrough()}, Config{})
	open := serve(t, &fakeSource{snap: walkThrough()}, Config{AllowRemote: true})
	for host, ok := range map[string]bool{
		"127.0.0.1:9966": true, "localhost:9966": true, "LOCALHOST": true, "[::1]:9966": true, "127.0.0.2": true,
		"evil.example:9966": false, "evil.example": false, "10.0.0.1:9966": false,
	} {
		for _, s := range []*httptest.Server{srv, open} {
			req, _ := http.NewRequest(http.MethodGet, s.URL+"/api/graph", nil)
			req.Host = host
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			want := http.StatusOK
			if !ok && s == srv {
				want = http.StatusForbidden
			}
			if resp.StatusCode != want {
				t.Errorf("Host %q (allow remote %v): %s, want %d", host, s == open, resp.Status, want)
			}
		}
	}
	// HTTP/1.0 may send none.
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/api/graph", nil)
	req.Host = ""
	NewHandler(&fakeSource{}, Config{}).ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Errorf("no Host header: %d", rec.Code)
	}
}

// sseReader reads server-sent events, parsed on a goroutine of its own.
type sseReader struct {
	t      *testing.T
	events chan sseEvent
}

type sseEvent struct{ name, data string }

func openEvents(t *testing.T, url string) (*sseReader, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/api/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	r := &sseReader{t: t, events: make(chan sseEvent, 16)}
	go func() {
		defer close(r.events)
		rd := bufio.NewReader(resp.Body)
		var e sseEvent
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimRight(line, "\n")
			switch {
			case strings.HasPrefix(line, "event: "):
				e.name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				e.data = strings.TrimPrefix(line, "data: ")
			case line == "" && e.name != "":
				r.events <- e
				e = sseEvent{}
			}
		}
	}()
	return r, func() { cancel(); resp.Body.Close() }
}

// next returns the next event's name and data; empty ones when none came
// within timeout.
func (r *sseReader) next(timeout time.Duration) (string, string) {
	r.t.Helper()
	select {
	case e, ok := <-r.events:
		if !ok {
			r.t.Fatal("event stream ended")
		}
		return e.name, e.data
	case <-time.After(timeout):
		return "", ""
	}
}

// The stream sends the matrix and the graph at once, then each again only
// when it changed.
func TestEventsStreamChanges(t *testing.T) {
	src := &fakeSource{snap: walkThrough(app2ToApp1)}
	srv := serve(t, src, Config{Interval: 20 * time.Millisecond})
	events, stop := openEvents(t, srv.URL)
	defer stop()

	name, data := events.next(2 * time.Second)
	var m servicemap.Matrix
	if name != "matrix" || json.Unmarshal([]byte(data), &m) != nil || len(m.Cells) != 21 {
		t.Fatalf("first event %q: %s", name, data)
	}
	name, data = events.next(2 * time.Second)
	var g servicemap.Graph
	if name != "graph" || json.Unmarshal([]byte(data), &g) != nil || len(g.Edges) != 1 {
		t.Fatalf("second event %q: %s", name, data)
	}
	if name, _ := events.next(200 * time.Millisecond); name != "" {
		t.Errorf("an unchanged snapshot was sent again (%q)", name)
	}
	src.set(walkThrough(app2ToApp1, app3ToApp1), nil)
	name, data = events.next(2 * time.Second)
	if name != "graph" || json.Unmarshal([]byte(data), &g) != nil || len(g.Edges) != 2 {
		t.Fatalf("after a new flow, event %q: %s", name, data)
	}
	if name, _ := events.next(200 * time.Millisecond); name != "" {
		t.Errorf("the unchanged matrix was sent again (%q)", name)
	}
	src.set(Snapshot{}, errors.New("datapath closed"))
	if name, data := events.next(2 * time.Second); name != "problem" || data != `"datapath closed"` {
		t.Errorf("source failing: event %q %s", name, data)
	}
}

// However many pages are open, the source is asked at most about once per
// half interval: each ask reads every policy map and the conntrack table.
func TestPagesShareTheSource(t *testing.T) {
	src := &fakeSource{snap: walkThrough(app2ToApp1)}
	srv := serve(t, src, Config{Interval: time.Hour})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			events, stop := openEvents(t, srv.URL)
			defer stop()
			if name, _ := events.next(2 * time.Second); name != "matrix" {
				t.Errorf("no first matrix")
			}
		}()
	}
	wg.Wait()
	for range 5 {
		get(t, srv.URL+"/api/graph", nil)
	}
	if n := src.calls.Load(); n != 1 {
		t.Errorf("source asked %d times for 8 pages and 5 API calls within the interval, want 1", n)
	}
}

func TestCheckAddr(t *testing.T) {
	for _, c := range []struct {
		addr   string
		remote bool
		want   string // part of the error; "" for none
	}{
		{"127.0.0.1:9966", false, ""},
		{"[::1]:9966", false, ""},
		{"localhost:9966", false, ""},
		{"127.0.0.1:0", false, ""},
		{"0.0.0.0:9966", false, "not a loopback address"},
		{"10.0.0.5:9966", false, "--ui-allow-remote"},
		{":9966", false, "every interface"},
		{"example.com:9966", false, "not a name"},
		{"127.0.0.1", false, "not host:port"},
		{"127.0.0.1:99999", false, "not host:port"},
		{"127.0.0.1:9966 (a typo)", false, "not host:port"},
		{"0.0.0.0:9966", true, ""},
		{":9966", true, ""},
		{"nonsense", true, "not host:port"},
	} {
		err := CheckAddr(c.addr, c.remote)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("CheckAddr(%q, %v): %v", c.addr, c.remote, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("CheckAddr(%q, %v) = %v, want an error with %q", c.addr, c.remote, err, c.want)
		}
	}
}
