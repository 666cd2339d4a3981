package route_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/route"
)

// TestDialRecordsFailureClass: every failed attempt puts its recipe in
// backoff with its class; the next dial tries it last.
func TestDialRecordsFailureClass(t *testing.T) {
	reg, cands, fakes := setup(t, "refuse", "ok")
	mem, _ := route.OpenMemory("", 0)
	s, _, err := route.Dial(context.Background(), reg, cands, route.Options{Stagger: -1, Memory: mem, Network: "n"}, handshake)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if until, class := mem.Backoff("n", cands[0]); until.IsZero() || class != transport.ClassRefused {
		t.Fatalf("refused candidate: backoff until %v, class %v", until, class)
	}
	if until, _ := mem.Backoff("n", cands[1]); !until.IsZero() {
		t.Fatal("the winner is in backoff")
	}
	if until, _ := mem.Backoff("other", cands[0]); !until.IsZero() {
		t.Fatal("backoff leaked to another network")
	}
	s, _, err = route.Dial(context.Background(), reg, cands, route.Options{Stagger: -1, Memory: mem, Network: "n"}, handshake)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if fakes[0].dials.Load() != 1 {
		t.Fatalf("the refused recipe was dialed %d times; in backoff it goes last", fakes[0].dials.Load())
	}
}

// TestDialOnlyWayInBackoff: a recipe in backoff is still tried when it is
// the only one.
func TestDialOnlyWayInBackoff(t *testing.T) {
	reg, cands, fakes := setup(t, "ok")
	mem, _ := route.OpenMemory("", 0)
	mem.Failure("n", cands[0], transport.ClassTimeout)
	s, _, err := route.Dial(context.Background(), reg, cands, route.Options{Memory: mem, Network: "n"}, handshake)
	if err != nil || fakes[0].dials.Load() != 1 {
		t.Fatalf("err %v, dials %d", err, fakes[0].dials.Load())
	}
	s.Close()
}

// TestDialScaledTimeouts: with a handshake time known to the memory, an
// attempt's budget and head start scale with it; unknown, they are the
// defaults. synctest's clock makes the times exact.
func TestDialScaledTimeouts(t *testing.T) {
	cases := []struct {
		name             string
		rtt              time.Duration // 0: unknown
		perAttempt       time.Duration
		staggerLo, hiExc time.Duration // the head start, ±20 % jitter
	}{
		{"unknown", 0, route.DefaultPerAttempt, route.DefaultStagger * 4 / 5, route.DefaultStagger * 6 / 5},
		{"fast path", 10 * time.Millisecond, route.MinPerAttempt, route.MinStagger * 4 / 5, route.MinStagger * 6 / 5},
		{"slow path", 500 * time.Millisecond, 5 * time.Second, route.DefaultStagger * 4 / 5, route.DefaultStagger * 6 / 5},
		{"very slow path", 3 * time.Second, route.DefaultPerAttempt, route.DefaultStagger * 4 / 5, route.DefaultStagger * 6 / 5},
		{"middle", 120 * time.Millisecond, 1960 * time.Millisecond, 180 * time.Millisecond * 4 / 5, 180 * time.Millisecond * 6 / 5},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				if tc.perAttempt < route.MinPerAttempt {
					tc.perAttempt = route.MinPerAttempt
				}
				reg, cands, _ := setup(t, "hang", "ok")
				known := func() *route.Memory { // the hanging candidate worked before, this fast
					mem, _ := route.OpenMemory("", 0)
					if tc.rtt > 0 {
						won := cands[0]
						won.RTT = tc.rtt
						mem.Success("n", won)
					}
					return mem
				}
				// Alone, the hanging candidate fails after exactly its budget.
				begin := time.Now()
				_, _, err := route.Dial(t.Context(), reg, cands[:1], route.Options{Memory: known(), Network: "n"}, handshake)
				if took := time.Since(begin); !errors.Is(err, transport.ErrTimeout) || took != tc.perAttempt {
					t.Fatalf("alone: %v after %v, want a timeout after %v", err, took, tc.perAttempt)
				}
				// Beside another, it holds the next one back by its head start.
				begin = time.Now()
				s, _, err := route.Dial(t.Context(), reg, cands, route.Options{Memory: known(), Network: "n"}, handshake)
				if err != nil {
					t.Fatal(err)
				}
				s.Close()
				if took := time.Since(begin); took < tc.staggerLo || took > tc.hiExc {
					t.Fatalf("the second candidate started after %v, want %v..%v", took, tc.staggerLo, tc.hiExc)
				}
			})
		})
	}
}

// TestDialMeasuresRTT: the winner carries how long its attempt took, and
// Success keeps a smoothed value (7/8 old, 1/8 new).
func TestDialMeasuresRTT(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg, cands, _ := setup(t, "ok")
		mem, _ := route.OpenMemory("", 0)
		slow := func(d time.Duration) route.Handshake[*session] {
			return func(ctx context.Context, conn transport.Conn) (*session, error) {
				time.Sleep(d)
				return &session{conn: conn}, nil
			}
		}
		for i, d := range []time.Duration{80 * time.Millisecond, 160 * time.Millisecond} {
			s, won, err := route.Dial(t.Context(), reg, cands, route.Options{Memory: mem, Network: "n"}, slow(d))
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
			if won.RTT != d {
				t.Fatalf("dial %d: RTT %v, want %v", i, won.RTT, d)
			}
			mem.Success("n", won)
		}
		if got, want := mem.RTT("n", cands[0]), (7*80*time.Millisecond+160*time.Millisecond)/8; got != want {
			t.Fatalf("smoothed RTT %v, want %v", got, want)
		}
	})
}

// TestDialMisconfigured: when every candidate is invalid, Dial fails at
// once and says that retrying will not help.
func TestDialMisconfigured(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg, cands, _ := setup(t, "invalid", "invalid")
		begin := time.Now()
		_, _, err := route.Dial(t.Context(), reg, cands, route.Options{}, handshake)
		var re *route.Error
		if !errors.As(err, &re) || !re.Misconfigured() || re.Class() != transport.ClassInvalid {
			t.Fatalf("err = %v", err)
		}
		if !strings.HasPrefix(err.Error(), "misconfigured:") || !strings.Contains(err.Error(), "fix the descriptor") {
			t.Fatalf("message %q", err)
		}
		if took := time.Since(begin); took != 0 {
			t.Fatalf("took %v; a misconfiguration must fail at once", took)
		}
	})
	reg, cands, _ := setup(t, "invalid", "refuse")
	_, _, err := route.Dial(context.Background(), reg, cands, route.Options{}, handshake)
	if re, ok := errors.AsType[*route.Error](err); !ok || re.Misconfigured() {
		t.Fatalf("one invalid candidate of two: %v", err)
	}
}

// TestRelayDown: a relay that refuses every attempt over two transports is
// down; over one transport a refusal may be a censor's RST.
func TestRelayDown(t *testing.T) {
	reg, cands, _ := setup(t, "refuse", "refuse", "hang")
	cases := []struct {
		name  string
		cands []route.Candidate
		want  transport.Class
	}{
		{"both transports refused", cands[:2], transport.ClassRelayDown},
		{"one transport refused", cands[:1], transport.ClassRefused},
		{"one refused, one timed out", []route.Candidate{cands[2], cands[0]}, transport.ClassRefused},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := route.Dial(context.Background(), reg, tc.cands, route.Options{Stagger: -1, PerAttempt: time.Millisecond}, handshake)
			re, ok := errors.AsType[*route.Error](err)
			if !ok || re.Class() != tc.want {
				t.Fatalf("err = %v, want class %v", err, tc.want)
			}
		})
	}
}
