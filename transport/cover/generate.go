package cover

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// MinSeedSize is the shortest seed [Generate] accepts, in bytes.
const MinSeedSize = 16

// ErrShortSeed is returned by [Generate] for a seed shorter than
// [MinSeedSize].
var ErrShortSeed = errors.New("cover: seed too short: derive at least 16 bytes from a secret the relay keeps")

// Site is a generated cover website, held in memory. It is an
// [http.Handler] that serves its files as Caddy's file_server does (see the
// package documentation), and it can be written to a directory for an
// operator to inspect, edit and serve with [Dir].
type Site struct {
	files memFS
	kind  string // which template made it; for tests
}

// Generate makes a small website from seed, as of now. The same seed and
// now give the same bytes, dates and ETags; different seeds give different
// sites. The seed must be secret (anyone who has it can recognise the
// site) and kept: derive it from the relay's long-term secrets.
//
// now only fixes how far the site's history has got. Every site has its
// own schedule of updates (a news item, a blog post, a release) every few
// weeks to months; Generate shows the updates made up to now, and every
// date in the site lies before now. So calling Generate at each start with
// [time.Now] serves identical files until the next scheduled update, when
// the newest pages and their dates move forward, as on a maintained site.
func Generate(seed []byte, now time.Time) (*Site, error) {
	if len(seed) < MinSeedSize {
		return nil, fmt.Errorf("%w (got %d bytes)", ErrShortSeed, len(seed))
	}
	g := newGen(seed, now)
	g.build()
	return &Site{files: g.files, kind: g.kind.name}, nil
}

// ServeHTTP serves the site. It logs nothing about the request.
func (s *Site) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	fileServer{s.files}.ServeHTTP(w, r)
}

// WriteDir writes the site's files under dir with their modification
// times, so that [Dir] on it serves the same bytes, Last-Modified and
// ETags (on a file system that keeps nanosecond mtimes, such as ext4). dir
// is created if missing; it must be empty, so an edited site is never
// overwritten.
func (s *Site) WriteDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("cover site directory %s: %w", dir, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("cover site directory %s: %w", dir, err)
	}
	if len(entries) != 0 {
		return fmt.Errorf("cover site directory %s: not empty; choose a new directory or empty it first", dir)
	}
	names := make([]string, 0, len(s.files))
	for name := range s.files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		f := s.files[name]
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("cover site directory %s: %w", dir, err)
		}
		if err := os.WriteFile(p, f.data, 0o644); err != nil {
			return fmt.Errorf("cover site file %s: %w", p, err)
		}
		if err := os.Chtimes(p, f.mtime, f.mtime); err != nil {
			return fmt.Errorf("cover site file %s: %w", p, err)
		}
	}
	return nil
}

// rng is a deterministic random stream for one purpose of one site: a
// ChaCha8 generator keyed with HMAC-SHA256(seed, label, n). Only
// ChaCha8's Uint64 is used, whose output is specified, so a Go upgrade
// does not change the sites.
type rng struct{ c *rand.ChaCha8 }

func newRNG(seed []byte, label string, n int) *rng {
	m := hmac.New(sha256.New, seed)
	m.Write([]byte("cover site v1\x00" + label + "\x00"))
	m.Write(binary.BigEndian.AppendUint64(nil, uint64(n)))
	var key [32]byte
	copy(key[:], m.Sum(nil))
	return &rng{rand.NewChaCha8(key)}
}

// intn returns a number in [0, n); the modulo bias is below 2^-50 for the
// small n used here.
func (r *rng) intn(n int) int {
	if n <= 1 {
		return 0
	}
	return int(r.c.Uint64() % uint64(n))
}

// between returns a number in [lo, hi].
func (r *rng) between(lo, hi int) int { return lo + r.intn(hi-lo+1) }

// chance is true pct times in 100.
func (r *rng) chance(pct int) bool { return r.intn(100) < pct }

func (r *rng) pick(list []string) string { return list[r.intn(len(list))] }

// pickN returns n distinct elements of list (all of them if n is larger)
// in random order.
func (r *rng) pickN(list []string, n int) []string {
	idx := r.perm(len(list))
	n = min(n, len(list))
	out := make([]string, n)
	for i := range n {
		out[i] = list[idx[i]]
	}
	return out
}

// perm is a random permutation of [0, n) (Fisher–Yates).
func (r *rng) perm(n int) []int {
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	for i := n - 1; i > 0; i-- {
		j := r.intn(i + 1)
		idx[i], idx[j] = idx[j], idx[i]
	}
	return idx
}

const day = 24 * time.Hour

// Timeline limits. Sites start between firstStart and firstStart plus
// startSpread; a clock earlier than that makes the site start minAge
// before now instead.
var firstStart = time.Date(2016, time.January, 1, 0, 0, 0, 0, time.UTC)

const (
	startSpread = 8 * 365 * day
	minAge      = 400 * day
	maxDeploy   = 3 * time.Hour // a file is written at most this long after its update
)

// timeline is a site's update schedule: update k happens near
// start + k*period, at a daytime hour, with a jitter of up to half a
// period. last is the newest update whose files were written by now.
type timeline struct {
	seed   []byte
	start  time.Time
	period time.Duration
	last   int
}

func newTimeline(seed []byte, now time.Time) timeline {
	r := newRNG(seed, "timeline", 0)
	tl := timeline{seed: seed, period: time.Duration(r.between(21, 110)) * day}
	tl.start = firstStart.Add(time.Duration(r.intn(int(startSpread/day))) * day)
	if now.Sub(tl.start) < minAge {
		tl.start = now.Add(-minAge - time.Duration(r.intn(3*365))*day).Truncate(day)
	}
	k := int(now.Sub(tl.start) / tl.period)
	for k > 0 && tl.at(k).Add(maxDeploy).After(now) {
		k--
	}
	tl.last = k
	return tl
}

// at is the time of update k.
func (tl timeline) at(k int) time.Time {
	r := newRNG(tl.seed, "update", k)
	jitter := time.Duration(r.intn(int(tl.period/day)/2)) * day
	t := tl.start.Add(time.Duration(k)*tl.period + jitter)
	return t.Add(time.Duration(r.between(7*3600, 23*3600)) * time.Second)
}

// written is when the files of update k were written: minutes to hours
// after it, with a nanosecond part as on a real file system.
func (tl timeline) written(k int, what string) time.Time {
	r := newRNG(tl.seed, "written "+what, k)
	d := time.Duration(r.between(40, int(maxDeploy/time.Second)-1))*time.Second + time.Duration(r.intn(1e9))
	return tl.at(k).Add(d)
}

// lastEdit is when the file what was last written, if it is edited on
// about one update in every: the newest such update, or update 0. It moves
// only when a new edit falls due, so restarts keep it.
func (tl timeline) lastEdit(what string, every int) time.Time {
	for k := tl.last; k > 0; k-- {
		if newRNG(tl.seed, "edit "+what, k).intn(every) == 0 {
			return tl.written(k, what)
		}
	}
	return tl.written(0, what)
}
