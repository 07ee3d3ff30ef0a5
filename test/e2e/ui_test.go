package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ebpfnet/ebpfnet/api"
	"github.com/ebpfnet/ebpfnet/servicemap"
	"github.com/ebpfnet/ebpfnet/testutil"
)

// freeLoopbackAddr is a loopback address with a port nothing listens on.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// identityOf waits until the container labelled id=<app> has its identity
// and returns it.
func identityOf(t *testing.T, bin, app string) uint32 {
	t.Helper()
	var id uint32
	eventually(t, 10*time.Second, "identity of "+app, func() error {
		var ids []api.Identity
		if err := json.Unmarshal([]byte(run(t, bin, "identity", "list", "-o", "json")), &ids); err != nil {
			return err
		}
		for _, i := range ids {
			if hasLabel(i.Labels, "container:id="+app) {
				for _, ep := range endpoints(t) {
					if ep.Identity == i.ID {
						id = i.ID
						return nil
					}
				}
			}
		}
		return fmt.Errorf("no endpoint with container:id=%s yet", app)
	})
	return id
}

func serviceMapGraph(addr string) (servicemap.Graph, error) {
	var g servicemap.Graph
	resp, err := http.Get("http://" + addr + "/api/graph")
	if err != nil {
		return g, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return g, fmt.Errorf("GET /api/graph: %s: %s", resp.Status, body)
	}
	return g, json.Unmarshal(body, &g)
}

// edgeWith finds the edge from -> to with verdict v naming port.
func edgeWith(g servicemap.Graph, from, to uint32, v servicemap.Verdict, port string) error {
	for _, e := range g.Edges {
		if e.From == from && e.To == to && e.Verdict == v {
			for _, p := range e.Ports {
				if p.Port == port {
					return nil
				}
			}
			return fmt.Errorf("edge %d -> %d %s has ports %+v, not %s", from, to, v, e.Ports, port)
		}
	}
	return fmt.Errorf("no %s edge %d -> %d among %+v", v, from, to, g.Edges)
}

// TestServiceMap is Cilium's walk-through watched on the service map: a
// flow of endpoints that enforce nothing shows as allowed (from the
// conntrack table: no verdict reports it); under the L4 rule app3 -> app1
// shows as denied and app2 -> app1 as allowed, in the JSON, in `ebpfnet
// policy matrix`, and drawn in a real browser, whose screenshot is kept.
func TestServiceMap(t *testing.T) {
	bin := requireEnvironment(t)
	addr := freeLoopbackAddr(t)
	startDaemon(t, bin, "--ui-addr", addr)
	noPolicy(t, bin)
	network(t, "e2e-map", "--subnet", "10.239.0.0/24")
	httpd(t, "e2e-app1", "e2e-map", "--label", "id=app1")
	sleeper(t, "e2e-app2", "e2e-map", "--label", "id=app2")
	sleeper(t, "e2e-app3", "e2e-map", "--label", "id=app3")
	app1IP := containerIP(t, "e2e-app1", "e2e-map")
	app1, app2, app3 := identityOf(t, bin, "app1"), identityOf(t, bin, "app2"), identityOf(t, bin, "app3")

	// No rule: nothing enforces, no verdict is reported; the flow is on
	// the map from the conntrack table.
	eventually(t, 10*time.Second, "app2 -> app1 before any rule", func() error { return httpGet("e2e-app2", app1IP) })
	eventually(t, 10*time.Second, "app2 -> app1 allowed on the map without a rule", func() error {
		g, err := serviceMapGraph(addr)
		if err != nil {
			return err
		}
		return edgeWith(g, app2, app1, servicemap.Allowed, "80/TCP")
	})

	importRules(t, bin, l4Rule)
	if err := httpGet("e2e-app2", app1IP); err != nil {
		t.Errorf("L4 rule: app2 -> app1 HTTP: %v", err)
	}
	if err := httpGet("e2e-app3", app1IP); err == nil {
		t.Errorf("L4 rule: app3 reached app1")
	}
	eventually(t, 10*time.Second, "app3 -> app1 denied on the map", func() error {
		g, err := serviceMapGraph(addr)
		if err != nil {
			return err
		}
		return edgeWith(g, app3, app1, servicemap.Denied, "80/TCP")
	})

	var m servicemap.Matrix
	if err := json.Unmarshal([]byte(run(t, bin, "policy", "matrix", "-o", "json")), &m); err != nil {
		t.Fatal(err)
	}
	cells := map[[2]uint32]string{}
	for _, c := range m.Cells {
		cells[[2]uint32{c.From, c.To}] = strings.Join(c.Ports, ",")
	}
	if got := cells[[2]uint32{app2, app1}]; got != "80/TCP" {
		t.Errorf("policy matrix: app2 -> app1 %q, want 80/TCP", got)
	}
	if got, ok := cells[[2]uint32{app3, app1}]; !ok || got != "" {
		t.Errorf("policy matrix: app3 -> app1 %q (listed %v), want denied", got, ok)
	}
	if got := cells[[2]uint32{app1, app3}]; got != "any" {
		t.Errorf("policy matrix: app1 -> app3 %q, want any (nothing enforced)", got)
	}
	table := run(t, bin, "policy", "matrix")
	if row := grepLines(table, fmt.Sprintf("%d id=app2", app2)); !strings.Contains(row, "80/TCP") {
		t.Errorf("policy matrix table, app2's row %q lacks 80/TCP:\n%s", row, table)
	}

	t.Run("browser", func(t *testing.T) {
		b := testutil.StartChromium(t, 1400, 900)
		if err := b.Navigate(fmt.Sprintf("http://%s/#identity=%d", addr, app1)); err != nil {
			t.Fatal(err)
		}
		drawn := fmt.Sprintf(`!!document.querySelector('g.edge[data-from="%d"][data-to="%d"][data-verdict="denied"]')`, app3, app1)
		if err := b.WaitFor(drawn, 15*time.Second); err != nil {
			t.Fatalf("the page never drew app3 -> app1 denied: %v", err)
		}
		type drawnEdge struct {
			From, To, Verdict, Ports, Stroke string
		}
		var edges []drawnEdge
		if err := b.Eval(`[...document.querySelectorAll("g.edge")].map(g => ({
			From: g.dataset.from, To: g.dataset.to, Verdict: g.dataset.verdict, Ports: g.dataset.ports,
			Stroke: getComputedStyle(g.querySelector("path")).stroke}))`, &edges); err != nil {
			t.Fatal(err)
		}
		var colours map[string]string
		if err := b.Eval(`({allowed: getComputedStyle(document.querySelector(".swatch.allowed")).backgroundColor,
			denied: getComputedStyle(document.querySelector(".swatch.denied")).backgroundColor})`, &colours); err != nil {
			t.Fatal(err)
		}
		if colours["allowed"] == colours["denied"] {
			t.Fatalf("allowed and denied share a colour: %v", colours)
		}
		find := func(from, to uint32, verdict string) (drawnEdge, bool) {
			for _, e := range edges {
				if e.From == fmt.Sprint(from) && e.To == fmt.Sprint(to) && e.Verdict == verdict {
					return e, true
				}
			}
			return drawnEdge{}, false
		}
		if e, ok := find(app3, app1, "denied"); !ok || e.Stroke != colours["denied"] || !strings.Contains(e.Ports, "80/TCP") {
			t.Errorf("app3 -> app1 drawn as %+v (found %v), want denied in %s on 80/TCP", e, ok, colours["denied"])
		}
		if e, ok := find(app2, app1, "allowed"); !ok || e.Stroke != colours["allowed"] || !strings.Contains(e.Ports, "80/TCP") {
			t.Errorf("app2 -> app1 drawn as %+v (found %v), want allowed in %s on 80/TCP", e, ok, colours["allowed"])
		}
		if _, ok := find(app3, app1, "allowed"); ok {
			t.Errorf("app3 -> app1 drawn as allowed too: %+v", edges)
		}
		// The panel of the selected identity: who may reach app1.
		var panel struct {
			Name    string
			Reach   map[string]string
			Denied  string
			Visible bool
		}
		if err := b.Eval(`({Name: document.getElementById("sel-name").textContent,
			Visible: !document.getElementById("selected").hidden,
			Reach: Object.fromEntries([...document.querySelectorAll("#may-reach tbody tr[data-from]")].map(r => [r.dataset.from, r.dataset.ports])),
			Denied: document.getElementById("denied-from").textContent})`, &panel); err != nil {
			t.Fatal(err)
		}
		if !panel.Visible || panel.Name != "id=app1" || panel.Reach[fmt.Sprint(app2)] != "80/TCP" ||
			panel.Reach[fmt.Sprint(app3)] != "" || !strings.Contains(panel.Denied, "id=app3") {
			t.Errorf("app1's panel: %+v", panel)
		}
		shot := filepath.Join(t.ArtifactDir(), "service-map.png")
		if err := b.Screenshot(shot); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot of the service map: %s", shot)
	})
}
