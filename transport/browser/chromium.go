package browser

import utls "github.com/refraction-networking/utls"

// Chromium156 is Debian 12's Chromium 156.0.8078.108 on Linux x86_64, the
// build whose ClientHellos are committed in
// transport/censortest/testdata/chromium-156-*.hex.
//
// The User-Agent is Chromium's reduced form (minor version numbers zeroed).
// sec-ch-ua is what Chromium-branded builds send: the Chromium brand and the
// GREASE brand that Chromium derives from the major version (here
// "Not:A-Brand", version 8, listed first), without the "Google Chrome" brand
// of Google's builds.
var Chromium156 = Profile{
	Name:    "Chromium",
	Version: "156.0.8078.108",
	FetchHeaders: []Header{
		{"sec-ch-ua-platform", `"Linux"`},
		{HeaderUserAgent, "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36"},
		{"sec-ch-ua", `"Not:A-Brand";v="8", "Chromium";v="156"`},
		{HeaderContentType, ""},
		{"sec-ch-ua-mobile", "?0"},
		{"accept", "*/*"},
		{HeaderOrigin, ""},
		{"sec-fetch-site", "same-origin"},
		{"sec-fetch-mode", "cors"},
		{"sec-fetch-dest", "empty"},
		{HeaderReferer, ""},
		{"accept-encoding", "gzip, deflate, br, zstd"},
		{"accept-language", "en-US,en;q=0.9"},
		{HeaderCookie, ""},
		{"priority", "u=1, i"},
	},
	Hello: Hello{
		CipherSuites: []uint16{
			GREASE,
			utls.TLS_AES_128_GCM_SHA256,
			utls.TLS_AES_256_GCM_SHA384,
			utls.TLS_CHACHA20_POLY1305_SHA256,
			utls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			utls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			utls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			utls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			utls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			utls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
			utls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
			utls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
			utls.TLS_RSA_WITH_AES_128_GCM_SHA256,
			utls.TLS_RSA_WITH_AES_256_GCM_SHA384,
			utls.TLS_RSA_WITH_AES_128_CBC_SHA,
			utls.TLS_RSA_WITH_AES_256_CBC_SHA,
		},
		Extensions: []string{
			ExtGREASE,
			"server_name",
			"extended_master_secret",
			"renegotiation_info",
			"supported_groups",
			"ec_point_formats",
			"session_ticket",
			"application_layer_protocol_negotiation",
			"status_request",
			"signature_algorithms",
			"signed_certificate_timestamp",
			"key_share",
			"psk_key_exchange_modes",
			"supported_versions",
			"compress_certificate",
			"application_settings",
			"trust_anchors",
			"encrypted_client_hello",
			ExtGREASE,
			// Only when resuming (testdata/chromium-156-h2.json in
			// transport/https, role "fetch"): last, after the GREASE.
			"pre_shared_key",
		},
		SupportedGroups: []utls.CurveID{GREASE, utls.X25519MLKEM768, utls.X25519, utls.CurveP256, utls.CurveP384},
		KeyShares:       []utls.CurveID{GREASE, utls.X25519MLKEM768, utls.X25519},
		SignatureAlgorithms: []utls.SignatureScheme{
			GREASE,
			sigMLDSA44, sigMLDSA65, sigMLDSA87,
			utls.ECDSAWithP256AndSHA256,
			utls.PSSWithSHA256,
			utls.PKCS1WithSHA256,
			utls.ECDSAWithP384AndSHA384,
			utls.PSSWithSHA384,
			utls.PKCS1WithSHA384,
			utls.PSSWithSHA512,
			utls.PKCS1WithSHA512,
		},
		Versions:        []uint16{GREASE, utls.VersionTLS13, utls.VersionTLS12},
		ALPN:            []string{"h2", "http/1.1"},
		ALPS:            []string{"h2"},
		CertCompression: []utls.CertCompressionAlgo{utls.CertCompressionBrotli},
		// Identifiers of roots in the Chrome Root Store: a constant of the
		// build, the same in every capture.
		TrustAnchors: []string{
			"44947.2.1", "44947.2.6", "44947.2.13", "44947.2.14", "44947.2.15",
			"44947.2.18", "44947.2.19", "44947.2.20",
			"52580.200109.1.7", "52580.200109.1.8", "52580.200109.1.9",
			"52580.200109.1.10", "52580.200109.1.11", "52580.200109.1.12",
			"52580.200109.1.13", "52580.200109.1.18", "52580.200109.1.19",
			"11129.9.1", "11129.9.4", "11129.9.5", "11129.9.6", "11129.9.7",
			"11129.9.8", "11129.9.10", "11129.9.11", "11129.9.12", "11129.9.13",
			"11129.9.15",
		},
	},
	JA4: "t13d1517h2_8daaf6152771_cb7bf5808d99",
	// From transport/https/testdata/chromium-156-h2.json: a fetch() POST
	// is MEDIUM priority (weight 220, "priority: u=1, i"); a navigation
	// is HIGHEST (256, "u=0, i").
	HTTP2: HTTP2{
		Settings: []Setting{
			{SettingHeaderTableSize, 65536},
			{SettingEnablePush, 0},
			{SettingInitialWindowSize, 6291456},
			{SettingMaxHeaderListSize, 262144},
		},
		WindowUpdate:  15663105,
		PseudoHeaders: []string{":method", ":authority", ":scheme", ":path"},
		FetchWeight:   220,
		Unindexed:     []string{":method", ":scheme", ":path"},
	},
}

// Signature schemes Chromium offers that utls v1.8.2 has no names for
// (draft-ietf-tls-mldsa).
const (
	sigMLDSA44 utls.SignatureScheme = 0x0904
	sigMLDSA65 utls.SignatureScheme = 0x0905
	sigMLDSA87 utls.SignatureScheme = 0x0906
)
