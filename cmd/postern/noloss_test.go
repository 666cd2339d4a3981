package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"io"
	"math/big"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/relay"
)

// TestNoLossOnKill: a sender streams envelopes into a real relay process on
// bbolt; the relay is killed with SIGKILL at a random point and restarted;
// every envelope whose send was acknowledged is then delivered exactly once.
func TestNoLossOnKill(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := buildBinary(t)
	dataDir := filepath.Join(t.TempDir(), "relay")
	rp := startRelay(t, bin, dataDir)
	e := &env{stdout: io.Discard, stderr: io.Discard, getenv: func(string) string { return "" }}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	ident, err := envelope.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	_, owner, _ := ed25519.GenerateKey(nil)
	var id [32]byte
	rand.Read(id[:])
	c, err := dialRelay(ctx, e, rp.line)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CreateMailbox(ctx, owner, id, nil); err != nil {
		t.Fatal(err)
	}
	card := ident.Card(id, []string{rp.line}, nil)

	// Senders on several sessions stream numbered envelopes until the relay
	// dies; each records the numbers the relay acknowledged.
	const senders = 4
	const perSender = 2000 // an upper bound: the kill comes much sooner
	var mu sync.Mutex
	acked := map[uint32]bool{}
	var wg sync.WaitGroup
	started := make(chan struct{}, senders*perSender)
	for s := 0; s < senders; s++ {
		sc, err := dialRelay(ctx, e, rp.line)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func(s int) {
			defer wg.Done()
			defer sc.Close()
			for i := 0; i < perSender; i++ {
				n := uint32(s*perSender + i)
				msg := binary.BigEndian.AppendUint32(nil, n)
				env, err := envelope.Seal(card, nil, msg, &envelope.Options{Suite: envelope.SuiteX25519})
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := sc.Send(ctx, env, nil); err != nil {
					return // the relay died
				}
				mu.Lock()
				acked[n] = true
				mu.Unlock()
				started <- struct{}{}
			}
		}(s)
	}
	// Kill after a random number of acknowledged sends, between 50 and 400.
	k, _ := rand.Int(rand.Reader, big.NewInt(350))
	for i := 0; i < 50+int(k.Int64()); i++ {
		select {
		case <-started:
		case <-ctx.Done():
			t.Fatal("senders stalled")
		}
	}
	rp.kill()
	wg.Wait()
	c.Close()
	mu.Lock()
	n := len(acked)
	mu.Unlock()
	t.Logf("killed the relay after %d acknowledged sends", n)

	rp2 := startRelay(t, bin, dataDir)
	c2, err := dialRelay(ctx, e, rp2.line)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	seen := map[uint32]int{}
	for {
		ds, err := c2.Fetch(ctx, owner, id, relay.MaxFetch)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) == 0 {
			break
		}
		for _, d := range ds {
			o, err := envelope.Open(ident, d.Envelope)
			if err != nil {
				t.Fatal(err)
			}
			seen[binary.BigEndian.Uint32(o.Payload)]++
			if _, err := c2.Ack(ctx, owner, id, d.Ref); err != nil {
				t.Fatal(err)
			}
		}
	}
	for num := range acked {
		if seen[num] != 1 {
			t.Errorf("acknowledged envelope %d delivered %d times", num, seen[num])
		}
	}
	for num, cnt := range seen {
		if cnt != 1 {
			t.Errorf("envelope %d delivered %d times", num, cnt)
		}
	}
	t.Logf("%d acknowledged, %d delivered (extra ones were stored but their ack was lost with the relay)", n, len(seen))
}
