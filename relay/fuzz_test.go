package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"testing"

	"github.com/postern/postern/relay/store"
)

// FuzzReadFrame feeds arbitrary bytes to the frame reader and every
// request handler; nothing may panic, and a frame that parsed re-encodes to
// the same bytes.
func FuzzReadFrame(f *testing.F) {
	req := []byte{0, 0, 0, 1}
	f.Add(appendFrame(nil, frameClientHello, helloMagic[:], []byte{1, 1}))
	f.Add(appendFrame(nil, frameCreate, req, make([]byte, 32+32+1+64)))
	f.Add(appendFrame(nil, frameSend, req, []byte{0}, make([]byte, 4096)))
	f.Add(appendFrame(nil, frameFetch, req, make([]byte, 32+2+8+64)))
	f.Add(appendFrame(nil, frameAck, req, make([]byte, 32), []byte{0, 1}, make([]byte, 32+64)))
	f.Add(appendFrame(nil, frameRotate, req, make([]byte, 32+32+32+1+128)))
	f.Add(appendFrame(nil, framePing, req, []byte("x")))
	f.Add(appendFrame(nil, frameResult, req, []byte{0, 0, 0, 0}))
	f.Add(appendFrame(nil, frameDeliver, req, make([]byte, 32+32+8+1)))
	f.Add([]byte{0x11, 0xff, 0xff, 0xff, 0xff})
	st := store.NewMemory(store.Options{})
	f.Cleanup(func() { st.Close() })
	srv, err := NewServer(ServerConfig{Store: st})
	if err != nil {
		f.Fatal(err)
	}
	// A mailbox that exists, so owner checks reach signature verification.
	pub, _, _ := ed25519.GenerateKey(nil)
	st.CreateMailbox(context.Background(), [32]byte{}, pub, nil)
	f.Fuzz(func(t *testing.T, b []byte) {
		ft, p, err := readFrame(bufio.NewReader(bytes.NewReader(b)))
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, errFrameTooLarge) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if got := appendFrame(nil, ft, p); !bytes.Equal(got, b[:len(got)]) {
			t.Fatal("frame does not re-encode")
		}
		decodeResult(p)
		decodeDeliver(p)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ss := &session{srv: srv, ctx: ctx, cancel: cancel, bw: bufio.NewWriter(io.Discard),
			subs: make(map[[32]byte]*subscription), sem: make(chan struct{}, 4)}
		ss.handle(ft, p)
		cancel()
		ss.wg.Wait()
	})
}
