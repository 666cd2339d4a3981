package deploy

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// bytesOf reads a size such as 768MiB, 1Gi, 1G or 1g (binary units for
// the i forms, decimal otherwise, as Kubernetes, systemd and Go read them
// closely enough for a ratio check).
func bytesOf(t *testing.T, s string) float64 {
	t.Helper()
	m := regexp.MustCompile(`^([0-9.]+)([KMGT]?)(I?B?)$`).FindStringSubmatch(strings.ToUpper(strings.TrimSpace(s)))
	if m == nil {
		t.Fatalf("size %q", s)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	unit := map[string]float64{"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m[2]]
	return v * unit
}

// checkRatio wants the Go soft limit set at about 90 % of the hard one, as
// the relay sets it itself from a memory limit (cmd/postern/memlimit.go).
func checkRatio(t *testing.T, where, soft, hard string) {
	t.Helper()
	if soft == "" || hard == "" {
		t.Errorf("%s: GOMEMLIMIT (%q) and a memory limit (%q) are both required", where, soft, hard)
		return
	}
	if r := bytesOf(t, soft) / bytesOf(t, hard); r > 0.92 || r < 0.85 {
		t.Errorf("%s: GOMEMLIMIT %s is %.0f %% of the limit %s; keep it near 90 %%", where, soft, 100*r, hard)
	}
}

func checkMemLimit(t *testing.T, c container) {
	soft := ""
	for _, e := range c.Env {
		if e.Name == "GOMEMLIMIT" {
			soft = e.Value
		}
	}
	checkRatio(t, "kubernetes", soft, string(c.Resources.Limits["memory"]))
}

func find(t *testing.T, file, re string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(re).FindSubmatch(b); m != nil {
		return string(m[1])
	}
	return ""
}

// TestMemoryLimits: every way to run a relay sets a hard memory limit and
// the Go runtime's soft limit below it (Docker's image sets only the soft
// one: the hard one is the operator's docker run flag).
func TestMemoryLimits(t *testing.T) {
	checkRatio(t, "systemd", find(t, "postern-relay.service", `(?m)^Environment=GOMEMLIMIT=(\S+)`),
		find(t, "postern-relay.service", `(?m)^MemoryMax=(\S+)`))
	checkRatio(t, "compose", find(t, "docker-compose.yml", `(?m)^\s+GOMEMLIMIT: (\S+)`),
		find(t, "docker-compose.yml", `(?m)^\s+mem_limit: (\S+)`))
	if find(t, "Dockerfile", `(?m)^ENV GOMEMLIMIT=(\S+)`) == "" {
		t.Error("Dockerfile: no GOMEMLIMIT")
	}
}
