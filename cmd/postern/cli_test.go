package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// buildBinary compiles cmd/postern once per test binary run.
func buildBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "postern-bin")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "postern")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = &buildError{out: string(out), err: err}
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

type buildError struct {
	out string
	err error
}

func (b *buildError) Error() string { return b.err.Error() + ": " + b.out }

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

func runBin(t *testing.T, bin string, envv []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), envv...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

func TestIdentityCommands(t *testing.T) {
	bin := buildBinary(t)
	home := t.TempDir()
	envv := []string{"POSTERN_HOME=" + home}
	path := filepath.Join(home, "alice.id")

	out, errOut, code := runBin(t, bin, envv, "id", "new", "--out", path)
	if code != 0 {
		t.Fatalf("id new: exit %d: %s", code, errOut)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("identity file: %v, mode %v", err, st.Mode())
	}
	show, errOut, code := runBin(t, bin, envv, "id", "show", "--id", path)
	if code != 0 {
		t.Fatalf("id show: exit %d: %s", code, errOut)
	}
	if show != out || !strings.HasPrefix(show, "fingerprint: ") {
		t.Fatalf("id show printed %q, id new printed %q", show, out)
	}
	secret, _ := os.ReadFile(path)
	for _, line := range strings.Split(string(secret), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] != "postern-identity" && strings.Contains(show, f[1]) {
			t.Fatal("id show printed a private key")
		}
	}
	// Refuses to overwrite.
	if _, errOut, code = runBin(t, bin, envv, "id", "new", "--out", path); code != 1 || !strings.Contains(errOut, "refusing to overwrite") {
		t.Fatalf("overwrite: exit %d: %s", code, errOut)
	}
	// Too-open permissions are refused with advice.
	os.Chmod(path, 0o644)
	if _, errOut, code = runBin(t, bin, envv, "id", "show", "--id", path); code != 1 || !strings.Contains(errOut, "chmod 600") {
		t.Fatalf("open perms: exit %d: %s", code, errOut)
	}
	// Default location under POSTERN_HOME.
	if _, errOut, code = runBin(t, bin, envv, "id", "new"); code != 0 {
		t.Fatalf("id new (default path): %s", errOut)
	}
	if _, err := os.Stat(filepath.Join(home, "identity")); err != nil {
		t.Fatal(err)
	}
	// Missing file says how to make one.
	if _, errOut, code = runBin(t, bin, envv, "id", "show", "--id", filepath.Join(home, "nope")); code != 1 || !strings.Contains(errOut, "postern id new") {
		t.Fatalf("missing: exit %d: %s", code, errOut)
	}
}

func TestHelpForEveryCommand(t *testing.T) {
	for _, c := range commands() {
		t.Run(c.name, func(t *testing.T) {
			var o, e bytes.Buffer
			args := append(strings.Fields(c.name), "--help")
			code := run(context.Background(), args, &env{stdin: strings.NewReader(""), stdout: &o, stderr: &e, getenv: func(string) string { return "" }})
			if code != 0 || !strings.HasPrefix(o.String(), "usage: postern "+c.name) {
				t.Fatalf("exit %d, stdout %q, stderr %q", code, o.String(), e.String())
			}
		})
	}
}

func TestDispatchErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "usage: postern COMMAND"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"id"}, 2, "id new"},
		{[]string{"id", "nope"}, 2, "unknown command"},
		{[]string{"id", "new", "--bogus"}, 2, "flag provided but not defined"},
		{[]string{"id", "show", "extra"}, 2, "unexpected argument"},
		{[]string{"help"}, 0, "commands:"},
		{[]string{"help", "id", "new"}, 0, "usage: postern id new"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var o, e bytes.Buffer
			code := run(context.Background(), tc.args, &env{stdin: strings.NewReader(""), stdout: &o, stderr: &e, getenv: func(string) string { return "" }})
			if code != tc.code || !strings.Contains(o.String()+e.String(), tc.want) {
				t.Fatalf("exit %d, want %d; output %q lacks %q", code, tc.code, o.String()+e.String(), tc.want)
			}
		})
	}
}
