package main

import (
	"io"
	"strings"
	"sync"
)

// progressLine is a terminal's last line while it shows a count (recv's
// "received N message(s)", send's "sent K/N envelopes"). What goes to the
// terminal meanwhile goes above it: through Write (stderr) or above
// (stdout on the same terminal), the line is cleared, the output goes
// out, and the count is drawn again below it once the written line is
// complete.
type progressLine struct {
	mu    sync.Mutex
	w     io.Writer
	text  string // the count, "" before the first
	shown bool   // text is on the line, which has no newline yet
	mid   bool   // the last write left its line unfinished
	ended bool
	width int // the widest count drawn on the line since it was blank
}

// Write writes b to the line's own writer, above the count.
func (p *progressLine) Write(b []byte) (int, error) { return p.above(p.w, b) }

// above writes b to w, which shows on the same terminal, above the count.
func (p *progressLine) above(w io.Writer, b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shown { // blank the line (no escape codes: any terminal)
		io.WriteString(p.w, "\r"+strings.Repeat(" ", p.width)+"\r")
		p.shown, p.width = false, 0
	}
	n, err := w.Write(b)
	if n > 0 { // what went out, failed or not
		p.mid = b[n-1] != '\n'
	}
	if !p.mid && !p.ended && p.text != "" {
		io.WriteString(p.w, p.text)
		p.shown, p.width = true, len(p.text)
	}
	return n, err
}

// show replaces the count with text.
func (p *progressLine) show(text string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ended {
		return
	}
	p.text = text
	if p.mid {
		return // drawn once that line is complete
	}
	// A shorter count is padded over the longer one it replaces.
	io.WriteString(p.w, "\r"+text+strings.Repeat(" ", max(0, p.width-len(text))))
	p.shown, p.width = true, max(p.width, len(text))
}

// end leaves the last count on a line of its own, below whatever was
// written, and shows no more.
func (p *progressLine) end() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ended {
		return
	}
	p.ended = true
	if p.mid { // finish the unfinished line, then the count
		io.WriteString(p.w, "\n")
		p.mid = false
		if p.text != "" {
			io.WriteString(p.w, p.text)
			p.shown = true
		}
	}
	if p.shown {
		io.WriteString(p.w, "\n")
		p.shown = false
	}
}

// aboveWriter writes to w above a progressLine.
type aboveWriter struct {
	line *progressLine
	w    io.Writer
}

func (a aboveWriter) Write(b []byte) (int, error) { return a.line.above(a.w, b) }
