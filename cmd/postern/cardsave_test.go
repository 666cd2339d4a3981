package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// A contact's card update that recv cannot save (here: a file size limit
// of 1 KiB) is not acked: recv fails, the update stays on the relay, and
// the next recv applies it, so a send to the contact's new mailbox works.
// Before, recv warned, acked the update and dropped it.
func TestCardUpdateNotAckedUnsaved(t *testing.T) {
	bin := buildBinary(t)
	u := newPair(t, bin, true)
	envv, alice, bob := u.envv, u.alice, u.bob
	runOK(t, bin, envv, nil, "mailbox", "rotate", "--id", bob) // sends alice the update

	cmd := exec.Command("bash", "-c", `ulimit -f 1; exec "$0" recv --id "$1"`, bin, alice)
	cmd.Env = append(os.Environ(), envv...)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("recv that could not save the contacts succeeded:\n%s", out)
	}
	if !strings.Contains(string(out), "stays on the relay") {
		t.Errorf("recv's error does not say the update stays on the relay:\n%s", out)
	}
	_, errOut, code := runWith(t, bin, envv, nil, "recv", "--id", alice)
	if code != 0 || !strings.Contains(errOut, "card changed") {
		t.Fatalf("the next recv: exit %d, stderr %q; want the card update applied", code, errOut)
	}
	if _, errOut, code := runWith(t, bin, envv, []byte("hi"), "send", "--id", alice, "--to", "bob"); code != 0 {
		t.Fatalf("send to bob's new mailbox: exit %d: %s", code, errOut)
	}
}
