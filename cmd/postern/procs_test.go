package main

import (
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
)

// TestApplyProcs: a durable store adds boltstore.ExtraProcs to the
// runtime's default; the memory store and an explicit GOMAXPROCS keep
// what the runtime has.
func TestApplyProcs(t *testing.T) {
	def := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(def) })
	none := func(string) string { return "" }
	if got := applyProcs(false, none); got != def || runtime.GOMAXPROCS(0) != def {
		t.Fatalf("memory store: applyProcs = %d, GOMAXPROCS %d, want %d", got, runtime.GOMAXPROCS(0), def)
	}
	set := func(k string) string {
		if k == "GOMAXPROCS" {
			return "5"
		}
		return ""
	}
	if got := applyProcs(true, set); got != def || runtime.GOMAXPROCS(0) != def {
		t.Fatalf("GOMAXPROCS set: applyProcs = %d, GOMAXPROCS %d, want %d untouched", got, runtime.GOMAXPROCS(0), def)
	}
	// Values the runtime ignores do not stop the rule.
	for _, v := range []string{"0", "-1", "two"} {
		bad := func(k string) string {
			if k == "GOMAXPROCS" {
				return v
			}
			return ""
		}
		if got := applyProcs(true, bad); got != def+1 {
			t.Fatalf("GOMAXPROCS=%q (ignored by the runtime): applyProcs = %d, want %d", v, got, def+1)
		}
		runtime.GOMAXPROCS(def)
	}
	if got := applyProcs(true, none); got != def+1 || runtime.GOMAXPROCS(0) != def+1 {
		t.Fatalf("durable store: applyProcs = %d, GOMAXPROCS %d, want %d", got, runtime.GOMAXPROCS(0), def+1)
	}
}

// TestRelayProcs: a real relay process exposes the GOMAXPROCS it chose:
// with the durable store, one more than a --dev (memory) relay started the
// same way, which keeps the runtime's default. (The test binary's own
// GOMAXPROCS is no reference: go test -cpu changes it.)
func TestRelayProcs(t *testing.T) {
	extra := 1.0
	if n, err := strconv.Atoi(os.Getenv("GOMAXPROCS")); err == nil && n > 0 {
		extra = 0
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	procs := func(name string, args ...string) float64 {
		rp := startRelay(t, bin, filepath.Join(dir, name), args...)
		defer rp.stop()
		got, _ := scrape(t, metricsAddr(t, rp))
		v, ok := got["go_sched_gomaxprocs_threads"]
		if !ok || v < 1 {
			t.Fatalf("%s relay: no go_sched_gomaxprocs_threads in its metrics", name)
		}
		return v
	}
	memory := procs("memory", "--dev")
	if durable := procs("durable"); durable != memory+extra {
		t.Errorf("go_sched_gomaxprocs_threads: durable relay %v, memory relay %v; want %v more", durable, memory, extra)
	}
}
