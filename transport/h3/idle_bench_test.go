package h3

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/transporttest"
)

// Idle sessions on the relay side: the clients run in a child process (this
// test binary, TestIdleClients), so the heap and the goroutine stacks
// measured here are the relay's alone.
const (
	envIdleAddr = "POSTERN_H3_IDLE_ADDR"
	envIdlePin  = "POSTERN_H3_IDLE_PIN"
	envIdleN    = "POSTERN_H3_IDLE_N"
	idleN       = 200
)

// BenchmarkIdleRelaySession holds idleN idle sessions (one QUIC connection
// each, as clients dial them) and reports what the relay holds per session:
//
//	heap-B/session     live heap (HeapInuse after GC)
//	stack-B/session    goroutine stacks (StackInuse), the application's
//	                   one reader goroutine per session included
//	goroutines/session
//	quic-go-B/session, postern-B/session, other-B/session
//	                   live heap by the package that allocated it (the
//	                   innermost non-standard-library frame): quic-go and
//	                   its http3 and qpack, Postern, or the standard
//	                   library alone (crypto/tls state, buffers, contexts)
func BenchmarkIdleRelaySession(b *testing.B) {
	runtime.MemProfileRate = 64 // fine-grained attribution; only this benchmark
	defer func() { runtime.MemProfileRate = 512 * 1024 }()
	r := startRelay(b, nil, func(cfg *transport.ListenConfig) { cfg.MaxSessionsPerSource = 2 * idleN })
	held := make(chan transport.Conn, idleN)
	go func() {
		for {
			c, err := r.ln.Accept(context.Background())
			if err != nil {
				return
			}
			held <- c
			go func() { // the application's reader, as a relay has one
				var one [1]byte
				c.Read(one[:])
			}()
		}
	}()
	var heap, stack, gor float64
	var client []float64
	var byPkg map[string]float64
	for b.Loop() {
		before := relayMem()
		child, cl := startIdleClients(b, r.ep)
		client = cl
		for range idleN {
			<-held
		}
		after := relayMem()
		heap = float64(after.heap-before.heap) / idleN
		stack = float64(after.stack-before.stack) / idleN
		gor = float64(after.goroutines-before.goroutines) / idleN
		byPkg = map[string]float64{}
		for k, v := range after.byPkg {
			byPkg[k] = float64(v-before.byPkg[k]) / idleN
		}
		child()
	}
	b.ReportMetric(heap, "heap-B/session")
	b.ReportMetric(stack, "stack-B/session")
	b.ReportMetric(gor, "goroutines/session")
	b.ReportMetric(client[0], "client-heap-B/session")
	b.ReportMetric(client[1], "client-stack-B/session")
	for k, v := range byPkg {
		b.ReportMetric(v, k+"-B/session")
	}
}

type memSnapshot struct {
	heap, stack uint64
	goroutines  int
	byPkg       map[string]int64
}

func relayMem() memSnapshot {
	for range 3 {
		runtime.GC()
	}
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return memSnapshot{heap: m.HeapInuse, stack: m.StackInuse, goroutines: runtime.NumGoroutine(), byPkg: heapByPackage()}
}

// heapByPackage sums the live heap by the package that allocated it.
func heapByPackage() map[string]int64 {
	out := map[string]int64{"quic-go": 0, "postern": 0, "other": 0}
	for _, r := range transporttest.MemProfile() {
		out[allocOwner(r.Stack())] += r.InUseBytes()
	}
	return out
}

func allocOwner(stk []uintptr) string {
	frames := runtime.CallersFrames(stk)
	for {
		f, more := frames.Next()
		switch {
		case strings.HasPrefix(f.Function, "github.com/quic-go/"):
			return "quic-go"
		case strings.HasPrefix(f.Function, "github.com/postern/"):
			return "postern"
		}
		if !more {
			return "other"
		}
	}
}

// startIdleClients starts the child process, waits until it holds idleN
// sessions and returns the function that ends it, and the heap and stack
// bytes per session the child measured on its side.
func startIdleClients(b *testing.B, ep transport.Endpoint) (func(), []float64) {
	var heap, stack float64
	stop := startChild(b, "TestIdleClients", []string{envIdleAddr + "=" + ep.Addr, envIdlePin + "=" + hex.EncodeToString(ep.CertSHA256), envIdleN + "=" + strconv.Itoa(idleN)},
		func(line string) error {
			_, err := fmt.Sscanf(line, "ready %g %g\n", &heap, &stack)
			return err
		})
	return stop, []float64{heap, stack}
}

// startChild runs this test binary's test as a child process with env
// added, waits for its first line on stdout and hands it to ready, and
// returns the function that closes its stdin and waits for its end. A
// child that fails before it, or a line ready rejects, fails b.
func startChild(b *testing.B, test string, env []string, ready func(line string) error) func() {
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err == nil {
		err = ready(line)
	}
	if err != nil {
		rest, _ := io.ReadAll(stdout)
		cmd.Process.Kill()
		cmd.Wait()
		b.Fatalf("%s: %q, %v", test, line+string(rest), err)
	}
	return func() {
		stdin.Close()
		cmd.Wait()
	}
}

// TestIdleClients is the child process of BenchmarkIdleRelaySession: it
// dials the sessions, says "ready" with the heap and stack bytes per
// session on its side, and holds them until stdin closes.
func TestIdleClients(t *testing.T) {
	addr := os.Getenv(envIdleAddr)
	if addr == "" {
		t.Skip("the client process of BenchmarkIdleRelaySession")
	}
	pin, _ := hex.DecodeString(os.Getenv(envIdlePin))
	n, _ := strconv.Atoi(os.Getenv(envIdleN))
	ep := transport.Endpoint{Transport: Name, Addr: addr, SNI: testSNI, Path: testPath, Key: testKey, CertSHA256: pin}
	before := relayMem()
	var conns []transport.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		c, err := New().Dial(ctx, ep)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	after := relayMem()
	fmt.Printf("ready %d %d\n", (after.heap-before.heap)/uint64(n), (after.stack-before.stack)/uint64(n))
	io.Copy(io.Discard, os.Stdin)
}
