package metrics

import (
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/postern/postern/transport"
)

// TestClassesAreTransportClasses: the class label's fixed set is exactly
// the names of transport.Class, so a class added there cannot end up as
// "other" here.
func TestClassesAreTransportClasses(t *testing.T) {
	var names []string
	for c := transport.Class(0); c < 64; c++ { // past the last class, String is "unknown"
		if n := c.String(); !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	got, want := slices.Sorted(slices.Values(Classes)), slices.Sorted(slices.Values(names))
	if !slices.Equal(got, want) {
		t.Fatalf("metrics.Classes %v, transport classes %v", got, want)
	}
	p := NewProbe("test")
	for _, c := range []transport.Class{transport.ClassUDPSilent, transport.ClassNetworkDown, transport.ClassRelayDown} {
		p.Failure(relayA, "h3", c.String(), 0)
		if v := testutil.ToFloat64(p.failures.WithLabelValues(relayA, "h3", c.String())); v != 1 {
			t.Errorf("%v: counter %v, want 1", c, v)
		}
	}
}
