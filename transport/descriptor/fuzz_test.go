package descriptor

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"os"
	"strings"
	"testing"
)

// checkFuzzResult checks the properties every Parse result must have: an
// error matches a sentinel; a success re-encodes to exactly the input bytes
// (the encoding is unique) and passes validation.
func checkFuzzResult(t *testing.T, line string, d *Descriptor, err error) {
	t.Helper()
	if err != nil {
		for _, s := range allSentinels {
			if errors.Is(err, s) {
				return
			}
		}
		t.Fatalf("error %q matches no sentinel", err)
	}
	raw, derr := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(strings.TrimSpace(line), Prefix))
	if derr != nil {
		t.Fatalf("accepted a line that does not decode: %v", derr)
	}
	body := d.appendBody(nil)
	if !bytes.Equal(body, raw[:len(raw)-ed25519.SignatureSize]) {
		t.Fatalf("accepted body does not re-encode to itself:\n in  %x\n out %x", raw[:len(raw)-ed25519.SignatureSize], body)
	}
	if verr := d.validate(); verr != nil {
		t.Fatalf("accepted a descriptor that does not validate: %v", verr)
	}
	for _, e := range d.Endpoints {
		e.TransportEndpoint()
	}
	d.RelayID()
}

func FuzzParse(f *testing.F) {
	priv := seedKey("relay")
	if b, err := os.ReadFile("testdata/golden.txt"); err == nil {
		f.Add(string(b))
	}
	good, err := goldenDescriptor().Sign(priv)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add(good + "AA")
	f.Add(" " + good + "\n")
	f.Add("")
	f.Add(Prefix)
	f.Add(Prefix + "AQ")
	f.Add("postern-relay2:AAAA")
	small := &Descriptor{
		Issued:    testNow,
		Expires:   testNow.Add(1 << 40),
		Endpoints: []Endpoint{{Transport: "h3", Addr: "[::1]:1", Path: "/", Key: make([]byte, KeySize), Unbound: true}},
	}
	if line, err := small.Sign(priv); err == nil {
		f.Add(line)
	}
	f.Fuzz(func(t *testing.T, line string) {
		d, err := Parse(line, testNow)
		checkFuzzResult(t, line, d, err)
	})
}

// FuzzParseSigned reaches the field parser behind the signature: the fuzzer
// supplies the body after the relay key, the harness prepends version and
// key and signs it, so every structurally valid input gets past Ed25519.
func FuzzParseSigned(f *testing.F) {
	priv := seedKey("relay")
	pub := priv.Public().(ed25519.PublicKey)
	head := append([]byte{Version, ed25519.PublicKeySize}, pub...)

	d := goldenDescriptor()
	d.RelayKey = pub
	f.Add(d.appendBody(nil)[len(head):])
	d.EnvelopeKey, d.EnvelopeSuite = nil, 0
	d.Endpoints = d.Endpoints[1:2]
	f.Add(d.appendBody(nil)[len(head):])
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0xff}, 64))
	f.Fuzz(func(t *testing.T, rest []byte) {
		line := signRaw(append(bytes.Clone(head), rest...), priv)
		d, err := Parse(line, testNow)
		checkFuzzResult(t, line, d, err)
	})
}
