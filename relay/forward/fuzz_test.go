package forward

import (
	"bytes"
	"errors"
	"testing"

	"github.com/postern/postern/envelope"
)

func FuzzDest(f *testing.F) {
	g := readGolden(f)
	f.Add(g.layer)
	f.Add(g.layer[:HeaderSize])
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, layer []byte) {
		dest, err := Dest(layer)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if len(layer) > MaxLayer || string(layer[:4]) != Magic || !bytes.Equal(dest[:], layer[9:41]) {
			t.Fatalf("Dest accepted a bad layer (%d bytes)", len(layer))
		}
	})
}

func FuzzOpen(f *testing.F) {
	g := readGolden(f)
	f.Add(g.layer)
	flipped := bytes.Clone(g.layer)
	flipped[len(flipped)-1] ^= 1
	f.Add(flipped)
	f.Add(g.layer[:HeaderSize+100])
	f.Fuzz(func(t *testing.T, layer []byte) {
		o, err := NewOpener(g.id, g.relayKey, g.epoch, 4)
		if err != nil {
			t.Fatal(err)
		}
		sendCap, env, done, err := o.Open(layer)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrWrongRelay) &&
				!errors.Is(err, ErrWrongEpoch) && !errors.Is(err, ErrDecrypt) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if _, err := envelope.PeekMailbox(env); err != nil || len(sendCap) > MaxCapLen {
			t.Fatal("Open returned a bad Send")
		}
		if _, _, _, err := o.Open(layer); !errors.Is(err, ErrInFlight) {
			t.Fatalf("open while the first is being stored: %v", err)
		}
		done(false)
		if _, _, err := openStored(o, layer); err != nil {
			t.Fatalf("open after the first was not stored: %v", err)
		}
		if _, _, err := openStored(o, layer); !errors.Is(err, ErrReplay) {
			t.Fatalf("open after one was stored: %v", err)
		}
	})
}
