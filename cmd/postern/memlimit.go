package main

import (
	"errors"
	"io/fs"
	"math"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// Memory: a relay sets Go's soft memory limit (GOMEMLIMIT) to nine tenths
// of the memory it may use, so the garbage collector works harder before
// the kernel's OOM killer steps in, and it sizes its session cap from the
// same figure. It was three quarters: with 20,000 h3 sessions in 2 GiB the
// runtime needed about 1.65 GB (1.17 GB of heap, 450 MB of goroutine
// stacks), over the 1.5 GiB soft limit, so the collector ran without pause
// (73 % of the relay's CPU samples in gcDrain) and a legitimate client's
// send→deliver p99 was 20–24 ms. At nine tenths (1.8 GiB) the same run held
// 1,790 MiB RSS and that p99 was 2.98 ms (cmd/postern TestScale; README).
// Nine tenths is also the usual advice for GOMEMLIMIT under a container
// limit. The figure is, in order: the config's memory_limit,
// the cgroup's limit (a container or a systemd unit with MemoryMax), or
// the host's memory (MemTotal in /proc/meminfo). An explicit GOMEMLIMIT in
// the environment always wins for the runtime. The host's memory sets
// only the soft limit, not the session cap (which stays defaultMaxSessions
// without a known limit): on a bare host the limit is what turns on the h3
// listener's relief under memory pressure (transport/h3, pressure.go),
// which without one never acted, so connections that each pinned
// megabytes grew until the kernel killed the relay.

// sessionBudget is the memory one session is planned at: an idle session
// measured 100–190 KiB relay side when this was set; on 2026-12-04 it was
// 30–43 KiB of relay RSS over https (64 KiB after 64 KiB of traffic) and
// 86–107 KiB over h3 (README, "Holding many idle sessions"), plus room for
// the data that moves on active ones.
const sessionBudget = 192 << 10

// defaultMaxSessions is the session cap when no memory limit is known.
const defaultMaxSessions = 8192

// cgroupMemoryFiles hold a cgroup's memory limit: v2, then v1.
var cgroupMemoryFiles = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// memoryLimit is the configured limit, else the cgroup's, else 0.
func memoryLimit(configured int64) int64 {
	if configured > 0 {
		return configured
	}
	for _, f := range cgroupMemoryFiles {
		if n, err := readLimit(f); err == nil && n > 0 {
			return n
		}
	}
	return 0
}

// meminfoFile holds the host's memory (a variable for tests).
var meminfoFile = "/proc/meminfo"

// hostMemory is the host's memory in bytes (MemTotal), or 0.
func hostMemory() int64 {
	b, err := os.ReadFile(meminfoFile)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			f := strings.Fields(rest)
			if len(f) == 2 && f[1] == "kB" {
				if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil && kb > 0 && kb < math.MaxInt64/1024 {
					return kb * 1024
				}
			}
			return 0
		}
	}
	return 0
}

// readLimit reads a cgroup limit file; "max" and absurdly large values
// (v1's "no limit" is a page-rounded 2^63) mean no limit, 0.
func readLimit(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n >= math.MaxInt64/2 {
		return 0, err
	}
	return n, nil
}

// applyMemoryLimit sets the runtime's soft limit to 9/10 of limit unless
// GOMEMLIMIT is set, and returns the soft limit in effect (0: none).
func applyMemoryLimit(limit int64, getenv func(string) string) int64 {
	if getenv("GOMEMLIMIT") != "" {
		if cur := debug.SetMemoryLimit(-1); cur != math.MaxInt64 {
			return cur
		}
		return 0
	}
	if limit <= 0 {
		return 0
	}
	soft := limit / 10 * 9
	debug.SetMemoryLimit(soft)
	return soft
}

// maxSessions is the configured cap, else one session per sessionBudget
// of the soft limit (at least 256), else defaultMaxSessions.
func maxSessions(configured int, soft int64) int {
	switch {
	case configured > 0:
		return configured
	case soft > 0:
		return int(max(256, min(soft/sessionBudget, 1<<20)))
	}
	return defaultMaxSessions
}
