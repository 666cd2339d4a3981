package deploy

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// relayMetrics and probeMetrics are the metric names the relay and
// `postern probe --listen` export (metrics/metrics.go); histograms are
// marked so that their _bucket, _sum and _count series are known too.
var (
	relayMetrics = map[string]bool{ // name: is a histogram
		"postern_build_info":                          false,
		"postern_handshakes_total":                    false,
		"postern_sessions_total":                      false,
		"postern_sessions_active":                     false,
		"postern_envelopes_accepted_total":            false,
		"postern_envelopes_delivered_total":           false,
		"postern_envelopes_expired_total":             false,
		"postern_envelopes_rejected_total":            false,
		"postern_send_duration_seconds":               true,
		"postern_store_mailboxes":                     false,
		"postern_store_envelopes":                     false,
		"postern_store_bytes":                         false,
		"postern_store_quota_bytes":                   false,
		"postern_descriptor_expiry_timestamp_seconds": false,
		"postern_forwards_total":                      false,
		"postern_links_up":                            false,
		"postern_forward_queue_items":                 false,
		"postern_forward_queue_bytes":                 false,
		"postern_store_disk_full":                     false,
		"postern_store_commit_duration_seconds":       true,
		"postern_store_commit_writes":                 true,
		"postern_store_syncs_total":                   false,
		"postern_mailbox_ops_refused_total":           false,
	}
	probeMetrics = map[string]bool{
		"postern_probe_success":          false,
		"postern_probe_duration_seconds": false,
		"postern_probe_failures_total":   false,
	}
	// The standard Go and process collectors' metrics that the rules and
	// the dashboard use, and Prometheus' own up.
	standardMetrics = map[string]bool{
		"up":                            false,
		"go_goroutines":                 false,
		"process_cpu_seconds_total":     false,
		"process_open_fds":              false,
		"process_resident_memory_bytes": false,
		"process_start_time_seconds":    false,
	}
)

// knownSeries reports whether name is a series some Postern exporter (or
// Prometheus) produces.
func knownSeries(name string) bool {
	for _, set := range []map[string]bool{relayMetrics, probeMetrics, standardMetrics} {
		if _, ok := set[name]; ok {
			return true
		}
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suffix); ok && set[base] {
				return true
			}
		}
	}
	return false
}

// promqlKeywords are the PromQL words that are not metric names when they
// are not followed by "(".
var promqlKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true,
	"by": true, "without": true, "on": true, "ignoring": true,
	"group_left": true, "group_right": true, "inf": true, "nan": true, "atan2": true,
}

// promqlGroupingWords take a parenthesised label list, not an expression.
var promqlGroupingWords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// promqlAggregators may put their by or without clause before the
// parenthesised expression.
var promqlAggregators = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
}

// metricNames returns the metric names an expression selects. It is a lexer,
// not a parser (promtool checks the syntax of the rules): it skips string
// literals, label matchers in {…}, range and subquery durations in […],
// numbers, keywords, function names and grouping label lists, and returns
// every other identifier.
func metricNames(expr string) ([]string, error) {
	var names []string
	isIdentStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isIdent := func(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }
	skipSpace := func(i int) int {
		for i < len(expr) && strings.ContainsRune(" \t\r\n", rune(expr[i])) {
			i++
		}
		return i
	}
	// skipTo returns the index after the closing byte, honouring strings.
	skipTo := func(i int, close byte) (int, error) {
		for ; i < len(expr); i++ {
			switch expr[i] {
			case close:
				return i + 1, nil
			case '"', '\'', '`':
				q := expr[i]
				for i++; i < len(expr) && expr[i] != q; i++ {
					if expr[i] == '\\' && q != '`' {
						i++
					}
				}
			}
		}
		return 0, fmt.Errorf("unterminated %q in %q", close, expr)
	}
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			j, err := skipTo(i+1, c)
			if err != nil {
				return nil, err
			}
			i = j
		case c == '{':
			j, err := skipTo(i+1, '}')
			if err != nil {
				return nil, err
			}
			i = j
		case c == '[':
			j, err := skipTo(i+1, ']')
			if err != nil {
				return nil, err
			}
			i = j
		case c == '#':
			for i < len(expr) && expr[i] != '\n' {
				i++
			}
		case c >= '0' && c <= '9' || c == '.':
			for i < len(expr) && (isIdent(expr[i]) || expr[i] == '.') {
				i++
			}
		case c == '$':
			return nil, fmt.Errorf("Grafana variable outside a label matcher or range in %q", expr)
		case isIdentStart(c):
			j := i
			for j < len(expr) && isIdent(expr[j]) {
				j++
			}
			word := expr[i:j]
			k := skipSpace(j)
			switch {
			case promqlGroupingWords[word] && k < len(expr) && expr[k] == '(':
				end, err := skipTo(k+1, ')')
				if err != nil {
					return nil, err
				}
				j = end
			case k < len(expr) && expr[k] == '(':
				// a function or aggregation
			case promqlAggregators[word] && (strings.HasPrefix(expr[k:], "by") || strings.HasPrefix(expr[k:], "without")):
				// an aggregation with its grouping first
			case promqlKeywords[strings.ToLower(word)]:
			default:
				names = append(names, word)
			}
			i = j
		default:
			i++
		}
	}
	return names, nil
}

func TestMetricNamesLexer(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`up == 0`, []string{"up"}},
		{`sum by (instance, le) (rate(a_bucket{x="b{c}", y=~"d|e"}[5m] offset 1h))`, []string{"a_bucket"}},
		{`a / on (job) group_left () (b + c) > bool 0.5`, []string{"a", "b", "c"}},
		{`histogram_quantile(0.99, sum without (pod) (rate(x[$__rate_interval])))`, []string{"x"}},
		{`max(a{i=~"$instance"}) by (relay) and ignoring(x) b unless c or d`, []string{"a", "b", "c", "d"}},
		{`count(x) * 1e3 + 0x1f`, []string{"x"}},
		{"sum by (a) (x)\n/ on (a) group_left ()\ncount without (b) (y)", []string{"x", "y"}},
		{`sum(by)`, []string{}},
		{`label_replace(x, "dst", "$1", "src", "(.*)")`, []string{"x"}},
	} {
		got, err := metricNames(tc.expr)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("metricNames(%q) = %v, %v; want %v", tc.expr, got, err, tc.want)
		}
	}
	for _, bad := range []string{`sum(x{a="b"`, `rate(x[5m)`, `x * $factor`} {
		if got, err := metricNames(bad); err == nil {
			t.Errorf("metricNames(%q) = %v, want an error", bad, got)
		}
	}
	if knownSeries("postern_sessions_active_bucket") || !knownSeries("postern_send_duration_seconds_bucket") ||
		knownSeries("postern_session_active") || !knownSeries("up") {
		t.Error("knownSeries accepts an unknown series or refuses a known one")
	}
}

// checkExprs fails the test for every metric name an expression uses that no
// exporter produces, and returns the names used.
func checkExprs(t *testing.T, where string, exprs []string) map[string]bool {
	t.Helper()
	used := map[string]bool{}
	for _, e := range exprs {
		names, err := metricNames(e)
		if err != nil {
			t.Errorf("%s: %v", where, err)
			continue
		}
		if len(names) == 0 {
			t.Errorf("%s: expression %q selects no metric", where, e)
		}
		for _, n := range names {
			if !knownSeries(n) {
				t.Errorf("%s: unknown metric %q in %q", where, n, e)
			}
			used[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")] = true
		}
	}
	return used
}

func TestAlertExpressionsUseKnownMetrics(t *testing.T) {
	rf := loadRules(t)
	var exprs []string
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			exprs = append(exprs, r.Expr)
		}
	}
	used := checkExprs(t, "alerts.yml", exprs)
	for _, want := range []string{"up", "postern_handshakes_total", "postern_probe_success",
		"postern_store_bytes", "postern_store_quota_bytes", "postern_send_duration_seconds", "postern_sessions_active"} {
		if !used[want] {
			t.Errorf("no alert uses %s", want)
		}
	}
}

// grafanaDashboard mirrors the parts of the dashboard model the tests read.
type grafanaDashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []grafanaPanel `json:"panels"`
}

type grafanaPanel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"`
}

func loadDashboard(t *testing.T) grafanaDashboard {
	t.Helper()
	var d grafanaDashboard
	if err := json.Unmarshal(readFile(t, "grafana/dashboards/postern.json"), &d); err != nil {
		t.Fatalf("postern.json: %v", err)
	}
	return d
}

var labelValues = regexp.MustCompile(`^label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*),\s*[a-zA-Z_][a-zA-Z0-9_]*\)$`)

// TestDashboard checks that the dashboard is valid JSON, that every query
// uses known metrics, that it shows what operators need, and that panels
// have unique ids and do not overlap.
func TestDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard needs a uid and a title")
	}
	var exprs []string
	ids := map[int]bool{}
	type cell struct{ x, y int }
	filled := map[cell]string{}
	var walk func([]grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			if ids[p.ID] {
				t.Errorf("panel id %d used twice", p.ID)
			}
			ids[p.ID] = true
			if p.GridPos.X+p.GridPos.W > 24 || p.GridPos.W <= 0 || p.GridPos.H <= 0 {
				t.Errorf("panel %q: bad gridPos %+v", p.Title, p.GridPos)
			}
			for x := p.GridPos.X; x < p.GridPos.X+p.GridPos.W; x++ {
				for y := p.GridPos.Y; y < p.GridPos.Y+p.GridPos.H; y++ {
					if other, ok := filled[cell{x, y}]; ok {
						t.Errorf("panel %q overlaps %q", p.Title, other)
						return
					}
					filled[cell{x, y}] = p.Title
				}
			}
			if p.Type != "row" {
				if len(p.Targets) == 0 {
					t.Errorf("panel %q has no query", p.Title)
				}
				if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
					t.Errorf("panel %q does not use the $datasource variable", p.Title)
				}
			}
			for _, tg := range p.Targets {
				exprs = append(exprs, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	used := checkExprs(t, "postern.json", exprs)

	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Errorf("variable %s: query: %v", v.Name, err)
			continue
		}
		m := labelValues.FindStringSubmatch(q.Query)
		if m == nil || !knownSeries(m[1]) {
			t.Errorf("variable %s: query %q is not label_values over a known metric", v.Name, q.Query)
		}
	}

	// What DESIGN.md says an operator needs to see.
	for _, want := range []string{
		"postern_handshakes_total", "postern_sessions_active", "postern_sessions_total",
		"postern_envelopes_accepted_total", "postern_envelopes_delivered_total",
		"postern_envelopes_expired_total", "postern_envelopes_rejected_total",
		"postern_store_bytes", "postern_store_quota_bytes", "postern_store_mailboxes", "postern_store_envelopes",
		"postern_store_commit_duration_seconds", "postern_store_commit_writes",
		"postern_send_duration_seconds", "postern_probe_success", "postern_probe_duration_seconds",
		"postern_probe_failures_total", "postern_build_info",
	} {
		if !used[want] {
			t.Errorf("the dashboard shows nothing of %s", want)
		}
	}
}
