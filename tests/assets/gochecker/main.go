// Command gochecker independently verifies graven's transparency log output with the Go team's
// golang.org/x/mod/sumdb/note (signed notes) and golang.org/x/mod/sumdb/tlog (RFC 6962 proofs).
//
// It reads one JSON request on stdin:
//
//	{
//	  "vkey": "<name>+<hex key id>+<base64 key>",
//	  "checkpoint": "<signed checkpoint note>",
//	  "inclusion": {"index": 3, "leafHash": "<base64>", "proof": ["<base64>", ...]},
//	  "consistency": {"oldSize": 2, "oldRoot": "<base64>", "proof": ["<base64>", ...]},
//	  "entries": ["<base64 leaf data>", ...]
//	}
//
// "inclusion", "consistency" and "entries" are optional. With "entries", the checker recomputes the
// tree root from the raw leaf data with tlog and compares it to the checkpoint.
//
// Exit status: 0 everything verified, 1 something was rejected, 2 the request itself is unusable.
//
// Build: GO111MODULE=off GOPATH=/usr/share/gocode go build -o gochecker main.go
package main

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type inclusionRequest struct {
	Index    int64    `json:"index"`
	LeafHash string   `json:"leafHash"`
	Proof    []string `json:"proof"`
}

type consistencyRequest struct {
	OldSize int64    `json:"oldSize"`
	OldRoot string   `json:"oldRoot"`
	Proof   []string `json:"proof"`
}

type request struct {
	VKey        string              `json:"vkey"`
	Checkpoint  string              `json:"checkpoint"`
	Inclusion   *inclusionRequest   `json:"inclusion"`
	Consistency *consistencyRequest `json:"consistency"`
	Entries     []string            `json:"entries"`
}

type checkpoint struct {
	origin string
	size   int64
	root   tlog.Hash
}

// errRejected marks a verification failure, as opposed to an unusable request.
var errRejected = errors.New("rejected")

func rejectf(format string, args ...interface{}) error {
	return fmt.Errorf("%w: %s", errRejected, fmt.Sprintf(format, args...))
}

// parseHash decodes one base64 hash; a hash of the wrong size is a rejection.
func parseHash(b64 string) (tlog.Hash, error) {
	var h tlog.Hash
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return h, rejectf("bad base64 hash %q", b64)
	}
	if len(raw) != tlog.HashSize {
		return h, rejectf("hash %q has %d bytes, want %d", b64, len(raw), tlog.HashSize)
	}
	copy(h[:], raw)
	return h, nil
}

func parseHashes(list []string) ([]tlog.Hash, error) {
	hashes := make([]tlog.Hash, 0, len(list))
	for _, b64 := range list {
		h, err := parseHash(b64)
		if err != nil {
			return nil, err
		}
		hashes = append(hashes, h)
	}
	return hashes, nil
}

// parseCheckpoint parses the c2sp.org/tlog-checkpoint note text: origin, size, root, extensions.
func parseCheckpoint(text string) (checkpoint, error) {
	var cp checkpoint
	if !strings.HasSuffix(text, "\n") {
		return cp, rejectf("checkpoint text does not end in a newline")
	}
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) < 3 {
		return cp, rejectf("checkpoint has %d lines, want at least 3", len(lines))
	}
	for _, line := range lines {
		if line == "" {
			return cp, rejectf("checkpoint has an empty line")
		}
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != lines[1] {
		return cp, rejectf("bad checkpoint size %q", lines[1])
	}
	root, err := parseHash(lines[2])
	if err != nil {
		return cp, err
	}
	return checkpoint{origin: lines[0], size: size, root: root}, nil
}

// openCheckpoint verifies the note signature with the verifier key and parses its text.
func openCheckpoint(vkey, signed string) (checkpoint, error) {
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		return checkpoint{}, fmt.Errorf("bad verifier key %q: %v", vkey, err)
	}
	n, err := note.Open([]byte(signed), note.VerifierList(verifier))
	if err != nil {
		return checkpoint{}, rejectf("note: %v", err)
	}
	return parseCheckpoint(n.Text)
}

func checkInclusion(cp checkpoint, req *inclusionRequest) error {
	leaf, err := parseHash(req.LeafHash)
	if err != nil {
		return err
	}
	proof, err := parseHashes(req.Proof)
	if err != nil {
		return err
	}
	if req.Index < 0 || req.Index >= cp.size {
		return rejectf("index %d outside tree of size %d", req.Index, cp.size)
	}
	if err := tlog.CheckRecord(tlog.RecordProof(proof), cp.size, cp.root, req.Index, leaf); err != nil {
		return rejectf("inclusion of %d in %d: %v", req.Index, cp.size, err)
	}
	return nil
}

func checkConsistency(cp checkpoint, req *consistencyRequest) error {
	oldRoot, err := parseHash(req.OldRoot)
	if err != nil {
		return err
	}
	proof, err := parseHashes(req.Proof)
	if err != nil {
		return err
	}
	if req.OldSize < 1 || req.OldSize > cp.size {
		return rejectf("old size %d not in 1..%d", req.OldSize, cp.size)
	}
	if err := tlog.CheckTree(tlog.TreeProof(proof), cp.size, cp.root, req.OldSize, oldRoot); err != nil {
		return rejectf("consistency %d -> %d: %v", req.OldSize, cp.size, err)
	}
	return nil
}

// checkEntries recomputes the tree root from raw leaf data with tlog's own hashing.
func checkEntries(cp checkpoint, entries []string) error {
	var stored []tlog.Hash
	reader := tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(indexes))
		for i, index := range indexes {
			out[i] = stored[index]
		}
		return out, nil
	})
	for i, b64 := range entries {
		data, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			return fmt.Errorf("bad base64 entry %d", i)
		}
		hashes, err := tlog.StoredHashes(int64(i), data, reader)
		if err != nil {
			return err
		}
		stored = append(stored, hashes...)
	}
	n := int64(len(entries))
	if n != cp.size {
		return rejectf("%d entries but checkpoint size %d", n, cp.size)
	}
	root, err := tlog.TreeHash(n, reader)
	if err != nil {
		return err
	}
	if root != cp.root {
		return rejectf("entries hash to root %v, checkpoint says %v", root, cp.root)
	}
	return nil
}

func run(req request) error {
	cp, err := openCheckpoint(req.VKey, req.Checkpoint)
	if err != nil {
		return err
	}
	if req.Inclusion != nil {
		if err := checkInclusion(cp, req.Inclusion); err != nil {
			return err
		}
	}
	if req.Consistency != nil {
		if err := checkConsistency(cp, req.Consistency); err != nil {
			return err
		}
	}
	if req.Entries != nil {
		if err := checkEntries(cp, req.Entries); err != nil {
			return err
		}
	}
	fmt.Printf("ok %s %d %v\n", cp.origin, cp.size, cp.root)
	return nil
}

func main() {
	var req request
	decoder := json.NewDecoder(os.Stdin)
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(&req); err != nil {
		fmt.Fprintf(os.Stderr, "gochecker: bad request: %v\n", err)
		os.Exit(2)
	}
	if err := run(req); err != nil {
		fmt.Fprintf(os.Stderr, "gochecker: %v\n", err)
		if errors.Is(err, errRejected) {
			os.Exit(1)
		}
		os.Exit(2)
	}
}
