package store_test

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"testing"
	"time"

	"github.com/postern/postern/relay/store"
)

func TestExpiryDay(t *testing.T) {
	day := func(d int64) time.Time { return time.Unix(d*24*3600, 0) }
	tests := []struct {
		name string
		now  time.Time
		ttl  time.Duration
		want uint32
	}{
		{"on a boundary", day(100), 24 * time.Hour, 101},
		{"just after a boundary", day(100).Add(time.Second), 24 * time.Hour, 102},
		{"just before a boundary", day(101).Add(-time.Second), 24 * time.Hour, 102},
		{"zero ttl on a boundary", day(100), 0, 100},
		{"seven days", day(20000).Add(12 * time.Hour), store.DefaultTTL, 20008},
		{"before 1970", time.Unix(-10*24*3600, 0), time.Hour, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := store.ExpiryDay(tc.now, tc.ttl); got != tc.want {
				t.Fatalf("ExpiryDay = %d, want %d", got, tc.want)
			}
			// The envelope lives at least ttl and less than ttl plus a day.
			if tc.want > 0 {
				end := day(int64(tc.want))
				if life := end.Sub(tc.now); life < tc.ttl || life >= tc.ttl+24*time.Hour {
					t.Fatalf("lives %v with ttl %v", life, tc.ttl)
				}
			}
		})
	}
}

func TestToday(t *testing.T) {
	for _, tc := range []struct {
		now  time.Time
		want uint32
	}{
		{time.Unix(0, 0), 0},
		{time.Unix(24*3600-1, 0), 0},
		{time.Unix(24*3600, 0), 1},
		{time.Unix(-1, 0), 0},
		{time.Date(2026, 1, 2, 23, 59, 59, 0, time.UTC), 20455},
	} {
		if got := store.Today(tc.now); got != tc.want {
			t.Errorf("Today(%v) = %d, want %d", tc.now, got, tc.want)
		}
	}
	// What expires on a day has expired on that day, not before.
	now := time.Date(2026, 1, 2, 8, 0, 0, 0, time.UTC)
	exp := store.ExpiryDay(now, 3*time.Hour)
	if store.Today(now.Add(3*time.Hour)) >= exp || store.Today(now.Add(16*time.Hour)) != exp {
		t.Fatal("Today and ExpiryDay disagree on when an envelope expires")
	}
}

func TestWithDefaults(t *testing.T) {
	d := store.Options{}.WithDefaults()
	if d.TTL != store.DefaultTTL || d.MaxMailboxEnvelopes != 4096 || d.MaxMailboxBytes != 64<<20 ||
		d.MaxStoreBytes != 1<<30 || d.Retire != 90*24*time.Hour || d.MaxMailboxes != 1_000_000 ||
		d.MaxBatch != 512 || d.Now == nil {
		t.Fatalf("defaults = %+v", d)
	}
	set := store.Options{TTL: time.Hour, MaxMailboxEnvelopes: -1, MaxMailboxBytes: 5, MaxStoreBytes: -1,
		Retire: -1, MaxMailboxes: 3, MaxBatch: 7}.WithDefaults()
	if set.TTL != time.Hour || set.MaxMailboxEnvelopes != -1 || set.MaxMailboxBytes != 5 || set.MaxStoreBytes != -1 ||
		set.Retire != -1 || set.MaxMailboxes != 3 || set.MaxBatch != 7 {
		t.Fatalf("WithDefaults changed set fields: %+v", set)
	}
}

func TestQuotas(t *testing.T) {
	o := store.Options{MaxMailboxEnvelopes: 2, MaxMailboxBytes: 100, MaxStoreBytes: 1000, MaxMailboxes: 2}
	tests := []struct {
		name               string
		count              int
		boxBytes, allBytes int64
		n                  int
		want               error
	}{
		{"fits", 1, 50, 500, 50, nil},
		{"count", 2, 0, 0, 1, store.ErrMailboxFull},
		{"mailbox bytes", 0, 50, 50, 51, store.ErrMailboxFull},
		{"store bytes", 0, 0, 950, 51, store.ErrStoreFull},
		{"store bytes exactly", 0, 0, 950, 50, nil},
	}
	for _, tc := range tests {
		if err := o.EnvelopeQuota(tc.count, tc.boxBytes, tc.allBytes, tc.n); !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("%s: EnvelopeQuota = %v, want %v", tc.name, err, tc.want)
		}
	}
	none := store.Options{MaxMailboxEnvelopes: -1, MaxMailboxBytes: -1, MaxStoreBytes: -1, MaxMailboxes: -1}
	if err := none.EnvelopeQuota(1<<30, 1<<40, 1<<50, store.MaxEnvelopeSize); err != nil {
		t.Errorf("unlimited EnvelopeQuota = %v", err)
	}
	if err := o.MailboxQuota(1); err != nil {
		t.Errorf("MailboxQuota(1) of 2 = %v", err)
	}
	if err := o.MailboxQuota(2); !errors.Is(err, store.ErrStoreFull) {
		t.Errorf("MailboxQuota(2) of 2 = %v, want ErrStoreFull", err)
	}
	if err := none.MailboxQuota(1 << 30); err != nil {
		t.Errorf("unlimited MailboxQuota = %v", err)
	}
}

func TestRetiredUntil(t *testing.T) {
	now := time.Date(2026, 1, 2, 8, 0, 0, 0, time.UTC)
	day, ok := store.Options{Retire: 48 * time.Hour}.RetiredUntil(now)
	if !ok || day != store.ExpiryDay(now, 48*time.Hour) {
		t.Fatalf("RetiredUntil = %d, %v", day, ok)
	}
	if _, ok := (store.Options{Retire: -1}).RetiredUntil(now); ok {
		t.Fatal("Retire < 0 still retires ids")
	}
}

func TestValidate(t *testing.T) {
	owner := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)).Public().(ed25519.PublicKey)
	for _, tc := range []struct {
		name    string
		owner   ed25519.PublicKey
		sendCap []byte
		ok      bool
	}{
		{"no send capability", owner, nil, true},
		{"largest send capability", owner, bytes.Repeat([]byte{1}, store.MaxSendCapSize), true},
		{"send capability too large", owner, bytes.Repeat([]byte{1}, store.MaxSendCapSize+1), false},
		{"no owner", nil, nil, false},
		{"short owner", owner[:31], nil, false},
	} {
		if err := store.ValidateMailbox(tc.owner, tc.sendCap); (err == nil) != tc.ok || (err != nil && !errors.Is(err, store.ErrInvalid)) {
			t.Errorf("%s: ValidateMailbox = %v", tc.name, err)
		}
	}
	for _, tc := range []struct {
		size int
		ok   bool
	}{{0, false}, {1, true}, {store.MaxEnvelopeSize, true}, {store.MaxEnvelopeSize + 1, false}} {
		if err := store.ValidateEnvelope(make([]byte, tc.size)); (err == nil) != tc.ok || (err != nil && !errors.Is(err, store.ErrInvalid)) {
			t.Errorf("ValidateEnvelope(%d bytes) = %v", tc.size, err)
		}
	}
}
