package https

import (
	"context"
	"crypto/tls"
	"net/http"
	"testing"
	"time"

	"github.com/postern/postern/transport"
)

// TestAltSvc: with ListenConfig.AltSvc, every cover response (a page, a
// 404, a refused session request) advertises it, and a session response
// does not; without it, nothing does.
func TestAltSvc(t *testing.T) {
	const altSvc = `h3=":8443"; ma=2592000`
	for _, tc := range []struct {
		name, cfg string
	}{{"on", altSvc}, {"off", ""}} {
		t.Run(tc.name, func(t *testing.T) {
			r := startRelay(t, &Transport{}, func(c *transport.ListenConfig) { c.AltSvc = tc.cfg })
			go func() {
				for {
					c, err := r.ln.Accept(context.Background())
					if err != nil {
						return
					}
					c.Close()
				}
			}()
			cfg := &tls.Config{InsecureSkipVerify: true, ServerName: "relay.test", NextProtos: []string{"h2"}}
			c, cc := h2Dial(t, r.ep.Addr, cfg)
			for _, path := range []string{"/", "/no-such-page"} {
				req, _ := http.NewRequest(http.MethodGet, "https://relay.test"+path, nil)
				res, err := cc.RoundTrip(req)
				if err != nil {
					t.Fatal(err)
				}
				res.Body.Close()
				if got := res.Header.Get("Alt-Svc"); got != tc.cfg {
					t.Errorf("GET %s (%d): Alt-Svc %q, want %q", path, res.StatusCode, got, tc.cfg)
				}
			}
			if got := postRes(t, cc, "bad-token").Header.Get("Alt-Svc"); got != tc.cfg {
				t.Errorf("refused session: Alt-Svc %q, want %q", got, tc.cfg)
			}
			res := postRes(t, cc, boundToken(t, r.cfg.Key, c, time.Now()))
			if res.StatusCode != http.StatusOK || res.Header.Get("Alt-Svc") != "" {
				t.Errorf("session: %d, Alt-Svc %q", res.StatusCode, res.Header.Get("Alt-Svc"))
			}
		})
	}
}
