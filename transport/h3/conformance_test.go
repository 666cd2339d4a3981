package h3

import (
	"testing"

	"github.com/postern/postern/transport/transporttest"
)

func TestConformance(t *testing.T) {
	transporttest.Run(t, func(t *testing.T) transporttest.Setup {
		tr := New()
		r := startRelay(t, tr, nil)
		return transporttest.Setup{Transport: tr, Listener: r.ln, Endpoint: r.ep, Early: true}
	})
}
