package h3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/quic-go/qpack"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http/httpguts"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/browser"
)

// The client's session request is written by this file, not by quic-go's
// HTTP/3 client, whose API cannot stream a request body straight onto the
// request stream:
//
//   - ClientConn.RoundTrip copies the body from the caller's io.Reader in
//     8 KiB pieces on a goroutine of its own (so a session needs an io.Pipe,
//     a copy and a goroutine hand-off per 8 KiB, and every 8 KiB becomes a
//     DATA frame and a flush of its own);
//   - RequestStream.SendRequestHeader, which would leave the writing to the
//     caller, refuses a request that has a body, and for a POST without one
//     it sends "content-length: 0", after which no DATA frame may follow
//     (RFC 9114, section 4.1.2).
//
// What is missing upstream is a SendRequestHeader for a request whose body
// the caller writes itself (content length unknown). Until then the client
// opens the request stream on the QUIC connection itself and speaks the
// request stream's framing (RFC 9114, sections 4.1 and 7): one HEADERS
// frame out (QPACK with the static table only, as quic-go's encoder), the
// response's HEADERS frame in, then DATA frames both ways, written and read
// straight from the caller's buffers. The http3.ClientConn still runs the
// rest of the connection: the control stream with Chromium's SETTINGS, and
// the relay's control and QPACK streams. It does not know of the session's
// stream, so a GOAWAY (which the relay never sends: it closes connections
// with CONNECTION_CLOSE) would close the connection at once rather than
// after the session.

// maxInterim bounds the 1xx responses read before the final one.
const maxInterim = 5

// requestHeaders returns the request's HEADERS frame: the pseudo-header
// fields in the browser profile's order, then the profile's fetch headers
// in their order, then any other field, sorted. Connection-specific fields,
// host and content-length are not sent: the body is streamed.
func requestHeaders(req *http.Request) ([]byte, error) {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	host, err := httpguts.PunycodeHostPort(host)
	if err != nil || !httpguts.ValidHostHeader(host) {
		return nil, errors.New("h3 request: invalid authority; check the relay descriptor's SNI and address")
	}
	pseudo := map[string]string{":method": req.Method, ":authority": host,
		":scheme": req.URL.Scheme, ":path": req.URL.RequestURI()}
	var block bytes.Buffer
	enc := qpack.NewEncoder(&block)
	for _, name := range browser.Current.HTTP2.PseudoHeaders {
		enc.WriteField(qpack.HeaderField{Name: name, Value: pseudo[name]})
	}
	for _, name := range headerOrder(req.Header) {
		for _, v := range req.Header[http.CanonicalHeaderKey(name)] {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, fmt.Errorf("h3 request: invalid value of header field %q", name)
			}
			enc.WriteField(qpack.HeaderField{Name: name, Value: v})
		}
	}
	frame := appendFrameHeader(make([]byte, 0, 16+block.Len()), frameHeaders, block.Len())
	return append(frame, block.Bytes()...), nil
}

// headerOrder returns the lower-case names of h that are sent, in the
// browser profile's order.
func headerOrder(h http.Header) []string {
	names := make([]string, 0, len(h))
	for k := range h {
		switch name := strings.ToLower(k); name {
		case "host", "content-length", "connection", "proxy-connection",
			"transfer-encoding", "upgrade", "keep-alive":
		default:
			if httpguts.ValidHeaderFieldName(name) {
				names = append(names, name)
			}
		}
	}
	slices.Sort(names)
	order := func(name string) int {
		if i := slices.IndexFunc(browser.Current.FetchHeaders, func(h browser.Header) bool { return h.Name == name }); i >= 0 {
			return i
		}
		return len(browser.Current.FetchHeaders)
	}
	slices.SortStableFunc(names, func(a, b string) int { return order(a) - order(b) })
	return names
}

// readResponse reads the final response's HEADERS frame, after at most
// maxInterim 1xx responses. maxHeader bounds a header block.
func (f *frameReader) readResponse(maxHeader uint64) (*http.Response, error) {
	for range maxInterim + 1 {
		typ, length, err := f.next()
		switch {
		case err == io.EOF:
			return nil, frameError(http3.ErrCodeRequestIncomplete, "stream ended before the response")
		case err != nil:
			return nil, err
		case typ != frameHeaders:
			return nil, frameError(http3.ErrCodeFrameUnexpected, "DATA frame before the response's HEADERS")
		case length > maxHeader:
			return nil, frameError(http3.ErrCodeExcessiveLoad, "response header block of %d bytes (most: %d)", length, maxHeader)
		}
		block := make([]byte, length)
		if _, err := io.ReadFull(f.r, block); err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				err = frameError(http3.ErrCodeRequestIncomplete, "stream ended inside the response's HEADERS")
			}
			return nil, err
		}
		res, err := decodeResponse(block)
		if err != nil {
			return nil, err
		}
		if res.StatusCode >= 200 {
			return res, nil
		}
	}
	return nil, frameError(http3.ErrCodeExcessiveLoad, "more than %d interim responses", maxInterim)
}

// decodeResponse decodes a response header block (QPACK, static table).
func decodeResponse(block []byte) (*http.Response, error) {
	res := &http.Response{Proto: "HTTP/3.0", ProtoMajor: 3, Header: make(http.Header), ContentLength: -1}
	decode := qpack.NewDecoder().Decode(block)
	for {
		hf, err := decode()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, &http3.Error{ErrorCode: http3.ErrCodeQPACKDecompressionFailed, ErrorMessage: err.Error()}
		}
		switch {
		case hf.Name == ":status" && res.StatusCode == 0 && len(hf.Value) == 3:
			code, err := strconv.Atoi(hf.Value)
			if err != nil || code < 100 {
				return nil, frameError(http3.ErrCodeMessageError, "malformed :status in the response")
			}
			res.StatusCode, res.Status = code, hf.Value+" "+http.StatusText(code)
		case hf.IsPseudo():
			return nil, frameError(http3.ErrCodeMessageError, "unexpected pseudo-header field in the response")
		default:
			res.Header.Add(http.CanonicalHeaderKey(hf.Name), hf.Value)
		}
	}
	if res.StatusCode == 0 {
		return nil, frameError(http3.ErrCodeMessageError, "response without :status")
	}
	return res, nil
}

// requestStream is the client's session request: Roundtrip opens the
// stream and sends the request; the session then writes to str directly.
type requestStream struct {
	qc  *quic.Conn
	str *quic.Stream // set by roundTrip
}

// roundTrip is the session's httpsession.Wire.RoundTrip. The request's
// body is not read: the session writes its bytes straight to str.
// Canceling the request's context resets the stream, also after the
// response arrived (that is how the session's Close ends it).
func (s *requestStream) roundTrip(req *http.Request) (*http.Response, error) {
	hdr, err := requestHeaders(req)
	if err != nil {
		return nil, err
	}
	str, err := s.qc.OpenStreamSync(req.Context())
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(req.Context(), func() {
		str.CancelRead(codeCanceled)
		str.CancelWrite(codeCanceled)
	})
	fr := &frameReader{r: str}
	var res *http.Response
	_, err = str.Write(hdr)
	if early := transport.EarlyData(req.Context()); err == nil && len(early) > 0 {
		// The session's first bytes, before the answer (httpsession.Wire.Early).
		_, err = (&dataWriter{w: str}).Write(early)
	}
	if err == nil {
		res, err = fr.readResponse(chromeMaxFieldSectionSize)
	}
	if err != nil {
		stop()
		str.CancelRead(codeCanceled)
		str.CancelWrite(codeCanceled)
		return nil, err
	}
	s.str = str
	res.Request = req
	res.Body = &responseBody{fr: fr, str: str}
	return res, nil
}

// responseBody is the response body: the payload of the relay's DATA
// frames.
type responseBody struct {
	fr  *frameReader
	str *quic.Stream
}

func (b *responseBody) Read(p []byte) (int, error) { return b.fr.Read(p) }

// Close stops reading (STOP_SENDING to the relay).
func (b *responseBody) Close() error {
	b.str.CancelRead(codeCanceled)
	return nil
}
