package envelope

import (
	"bufio"
	"bytes"
	"crypto/ecdh"
	"crypto/hpke"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// Identity is a user's key material, made on the device and never
// registered anywhere: an X-Wing key pair and an X25519 KEM key pair to receive
// envelopes (one per suite), and an X25519 key pair to authenticate as a
// sender. Use NewIdentity, ParseIdentity or LoadIdentity; the zero value is
// not usable.
type Identity struct {
	xwing hpke.PrivateKey
	kem   hpke.PrivateKey // DHKEM(X25519)
	auth  *ecdh.PrivateKey

	mu      sync.Mutex
	dhCache map[[32]byte][]byte // peer auth key -> static-static secret
}

// PublicKeys is the public half of an Identity.
type PublicKeys struct {
	XWing  []byte // X-Wing encapsulation key, 1216 bytes
	X25519 []byte // DHKEM(X25519) public key, 32 bytes
	Auth   []byte // X25519 sender-authentication public key, 32 bytes
}

// NewIdentity generates a fresh identity from crypto/rand.
func NewIdentity() (*Identity, error) {
	xw, err := hpke.MLKEM768X25519().GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("generate X-Wing key: %w", err)
	}
	kem, err := hpke.DHKEM(ecdh.X25519()).GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("generate X25519 KEM key: %w", err)
	}
	auth, err := ecdh.X25519().GenerateKey(nil)
	if err != nil {
		return nil, fmt.Errorf("generate X25519 auth key: %w", err)
	}
	return &Identity{xwing: xw, kem: kem, auth: auth}, nil
}

// Public returns the identity's public keys.
func (id *Identity) Public() PublicKeys {
	return PublicKeys{
		XWing:  id.xwing.PublicKey().Bytes(),
		X25519: id.kem.PublicKey().Bytes(),
		Auth:   id.auth.PublicKey().Bytes(),
	}
}

// AuthKey returns the X25519 public key this identity authenticates with as
// a sender; Open reports it as Opened.Sender.
func (id *Identity) AuthKey() []byte { return id.auth.PublicKey().Bytes() }

func (id *Identity) privateKey(s Suite) hpke.PrivateKey {
	if s == SuiteXWing {
		return id.xwing
	}
	return id.kem
}

// staticSecret returns X25519(auth, peer), cached per peer: the secret is
// constant for a pair of identities, and caching it saves one scalar
// multiplication per envelope after the first.
func (id *Identity) staticSecret(peer []byte) ([]byte, error) {
	var k [32]byte
	copy(k[:], peer)
	id.mu.Lock()
	if s, ok := id.dhCache[k]; ok {
		id.mu.Unlock()
		return s, nil
	}
	id.mu.Unlock()
	pub, err := ecdh.X25519().NewPublicKey(peer)
	if err != nil {
		return nil, err
	}
	s, err := id.auth.ECDH(pub)
	if err != nil {
		return nil, err
	}
	id.mu.Lock()
	if id.dhCache == nil || len(id.dhCache) >= 4096 {
		id.dhCache = make(map[[32]byte][]byte)
	}
	id.dhCache[k] = s
	id.mu.Unlock()
	return s, nil
}

// Identity file format, version 1. A text file, mode 0600:
//
//	postern-identity v1
//	xwing <base64url, 32-byte X-Wing seed>
//	x25519-kem <base64url, 32-byte X25519 private key>
//	x25519-auth <base64url, 32-byte X25519 private key>
//
// Lines starting with '#' and blank lines are ignored. Each key appears
// exactly once; anything else is an error.
const identityMagic = "postern-identity"

// MaxIdentityFileSize bounds what ParseIdentity reads.
const MaxIdentityFileSize = 4096

// Marshal encodes the identity in the file format above. The result is
// secret.
func (id *Identity) Marshal() ([]byte, error) {
	xw, err := id.xwing.Bytes()
	if err != nil {
		return nil, err
	}
	kem, err := id.kem.Bytes()
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.WriteString("# Postern identity: private keys. Keep this file secret; anyone who has it can read your messages.\n")
	b.WriteString(identityMagic + " v1\n")
	enc := base64.RawURLEncoding.EncodeToString
	fmt.Fprintf(&b, "xwing %s\n", enc(xw))
	fmt.Fprintf(&b, "x25519-kem %s\n", enc(kem))
	fmt.Fprintf(&b, "x25519-auth %s\n", enc(id.auth.Bytes()))
	return b.Bytes(), nil
}

// ParseIdentity decodes an identity file. Errors wrap ErrIdentity, and
// ErrVersion for an unknown version.
func ParseIdentity(data []byte) (*Identity, error) {
	if len(data) > MaxIdentityFileSize {
		return nil, fmt.Errorf("%w: file larger than %d bytes, not an identity file", ErrIdentity, MaxIdentityFileSize)
	}
	keys := map[string][]byte{}
	sawMagic := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' {
			continue
		}
		fields := strings.Fields(text)
		if !sawMagic {
			if len(fields) != 2 || fields[0] != identityMagic {
				return nil, fmt.Errorf("%w: line %d: not a postern identity file (missing %q header)", ErrIdentity, line, identityMagic+" v1")
			}
			if fields[1] != "v1" {
				return nil, fmt.Errorf("%w: %w: version %q, this build reads v1; upgrade postern", ErrIdentity, ErrVersion, fields[1])
			}
			sawMagic = true
			continue
		}
		if len(fields) != 2 {
			return nil, fmt.Errorf("%w: line %d: want \"name value\"", ErrIdentity, line)
		}
		name := fields[0]
		switch name {
		case "xwing", "x25519-kem", "x25519-auth":
		default:
			return nil, fmt.Errorf("%w: line %d: unknown field %q", ErrIdentity, line, name)
		}
		if _, dup := keys[name]; dup {
			return nil, fmt.Errorf("%w: line %d: field %q appears twice", ErrIdentity, line, name)
		}
		v, err := base64.RawURLEncoding.DecodeString(fields[1])
		if err != nil || len(v) != 32 {
			return nil, fmt.Errorf("%w: line %d: field %q is not 32 bytes of base64url", ErrIdentity, line, name)
		}
		keys[name] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrIdentity, err)
	}
	if !sawMagic {
		return nil, fmt.Errorf("%w: empty file, not a postern identity", ErrIdentity)
	}
	for _, name := range []string{"xwing", "x25519-kem", "x25519-auth"} {
		if keys[name] == nil {
			return nil, fmt.Errorf("%w: field %q missing", ErrIdentity, name)
		}
	}
	xw, err := hpke.MLKEM768X25519().NewPrivateKey(keys["xwing"])
	if err != nil {
		return nil, fmt.Errorf("%w: field \"xwing\": %v", ErrIdentity, err)
	}
	kem, err := hpke.DHKEM(ecdh.X25519()).NewPrivateKey(keys["x25519-kem"])
	if err != nil {
		return nil, fmt.Errorf("%w: field \"x25519-kem\": %v", ErrIdentity, err)
	}
	auth, err := ecdh.X25519().NewPrivateKey(keys["x25519-auth"])
	if err != nil {
		return nil, fmt.Errorf("%w: field \"x25519-auth\": %v", ErrIdentity, err)
	}
	return &Identity{xwing: xw, kem: kem, auth: auth}, nil
}

// WriteFile saves the identity to path with mode 0600. It refuses to
// overwrite an existing file, so a key is never destroyed by accident.
func (id *Identity) WriteFile(path string) error {
	data, err := id.Marshal()
	if err != nil {
		return err
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("identity %s: %w", path, err)
		}
	}
	// Written whole to a temporary file, synced, then linked into place:
	// the link fails if path exists (nothing is overwritten), and a crash
	// leaves either no identity or a whole one, never a truncated file
	// that a second `id new` would refuse to replace.
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-identity-*")
	if err != nil {
		return fmt.Errorf("identity %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("identity %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("identity %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("identity %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("identity %s: %w", path, err)
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("identity %s already exists; refusing to overwrite it (move it away first)", path)
		}
		return fmt.Errorf("identity %s: %w", path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		err = d.Sync() // the new name survives a crash
		d.Close()
		if err != nil {
			return fmt.Errorf("identity %s: %w", path, err)
		}
	}
	return nil
}

// LoadIdentity reads an identity file, refusing one that group or others
// can access. Errors name the file and say what to do.
func LoadIdentity(path string) (*Identity, error) {
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w %s: %w: create one with `postern id new --out %s`", ErrIdentity, path, fs.ErrNotExist, path)
		}
		return nil, fmt.Errorf("%w %s: %w", ErrIdentity, path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w %s: not a regular file", ErrIdentity, path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %04o; run `chmod 600 %s`", ErrPermissions, path, perm, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrIdentity, path, err)
	}
	id, err := ParseIdentity(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return id, nil
}
