package censortest

import "testing"

// chromiumCaptures returns the committed Chromium ClientHello records.
func chromiumCaptures(t testing.TB) map[string][]byte {
	t.Helper()
	out, err := ChromiumCaptures()
	if err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatal("no testdata/chromium-*.hex captures")
	}
	return out
}

// TestChromiumCapturesShareJA4: the captures are of one build, so they
// have one JA4 (transport/browser checks it is the profile's).
func TestChromiumCapturesShareJA4(t *testing.T) {
	seen := make(map[string]bool)
	for name, rec := range chromiumCaptures(t) {
		h, err := ParseClientHello(rec)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		seen[JA4(h)] = true
	}
	if len(seen) != 1 {
		t.Errorf("captures have %d JA4 fingerprints, want 1: %v", len(seen), seen)
	}
}
