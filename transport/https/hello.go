package https

import (
	"net"

	utls "github.com/refraction-networking/utls"

	"github.com/postern/postern/transport/fingerprint"
)

// newUConn wraps conn in a uTLS client whose ClientHello imitates a browser.
// preset is the descriptor's fingerprint name: empty and "chrome" mean the
// Chromium build captured in transport/fingerprint/testdata (same JA4),
// "chrome133" utls's own Chrome 133 preset.
func newUConn(conn net.Conn, cfg *utls.Config, preset string) (*utls.UConn, error) {
	return fingerprint.NewUConn(conn, cfg, preset)
}
