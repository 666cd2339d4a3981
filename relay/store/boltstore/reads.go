package boltstore

import "os"

// Reads outside the index lock.
//
// FetchAfter finds what to read under s.mu and reads it after letting go,
// so that a slow read (an old backlog no longer in the page cache) does
// not hold up the committer, which needs s.mu to apply every batch. While
// it reads, the segment it reads may be compacted away: dropSegments
// then leaves the file open (an orphan) and the last reader closes it,
// and the spare file is not written over while a reader still has it
// open (nextSegment starts a new file instead), so a reader always sees
// the bytes it looked up. Restore does not close files, and it only cuts
// back bytes past the last durable batch, which no reader looks up.

// segRead is one read of a sealed envelope from a segment file.
type segRead struct {
	seg *segment
	at  loc // the sealed bytes
	n   int
	rec loc // the record, for the error on damage
}

// fetchReading, if a test sets it, is called by FetchAfter once it has
// looked up what to read, before it reads (outside s.mu).
var fetchReading func()

// holdReads counts reads as under way in their segments. The caller holds
// s.mu (read-locked), so no segment of reads has been dropped.
func (s *Store) holdReads(reads []segRead) {
	if len(reads) == 0 {
		return
	}
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if s.reading == nil {
		s.reading = map[uint64]int{}
	}
	for _, r := range reads {
		s.reading[r.at.seg]++
	}
}

// releaseReads ends reads, closing a dropped segment's file once its last
// reader is done.
func (s *Store) releaseReads(reads []segRead) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	for _, r := range reads {
		num := r.at.seg
		if s.reading[num]--; s.reading[num] > 0 {
			continue
		}
		delete(s.reading, num)
		if f := s.orphans[num]; f != nil {
			f.Close()
			delete(s.orphans, num)
		}
	}
}

// closeSegment closes the file of dropped segment num, or leaves that to
// its last reader. The caller is the committer.
func (s *Store) closeSegment(num uint64, f *os.File) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if s.reading[num] == 0 {
		f.Close()
		return
	}
	if s.orphans == nil {
		s.orphans = map[uint64]*os.File{}
	}
	s.orphans[num] = f
}

// spareInUse reports whether a reader still has the spare file open (as
// the segment it was). The caller is the committer.
func (s *Store) spareInUse() bool {
	if s.spareFrom == 0 {
		return false
	}
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if s.orphans[s.spareFrom] != nil {
		return true
	}
	s.spareFrom = 0 // its readers are done
	return false
}
