package client

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/crypto/cryptobyte"

	"github.com/postern/postern/envelope"
)

// HeldStore keeps, from one run to the next, the envelopes an inbox holds
// as fragments of unfinished messages on one relay's mailbox
// (PartsConfig.Keep): a later DrainParts of that mailbox starts out
// holding them, and pages past them on the relay instead of fetching them
// again. It is a cache: what it loses is fetched again, and nothing is
// acked on its word alone but envelopes that open to the inbox's
// identity and belong to a message taken.
type HeldStore interface {
	// Load returns the kept envelopes (Ref, Seq and Envelope set); none
	// on first use.
	Load() ([]Delivery, error)
	// Save replaces the kept envelopes with ds (none: forget them all).
	Save(ds []Delivery) error
}

// MaxKeptBytes bounds the envelope bytes DrainParts keeps in a HeldStore
// for one mailbox: 16 MiB, two of the largest messages. Fragments past it
// are fetched again by the next run.
const MaxKeptBytes = 16 << 20

// heldMagic opens a HeldFile.
const heldMagic = "postern held v1\n"

// HeldFile is a HeldStore in one file (mode 0600):
//
//	"postern held v1\n"
//	for each envelope:  seq (8 bytes, big endian)  ref (32)
//	                    length (3 bytes, big endian)  envelope (a bucket's size)
//	SHA-256 of everything before it (32)
//
// Save writes a temporary file and renames it over the file, without
// syncing: a file a crash cut short fails its checksum, and Load then
// reports it (DrainParts warns and starts with nothing kept). Two
// processes that drain the same mailbox at once each write what they
// hold; the last one's stays.
type HeldFile string

// Load reads the file; a missing file keeps nothing.
func (f HeldFile) Load() ([]Delivery, error) {
	file, err := os.Open(string(f))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, errors.New("cannot read the file of held fragments")
	}
	defer file.Close()
	// The envelopes, their headers, and a file's overhead.
	const most = MaxKeptBytes + (MaxKeptBytes/envelope.Bucket4K)*(8+32+3) + len(heldMagic) + sha256.Size
	data, err := io.ReadAll(io.LimitReader(file, int64(most)+1))
	if err != nil {
		return nil, errors.New("cannot read the file of held fragments")
	}
	if len(data) > most {
		return nil, errors.New("the file of held fragments is too large")
	}
	return ParseHeld(data)
}

// Save writes ds to a temporary file beside f and renames it over f, or
// removes f if ds is empty.
func (f HeldFile) Save(ds []Delivery) error {
	if len(ds) == 0 {
		if err := os.Remove(string(f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return errors.New("cannot remove the file of held fragments")
		}
		return nil
	}
	data, err := AppendHeld(nil, ds)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(string(f)), 0o700); err != nil {
		return errors.New("cannot make the directory of held fragments")
	}
	tmp, err := os.CreateTemp(filepath.Dir(string(f)), ".held-*")
	if err != nil {
		return errors.New("cannot write the file of held fragments")
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), string(f))
	}
	if err != nil {
		return errors.New("cannot write the file of held fragments")
	}
	return nil
}

// AppendHeld appends a HeldFile's contents holding ds to b. Each
// envelope must be a bucket's size.
func AppendHeld(b []byte, ds []Delivery) ([]byte, error) {
	start := len(b)
	cb := cryptobyte.NewBuilder(append(b, heldMagic...))
	for _, d := range ds {
		if !slices.Contains(envelope.Buckets[:], len(d.Envelope)) {
			return b, fmt.Errorf("relay/client: a held envelope of %d bytes is no bucket's size", len(d.Envelope))
		}
		cb.AddUint64(d.Seq)
		cb.AddBytes(d.Ref[:])
		cb.AddUint24LengthPrefixed(func(cb *cryptobyte.Builder) { cb.AddBytes(d.Envelope) })
	}
	out, err := cb.Bytes()
	if err != nil {
		return b, err
	}
	sum := sha256.Sum256(out[start:])
	return append(out, sum[:]...), nil
}

// errHeldFile is what ParseHeld says of any file it does not take: it
// names nothing in the file.
var errHeldFile = errors.New("the file of held fragments is damaged")

// ParseHeld decodes a HeldFile's contents.
func ParseHeld(data []byte) ([]Delivery, error) {
	if len(data) < len(heldMagic)+sha256.Size || !bytes.HasPrefix(data, []byte(heldMagic)) {
		return nil, errHeldFile
	}
	body, sum := data[:len(data)-sha256.Size], data[len(data)-sha256.Size:]
	if want := sha256.Sum256(body); !bytes.Equal(sum, want[:]) {
		return nil, errHeldFile
	}
	s := cryptobyte.String(body[len(heldMagic):])
	var ds []Delivery
	for !s.Empty() {
		var d Delivery
		var ref, env cryptobyte.String
		if !s.ReadUint64(&d.Seq) || !s.ReadBytes((*[]byte)(&ref), len(d.Ref)) || !s.ReadUint24LengthPrefixed(&env) ||
			!slices.Contains(envelope.Buckets[:], len(env)) {
			return nil, errHeldFile
		}
		copy(d.Ref[:], ref)
		d.Envelope = bytes.Clone(env)
		ds = append(ds, d)
	}
	return ds, nil
}
