package link

import "hash/maphash"

// SeparateFlows draws f's flow hash key again until srcs are in flows of
// their own (fairDest): a test whose sources shared a flow (1 in 256 for
// a pair) would see one's layers wait behind the other's.
func SeparateFlows(f *Forwarder, srcs ...[16]byte) { f.shares.separate(srcs...) }

func (s *sourceShares) separate(srcs ...[16]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		seen := map[uint8]bool{}
		for _, src := range srcs {
			seen[s.flow(src)] = true
		}
		if len(seen) == len(srcs) {
			return
		}
		s.seed = maphash.MakeSeed()
	}
}
