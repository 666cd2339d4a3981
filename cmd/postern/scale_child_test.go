package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Helpers of TestScale (scale_test.go): the profiling relay child, file
// descriptor limits, /proc figures, source addresses and percentiles.

// scaleChildEnv, when set in the environment of this test binary, makes it
// run as `postern` itself (args as the real binary takes them) instead of
// running tests; SIGUSR1 then writes a heap profile to the file the
// variable names, and SIGUSR2 starts and stops a CPU profile beside it. TestScale uses it with POSTERN_SCALE_PROFILE, since the
// relay serves no /debug/pprof.
const scaleChildEnv = "POSTERN_SCALE_RELAY_CHILD"

func init() {
	if spec := os.Getenv(scaleWorkerEnv); spec != "" {
		os.Exit(scaleWorkerMain(spec))
	}
	path := os.Getenv(scaleChildEnv)
	if path == "" {
		return
	}
	if r, err := strconv.Atoi(os.Getenv("POSTERN_SCALE_MEMPROFILERATE")); err == nil && r > 0 {
		runtime.MemProfileRate = r
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		for range usr1 {
			if err := writeHeapProfile(path); err != nil {
				fmt.Fprintf(os.Stderr, "scale child: heap profile: %v\n", err)
			}
		}
	}()
	// SIGUSR2 starts a CPU profile into path's cpuProfilePath, the next one
	// stops it.
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	go func() {
		var f *os.File
		for range usr2 {
			if f != nil {
				pprof.StopCPUProfile()
				f.Close()
				os.Rename(f.Name(), cpuProfilePath(path))
				f = nil
				continue
			}
			var err error
			if f, err = os.Create(cpuProfilePath(path) + ".tmp"); err == nil {
				err = pprof.StartCPUProfile(f)
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, "scale child: CPU profile: %v\n", err)
				f = nil
			}
		}
	}()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], &env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv})
	stop()
	os.Exit(code)
}

// cpuProfilePath is where the profiling relay child writes its CPU
// profile, beside its heap profile heapPath.
func cpuProfilePath(heapPath string) string {
	return strings.Replace(heapPath, "relay-heap-", "relay-cpu-", 1)
}

// writeHeapProfile collects garbage (so the profile shows what is live
// now) and writes the heap profile to path through a temporary file, so a
// reader never sees half of one.
func writeHeapProfile(path string) error {
	runtime.GC()
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// raiseNofile lifts RLIMIT_NOFILE to at least need (the relay child
// inherits it): the hard limit too where this process may (root), else
// the soft limit up to the hard one. It returns the soft limit in effect.
func raiseNofile(need uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Max < need {
		up := syscall.Rlimit{Cur: need, Max: need}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &up); err == nil {
			return need, nil
		}
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	return lim.Cur, nil
}

// procMem is a process's resident set now and at its peak (VmRSS, VmHWM).
type procMem struct{ rss, hwm int64 }

func readProcMem(pid int) (procMem, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procMem{}, err
	}
	var m procMem
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			m.rss = kb << 10
		case "VmHWM:":
			m.hwm = kb << 10
		}
	}
	if m.rss == 0 {
		return m, errors.New("no VmRSS in /proc status")
	}
	return m, nil
}

// sourceAddr is the i-th loopback source address for load sessions:
// 127.0.0.2 onward, skipping .0 and .255 in the last octet. 127.0.0.1 is
// left to the legitimate client.
func sourceAddr(i int) string {
	k := i + 1 // 127.0.0.1 is k = 0
	v := uint32(127<<24) | uint32(k/254)<<8 | uint32(k%254+1)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}).String()
}

// udpRcvbufErrors is the host's count of UDP datagrams dropped for a full
// receive buffer (/proc/net/snmp), or -1. It counts every process.
func udpRcvbufErrors() int64 {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return -1
	}
	var names []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, name := range names {
			if name == "RcvbufErrors" && i < len(f) {
				n, _ := strconv.ParseInt(f[i], 10, 64)
				return n
			}
		}
	}
	return -1
}

// latencies summarises round-trip times.
type latencies struct {
	n             int
	p50, p99, max time.Duration
}

func summarize(d []time.Duration) latencies {
	if len(d) == 0 {
		return latencies{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	at := func(q float64) time.Duration {
		i := int(math.Ceil(q*float64(len(s)))) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return latencies{n: len(s), p50: at(0.50), p99: at(0.99), max: s[len(s)-1]}
}

func (l latencies) String() string {
	r := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d.Microseconds())/1000) }
	return fmt.Sprintf("p50 %s / p99 %s / max %s ms (n=%d)", r(l.p50), r(l.p99), r(l.max), l.n)
}

// envInt reads a positive integer variable, else def.
func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// envDuration reads a Go duration variable, else def.
func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return d
	}
	return def
}
