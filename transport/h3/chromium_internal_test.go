package h3

import (
	"crypto/tls"
	"net"
	"slices"
	"testing"
)

// Over IPv6 Chromium's Initial datagrams are 20 bytes shorter, so that
// both fill IP packets of the same size (TestInitialLikeChromium checks
// IPv4 against the captures).
func TestInitialPacketSizeByFamily(t *testing.T) {
	for _, c := range []struct {
		ip   net.IP
		want uint16
	}{
		{net.IPv4(127, 0, 0, 1), 1250},
		{net.IPv4(127, 0, 0, 1).To4(), 1250},
		{net.IPv6loopback, 1230},
	} {
		if got := clientQUICConfig(&net.UDPAddr{IP: c.ip}).InitialPacketSize; got != c.want {
			t.Errorf("%v: InitialPacketSize %d, want %d", c.ip, got, c.want)
		}
	}
}

func TestGREASESettingIDsAreReserved(t *testing.T) {
	for range 1000 {
		if id := greaseSettingID(); (id-0x21)%0x1f != 0 || id < 0x21 {
			t.Fatalf("GREASE setting id %#x is not 0x1f*N+0x21", id)
		}
	}
	a, b := clientHTTP3().AdditionalSettings, clientHTTP3().AdditionalSettings
	if len(a) != 3 || len(b) != 3 {
		t.Fatalf("AdditionalSettings %v, want QPACK capacity, blocked streams and one GREASE", a)
	}
}

// The curves come from the browser profile, GREASE dropped.
func TestClientCurvesFromProfile(t *testing.T) {
	want := []tls.CurveID{tls.X25519MLKEM768, tls.X25519, tls.CurveP256, tls.CurveP384}
	if got := clientCurves(); !slices.Equal(got, want) {
		t.Errorf("clientCurves() = %v, want Chromium 156's %v", got, want)
	}
}
