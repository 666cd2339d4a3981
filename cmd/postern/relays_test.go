package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/transport/descriptor"
)

// testDescriptor signs a descriptor for a new relay key, expiring after d.
func testDescriptor(t *testing.T, priv ed25519.PrivateKey, d time.Duration) string {
	t.Helper()
	desc := &descriptor.Descriptor{
		Endpoints: []descriptor.Endpoint{{Transport: "https", Addr: "127.0.0.1:9", Path: "/p", Key: make([]byte, 32), CertSHA256: make([]byte, 32)}},
		Issued:    time.Now().Add(-time.Minute).Truncate(time.Second),
		Expires:   time.Now().Add(d).Truncate(time.Second),
	}
	line, err := desc.Sign(priv)
	if err != nil {
		t.Fatal(err)
	}
	return line
}

// runRelaysCmd runs one of `postern relays ...` in-process.
func runRelaysCmd(t *testing.T, e *env, name string, args ...string) error {
	for _, c := range relaysCmds() {
		if c.name == name {
			return c.setup(flag.NewFlagSet(name, flag.ContinueOnError), e)(context.Background(), args)
		}
	}
	t.Fatalf("no command %q", name)
	return nil
}

// TestKnownRelays: add keeps one line per relay (the one that expires
// last), list shows ids, remove drops by id, and the home relay is never
// its own entry relay.
func TestKnownRelays(t *testing.T) {
	home := t.TempDir()
	var out bytes.Buffer
	e := &env{stdout: &out, stderr: &out, getenv: func(k string) string {
		if k == "POSTERN_HOME" {
			return home
		}
		return ""
	}}
	_, ka, _ := ed25519.GenerateKey(nil)
	_, kb, _ := ed25519.GenerateKey(nil)
	a1, a2, b := testDescriptor(t, ka, time.Hour), testDescriptor(t, ka, 2*time.Hour), testDescriptor(t, kb, time.Hour)
	file := filepath.Join(home, "a.desc")
	os.WriteFile(file, []byte(a2+"\n"), 0o600)
	for _, args := range [][]string{{a1}, {b}, {file}, {a1}} {
		if err := runRelaysCmd(t, e, "relays add", args...); err != nil {
			t.Fatal(err)
		}
	}
	if got := knownRelays(e); len(got) != 2 || got[0] != a2 || got[1] != b {
		t.Fatalf("known relays: %q", got)
	}
	if st, _ := os.Stat(relaysFile(e)); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
	if got := entryRelays(e, []string{b}); len(got) != 1 || got[0] != a2 {
		t.Fatalf("entry relays for home b: %q", got)
	}
	if err := runRelaysCmd(t, e, "relays add", "not a descriptor"); err == nil {
		t.Fatal("a bad descriptor was added")
	}
	runRelaysCmd(t, e, "relays list")
	idA := parsedOrZero(a1).RelayID()
	if !strings.Contains(out.String(), idA+" "+a2) {
		t.Fatalf("list: %s", out.String())
	}
	if err := runRelaysCmd(t, e, "relays remove", idA); err != nil {
		t.Fatal(err)
	}
	if err := runRelaysCmd(t, e, "relays remove", idA); err == nil {
		t.Fatal("removing an unknown relay succeeded")
	}
	if got := knownRelays(e); len(got) != 1 || got[0] != b {
		t.Fatalf("after remove: %q", got)
	}
}
