package descriptor

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hpke"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/golden.txt")

var allSentinels = []error{
	ErrPrefix, ErrVersion, ErrEncoding, ErrTooLarge, ErrTruncated, ErrTrailing,
	ErrKeySize, ErrValidity, ErrEnvelopeKey, ErrNoEndpoints, ErrTooManyEndpoints,
	ErrTransportName, ErrAddress, ErrSNI, ErrPath, ErrFingerprint, ErrFlags,
	ErrSignature, ErrExpired,
}

// testNow is the clock of every Parse in these tests: inside the validity of
// the golden descriptor for good.
var testNow = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

// seedKey returns a fixed Ed25519 key derived from label.
func seedKey(label string) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte("postern descriptor test key: " + label))
	return ed25519.NewKeyFromSeed(seed[:])
}

// fill returns n deterministic bytes derived from label.
func fill(label string, n int) []byte {
	var out []byte
	for i := byte(0); len(out) < n; i++ {
		h := sha256.Sum256(append([]byte(label), i))
		out = append(out, h[:]...)
	}
	return out[:n]
}

// goldenDescriptor is the content of testdata/golden.txt. Everything in it
// is derived from fixed labels so that signing it is reproducible.
func goldenDescriptor() *Descriptor {
	return &Descriptor{
		EnvelopeSuite: 1,
		EnvelopeKey:   fill("envelope key", 1216),
		Issued:        time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		Expires:       time.Date(2126, 1, 1, 0, 0, 0, 0, time.UTC),
		Endpoints: []Endpoint{
			{
				Transport:   "https",
				Addr:        "198.51.100.7:443",
				SNI:         "www.example.com",
				Path:        "/static/app-3f9a.js",
				Key:         fill("endpoint 1 key", KeySize),
				CertSHA256:  fill("endpoint 1 pin", PinSize),
				Fingerprint: "chrome",
			},
			{
				Transport: "h3",
				Addr:      "[2001:db8::7]:8443",
				Path:      "/q",
				Key:       fill("endpoint 2 key", KeySize),
			},
			{
				Transport: "https",
				Addr:      "cdn.example.net:443",
				SNI:       "cdn.example.net",
				Path:      "/api/v2/events",
				Key:       fill("endpoint 3 key", KeySize),
				Unbound:   true,
			},
		},
	}
}

// sampleDescriptor has a real X-Wing envelope key.
func sampleDescriptor(t testing.TB) *Descriptor {
	t.Helper()
	priv, err := hpke.MLKEM768X25519().GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	d := goldenDescriptor()
	d.EnvelopeKey = priv.PublicKey().Bytes()
	if len(d.EnvelopeKey) != 1216 {
		t.Fatalf("X-Wing public key is %d bytes", len(d.EnvelopeKey))
	}
	return d
}

func mustSign(t testing.TB, d *Descriptor, priv ed25519.PrivateKey) string {
	t.Helper()
	line, err := d.Sign(priv)
	if err != nil {
		t.Fatal(err)
	}
	return line
}

// signRaw makes a line from arbitrary body bytes, signed with priv.
func signRaw(body []byte, priv ed25519.PrivateKey) string {
	sig := ed25519.Sign(priv, signedMessage(body))
	return Prefix + base64.RawURLEncoding.EncodeToString(append(bytes.Clone(body), sig...))
}

// decodeLine returns the decoded bytes of a line made in the tests.
func decodeLine(t testing.TB, line string) []byte {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(line, Prefix))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func encodeRaw(raw []byte) string { return Prefix + base64.RawURLEncoding.EncodeToString(raw) }

// checkSentinel asserts that err matches want and no other sentinel.
func checkSentinel(t *testing.T, err, want error) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", want)
	}
	if !errors.Is(err, want) {
		t.Fatalf("error %q does not match %v", err, want)
	}
	for _, s := range allSentinels {
		if s != want && errors.Is(err, s) {
			t.Fatalf("error %q also matches %v", err, s)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	priv := seedKey("relay")
	d := sampleDescriptor(t)
	line := mustSign(t, d, priv)
	if !bytes.Equal(d.RelayKey, priv.Public().(ed25519.PublicKey)) {
		t.Fatal("Sign did not set RelayKey")
	}
	if !strings.HasPrefix(line, Prefix) || strings.ContainsAny(line, " \t\r\n=+/") {
		t.Fatalf("line is not one base64url token after the prefix: %q", line)
	}
	t.Logf("descriptor with 3 endpoints and an X-Wing key: %d characters", len(line))
	for _, in := range []string{line, "  " + line + "\n", "\t" + line + "\r\n"} {
		got, err := Parse(in, testNow)
		if err != nil {
			t.Fatal(err)
		}
		if got.Line != line {
			t.Fatalf("Line = %q, want the trimmed input", got.Line)
		}
		got.Line = ""
		if !reflect.DeepEqual(got, d) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, d)
		}
	}
	// Ed25519 is deterministic: signing again gives the same line.
	if again := mustSign(t, d, priv); again != line {
		t.Fatal("signing the same descriptor twice gave two lines")
	}
	// The smallest descriptor: one endpoint, no envelope key, no options.
	small := &Descriptor{
		Issued:    testNow.Add(-time.Hour),
		Expires:   testNow.Add(time.Hour),
		Endpoints: []Endpoint{{Transport: "https", Addr: "127.0.0.1:1", Path: "/", Key: make([]byte, KeySize)}},
	}
	line = mustSign(t, small, priv)
	t.Logf("smallest descriptor: %d characters", len(line))
	got, err := Parse(line, testNow)
	if err != nil {
		t.Fatal(err)
	}
	got.Line = ""
	if !reflect.DeepEqual(got, small) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, small)
	}
}

func TestMaximalDescriptorFits(t *testing.T) {
	// 16 realistic endpoints and an X-Wing key stay under MaxLineSize.
	d := sampleDescriptor(t)
	ep := d.Endpoints[0]
	d.Endpoints = nil
	for i := 0; i < MaxEndpoints; i++ {
		d.Endpoints = append(d.Endpoints, ep)
	}
	line := mustSign(t, d, seedKey("relay"))
	t.Logf("16 endpoints and an X-Wing key: %d characters", len(line))
	if _, err := Parse(line, testNow); err != nil {
		t.Fatal(err)
	}
}

func TestRelayID(t *testing.T) {
	priv := seedKey("relay")
	d := goldenDescriptor()
	mustSign(t, d, priv)
	id := d.RelayID()
	h := sha256.Sum256(append([]byte("postern relay id"), d.RelayKey...))
	want := strings.ToLower(base32.StdEncoding.EncodeToString(h[:16]))
	want = strings.TrimRight(want, "=")
	if id != want || len(id) != 26 {
		t.Fatalf("RelayID = %q, want %q", id, want)
	}
	if RelayIDOf(d.RelayKey) != id {
		t.Fatal("RelayIDOf and RelayID disagree")
	}
	other := goldenDescriptor()
	mustSign(t, other, seedKey("another relay"))
	if other.RelayID() == id {
		t.Fatal("two keys have the same relay id")
	}
}

func TestTransportEndpoint(t *testing.T) {
	e := goldenDescriptor().Endpoints[0]
	e.Unbound = true
	te := e.TransportEndpoint()
	if te.Transport != e.Transport || te.Addr != e.Addr || te.SNI != e.SNI || te.Path != e.Path ||
		!bytes.Equal(te.Key, e.Key) || !bytes.Equal(te.CertSHA256, e.CertSHA256) ||
		te.Fingerprint != e.Fingerprint || te.Unbound != e.Unbound || te.RootCAs != nil {
		t.Fatalf("TransportEndpoint = %+v from %+v", te, e)
	}
	te.Key[0] ^= 0xff
	te.CertSHA256[0] ^= 0xff
	if te.Key[0] == e.Key[0] || te.CertSHA256[0] == e.CertSHA256[0] {
		t.Fatal("TransportEndpoint shares key memory with the descriptor")
	}
	if e2 := (Endpoint{Key: make([]byte, KeySize)}).TransportEndpoint(); e2.CertSHA256 != nil {
		t.Fatal("no pin became a non-nil pin")
	}
}

func TestGolden(t *testing.T) {
	path := filepath.Join("testdata", "golden.txt")
	d := goldenDescriptor()
	line := mustSign(t, d, seedKey("relay"))
	if *update {
		if err := os.WriteFile(path, []byte(line+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run TestGolden -update once to create it)", err)
	}
	golden := strings.TrimSpace(string(b))
	got, err := Parse(golden, testNow)
	if err != nil {
		t.Fatalf("golden line no longer parses: %v", err)
	}
	got.Line = ""
	if !reflect.DeepEqual(got, d) {
		t.Fatalf("golden line decodes to\n%+v\nwant\n%+v", got, d)
	}
	if golden != line {
		t.Fatal("signing the golden descriptor no longer gives the golden line: the encoding changed")
	}
	if id := got.RelayID(); id != "3dujyk6b4ghqa6xcfwttuhjvru" {
		t.Errorf("golden relay id = %q", id)
	}
}

// Every byte of the decoded line is covered by the signature (or breaks the
// structure): changing any of them is refused.
func TestSignatureCoversEveryByte(t *testing.T) {
	line := mustSign(t, goldenDescriptor(), seedKey("relay"))
	raw := decodeLine(t, line)
	for i := range raw {
		for _, x := range []byte{0x01, 0x80, 0xff} {
			mut := bytes.Clone(raw)
			mut[i] ^= x
			d, err := Parse(encodeRaw(mut), testNow)
			if err == nil {
				t.Fatalf("byte %d ^ %#x: accepted %+v", i, x, d)
			}
			matched := false
			for _, s := range allSentinels {
				matched = matched || errors.Is(err, s)
			}
			if !matched {
				t.Fatalf("byte %d ^ %#x: error %q matches no sentinel", i, x, err)
			}
		}
	}
	// Every proper prefix is truncated; any addition is trailing data.
	for n := 0; n < len(raw); n++ {
		_, err := Parse(encodeRaw(raw[:n]), testNow)
		checkSentinel(t, err, ErrTruncated)
	}
	for _, extra := range [][]byte{{0}, {1, 2, 3}, bytes.Repeat([]byte{0}, 64)} {
		_, err := Parse(encodeRaw(append(bytes.Clone(raw), extra...)), testNow)
		checkSentinel(t, err, ErrTrailing)
	}
}

func TestSignatureChecks(t *testing.T) {
	priv := seedKey("relay")
	d := goldenDescriptor()
	mustSign(t, d, priv)
	body := d.appendBody(nil)

	t.Run("signed by another key", func(t *testing.T) {
		// The body names priv's public key, the signature is by another.
		_, err := Parse(signRaw(body, seedKey("impostor")), testNow)
		checkSentinel(t, err, ErrSignature)
	})
	t.Run("signed without the context", func(t *testing.T) {
		sig := ed25519.Sign(priv, body)
		_, err := Parse(encodeRaw(append(bytes.Clone(body), sig...)), testNow)
		checkSentinel(t, err, ErrSignature)
	})
	t.Run("zero signature", func(t *testing.T) {
		_, err := Parse(encodeRaw(append(bytes.Clone(body), make([]byte, 64)...)), testNow)
		checkSentinel(t, err, ErrSignature)
	})
	t.Run("key swapped after signing", func(t *testing.T) {
		line := signRaw(body, priv)
		raw := decodeLine(t, line)
		other := seedKey("impostor").Public().(ed25519.PublicKey)
		copy(raw[2:34], other)
		_, err := Parse(encodeRaw(raw), testNow)
		checkSentinel(t, err, ErrSignature)
	})
	t.Run("message", func(t *testing.T) {
		_, err := Parse(signRaw(body, seedKey("impostor")), testNow)
		if !strings.Contains(err.Error(), "relay operator") {
			t.Errorf("message %q does not say what to do", err)
		}
	})
}

func TestExpiry(t *testing.T) {
	priv := seedKey("relay")
	d := goldenDescriptor()
	d.Issued = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	d.Expires = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	line := mustSign(t, d, priv)
	for _, tc := range []struct {
		now  time.Time
		want error
	}{
		{d.Expires.Add(-time.Second), nil},
		{d.Issued, nil},
		// Issued in the future (a client with a slow clock) is accepted:
		// expiry is what protects the client.
		{d.Issued.Add(-24 * time.Hour), nil},
		{d.Expires, ErrExpired},
		{d.Expires.Add(365 * 24 * time.Hour), ErrExpired},
	} {
		_, err := Parse(line, tc.now)
		if tc.want == nil {
			if err != nil {
				t.Errorf("at %v: %v", tc.now, err)
			}
			continue
		}
		checkSentinel(t, err, tc.want)
		msg := err.Error()
		if !strings.Contains(msg, "2026-12-01") || !strings.Contains(msg, "fresh one") || !strings.Contains(msg, d.RelayID()) {
			t.Errorf("expiry message %q lacks the date, the advice or the relay id", msg)
		}
	}
}

// fieldCases are descriptors that Sign must refuse and that Parse must
// refuse with the same error when a (non-conforming) signer produced them.
var fieldCases = []struct {
	name   string
	mutate func(d *Descriptor)
	want   error
}{
	{"no endpoints", func(d *Descriptor) { d.Endpoints = nil }, ErrNoEndpoints},
	{"17 endpoints", func(d *Descriptor) {
		for len(d.Endpoints) <= MaxEndpoints {
			d.Endpoints = append(d.Endpoints, d.Endpoints[0])
		}
	}, ErrTooManyEndpoints},
	{"transport empty", func(d *Descriptor) { d.Endpoints[0].Transport = "" }, ErrTransportName},
	{"transport upper case", func(d *Descriptor) { d.Endpoints[0].Transport = "HTTPS" }, ErrTransportName},
	{"transport with space", func(d *Descriptor) { d.Endpoints[0].Transport = "h 3" }, ErrTransportName},
	{"transport starts with digit", func(d *Descriptor) { d.Endpoints[1].Transport = "3h" }, ErrTransportName},
	{"transport 17 chars", func(d *Descriptor) { d.Endpoints[1].Transport = strings.Repeat("a", 17) }, ErrTransportName},
	{"transport non-ASCII", func(d *Descriptor) { d.Endpoints[1].Transport = "httpś" }, ErrTransportName},
	{"address without port", func(d *Descriptor) { d.Endpoints[0].Addr = "198.51.100.7" }, ErrAddress},
	{"address without host", func(d *Descriptor) { d.Endpoints[0].Addr = ":443" }, ErrAddress},
	{"address empty", func(d *Descriptor) { d.Endpoints[0].Addr = "" }, ErrAddress},
	{"port 0", func(d *Descriptor) { d.Endpoints[0].Addr = "198.51.100.7:0" }, ErrAddress},
	{"port 65536", func(d *Descriptor) { d.Endpoints[0].Addr = "198.51.100.7:65536" }, ErrAddress},
	{"port 99999999", func(d *Descriptor) { d.Endpoints[0].Addr = "198.51.100.7:99999999" }, ErrAddress},
	{"port with sign", func(d *Descriptor) { d.Endpoints[0].Addr = "198.51.100.7:+443" }, ErrAddress},
	{"port with leading zero", func(d *Descriptor) { d.Endpoints[0].Addr = "198.51.100.7:0443" }, ErrAddress},
	{"port by name", func(d *Descriptor) { d.Endpoints[0].Addr = "198.51.100.7:https" }, ErrAddress},
	{"IPv6 without brackets", func(d *Descriptor) { d.Endpoints[0].Addr = "2001:db8::7:443" }, ErrAddress},
	{"IPv6 with zone", func(d *Descriptor) { d.Endpoints[0].Addr = "[fe80::1%eth0]:443" }, ErrAddress},
	{"host with space", func(d *Descriptor) { d.Endpoints[0].Addr = "relay example:443" }, ErrAddress},
	{"SNI with space", func(d *Descriptor) { d.Endpoints[0].SNI = "www example.com" }, ErrSNI},
	{"SNI empty label", func(d *Descriptor) { d.Endpoints[0].SNI = "www..example.com" }, ErrSNI},
	{"SNI leading dash", func(d *Descriptor) { d.Endpoints[0].SNI = "-www.example.com" }, ErrSNI},
	{"SNI 254 chars", func(d *Descriptor) { d.Endpoints[0].SNI = strings.Repeat("a", 254) }, ErrSNI},
	{"path empty", func(d *Descriptor) { d.Endpoints[0].Path = "" }, ErrPath},
	{"path relative", func(d *Descriptor) { d.Endpoints[0].Path = "static/app.js" }, ErrPath},
	{"path with space", func(d *Descriptor) { d.Endpoints[0].Path = "/a b" }, ErrPath},
	{"path with query", func(d *Descriptor) { d.Endpoints[0].Path = "/a?b=c" }, ErrPath},
	{"path with fragment", func(d *Descriptor) { d.Endpoints[0].Path = "/a#b" }, ErrPath},
	{"path with control", func(d *Descriptor) { d.Endpoints[0].Path = "/a\x7f" }, ErrPath},
	{"session key 31", func(d *Descriptor) { d.Endpoints[1].Key = d.Endpoints[1].Key[:31] }, ErrKeySize},
	{"session key 33", func(d *Descriptor) { d.Endpoints[1].Key = append(d.Endpoints[1].Key, 0) }, ErrKeySize},
	{"session key missing", func(d *Descriptor) { d.Endpoints[1].Key = nil }, ErrKeySize},
	{"pin 16", func(d *Descriptor) { d.Endpoints[0].CertSHA256 = d.Endpoints[0].CertSHA256[:16] }, ErrKeySize},
	{"fingerprint upper case", func(d *Descriptor) { d.Endpoints[0].Fingerprint = "Chrome" }, ErrFingerprint},
	{"fingerprint 33 chars", func(d *Descriptor) { d.Endpoints[0].Fingerprint = strings.Repeat("c", 33) }, ErrFingerprint},
	{"envelope suite without key", func(d *Descriptor) { d.EnvelopeKey = nil }, ErrEnvelopeKey},
	{"envelope key without suite", func(d *Descriptor) { d.EnvelopeSuite = 0 }, ErrEnvelopeKey},
	{"envelope key too long", func(d *Descriptor) { d.EnvelopeKey = make([]byte, MaxEnvelopeKeySize+1) }, ErrEnvelopeKey},
	{"expires before issued", func(d *Descriptor) { d.Expires = d.Issued.Add(-time.Second) }, ErrValidity},
	{"expires when issued", func(d *Descriptor) { d.Expires = d.Issued }, ErrValidity},
	{"expires after year 9999", func(d *Descriptor) { d.Expires = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }, ErrValidity},
	{"issued before 1970", func(d *Descriptor) { d.Issued = time.Date(1969, 1, 1, 0, 0, 0, 0, time.UTC) }, ErrValidity},
}

func TestSignRefuses(t *testing.T) {
	priv := seedKey("relay")
	for _, tc := range fieldCases {
		t.Run(tc.name, func(t *testing.T) {
			d := goldenDescriptor()
			tc.mutate(d)
			_, err := d.Sign(priv)
			checkSentinel(t, err, tc.want)
		})
	}
	t.Run("zero times", func(t *testing.T) {
		d := goldenDescriptor()
		d.Issued, d.Expires = time.Time{}, time.Time{}
		_, err := d.Sign(priv)
		checkSentinel(t, err, ErrValidity)
	})
	t.Run("path 256 chars", func(t *testing.T) {
		d := goldenDescriptor()
		d.Endpoints[0].Path = "/" + strings.Repeat("p", 255)
		_, err := d.Sign(priv)
		checkSentinel(t, err, ErrPath)
	})
	t.Run("bad signing key", func(t *testing.T) {
		_, err := goldenDescriptor().Sign(priv[:32])
		checkSentinel(t, err, ErrKeySize)
	})
	t.Run("too large", func(t *testing.T) {
		d := goldenDescriptor()
		d.EnvelopeKey = make([]byte, MaxEnvelopeKeySize)
		e := d.Endpoints[0]
		e.Addr = strings.Repeat("a", 200) + ".example:443"
		e.Path = "/" + strings.Repeat("p", 254)
		for len(d.Endpoints) < MaxEndpoints {
			d.Endpoints = append(d.Endpoints, e)
		}
		_, err := d.Sign(priv)
		checkSentinel(t, err, ErrTooLarge)
	})
}

func TestParseRefusesFields(t *testing.T) {
	priv := seedKey("relay")
	pub := priv.Public().(ed25519.PublicKey)
	for _, tc := range fieldCases {
		t.Run(tc.name, func(t *testing.T) {
			d := goldenDescriptor()
			d.RelayKey = pub
			tc.mutate(d)
			if len(d.Endpoints) > 255 || len(d.EnvelopeKey) > 65535 {
				t.Skip("not encodable")
			}
			_, err := Parse(signRaw(d.appendBody(nil), priv), testNow)
			checkSentinel(t, err, tc.want)
			// Descriptor errors may be logged: they never repeat an
			// address or a path.
			for _, e := range d.Endpoints {
				for _, secret := range []string{e.Addr, e.Path} {
					if len(secret) > 3 && strings.Contains(err.Error(), secret) {
						t.Errorf("error %q reveals %q", err, secret)
					}
				}
			}
		})
	}
}

func TestParseRefusesRaw(t *testing.T) {
	priv := seedKey("relay")
	d := goldenDescriptor()
	good := mustSign(t, d, priv)
	body := d.appendBody(nil)
	goodEnc := strings.TrimPrefix(good, Prefix)

	// Offsets in the golden body.
	const (
		offKeyLen = 1
		offIssued = 34
	)
	lastFlags := len(body) - 1 // flags of the last endpoint
	badLen := good
	for len(strings.TrimPrefix(badLen, Prefix))%4 != 1 {
		badLen += "A"
	}
	withByte := func(off int, v byte) []byte {
		b := bytes.Clone(body)
		b[off] = v
		return b
	}
	cases := []struct {
		name string
		line string
		want error
	}{
		{"empty", "", ErrPrefix},
		{"whitespace only", " \n\t", ErrPrefix},
		{"other text", "hello, world", ErrPrefix},
		{"prefix in upper case", strings.ToUpper(Prefix) + goodEnc, ErrPrefix},
		{"Tor bridge line", "obfs4 192.0.2.1:443 cert=abc iat-mode=0", ErrPrefix},
		{"newer prefix", "postern-relay2:" + goodEnc, ErrVersion},
		{"prefix only", Prefix, ErrTruncated},
		{"standard base64 alphabet", Prefix + strings.NewReplacer("-", "+", "_", "/").Replace(goodEnc) + "+/", ErrEncoding},
		{"padding", good + "==", ErrEncoding},
		{"inner line break", good[:100] + "\n" + good[100:], ErrEncoding},
		{"inner space", good[:100] + " " + good[100:], ErrEncoding},
		{"impossible length", badLen, ErrTruncated},
		{"too large", Prefix + strings.Repeat("A", MaxLineSize), ErrTooLarge},
		{"version 0", signRaw(withByte(0, 0), priv), ErrVersion},
		{"version 2", signRaw(withByte(0, 2), priv), ErrVersion},
		{"version 255", signRaw(withByte(0, 255), priv), ErrVersion},
		{"relay key length 31", signRaw(withByte(offKeyLen, 31), priv), ErrKeySize},
		{"relay key length 33", signRaw(withByte(offKeyLen, 33), priv), ErrKeySize},
		{"issued zero", signRaw(func() []byte {
			b := bytes.Clone(body)
			clear(b[offIssued : offIssued+8])
			return b
		}(), priv), ErrValidity},
		{"unknown flag", signRaw(withByte(lastFlags, 0x02), priv), ErrFlags},
		{"unknown flag with unbound", signRaw(withByte(lastFlags, 0x81), priv), ErrFlags},
		{"trailing after signature", encodeRaw(append(decodeLine(t, good), 0)), ErrTrailing},
		{"missing signature", encodeRaw(body), ErrTruncated},
		{"half a signature", encodeRaw(decodeLine(t, good)[:len(body)+32]), ErrTruncated},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.line, testNow)
			checkSentinel(t, err, tc.want)
		})
	}

	// Strict base64: a final character with non-zero unused bits decodes
	// to the same bytes in lenient decoders; it must be refused so that a
	// descriptor has exactly one spelling.
	t.Run("non-canonical final character", func(t *testing.T) {
		raw := decodeLine(t, good)
		if len(raw)%3 == 0 {
			t.Skip("no unused bits in this length")
		}
		enc := []byte(goodEnc)
		last := strings.IndexByte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", enc[len(enc)-1])
		enc[len(enc)-1] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last|1]
		if lenient, err := base64.RawURLEncoding.DecodeString(string(enc)); err != nil || !bytes.Equal(lenient, raw) {
			t.Skip("mutation changed the bytes; nothing to test")
		}
		_, err := Parse(Prefix+string(enc), testNow)
		checkSentinel(t, err, ErrEncoding)
	})
}

func TestErrorMessagesSayWhatToDo(t *testing.T) {
	priv := seedKey("relay")
	good := mustSign(t, goldenDescriptor(), priv)
	for _, tc := range []struct {
		line   string
		advice string
	}{
		{"hello", "copy the whole line"},
		{"postern-relay9:AAAA", "upgrade postern"},
		{good[:50] + " " + good[50:], "one line"},
	} {
		_, err := Parse(tc.line, testNow)
		if err == nil || !strings.Contains(err.Error(), tc.advice) {
			t.Errorf("Parse(%.20q...) = %v, want advice %q", tc.line, err, tc.advice)
		}
	}
	// A line cut short while copying, whatever its length now, says so.
	for cut := 1; cut <= 12; cut++ {
		_, err := Parse(good[:len(good)-cut], testNow)
		if !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), "incomplete") {
			t.Errorf("line cut by %d characters: %v", cut, err)
		}
	}
}

func TestParseDoesNotAlias(t *testing.T) {
	// The parsed descriptor must not share memory with a caller's buffer
	// (there is none for a string, but decoded fields must not share
	// memory with each other either).
	d, err := Parse(mustSign(t, goldenDescriptor(), seedKey("relay")), testNow)
	if err != nil {
		t.Fatal(err)
	}
	k0 := bytes.Clone(d.Endpoints[0].Key)
	d.RelayKey = append(d.RelayKey[:0], make([]byte, 64)...)
	d.EnvelopeKey = append(d.EnvelopeKey, 1, 2, 3)
	if !bytes.Equal(d.Endpoints[0].Key, k0) {
		t.Fatal("appending to one decoded field overwrote another")
	}
}

func BenchmarkParse(b *testing.B) {
	line := mustSign(b, sampleDescriptor(b), seedKey("relay"))
	b.SetBytes(int64(len(line)))
	for b.Loop() {
		if _, err := Parse(line, testNow); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSign(b *testing.B) {
	d := sampleDescriptor(b)
	priv := seedKey("relay")
	for b.Loop() {
		if _, err := d.Sign(priv); err != nil {
			b.Fatal(err)
		}
	}
}

// TestTruncationSaysWhere cuts the golden body inside each part: the error
// names the part and says what to do.
func TestTruncationSaysWhere(t *testing.T) {
	d := goldenDescriptor()
	d.RelayKey = seedKey("relay").Public().(ed25519.PublicKey)
	body := d.appendBody(nil)
	one := goldenDescriptor()
	one.RelayKey = d.RelayKey
	one.Endpoints = one.Endpoints[:1]
	endpoint2 := len(one.appendBody(nil))
	for _, tc := range []struct {
		cut   int
		where string
	}{
		{0, "in the version"},
		{1, "in the relay key"},
		{20, "in the relay key"},
		{40, "in the validity period"},
		{50, "in the envelope key"},
		{100, "in the envelope key"},
		{1269, "in the endpoint list"},
		{1271, "in endpoint 1"},
		{endpoint2 + 40, "in endpoint 2"},
		{len(body) - 1, "in endpoint 3"},
	} {
		_, err := Parse(encodeRaw(body[:tc.cut]), testNow)
		if !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), tc.where) || !strings.Contains(err.Error(), "copy the whole line again") {
			t.Errorf("body cut at %d: %v, want it to say %q", tc.cut, err, tc.where)
		}
	}
}

func TestParseStale(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(nil)
	_, other, _ := ed25519.GenerateKey(nil)
	now := time.Now()
	mk := func(k ed25519.PrivateKey, expires time.Time) string {
		d := &Descriptor{Endpoints: []Endpoint{{Transport: "https", Addr: "127.0.0.1:443", Path: "/p", Key: make([]byte, 32)}},
			Issued: expires.Add(-48 * time.Hour), Expires: expires}
		line, err := d.Sign(k)
		if err != nil {
			t.Fatal(err)
		}
		return line
	}
	old := mk(priv, now.Add(-time.Hour))
	if _, err := Parse(old, now); !errors.Is(err, ErrExpired) {
		t.Fatalf("Parse of an expired descriptor: %v", err)
	}
	d, stale, err := ParseStale(old, now)
	if err != nil || !stale {
		t.Fatalf("ParseStale = stale %v, %v", stale, err)
	}
	fresh, stale, err := ParseStale(mk(priv, now.Add(time.Hour)), now)
	if err != nil || stale || !SameRelay(d, fresh) {
		t.Fatalf("fresh: stale %v, same %v, %v", stale, SameRelay(d, fresh), err)
	}
	stranger, _, _ := ParseStale(mk(other, now.Add(time.Hour)), now)
	if SameRelay(d, stranger) {
		t.Fatal("two keys are the same relay")
	}
	forged := old[:len(old)-4] + "AAAA"
	if _, _, err := ParseStale(forged, now); err == nil {
		t.Fatal("ParseStale accepted a bad signature")
	}
}
