package main

import (
	"io"
	"sync"
)

// progressLine is a terminal's last line while it shows a count (recv's
// "received N message(s)", send's "sent K/N envelopes"). Other output to
// the same terminal goes above it: a write clears the line, goes out, and
// the count is drawn again below it once the written line is complete.
// Before, a renewal notice or an "unknown sender" line was appended to
// the count's line.
type progressLine struct {
	mu    sync.Mutex
	w     io.Writer
	text  string // the count, "" before the first
	shown bool   // text is on the line, which has no newline yet
	mid   bool   // the last write left its line unfinished
}

// Write writes b above the count.
func (p *progressLine) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shown {
		io.WriteString(p.w, "\r\x1b[K") // to the line's start, and clear it
		p.shown = false
	}
	n, err := p.w.Write(b)
	if n > 0 {
		p.mid = b[n-1] != '\n'
	}
	if err == nil && !p.mid && p.text != "" {
		io.WriteString(p.w, p.text)
		p.shown = true
	}
	return n, err
}

// show replaces the count with text.
func (p *progressLine) show(text string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.text = text
	if p.mid {
		return // drawn once that line is complete
	}
	io.WriteString(p.w, "\r"+text)
	p.shown = true
}

// end leaves the count where it is and ends its line.
func (p *progressLine) end() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shown {
		io.WriteString(p.w, "\n")
		p.shown = false
	}
	p.text = ""
}
