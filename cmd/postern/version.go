package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// version and revision are set at build time, as the README's build
// command and the Dockerfile do:
//
//	go build -ldflags "-X main.version=v0.1.0 -X main.revision=$(git rev-parse --short=12 HEAD)" ./cmd/postern
//
// Without -X main.revision the revision comes from the Go toolchain's VCS
// stamp, when the build had one.
var (
	version  = "dev"
	revision = ""
)

func versionString() string {
	rev := revision
	if rev == "" {
		rev = "unknown (built without VCS information; set -ldflags \"-X main.revision=...\")"
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" && len(s.Value) >= 12 {
					rev = s.Value[:12]
				}
			}
		}
	}
	return fmt.Sprintf("postern %s revision %s %s %s/%s", version, rev, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
