// Package grafana holds the Grafana dashboard of ebpfnet's Prometheus
// metrics (ebpfnet.json); its test holds every query to the metrics the
// daemon exports.
package grafana

import (
	"encoding/json"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/ebpfnet/ebpfnet/metrics"
)

// selector is one metric a query reads, with the label names its
// matchers use.
type selector struct {
	metric string
	labels []string
}

// query is what a PromQL expression reads: its selectors, and the label
// names its grouping clauses (by, without, on, ignoring, group_*) use.
type query struct {
	selectors []selector
	grouping  []string
}

var (
	// A string literal, a range or subquery duration, a Grafana variable.
	stringLit   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	rangeLit    = regexp.MustCompile(`\[[^\]]*\]`)
	grafanaVar  = regexp.MustCompile(`\$\{?[A-Za-z_][A-Za-z0-9_]*\}?`)
	groupClause = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	matchers    = regexp.MustCompile(`\{([^}]*)\}`)
	matcherName = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)`)
	token       = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*(\s*[({])?`)
	labelValues = regexp.MustCompile(`^\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$`)
)

// keywords are PromQL's words that are no metric: operators, modifiers
// and the aggregations, which may stand before by/without rather than
// their parenthesis (functions are told apart by their parenthesis).
var keywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "by": true, "without": true,
	"on": true, "ignoring": true, "group_left": true, "group_right": true, "inf": true, "nan": true,
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
}

// parseQuery finds what a PromQL expression reads. It is a scanner, not
// a parser: enough for the dashboard's queries, and held to examples of
// its own below. (Prometheus' own parser lives in the prometheus/prometheus
// module, whose requirements would move the etcd client's grpc, zap and
// genproto for the sake of one test.)
func parseQuery(expr string) query {
	var q query
	expr = stringLit.ReplaceAllString(expr, `""`)
	expr = rangeLit.ReplaceAllString(expr, "")
	expr = grafanaVar.ReplaceAllString(expr, "")
	for _, m := range groupClause.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(m[2], ",") {
			if l = strings.TrimSpace(l); l != "" {
				q.grouping = append(q.grouping, l)
			}
		}
	}
	expr = groupClause.ReplaceAllString(expr, "$1")
	// Each selector: a name, then its matchers if any.
	for _, loc := range token.FindAllStringIndex(expr, -1) {
		tok := expr[loc[0]:loc[1]]
		name := strings.TrimRight(tok, " \t\n({")
		if strings.HasSuffix(tok, "(") || keywords[name] {
			continue // a function, an operator
		}
		if loc[0] > 0 && strings.ContainsAny(expr[loc[0]-1:loc[0]], "0123456789.") {
			continue // the exponent or unit of a number
		}
		if inBraces(expr, loc[0]) {
			continue // a label name or value inside matchers
		}
		sel := selector{metric: name}
		if strings.HasSuffix(tok, "{") {
			if m := matchers.FindStringSubmatch(expr[loc[1]-1:]); m != nil {
				for _, n := range matcherName.FindAllStringSubmatch(m[1], -1) {
					sel.labels = append(sel.labels, n[1])
				}
			}
		}
		q.selectors = append(q.selectors, sel)
	}
	// A selector of matchers only ({__name__="x"}) names its metric in
	// __name__; the dashboard has none, and a query with one is refused.
	for _, m := range matchers.FindAllStringSubmatchIndex(expr, -1) {
		if before := strings.TrimRight(expr[:m[0]], " \t\n"); before == "" || strings.HasSuffix(before, "(") || strings.HasSuffix(before, ",") {
			q.selectors = append(q.selectors, selector{metric: "{" + expr[m[2]:m[3]] + "}"})
		}
	}
	return q
}

// inBraces tells whether position i of expr lies between { and }.
func inBraces(expr string, i int) bool {
	return strings.LastIndex(expr[:i], "{") > strings.LastIndex(expr[:i], "}")
}

func TestParseQuery(t *testing.T) {
	for _, c := range []struct {
		expr     string
		want     []selector
		grouping []string
	}{
		{`ebpfnet_policy_revision`, []selector{{metric: "ebpfnet_policy_revision"}}, nil},
		{`sum by (reason, direction) (rate(ebpfnet_drop_count_total{instance=~"$instance", reason="Policy denied"}[$__rate_interval]))`,
			[]selector{{metric: "ebpfnet_drop_count_total", labels: []string{"instance", "reason"}}}, []string{"reason", "direction"}},
		{`histogram_quantile(0.99, sum by (le, call) (rate(x_bucket{a!~"b{c}"}[5m])))`,
			[]selector{{metric: "x_bucket", labels: []string{"a"}}}, []string{"le", "call"}},
		{`a / on (instance) group_left (node) b offset 5m > bool 1e3 or c unless d`,
			[]selector{{metric: "a"}, {metric: "b"}, {metric: "c"}, {metric: "d"}}, []string{"instance", "node"}},
		{`sum(rate(y[1m])) without (pod)`, []selector{{metric: "y"}}, []string{"pod"}},
		{`{__name__="z"}`, []selector{{metric: `{__name__=""}`}}, nil},
		{`max_over_time(w[10m:1m]) * 100`, []selector{{metric: "w"}}, nil},
	} {
		got := parseQuery(c.expr)
		if !reflect.DeepEqual(got.selectors, c.want) || !reflect.DeepEqual(got.grouping, c.grouping) {
			t.Errorf("parseQuery(%s)\n got %+v %q\nwant %+v %q", c.expr, got.selectors, got.grouping, c.want, c.grouping)
		}
	}
}

// dashboardQueries lists every PromQL expression of the dashboard: the
// panels' targets and the query variables (label_values(selector, label)).
func dashboardQueries(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
			Panels json.RawMessage `json:"panels"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []string
	for _, p := range dash.Panels {
		if len(p.Panels) > 0 && string(p.Panels) != "[]" {
			t.Errorf("panel %q: a collapsed row's panels are not checked; keep rows open", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q has a target without a query", p.Title)
				continue
			}
			out = append(out, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		var s string
		if json.Unmarshal(v.Query, &s) != nil {
			if err := json.Unmarshal(v.Query, &q); err != nil {
				t.Fatalf("variable %s: query %s", v.Name, v.Query)
			}
			s = q.Query
		}
		m := labelValues.FindStringSubmatch(s)
		if m == nil {
			t.Errorf("variable %s: %q is not label_values(selector, label)", v.Name, s)
			continue
		}
		out = append(out, m[1])
	}
	return out
}

// exported is every series name the daemon's registry gives, with its
// label names: metrics.New and AddConntrack, as the daemon builds them,
// fed so that every collector reports.
func exported(t *testing.T) map[string]map[string]bool {
	t.Helper()
	m, err := metrics.New(source{})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.AddConntrack(source{}); err != nil {
		t.Fatal(err)
	}
	m.ObserveDockerCall("/NetworkDriver.CreateEndpoint", false, time.Millisecond)
	families, err := m.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]bool{}
	add := func(name string, labels ...string) {
		if out[name] == nil {
			out[name] = map[string]bool{}
		}
		for _, l := range labels {
			out[name][l] = true
		}
	}
	for _, f := range families {
		var labels []string
		for _, mm := range f.GetMetric() {
			for _, l := range mm.GetLabel() {
				labels = append(labels, l.GetName())
			}
		}
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM:
			add(f.GetName()+"_bucket", append(labels, "le")...)
			add(f.GetName()+"_sum", labels...)
			add(f.GetName()+"_count", labels...)
		case dto.MetricType_SUMMARY:
			add(f.GetName(), append(labels, "quantile")...)
			add(f.GetName()+"_sum", labels...)
			add(f.GetName()+"_count", labels...)
		default:
			add(f.GetName(), labels...)
		}
	}
	return out
}

// Prometheus adds these to every series it scrapes.
var targetLabels = map[string]bool{"instance": true, "job": true}

// TestDashboardQueriesNameExportedMetrics: every query of the dashboard
// reads metrics the daemon exports, with label names they carry, and
// groups by labels one of them has; every metric of ours is on the
// dashboard.
func TestDashboardQueriesNameExportedMetrics(t *testing.T) {
	have := exported(t)
	queries := dashboardQueries(t, "ebpfnet.json")
	if len(queries) < 10 {
		t.Fatalf("only %d queries found in the dashboard", len(queries))
	}
	used := map[string]bool{}
	for _, expr := range queries {
		q := parseQuery(expr)
		if len(q.selectors) == 0 {
			t.Errorf("query %q reads no metric", expr)
		}
		known := map[string]bool{}
		for _, s := range q.selectors {
			labels, ok := have[s.metric]
			if !ok {
				t.Errorf("query %q reads %s, which the daemon does not export", expr, s.metric)
				continue
			}
			used[s.metric] = true
			for l := range labels {
				known[l] = true
			}
			for _, l := range s.labels {
				if !labels[l] && !targetLabels[l] {
					t.Errorf("query %q matches %s on label %q, which it does not have", expr, s.metric, l)
				}
			}
		}
		for _, l := range q.grouping {
			if !known[l] && !targetLabels[l] {
				t.Errorf("query %q groups by %q, which none of its metrics has", expr, l)
			}
		}
	}
	var missing []string
	for name := range have {
		if strings.HasPrefix(name, metrics.Namespace+"_") && !used[name] && !strings.HasSuffix(name, "_sum") && !strings.HasSuffix(name, "_count") {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("metrics of ours that no panel shows: %v", missing)
	}
}

// source reports something for every series the daemon can export.
type source struct{}

func (source) EndpointsByState() map[string]int {
	return map[string]int{metrics.StateReady: 1}
}

func (source) IdentitiesByType() map[string]int {
	return map[string]int{metrics.IdentityReserved: 3}
}

func (source) PolicyRevision() uint64 { return 1 }

func (source) Verdicts() ([]metrics.Verdict, error) {
	return []metrics.Verdict{
		{Kind: metrics.Forward, Direction: "EGRESS", Packets: 1, Bytes: 1},
		{Kind: metrics.Drop, Reason: "Policy denied", Direction: "INGRESS", Packets: 1, Bytes: 1},
		{Kind: metrics.Audit, Direction: "INGRESS", Packets: 1, Bytes: 1},
	}, nil
}

func (source) ConntrackStats() []metrics.ConntrackStats {
	return []metrics.ConntrackStats{
		{Family: "ipv4", MapName: "ebpfnet_ct4", MaxEntries: 65536, Alive: map[string]int{metrics.ConntrackTCP: 1}, Completed: 1},
		{Family: "ipv6", MapName: "ebpfnet_ct6", MaxEntries: 65536, Alive: map[string]int{metrics.ConntrackTCP: 1}, Completed: 1},
	}
}
