package transport

import (
	"net/netip"
	"testing"
)

func TestPublicIP(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1": false, "127.1.2.3": false, "::1": false,
		"10.1.2.3": false, "172.16.0.1": false, "192.168.1.1": false, "fd00::1": false,
		"169.254.169.254": false, "fe80::1": false,
		"100.64.0.1": false, "100.127.255.254": false,
		"0.0.0.0": false, "::": false, "224.0.0.1": false, "ff02::1": false, "255.255.255.255": false,
		"::ffff:127.0.0.1": false, "::ffff:10.0.0.1": false,
		"8.8.8.8": true, "100.128.0.1": true, "2a00:1450::1": true, "::ffff:8.8.8.8": true,
	} {
		if got := PublicIP(netip.MustParseAddr(addr)); got != want {
			t.Errorf("PublicIP(%s) = %v, want %v", addr, got, want)
		}
	}
	if CheckPublic("h3", netip.MustParseAddr("127.0.0.1")) == nil || CheckPublic("h3", netip.MustParseAddr("8.8.8.8")) != nil {
		t.Fatal("CheckPublic")
	}
	if CheckPublic("h3", netip.Addr{}) == nil {
		t.Fatal("CheckPublic took the zero address")
	}
}
