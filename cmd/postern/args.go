package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/transport/descriptor"
)

// lineArg returns v if it starts with prefix, else the line of the file
// named v that does. Cards and descriptors are one line, but mail programs
// and editors wrap long lines: a value or file whose line is followed by
// more lines of the same alphabet is joined when the joined text parses
// and the first line alone does not. A wrapped line that does not parse
// joined either is refused saying it was wrapped.
func lineArg(v, prefix string) (string, error) {
	v = strings.TrimSpace(v)
	var lines []string
	from := "the argument"
	if strings.HasPrefix(v, prefix) {
		lines = strings.Split(v, "\n")
	} else {
		data, err := os.ReadFile(v)
		if err != nil {
			return "", fmt.Errorf("%q is neither a %s... line nor a readable file: %w", truncate(v, 24), prefix, err)
		}
		lines, from = strings.Split(string(data), "\n"), v
	}
	for i, l := range lines {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, prefix) {
			return joinWrapped(l, lines[i+1:], prefix, from)
		}
	}
	return "", fmt.Errorf("%s holds no line starting with %s", v, prefix)
}

// joinWrapped returns first, or first joined with the continuation lines
// in rest when only the joined text parses.
func joinWrapped(first string, rest []string, prefix, from string) (string, error) {
	parse := lineParser(prefix)
	joined, n := first, 1
	for _, l := range rest {
		l = strings.TrimSpace(l)
		if l == "" || !isBase64URL(l) {
			break
		}
		joined += l
		n++
	}
	if n == 1 || parse == nil || parse(first) == nil {
		return first, nil
	}
	if err := parse(joined); err != nil {
		return "", fmt.Errorf("%s holds a %s line wrapped over %d lines, and joined it does not parse either (%v): copy it again as one line",
			from, strings.TrimSuffix(prefix, ":"), n, err)
	}
	return joined, nil
}

// lineParser is the parser for lines starting with prefix, or nil.
func lineParser(prefix string) func(string) error {
	switch prefix {
	case envelope.CardPrefix:
		return func(s string) error { _, err := envelope.ParseCard(s); return err }
	case descriptor.Prefix:
		return func(s string) error { _, _, err := descriptor.ParseStale(s, time.Now()); return err }
	}
	return nil
}

func isBase64URL(s string) bool {
	for _, r := range s {
		if !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' || r == '=') {
			return false
		}
	}
	return true
}
