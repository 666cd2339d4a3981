package relaytest

import (
	"bytes"
	"crypto/rand"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"log/slog"
	"testing"
)

// TestFindLeaks: the scanner finds a mailbox id in each form a log line
// could carry it (encodings, a half, raw, and as slog's text handler
// writes a []byte and a [32]byte) and an address, and nothing in a line
// without them.
func TestFindLeaks(t *testing.T) {
	var id [32]byte
	rand.Read(id[:])
	needles := []Needle{BytesNeedle("mailbox id", id[:]), AddrNeedle("client address", "127.0.0.2")}
	var slogged bytes.Buffer
	log := slog.New(slog.NewTextHandler(&slogged, nil))
	log.Info("send", "mailbox", id[:])
	log.Info("send", "mailbox", id)
	lines := []string{
		"level=DEBUG msg=send mailbox=" + hex.EncodeToString(id[:]),
		"level=DEBUG msg=send mailbox=" + base64.StdEncoding.EncodeToString(id[:]),
		"level=DEBUG msg=send mailbox=" + base64.RawURLEncoding.EncodeToString(id[:]),
		"level=DEBUG msg=send mailbox=" + base32.StdEncoding.EncodeToString(id[:]),
		"level=DEBUG msg=send mailbox=" + hex.EncodeToString(id[:16]),
		"level=DEBUG msg=session remote=127.0.0.2:40312",
		string(id[:]),
	}
	lines = append(lines, string(bytes.SplitN(slogged.Bytes(), []byte("\n"), 2)[0]), string(bytes.SplitN(slogged.Bytes(), []byte("\n"), 2)[1]))
	for _, line := range lines {
		if len(FindLeaks("log", []byte(line), needles)) == 0 {
			t.Errorf("scanner missed a leak in %q", line)
		}
	}
	if l := FindLeaks("log", []byte("level=INFO msg=\"relay started\" transports=https,h3"), needles); len(l) != 0 {
		t.Errorf("false positive: %v", l)
	}
}
