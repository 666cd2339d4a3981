package server_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"testing"
	"time"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/client"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
	"github.com/postern/postern/transport/descriptor"
)

// relayLine is a signed descriptor of a relay with key priv, valid from
// issued to expires.
func relayLine(t *testing.T, priv ed25519.PrivateKey, issued, expires time.Time) string {
	t.Helper()
	d := &descriptor.Descriptor{Endpoints: []descriptor.Endpoint{{Transport: "https", Addr: "127.0.0.1:9", Path: "/p", Key: make([]byte, 32)}},
		Issued: issued, Expires: expires}
	line, err := d.Sign(priv)
	if err != nil {
		t.Fatal(err)
	}
	return line
}

// connectWithKey opens a session that believes the relay's key is key.
func connectWithKey(t *testing.T, r *relaytest.Relay, key ed25519.PublicKey) *client.Client {
	t.Helper()
	cc, sc := relaytest.Pipe(t)
	r.Serve(sc, "test")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.New(ctx, cc, client.WithRelayKey(key))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestOwnerSignatureBoundToRelayKey: a signature made for another relay's
// key (what a relay that passed on another relay's challenge would get)
// is refused, and a client that does not know the key signs nothing.
func TestOwnerSignatureBoundToRelayKey(t *testing.T) {
	r := relaytest.New(t, store.Options{}, server.Config{})
	ctx := context.Background()
	mb := relaytest.NewMailbox(t, r.Connect(t), nil)
	otherPub, _, _ := ed25519.GenerateKey(nil)
	wrong := connectWithKey(t, r, otherPub)
	if _, err := wrong.Fetch(ctx, mb.Owner, mb.ID, 0); !errors.Is(err, relay.ErrUnauthorized) {
		t.Fatalf("fetch signed for another relay's key: %v", err)
	}
	cc, sc := relaytest.Pipe(t)
	r.Serve(sc, "test")
	keyless, err := client.New(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	defer keyless.Close()
	if err := keyless.Subscribe(ctx, mb.Owner, mb.ID); !errors.Is(err, client.ErrNoRelayKey) {
		t.Fatalf("subscribe without the relay's key: %v", err)
	}
	if _, err := r.Connect(t).Fetch(ctx, mb.Owner, mb.ID, 0); err != nil {
		t.Fatalf("fetch with the right key: %v", err)
	}
}

// TestRelayAuth: Layer frames are taken only on a session another relay
// authenticated with a valid descriptor and a signature over this
// session's binding; every other attempt is refused CodeUnauthorized and
// leaves the session unauthenticated.
func TestRelayAuth(t *testing.T) {
	r := relaytest.New(t, store.Options{}, server.Config{})
	ctx := context.Background()
	now := time.Now()
	_, entry, _ := ed25519.GenerateKey(nil)
	_, impostor, _ := ed25519.GenerateKey(nil)
	good := relayLine(t, entry, now.Add(-time.Minute), now.Add(time.Hour))
	expired := relayLine(t, entry, now.Add(-2*time.Hour), now.Add(-time.Hour))
	otherPub, _, _ := ed25519.GenerateKey(nil)
	cases := []struct {
		name    string
		line    string
		key     ed25519.PrivateKey
		peerKey ed25519.PublicKey // what the entry relay binds its proof to
		want    error
	}{
		{"valid", good, entry, r.Server.PublicKey(), nil},
		{"key not the descriptor's", good, impostor, r.Server.PublicKey(), relay.ErrUnauthorized},
		{"expired descriptor", expired, entry, r.Server.PublicKey(), relay.ErrUnauthorized},
		{"bound to another relay", good, entry, otherPub, relay.ErrUnauthorized},
		{"not a descriptor", "postern-relay1:AAAA", entry, r.Server.PublicKey(), relay.ErrUnauthorized},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := connectWithKey(t, r, tc.peerKey)
			err := c.AuthenticateRelay(ctx, tc.line, tc.key)
			if !errors.Is(err, tc.want) && !(tc.want == nil && err == nil) {
				t.Fatalf("auth: %v, want %v", err, tc.want)
			}
			// No layer opener: an authenticated link gets Unsupported,
			// anything else Unauthorized.
			want := relay.ErrUnauthorized
			if tc.want == nil {
				want = relay.ErrUnsupported
			}
			if err := c.DeliverLayer(ctx, []byte("layer")); !errors.Is(err, want) {
				t.Fatalf("layer after auth %v: %v, want %v", tc.want, err, want)
			}
		})
	}
}
