package server_test

import (
	"runtime"
	"testing"

	"github.com/postern/postern/relay"
	"github.com/postern/postern/relay/relaytest"
	"github.com/postern/postern/relay/server"
	"github.com/postern/postern/relay/store"
)

// A Send frame's payload comes from a pool and goes back once the store
// has the envelope, so the relay does not allocate an envelope's size per
// Send. The frames are encoded before the count and
// carry the same envelope, which the memory store keeps once, so what is
// counted is the relay's own reading and answering. Under the race
// detector sync.Pool drops a quarter of what it is given, so this test
// runs without it; .ci/run runs it so.
func TestSendPayloadPooled(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector; .ci/run runs this test without it")
	}
	r := relaytest.New(t, store.Options{}, server.Config{})
	mb := relaytest.NewMailbox(t, r.Connect(t), nil)
	env := mb.Seal(t, "pooled")
	cc, sc := relaytest.Pipe(t)
	r.Serve(sc, "test")
	defer cc.Close()
	if _, err := cc.Write(relay.AppendFrame(nil, relay.ClientHello{Min: relay.ProtocolVersion, Max: relay.ProtocolVersion})); err != nil {
		t.Fatal(err)
	}
	if _, _, err := relay.ReadFrame(cc); err != nil {
		t.Fatal(err)
	}
	const warm, n = 32, 256
	frames := make([][]byte, warm+n)
	for i := range frames {
		frames[i] = relay.AppendFrame(nil, relay.Send{Req: uint32(i + 1), Envelope: env})
	}
	send := func(f []byte) {
		t.Helper()
		if _, err := cc.Write(f); err != nil {
			t.Fatal(err)
		}
		typ, p, err := relay.ReadFrame(cc)
		if err != nil {
			t.Fatal(err)
		}
		if res, err := relay.ParseResult(p); typ != relay.FrameResult || err != nil || res.Code != relay.CodeOK {
			t.Fatalf("Send answered with frame %d, %+v, %v", typ, res, err)
		}
	}
	for _, f := range frames[:warm] {
		send(f)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for _, f := range frames[warm:] {
		send(f)
	}
	runtime.ReadMemStats(&after)
	per := float64(after.TotalAlloc-before.TotalAlloc) / n
	t.Logf("%.0f bytes allocated per Send of a %d-byte envelope (relay and test client)", per, len(env))
	if per >= float64(len(env))/2 {
		t.Errorf("a Send of a %d-byte envelope allocated %.0f bytes: its payload is not pooled", len(env), per)
	}
}
