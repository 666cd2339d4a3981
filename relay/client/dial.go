package relay

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/postern/postern/transport"
	"github.com/postern/postern/transport/descriptor"
)

// DialOptions tune Dial. The zero value tries every endpoint in the
// descriptor's order with a 15 s budget each.
type DialOptions struct {
	// Transport, if set, restricts dialing to endpoints of that transport.
	Transport string
	// LocalAddr, if set, is the local IP to dial from.
	LocalAddr string
	// PerEndpoint bounds each attempt (transport handshake plus protocol
	// hello). Default 15s.
	PerEndpoint time.Duration
}

// ErrNoEndpoint is returned by Dial when no endpoint matches the options.
var ErrNoEndpoint = errors.New("relay: descriptor has no usable endpoint")

// Dial opens a session to the relay d describes, trying its endpoints in
// order through reg. The error lists each transport and its failure class,
// never an address.
func Dial(ctx context.Context, reg *transport.Registry, d *descriptor.Descriptor, opts DialOptions) (*Client, error) {
	if opts.PerEndpoint <= 0 {
		opts.PerEndpoint = 15 * time.Second
	}
	var fails []string
	var last error
	for _, ep := range d.Endpoints {
		tep := ep.TransportEndpoint()
		if opts.Transport != "" && opts.Transport != tep.Transport {
			continue
		}
		tep.LocalAddr = opts.LocalAddr
		dctx, cancel := context.WithTimeout(ctx, opts.PerEndpoint)
		conn, err := reg.Dial(dctx, tep)
		if err == nil {
			var c *Client
			c, err = NewClient(dctx, conn)
			if err == nil {
				cancel()
				return c, nil
			}
			err = transport.Classify("hello", tep.Transport, err)
		}
		cancel()
		last = err
		fails = append(fails, fmt.Sprintf("%s: %v", tep.Transport, err))
		if ctx.Err() != nil {
			break
		}
	}
	if len(fails) == 0 {
		return nil, fmt.Errorf("%w (relay %s)", ErrNoEndpoint, d.RelayID())
	}
	return nil, fmt.Errorf("relay %s unreachable (%s): %w", d.RelayID(), strings.Join(fails, "; "), last)
}
