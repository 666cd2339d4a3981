package envelope

import (
	"bytes"
	"errors"
	"testing"
)

func publicKeyOf(id *Identity, s Suite) []byte {
	if s == SuiteXWing {
		return id.Public().XWing
	}
	return id.Public().X25519
}

func TestSealToRoundTrip(t *testing.T) {
	id := newID(t)
	for _, s := range suites {
		t.Run(s.String(), func(t *testing.T) {
			for _, pt := range [][]byte{nil, []byte("x"), randBytes(5000)} {
				sealed, err := SealTo(s, publicKeyOf(id, s), []byte("info"), []byte("aad"), pt)
				if err != nil {
					t.Fatal(err)
				}
				if want := s.encSize() + len(pt) + aeadOverhead; len(sealed) != want {
					t.Fatalf("sealed is %d bytes, want enc + plaintext + tag = %d", len(sealed), want)
				}
				got, err := id.OpenFrom(s, []byte("info"), []byte("aad"), sealed)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, pt) {
					t.Fatal("plaintext differs")
				}
			}
		})
	}
}

func TestOpenFromRefuses(t *testing.T) {
	id, other := newID(t), newID(t)
	for _, s := range suites {
		sealed, err := SealTo(s, publicKeyOf(id, s), []byte("info"), []byte("aad"), []byte("secret"))
		if err != nil {
			t.Fatal(err)
		}
		otherSuite := SuiteX25519
		if s == SuiteX25519 {
			otherSuite = SuiteXWing
		}
		flipped := bytes.Clone(sealed)
		flipped[len(flipped)-1] ^= 1
		cases := []struct {
			name      string
			id        *Identity
			s         Suite
			info, aad []byte
			sealed    []byte
			want      error
		}{
			{"wrong info", id, s, []byte("infx"), []byte("aad"), sealed, ErrDecrypt},
			{"wrong aad", id, s, []byte("info"), []byte("aax"), sealed, ErrDecrypt},
			{"empty aad", id, s, []byte("info"), nil, sealed, ErrDecrypt},
			{"wrong key", other, s, []byte("info"), []byte("aad"), sealed, ErrDecrypt},
			{"nil identity", nil, s, []byte("info"), []byte("aad"), sealed, ErrDecrypt},
			{"other suite", id, otherSuite, []byte("info"), []byte("aad"), sealed, nil},
			{"unknown suite", id, 9, []byte("info"), []byte("aad"), sealed, ErrSuite},
			{"flipped tag", id, s, []byte("info"), []byte("aad"), flipped, ErrDecrypt},
			{"empty", id, s, []byte("info"), []byte("aad"), nil, ErrMalformed},
			{"enc only", id, s, []byte("info"), []byte("aad"), sealed[:s.encSize()], ErrMalformed},
			{"one short of a tag", id, s, []byte("info"), []byte("aad"), sealed[:s.encSize()+aeadOverhead-1], ErrMalformed},
			{"truncated ciphertext", id, s, []byte("info"), []byte("aad"), sealed[:len(sealed)-1], ErrDecrypt},
		}
		for _, c := range cases {
			t.Run(s.String()+"/"+c.name, func(t *testing.T) {
				pt, err := c.id.OpenFrom(c.s, c.info, c.aad, c.sealed)
				if err == nil {
					t.Fatalf("opened: %q", pt)
				}
				if c.want != nil && !errors.Is(err, c.want) {
					t.Fatalf("error %v, want %v", err, c.want)
				}
			})
		}
	}
}

func TestSealToRefuses(t *testing.T) {
	id := newID(t)
	cases := []struct {
		name string
		s    Suite
		key  []byte
		want error
	}{
		{"unknown suite", 0, id.Public().X25519, ErrSuite},
		{"x25519 key as xwing", SuiteXWing, id.Public().X25519, ErrMalformed},
		{"xwing key as x25519", SuiteX25519, id.Public().XWing, ErrMalformed},
		{"short xwing key", SuiteXWing, id.Public().XWing[:1215], ErrMalformed},
		{"nil key", SuiteX25519, nil, ErrMalformed},
		{"all-zero x25519 key", SuiteX25519, make([]byte, 32), nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := SealTo(c.s, c.key, nil, nil, []byte("x"))
			if err == nil {
				t.Fatal("sealed")
			}
			if c.want != nil && !errors.Is(err, c.want) {
				t.Fatalf("error %v, want %v", err, c.want)
			}
		})
	}
}

func FuzzOpenFrom(f *testing.F) {
	id, err := NewIdentity()
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range suites {
		sealed, err := SealTo(s, publicKeyOf(id, s), []byte("i"), []byte("a"), []byte("p"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(s), sealed)
	}
	f.Fuzz(func(t *testing.T, s uint8, sealed []byte) {
		pt, err := id.OpenFrom(Suite(s), []byte("i"), []byte("a"), sealed)
		if err != nil {
			if !errors.Is(err, ErrSuite) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrDecrypt) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if !bytes.Equal(pt, []byte("p")) {
			t.Fatalf("opened to %q", pt)
		}
	})
}
