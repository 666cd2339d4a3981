package envelope

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestIdentityFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "alice.id")
	id := newID(t)
	if err := id.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %o, want 600", st.Mode().Perm())
	}
	got, err := LoadIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	a, b := id.Public(), got.Public()
	if !bytes.Equal(a.XWing, b.XWing) || !bytes.Equal(a.X25519, b.X25519) || !bytes.Equal(a.Auth, b.Auth) {
		t.Fatal("loaded identity differs")
	}
	// The loaded identity opens what was sealed to the original.
	env, err := Seal(id.Card(randMailbox(t), nil, nil), got, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(got, env); err != nil {
		t.Fatal(err)
	}
	if err := newID(t).WriteFile(path); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("overwrote an identity: %v", err)
	}
}

func TestLoadIdentityErrors(t *testing.T) {
	dir := t.TempDir()
	good, err := newID(t).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		name string
		path string
		want error
		text string
	}{
		{"missing", filepath.Join(dir, "nope"), fs.ErrNotExist, "postern id new"},
		{"too open", write("open", good, 0o644), ErrPermissions, "chmod 600"},
		{"group readable", write("group", good, 0o640), ErrPermissions, "0640"},
		{"corrupt", write("corrupt", []byte("hello world\n"), 0o600), ErrIdentity, "not a postern identity"},
		{"empty", write("empty", nil, 0o600), ErrIdentity, "empty"},
		{"future version", write("v2", bytes.Replace(good, []byte(" v1\n"), []byte(" v2\n"), 1), 0o600), ErrVersion, "upgrade"},
		{"missing field", write("short", good[:bytes.LastIndex(good, []byte("x25519-auth"))], 0o600), ErrIdentity, "x25519-auth"},
		{"bad base64", write("b64", bytes.Replace(good, []byte("xwing "), []byte("xwing !"), 1), 0o600), ErrIdentity, "base64"},
		{"unknown field", write("unk", append(bytes.Clone(good), "color blue\n"...), 0o600), ErrIdentity, "unknown field"},
		{"duplicate field", write("dup", append(bytes.Clone(good), good[bytes.Index(good, []byte("xwing ")):]...), 0o600), ErrIdentity, "twice"},
		{"directory", dir, ErrIdentity, "regular file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadIdentity(tc.path)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("error %q does not say %q", err, tc.text)
			}
		})
	}
}

// WriteFile puts a whole identity in place or nothing: it leaves no
// temporary file behind, refuses to overwrite, and writes mode 0600.
func TestWriteFileWholeOrNothing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.id")
	id := newID(t)
	if err := id.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	if err := newID(t).WriteFile(path); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("second WriteFile: %v, want a refusal", err)
	}
	got, err := LoadIdentity(path)
	if err != nil || !bytes.Equal(got.AuthKey(), id.AuthKey()) {
		t.Fatalf("the identity on disk is not the first one: %v", err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v; want 0600", st.Mode(), err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("%d files in the directory, want the identity alone", len(entries))
	}
}
