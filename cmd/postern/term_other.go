//go:build !linux

package main

import "os"

// isTerminal reports whether v is a character device other than
// /dev/null's kind of file; without TCGETS it is a best guess.
var isTerminal = func(v any) bool {
	f, ok := v.(*os.File)
	if !ok || f == nil {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0 && st.Mode()&os.ModeDevice != 0 && st.Name() != os.DevNull
}
