package h3

import (
	"bytes"
	"testing"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/transporttest"
)

func TestConformance(t *testing.T) {
	transporttest.Run(t, func(t *testing.T) transporttest.Setup {
		tr := New()
		key := bytes.Repeat([]byte{9}, 32)
		r := startRelay(t, tr, func(c *transport.ListenConfig) { c.SourceKey = key })
		return transporttest.Setup{Transport: tr, Listener: r.ln, Endpoint: r.ep, Early: true, SourceKey: key}
	})
}
