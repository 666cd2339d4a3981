package https

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/browser"
	"github.com/postern/postern/transport/httpsession"
)

// The client's HTTP/2 (RFC 9113) is its own, so that every byte before and
// with the session request is the browser profile's (browser.HTTP2):
//
//	record 1  preface, SETTINGS (the profile's, in its order),
//	          WINDOW_UPDATE on stream 0 (the profile's increment)
//	record 2  HEADERS on stream 1: END_HEADERS|PRIORITY, exclusive on
//	          stream 0, the profile's fetch weight; pseudo-headers and
//	          header fields in the profile's order, HPACK as the browser
//	          encodes them (hpackEncoder)
//	then      DATA frames of the request body, one TLS record each, written
//	          straight from the session's writes (h2Upload), and an empty
//	          DATA frame with END_STREAM at the end
//
// A connection carries exactly one request, the session: that keeps the
// client small (no stream table, no dynamic HPACK state on the send side).
// Server push is off (SETTINGS_ENABLE_PUSH 0): a PUSH_PROMISE is a
// connection error.
const (
	// h2MaxFrame is the largest frame payload the client accepts: the
	// default, since the profile advertises no SETTINGS_MAX_FRAME_SIZE.
	h2MaxFrame = 16384
	// h2MaxData is the largest DATA payload the client sends: a frame and
	// its 9-byte header fit one TLS record (16384 bytes of plaintext), and
	// a relay that sends the bytes of one frame on (an echo, an entry
	// relay) with its 4-byte record header in front still fits them in
	// one frame and one record of its own (see dataPiece in server.go;
	// smaller frames that the engine's Read returns together may take
	// two).
	h2MaxData = 16384 - 9 - recordHeaderLen
	// h2FrameHeader is the length of a frame header.
	h2FrameHeader = 9
	// h2DefaultWindow is every window's size before SETTINGS or
	// WINDOW_UPDATE change it.
	h2DefaultWindow = 65535
	// h2Stream is the stream of the session request.
	h2Stream = 1
)

var (
	errH2Pushed    = errors.New("relay sent PUSH_PROMISE although push is off: not an HTTP/2 server Postern can talk to")
	errH2Refused   = errors.New("relay sent GOAWAY before processing the session request; retry")
	errH2NoStatus  = errors.New("relay answered without a valid :status")
	errH2Flow      = errors.New("relay sent more DATA than the flow-control window allows")
	errH2BigHeader = errors.New("session request headers do not fit one HEADERS frame")
	errH2Used      = errors.New("https: a connection carries one request")
)

// h2Client is the client end of one HTTP/2 connection with one request.
type h2Client struct {
	conn net.Conn // the TLS connection
	cork corkable // beneath conn, if it can gather a write's records (cork.go)
	// below is beneath conn too when it is a corkConn, which tells
	// when bytes arrive (Arrivals); partial counts the bytes the framer
	// has read of a frame it has not returned yet.
	below   *corkConn
	partial atomic.Int64
	prof    *browser.HTTP2
	fr      *http2.Framer
	bw      *bufio.Writer
	wmu     sync.Mutex  // frame writes (fr's write side and bw)
	used    atomic.Bool // RoundTrip was called

	mu          sync.Mutex
	cond        *sync.Cond // send windows, stream and connection state
	sendConn    int64      // connection send window
	sendStream  int64      // stream send window
	peerFrame   int        // peer's SETTINGS_MAX_FRAME_SIZE
	peerInitial int64      // peer's SETTINGS_INITIAL_WINDOW_SIZE, 0 until it sends one
	streamErr   error      // stream over for sending: reset, canceled or failed
	err         error      // connection failed
	done        chan struct{}

	res  chan *http.Response // the response headers, once
	body *h2Body
	// beforeWait, if set (tests), runs in RoundTrip before it waits for
	// the response.
	beforeWait func()

	recvConn, recvStream int64 // receive windows left
	ackConn, ackStream   int64 // consumed bytes not yet returned by WINDOW_UPDATE
	winConn, winStream   int64 // full receive windows
}

// newH2Client starts HTTP/2 on conn as prof does: it writes the preface,
// SETTINGS and WINDOW_UPDATE in one write (one TLS record). Reading starts
// with RoundTrip, once the request's HEADERS are out: so nothing (such as
// the ACK of the relay's SETTINGS) gets between the two records, as in a
// browser's first request.
func newH2Client(conn net.Conn, prof *browser.HTTP2) (*h2Client, error) {
	// bw carries control frames only (DATA frames are written straight
	// to conn); a larger frame bypasses it with one write of its own.
	bw := bufio.NewWriterSize(conn, 4<<10)
	cc := &h2Client{
		conn: conn, prof: prof, bw: bw,
		sendConn: h2DefaultWindow, sendStream: h2DefaultWindow, peerFrame: h2MaxFrame,
		done: make(chan struct{}), res: make(chan *http.Response, 1),
		winConn: h2DefaultWindow + int64(prof.WindowUpdate), winStream: h2DefaultWindow,
	}
	cc.fr = http2.NewFramer(bw, frameReads{conn, &cc.partial})
	cc.cond = sync.NewCond(&cc.mu)
	if v, ok := prof.Setting(browser.SettingInitialWindowSize); ok {
		cc.winStream = int64(v)
	}
	cc.recvConn, cc.recvStream = cc.winConn, cc.winStream
	tableSize := uint32(4096)
	if v, ok := prof.Setting(browser.SettingHeaderTableSize); ok {
		tableSize = v
	}
	cc.fr.ReadMetaHeaders = hpack.NewDecoder(tableSize, nil)
	if v, ok := prof.Setting(browser.SettingMaxHeaderListSize); ok {
		cc.fr.MaxHeaderListSize = v
	}
	cc.fr.SetMaxReadFrameSize(h2MaxFrame)
	cc.body = &h2Body{cc: cc}
	cc.body.cond = sync.NewCond(&cc.body.mu)

	settings := make([]http2.Setting, len(prof.Settings))
	for i, s := range prof.Settings {
		settings[i] = http2.Setting{ID: http2.SettingID(s.ID), Val: s.Val}
	}
	bw.WriteString(http2.ClientPreface)
	cc.fr.WriteSettings(settings...)
	if prof.WindowUpdate > 0 {
		cc.fr.WriteWindowUpdate(0, prof.WindowUpdate)
	}
	if err := bw.Flush(); err != nil {
		return nil, err
	}
	return cc, nil
}

// Close closes the connection.
func (cc *h2Client) Close() error { return cc.conn.Close() }

// RoundTrip sends req as the connection's only request and returns the
// response once its headers arrived. The request body, if any, is sent
// until it ends (END_STREAM) or req's context ends (RST_STREAM).
func (cc *h2Client) RoundTrip(req *http.Request) (*http.Response, error) {
	if !cc.used.CompareAndSwap(false, true) {
		return nil, errH2Used
	}
	block := cc.headerBlock(req)
	if len(block) > h2MaxFrame {
		return nil, errH2BigHeader
	}
	hasBody := req.Body != nil && req.Body != http.NoBody
	cc.wmu.Lock()
	err := cc.fr.WriteHeaders(http2.HeadersFrameParam{
		StreamID: h2Stream, BlockFragment: block, EndStream: !hasBody, EndHeaders: true,
		Priority: http2.PriorityParam{Exclusive: true, Weight: uint8(cc.prof.FetchWeight - 1)},
	})
	if err == nil {
		err = cc.bw.Flush()
	}
	cc.wmu.Unlock()
	if err != nil {
		return nil, err
	}
	ctx := req.Context()
	u, direct := req.Body.(*h2Upload)
	if early := transport.EarlyData(ctx); len(early) > 0 && direct {
		// The session's first bytes, before the answer
		// (httpsession.Wire.Early), written before the reading starts:
		// nothing the relay sends (its SETTINGS, or a refusal and the
		// stream's reset) can come between, and the windows are still
		// the protocol's initial 65,535 bytes, more than early data may
		// be (transport.MaxEarlyData), so the write does not wait.
		if _, err := u.Write(early); err != nil {
			return nil, cmp(cc.connErr(), err)
		}
	}
	go cc.readLoop()
	stop := context.AfterFunc(ctx, func() { cc.cancelStream(ctx.Err()) })
	if hasBody && !direct {
		go cc.sendBody(req.Body)
	}
	if cc.beforeWait != nil {
		cc.beforeWait()
	}
	select {
	case res := <-cc.res:
		res.Request = req
		return res, nil
	case <-cc.done:
		// The response may have come before the connection ended (a
		// relay that answers and closes): select picks either at random
		// when both are ready, and an answer was taken for a failure
		// once in about a thousand round trips.
		select {
		case res := <-cc.res:
			res.Request = req
			return res, nil
		default:
		}
		stop()
		return nil, cc.connErr()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// headerBlock encodes the request's header fields as the profile does:
// the pseudo-headers in its order, then the profile's fetch headers in
// their order, then any other field, sorted.
func (cc *h2Client) headerBlock(req *http.Request) []byte {
	enc := hpackEncoder{unindexed: cc.prof.Unindexed}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	pseudo := map[string]string{":method": req.Method, ":authority": host,
		":scheme": req.URL.Scheme, ":path": req.URL.RequestURI()}
	var block []byte
	for _, name := range cc.prof.PseudoHeaders {
		block = enc.appendField(block, name, pseudo[name])
	}
	names := make([]string, 0, len(req.Header))
	for k := range req.Header {
		names = append(names, strings.ToLower(k))
	}
	slices.Sort(names)
	order := func(name string) int {
		if i := slices.IndexFunc(browser.Current.FetchHeaders, func(h browser.Header) bool { return h.Name == name }); i >= 0 {
			return i
		}
		return len(browser.Current.FetchHeaders)
	}
	slices.SortStableFunc(names, func(a, b string) int { return order(a) - order(b) })
	for _, name := range names {
		for _, v := range req.Header[http.CanonicalHeaderKey(name)] {
			block = enc.appendField(block, name, v)
		}
	}
	return block
}

// sendBody copies a request body other than an h2Upload into DATA frames
// within the send windows and ends the stream when the body ends.
func (cc *h2Client) sendBody(body io.ReadCloser) {
	defer body.Close() // unblocks the writer if sending failed
	buf := make([]byte, h2MaxData)
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if _, werr := cc.writeData(buf[:n]); werr != nil {
				return
			}
		}
		if err == io.EOF {
			cc.endStream()
			return
		}
		if err != nil {
			cc.cancelStream(err)
			return
		}
	}
}

// endStream sends the empty DATA frame with END_STREAM.
func (cc *h2Client) endStream() error {
	return cc.writeFrame(func() error { return cc.fr.WriteData(h2Stream, true, nil) })
}

// framePool holds the buffers in which both ends build or read a frame
// (a TLS record's worth, 16384 bytes): a connection holds one only while
// it writes, and the relay's engine one per queued payload.
var framePool = sync.Pool{New: func() any { return new([16384]byte) }}

// writeData sends p as DATA frames, waiting for window as needed, and
// returns how much of p it sent. Each frame leaves in one write to the
// TLS connection, so in one TLS record.
func (cc *h2Client) writeData(p []byte) (sent int, err error) {
	// More than one frame goes out in runs gathered beneath TLS
	// (cork.go): each run is the frames there is window for, and its
	// last frame's write sends it, so no run spans a wait for window.
	corked := cc.cork != nil && len(p) > h2MaxData
	gathering := false
	if corked {
		defer func() {
			// After a failed write, what the run gathered goes out now,
			// or not at all. Under wmu, like every frame write: a reset
			// that finds wmu taken closes the connection instead.
			cc.wmu.Lock()
			uerr := cc.cork.uncork()
			cc.wmu.Unlock()
			if uerr != nil && err == nil {
				err = uerr
			}
		}()
	}
	for len(p) > 0 {
		cc.mu.Lock()
		for cc.streamErr == nil && cc.err == nil && (cc.sendConn <= 0 || cc.sendStream <= 0) {
			if gathering { // the peer lowered its window mid-run
				gathering = false
				cc.mu.Unlock()
				cc.wmu.Lock()
				err := cc.cork.uncork()
				cc.wmu.Unlock()
				if err != nil {
					return sent, err
				}
				cc.mu.Lock()
				continue
			}
			cc.cond.Wait()
		}
		if err := cmp(cc.streamErr, cc.err); err != nil {
			cc.mu.Unlock()
			return sent, err
		}
		n := int(min(int64(len(p)), cc.sendConn, cc.sendStream, int64(min(h2MaxData, cc.peerFrame))))
		cc.sendConn -= int64(n)
		cc.sendStream -= int64(n)
		dry := cc.sendConn <= 0 || cc.sendStream <= 0
		cc.mu.Unlock()
		buf := framePool.Get().(*[16384]byte)
		// Length (24 bits), type DATA (0), no flags, stream.
		buf[0], buf[1], buf[2], buf[3], buf[4] = byte(n>>16), byte(n>>8), byte(n), 0, 0
		binary.BigEndian.PutUint32(buf[5:9], h2Stream)
		copy(buf[h2FrameHeader:], p[:n])
		switch endsRun := dry || n == len(p); {
		case corked && !gathering && !endsRun:
			cc.cork.cork()
			gathering = true
		case gathering && endsRun:
			cc.cork.last()
			gathering = false
		}
		err := cc.writeFrame(func() error {
			_, err := cc.conn.Write(buf[:h2FrameHeader+n])
			return err
		})
		framePool.Put(buf)
		if err != nil {
			return sent, err
		}
		sent += n
		p = p[n:]
	}
	return sent, nil
}

// writeFrame writes one frame (or more, in write) and flushes it. The
// buffer is empty between calls, so a write straight to cc.conn keeps
// the order of frames.
func (cc *h2Client) writeFrame(write func() error) error {
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	if err := write(); err != nil {
		return err
	}
	return cc.bw.Flush()
}

// cancelStream ends the stream for sending with err and resets it.
func (cc *h2Client) cancelStream(err error) {
	cc.mu.Lock()
	first := cc.streamErr == nil
	if first {
		cc.streamErr = err
	}
	cc.cond.Broadcast()
	cc.mu.Unlock()
	if first {
		cc.body.fail(err)
		cc.resetStream()
	}
}

// resetStream sends RST_STREAM without waiting behind a frame whose write
// is blocked (a frozen flow fills the socket's buffer and write(2) never
// returns): then it goes from a goroutine of its own, which the
// connection's Close frees with that write. Close must never wait for
// the reset, or a stalled session could not be torn down.
func (cc *h2Client) resetStream() {
	rst := func() error { return cc.fr.WriteRSTStream(h2Stream, http2.ErrCodeCancel) }
	if cc.wmu.TryLock() {
		defer cc.wmu.Unlock()
		if rst() == nil {
			cc.bw.Flush()
		}
		return
	}
	go cc.writeFrame(rst)
}

// connErr returns why the connection failed.
func (cc *h2Client) connErr() error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.err
}

// cmp returns the first non-nil error.
func cmp(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// statusOf returns the :status of a response HEADERS frame.
func statusOf(f *http2.MetaHeadersFrame) (int, error) {
	code, err := strconv.Atoi(f.PseudoValue("status"))
	if err != nil || code < 100 || code > 999 {
		return 0, fmt.Errorf("%w: %q", errH2NoStatus, f.PseudoValue("status"))
	}
	return code, nil
}

// Upload returns the body of a session request whose writes go straight
// out as DATA frames (httpsession.Wire.Upload): the body, for the request
// given to RoundTrip, and its writer are one h2Upload.
func (cc *h2Client) Upload() (io.ReadCloser, httpsession.BodyWriter) {
	u := &h2Upload{cc: cc}
	return u, u
}

// h2Upload is the request body written by the session itself: Write
// sends DATA frames on the calling goroutine, Close ends the stream,
// CloseWithError resets it. RoundTrip never reads it.
type h2Upload struct {
	cc    *h2Client
	mu    sync.Mutex // orders writes and the end of the stream
	ended atomic.Bool
}

var errUploadRead = errors.New("https: the session request body is written, not read")

func (u *h2Upload) Read([]byte) (int, error) { return 0, errUploadRead }

// Write sends p. Any failure reads as io.ErrClosedPipe, as from a pipe
// whose reader gave up: the stream failed or was ended.
func (u *h2Upload) Write(p []byte) (int, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.ended.Load() {
		return 0, io.ErrClosedPipe
	}
	n, err := u.cc.writeData(p)
	if err != nil {
		return n, io.ErrClosedPipe
	}
	return n, nil
}

// Close ends the request body (END_STREAM) once, after a Write in
// progress (which may wait for window; CloseWithError does not wait).
func (u *h2Upload) Close() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.ended.Swap(true) {
		return nil
	}
	return u.cc.endStream()
}

// CloseWithError resets the stream, if RoundTrip opened it; a Write
// waiting for window returns.
func (u *h2Upload) CloseWithError(err error) error {
	u.ended.Store(true)
	if u.cc.used.Load() {
		u.cc.cancelStream(err)
	}
	return nil
}
