package https

import (
	"bytes"
	"testing"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/transporttest"
)

// TestConformance runs the transport contract on sessions carried by the
// listener's own HTTP/2 engine (the front's fast path) and, with stockH2,
// by net/http's HTTP/2 server (the path of connections that begin with
// anything but a session).
func TestConformance(t *testing.T) {
	for _, stock := range []bool{false, true} {
		name := "engine"
		if stock {
			name = "stockh2"
		}
		t.Run(name, func(t *testing.T) {
			transporttest.Run(t, func(t *testing.T) transporttest.Setup {
				tr := &Transport{stockH2: stock}
				if !stock {
					tr = engineTransport()
				}
				key := bytes.Repeat([]byte{9}, 32)
				r := startRelay(t, tr, func(c *transport.ListenConfig) { c.SourceKey = key })
				return transporttest.Setup{Transport: tr, Listener: r.ln, Endpoint: r.ep, Early: true, SourceKey: key}
			})
		})
	}
}
