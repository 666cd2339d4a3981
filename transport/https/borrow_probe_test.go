package https

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"

	utls "github.com/refraction-networking/utls"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/borrow"
	"github.com/postern/postern/transport/browser"
)

// probeWait is how long a probe waits for the server to close. It is
// longer than every timeout of the test's nginx; a probe that reaches it
// records "timeout".
const probeWait = 15 * time.Second

// probeResult is what a prober learns from one connection: the bytes it
// received (count, and SHA-256 after masking per-connection randomness, see
// maskRandom), how the connection ended and after how many whole seconds,
// rounded: a server timeout of N seconds lands near N, and nginx fires its
// timers up to a few milliseconds early or late (its clock is the one
// cached when its event loop woke), which floor would turn into N-1.
type probeResult struct {
	Bytes   int
	SHA256  string
	Close   string // FIN, RST or timeout
	Seconds int
}

func (r probeResult) String() string {
	return fmt.Sprintf("%6d B  %s  %-7s %2d s", r.Bytes, r.SHA256[:16], r.Close, r.Seconds)
}

// probe connects to addr, sends data (nothing for nil) and reads until
// the server closes or probeWait passes.
func probe(addr string, data []byte) (probeResult, error) {
	start := time.Now()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return probeResult{}, err
	}
	defer c.Close()
	c.SetDeadline(start.Add(probeWait))
	if len(data) > 0 {
		if _, err := c.Write(data); err != nil {
			return probeResult{}, fmt.Errorf("write: %w", err)
		}
	}
	got, err := io.ReadAll(c)
	r := probeResult{Bytes: len(got), Seconds: int(time.Since(start).Round(time.Second) / time.Second)}
	sum := sha256.Sum256(maskRandom(got))
	r.SHA256 = hex.EncodeToString(sum[:])
	switch {
	case err == nil:
		r.Close = "FIN"
	case errors.Is(err, syscall.ECONNRESET):
		r.Close = "RST"
	case errors.Is(err, os.ErrDeadlineExceeded):
		r.Close = "timeout"
	default:
		return r, err
	}
	return r, nil
}

var httpDate = regexp.MustCompile(`(?m)^Date: [^\r\n]*`)

// maskRandom zeroes what differs between any two connections to the same
// server, so that equal hashes mean equal answers: the ServerHello's
// random and TLS 1.3 key share, the TLS 1.2 ServerKeyExchange's ECDHE key
// and signature, the contents (not the lengths) of encrypted TLS records,
// and the value of an HTTP Date header. Everything else is kept byte for
// byte.
func maskRandom(b []byte) []byte {
	b = bytes.Clone(b)
	if len(b) >= 3 && b[0] >= 20 && b[0] <= 23 && b[1] == 3 {
		for rest := b; len(rest) >= 5; {
			n := int(rest[3])<<8 | int(rest[4])
			body := rest[5:min(len(rest), 5+n)]
			switch rest[0] {
			case 22:
				maskHandshake(body)
			case 23:
				clear(body)
			}
			rest = rest[5+len(body):]
		}
		return b
	}
	return httpDate.ReplaceAll(b, []byte("Date: (masked)"))
}

// maskHandshake masks the handshake messages of one plaintext record.
func maskHandshake(body []byte) {
	for len(body) >= 4 {
		n := int(body[1])<<16 | int(body[2])<<8 | int(body[3])
		msg := body[4:min(len(body), 4+n)]
		switch body[0] {
		case 2:
			maskServerHello(msg)
		case 12:
			maskServerKeyExchange(msg)
		}
		body = body[4+len(msg):]
	}
}

// maskServerHello zeroes the random and the key_share key of a
// ServerHello body.
func maskServerHello(m []byte) {
	if len(m) < 2+32+1 {
		return
	}
	clear(m[2:34])
	p := 34 + 1 + int(m[34]) + 2 + 1 // session id, suite, compression
	for p += 2; p+4 <= len(m); {
		typ, n := int(m[p])<<8|int(m[p+1]), int(m[p+2])<<8|int(m[p+3])
		data := m[p+4 : min(len(m), p+4+n)]
		if typ == 51 && len(data) > 4 {
			clear(data[4:]) // group, length, key
		}
		p += 4 + n
	}
}

// maskServerKeyExchange zeroes the ECDHE public key and the signature of
// a TLS 1.2 ServerKeyExchange body (curve type, curve, key, scheme,
// signature), keeping their lengths.
func maskServerKeyExchange(m []byte) {
	if len(m) < 4 || m[0] != 3 {
		return
	}
	k := 4 + int(m[3])
	clear(m[4:min(len(m), k)])
	if k+4 <= len(m) {
		clear(m[k+4:])
	}
}

// helloRecord is a Chromium ClientHello record as the https client builds
// it; with key, tagged for the borrowed-site listener.
func helloRecord(t *testing.T, key []byte) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	uc, err := browser.NewUConn(a, &utls.Config{ServerName: "localhost"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := uc.BuildHandshakeState(); err != nil {
		t.Fatal(err)
	}
	if key != nil {
		if err := borrow.TagHello(uc, key, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	raw := uc.HandshakeState.Hello.Raw
	return append([]byte{22, 3, 1, byte(len(raw) >> 8), byte(len(raw))}, raw...)
}

type probeCase struct {
	name string
	data []byte
}

// ndssProbes is the probe set of Frolov et al., "Detecting
// Probe-resistant Proxies" (NDSS 2020), for a TLS port, with the tag
// probes a borrowed site adds. replay is an authenticated hello already
// spent at the relay.
func ndssProbes(t *testing.T, replay []byte) []probeCase {
	rng := rand.New(rand.NewChaCha8([32]byte{'n', 'd', 's', 's', '2', '0'}))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	cases := []probeCase{
		{"empty", nil},
		{"http-get", []byte("GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n")},
	}
	for _, n := range []int{1, 2, 17, 64, 256, 1024, 2048, 8192, 17 << 10} {
		cases = append(cases, probeCase{fmt.Sprintf("random-%d", n), random(n)})
	}
	cases = append(cases,
		probeCase{"tls-header-only", []byte{22, 3, 1, 2, 0}},
		probeCase{"tls-header+garbage", append([]byte{22, 3, 1, 0, 255}, random(255)...)},
		probeCase{"tls-header+partial", append([]byte{22, 3, 3, 0x40, 0, 1, 0, 0x3f, 0xfc}, random(1000)...)},
		probeCase{"clienthello-untagged", helloRecord(t, nil)},
		probeCase{"clienthello-bad-tag", helloRecord(t, bytes.Repeat([]byte{0xbd}, transport.KeySize))},
		probeCase{"clienthello-replayed", replay},
	)
	return cases
}

// The NDSS'20 probes get the same answers from a relay in borrowed-site
// mode in front of nginx as from that nginx itself: bytes, their hash,
// close type and whole seconds to the close. As a control, the same relay
// without borrowing (its own Go TLS stack, even with nginx's timeouts)
// must differ on a third of the rows at least, so the comparison can fail.
func TestBorrowedSiteProbesMatchOrigin(t *testing.T) {
	nginx := startNginx(t)
	r := startRelay(t, &Transport{Borrow: &borrow.Options{Origin: nginx}}, nil)
	serveEcho(r.ln)
	plain := startRelay(t, &Transport{ReadHeaderTimeout: nginxHeaderTimeout * time.Second,
		IdleTimeout: nginxKeepaliveTimeout * time.Second}, nil)

	// Spend an authenticated hello at the relay: it reaches the relay's
	// own TLS stack (a Go server answers; not compared), then is replayed.
	replay := helloRecord(t, r.ep.Key)
	if _, err := probeOnce(r.ep.Addr, replay); err != nil {
		t.Fatal(err)
	}
	cases := ndssProbes(t, replay)
	targets := []string{r.ep.Addr, nginx, plain.ep.Addr}
	results := runProbes(t, cases, targets)
	t.Logf("%-22s | %-34s | %-34s | %s", "probe", "relay, borrowed from nginx", "nginx", "control: relay, not borrowed")
	control := 0
	for i, c := range cases {
		res := results[i]
		if res[0] != res[1] {
			t.Errorf("%s: relay %v, nginx %v", c.name, res[0], res[1])
		}
		if res[2] != res[1] {
			control++
		}
		t.Logf("%-22s | %v | %v | %v", c.name, res[0], res[1], res[2])
	}
	t.Logf("without borrowing, %d of %d rows differ from nginx", control, len(cases))
	if control < len(cases)/3 {
		t.Errorf("the control differs from nginx on only %d of %d rows: the probes tell too little apart", control, len(cases))
	}
	if got := r.obs.Get(transport.OutcomeReplay); got != 1 {
		t.Errorf("Observe(replay) = %d, want 1", got)
	}
}

// runProbes sends every probe to every target, all at once.
func runProbes(t *testing.T, cases []probeCase, targets []string) [][]probeResult {
	t.Helper()
	return runAll(t, cases, targets, probe)
}

// runAll runs do for every probe against every target, all at once, and
// returns the results by probe, then target.
func runAll[R any](t *testing.T, cases []probeCase, targets []string, do func(addr string, data []byte) (R, error)) [][]R {
	t.Helper()
	results := make([][]R, len(cases))
	errs := make([]error, len(cases)*len(targets))
	var wg sync.WaitGroup
	for i, c := range cases {
		results[i] = make([]R, len(targets))
		for j, addr := range targets {
			wg.Go(func() {
				var err error
				results[i][j], err = do(addr, c.data)
				if err != nil {
					errs[i*len(targets)+j] = fmt.Errorf("%s to target %d: %w", c.name, j, err)
				}
			})
		}
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return results
}

// probeOnce sends an authenticated hello and reads the relay's first
// answer (its own TLS stack's ServerHello), then closes.
func probeOnce(addr string, data []byte) ([]byte, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(probeWait))
	if _, err := c.Write(data); err != nil {
		return nil, err
	}
	b := make([]byte, 5)
	_, err = io.ReadFull(c, b)
	return b, err
}
