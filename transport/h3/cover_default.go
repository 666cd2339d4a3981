package h3

import (
	"net/http"

	"github.com/postern/postern/transport/cover"
)

// defaultCover is the cover site used when ListenConfig.Cover is nil.
func defaultCover() http.Handler { return cover.Default() }
