package main

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/postern/postern/envelope"
	"github.com/postern/postern/transport/descriptor"
)

// defaultIdentityPath is where identity commands look without --id/--out:
// $POSTERN_HOME/identity, else $XDG_CONFIG_HOME/postern/identity, else
// ~/.config/postern/identity.
func defaultIdentityPath(e *env) string {
	return filepath.Join(homeDir(e), "identity")
}

func homeDir(e *env) string {
	if h := e.getenv("POSTERN_HOME"); h != "" {
		return h
	}
	if x := e.getenv("XDG_CONFIG_HOME"); x != "" {
		return filepath.Join(x, "postern")
	}
	if h := e.getenv("HOME"); h != "" {
		return filepath.Join(h, ".config", "postern")
	}
	return fallbackHome
}

// fallbackHome is the state directory when the environment names none.
const fallbackHome = ".postern"

func idNewCmd() command {
	return command{
		name: "id new",
		summary: "Create a new identity (keys made on this device, registered nowhere).\n" +
			"The identity file is written with mode 0600 and never overwritten.",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			out := fs.String("out", "", "identity `file` to create (default $POSTERN_HOME/identity or ~/.config/postern/identity)")
			return func(ctx context.Context, args []string) error {
				if len(args) > 0 {
					return usageErr("unexpected argument %q", args[0])
				}
				path := *out
				if path == "" {
					path = defaultIdentityPath(e)
				}
				id, err := envelope.NewIdentity()
				if err != nil {
					return err
				}
				if err := id.WriteFile(path); err != nil {
					return err
				}
				fmt.Fprintf(e.stderr, "identity written to %s (keep it secret)\n", path)
				printPublic(e.stdout, id)
				return nil
			}
		},
	}
}

func idShowCmd() command {
	return command{
		name:    "id show",
		summary: "Print the public part of an identity: its fingerprint and public keys.",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			idPath := fs.String("id", "", "identity `file` (default $POSTERN_HOME/identity or ~/.config/postern/identity)")
			return func(ctx context.Context, args []string) error {
				if len(args) > 0 {
					return usageErr("unexpected argument %q", args[0])
				}
				path := *idPath
				if path == "" {
					path = defaultIdentityPath(e)
				}
				if err := notAnIdentity(path); err != nil {
					return err
				}
				id, err := envelope.LoadIdentity(path)
				if err != nil {
					return err
				}
				printPublic(e.stdout, id)
				return nil
			}
		},
	}
}

// fingerprint is a short, human-comparable digest of all public keys.
func fingerprint(p envelope.PublicKeys) string {
	h := sha256.New()
	h.Write([]byte("postern identity fingerprint v1"))
	h.Write(p.XWing)
	h.Write(p.X25519)
	h.Write(p.Auth)
	s := base32.StdEncoding.EncodeToString(h.Sum(nil)[:15])
	var groups []string
	for i := 0; i < len(s); i += 4 {
		groups = append(groups, s[i:min(len(s), i+4)])
	}
	return strings.Join(groups, " ")
}

func printPublic(w io.Writer, id *envelope.Identity) {
	p := id.Public()
	enc := base64.RawURLEncoding.EncodeToString
	fmt.Fprintf(w, "fingerprint: %s\n", fingerprint(p))
	fmt.Fprintf(w, "sender-key:  %s\n", enc(p.Auth))
	fmt.Fprintf(w, "x25519:      %s\n", enc(p.X25519))
	fmt.Fprintf(w, "xwing:       %s\n", enc(p.XWing))
}

func versionCmd() command {
	return command{
		name:    "version",
		summary: "Print the version and the Go toolchain it was built with.",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
			return func(ctx context.Context, args []string) error {
				fmt.Fprintln(e.stdout, versionString())
				return nil
			}
		},
	}
}

// notAnIdentity refuses a contact card or relay descriptor given where an
// identity file belongs, before the identity loader would ask for chmod
// 600 on it.
func notAnIdentity(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil // LoadIdentity says what is wrong
	}
	text := strings.TrimSpace(string(data))
	switch {
	case strings.HasPrefix(text, envelope.CardPrefix):
		return fmt.Errorf("%s is a contact card, not an identity: `postern card show %s` shows what it holds", path, path)
	case strings.HasPrefix(text, descriptor.Prefix):
		return fmt.Errorf("%s is a relay descriptor, not an identity: `postern relays add %s` makes it a known relay", path, path)
	}
	return nil
}
