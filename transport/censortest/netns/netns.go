// Package netns runs a test inside a fresh Linux network namespace and puts
// a censor in front of it at kernel level: nftables rules (blackhole, RST on
// connect, UDP drop, a per-flow byte-count freeze) and a tc rate limit. It
// is for tests only.
//
// A test calls Run first; Run re-executes the test binary for just that
// test under `ip netns exec` in a namespace of its own (loopback up, nothing
// else), streams its output, fails the test if the child fails and deletes
// the namespace afterwards. Inside the child, Run returns true and the test
// goes on; outside, it returns false and the test returns:
//
//	func TestBlocked(t *testing.T) {
//		if !netns.Run(t) {
//			return
//		}
//		netns.Apply(t, netns.Blackhole("tcp", "127.0.0.2", "127.0.0.1:8443"))
//		...
//	}
//
// Only loopback addresses (127.0.0.0/8) can be named in rules, and Apply
// and Throttle refuse to touch a namespace Run did not create, so a
// mistake cannot firewall the machine the tests run on.
//
// Prerequisites: root (CAP_NET_ADMIN and CAP_SYS_ADMIN), and the ip, nft and
// tc programs (Debian packages iproute2 and nftables). Without them Run
// skips the test, or fails it when CI=true.
package netns

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// envMarker names the environment variable that tells a re-executed test
// binary it runs inside the namespace created for the named test.
const envMarker = "POSTERN_NETNS_TEST"

// nsPrefix starts every namespace this package creates.
const nsPrefix = "postern-"

// Available reports why kernel-level tests cannot run here, or nil.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("kernel-level censor tests need root (network namespaces and nftables); run them as root, as CI does")
	}
	for _, prog := range []string{"ip", "nft", "tc"} {
		if _, err := exec.LookPath(prog); err != nil {
			return fmt.Errorf("kernel-level censor tests need %s on PATH: install iproute2 and nftables (apt-get install iproute2 nftables)", prog)
		}
	}
	return nil
}

// Inside reports whether this process is the re-executed child running
// t inside its namespace.
// t may also be a subtest of that test.
func Inside(t testing.TB) bool {
	m := os.Getenv(envMarker)
	return m != "" && (t.Name() == m || strings.HasPrefix(t.Name(), m+"/"))
}

// Run makes sure t runs inside a fresh network namespace. Inside, it
// returns true. Outside, it runs the test again in a new namespace, reports
// the child's output through t.Log, fails t if the child failed, and
// returns false: the caller must return at once.
//
// Without the prerequisites (see Available) it skips t, or fails it when
// the environment has CI=true.
func Run(t *testing.T) bool {
	t.Helper()
	if Inside(t) {
		return true
	}
	if err := Available(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%v", err)
		}
		t.Skipf("%v", err)
	}
	ns := create(t)
	args := []string{"netns", "exec", ns, os.Args[0], "-test.run", runPattern(t.Name()), "-test.count=1"}
	if testing.Verbose() {
		args = append(args, "-test.v")
	}
	if f := flag.Lookup("test.timeout"); f != nil && f.Value.String() != "0s" {
		args = append(args, "-test.timeout", f.Value.String())
	}
	cmd := exec.Command("ip", args...)
	cmd.Env = append(os.Environ(), envMarker+"="+t.Name())
	cmd.WaitDelay = 10 * time.Second
	if err := stream(t, cmd); err != nil {
		t.Errorf("the test inside network namespace failed (its output is above): %v", err)
	}
	return false
}

// runPattern anchors each element of a (sub)test name for -test.run.
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

// create adds a namespace with loopback up and removes it, and any process
// still in it, when t ends.
func create(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	rand.Read(b)
	ns := nsPrefix + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { remove(t, ns) })
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up in the test namespace: %v: %s", err, out)
	}
	return ns
}

// remove kills what the test left running in ns (each by its pid) and
// deletes ns.
func remove(t *testing.T, ns string) {
	if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
		for _, pid := range strings.Fields(string(out)) {
			exec.Command("kill", "-9", pid).Run()
		}
	}
	if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
		t.Errorf("ip netns del %s: %v: %s (remove it by hand)", ns, err, out)
	}
}

// stream runs cmd and passes each line it prints to t.Log as it comes.
func stream(t *testing.T, cmd *exec.Cmd) error {
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return err
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			t.Log("netns| " + sc.Text())
		}
		io.Copy(io.Discard, pr)
	}()
	err := cmd.Wait()
	pw.Close()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
	}
	return err
}
