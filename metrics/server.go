package metrics

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultAddr is the default metrics listen address: loopback, the port
// commonly used by Prometheus exporters of this kind.
const DefaultAddr = "127.0.0.1:9464"

// Reserved is an address the metrics listener must never share, such as a
// transport listener's, with the name of the config field it comes from.
type Reserved struct {
	Field string // for example "https_listen"
	Addr  string // host:port
}

// Overlaps reports whether listeners on host:port addresses a and b would
// share a port: the same port number, not 0, and hosts that are equal, that
// are not both IP literals, or of which one is unspecified (0.0.0.0, ::, or
// empty). TCP and UDP are not told apart: a metrics port never equals a
// public transport port, whatever the protocol.
func Overlaps(a, b string) bool {
	ah, ap, err1 := net.SplitHostPort(a)
	bh, bp, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || ap != bp || ap == "0" || ap == "" {
		return false
	}
	aip, bip := net.ParseIP(ah), net.ParseIP(bh)
	if ah == "" || bh == "" || (aip != nil && aip.IsUnspecified()) || (bip != nil && bip.IsUnspecified()) {
		return true
	}
	if aip == nil || bip == nil {
		// A host name may resolve to the other address.
		return true
	}
	return aip.Equal(bip)
}

// Health says whether the process can do its job: nil, or why not (a
// short text with no identifier, shown on /healthz).
type Health func() error

// Handler serves g on /metrics, "ok" on /livez while the process serves,
// and on /healthz "ok" or, when health (if not nil) returns an error, 503
// with the reason; every other path is 404. Point liveness probes at
// /livez and readiness at /healthz: a relay whose disk is full should
// stop getting new users, not be restarted.
func Handler(g prometheus.Gatherer, health *atomic.Pointer[Health]) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if h := health.Load(); h != nil && *h != nil {
			if err := (*h)(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				io.WriteString(w, "unhealthy: "+err.Error()+"\n")
				return
			}
		}
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/", http.NotFound)
	return mux
}

// Server is a running metrics listener.
type Server struct {
	ln     net.Listener
	srv    *http.Server
	done   chan struct{}
	health atomic.Pointer[Health]
}

// SetHealth sets what /healthz checks.
func (s *Server) SetHealth(h Health) { s.health.Store(&h) }

// ErrReserved is wrapped by Listen when the address would share a port
// with a reserved one.
var ErrReserved = errors.New("metrics must have their own port, never a transport's")

// Listen serves g (see Handler) on the TCP address addr until Close. It
// refuses an addr that overlaps any reserved address; when addr asks for
// port 0 and the system picks a reserved port number, it picks again.
func Listen(addr string, g prometheus.Gatherer, reserved ...Reserved) (*Server, error) {
	for _, r := range reserved {
		if Overlaps(addr, r.Addr) {
			return nil, fmt.Errorf("metrics address %s shares its port with %s (%s): %w", addr, r.Field, r.Addr, ErrReserved)
		}
	}
	var ln net.Listener
	for attempt := 0; ; attempt++ {
		var err error
		ln, err = net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("metrics listener: %w", err)
		}
		clash := ""
		for _, r := range reserved {
			if Overlaps(ln.Addr().String(), r.Addr) {
				clash = r.Field
			}
		}
		if clash == "" {
			break
		}
		ln.Close()
		if attempt == 10 {
			return nil, fmt.Errorf("metrics address %s: the system keeps picking the port of %s: %w", addr, clash, ErrReserved)
		}
	}
	s := &Server{ln: ln, done: make(chan struct{})}
	s.srv = &http.Server{
		Handler:           Handler(g, &s.health),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		// net/http logs peer addresses on some errors; they must not leave
		// the process.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go func() {
		defer close(s.done)
		s.srv.Serve(ln)
	}()
	return s, nil
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops the listener and closes open connections.
func (s *Server) Close() error {
	err := s.srv.Close()
	<-s.done
	return err
}
